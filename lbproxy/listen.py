# -*- test-case-name: lbproxy.test.test_listen -*-
"""
Turning C{--listen} descriptions into server endpoints.

A description is a Twisted endpoint string.  lbproxy parses C{ssl:} itself,
so that its certificate files get one-line error messages, an C{ssl:}
listener without C{privateKey} can use the C{--adhoc} certificate, and all
TLS listeners share one TLS policy (L{lbproxy.tls.policy}).  Its syntax::

    ssl:PORT[:interface=ADDR][:backlog=N][:privateKey=KEY]
        [:certKey=CERT][:extraCertChain=CHAIN]

C{certKey} defaults to C{privateKey} (one file holding both), as in
Twisted; it may hold intermediate certificates after the server's.
Twisted's C{sslmethod} and C{dhParameters} options are refused, not
ignored: the TLS versions and key exchange are lbproxy's policy, and an
option that silently does nothing would mislead.  As in every endpoint
string, a backslash escapes the next character, so C{\\:} is a colon inside
a value (an IPv6 interface, a Windows path).

Every other type (C{tcp:}, C{tcp6:}, C{unix:}, C{systemd:}, plugins) goes
to L{twisted.internet.endpoints.serverFromString} unchanged.
"""

from __future__ import annotations

import os
from typing import cast

import attrs
from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamServerEndpoint
from twisted.protocols.haproxy import proxyEndpoint

from lbproxy.tls.certificates import CertificateFiles, CertificateSource, TLSConfigError
from lbproxy.tls.server import TLSServerEndpoint
from lbproxy.tls.sni import ServerTLS, ServerTLSSettings

__all__ = [
    "DEFAULT_LISTEN",
    "ListenError",
    "ListenSpec",
    "missingCertificateFiles",
    "parseListen",
    "serverEndpointForListen",
    "socketDescription",
    "splitDescription",
]

DEFAULT_LISTEN = "ssl:443:privateKey=certs/loadbalancer.key:certKey=certs/loadbalancer.crt"

_SSL_OPTIONS = (
    "port",
    "interface",
    "backlog",
    "privateKey",
    "certKey",
    "extraCertChain",
)

_REFUSED_SSL_OPTIONS = {
    "sslmethod": "lbproxy always requires TLS 1.2 or later (see --tls-min)",
    "dhParameters": "lbproxy uses elliptic-curve key exchange only",
}


_DEFAULT_TLS = ServerTLSSettings()


class ListenError(Exception):
    """
    A C{--listen} description cannot be used; the message is one line that
    quotes the description and says why.

    @ivar reason: Why, without the description (for other options that
        take endpoint descriptions).
    """

    reason = ""


@attrs.frozen
class ListenSpec:
    """
    A parsed C{--listen} description.

    @ivar description: the description as given.
    @ivar isTLS: whether lbproxy terminates TLS itself (an C{ssl:}
        description); the fields below are only set for those.
    @ivar port: the TCP port; 0 for any free port.
    @ivar interface: the address to bind; C{""} for all IPv4 addresses.
    @ivar backlog: the length of the listen queue.
    @ivar privateKey: the PEM private key file; L{None} to use the ad-hoc
        certificate.
    @ivar certKey: the PEM certificate (and chain) file; L{None} if it is in
        C{privateKey}.
    @ivar extraCertChain: a PEM file of more intermediate certificates.
    """

    description: str
    isTLS: bool
    port: int | None = None
    interface: str = ""
    backlog: int = 50
    privateKey: str | None = None
    certKey: str | None = None
    extraCertChain: str | None = None

    @property
    def isAdhoc(self) -> bool:
        """
        Whether this is a TLS listener that names no key, and so needs the
        C{--adhoc} certificate.
        """
        return self.isTLS and self.privateKey is None


def _error(description: str, reason: str) -> ListenError:
    """
    The L{ListenError} for C{description}, failing for C{reason}.
    """
    error = ListenError(f"cannot use --listen {description!r}: {reason}")
    error.reason = reason
    return error


