# -*- test-case-name: lbproxy.test.test_tlsoptions -*-
"""
The TLS command-line options of C{twistd lbproxy}, mixed into
L{lbproxy.cli.options.Options}, and their checking into configuration values.

    --tls-min 1.2|1.3        Mozilla "intermediate" (default) or "modern"
    --tls-resumption on|off  session tickets and cache (default), or neither
    --cert PEM | KEY:CERT    a certificate chosen by SNI (repeatable)
    --cert-dir DIR           every DIR/*.pem (key and chain) chosen by SNI
    --hsts SECONDS|VALUE     Strict-Transport-Security on HTTPS responses
    --redirect-http DESC     plain HTTP listener answering 308 to HTTPS
    --backend-ca FILE        CA certificates for https:// backends
    --backend-insecure       do not verify https:// backends
"""

from __future__ import annotations

import re
from typing import Any

from twisted.python import usage

from lbproxy.listen import ListenError, ListenSpec, parseListen, serverEndpointForListen
from lbproxy.tls.certificates import TLSConfigError, parseCertOption
from lbproxy.tls.client import BackendTLS, BackendTLSSettings
from lbproxy.tls.policy import TLS_VERSIONS
from lbproxy.tls.sni import ServerTLSSettings, loadSNICertificates

__all__ = ["TLSOptions", "parseHSTS", "tlsConfig"]

_HSTS_DIRECTIVE = re.compile(r"(?i)^(max-age=\d{1,10}|includesubdomains|preload)$")


