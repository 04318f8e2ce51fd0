# -*- test-case-name: lbproxy.test.test_adminauth -*-
"""
Who may use the admin API and where it may listen.

With a token configured, every request must carry C{Authorization: Bearer
TOKEN} (L{authorize}); the token is read from a file (L{readTokenFile}), so
it is never on a command line. Without one, the API may only listen where
no one else can reach it: a C{unix:} socket or a loopback address
(L{checkAdminEndpoint}).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Sequence

from lbproxy.admin.response import AdminResponse, errorResponse
from lbproxy.listen import ListenError, splitDescription

MAX_TOKEN = 4096
"""
The longest token, in bytes, a token file may hold.
"""


class AdminConfigError(ValueError):
    """
    The admin API's settings cannot be used; the message is one line that
    says why.
    """


def readTokenFile(path: str | os.PathLike[str]) -> bytes:
    """
    The token in the file at C{path}, without surrounding whitespace.

    @raise AdminConfigError: Naming the file, if it cannot be read, is
        empty, or holds something that cannot be a bearer token (more than
        one word, characters other than printable ASCII, more than
        L{MAX_TOKEN} bytes).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            token = f.read(MAX_TOKEN + 1).strip()
    except OSError as e:
        raise AdminConfigError(f"cannot read the admin token file {name!r}: {e.strerror}") from None
    if not token:
        raise AdminConfigError(f"the admin token file {name!r} is empty")
    if len(token) > MAX_TOKEN:
        raise AdminConfigError(
            f"the admin token file {name!r} holds more than {MAX_TOKEN} bytes; "
            "it should hold only the token"
        )
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise AdminConfigError(
            f"the admin token file {name!r} must hold one word of printable ASCII "
            "(it is sent as Authorization: Bearer TOKEN)"
        )
    return token


def authorize(authorization: Sequence[bytes] | None, token: bytes | None) -> AdminResponse | None:
    """
    Whether a request may use the admin API.

    @param authorization: The request's C{Authorization} header values.
    @param token: The configured token, or L{None} when none is needed.
    @return: L{None} if it may; otherwise the 401 answer to give.
    """
    if token is None:
        return None
    if not authorization:
        return _unauthorized("this admin API needs the header Authorization: Bearer TOKEN")
    if len(authorization) > 1:
        return _unauthorized("give one Authorization header")
    scheme, _, credentials = authorization[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return _unauthorized("this admin API needs the header Authorization: Bearer TOKEN")
    if not hmac.compare_digest(credentials.strip(), token):
        return _unauthorized("wrong admin token")
    return None


def _unauthorized(message: str) -> AdminResponse:
    return errorResponse(401, message, (("WWW-Authenticate", "Bearer"),))


_PARAMETERS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}
"""
The endpoint types the admin API may listen on, and each one's
parameters in Twisted's positional order.
"""


def checkAdminEndpoint(description: str, hasToken: bool) -> None:
    """
    Check the admin API's listening endpoint: a Twisted server endpoint
    string of type C{tcp}, C{tcp6} or C{unix}. Without a token it must not
    be reachable from other hosts: a C{unix:} socket, or an C{interface=}
    that is a loopback address (127.0.0.0/8, C{::1}).

    @param hasToken: Whether a token is configured.
    @raise AdminConfigError: If the description cannot be parsed, has
        another type, or listens beyond loopback without a token.
    """
    kind, parameters = _parseEndpoint(description)
    if kind == "unix" or hasToken:
        return
    interface = parameters.get("interface", "" if kind == "tcp" else "::")
    if not _isLoopback(interface):
        raise AdminConfigError(
            f"--admin {description!r} listens beyond loopback; give --admin-token-file "
            "(a file holding the token clients must send as Authorization: Bearer TOKEN), "
            "or listen on loopback (e.g. tcp:8081:interface=127.0.0.1) or a unix: socket"
        )


def _parseEndpoint(description: str) -> tuple[str, dict[str, str]]:
    """
    The type and named parameters of a server endpoint string, read as
    Twisted reads it.

    @raise AdminConfigError: If it cannot be.
    """

    try:
        fields, named = splitDescription(description)
    except ListenError as e:
        raise _refuse(description, e.reason or str(e)) from None
    kind = fields[0] if fields else ""
    if kind not in _PARAMETERS:
        raise _refuse(
            description, "give a tcp:, tcp6: or unix: endpoint, e.g. tcp:8081:interface=127.0.0.1"
        )
    names = _PARAMETERS[kind]
    positional = fields[1:]
    if len(positional) > len(names):
        raise _refuse(description, f"{kind} takes at most {len(names)} fields ({', '.join(names)})")
    parameters = dict(zip(names, positional, strict=False))
    for name, value in named.items():
        if name not in names:
            raise _refuse(
                description, f"unknown {kind} option {name!r} (known: {', '.join(names)})"
            )
        if name in parameters:
            raise _refuse(description, f"{name} is given twice")
        parameters[name] = value
    required = "address" if kind == "unix" else "port"
    if not parameters.get(required):
        raise _refuse(
            description, f"{kind} needs a{'n' if required == 'address' else ''} {required}"
        )
    for name, base, high in _NUMBERS:
        number = parameters.get(name)
        if number is not None and not _isNumber(number, base, high):
            written = f"{high:o}" if base == 8 else str(high)
            raise _refuse(
                description, f"{name} must be {_BASES[base]} from 0 to {written}, not {number!r}"
            )
    return kind, parameters


def _refuse(description: str, reason: str) -> AdminConfigError:
    return AdminConfigError(f"cannot use --admin {description!r}: {reason}")


_NUMBERS = (("port", 10, 65535), ("backlog", 10, 1 << 20), ("mode", 8, 0o777), ("lockfile", 10, 1))
_BASES = {8: "an octal number", 10: "a number"}


def _isNumber(value: str, base: int, high: int) -> bool:
    digits = "01234567" if base == 8 else "0123456789"
    return bool(value) and set(value) <= set(digits) and int(value, base) <= high


def _isLoopback(interface: str) -> bool:
    """
    Whether C{interface} is a loopback address (a name, even C{localhost},
    is not: what it resolves to is not known here).
    """
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


__all__ = ["MAX_TOKEN", "AdminConfigError", "authorize", "checkAdminEndpoint", "readTokenFile"]
