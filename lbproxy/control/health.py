# -*- test-case-name: lbproxy.test.test_control -*-
"""
Active health checks shared by every worker (see L{lbproxy.control}):
under C{--workers} the supervisor probes each backend once per interval
for all the workers, whatever their number, and tells them what it finds.

  - The workers run no active checks of their own
    (L{lbproxy.balancer.Balancer.activeChecks} is off).
  - The supervisor (L{SharedHealth}) learns what to check from a running
    worker, which answers C{health-pools} with every pool's name, health
    settings and backends (those on their way out left out): when the
    workers start, after each reload and admin API change, and every
    L{REFRESH} seconds (for backends a worker finds by itself, through
    DNS).  It checks them with L{HealthChecker}, as one process does, and
    logs each change (C{backend 10.0.0.1:80 is DOWN (3 health checks
    failed)}) once.
  - Each change is sent to every running worker (C{health}: pool, backend,
    healthy or not), which marks its backend with that scheme, host and
    port in that pool (starting its slow start when it comes back); a
    worker that starts, or is started again in its slot, is first sent the
    state of every backend.
  - Passive checks (ejection) stay each worker's own: each judges the
    requests it sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.balancer import Balancer
from lbproxy.control.client import Answer, Worker, askAll
from lbproxy.control.wire import ControlError
from lbproxy.control.worker import Handler
from lbproxy.upstream.backends import Backend, BackendPool, SlowStart
from lbproxy.upstream.health import HealthChecker, HealthSettings, HTTPProbe
from lbproxy.upstream.pool import Upstream, UpstreamSettings

__all__ = [
    "REFRESH",
    "BackendHealth",
    "PoolToCheck",
    "SharedHealth",
    "applyHealth",
    "describePools",
    "healthHandlers",
    "readPools",
]

REFRESH = 5.0
"""
Seconds between the supervisor's looks at the workers' pools.
"""

Address = tuple[str, str, int]
"""
A backend's scheme, host and port.
"""


@attrs.frozen
class PoolToCheck:
    """
    One pool as the supervisor checks it.

    @ivar backends: Each backend's scheme, host and port, in order.
    """

    name: str
    settings: HealthSettings
    backends: tuple[Address, ...]


@attrs.frozen
class BackendHealth:
    """
    Whether one backend of one pool is healthy.
    """

    pool: str
    address: Address
    healthy: bool

    def fields(self) -> dict[str, Any]:
        """
        As a C{health} request carries it.
        """
        scheme, host, port = self.address
        return {
            "pool": self.pool,
            "scheme": scheme,
            "host": host,
            "port": port,
            "healthy": self.healthy,
        }


# The worker's side.


def describePools(balancer: Balancer) -> dict[str, Any]:
    """
    The answer to C{health-pools}: what the supervisor needs to check the
    pools of C{balancer}.
    """
    pools = []
    for pool in balancer.pools.values():
        settings = pool.config.health
        pools.append(
            {
                "name": pool.name,
                "interval": settings.interval,
                "path": settings.path.decode("latin-1"),
                "timeout": settings.timeout,
                "fall": settings.fall,
                "rise": settings.rise,
                "backends": [
                    [b.scheme, b.host, b.port]
                    for b in pool.backends.backends
                    if not balancer.removing(b)
                ],
            }
        )
    return {"pools": pools}


def applyHealth(balancer: Balancer, clock: IReactorTime, states: Sequence[BackendHealth]) -> int:
    """
    Mark the backends of C{balancer} as C{states} say, each found by its
    pool and its scheme, host and port (one it does not have is passed
    over); one that comes back up starts its pool's slow start.

    @return: How many changed.
    """
    changed = 0
    for state in states:
        pool = balancer.pools.get(state.pool)
        if pool is None:
            continue
        key = Backend(host=state.address[1], port=state.address[2], scheme=state.address[0]).key
        for backend in pool.backends.backends:
            if backend.key != key or backend.healthy == state.healthy:
                continue
            backend.healthy = state.healthy
            changed += 1
            if state.healthy and pool.config.slowStart > 0:
                backend.slowStart = SlowStart(clock, clock.seconds(), pool.config.slowStart)
    return changed


def healthHandlers(balancer: Balancer, clock: IReactorTime) -> dict[str, Handler]:
    """
    A worker's handlers of C{health-pools} and C{health}.
    """

    def pools(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        return succeed(describePools(balancer))

    def health(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        return succeed({"changed": applyHealth(balancer, clock, readStates(fields))})

    return {"health-pools": pools, "health": health}


# Reading the messages.


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ControlError(f"{what} must be text")
    return value


def _whole(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ControlError(f"{what} must be a whole number")
    return value


def _number(value: object, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ControlError(f"{what} must be a number")
    return float(value)


def _address(value: object) -> Address:
    if not isinstance(value, list) or len(value) != 3:
        raise ControlError("a backend must be [scheme, host, port]")
    return (_text(value[0], "a scheme"), _text(value[1], "a host"), _whole(value[2], "a port"))


def readPools(fields: Mapping[str, Any]) -> list[PoolToCheck]:
    """
    The pools of an answer to C{health-pools}.

    @raise ControlError: If it is not one.
    """
    pools = fields.get("pools")
    if not isinstance(pools, list):
        raise ControlError("a health-pools answer needs a list of pools")
    read = []
    for pool in pools:
        if not isinstance(pool, dict) or not isinstance(pool.get("backends"), list):
            raise ControlError("each pool must be an object with its backends")
        settings = HealthSettings(
            interval=_number(pool.get("interval"), "interval"),
            path=_text(pool.get("path"), "path").encode("latin-1"),
            timeout=_number(pool.get("timeout"), "timeout"),
            fall=_whole(pool.get("fall"), "fall"),
            rise=_whole(pool.get("rise"), "rise"),
        )
        backends = tuple(_address(backend) for backend in pool["backends"])
        read.append(PoolToCheck(_text(pool.get("name"), "a pool's name"), settings, backends))
    return read


def readStates(fields: Mapping[str, Any]) -> list[BackendHealth]:
    """
    The backends' states a C{health} request carries.

    @raise ControlError: If it carries none.
    """
    states = fields.get("backends")
    if not isinstance(states, list):
        raise ControlError("a health request needs a list of backends")
    read = []
    for state in states:
        if not isinstance(state, dict) or not isinstance(state.get("healthy"), bool):
            raise ControlError("each backend must say whether it is healthy")
        address = _address([state.get("scheme"), state.get("host"), state.get("port")])
        read.append(BackendHealth(_text(state.get("pool"), "a pool"), address, state["healthy"]))
    return read


# The supervisor's side.


class _CheckedPool:
    """
    One pool the supervisor checks: its backends, the connections its
    probes use and its L{HealthChecker}.
    """

    def __init__(
        self,
        name: str,
        settings: HealthSettings,
        clock: IReactorTime,
        makeUpstream: Callable[[UpstreamSettings], Upstream],
        changed: Callable[[str, Backend], object],
    ) -> None:
        self.name = name
        self.settings = settings
        self.backends = BackendPool([])
        self._clock = clock
        self._makeUpstream = makeUpstream
        self._changed = changed
        self.upstream = self._newUpstream(settings)
        self.checker = self._newChecker(settings)
        self.checker.start()

    def _newUpstream(self, settings: HealthSettings) -> Upstream:
        # As a worker's pool does (lbproxy.balancer.LivePool).
        return self._makeUpstream(
            UpstreamSettings(connectTimeout=settings.timeout, maxIdlePerBackend=1, idleTimeout=5.0)
        )

    def _newChecker(self, settings: HealthSettings) -> HealthChecker:
        upstream = self.upstream
        probe = HTTPProbe(
            lambda backend, method, target, headers: upstream.request(
                backend, method, target, headers, None
            ),
            self._clock,
            settings.path,
            settings.timeout,
        )
        return HealthChecker(
            self.backends,
            probe,
            self._clock,
            settings,
            onChange=lambda backend: self._changed(self.name, backend),
        )

    def update(self, wanted: PoolToCheck) -> Deferred[None]:
        """
        Check C{wanted}'s backends by its settings from now on: a backend
        it keeps keeps its state, one it adds is probed at once (and
        starts healthy, as in the workers).

        @return: Fires when connections no longer used are closed.
        """
        have = {backend.key: backend for backend in self.backends.backends}
        keep: dict[Address, Backend] = {}
        for scheme, host, port in wanted.backends:
            backend = Backend(host=host, port=port, scheme=scheme)
            keep.setdefault(backend.key, have.pop(backend.key, backend))
        for gone in have.values():
            self.checker.remove(gone)
            self.upstream.closeIdle(gone)
        added = [backend for backend in keep.values() if backend not in self.backends.backends]
        self.backends.backends[:] = keep.values()
        if wanted.settings == self.settings:
            for backend in added:
                self.checker.add(backend)
            return succeed(None)
        # New settings: a new checker, which probes every backend at once
        # (as a reload does in one process).
        closing = None
        if wanted.settings.timeout != self.settings.timeout:
            closing = self.upstream.close()
            self.upstream = self._newUpstream(wanted.settings)
        previous, self.checker = self.checker, self._newChecker(wanted.settings)
        self.checker.takeOver(previous)
        self.settings = wanted.settings
        self.checker.start()
        return closing or succeed(None)

    def states(self) -> list[BackendHealth]:
        """
        The state of every backend, as the checks have it now.
        """
        return [
            BackendHealth(self.name, (b.scheme, b.host, b.port), b.healthy)
            for b in self.backends.backends
        ]

    def stop(self) -> Deferred[None]:
        """
        Stop probing; fires when the probes' connections are closed.
        """
        self.checker.stop()
        return self.upstream.close()


class SharedHealth:
    """
    The supervisor's active health checks, for every worker (see the module
    docstring).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        makeUpstream: Callable[[UpstreamSettings], Upstream],
        refresh: float = REFRESH,
    ) -> None:
        """
        @param clock: Times the probes and the refreshes.
        @param makeUpstream: Builds the connections a pool's probes use
            (with the backend TLS settings the workers use).
        @param refresh: Seconds between looks at a worker's pools.
        """
        self._clock = clock
        self._makeUpstream = makeUpstream
        self._refreshEvery = refresh
        self._workers: Callable[[], Sequence[Worker]] = list
        self._pools: dict[str, _CheckedPool] = {}
        self._loop: LoopingCall | None = None
        self._running = False
        self._asking = False
        self._again = False
        self._warned = False

    def start(self, workers: Callable[[], Sequence[Worker]]) -> None:
        """
        Look at the pools of the first of C{workers} running now and every
        L{REFRESH} seconds, checking them from then on.

        @param workers: The worker slots, in order, at the time of a call.
        """
        self._workers = workers
        self._running = True
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self._refreshEvery, now=True)

    def refresh(self) -> None:
        """
        Ask the first running worker for its pools and check those from now
        on (at once if none is being asked; else once that answer is in).
        """
        if not self._running:
            return
        if self._asking:
            self._again = True
            return
        worker = next((w for w in self._workers() if w.running), None)
        if worker is None:
            return
        self._asking = True
        asking = worker.call("health-pools", {})
        asking.addCallback(readPools)
        asking.addCallbacks(self._update, self._notRead, errbackArgs=(worker.label,))
        asking.addBoth(self._asked)

    def _asked(self, result: object) -> None:
        self._asking = False
        if self._again:
            self._again = False
            self.refresh()

    def _notRead(self, failure: Failure, worker: str) -> None:
        if not failure.check(ControlError):
            self._log.failure("asking {worker} for its pools", failure, worker=worker)
        elif not self._warned:
            self._log.warn(
                "shared health checks: {worker} did not say what its pools are: {why}",
                worker=worker,
                why=failure.getErrorMessage(),
            )
        self._warned = True

    def _update(self, pools: Sequence[PoolToCheck]) -> None:
        """
        Check C{pools} from now on (the pools a worker has now).
        """
        if not self._running:
            return
        self._warned = False
        wanted = {pool.name: pool for pool in pools}
        for name in [name for name in self._pools if name not in wanted]:
            self._pools.pop(name).stop()
        for name, pool in wanted.items():
            checked = self._pools.get(name)
            if checked is None:
                checked = self._pools[name] = _CheckedPool(
                    name, pool.settings, self._clock, self._makeUpstream, self._changed
                )
            checked.update(pool)

    def states(self) -> list[BackendHealth]:
        """
        The state of every backend checked, as the checks have it now.
        """
        return [state for pool in self._pools.values() for state in pool.states()]

    def joined(self, worker: Worker) -> None:
        """
        Tell C{worker}, just started, the state of every backend.
        """
        states = self.states()
        if states:
            self._tell([worker], states)

    def _changed(self, pool: str, backend: Backend) -> None:
        state = BackendHealth(pool, (backend.scheme, backend.host, backend.port), backend.healthy)
        self._tell([w for w in self._workers() if w.running], [state])

    def _tell(self, workers: Sequence[Worker], states: Sequence[BackendHealth]) -> None:
        fields = {"backends": [state.fields() for state in states]}
        askAll(workers, "health", fields).addCallback(self._told)

    def _told(self, answers: Sequence[Answer]) -> None:
        if not self._running:
            return  # the workers are stopping too
        for answer in answers:
            if answer.reply is None:
                self._log.warn(
                    "{worker} was not told the backends' health: {why}",
                    worker=answer.worker,
                    why=answer.error,
                )

    def stop(self) -> Deferred[None]:
        """
        Stop probing and refreshing; fires when the probes' connections are
        closed.
        """
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        stopping = [pool.stop() for pool in self._pools.values()]
        self._pools = {}
        return DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)