class TLSOptions(usage.Options):
    """
    The TLS options: protocol policy, SNI certificates, HSTS, the HTTP to
    HTTPS redirect, and verification of C{https://} backends.
    """

    optFlags = [
        [
            "backend-insecure",
            None,
            "Do not verify the certificates of https:// backends (logged as a "
            "warning at start-up). Only for testing.",
        ],
    ]

    optParameters = [
        [
            "tls-min",
            None,
            "1.2",
            "Lowest TLS version: 1.2 (Mozilla intermediate) or 1.3 (Mozilla modern).",
        ],
        [
            "tls-resumption",
            None,
            "on",
            "on: clients may resume TLS sessions (session tickets and a session cache); "
            "off: neither, every handshake is a full one.",
        ],
        [
            "hsts",
            None,
            None,
            "Send Strict-Transport-Security on HTTPS responses: SECONDS (max-age), "
            "or a whole value such as 'max-age=63072000; includeSubDomains; preload'.",
        ],
        [
            "redirect-http",
            None,
            None,
            "Also listen for plain HTTP here (e.g. tcp:80) and answer every "
            "request with 308 to the same URL over HTTPS.",
        ],
        [
            "backend-ca",
            None,
            None,
            "PEM file of the CA certificates that https:// backends' "
            "certificates must chain to (default: the platform's trust store).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["cert"] = []
        self["cert-dir"] = []

    def opt_cert(self, value: str) -> None:
        self["cert"].append(value)

    opt_cert.__doc__ = (
        "A certificate chosen by server name (SNI) on every ssl: listener "
        "(repeatable): one PEM file holding key and chain, or KEY:CERT. It "
        "serves the DNS names in its subjectAltName; the listener's own "
        "certificate serves every other name."
    )

    def opt_cert_dir(self, path: str) -> None:
        self["cert-dir"].append(path)

    opt_cert_dir.__doc__ = (
        "A directory of NAME.pem files, each holding a key and its chain, "
        "chosen by server name like --cert (repeatable; re-read on SIGHUP)."
    )


def parseHSTS(value: str) -> bytes:
    """
    The C{Strict-Transport-Security} value for C{--hsts}: a bare number of
    seconds becomes C{max-age=N}; anything else must be C{max-age=N}
    followed by C{includeSubDomains} and/or C{preload}, separated by C{;}.

    @raise ValueError: for anything else.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        return b"max-age=%d" % (int(text),)
    directives = [part.strip() for part in text.split(";")]
    if (
        not directives
        or not directives[0].lower().startswith("max-age=")
        or not all(_HSTS_DIRECTIVE.match(d) for d in directives)
        or len({d.split("=")[0].lower() for d in directives}) != len(directives)
    ):
        raise ValueError(value)
    return "; ".join(directives).encode("ascii")


def _redirect(options: usage.Options, listens: list[ListenSpec]) -> ListenSpec | None:
    """
    The checked C{--redirect-http} listener, if any.
    """
    description = options["redirect-http"]
    if description is None:
        return None
    if not any(spec.isTLS for spec in listens):
        raise usage.UsageError("--redirect-http needs an ssl: listener to redirect to")
    try:
        spec = parseListen(description)
        if spec.isTLS:
            raise usage.UsageError(
                f"--redirect-http {description!r} must be a plain listener, e.g. tcp:80"
            )
        from twisted.internet import reactor

        serverEndpointForListen(reactor, spec, None)
    except ListenError as e:
        raise usage.UsageError(f"--redirect-http: {e}") from None
    return spec


def tlsConfig(options: usage.Options, listens: list[ListenSpec]) -> dict[str, Any]:
    """
    The L{lbproxy.service.LoadBalancerConfig} fields set by L{TLSOptions}:
    C{tls}, C{backendTLS}, C{hsts} and C{redirectHTTP}.  Every certificate
    and CA file is read, so that a bad one stops start-up.

    @param listens: the checked C{--listen} descriptions.

    @raise usage.UsageError: for a bad value, with one line.
    """
    minimum = options["tls-min"]
    if minimum not in TLS_VERSIONS:
        raise usage.UsageError(f"--tls-min must be {' or '.join(TLS_VERSIONS)}, not {minimum!r}")
    try:
        serverTLS = ServerTLSSettings(
            minimumVersion=minimum,
            resumption=_onOff(options, "tls-resumption"),
            handshakeTimeout=_handshakeTimeout(options),
            certificates=tuple(parseCertOption(value) for value in options["cert"]),
            directories=tuple(options["cert-dir"]),
        )
    except TLSConfigError as e:
        raise usage.UsageError(str(e)) from None
    try:
        loadSNICertificates(serverTLS)
    except TLSConfigError as e:
        raise usage.UsageError(f"--cert/--cert-dir: {e}") from None
    if (serverTLS.certificates or serverTLS.directories) and not any(s.isTLS for s in listens):
        raise usage.UsageError("--cert and --cert-dir need an ssl: listener")
    hsts = None
    if options["hsts"] is not None:
        try:
            hsts = parseHSTS(options["hsts"])
        except ValueError:
            raise usage.UsageError(
                f"--hsts must be a number of seconds or a value like "
                f"'max-age=63072000; includeSubDomains', not {options['hsts']!r}"
            ) from None
    backendTLS = BackendTLSSettings(
        caFile=options["backend-ca"], insecure=bool(options["backend-insecure"])
    )
    if backendTLS.insecure and backendTLS.caFile is not None:
        raise usage.UsageError("--backend-ca and --backend-insecure contradict each other")
    try:
        BackendTLS(backendTLS)
    except TLSConfigError as e:
        raise usage.UsageError(f"--backend-ca: {e}") from None
    return {
        "tls": serverTLS,
        "backendTLS": backendTLS,
        "hsts": hsts,
        "redirectHTTP": _redirect(options, listens),
    }


def _onOff(options: usage.Options, name: str) -> bool:
    """
    Option C{name}, C{on} or C{off} (in any case), as a boolean.

    @raise usage.UsageError: In one line, for anything else.
    """
    value = str(options[name]).strip().lower()
    if value not in ("on", "off"):
        raise usage.UsageError(f"--{name} must be on or off, not {options[name]!r}")
    return value == "on"


def _handshakeTimeout(options: usage.Options) -> float:
    text = options.get("handshake-timeout", "10")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise usage.UsageError(f"--handshake-timeout must be a number of seconds > 0, not {text!r}")
    return value
