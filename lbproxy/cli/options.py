# -*- test-case-name: lbproxy.test.test_tap,lbproxy.test.test_clichoosers,lbproxy.test.test_tlsoptions -*-  # noqa: E501
"""
The command line: C{twistd lbproxy} options, checked before anything
starts, and L{makeService}.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from lbproxy.admin import AdminConfigError, checkAdminEndpoint, readTokenFile
from lbproxy.balancer import PoolConfig
from lbproxy.balancing.hash import DEFAULT_BALANCE_FACTOR, DEFAULT_HASH_KEY
from lbproxy.balancing.registry import (
    BUILTIN_CHOOSERS,
    DEFAULT_CHOOSER,
    ChooserError,
    makeChooser,
)
from lbproxy.balancing.sticky import DEFAULT_COOKIE
from lbproxy.cli.choosers import settingsFromOptions
from lbproxy.cli.configfile import (
    POOL_OPTIONS,
    ConfigFileError,
    ConfigSource,
    FileLayout,
    PoolSection,
    applyConfigFile,
    poolOptions,
    readConfigFile,
)
from lbproxy.cli.discoveryoptions import DiscoveryOptions, discoverySettings
from lbproxy.cli.helptext import groupedUsage
from lbproxy.cli.http2options import HTTP2Options, http2Settings
from lbproxy.cli.reload import Reloader
from lbproxy.cli.tlsoptions import TLSOptions, tlsConfig
from lbproxy.demo import DEMO_LISTEN
from lbproxy.discovery.sources import Source, splitBackends
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import EdgeLimits
from lbproxy.http.headers import NEVER_CONNECTION_OPTIONS, UNEDITABLE
from lbproxy.http.logformats import FORMATS as LOG_FORMATS
from lbproxy.http.requestid import DEFAULT_HEADER as DEFAULT_REQUEST_ID_HEADER
from lbproxy.http.requestid import RequestIdSettings
from lbproxy.interfaces import IChooser
from lbproxy.listen import (
    DEFAULT_LISTEN,
    ListenError,
    ListenSpec,
    missingCertificateFiles,
    parseListen,
    serverEndpointForListen,
)
from lbproxy.observe import DEFAULT_SAMPLE
from lbproxy.proxy import ProxySettings
from lbproxy.runtime import ProcessRoot
from lbproxy.service import DEFAULT_POOL, LoadBalancerConfig, makeLoadBalancer
from lbproxy.tls.certificates import TLSConfigError
from lbproxy.tls.sni import serverOptionsFromFiles
from lbproxy.upstream.backends import Backend, BackendSpecError, parseBackend
from lbproxy.upstream.health import EjectionSettings, HealthSettings
from lbproxy.upstream.pool import UpstreamSettings
from lbproxy.watch import ConfigWatcher
from lbproxy.workers import (
    WorkersError,
    checkWorkers,
    makeSupervisor,
    parseWorkers,
    reusePortChoice,
)

ADHOC_LISTEN = "ssl:443"

_log = Logger()


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


class EdgeOptions(usage.Options):
    """
    Limits on what clients may send and how long they may take. Mixed into
    L{Options}.
    """

    optParameters = [
        ["max-target", None, "8K", "Longest request-target (414 above)."],
        ["max-header-size", None, "64K", "Largest request header section (431 above)."],
        ["max-header-fields", None, "100", "Most request header fields (431 above)."],
        [
            "header-timeout",
            None,
            "10",
            "Seconds to receive a whole request head once it has started (408 after).",
        ],
        [
            "body-timeout",
            None,
            "30",
            "Seconds a request body may make no progress (408 after; 504 when the "
            "backend is the one not reading it).",
        ],
        [
            "client-idle-timeout",
            None,
            "60",
            "Seconds an idle keep-alive client connection is kept open.",
        ],
        [
            "send-timeout",
            None,
            "60",
            "Seconds a client may take nothing of a response before both its "
            "connection and the backend's are dropped.",
        ],
        [
            "handshake-timeout",
            None,
            "10",
            "Seconds a client has to complete its TLS handshake.",
        ],
        [
            "tunnel-idle-timeout",
            None,
            "3600",
            "Seconds an upgraded connection (WebSocket) may carry nothing either way "
            "before it is closed.",
        ],
        [
            "max-connections",
            None,
            "10000",
            "Client connections open at once; more are answered 503 and closed. "
            "Left at the default, it is lowered to what the open-file limit allows.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["trusted-proxy"] = []

    def opt_trusted_proxy(self, cidr: str) -> None:
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise usage.UsageError(
                f"--trusted-proxy must be an address or network like 10.0.0.0/8, not {cidr!r}"
            ) from None
        self["trusted-proxy"].append(network)

    opt_trusted_proxy.__doc__ = (
        "A proxy in front of lbproxy (address or CIDR, repeatable) whose "
        "X-Forwarded-For/-Proto/-Host and Forwarded headers are kept and appended "
        "to; from any other peer they are replaced. Default: trust none."
    )


def edgeLimits(options: usage.Options, maxBodySize: int) -> EdgeLimits:
    """
    The L{EdgeLimits} set by L{EdgeOptions} (and C{--max-body}).

    @raise usage.UsageError: For a bad value.
    """
    sizes = {}
    for name in ("max-target", "max-header-size"):
        try:
            sizes[name] = parseSize(options[name])
        except ValueError:
            raise usage.UsageError(f"--{name} must be a size like 8192 or 8K") from None
        if sizes[name] < 64:
            raise usage.UsageError(f"--{name} must be at least 64 bytes")
    return EdgeLimits(
        maxBodySize=maxBodySize,
        maxTarget=sizes["max-target"],
        maxHeaderBytes=sizes["max-header-size"],
        maxFields=int(_number(options, "max-header-fields", 1, integer=True)),
        headerTimeout=_positive("header-timeout", options["header-timeout"]),
        bodyTimeout=_positive("body-timeout", options["body-timeout"]),
        idleTimeout=_positive("client-idle-timeout", options["client-idle-timeout"]),
        maxConnections=int(_number(options, "max-connections", 1, integer=True)),
    )


class ResilienceOptions(usage.Options):
    """
    The options that hide failing backends: health checks, outlier
    ejection, retries, slow start and graceful drain. Mixed into L{Options}.
    """

    optFlags = [
        ["eject-on-5xx", None, "Count 5xx answers as failures for outlier ejection."],
    ]

    optParameters = [
        [
            "health-interval",
            None,
            "2",
            "Seconds between active health checks of each backend; 0 turns them off.",
        ],
        ["health-path", None, "/", "Path probed with GET; a 2xx or 3xx answer is healthy."],
        ["health-timeout", None, "1", "Seconds a health check may take."],
        ["health-fall", None, "3", "Consecutive failed checks that take a backend down."],
        ["health-rise", None, "2", "Consecutive good checks that bring it back up."],
        [
            "max-fails",
            None,
            "3",
            "Consecutive failed requests that eject a backend (0: never eject).",
        ],
        [
            "eject-time",
            None,
            "10",
            "Seconds of a first ejection; each repeat doubles it, up to --eject-max-time.",
        ],
        ["eject-max-time", None, "300", "Longest ejection, in seconds."],
        [
            "max-ejection-percent",
            None,
            "50",
            "Never eject more than this percentage of the backends at once.",
        ],
        [
            "retries",
            None,
            "2",
            "Other backends a failed request may be tried on: always when the "
            "connection failed, and for idempotent methods when the backend "
            "closed or reset before answering.",
        ],
        [
            "retry-budget",
            None,
            "20",
            "Retries allowed as a percentage of recent requests (plus 3 per second).",
        ],
        [
            "slow-start",
            None,
            "0",
            "Seconds over which a backend coming back ramps up to its full share "
            "(weighted choosers); 0 turns it off.",
        ],
        [
            "drain-timeout",
            None,
            "30",
            "On SIGTERM/SIGINT, seconds to let requests in progress finish.",
        ],
    ]


class Options(EdgeOptions, ResilienceOptions, TLSOptions, DiscoveryOptions, HTTP2Options):
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
            "watch-config",
            None,
            "Reload the --config file whenever it changes on disk (it is read every "
            "2 seconds; a swapped symlink, as Kubernetes updates a ConfigMap, counts), "
            "as SIGHUP does.",
        ],
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
        [
            "reuse-port",
            None,
            "With --workers, give each worker a socket of its own on every TCP "
            "listener (SO_REUSEPORT), so that the kernel spreads new connections "
            "over the workers (by a hash: even on average). The default on Linux.",
        ],
        [
            "no-reuse-port",
            None,
            "With --workers, let every worker accept from one socket per listener "
            "(one accept queue) instead of --reuse-port.",
        ],
    ]

    optParameters = [
        [
            "config",
            None,
            None,
            "TOML file with any of these options, several pools and routes "
            "(docs/configuration.md); flags given too win. SIGHUP reloads it.",
        ],
        [
            "admin",
            None,
            None,
            "Serve the admin API (JSON: pools, backends, config) on this endpoint, "
            "e.g. tcp:9901:interface=127.0.0.1 or unix:/run/lbproxy.sock. Off by default.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics (GET /metrics, read-only, no token) on this "
            "endpoint, e.g. tcp:9100:interface=127.0.0.1. The admin API serves them too.",
        ],
        [
            "decision-sample",
            None,
            str(DEFAULT_SAMPLE),
            "The admin dashboard records one routing decision in this many (per pool), "
            "with every candidate's scores; 0 records none.",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the bearer token the admin API requires; needed when "
            "--admin listens beyond loopback.",
        ],
        [
            "backends",
            "b",
            None,
            "Comma-separated backends: host, host:port, [v6addr]:port or "
            "http://host:port (default port 80), each optionally followed by "
            "=WEIGHT (1-1000, default 1), e.g. 10.0.0.1:80=3; dns:NAME:PORT (every "
            "address of NAME) and srv:_service._proto.NAME (every SRV target) are "
            "looked up again at their TTL.",
        ],
        [
            "chooser",
            "c",
            DEFAULT_CHOOSER,
            "Balancing policy: "
            + ", ".join(sorted(BUILTIN_CHOOSERS))
            + ", a name registered in the lbproxy.choosers entry point group, "
            "or the dotted name of a class providing lbproxy.interfaces.IChooser.",
        ],
        [
            "hash-key",
            None,
            DEFAULT_HASH_KEY,
            "What --chooser hash hashes: client-ip, header:NAME, cookie:NAME or path.",
        ],
        [
            "hash-balance-factor",
            None,
            str(DEFAULT_BALANCE_FACTOR),
            "--chooser hash sends no backend more than this times the average "
            "in-flight requests (at least 1); the overflow goes to the key's next choice.",
        ],
        ["sticky-cookie", None, DEFAULT_COOKIE, "Name of --chooser sticky's affinity cookie."],
        [
            "sticky-fallback",
            None,
            DEFAULT_CHOOSER,
            "Chooser for requests without a valid sticky cookie, or whose backend is gone.",
        ],
        [
            "sticky-secret-file",
            None,
            None,
            "File holding the key (16+ bytes) that signs sticky cookies, to keep "
            "them valid across restarts and instances. Default: a random key per process.",
        ],
        [
            "timeout",
            None,
            "30",
            "Seconds to wait for a backend's response headers (once the request is "
            "sent) before answering 504, and the longest a backend may then pause "
            "in the middle of a response body.",
        ],
        ["connect-timeout", None, "5", "Seconds to wait for a connection to a backend."],
        [
            "max-body",
            None,
            "100M",
            "Largest request body accepted (bytes; K, M, G suffixes); larger gets 413; "
            "0 for no limit. Bodies stream to the backend as they arrive.",
        ],
        [
            "access-log",
            None,
            None,
            "Access log destination: a file PATH, - for stdout, none to disable. "
            "Default: the twistd log.",
        ],
        [
            "access-log-format",
            None,
            "lbproxy",
            "Access log lines: lbproxy, combined (Apache's and nginx's) or json "
            "(one object per line).",
        ],
        [
            "request-id",
            None,
            "on",
            "on: every request gets an ID (its own from a --trusted-proxy, a new one "
            "otherwise), sent to the backend, returned to the client and logged; off: none.",
        ],
        [
            "request-id-header",
            None,
            DEFAULT_REQUEST_ID_HEADER,
            "The header that carries the request ID both ways.",
        ],
        [
            "max-idle-per-backend",
            None,
            "256",
            "Idle keep-alive connections kept open to each backend.",
        ],
        [
            "backend-idle-timeout",
            None,
            "30",
            "Seconds an idle backend connection is kept open.",
        ],
        [
            "workers",
            None,
            "1",
            "Processes serving clients, sharing the listening sockets (auto: one "
            "per CPU); with more than 1, a supervisor binds the sockets, starts "
            "the workers and restarts any that dies.",
        ],
    ]

    compData = usage.Completions(
        optActions={"chooser": usage.CompleteList(sorted(BUILTIN_CHOOSERS))}
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow-host"] = []
        self.config: LoadBalancerConfig | None = None
        self.layout: FileLayout | None = None
        self.given: frozenset[str] = frozenset()
        self._configSource: ConfigSource | None = None
        self.workers = 1
        self.reusePort = False
        self.arguments: list[str] = []

    def getUsage(self, width: int | None = None) -> str:
        """
        The help text: the options in groups, the basics first (see
        L{lbproxy.cli.helptext}).
        """
        longdesc = "\n".join(textwrap.wrap(self.longdesc, width or 80))
        return groupedUsage(self, width) + "\n" + longdesc + "\n"

    def opt_version(self) -> None:
        """
        Print lbproxy's version (and Twisted's and Python's) and exit.
        """
        print(versionLine())
        raise SystemExit(0)

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    opt_listen.__doc__ = (
        "Where to accept clients, as a Twisted server endpoint string "
        "(repeatable): ssl:8443:privateKey=KEY:certKey=CERT, tcp:8080, tcp6:..., "
        "unix:... [default: ssl:443 with certs/loadbalancer.key and certs/loadbalancer.crt]"
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
        self.arguments = list(sys.argv[1:] if options is None else options)
        preferLeanReactor()
        try:
            self.parseArguments(self.arguments)
        except usage.UsageError as e:
            sys.stderr.write(f"lbproxy: error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None

    def parseArguments(
        self, arguments: Sequence[str], configSource: ConfigSource | None = None
    ) -> None:
        """
        Parse C{arguments} (and the config file they name, or
        C{configSource} instead of it) and build the configuration.

        @raise usage.UsageError: With one line for anything wrong.
        """
        self.arguments = list(arguments)
        self.given = givenOptions(self, self.arguments)
        self._configSource = configSource
        super().parseOptions(self.arguments)

    def postOptions(self) -> None:
        """
        Check every option and build the configuration; raise
        L{usage.UsageError} with one clear line for anything wrong.
        """
        source = self._configSource
        if source is not None:
            self.layout = applyConfigFile(self, source, self.given)
        elif self["config"] is not None:
            self.layout = applyConfigFile(self, readConfigFile(self["config"]), self.given)
        if self["watch-config"] and self["config"] is None:
            raise usage.UsageError("--watch-config watches the --config file: give one")
        try:
            self.config = buildConfig(self)
        except ConfigFileError:
            raise
        except usage.UsageError as e:
            raise _inFile(self.layout, str(e), self.given) from None
        self.workers = parseWorkers(self["workers"])
        _checkWorkers(self, self.workers, self.config)


def _checkWorkers(options: Options, count: int, config: LoadBalancerConfig) -> None:
    """
    Refuse what C{--workers} C{count} cannot do: C{--chooser sticky} without
    C{--sticky-secret-file} (each worker would sign cookies with a random
    key of its own, and ignore the others'), and whatever
    L{lbproxy.workers.checkWorkers} refuses in C{config}; settle
    C{--reuse-port} (L{lbproxy.workers.reusePortChoice}).

    @raise usage.UsageError: With one line saying which.
    """
    reuse, noReuse = bool(options["reuse-port"]), bool(options["no-reuse-port"])
    if reuse and noReuse and len({"reuse-port", "no-reuse-port"} & options.given) == 1:
        # One from the command line, the other from the config file: the
        # command line wins.
        reuse, noReuse = "reuse-port" in options.given, "no-reuse-port" in options.given
    try:
        options.reusePort = reusePortChoice(reuse, noReuse)
    except WorkersError as e:
        raise usage.UsageError(str(e)) from None
    if count == 1:
        return
    if options["chooser"] == "sticky" and options["sticky-secret-file"] is None:
        raise usage.UsageError(
            "--chooser sticky with --workers needs --sticky-secret-file, so that "
            "every worker signs and accepts the same cookies"
        )
    try:
        checkWorkers(count, config)
    except WorkersError as e:
        raise usage.UsageError(str(e)) from None


def versionLine() -> str:
    """
    What C{twistd lbproxy --version} prints: lbproxy's version, then
    Twisted's and Python's.
    """
    import platform

    import twisted
    from lbproxy import __version__

    return (
        f"lbproxy {__version__} (Twisted {twisted.__version__}, "
        f"Python {platform.python_version()})"
    )


def _backends(
    options: Mapping[str, Any], mayBeEmpty: bool = False
) -> tuple[tuple[Backend, ...], tuple[Source, ...]]:
    """
    The backends C{options} give, and the DNS names (C{dns:}, C{srv:})
    that give more; none only where C{mayBeEmpty} (a config file's pool
    whose backends are to be added through the admin API).
    """
    text = options["backends"]
    if options["demo"]:
        if text:
            raise usage.UsageError("--demo starts its own backends; do not give --backends")
        return (), ()
    if text is None:
        raise usage.UsageError("--backends is required (or try --demo, or --config FILE)")
    if mayBeEmpty and not text.strip():
        return (), ()
    try:
        return splitBackends(text)
    except BackendSpecError as e:
        raise usage.UsageError(f"--backends: {e}") from None


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


def preferLeanReactor() -> None:
    """
    Install lbproxy's reactor (L{lbproxy._twisted.reactor}: epoll without
    the per-event log context) if none is installed yet, as twistd's
    C{--reactor} does while parsing options; a reactor chosen with
    C{--reactor}, or already running (tests, a program embedding lbproxy),
    is left alone, and so is a platform without epoll.
    """
    try:
        from lbproxy._twisted.reactor import installPreferred
    except (ImportError, AttributeError):  # (no select.epoll here)
        return
    installPreferred()


def _checkEndpoint(spec: ListenSpec) -> None:
    """
    Build (without listening) the endpoint for a non-TLS C{spec}, so that an
    unknown endpoint type or a bad argument is a usage error.
    """
    from twisted.internet import reactor

    try:
        serverEndpointForListen(reactor, spec, None)
    except ListenError as e:
        raise usage.UsageError(str(e)) from None


def buildConfig(options: Options) -> LoadBalancerConfig:
    """
    Turn parsed options (and the config file's pools and routes) into a
    L{LoadBalancerConfig}.

    @raise usage.UsageError: For any bad value, with one clear line.
    """
    layout = options.layout
    listens = _listens(options)
    try:
        maxBody = parseSize(options["max-body"])
    except ValueError:
        raise usage.UsageError(
            f"--max-body must be a size like 1048576 or 100M, not {options['max-body']!r}"
        ) from None
    accessLog = _accessLog(options["access-log"], options["access-log-format"])
    allowed = frozenset(options["allow-host"]) or None
    edge = ProxySettings(
        allowedHosts=allowed,
        sendTimeout=_positive("send-timeout", options["send-timeout"]),
        tunnelIdleTimeout=_positive("tunnel-idle-timeout", options["tunnel-idle-timeout"]),
        trustedProxies=tuple(options["trusted-proxy"]),
    )
    resilience = resilienceConfig(options)
    if layout is not None and layout.pools:
        pools = tuple(_filePool(options, layout, section, edge) for section in layout.pools)
    else:
        pools = (_poolInFile(layout, DEFAULT_POOL, options, edge, options.given),)
    default = pools[0]
    admin, adminToken = _admin(options)
    return LoadBalancerConfig(
        backends=list(default.backends),
        listens=listens,
        chooser=default.chooser,
        proxy=default.proxy,
        upstream=default.upstream,
        limits=edgeLimits(options, maxBody),
        accessLog=accessLog,
        requestIds=_requestIds(options),
        demo=options["demo"],
        adhoc=options["adhoc"] or options["demo"],
        health=default.health,
        ejection=default.ejection,
        slowStart=default.slowStart,
        retryBudgetPercent=default.retryBudgetPercent,
        drainTimeout=resilience["drainTimeout"],
        pools=pools,
        routes=layout.routes if layout is not None else None,
        admin=admin,
        adminToken=adminToken,
        metrics=_metricsEndpoint(options["metrics"]),
        discovery=discoverySettings(options),
        dashboard=admin is not None,
        decisionSample=int(_number(options, "decision-sample", 0, integer=True)),
        fitConnections="max-connections" not in options.given
        and (layout is None or "max-connections" not in layout.source.data),
        http2=http2Settings(options),
        **tlsConfig(options, listens),
    )


def _metricsEndpoint(description: str | None) -> str | None:
    """
    The C{--metrics} endpoint, checked to be one Twisted can listen on.

    @raise usage.UsageError: If it is not.
    """
    if description is None:
        return None
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--metrics {description!r} is not an endpoint: {e}") from None
    return description


def _admin(options: Mapping[str, Any]) -> tuple[str | None, bytes | None]:
    """
    The admin endpoint and token C{--admin} and C{--admin-token-file} ask
    for.

    @raise usage.UsageError: For an endpoint beyond loopback without a
        token, or a token file that cannot be read.
    """
    description = options["admin"]
    path = options["admin-token-file"]
    try:
        token = None if path is None else readTokenFile(path)
        if description is not None:
            checkAdminEndpoint(description, token is not None)
    except AdminConfigError as e:
        raise usage.UsageError(str(e)) from None
    return description, token


def poolConfig(
    name: str, options: Mapping[str, Any], edge: ProxySettings, mayBeEmpty: bool = False
) -> PoolConfig:
    """
    The pool called C{name} that the pool options in C{options} describe
    (C{backends}, C{chooser} and its settings, timeouts, health checks,
    ejection, retries); C{edge} holds the settings every pool shares.

    @raise usage.UsageError: For a bad value, naming the option.
    """
    backends, sources = _backends(options, mayBeEmpty)
    settings = settingsFromOptions(options)
    try:
        chooser: IChooser = makeChooser(options["chooser"], settings=settings)
    except ChooserError as e:
        raise usage.UsageError(f"--chooser: {e}") from None
    try:
        maxIdle = int(options["max-idle-per-backend"])
    except ValueError:
        maxIdle = -1
    if maxIdle < 0:
        raise usage.UsageError("--max-idle-per-backend must be a whole number >= 0")
    resilience = resilienceConfig(options)
    return PoolConfig(
        name=name,
        backends=backends,
        chooser=chooser,
        chooserKey=(options["chooser"], settings),
        proxy=attrs.evolve(
            edge,
            responseTimeout=_positive("timeout", options["timeout"]),
            retries=int(_number(options, "retries", 0, integer=True)),
        ),
        upstream=UpstreamSettings(
            connectTimeout=_positive("connect-timeout", options["connect-timeout"]),
            maxIdlePerBackend=maxIdle,
            idleTimeout=_positive("backend-idle-timeout", options["backend-idle-timeout"]),
        ),
        health=resilience["health"],
        ejection=resilience["ejection"],
        slowStart=resilience["slowStart"],
        retryBudgetPercent=resilience["retryBudgetPercent"],
        options={key: options[key] for key in sorted(POOL_OPTIONS)},
        sources=sources,
    )


def _poolInFile(
    layout: FileLayout | None,
    name: str,
    options: Mapping[str, Any],
    edge: ProxySettings,
    given: frozenset[str],
    section: PoolSection | None = None,
) -> PoolConfig:
    """
    L{poolConfig}, with an error in a value the config file gave reported
    at its line.
    """
    try:
        return poolConfig(name, options, edge, mayBeEmpty=section is not None)
    except (usage.UsageError, ChooserError) as e:
        raise _inFile(layout, str(e), given, section) from None


def _inFile(
    layout: FileLayout | None,
    message: str,
    given: frozenset[str],
    section: PoolSection | None = None,
) -> usage.UsageError:
    """
    The error C{message} about a C{--flag}'s value, reported at the config
    file's line when the file gave that value (in C{section}'s table or at
    the top level) and the command line did not.
    """
    flag = _FLAG.search(message)
    if layout is None or flag is None or flag.group(1) in given:
        return usage.UsageError(message)
    key = flag.group(1)
    detail = message[flag.end() :].lstrip(": ") if flag.start() == 0 else message
    if section is not None and key in section.values:
        return layout.source.error(("pools", section.name, key), detail)
    if key in layout.source.data:
        return layout.source.error((key,), detail)
    return usage.UsageError(message)


_FLAG = re.compile(r"--([a-z0-9-]+)")


def _filePool(
    options: Options, layout: FileLayout, section: PoolSection, edge: ProxySettings
) -> PoolConfig:
    """
    The pool of one C{[pools.NAME]} table.
    """
    pool = _poolInFile(
        layout, section.name, poolOptions(options, section), edge, options.given, section
    )
    draining = set(section.draining)
    backends = []
    for backend in pool.backends:
        named = {text for text in draining if _names(text, backend)}
        if named:
            draining -= named
            backend = attrs.evolve(backend, draining=True)
        backends.append(backend)
    if draining:
        raise layout.source.error(
            ("pools", section.name, "draining"),
            f"{sorted(draining)[0]!r} is not one of the pool's backends",
        )
    return attrs.evolve(pool, backends=tuple(backends))


def _names(text: str, backend: Backend) -> bool:
    """
    Whether C{text} (an item of a pool's C{draining}) names C{backend}: as
    its C{host:port}, its URL, or as C{backends} would give it.
    """
    if text in (backend.authority, backend.url):
        return True
    try:
        return parseBackend(text).key == backend.key
    except BackendSpecError:
        return False


def givenOptions(options: usage.Options, arguments: Sequence[str]) -> frozenset[str]:
    """
    The (long) names of the options given in C{arguments}, which a config
    file does not override. Arguments that do not parse name nothing here:
    parsing them properly reports the error.
    """
    import getopt

    try:
        given, _ = getopt.getopt(list(arguments), options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return frozenset()
    names = set()
    for flag, _ in given:
        name = flag.lstrip("-")
        mangled = name if name in options.synonyms else name.replace("-", "_")
        if mangled in options.synonyms:
            names.add(options.synonyms[mangled])
    return frozenset(names)


def _accessLog(option: str | None, format: str = "lbproxy") -> AccessLog:
    """
    The access log C{--access-log} asks for, in the C{--access-log-format},
    its file (if any) not opened: the service opens it when it starts. A
    file that plainly cannot be opened (its directory is missing, it is a
    directory, or it may not be written) is a usage error now.

    @raise usage.UsageError: Naming the file and why, or the format.
    """
    if format not in LOG_FORMATS:
        raise usage.UsageError(
            f"--access-log-format must be one of {', '.join(LOG_FORMATS)}, not {format!r}"
        )
    accessLog = AccessLog.fromOption(option, format)
    path = accessLog.path
    if path is not None:
        reason = _unwritable(path)
        if reason is not None:
            raise usage.UsageError(f"cannot open --access-log {path!r}: {reason}")
    return accessLog


def _requestIds(options: Mapping[str, Any]) -> RequestIdSettings:
    """
    The request ID settings C{--request-id}, C{--request-id-header} and
    C{--trusted-proxy} give.

    @raise usage.UsageError: For a value other than on or off, or a header
        name that is not a token or is one lbproxy writes itself.
    """
    switch = options["request-id"].strip().lower()
    if switch not in ("on", "off"):
        raise usage.UsageError(f"--request-id must be on or off, not {options['request-id']!r}")
    name = options["request-id-header"].strip()
    token = re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) is not None
    if not token or name.lower().encode("ascii") in UNEDITABLE | NEVER_CONNECTION_OPTIONS:
        raise usage.UsageError(
            f"--request-id-header must be a header name like X-Request-ID that lbproxy "
            f"does not set itself, not {name!r}"
        )
    return RequestIdSettings(
        enabled=switch == "on",
        header=name.encode("ascii"),
        trustedProxies=tuple(options["trusted-proxy"]),
    )


def _unwritable(path: str) -> str | None:
    """
    Why the file at C{path} cannot be opened for appending, as C{open}
    would say it; L{None} if it looks like it can. Opens nothing.
    """
    if os.path.isdir(path):
        return os.strerror(errno.EISDIR)
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else os.strerror(errno.EACCES)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return os.strerror(errno.ENOENT)
    return None if os.access(parent, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def _number(options: Mapping[str, Any], name: str, low: float, integer: bool = False) -> float:
    text = options[name]
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise usage.UsageError(f"--{name} must be {kind}, not {text!r}") from None
    if value < low:
        raise usage.UsageError(f"--{name} must be at least {low:g}, not {text!r}")
    return value


def resilienceConfig(options: Mapping[str, Any]) -> dict[str, Any]:
    """
    The L{LoadBalancerConfig} fields set by L{ResilienceOptions}.

    @raise usage.UsageError: For a bad value.
    """
    path = options["health-path"]
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " \r\n"):
        raise usage.UsageError(f"--health-path must be a path starting with '/', not {path!r}")
    percent = _number(options, "max-ejection-percent", 0)
    if percent > 100:
        raise usage.UsageError("--max-ejection-percent must be at most 100")
    health = HealthSettings(
        interval=_number(options, "health-interval", 0),
        path=path.encode("ascii"),
        timeout=_positive("health-timeout", options["health-timeout"]),
        fall=int(_number(options, "health-fall", 1, integer=True)),
        rise=int(_number(options, "health-rise", 1, integer=True)),
    )
    ejection = EjectionSettings(
        maxFails=int(_number(options, "max-fails", 0, integer=True)),
        baseTime=_positive("eject-time", options["eject-time"]),
        maxTime=_positive("eject-max-time", options["eject-max-time"]),
        maxPercent=percent,
        on5xx=bool(options["eject-on-5xx"]),
    )
    return {
        "health": health,
        "ejection": ejection,
        "slowStart": _number(options, "slow-start", 0),
        "retryBudgetPercent": _number(options, "retry-budget", 0),
        "drainTimeout": _number(options, "drain-timeout", 0),
    }


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
    if options.workers > 1:
        supervisor = makeSupervisor(
            options.workers, config, options.arguments, reactor, options.reusePort
        )
        root = ProcessRoot(supervisor, reactor, supervisor.reload)
        reload: Any = supervisor.reload
    else:
        service = makeLoadBalancer(config, network, clock)
        reloader = Reloader(options, service, Options)
        service.configHooks = reloader
        root = ProcessRoot(service, reactor, reloader.reload)
        reload = reloader.reload
    if options["watch-config"]:
        ConfigWatcher(options["config"], reload, clock).setServiceParent(root)
    return root


__all__ = ["Options", "buildConfig", "makeService", "parseSize"]
