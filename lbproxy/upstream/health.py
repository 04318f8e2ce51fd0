# -*- test-case-name: lbproxy.test.test_health,lbproxy.test.test_h2client -*-
"""
Health: active checks (a probe per backend on an injected clock, with
HAProxy's rise/fall) and passive checks (outlier ejection on real traffic,
with exponential backoff and a cap on how much of the pool may be out).

Both only flip state on L{Backend} (C{healthy}, C{ejected}); the pool and
the proxy read it. A backend coming back into service gets a slow-start
ramp when one is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from lbproxy.upstream.backends import Backend, BackendPool, SlowStart
from lbproxy.upstream.h2client import H2_SCHEMES


@attrs.frozen
class HealthSettings:
    """
    Active health check settings.

    @ivar interval: Seconds between probes of one backend; 0 turns active
        checks off.
    @ivar path: The path probed with C{GET}.
    @ivar timeout: Seconds a probe may take.
    @ivar fall: Consecutive failures that take a backend down.
    @ivar rise: Consecutive successes that bring it back up.
    """

    interval: float = 2.0
    path: bytes = b"/"
    timeout: float = 1.0
    fall: int = 3
    rise: int = 2


@attrs.frozen
class EjectionSettings:
    """
    Passive check (outlier ejection) settings.

    @ivar maxFails: Consecutive failed requests that eject a backend; 0
        turns passive checks off.
    @ivar baseTime: Seconds of the first ejection; each repeat doubles it.
    @ivar maxTime: The cap on one ejection's length.
    @ivar maxPercent: Never eject more than this share of the pool.
    @ivar on5xx: Whether a 5xx answer counts as a failure.
    """

    maxFails: int = 3
    baseTime: float = 10.0
    maxTime: float = 300.0
    maxPercent: float = 50.0
    on5xx: bool = False


@attrs.define
class RiseFall:
    """
    HAProxy's rise/fall hysteresis for one backend: it goes down after
    C{fall} consecutive failed checks and up after C{rise} consecutive
    successful ones.
    """

    rise: int
    fall: int
    up: bool = True
    _streak: int = 0

    def record(self, success: bool) -> bool:
        """
        Count one check result.

        @return: Whether the state changed.
        """
        if success == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if success else self.fall):
            self.up = success
            self._streak = 0
            return True
        return False


Probe = Callable[[Backend], "Deferred[bool]"]
"""
Checks one backend; fires with whether it is healthy. Never fails.
"""


def _enterService(backend: Backend, clock: IReactorTime, slowStart: float) -> None:
    """
    Start C{backend}'s slow-start ramp, if slow start is configured.
    """
    if slowStart > 0:
        backend.slowStart = SlowStart(clock, clock.seconds(), slowStart)


class HealthChecker:
    """
    Probes every backend of a pool every C{interval} seconds and applies
    rise/fall to C{backend.healthy}, logging each change once.
    """

    _log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        probe: Probe,
        clock: IReactorTime,
        settings: HealthSettings,
        slowStart: float = 0.0,
        onChange: Callable[[Backend], object] | None = None,
    ) -> None:
        """
        @param onChange: Called with a backend whose C{healthy} the checks
            have just changed (after the change is logged).
        """
        self._pool = pool
        self._probe = probe
        self._clock = clock
        self._settings = settings
        self._slowStart = slowStart
        self._onChange = onChange
        self._states: dict[int, RiseFall] = {}
        self._calls: dict[int, LoopingCall] = {}
        self._probing: set[int] = set()
        self._running = False

    @property
    def settings(self) -> HealthSettings:
        """
        How this checker probes.
        """
        return self._settings

    def start(self) -> None:
        """
        Start probing; the first probe of each backend runs at once.
        """
        self._running = True
        for backend in self._pool.backends:
            self.add(backend)

    def add(self, backend: Backend) -> None:
        """
        Start probing C{backend} (one that joined the pool while running).
        Its state starts from C{backend.healthy}.
        """
        key = id(backend)
        if not self._running or self._settings.interval <= 0 or key in self._calls:
            return
        if key not in self._states:
            self._states[key] = RiseFall(self._settings.rise, self._settings.fall, backend.healthy)
        call = LoopingCall(self._check, backend)
        call.clock = self._clock
        self._calls[key] = call
        call.start(self._settings.interval, now=True)

    def remove(self, backend: Backend) -> None:
        """
        Stop probing C{backend} (one that left the pool).
        """
        key = id(backend)
        call = self._calls.pop(key, None)
        if call is not None and call.running:
            call.stop()
        self._states.pop(key, None)

    def takeOver(self, previous: HealthChecker) -> None:
        """
        Carry on from C{previous} (a reload's old checker, which is
        stopped): every backend both know keeps its rise/fall streak when
        the thresholds are unchanged.
        """
        previous.stop()
        if (previous._settings.rise, previous._settings.fall) == (
            self._settings.rise,
            self._settings.fall,
        ):
            for backend in self._pool.backends:
                state = previous._states.get(id(backend))
                if state is not None:
                    self._states[id(backend)] = state

    def stop(self) -> None:
        """
        Stop probing.
        """
        self._running = False
        for call in self._calls.values():
            if call.running:
                call.stop()
        self._calls = {}

    def _state(self, backend: Backend) -> RiseFall:
        key = id(backend)
        if key not in self._states:
            self._states[key] = RiseFall(self._settings.rise, self._settings.fall, backend.healthy)
        return self._states[key]

    def _check(self, backend: Backend) -> None:
        # One probe at a time per backend: a slow probe is not stacked.
        if id(backend) in self._probing:
            return
        self._probing.add(id(backend))
        self._probe(backend).addCallback(self._result, backend)

    def _result(self, healthy: bool, backend: Backend) -> None:
        self._probing.discard(id(backend))
        if id(backend) not in self._calls:
            return  # removed, or the checker stopped, while it was probed
        state = self._state(backend)
        if not state.record(healthy):
            return
        backend.healthy = state.up
        if state.up:
            _enterService(backend, self._clock, self._slowStart)
            self._log.info(
                "backend {backend} is UP (health checks pass)", backend=backend.authority
            )
        else:
            self._log.warn(
                "backend {backend} is DOWN ({fall} health checks failed)",
                backend=backend.authority,
                fall=self._settings.fall,
            )
        if self._onChange is not None:
            self._onChange(backend)


class _ProbeBody(Protocol):
    """
    Reads and discards a probe's response body, then says whether it
    arrived whole: to its end (L{ResponseDone}), or to the close for a body
    without a length (L{PotentialDataLoss}); anything else cut it off.
    """

    def __init__(self, ended: Callable[[bool], None]) -> None:
        self._ended = ended

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ended(reason.check(ResponseDone, PotentialDataLoss) is not None)

    def stop(self) -> None:
        """
        Stop reading: the connection is dropped.
        """
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class HTTPProbe:
    """
    The default probe: C{GET path} through an HTTP client; a 2xx or 3xx
    answer whose body arrives whole, all within C{timeout} seconds, is
    healthy.

    An HTTP/2 backend (C{h2c://}, C{h2://}) is probed over HTTP/2 as a
    gRPC server takes a request: C{POST path} with C{content-type:
    application/grpc} and no body; any answer below 500 whose stream ends
    cleanly is healthy (a gRPC server answers 200 with a C{grpc-status},
    such as 12 UNIMPLEMENTED for a path it does not serve, when it is up;
    it resets a plain C{GET}).
    """

    def __init__(
        self,
        request: Callable[[Backend, bytes, bytes, list[tuple[bytes, bytes]]], Deferred[Any]],
        clock: IReactorTime,
        path: bytes,
        timeout: float,
    ) -> None:
        """
        @param request: Sends C{(backend, method, target, headers)}, e.g.
            a bound L{lbproxy.upstream.pool.Upstream.request} with no body.
        @param timeout: Seconds the whole exchange may take, connecting,
            the head and the body; a probe still going then fails and its
            connection is dropped.
        """
        self._request = request
        self._clock = clock
        self._path = path
        self._timeout = timeout

    def __call__(self, backend: Backend) -> Deferred[bool]:
        headers = [
            (b"Host", backend.authority.encode("ascii")),
            (b"User-Agent", b"lbproxy-health-check"),
        ]
        method = b"GET"
        overH2 = backend.scheme in H2_SCHEMES
        if overH2:
            method = b"POST"
            headers.append((b"Content-Type", b"application/grpc"))
        verdict: Deferred[bool] = Deferred()
        body: list[_ProbeBody] = []

        def settle(healthy: bool) -> None:
            if not verdict.called:
                if timer.active():
                    timer.cancel()
                verdict.callback(healthy)

        def expire() -> None:
            # Decide first, so that what the abort below causes is ignored.
            settle(False)
            if body:
                body[0].stop()
            else:
                exchange.cancel()

        def judge(response: Any) -> None:
            ok = 200 <= response.code < (500 if overH2 else 400)
            protocol = _ProbeBody(lambda whole: settle(ok and whole))
            body.append(protocol)
            response.deliverBody(protocol)

        def failed(reason: Failure) -> None:
            settle(False)

        timer = self._clock.callLater(self._timeout, expire)
        exchange = self._request(backend, method, self._path, headers)
        exchange.addCallback(judge).addErrback(failed)
        return verdict


class OutlierDetector:
    """
    Passive checks: ejects a backend that fails C{maxFails} requests in a
    row, for a time that doubles with each repeat ejection up to a cap, and
    re-admits it when the time is up. Never ejects more than C{maxPercent}
    of the pool at once.
    """

    _log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        clock: IReactorTime,
        settings: EjectionSettings,
        slowStart: float = 0.0,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._settings = settings
        self._slowStart = slowStart
        self._streaks: dict[int, int] = {}
        self._readmitted: dict[int, float] = {}
        self._level: dict[int, int] = {}
        self._timers: dict[int, IDelayedCall] = {}

    def update(self, pool: BackendPool, settings: EjectionSettings, slowStart: float) -> None:
        """
        Judge C{pool} by C{settings} from now on (a reload); ejections in
        progress run their course.
        """
        self._pool = pool
        self._settings = settings
        self._slowStart = slowStart

    def forget(self, backend: Backend) -> None:
        """
        Drop what is known of C{backend}, which left the pool (a later
        backend object must not inherit its streak or backoff).
        """
        key = id(backend)
        for table in (self._streaks, self._readmitted, self._level):
            table.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def succeeded(self, backend: Backend, status: int) -> None:
        """
        A request to C{backend} got a response with C{status}.
        """
        if self._settings.on5xx and status >= 500:
            self.failed(backend)
        else:
            self._streaks[id(backend)] = 0

    def failed(self, backend: Backend) -> None:
        """
        A request to C{backend} failed (no connection, reset, timeout).
        """
        if self._settings.maxFails <= 0 or backend.ejected:
            return
        key = id(backend)
        self._streaks[key] = self._streaks.get(key, 0) + 1
        if self._streaks[key] >= self._settings.maxFails:
            self._eject(backend)

    def ejectionTime(self, backend: Backend) -> float:
        """
        How long C{backend} would be ejected if it were ejected now.
        """
        level = self._level.get(id(backend), 0)
        return float(min(self._settings.maxTime, self._settings.baseTime * 2**level))

    def _eject(self, backend: Backend) -> None:
        backends = self._pool.backends
        ejected = sum(1 for b in backends if b.ejected)
        if (ejected + 1) * 100 > self._settings.maxPercent * len(backends):
            self._log.warn(
                "backend {backend} is failing but not ejected: {ejected} of {total} "
                "already are (--max-ejection-percent {percent:g})",
                backend=backend.authority,
                ejected=ejected,
                total=len(backends),
                percent=self._settings.maxPercent,
            )
            self._streaks[id(backend)] = 0
            return
        key = id(backend)
        now = self._clock.seconds()
        # A backend that behaved for a whole cap since its last return
        # starts again from the base time.
        if now - self._readmitted.get(key, now) >= self._settings.maxTime:
            self._level[key] = 0
        duration = self.ejectionTime(backend)
        self._level[key] = self._level.get(key, 0) + 1
        self._streaks[key] = 0
        backend.ejected = True
        backend.ejections += 1
        self._log.warn(
            "backend {backend} ejected for {duration:g}s after {fails} failed requests in a row",
            backend=backend.authority,
            duration=duration,
            fails=self._settings.maxFails,
        )
        self._timers[key] = self._clock.callLater(duration, self._readmit, backend)

    def _readmit(self, backend: Backend) -> None:
        key = id(backend)
        self._timers.pop(key, None)
        self._readmitted[key] = self._clock.seconds()
        backend.ejected = False
        _enterService(backend, self._clock, self._slowStart)
        self._log.info("backend {backend} re-admitted after ejection", backend=backend.authority)

    def stop(self) -> None:
        """
        Cancel pending re-admissions (on shutdown).
        """
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers = {}
