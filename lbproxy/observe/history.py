# -*- test-case-name: lbproxy.test.test_history -*-
"""
The last minutes of every backend, for the admin dashboard's sparklines:
once a second (on the injected clock) L{HistorySampler} reads each
backend's counters and keeps, per backend, the request rate, the error
rate, the latency median and 99th percentile of the requests answered
since the last look (from the latency histogram's growth) and the requests
in flight; and an event for every change of a backend's state.

Events are found by comparing each backend's state (C{up}, C{down},
C{ejected}, C{draining}, C{slow-start}) with the last look's, and its
ejection count: an ejection that ended before the next look is still an
event. Nothing here runs per request, and the health checker and outlier
detector know nothing of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbproxy.balancer import Balancer
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.latency import LatencyHistogram

INTERVAL = 1.0
"""
Seconds between two looks.
"""

WINDOW = 300
"""
Samples kept per backend: five minutes at one a second.
"""

MAX_EVENTS = 200
"""
Events kept: the most recent ones.
"""


@attrs.frozen
class Sample:
    """
    One backend over one interval.

    @ivar time: The clock's time at the end of the interval.
    @ivar rate: Requests sent to it per second.
    @ivar errorRate: Requests per second that failed: answered 5xx by the
        backend, or failed at the proxy (502/504).
    @ivar p50: The median latency, in seconds, of the responses whose
        headers came in the interval; L{None} without any.
    @ivar p99: Their 99th percentile, likewise.
    @ivar inFlight: Its requests in flight at the end of the interval.
    """

    time: float
    rate: float
    errorRate: float
    p50: float | None
    p99: float | None
    inFlight: int


@attrs.frozen
class Event:
    """
    A change of a backend's state.

    @ivar time: The clock's time of the look that saw it.
    @ivar pool: The backend's pool.
    @ivar backend: Its C{host:port}.
    @ivar before: Its state at the look before (C{None} for a backend new
        to the pool).
    @ivar after: Its state now (C{None} for one that left the pool).
    @ivar note: What happened, in a few words.
    """

    time: float
    pool: str
    backend: str
    before: str | None
    after: str | None
    note: str

    def view(self) -> dict[str, Any]:
        """
        The event as the admin API shows it.
        """
        return {
            "time": round(self.time, 3),
            "pool": self.pool,
            "backend": self.backend,
            "from": self.before,
            "to": self.after,
            "note": self.note,
        }


@attrs.frozen
class _Reading:
    """
    A backend's counters at one look.
    """

    time: float
    requests: int
    errors: int
    latencies: tuple[int, ...]
    ejections: int
    state: str

    @classmethod
    def of(cls, backend: Backend, now: float) -> _Reading:
        return cls(
            time=now,
            requests=backend.requests,
            errors=backend.failures + backend.responses[5],
            latencies=tuple(backend.latency.counts),
            ejections=backend.ejections,
            state=backend.state,
        )


def quantileOfGrowth(before: tuple[int, ...], after: tuple[int, ...], q: float) -> float | None:
    """
    The C{q} quantile, in seconds, of the latencies counted between two
    readings of a L{LatencyHistogram}'s buckets, estimated as the histogram
    does it; L{None} if none was counted.
    """
    growth = LatencyHistogram()
    growth.counts = [b - a for a, b in zip(before, after, strict=True)]
    growth.count = sum(growth.counts)
    return growth.quantile(q)


@attrs.define(eq=False)
class _Series:
    """
    One backend's samples, and its counters at the last look.
    """

    pool: str
    backend: Backend
    last: _Reading
    samples: deque[Sample]


_NOTES = {
    "down": "health checks failed",
    "ejected": "ejected after failed requests",
    "draining": "draining",
    "slow-start": "back, ramping up",
    "up": "up",
}


class HistorySampler:
    """
    Looks at every backend of a L{Balancer} once every L{INTERVAL}
    seconds and keeps the last L{WINDOW} samples of each, and the last
    L{MAX_EVENTS} state changes.
    """

    _log = Logger()

    def __init__(
        self,
        balancer: Balancer,
        clock: IReactorTime,
        interval: float = INTERVAL,
        window: int = WINDOW,
        maxEvents: int = MAX_EVENTS,
    ) -> None:
        self._balancer = balancer
        self._clock = clock
        self.interval = interval
        self.window = window
        self._series: dict[tuple[str, str], _Series] = {}
        self._events: deque[Event] = deque(maxlen=maxEvents)
        self._loop: LoopingCall | None = None
        self._looked = False

    def start(self) -> None:
        """
        Look now, then every L{interval} seconds until L{stop}.
        """
        if self._loop is not None:
            return
        loop = LoopingCall(self.look)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self.interval, now=True).addErrback(
            lambda failure: self._log.failure("dashboard history", failure)
        )

    def stop(self) -> None:
        """
        Stop looking; what was kept stays.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _backends(self) -> Iterator[tuple[str, Backend]]:
        for pool in self._balancer.pools.values():
            for backend in pool.backends.backends:
                yield pool.name, backend

    def look(self) -> None:
        """
        Read every backend's counters: one sample each since the last
        look, and an event for each change of state, new backend or
        backend gone.
        """
        now = self._clock.seconds()
        seen: set[tuple[str, str]] = set()
        for pool, backend in self._backends():
            key = (pool, backend.url)
            if key in seen:
                continue
            seen.add(key)
            reading = _Reading.of(backend, now)
            series = self._series.get(key)
            if series is None or series.backend is not backend:
                if self._looked or series is not None:
                    self._event(now, pool, backend.authority, None, reading.state, "added")
                self._series[key] = _Series(pool, backend, reading, deque(maxlen=self.window))
                continue
            self._sample(series, reading)
        for key in [key for key in self._series if key not in seen]:
            gone = self._series.pop(key)
            self._event(now, gone.pool, gone.backend.authority, gone.last.state, None, "removed")
        self._looked = True

    def _sample(self, series: _Series, reading: _Reading) -> None:
        last = series.last
        elapsed = reading.time - last.time
        series.last = reading
        if elapsed <= 0:
            return
        series.samples.append(
            Sample(
                time=reading.time,
                rate=(reading.requests - last.requests) / elapsed,
                errorRate=(reading.errors - last.errors) / elapsed,
                p50=quantileOfGrowth(last.latencies, reading.latencies, 0.5),
                p99=quantileOfGrowth(last.latencies, reading.latencies, 0.99),
                inFlight=series.backend.inFlight,
            )
        )
        address = series.backend.authority
        if reading.state != last.state:
            note = _NOTES.get(reading.state, reading.state)
            self._event(reading.time, series.pool, address, last.state, reading.state, note)
        elif reading.ejections > last.ejections and reading.state != "ejected":
            self._event(
                reading.time,
                series.pool,
                address,
                last.state,
                reading.state,
                "ejected and re-admitted since the last look",
            )

    def _event(
        self, now: float, pool: str, backend: str, before: str | None, after: str | None, note: str
    ) -> None:
        self._events.append(Event(now, pool, backend, before, after, note))

    @property
    def events(self) -> list[Event]:
        """
        The events kept, the newest first.
        """
        return list(reversed(self._events))

    def samples(self, pool: str, url: str) -> list[Sample]:
        """
        The samples kept of the backend at C{url} in C{pool}, oldest first.
        """
        series = self._series.get((pool, url))
        return [] if series is None else list(series.samples)

    def view(self) -> dict[str, Any]:
        """
        Every backend's samples (as columns, oldest first; latencies in
        milliseconds) and the events (newest first), as the admin API
        shows them.
        """
        backends = []
        for (pool, url), series in self._series.items():
            samples = series.samples
            backends.append(
                {
                    "pool": pool,
                    "url": url,
                    "address": series.backend.authority,
                    "state": series.last.state,
                    "time": [round(s.time, 3) for s in samples],
                    "rate": [round(s.rate, 3) for s in samples],
                    "error_rate": [round(s.errorRate, 3) for s in samples],
                    "p50_ms": [_milliseconds(s.p50) for s in samples],
                    "p99_ms": [_milliseconds(s.p99) for s in samples],
                    "in_flight": [s.inFlight for s in samples],
                }
            )
        return {
            "interval": self.interval,
            "window": self.window,
            "now": round(self._clock.seconds(), 3),
            "backends": backends,
            "events": [event.view() for event in self.events],
        }


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


__all__ = ["INTERVAL", "MAX_EVENTS", "WINDOW", "Event", "HistorySampler", "Sample"]
