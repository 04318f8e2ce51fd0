# -*- test-case-name: lbproxy.test.test_service -*-
"""
Assembly: configuration in, one running service out. Listeners, the site,
the pool, the chooser and the upstream client are built here and passed to
each other; nothing else in lbproxy constructs its own collaborators.
"""

from __future__ import annotations

import resource
from collections.abc import Generator, Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IResolver,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy import __version__
from lbproxy._twisted.transport import batchingSends
from lbproxy.admin import AdminAPI, ConfigHooks, ConfigRejected, adminSite
from lbproxy.balancer import Balancer, BalancerConfig, PoolConfig
from lbproxy.certs import defaultHostnames
from lbproxy.demo import demoBackendSite
from lbproxy.discovery.resolver import DiscoverySettings, makeResolver
from lbproxy.discovery.watcher import Discovery
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import EdgeLimits, ProxySite
from lbproxy.http.redirect import redirectSite
from lbproxy.http.requestid import RequestIdSettings
from lbproxy.http2.listening import listenerFactory, tlsWithHTTP2
from lbproxy.http2.settings import HTTP2Settings
from lbproxy.interfaces import IChooser
from lbproxy.listen import ListenError, ListenSpec, serverEndpointForListen
from lbproxy.metrics import metricsRegistry, render
from lbproxy.metrics.site import metricsSite
from lbproxy.observe import DEFAULT_SAMPLE, Dashboard
from lbproxy.proxy import ProxySettings
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.tls.certificates import TLSConfigError, adhocCertificate
from lbproxy.tls.client import BackendTLS, BackendTLSSettings
from lbproxy.tls.sni import ServerTLS, ServerTLSSettings
from lbproxy.upstream.backends import Backend, warnUnresolvable
from lbproxy.upstream.health import EjectionSettings, HealthSettings
from lbproxy.upstream.pool import Upstream, UpstreamSettings

DEFAULT_POOL = "default"
"""
The name of the one pool the command line describes.
"""


@attrs.define
class LoadBalancerConfig:
    """
    Everything needed to run one load balancer, already checked.

    @ivar requestIds: How requests get IDs (C{--request-id}).
    @ivar fitConnections: Lower C{limits.maxConnections} to what the
        open-file limit allows, instead of warning that it is too low (the
        operator did not choose C{--max-connections}).
    @ivar dashboard: Keep the admin dashboard's history and sampled
        decisions (L{lbproxy.observe}); on when the admin API is served.
    @ivar http2: C{--http2} and C{--h2c}: HTTP/2 to clients.
    @ivar decisionSample: C{--decision-sample}: one choice in this many is
        recorded for the dashboard, per pool; 0 records none.
    """

    backends: list[Backend]
    listens: list[ListenSpec]
    chooser: IChooser
    proxy: ProxySettings = attrs.Factory(ProxySettings)
    upstream: UpstreamSettings = attrs.Factory(UpstreamSettings)
    limits: EdgeLimits = attrs.Factory(EdgeLimits)
    accessLog: AccessLog = attrs.Factory(lambda: AccessLog(None))
    requestIds: RequestIdSettings = attrs.Factory(RequestIdSettings)
    demo: bool = False
    adhoc: bool = False
    health: HealthSettings = attrs.Factory(HealthSettings)
    ejection: EjectionSettings = attrs.Factory(EjectionSettings)
    slowStart: float = 0.0
    retryBudgetPercent: float = 20.0
    drainTimeout: float = 30.0
    tls: ServerTLSSettings = attrs.Factory(ServerTLSSettings)
    backendTLS: BackendTLSSettings = attrs.Factory(BackendTLSSettings)
    hsts: bytes | None = None
    redirectHTTP: ListenSpec | None = None
    pools: tuple[PoolConfig, ...] = ()
    routes: RouteTable | None = None
    discovery: DiscoverySettings = attrs.Factory(DiscoverySettings)
    admin: str | None = None
    adminToken: bytes | None = None
    metrics: str | None = None
    fitConnections: bool = False
    dashboard: bool = False
    decisionSample: int = DEFAULT_SAMPLE
    http2: HTTP2Settings = attrs.Factory(HTTP2Settings)

    def balancerConfig(self) -> BalancerConfig:
        """
        The pools and routes: those of a config file, or else one pool
        called C{default} made of the single-pool fields (C{backends},
        C{chooser}, ...) with one route that takes every request.
        """
        pools = self.pools or (
            PoolConfig(
                name=DEFAULT_POOL,
                backends=tuple(self.backends),
                chooser=self.chooser,
                proxy=self.proxy,
                upstream=self.upstream,
                health=self.health,
                ejection=self.ejection,
                slowStart=self.slowStart,
                retryBudgetPercent=self.retryBudgetPercent,
            ),
        )
        routes = self.routes or RouteTable((RouteRule(pool=pools[0].name),))
        return BalancerConfig(
            pools=pools,
            routes=routes,
            allowedHosts=self.proxy.allowedHosts,
            drainTimeout=self.drainTimeout,
        )