def _split(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description the way Twisted does: C{:} separates
    fields, the first C{=} in a field separates a name from its value, and
    a backslash escapes the next character.

    @return: the positional fields and the named ones.

    @raise ListenError: if a backslash ends the description or a name is
        given twice.
    """
    fields: list[list[str]] = [[""]]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise _error(description, "it ends with a lone backslash")
            fields[-1][-1] += escaped
        elif character == ":":
            fields.append([""])
        elif character == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += character
    positional: list[str] = []
    named: dict[str, str] = {}
    for field in fields:
        if len(field) == 1:
            positional.append(field[0])
        elif field[0] in named:
            raise _error(description, f"{field[0]!r} is given twice")
        else:
            named[field[0]] = field[1]
    return positional, named


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and the named fields of an endpoint description, split
    the way Twisted splits them.

    @raise ListenError: If a backslash ends it or a name is given twice.
    """
    return _split(description)


def _integer(description: str, name: str, value: str, low: int, high: int) -> int:
    """
    C{value} as an integer between C{low} and C{high} inclusive.

    @raise ListenError: naming C{name}, if it is not one.
    """
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise _error(description, f"{name} must be a number from {low} to {high}, not {value!r}")
    return number


def _parseSSL(description: str, positional: list[str], named: dict[str, str]) -> ListenSpec:
    """
    The L{ListenSpec} of an C{ssl:} description, split into fields.

    @raise ListenError: for a missing or bad port, an unknown or refused
        option, or a file option without C{privateKey}.
    """
    for name in named:
        if name in _REFUSED_SSL_OPTIONS:
            raise _error(
                description,
                f"ssl option {name} is not supported: {_REFUSED_SSL_OPTIONS[name]}",
            )
        if name not in _SSL_OPTIONS:
            raise _error(
                description,
                f"unknown ssl option {name!r} (known: {', '.join(_SSL_OPTIONS)})",
            )
    if len(positional) > 1 or (positional and "port" in named):
        raise _error(
            description,
            "give ssl options as name=value after the port, e.g. "
            "ssl:443:privateKey=KEY:certKey=CERT",
        )
    port = positional[0] if positional else named.get("port")
    if port is None:
        raise _error(description, "ssl needs a port, e.g. ssl:443")
    for name in ("privateKey", "certKey", "extraCertChain"):
        if named.get(name) == "":
            raise _error(description, f"{name} names no file")
    privateKey = named.get("privateKey")
    if privateKey is None:
        for name in ("certKey", "extraCertChain"):
            if name in named:
                raise _error(description, f"{name} needs privateKey too")
    return ListenSpec(
        description=description,
        isTLS=True,
        port=_integer(description, "the port", port, 0, 65535),
        interface=named.get("interface", ""),
        backlog=_integer(description, "backlog", named.get("backlog", "50"), 1, 65535),
        privateKey=privateKey,
        certKey=named.get("certKey"),
        extraCertChain=named.get("extraCertChain"),
    )


def parseListen(description: str) -> ListenSpec:
    """
    Parse a C{--listen} description, without touching files or sockets.

    C{ssl:} descriptions are parsed in full; other types are only checked
    for a type name and left to L{serverEndpointForListen}.

    @raise ListenError: if the description is empty, has no type, or is an
        C{ssl:} description that lbproxy cannot use.
    """
    if not description.strip():
        raise ListenError("cannot use an empty --listen description")
    positional, named = _split(description)
    kind = positional[0] if positional else ""
    if kind == "ssl":
        return _parseSSL(description, positional[1:], named)
    if not kind:
        raise _error(description, "it names no endpoint type, e.g. ssl:443 or tcp:8080")
    if kind.isdigit():
        raise _error(
            description,
            f"it names no endpoint type; did you mean ssl:{kind} or tcp:{kind}?",
        )
    return ListenSpec(description=description, isTLS=False)


def _escape(value: str) -> str:
    """
    C{value} escaped for use as a field of an endpoint description.
    """
    return "".join("\\" + c if c in "\\:=" else c for c in value)


def _serverFromString(reactor: IReactorTCP, description: str) -> IStreamServerEndpoint:
    """
    L{endpoints.serverFromString}, its parsing errors turned into
    L{ListenError}.
    """
    try:
        endpoint: IStreamServerEndpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, KeyError, IndexError) as e:
        raise _error(description, str(e) or type(e).__name__) from e
    except TypeError as e:
        raise _error(description, f"unknown or missing option ({e})") from e
    return endpoint


