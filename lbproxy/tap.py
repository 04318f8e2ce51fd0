"""
The command line: C{twistd lbproxy} options, checked before anything
starts, and L{makeService}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python import usage

from lbproxy.accesslog import AccessLog
from lbproxy.backends import Backend, BackendSpecError, parseBackends
from lbproxy.choosers import BUILTIN_CHOOSERS, DEFAULT_CHOOSER, ChooserError, makeChooser
from lbproxy.demo import DEMO_LISTEN
from lbproxy.interfaces import IChooser
from lbproxy.listen import (
    DEFAULT_LISTEN,
    ListenError,
    ListenSpec,
    missingCertificateFiles,
    parseListen,
    serverEndpointForListen,
)
from lbproxy.proxy import ProxySettings
from lbproxy.service import LoadBalancerConfig, StartupError, makeLoadBalancer
from lbproxy.tls import TLSConfigError, serverOptionsFromFiles
from lbproxy.upstream import UpstreamSettings

ADHOC_LISTEN = "ssl:443"


def _positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise usage.UsageError(f"--{name} must be greater than 0, not {text!r}")
    return value


_SIZE_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parseSize(text: str) -> int:
    """
    Parse a byte size: a whole number with an optional C{K}, C{M} or C{G}
    suffix (binary multiples), e.g. C{100M}.

    @raise ValueError: For anything else.
    """
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = cleaned[-1:] if cleaned[-1:] in ("k", "m", "g") else ""
    number = cleaned[: len(cleaned) - len(suffix)]
    if not number.isdigit():
        raise ValueError(text)
    return int(number) * _SIZE_SUFFIXES[suffix]


class Options(usage.Options):
    """
    C{twistd lbproxy} options.
    """

    synopsis = "[options] --backends HOST[:PORT],..."
    longdesc = (
        "An HTTPS load balancer: terminates TLS and relays each request over "
        "HTTP/1.1 to one of the backends, chosen by a pluggable chooser. "
        "Try --demo for a self-contained example."
    )

    optFlags = [
        [
            "adhoc",
            None,
            "Serve a certificate generated in memory at start-up on every ssl: "
            "listener that names no privateKey (and listen on ssl:443 when no "
            "--listen is given). Its SHA-256 fingerprint is logged.",
        ],
        [
            "demo",
            None,
            "Start two demo backends in this process and serve them on "
            "ssl:8443 (ad-hoc certificate) and tcp:8080.",
        ],
    ]

    optParameters = [
        [
            "backends",
            "b",
            None,
            "Comma-separated backends: host, host:port, [v6addr]:port or "
            "http://host:port (default port 80).",
        ],
        [
            "chooser",
            "c",
            DEFAULT_CHOOSER,
            "Balancing policy: "
            + ", ".join(sorted(BUILTIN_CHOOSERS))
            + ", or the dotted name of a class providing "
            "lbproxy.interfaces.IChooser.",
        ],
        [
            "timeout",
            None,
            "30",
            "Seconds to wait for a backend's response headers before answering 504.",
        ],
        ["connect-timeout", None, "5", "Seconds to wait for a connection to a backend."],
        [
            "max-body",
            None,
            "100M",
            "Largest request body accepted (bytes; K, M, G suffixes); larger gets 413.",
        ],
        [
            "access-log",
            None,
            None,
            "Access log destination: a file PATH, - for stdout, none to disable. "
            "Default: the twistd log.",
        ],
        [
            "max-idle-per-backend",
            None,
            "64",
            "Idle keep-alive connections kept open to each backend.",
        ],
        ["idle-timeout", None, "30", "Seconds an idle backend connection is kept open."],
    ]

    compData = usage.Completions(
        optActions={"chooser": usage.CompleteList(sorted(BUILTIN_CHOOSERS))}
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow-host"] = []
        self.config: LoadBalancerConfig | None = None

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    opt_listen.__doc__ = (
        "Where to accept clients, as a Twisted server endpoint string "
        "(repeatable): ssl:8443:privateKey=KEY:certKey=CERT, tcp:8080, tcp6:..., "
        f"unix:... [default: {DEFAULT_LISTEN}]"
    )

    def opt_allow_host(self, name: str) -> None:
        self["allow-host"].append(name.strip().lower())

    opt_allow_host.__doc__ = (
        "Serve only this Host (repeatable); requests for other Hosts get "
        "421 Misdirected Request. Default: serve every Host."
    )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the command line; a usage error is reported as one line on
        standard error and exits with status 2, without a usage dump.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"lbproxy: error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        """
        Check every option and build the configuration; raise
        L{usage.UsageError} with one clear line for anything wrong.
        """
        self.config = buildConfig(self)


def _backends(options: Options) -> list[Backend]:
    text = options["backends"]
    if options["demo"]:
        if text:
            raise usage.UsageError("--demo starts its own backends; do not give --backends")
        return []
    if text is None:
        raise usage.UsageError("--backends is required (or try --demo)")
    try:
        return parseBackends(text)
    except BackendSpecError as e:
        raise usage.UsageError(str(e)) from None


def _listens(options: Options) -> list[ListenSpec]:
    descriptions: list[str] = list(options["listen"])
    if not descriptions:
        if options["demo"]:
            descriptions = list(DEMO_LISTEN)
        elif options["adhoc"]:
            descriptions = [ADHOC_LISTEN]
        else:
            descriptions = [DEFAULT_LISTEN]
    adhoc = options["adhoc"] or options["demo"]
    specs = []
    for description in descriptions:
        try:
            spec = parseListen(description)
        except ListenError as e:
            raise usage.UsageError(str(e)) from None
        if spec.isTLS and spec.privateKey is None and not adhoc:
            raise usage.UsageError(
                f"--listen {description!r} names no privateKey: add "
                "privateKey=KEY:certKey=CERT, or pass --adhoc for a generated certificate"
            )
        missing = missingCertificateFiles(spec)
        if missing:
            raise usage.UsageError(
                f"certificate file {missing[0]} not found for --listen {description!r}; "
                "create one with 'python -m lbproxy.certs', or run with --adhoc "
                "for a generated certificate"
            )
        if not spec.isTLS:
            _checkEndpoint(spec)
        if spec.isTLS and spec.privateKey is not None:
            try:
                serverOptionsFromFiles(spec.privateKey, spec.certKey, spec.extraCertChain)
            except TLSConfigError as e:
                raise usage.UsageError(f"--listen {description!r}: {e}") from None
        specs.append(spec)
    return specs


def _checkEndpoint(spec: ListenSpec) -> None:
    """
    Build (without listening) the endpoint for a non-TLS C{spec}, so that an
    unknown endpoint type or a bad argument is a usage error.
    """
    from twisted.internet import reactor

    try:
        serverEndpointForListen(reactor, spec, None)  # type: ignore[arg-type]
    except ListenError as e:
        raise usage.UsageError(str(e)) from None


def buildConfig(options: Options) -> LoadBalancerConfig:
    """
    Turn parsed options into a L{LoadBalancerConfig}.

    @raise usage.UsageError: For any bad value, with one clear line.
    """
    backends = _backends(options)
    listens = _listens(options)
    try:
        chooser: IChooser = makeChooser(options["chooser"])
    except ChooserError as e:
        raise usage.UsageError(str(e)) from None
    try:
        maxBody = parseSize(options["max-body"])
    except ValueError:
        raise usage.UsageError(
            f"--max-body must be a size like 1048576 or 100M, not {options['max-body']!r}"
        ) from None
    try:
        maxIdle = int(options["max-idle-per-backend"])
    except ValueError:
        maxIdle = -1
    if maxIdle < 0:
        raise usage.UsageError("--max-idle-per-backend must be a whole number >= 0")
    try:
        accessLog = AccessLog.fromOption(options["access-log"])
    except OSError as e:
        raise usage.UsageError(
            f"cannot open --access-log {options['access-log']!r}: {e.strerror}"
        ) from None
    allowed = frozenset(options["allow-host"]) or None
    return LoadBalancerConfig(
        backends=backends,
        listens=listens,
        chooser=chooser,
        proxy=ProxySettings(
            allowedHosts=allowed,
            responseTimeout=_positive("timeout", options["timeout"]),
        ),
        upstream=UpstreamSettings(
            connectTimeout=_positive("connect-timeout", options["connect-timeout"]),
            maxIdlePerBackend=maxIdle,
            idleTimeout=_positive("idle-timeout", options["idle-timeout"]),
        ),
        maxBodySize=maxBody,
        accessLog=accessLog,
        demo=options["demo"],
        adhoc=options["adhoc"] or options["demo"],
    )


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the lbproxy service from parsed C{options}.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    config = options.config
    if config is None:
        config = buildConfig(options)
    network: IReactorTCP = reactor
    clock: IReactorTime = reactor
    return _ExitOnStartupError(makeLoadBalancer(config, network, clock))


class _ExitOnStartupError(MultiService):
    """
    Runs the load balancer under twistd, turning a L{StartupError} into one
    line and a non-zero exit instead of a traceback.
    """

    def __init__(self, service: IService) -> None:
        super().__init__()
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            raise SystemExit(f"lbproxy: error: {e}") from None


__all__ = ["Options", "buildConfig", "makeService", "parseSize"]
