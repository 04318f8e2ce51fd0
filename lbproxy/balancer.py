# -*- test-case-name: lbproxy.test.test_balancer -*-
"""
The live state of a load balancer: its pools (backends, chooser,
connections, health checks, ejections) and its routes, built from a
L{BalancerConfig} and changed in place by a reload (L{Balancer.apply}) or
the admin API (L{Balancer.addBackend} and its siblings).

What a reload keeps: a backend in both the old and the new pool (same
scheme, host and port, see L{lbproxy.upstream.backends.Backend.key}) is
the same object, so its health, ejection, slow start, counters and latency
history carry on; a pool whose chooser options are unchanged keeps its
chooser (and with it a sticky chooser's key and cursors); a pool whose
connection settings are unchanged keeps its idle backend connections.
What it drops: a backend that is gone drains (no new requests; those in
flight finish, and are cut off after the drain timeout), then its
connections are closed.

Backends found through DNS (a pool's discovery sources, see
L{lbproxy.discovery}) are given by L{Balancer.setDiscovered}, one source at
a time; a reload that keeps the source keeps them, one that drops it
drains them.

Metrics and the admin API read this state through L{Balancer.snapshot};
nothing here knows about HTTP or JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger

from lbproxy.discovery.sources import DNS, Source, SourceKey
from lbproxy.interfaces import IChooser
from lbproxy.proxy import ProxySettings, ReverseProxyResource
from lbproxy.routing import Router, RouteTable, Routing
from lbproxy.upstream.backends import MAX_WEIGHT, Backend, BackendPool, SlowStart
from lbproxy.upstream.health import (
    EjectionSettings,
    HealthChecker,
    HealthSettings,
    HTTPProbe,
    OutlierDetector,
)
from lbproxy.upstream.pool import Upstream, UpstreamSettings
from lbproxy.upstream.retry import RetryBudget

DRAIN_POLL = 0.25
"""
Seconds between looks at a draining backend's requests in flight.
"""

BackendKey = tuple[str, str, int]


def _ownCopy(template: Backend) -> Backend:
    """
    A live backend for C{template} (a configuration's, or one given to
    L{Balancer.addBackend}): its settings, with counters and a latency
    history of its own (C{attrs.evolve} would share the template's
    mutable ones, so that a backend configured again after leaving would
    start with its old history).
    """
    return Backend(
        host=template.host,
        port=template.port,
        scheme=template.scheme,
        weight=template.weight,
        draining=template.draining,
    )


class BalancerError(ValueError):
    """
    A change the balancer cannot make (unknown pool or backend, a backend
    already there, a weight out of range); the message says which, and
    nothing was changed.
    """


@attrs.frozen
class PoolConfig:
    """
    One pool as configured, already checked.

    @ivar name: Its name; routes name it.
    @ivar backends: Its backends, as configured (templates: the live pool
        has backends of its own, see L{LivePool}).
    @ivar chooser: A chooser built for this configuration.
    @ivar chooserKey: What the chooser was built from; a reload whose key
        is equal keeps the running chooser instead.
    @ivar options: The pool's options as the config file states them, for
        L{Balancer.describe}.
    @ivar sources: Where in DNS it finds more backends (see
        L{Balancer.setDiscovered}).
    """

    name: str
    backends: tuple[Backend, ...]
    chooser: IChooser
    chooserKey: object = None
    proxy: ProxySettings = attrs.Factory(ProxySettings)
    upstream: UpstreamSettings = attrs.Factory(UpstreamSettings)
    health: HealthSettings = attrs.Factory(HealthSettings)
    ejection: EjectionSettings = attrs.Factory(EjectionSettings)
    slowStart: float = 0.0
    retryBudgetPercent: float = 20.0
    options: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    sources: tuple[Source, ...] = ()


@attrs.frozen
class BalancerConfig:
    """
    Every pool and the routes between them.

    @ivar allowedHosts: C{--allow-host}: the only Hosts served (421 for
        others), or L{None} for all.
    @ivar drainTimeout: Seconds a removed backend's requests in flight may
        take before they are cut off.
    """

    pools: tuple[PoolConfig, ...]
    routes: RouteTable
    allowedHosts: frozenset[str] | None = None
    drainTimeout: float = 30.0


class LivePool:
    """
    A running pool: backends, chooser, backend connections, health checker,
    outlier detector, retry budget, and the proxy resource that uses them.

    @ivar name: The pool's name.
    @ivar config: The configuration it was last built from.
    @ivar backends: Its backends (live, with their counters).
    @ivar proxy: Relays requests routed to this pool.
    """

    backends: BackendPool
    chooser: IChooser
    upstream: Upstream
    probeUpstream: Upstream
    outliers: OutlierDetector
    budget: RetryBudget
    health: HealthChecker
    proxy: ReverseProxyResource

    def __init__(
        self,
        config: PoolConfig,
        reactor: IReactorTCP,
        clock: IReactorTime,
        makeUpstream: Callable[[UpstreamSettings], Upstream],
        previous: LivePool | None = None,
        discovered: Sequence[Backend] = (),
    ) -> None:
        """
        @param previous: The pool of the same name before a reload.
        @param discovered: Live backends its sources found, kept after
            the configured ones (those the configuration lists too are the
            configured ones).
        """
        self.name = config.name
        self.config = config
        self._clock = clock
        known = {b.key: b for b in previous.backends.backends} if previous else {}
        backends = []
        for template in config.backends:
            backend = known.get(template.key)
            if backend is None:
                backend = _ownCopy(template)
            else:
                backend.weight = template.weight
                backend.draining = template.draining
            backends.append(backend)
        listed = {backend.key for backend in backends}
        backends += [backend for backend in discovered if backend.key not in listed]
        self.backends = BackendPool(backends)
        self.chooser = (
            previous.chooser
            if previous is not None and previous.config.chooserKey == config.chooserKey
            else config.chooser
        )
        if previous is not None and previous.upstream.settings == config.upstream:
            self.upstream = previous.upstream
        else:
            self.upstream = makeUpstream(config.upstream)
        if previous is not None and previous.config.health.timeout == config.health.timeout:
            self.probeUpstream = previous.probeUpstream
        else:
            self.probeUpstream = makeUpstream(
                UpstreamSettings(
                    connectTimeout=config.health.timeout,
                    maxIdlePerBackend=1,
                    idleTimeout=5.0,
                )
            )
        if previous is not None:
            self.outliers = previous.outliers
            self.outliers.update(self.backends, config.ejection, config.slowStart)
        else:
            self.outliers = OutlierDetector(self.backends, clock, config.ejection, config.slowStart)
        if previous is not None and previous.config.retryBudgetPercent == (
            config.retryBudgetPercent
        ):
            self.budget = previous.budget
        else:
            self.budget = RetryBudget(clock, ratio=config.retryBudgetPercent / 100)
        probeUpstream = self.probeUpstream
        probe = HTTPProbe(
            lambda backend, method, target, headers: probeUpstream.request(
                backend, method, target, headers, None
            ),
            clock,
            config.health.path,
            config.health.timeout,
        )
        self.health = HealthChecker(self.backends, probe, clock, config.health, config.slowStart)
        self.proxy = ReverseProxyResource(
            self.backends,
            self.chooser,
            self.upstream,
            clock,
            config.proxy,
            outcomes=self.outliers,
            budget=self.budget,
        )

    def find(self, authority: str) -> Backend:
        """
        The backend whose C{host:port} (or URL) is C{authority}.

        @raise BalancerError: If there is none.
        """
        for backend in self.backends.backends:
            if authority in (backend.authority, backend.url):
                return backend
        raise BalancerError(f"pool {self.name!r} has no backend {authority!r}")


class Balancer:
    """
    Every live pool, and the L{Router} that sends requests to them.

    @ivar router: The resource that routes requests; its routing is
        replaced, whole, by each L{apply}.
    @ivar pools: The live pools by name, in configured order.
    @ivar activeChecks: Whether the pools' active health checks run here,
        from L{start} on; a worker under C{--workers} leaves them to the
        supervisor, which marks its backends healthy or not
        (L{lbproxy.control.health}).
    """

    _log = Logger()

    def __init__(
        self,
        config: BalancerConfig,
        reactor: IReactorTCP,
        clock: IReactorTime,
        makeUpstream: Callable[[UpstreamSettings], Upstream],
        activeChecks: bool = True,
    ) -> None:
        """
        @param makeUpstream: Builds the backend connections of a pool.
        @param activeChecks: Whether the pools' active health checks run
            here (see L{activeChecks}).
        """
        self._reactor = reactor
        self._clock = clock
        self._makeUpstream = makeUpstream
        self.activeChecks = activeChecks
        self._running = False
        self._retiring: dict[int, _Retirement] = {}
        self._retiredUpstreams: list[Upstream] = []
        self._upstreamPolls: dict[Upstream, IDelayedCall] = {}
        self._discovered: dict[tuple[str, SourceKey], dict[BackendKey, Backend]] = {}
        self._poolWatchers: list[Callable[[LivePool], None]] = []
        self.config = config
        self.pools: dict[str, LivePool] = {}
        self.router = Router(self._build(config))

    def watchPools(self, watcher: Callable[[LivePool], None]) -> None:
        """
        Call C{watcher} with every live pool now, and with every pool a
        later reload builds (each one is built anew, its proxy too), before
        the reload routes requests to it.
        """
        self._poolWatchers.append(watcher)
        for pool in self.pools.values():
            watcher(pool)

    def _build(self, config: BalancerConfig) -> Routing:
        previous = self.pools
        self._discovered = self._keptDiscovered(config)
        pools = {
            pool.name: LivePool(
                pool,
                self._reactor,
                self._clock,
                self._makeUpstream,
                previous.get(pool.name),
                [
                    backend
                    for source in pool.sources
                    for backend in self._discovered.get((pool.name, source.key), {}).values()
                ],
            )
            for pool in config.pools
        }
        self.pools = pools
        self.config = config
        for watcher in self._poolWatchers:
            for pool in pools.values():
                watcher(pool)
        return Routing(
            table=config.routes,
            pools={name: pool.proxy for name, pool in pools.items()},
            allowedHosts=config.allowedHosts,
        )

    def _keptDiscovered(
        self, config: BalancerConfig
    ) -> dict[tuple[str, SourceKey], dict[BackendKey, Backend]]:
        """
        The backends found by the sources C{config} keeps (the same kind,
        name and port in a pool of the same name), a C{dns:} source's
        backends given its new weight; those of other sources are
        forgotten, and drain unless the configuration lists them.
        """
        kept = {}
        for pool in config.pools:
            for source in pool.sources:
                found = {
                    key: backend
                    for key, backend in self._discovered.get((pool.name, source.key), {}).items()
                    if not self.removing(backend)
                }
                if source.kind == DNS:
                    for backend in found.values():
                        backend.weight = source.weight
                kept[pool.name, source.key] = found
        return kept

    def start(self) -> None:
        """
        Start health checks (unless they run elsewhere, see C{activeChecks}).
        """
        self._running = True
        if self.activeChecks:
            for pool in self.pools.values():
                pool.health.start()

    def apply(self, config: BalancerConfig) -> None:
        """
        Switch to C{config} (a reload): new requests are routed by it at
        once; requests in flight finish where they are; backends that are
        gone drain, then their connections are closed.
        """
        old = self.pools
        routing = self._build(config)
        for pool in self.pools.values():
            # A backend on its way out that the configuration names again
            # is the same backend (its pool listed it), back in service.
            for backend in pool.backends.backends:
                self._keep(backend)
        for name, pool in self.pools.items():
            previous = old.get(name)
            if previous is not None:
                pool.health.takeOver(previous.health)
                for upstream in (previous.upstream, previous.probeUpstream):
                    if upstream not in (pool.upstream, pool.probeUpstream):
                        self._retireUpstream(upstream, config.drainTimeout)
            if self._running and self.activeChecks:
                pool.health.start()
        for name, previous in old.items():
            kept = self.pools.get(name)
            keptKeys = {b.key for b in kept.backends.backends} if kept else set()
            for backend in previous.backends.backends:
                if backend.key not in keptKeys:
                    self._retire(backend, previous, config.drainTimeout)
            if kept is None:
                previous.health.stop()
                previous.outliers.stop()
                self._retireUpstream(previous.upstream, config.drainTimeout)
                self._retireUpstream(previous.probeUpstream, config.drainTimeout)
        # A backend still draining stays listed in its pool (not health
        # checked, never chosen) until it leaves: the snapshot shows it,
        # and a later reload that names it again keeps it.
        for retirement in self._retiring.values():
            live = self.pools.get(retirement.pool.name)
            if live is not None and retirement.backend not in live.backends.backends:
                live.backends.backends.append(retirement.backend)
        self.router.install(routing)
        self._log.info(
            "configuration applied: {pools} pools, {routes} routes",
            pools=len(self.pools),
            routes=len(config.routes.rules),
        )

    # Runtime changes (the admin API).

    def pool(self, name: str) -> LivePool:
        """
        The live pool called C{name}.

        @raise BalancerError: If there is none.
        """
        try:
            return self.pools[name]
        except KeyError:
            raise BalancerError(f"no pool named {name!r}") from None

    def addBackend(self, poolName: str, backend: Backend) -> Backend:
        """
        Add C{backend} to a pool; it takes traffic at once (through slow
        start, when the pool has it) and is health-checked.

        @raise BalancerError: If the pool does not exist or already has a
            backend at that address.
        """
        pool = self.pool(poolName)
        if any(b.key == backend.key for b in pool.backends.backends):
            raise BalancerError(f"pool {poolName!r} already has backend {backend.authority}")
        backend = self._add(pool, backend)
        self._log.info(
            "backend {backend} added to pool {pool}", backend=backend.authority, pool=poolName
        )
        return backend

    def _add(self, pool: LivePool, template: Backend) -> Backend:
        """
        Add a backend like C{template} to C{pool}: through slow start, when
        the pool has it, and health-checked.
        """
        backend = _ownCopy(template)
        if pool.config.slowStart > 0:
            backend.slowStart = SlowStart(self._clock, self._clock.seconds(), pool.config.slowStart)
        pool.backends.backends.append(backend)
        pool.health.add(backend)
        return backend

    def setDiscovered(
        self, poolName: str, source: Source, templates: Sequence[Backend]
    ) -> DiscoveryChange:
        """
        Make C{templates} the backends C{source} gives a pool (what its DNS
        records say now). An address that appears is added as
        L{addBackend} adds one (slow start, health checks); one that
        disappears drains, then leaves, unless the pool lists it or
        another of its sources has it too; one in both is the same
        backend, its health, ejection, slow start and counters kept (its
        weight the records', unless the pool lists it). A backend being
        removed that appears again is back in service.

        @raise BalancerError: If there is no such pool, or it has no such
            source.
        """
        pool = self.pool(poolName)
        if not any(each.key == source.key for each in pool.config.sources):
            raise BalancerError(f"pool {poolName!r} has no backends from {source}")
        live = {backend.key: backend for backend in pool.backends.backends}
        before = {
            key: backend
            for key, backend in self._discovered.get((poolName, source.key), {}).items()
            if live.get(key) is backend and not self.removing(backend)
        }
        listed = {template.key for template in pool.config.backends}
        others = {
            key
            for (name, sourceKey), found in self._discovered.items()
            if name == poolName and sourceKey != source.key
            for key in found
        }
        now: dict[BackendKey, Backend] = {}
        change = DiscoveryChange()
        for template in templates:
            key = template.key
            if key in now:
                continue
            backend = before.get(key) or live.get(key)
            if backend is None:
                backend = self._add(pool, template)
            elif self.removing(backend):
                self._keep(backend)
                backend.draining = False
            if key not in before:
                change.added.append(backend)
            if key not in listed and backend.weight != template.weight:
                backend.weight = template.weight
                if key in before:
                    change.reweighted.append(backend)
            now[key] = backend
        for key, backend in before.items():
            if key not in now:
                change.removed.append(backend)
                if key not in listed and key not in others:
                    self._retire(backend, pool, self.config.drainTimeout)
        self._discovered[poolName, source.key] = now
        change.now.extend(now.values())
        return change

    def discoveredBy(self, poolName: str, source: Source) -> list[Backend]:
        """
        The backends C{source} last gave the pool C{poolName} (none before
        its first answer).
        """
        return list(self._discovered.get((poolName, source.key), {}).values())

    def discovered(self, poolName: str) -> list[Backend]:
        """
        The backends of a pool that only its sources give (not those its
        configuration lists too), in the pool's order.
        """
        pool = self.pool(poolName)
        listed = {template.key for template in pool.config.backends}
        found = {
            id(backend)
            for (name, _), backends in self._discovered.items()
            if name == poolName
            for backend in backends.values()
        }
        return [b for b in pool.backends.backends if id(b) in found and b.key not in listed]

    def removeBackend(self, poolName: str, authority: str) -> Backend:
        """
        Take a backend out of a pool: it drains (no new requests), then
        leaves the pool once its requests in flight finish or the drain
        timeout passes.

        @raise BalancerError: If there is no such pool or backend.
        """
        pool = self.pool(poolName)
        backend = pool.find(authority)
        self._retire(backend, pool, self.config.drainTimeout)
        return backend

    def setDraining(self, poolName: str, authority: str, draining: bool) -> Backend:
        """
        Drain a backend (no new requests; it stays in the pool) or put a
        drained one back into service.

        @raise BalancerError: If there is no such pool or backend, or the
            backend is being removed.
        """
        pool = self.pool(poolName)
        backend = pool.find(authority)
        if id(backend) in self._retiring:
            raise BalancerError(f"backend {authority} is being removed")
        if backend.draining != draining:
            backend.draining = draining
            self._log.info(
                "backend {backend} of pool {pool} {action}",
                backend=backend.authority,
                pool=poolName,
                action="draining" if draining else "back in service",
            )
        return backend

    def setWeight(self, poolName: str, authority: str, weight: int) -> Backend:
        """
        Give a backend a new weight.

        @raise BalancerError: If there is no such pool or backend, or the
            weight is not from 1 to L{MAX_WEIGHT}.
        """
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise BalancerError(f"weight must be a whole number from 1 to {MAX_WEIGHT}")
        if not 1 <= weight <= MAX_WEIGHT:
            raise BalancerError(f"weight must be from 1 to {MAX_WEIGHT}, not {weight}")
        backend = self.pool(poolName).find(authority)
        backend.weight = weight
        return backend

    def removing(self, backend: Backend) -> bool:
        """
        Whether C{backend} is draining on its way out of its pool.
        """
        return id(backend) in self._retiring

    def _retire(self, backend: Backend, pool: LivePool, timeout: float) -> None:
        if id(backend) in self._retiring:
            return
        backend.draining = True
        retirement = _Retirement(backend, pool, self._clock.seconds() + timeout)
        self._retiring[id(backend)] = retirement
        self._log.info(
            "backend {backend} leaves pool {pool}: draining {count} requests in flight",
            backend=backend.authority,
            pool=pool.name,
            count=backend.inFlight,
        )
        self._checkRetirement(retirement)

    def _keep(self, backend: Backend) -> None:
        """
        Call off the removal of C{backend}, if it is being removed.
        """
        retirement = self._retiring.pop(id(backend), None)
        if retirement is not None and retirement.timer is not None and retirement.timer.active():
            retirement.timer.cancel()

    def _checkRetirement(self, retirement: _Retirement) -> None:
        retirement.timer = None
        backend, pool = retirement.backend, retirement.pool
        now = self._clock.seconds()
        if backend.inFlight > 0 and now < retirement.deadline:
            retirement.timer = self._clock.callLater(
                min(DRAIN_POLL, retirement.deadline - now), self._checkRetirement, retirement
            )
            return
        del self._retiring[id(backend)]
        if backend.inFlight > 0:
            self._log.warn(
                "backend {backend} of pool {pool}: drain timeout; cutting off "
                "{count} requests in flight",
                backend=backend.authority,
                pool=pool.name,
                count=backend.inFlight,
            )
            pool.upstream.abortTo(backend)
        else:
            pool.upstream.closeIdle(backend)
        pool.probeUpstream.closeIdle(backend)
        # It may still be in the pool's list: removed through the admin
        # API, or by a reload that kept the pool.
        live = self.pools.get(pool.name)
        for each in {id(pool): pool, id(live): live}.values():
            if each is not None and backend in each.backends.backends:
                each.backends.backends.remove(backend)
                each.health.remove(backend)
            if each is not None:
                each.outliers.forget(backend)

    def _retireUpstream(self, upstream: Upstream, timeout: float) -> None:
        """
        Close C{upstream} (a pool's connections the new configuration does
        not use) once its requests in flight are done, or at C{timeout}.
        """
        if upstream in self._retiredUpstreams:
            return
        self._retiredUpstreams.append(upstream)
        deadline = self._clock.seconds() + timeout

        def check() -> None:
            if upstream.busy() and self._clock.seconds() < deadline:
                self._upstreamPolls[upstream] = self._clock.callLater(DRAIN_POLL, check)
                return
            self._upstreamPolls.pop(upstream, None)
            upstream.close().addBoth(lambda _: self._retiredUpstreams.remove(upstream))

        check()

    def stop(self) -> Deferred[Any]:
        """
        Stop health checks, ejection timers and drains, and close every
        backend connection; fires when they are closed.
        """
        self._running = False
        for retirement in self._retiring.values():
            if retirement.timer is not None and retirement.timer.active():
                retirement.timer.cancel()
        self._retiring = {}
        for poll in self._upstreamPolls.values():
            if poll.active():
                poll.cancel()
        self._upstreamPolls = {}
        closing = []
        for pool in self.pools.values():
            pool.health.stop()
            pool.outliers.stop()
            closing += [pool.upstream.close(), pool.probeUpstream.close()]
        closing += [upstream.close() for upstream in self._retiredUpstreams]
        return DeferredList(closing, consumeErrors=True)

    # Reading the state (admin API, metrics).

    def snapshot(self) -> list[PoolState]:
        """
        The state of every pool and backend now.
        """
        return [self._poolState(pool) for pool in self.pools.values()]

    def _poolState(self, pool: LivePool) -> PoolState:
        return PoolState(
            name=pool.name,
            chooser=str(pool.config.options.get("chooser", type(pool.chooser).__name__)),
            backends=[
                BackendState.of(backend, pool, self.removing(backend))
                for backend in pool.backends.backends
            ],
        )


@attrs.define
class DiscoveryChange:
    """
    What L{Balancer.setDiscovered} did to one source's backends.

    @ivar now: Its backends now, in the order its records gave them.
    @ivar added: Those it did not have before.
    @ivar removed: Those it had and does not have any more (draining, when
        nothing else keeps them in the pool).
    @ivar reweighted: Those it kept whose weight changed.
    """

    now: list[Backend] = attrs.Factory(list)
    added: list[Backend] = attrs.Factory(list)
    removed: list[Backend] = attrs.Factory(list)
    reweighted: list[Backend] = attrs.Factory(list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.reweighted)


@attrs.define
class _Retirement:
    backend: Backend
    pool: LivePool
    deadline: float
    timer: IDelayedCall | None = None


@attrs.frozen
class BackendState:
    """
    One backend's state, as the admin API and metrics show it.
    """

    address: str
    url: str
    state: str
    weight: int
    inFlight: int
    requests: int
    failures: int
    retries: int
    ejections: int
    removing: bool
    latencyEWMA: float | None
    lastLatency: float | None
    latencyP50: float | None
    latencyP99: float | None
    openConnections: int
    idleConnections: int

    @classmethod
    def of(cls, backend: Backend, pool: LivePool, removing: bool) -> BackendState:
        """
        The state of C{backend} of C{pool} now.
        """
        return cls(
            address=backend.authority,
            url=backend.url,
            state=backend.state,
            weight=backend.weight,
            inFlight=backend.inFlight,
            requests=backend.requests,
            failures=backend.failures,
            retries=backend.retries,
            ejections=backend.ejections,
            removing=removing,
            latencyEWMA=backend.latencyEWMA.value,
            lastLatency=backend.lastLatency,
            latencyP50=backend.latency.quantile(0.5),
            latencyP99=backend.latency.quantile(0.99),
            openConnections=pool.upstream.connectionsTo(backend),
            idleConnections=pool.upstream.idleTo(backend),
        )


@attrs.frozen
class PoolState:
    """
    One pool's state: its chooser and its backends'.
    """

    name: str
    chooser: str
    backends: list[BackendState]


__all__ = [
    "BackendState",
    "Balancer",
    "BalancerConfig",
    "BalancerError",
    "DiscoveryChange",
    "LivePool",
    "PoolConfig",
    "PoolState",
]