_SOCKET_TYPES = ("tcp", "tcp6", "unix")


def socketDescription(spec: ListenSpec) -> str:
    """
    The endpoint description of the plain listening socket under C{spec}:
    the TCP socket of an C{ssl:} listener, the socket under an C{haproxy:}
    one, the description itself for C{tcp:}, C{tcp6:} and C{unix:}.  This
    is what a process binds for another to adopt (L{lbproxy.workers}).

    @raise ListenError: for other types (C{systemd:}, plugins), whose
        socket is not lbproxy's to bind.
    """
    if spec.isTLS:
        return f"tcp:{spec.port}:interface={_escape(spec.interface)}:backlog={spec.backlog}"
    kind, _, rest = spec.description.partition(":")
    if kind == "haproxy":
        kind = rest.partition(":")[0]
        description = rest
    else:
        description = spec.description
    if kind not in _SOCKET_TYPES:
        raise _error(
            spec.description,
            "only ssl:, tcp:, tcp6:, unix: and haproxy: listeners can be shared by --workers",
        )
    return description


def serverEndpointForListen(
    reactor: IReactorTCP,
    spec: ListenSpec,
    adhocCertificate: CertificateSource | None,
    settings: ServerTLSSettings = _DEFAULT_TLS,
    bound: IStreamServerEndpoint | None = None,
) -> IStreamServerEndpoint:
    """
    The endpoint to listen on for C{spec}.  For C{ssl:} this reads the key
    and certificate files; the endpoint is a L{TLSServerEndpoint} whose
    C{contextFactory} is a L{ServerTLS}, to reload on SIGHUP.

    @param reactor: the reactor the endpoint listens with; it should also
        provide what other endpoint types need (e.g. C{IReactorUNIX}).
    @param spec: the parsed description.
    @param adhocCertificate: the C{--adhoc} certificate, for C{ssl:}
        listeners that name no C{privateKey}; L{None} without C{--adhoc}.
    @param settings: the TLS policy and the certificates chosen by server
        name, shared by every C{ssl:} listener; the listener's own
        certificate is the default.
    @param bound: an endpoint over the socket L{socketDescription} names,
        already bound by another process; L{None} to bind it here.

    @raise ListenError: if the endpoint cannot be made, e.g. a certificate
        file is missing or does not match its key.
    """
    if not spec.isTLS:
        if bound is None:
            return _serverFromString(reactor, spec.description)
        if spec.description.startswith("haproxy:"):
            return proxyEndpoint(bound)
        return bound
    default: CertificateSource
    if spec.privateKey is not None:
        default = CertificateFiles(spec.privateKey, spec.certKey, spec.extraCertChain)
    elif adhocCertificate is not None:
        default = adhocCertificate
    else:
        raise _error(
            spec.description,
            "it names no privateKey; pass --adhoc for a temporary self-signed "
            "certificate, or add :privateKey=KEY:certKey=CERT",
        )
    try:
        serverTLS = ServerTLS(default, settings)
    except TLSConfigError as e:
        raise _error(spec.description, str(e)) from e
    if bound is None:
        bound = _serverFromString(reactor, socketDescription(spec))
    return TLSServerEndpoint(
        bound, serverTLS, settings.handshakeTimeout, cast(IReactorTime, reactor)
    )


def missingCertificateFiles(spec: ListenSpec) -> list[str]:
    """
    The files named by an C{ssl:} description (C{privateKey}, C{certKey},
    C{extraCertChain}) that do not exist, so that the caller can say at
    start-up which to create (e.g. with C{python -m lbproxy.certs}).

    @return: the missing paths, each once, in that order; empty for other
        descriptions.
    """
    named = [spec.privateKey, spec.certKey, spec.extraCertChain]
    paths = dict.fromkeys(path for path in named if path is not None)
    return [path for path in paths if not os.path.exists(path)]