class ReloadError(Exception):
    """
    A new configuration could not be applied; the running one is kept and
    the message says why, in one line.
    """


def _portOf(spec: ListenSpec) -> int | None:
    """
    The TCP port C{spec} listens on, when its description says.
    """
    if spec.port is not None:
        return spec.port
    parts = spec.description.split(":")
    if parts[0] in ("tcp", "tcp6") and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return None


class StartupError(Exception):
    """
    The service could not start (a port could not be bound, the access log
    could not be opened); the message is one line for the operator.
    """


class LoadBalancerService(MultiService):
    """
    Listens on every configured endpoint, serving the proxy site; on stop,
    stops listening and closes idle backend connections.

    Listening happens in L{privilegedStartService}, all or nothing: if one
    endpoint cannot be bound, those already bound are closed and
    L{StartupError} is raised, so nothing is left listening.

    Given C{bound} endpoints (sockets another process bound, see
    L{lbproxy.workers}), it listens on those instead of binding: one per
    C{--listen}, in order, then one for C{--redirect-http}.

    @ivar ports: The listening ports, in C{--listen} order, once started.
    @ivar site: The proxy's site.
    @ivar balancer: The pools and routes.
    """

    _log = Logger()

    def __init__(
        self,
        config: LoadBalancerConfig,
        reactor: IReactorTCP,
        clock: IReactorTime,
        bound: Sequence[IStreamServerEndpoint] = (),
        resolver: IResolver | None = None,
    ) -> None:
        """
        @param resolver: Looks up the pools' C{dns:} and C{srv:} backends;
            by default, the one C{config.discovery} describes.
        """
        super().__init__()
        self._config = config
        self._bound = list(bound)
        # Listen and connect with transports that send at once (see
        # lbproxy._twisted.transport); a test's in-memory reactor is kept as it is.
        reactor = batchingSends(reactor)
        self._reactor = reactor
        self._clock = clock
        self.backendTLS = BackendTLS(config.backendTLS)
        self.balancer = Balancer(config.balancerConfig(), reactor, clock, self._makeUpstream)
        self.discovery = Discovery(
            self.balancer,
            clock,
            config.discovery,
            (lambda: resolver) if resolver is not None else self._makeResolver,
        )
        self.site = ProxySite(self.balancer.router, config.accessLog, config.limits, reactor=clock)
        self.site.hsts = config.hsts
        self.site.requestIds = config.requestIds
        self.serverTLS: list[ServerTLS] = []
        self.ports: list[IListeningPort] = []
        self._listeners: dict[str, IListeningPort] = {}
        self._tlsOf: dict[str, ServerTLS] = {}
        self._adhoc: Any = None
        self.demoPorts: list[IListeningPort] = []
        self.adminPort: IListeningPort | None = None
        self.metricsPort: IListeningPort | None = None
        self.metricsRegistry = metricsRegistry(self, __version__)
        self.configHooks: ConfigHooks = _FixedConfig()
        self._listening = False
        self.dashboard = (
            Dashboard(self.balancer, clock, config.decisionSample) if config.dashboard else None
        )

    def _makeUpstream(self, settings: UpstreamSettings) -> Upstream:
        return Upstream(self._reactor, self._clock, settings, tlsFor=self.backendTLS.creatorFor)

    def _makeResolver(self) -> IResolver:
        return makeResolver(self._config.discovery, self._reactor)

    @property
    def backends(self) -> list[Backend]:
        """
        Every backend of every pool.
        """
        return [b for pool in self.balancer.pools.values() for b in pool.backends.backends]

    def privilegedStartService(self) -> None:
        """
        Open the access log file, bind every listener (and start the demo
        backends); raise L{StartupError} and bind nothing if any of them
        fails.
        """
        if not self._listening:
            _openAccessLog(self._config.accessLog)
            self._listening = True
            limits = self._config.limits
            allowed = _raiseOpenFileLimit(limits.maxConnections, self._config.fitConnections)
            if allowed != limits.maxConnections:
                self.site.limits = attrs.evolve(limits, maxConnections=allowed)
            try:
                self._startListening()
            except StartupError:
                self._closePortsNow()
                self._listening = False
                raise
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._listening:
            self.privilegedStartService()
        super().startService()

    def _startListening(self) -> None:
        config = self._config
        if config.demo:
            for number in (1, 2):
                port = self._listenNow("tcp:0:interface=127.0.0.1", demoBackendSite(number))
                self.demoPorts.append(port)
                pool = next(iter(self.balancer.pools.values()))
                pool.backends.backends.append(
                    Backend(host="127.0.0.1", port=port.getHost().port)  # type: ignore[attr-defined]
                )
        adhoc = None
        if config.adhoc and any(s.isTLS and s.privateKey is None for s in config.listens):
            adhoc, fingerprint = adhocCertificate(defaultHostnames())
            self._adhoc = adhoc
            self._log.info(
                "ad-hoc TLS certificate for {names}; SHA-256 fingerprint {fingerprint}",
                names=", ".join(defaultHostnames()),
                fingerprint=fingerprint,
            )
        for index, spec in enumerate(config.listens):
            self._listenFor(spec, index)
        if config.redirectHTTP is not None:
            self._listenRedirect(config.redirectHTTP)
        if config.admin is not None:
            self._listenAdmin(config.admin)
        if config.metrics is not None:
            self._listenMetrics(config.metrics)
        pools = list(self.balancer.pools.values())
        described = [
            "{backends} with chooser {chooser}".format(
                backends=", ".join(
                    [b.url if b.scheme != "http" else b.authority for b in pool.backends.backends]
                    + [str(source) for source in pool.config.sources]
                )
                or "no backends",
                chooser=type(pool.chooser).__name__,
            )
            for pool in pools
        ]
        if len(pools) > 1 or pools[0].name != DEFAULT_POOL:
            described = [f"pool {p.name}: {text}" for p, text in zip(pools, described, strict=True)]
        # Tests and scripts wait for this line: every listener is bound.
        self._log.info(
            "lbproxy balancing over {pools}, listening on {listens}",
            pools="; ".join(described),
            listens=", ".join(s.description for s in config.listens),
        )
        if config.demo:
            self._logDemoHints()
        if config.backendTLS.insecure:
            self._log.warn(
                "--backend-insecure: the certificates of https:// backends are NOT "
                "verified; anyone on the path to them can read and change the traffic"
            )
        self.balancer.start()
        if self.dashboard is not None:
            self.dashboard.start()
        resolver = getattr(self._reactor, "nameResolver", None)
        if resolver is not None:
            # A name that does not resolve yet is worth a warning, not a
            # refusal to start: DNS may catch up, and requests meanwhile go
            # to the other backends (a failed lookup is retried elsewhere).
            warnUnresolvable(self.backends, resolver, self._log)
        self.discovery.start()

    def _listenFor(self, spec: ListenSpec, index: int | None = None) -> IListeningPort:
        """
        Listen for the proxy on C{spec} (on the already-bound socket
        C{index}, if there is one); the port is added to L{ports}.

        @raise StartupError: If it cannot.
        """
        config = self._config
        bound = None if index is None else self._boundFor(index)
        try:
            tls = tlsWithHTTP2(config.tls, config.http2)
            endpoint = serverEndpointForListen(self._reactor, spec, self._adhoc, tls, bound)
        except (ListenError, TLSConfigError) as e:
            raise StartupError(f"cannot use --listen {spec.description!r}: {e}") from None
        factory = listenerFactory(self.site, config.http2, spec.isTLS, self._clock)
        port = self._listenNow(spec.description, factory, endpoint)
        self.ports.append(port)
        self._listeners[spec.description] = port
        contextFactory = getattr(endpoint, "contextFactory", None)
        if isinstance(contextFactory, ServerTLS):
            self.serverTLS.append(contextFactory)
            self._tlsOf[spec.description] = contextFactory
        return port

    def applyConfig(self, config: LoadBalancerConfig) -> None:
        """
        Switch to C{config} while running (a reload): listeners it adds
        are opened, those it drops are closed (their connections finish as
        usual), and its pools and routes take over new requests at once
        (see L{Balancer.apply}), as do its request ID settings. Requests in
        flight, idle keep-alive connections and tunnels on the listeners
        that stay are untouched.
        Edge limits, TLS settings, the access log and C{--redirect-http}
        are kept as they were until a restart.

        @raise ReloadError: If a new listener cannot be opened, or the
            listeners change in a worker (whose sockets the supervisor
            holds); nothing has changed then.
        """
        old = [spec.description for spec in self._config.listens]
        new = [spec.description for spec in config.listens]
        if old != new and self._listening:
            if self._bound:
                raise ReloadError(
                    "listeners cannot change while running with --workers (the supervisor "
                    "holds their sockets); restart lbproxy to change them"
                )
            self._changeListeners(config)
        self._config = attrs.evolve(
            self._config, listens=list(config.listens), drainTimeout=config.drainTimeout
        )
        self.balancer.apply(config.balancerConfig())
        self.discovery.update()
        # Its trusted proxies are --trusted-proxy's, which a reload applies.
        self.site.requestIds = config.requestIds

    def _changeListeners(self, config: LoadBalancerConfig) -> None:
        wanted = {spec.description for spec in config.listens}
        removed = [d for d in self._listeners if d not in wanted]
        added = [spec for spec in config.listens if spec.description not in self._listeners]
        freedPorts = {_portOf(spec) for spec in self._config.listens if spec.description in removed}
        # A new listener on the port of one that goes can only be bound
        # once that one is closed; the others are bound first, so that a
        # failure leaves everything as it was.
        late = [spec for spec in added if _portOf(spec) in freedPorts and _portOf(spec)]
        opened: list[str] = []
        try:
            for spec in added:
                if spec not in late:
                    self._listenFor(spec)
                    opened.append(spec.description)
        except StartupError as e:
            for description in opened:
                self._closeListener(description)
            raise ReloadError(str(e)) from None
        byPort = {_portOf(s): s for s in self._config.listens if s.description in removed}
        closing = {description: self._closeListener(description) for description in removed}
        for spec in late:
            # Its port is free once the old listener's socket is closed,
            # which Twisted does in the next reactor turn.
            old = byPort[_portOf(spec)]
            closing[old.description].addBoth(self._moved, spec, old)
        if opened or removed:
            self._log.info(
                "listeners: opened {opened}, closed {closed}",
                opened=", ".join(opened) or "none",
                closed=", ".join(removed) or "none",
            )

    def _moved(self, closed: object, spec: ListenSpec, old: ListenSpec) -> None:
        """
        Listen on C{spec}, which takes the port of C{old} (closed now);
        if that fails, listen as C{old} again, so that the port still
        serves.
        """
        try:
            self._listenFor(spec)
        except StartupError as e:
            self._log.error(
                "reload: {error}; listening as before on {old}", error=str(e), old=old.description
            )
            try:
                self._listenFor(old)
            except StartupError as again:
                self._log.error("reload: {error}", error=str(again))
            return
        self._log.info(
            "listeners: opened {opened} in place of {old}",
            opened=spec.description,
            old=old.description,
        )

    def _closeListener(self, description: str) -> Deferred[None]:
        """
        Stop listening on C{description}; fires when its socket is closed.
        """
        port = self._listeners.pop(description)
        self.ports.remove(port)
        tls = self._tlsOf.pop(description, None)
        if tls is not None:
            self.serverTLS.remove(tls)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)

    def _listenRedirect(self, spec: ListenSpec) -> None:
        """
        Listen for C{--redirect-http}, sending clients to the first C{ssl:}
        listener's port; the port is added to L{ports}.
        """
        first = next(s for s in self._config.listens if s.isTLS)
        httpsPort: int = self._listeners[first.description].getHost().port  # type: ignore[attr-defined]
        bound = self._boundFor(len(self._config.listens))
        endpoint = (
            None
            if bound is None
            else serverEndpointForListen(self._reactor, spec, None, bound=bound)
        )
        self.ports.append(self._listenNow(spec.description, redirectSite(httpsPort), endpoint))

    def _listenAdmin(self, description: str) -> None:
        """
        Serve the admin API on C{description} (see L{lbproxy.admin}); its
        configuration calls go to L{configHooks}.
        """
        api = AdminAPI(self.balancer, _HooksOf(self), self.renderMetrics, self.dashboard)
        site = adminSite(api, self._config.adminToken, self._clock)
        self.adminPort = self._listenNow(description, site)
        self._log.info("admin API listening on {admin}", admin=description)

    def _listenMetrics(self, description: str) -> None:
        """
        Serve C{GET /metrics} alone on C{description} (C{--metrics}).
        """
        site = metricsSite(self.renderMetrics, self._clock)
        self.metricsPort = self._listenNow(description, site)
        self._log.info("metrics served on {metrics} at /metrics", metrics=description)

    def renderMetrics(self) -> bytes:
        """
        This process's metrics in Prometheus's text format (see
        L{lbproxy.metrics}).
        """
        return render(self.metricsRegistry)

    def listeningPorts(self) -> dict[str, IListeningPort]:
        """
        The proxy's listening ports by C{--listen} description (the
        metrics' listeners).
        """
        return dict(self._listeners)

    def _boundFor(self, index: int) -> IStreamServerEndpoint | None:
        """
        The already-bound endpoint for listener C{index}, if there is one.
        """
        return self._bound[index] if index < len(self._bound) else None

    def reloadCertificates(self) -> bool:
        """
        Re-read every listener's certificate files (SIGHUP); new handshakes
        use them, open connections keep theirs.  A listener whose files
        cannot be used logs one line and keeps its old certificates.

        @return: whether every listener reloaded.
        """
        results = [serverTLS.reload() for serverTLS in self.serverTLS]
        if results and all(results):
            self._log.info("TLS certificates reloaded for {count} listeners", count=len(results))
        return all(results)

    def _listenNow(self, description: str, factory: Any, endpoint: Any = None) -> IListeningPort:
        if endpoint is None:
            endpoint = serverFromString(self._reactor, description)
        results: list[Any] = []
        endpoint.listen(factory).addBoth(results.append)
        if not results:
            raise StartupError(f"listening on {description!r} did not complete at start-up")
        if isinstance(results[0], Failure):
            raise StartupError(f"cannot listen on {description!r}: {results[0].getErrorMessage()}")
        port: IListeningPort = results[0]
        return port

    def _logDemoHints(self) -> None:
        for spec in self._config.listens:
            port = self.ports[self._config.listens.index(spec)]
            number = getattr(port.getHost(), "port", None)
            scheme = "https" if spec.isTLS else "http"
            flag = " -k" if spec.isTLS else ""
            self._log.info(
                "demo: try   curl{flag} {scheme}://localhost:{port}/",
                flag=flag,
                scheme=scheme,
                port=number,
            )

    def _closePortsNow(self) -> None:
        for port in self.ports + self.demoPorts:
            port.stopListening()
        for extra in (self.adminPort, self.metricsPort):
            if extra is not None:
                extra.stopListening()
        self.adminPort = self.metricsPort = None
        self.ports = []
        self.demoPorts = []
        self._listeners = {}
        self._tlsOf = {}
        self.serverTLS = []

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        """
        Drain gracefully: stop accepting, let requests in progress finish
        (up to the drain timeout) while idle client connections are closed,
        then stop health checks, close backend connections and the access
        log.
        """
        super().stopService()
        self.discovery.stop()
        extra = [p for p in (self.adminPort, self.metricsPort) if p is not None]
        yield DeferredList(
            [maybeDeferred(p.stopListening) for p in self.ports + extra], consumeErrors=True
        )
        self.ports = []
        self.adminPort = self.metricsPort = None
        self._listeners = {}
        self._listening = False
        yield self.site.drain(self._config.drainTimeout)
        yield DeferredList(
            [maybeDeferred(p.stopListening) for p in self.demoPorts] + [self.balancer.stop()],
            consumeErrors=True,
        )
        self.demoPorts = []
        if self.dashboard is not None:
            self.dashboard.stop()
        self._config.accessLog.close()


