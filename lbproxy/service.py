"""
Assembly: configuration in, one running service out. Listeners, the site,
the pool, the chooser and the upstream client are built here and passed to
each other; nothing else in lbproxy constructs its own collaborators.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.accesslog import AccessLog
from lbproxy.backends import Backend, BackendPool
from lbproxy.certs import defaultHostnames
from lbproxy.demo import demoBackendSite
from lbproxy.edge import DEFAULT_MAX_BODY, ProxySite
from lbproxy.interfaces import IChooser
from lbproxy.listen import ListenError, ListenSpec, serverEndpointForListen
from lbproxy.proxy import ProxySettings, ReverseProxyResource
from lbproxy.tls import TLSConfigError, adhocServerOptions
from lbproxy.upstream import Upstream, UpstreamSettings


@attrs.define
class LoadBalancerConfig:
    """
    Everything needed to run one load balancer, already checked.
    """

    backends: list[Backend]
    listens: list[ListenSpec]
    chooser: IChooser
    proxy: ProxySettings = attrs.Factory(ProxySettings)
    upstream: UpstreamSettings = attrs.Factory(UpstreamSettings)
    maxBodySize: int = DEFAULT_MAX_BODY
    accessLog: AccessLog = attrs.Factory(lambda: AccessLog(None))
    demo: bool = False
    adhoc: bool = False


class StartupError(Exception):
    """
    The service could not start (a port could not be bound); the message
    is one line for the operator.
    """


class LoadBalancerService(MultiService):
    """
    Listens on every configured endpoint, serving the proxy site; on stop,
    stops listening and closes idle backend connections.

    Listening happens in L{privilegedStartService}, all or nothing: if one
    endpoint cannot be bound, those already bound are closed and
    L{StartupError} is raised, so nothing is left listening.

    @ivar ports: The listening ports, in C{--listen} order, once started.
    @ivar site: The proxy's site.
    @ivar pool: The backends.
    """

    _log = Logger()

    def __init__(
        self, config: LoadBalancerConfig, reactor: IReactorTCP, clock: IReactorTime
    ) -> None:
        super().__init__()
        self._config = config
        self._reactor = reactor
        self.pool = BackendPool(list(config.backends))
        self.upstream = Upstream(reactor, clock, config.upstream)
        self.resource = ReverseProxyResource(
            self.pool,
            config.chooser,
            self.upstream,
            clock,
            config.proxy,
        )
        self.site = ProxySite(self.resource, config.accessLog, config.maxBodySize, reactor=clock)
        self.ports: list[IListeningPort] = []
        self.demoPorts: list[IListeningPort] = []
        self._listening = False

    def privilegedStartService(self) -> None:
        """
        Bind every listener (and start the demo backends); raise
        L{StartupError} and bind nothing if any of them fails.
        """
        if not self._listening:
            self._listening = True
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
                self.pool.backends.append(
                    Backend(host="127.0.0.1", port=port.getHost().port)  # type: ignore[attr-defined]
                )
        adhocOptions = None
        if config.adhoc and any(s.isTLS and s.privateKey is None for s in config.listens):
            adhocOptions, fingerprint = adhocServerOptions(defaultHostnames())
            self._log.info(
                "ad-hoc TLS certificate for {names}; SHA-256 fingerprint {fingerprint}",
                names=", ".join(defaultHostnames()),
                fingerprint=fingerprint,
            )
        for spec in config.listens:
            try:
                endpoint = serverEndpointForListen(self._reactor, spec, adhocOptions)
            except (ListenError, TLSConfigError) as e:
                raise StartupError(f"cannot use --listen {spec.description!r}: {e}") from None
            self.ports.append(self._listenNow(spec.description, self.site, endpoint))
        self._log.info(
            "lbproxy balancing over {backends} with chooser {chooser}, listening on {listens}",
            backends=", ".join(b.authority for b in self.pool.backends),
            chooser=type(config.chooser).__name__,
            listens=", ".join(s.description for s in config.listens),
        )
        if config.demo:
            self._logDemoHints()

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
        self.ports = []
        self.demoPorts = []

    def stopService(self) -> Deferred[Any]:
        """
        Stop listening, then close idle backend connections and the
        access log.
        """
        super().stopService()
        stopping: list[Deferred[Any]] = [
            maybeDeferred(p.stopListening) for p in self.ports + self.demoPorts
        ]
        self.ports = []
        self.demoPorts = []
        self._listening = False
        stopping.append(self.upstream.close())
        done = DeferredList(stopping, consumeErrors=True)

        def closeLog(result: object) -> None:
            self._config.accessLog.close()

        done.addCallback(closeLog)
        return done


def makeLoadBalancer(
    config: LoadBalancerConfig, reactor: IReactorTCP, clock: IReactorTime
) -> LoadBalancerService:
    """
    Assemble the load balancer described by C{config}, networking through
    C{reactor} and timing with C{clock} (usually the same reactor).
    """
    return LoadBalancerService(config, reactor, clock)