class _FixedConfig:
    """
    The configuration hooks of a service started without a way to reload
    (in tests, or embedded): it describes its pools and refuses changes.
    """

    def describe(self) -> dict[str, Any]:
        return {}

    def describeTOML(self) -> str:
        return ""

    def apply(self, text: str, format: str) -> Deferred[None]:
        return fail(ConfigRejected("this lbproxy was started without a way to reload"))


@attrs.frozen
class _HooksOf:
    """
    A service's current L{LoadBalancerService.configHooks}, looked up at
    each call (they are set after the service is made).
    """

    service: LoadBalancerService

    def describe(self) -> dict[str, Any]:
        return self.service.configHooks.describe()

    def describeTOML(self) -> str:
        return self.service.configHooks.describeTOML()

    def apply(self, text: str, format: str) -> Deferred[None]:
        return self.service.configHooks.apply(text, format)


def _openAccessLog(accessLog: AccessLog) -> None:
    """
    Open C{accessLog}'s file, if it writes to one.

    @raise StartupError: If it cannot be opened.
    """
    try:
        accessLog.open()
    except OSError as e:
        raise StartupError(f"cannot open --access-log {accessLog.path!r}: {e.strerror}") from None


def makeLoadBalancer(
    config: LoadBalancerConfig,
    reactor: IReactorTCP,
    clock: IReactorTime,
    bound: Sequence[IStreamServerEndpoint] = (),
) -> LoadBalancerService:
    """
    Assemble the load balancer described by C{config}, networking through
    C{reactor} and timing with C{clock} (usually the same reactor), on
    sockets already C{bound} if given (see L{LoadBalancerService}).
    """
    return LoadBalancerService(config, reactor, clock, bound)


def _raiseOpenFileLimit(maxConnections: int, fit: bool) -> int:
    """
    Raise this process's open-file limit as far as the system allows, and
    when it is still below what C{maxConnections} needs (a client and a
    backend connection each, plus some spare): with C{fit} (the operator
    did not choose C{--max-connections}), lower C{maxConnections} to what
    fits, without a warning; else warn.

    @return: The client connections to allow.
    """
    log = Logger()
    needed = 2 * maxConnections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed and fit:
        fitting = max(1, (soft - 256) // 2)
        log.info(
            "open-file limit {limit} allows {connections} client connections at once",
            limit=soft,
            connections=fitting,
        )
        return fitting
    if soft < needed:
        log.warn(
            "open-file limit is {limit}, below the {needed} that --max-connections "
            "{connections} may need; raise it (ulimit -n) or lower --max-connections",
            limit=soft,
            needed=needed,
            connections=maxConnections,
        )
    return maxConnections
