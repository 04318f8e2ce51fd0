# -*- test-case-name: lbproxy.test.test_simulate -*-
"""
The discrete-event engine: runs one chooser over one scenario on a
L{twisted.internet.task.Clock}.

The chooser is built by L{lbproxy.balancing.registry.makeChooser}, exactly as the
proxy builds it, and is given the simulated clock and a seeded generator.
Each request is handled as the proxy handles it: the chooser gets the
backends that are up (configured order) and the request;
L{Backend.requestStarted} is called when it is sent and
L{Backend.requestFinished} with its latency and the clock's time when it is
answered; an L{IAffinityChooser}'s response headers are applied to the
client's cookies.
"""

from __future__ import annotations

import random
from bisect import insort
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from lbproxy.balancing.hash import HashSettings
from lbproxy.balancing.registry import ChooserFactory, ChooserSettings, makeChooser
from lbproxy.balancing.sticky import StickySettings
from lbproxy.interfaces import IAffinityChooser, IChooser
from lbproxy.simulate.scenario import Scenario
from lbproxy.upstream.backends import Backend

SIMULATION_SECRET = b"lbproxy simulator sticky secret"

_HASH_SETTINGS = {
    "hashKey": "key",
    "hashBalanceFactor": "balanceFactor",
    "hashTableSize": "tableSize",
}
_STICKY_SETTINGS = {
    "stickyCookie": "cookie",
    "stickySecret": "secret",
    "stickyFallback": "fallback",
}


def _chooserSettings(
    given: Mapping[str, Any], rng: random.Random, clock: IReactorTime
) -> ChooserSettings:
    """
    The L{ChooserSettings} for a scenario's C{settings} (C{hashKey},
    C{hashBalanceFactor}, C{hashTableSize}, C{stickyCookie},
    C{stickySecret}, C{stickyFallback}), with C{rng} and C{clock}; C{sticky}
    signs with L{SIMULATION_SECRET} unless told otherwise.

    @raise TypeError: For a setting of another name.
    """
    hashSettings = {_HASH_SETTINGS[k]: v for k, v in given.items() if k in _HASH_SETTINGS}
    sticky: dict[str, Any] = {"secret": SIMULATION_SECRET}
    sticky.update({_STICKY_SETTINGS[k]: v for k, v in given.items() if k in _STICKY_SETTINGS})
    rest = {k: v for k, v in given.items() if k not in _HASH_SETTINGS.keys() | _STICKY_SETTINGS}
    return ChooserSettings(
        rng=rng,
        clock=clock,
        hash=HashSettings(**hashSettings),
        sticky=StickySettings(**sticky),
        **rest,
    )


@attrs.define
class Result:
    """
    What one chooser did in one scenario.

    @ivar latencies: Every answered request's time in the system (queue
        plus service), in seconds, sorted.
    @ivar counts: Requests sent to each backend, in configured order.
    @ivar duration: Simulated seconds from the first arrival to the last
        answer.
    @ivar moved: For scenarios where a backend goes down: the fraction of
        clients whose home backend (the one most of their requests went
        to; the first such in configured order on a tie) differs before and
        after it went down.
    """

    chooser: str
    latencies: list[float]
    counts: list[int]
    errors: int
    duration: float
    moved: float | None = None

    @property
    def completed(self) -> int:
        """
        Requests answered.
        """
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """
        Answered requests per simulated second.
        """
        return self.completed / self.duration if self.duration > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """
        The latency below which C{fraction} of answered requests fall
        (nearest rank), or NaN with none.
        """
        if not self.latencies:
            return float("nan")
        rank = min(len(self.latencies) - 1, max(0, round(fraction * len(self.latencies)) - 1))
        return self.latencies[rank]

    def mean(self) -> float:
        """
        The mean latency, or NaN with no answered request.
        """
        return sum(self.latencies) / len(self.latencies) if self.latencies else float("nan")

    def shares(self) -> list[float]:
        """
        Each backend's fraction of the requests sent.
        """
        total = sum(self.counts)
        return [count / total if total else 0.0 for count in self.counts]


@attrs.define(eq=False)
class _Client:
    """
    One simulated client: an address, a path, a header value and a cookie
    jar.
    """

    index: int
    cookies: dict[bytes, bytes] = attrs.field(factory=dict)

    @property
    def address(self) -> str:
        return f"10.{100 + (self.index >> 16) % 100}.{(self.index >> 8) & 255}.{self.index & 255}"


class SimulationClock(Clock):
    """
    A L{Clock} that keeps its pending calls sorted as they are added
    (binary insertion, equal times in the order they were added, as
    C{Clock}'s stable sort does) instead of sorting them all on every
    C{callLater} and C{advance}: the same behaviour, in O(log n) instead of
    O(n log n) per event, which is what makes big simulations fast.
    Delayed calls must not be C{reset} or C{delay}ed (the simulator never
    does).
    """

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """
        See L{twisted.internet.interfaces.IReactorTime.callLater}.
        """
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            self.calls.remove,
            lambda c: None,
            self.seconds,
        )
        insort(self.calls, call, key=DelayedCall.getTime)
        return call

    def _sortCalls(self) -> None:
        # Already sorted by callLater.
        pass


class SimulatedRequest:
    """
    The parts of a twisted.web request that choosers read: the client's
    address, path, headers (C{X-Client}) and cookies. It is always "secure"
    (a request that came over TLS).
    """

    method = b"GET"

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.path = b"/client/%d" % (client.index,)
        self.uri = self.path

    @property
    def requestHeaders(self) -> Headers:
        return Headers(
            {b"host": [b"simulated.example"], b"x-client": [b"%d" % (self._client.index,)]}
        )

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", self._client.address, 40000)

    def getCookie(self, key: bytes) -> bytes | None:
        return self._client.cookies.get(key)

    def getHeader(self, key: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(key)
        return values[-1] if values else None

    def isSecure(self) -> bool:
        return True


@attrs.define(eq=False)
class _Job:
    client: _Client
    request: SimulatedRequest
    backend: int
    arrived: float
    call: IDelayedCall | None = None


def _home(counts: Counter[int]) -> int:
    """
    The backend index most requests went to, the lowest on a tie.
    """
    most = max(counts.values())
    return min(index for index, count in counts.items() if count == most)


def _setCookie(client: _Client, header: bytes) -> None:
    """
    Store the cookie of a C{Set-Cookie} value in C{client}'s jar.
    """
    pair = header.split(b";", 1)[0]
    name, _, value = pair.partition(b"=")
    client.cookies[name.strip()] = value.strip()


class _Run:
    """
    One chooser over one scenario.
    """

    def __init__(
        self,
        scenario: Scenario,
        chooserName: str,
        registry: Mapping[str, ChooserFactory] | None,
    ) -> None:
        self.scenario = scenario
        self.chooserName = chooserName
        self.clock = SimulationClock()
        self.backends = [
            Backend(f"10.0.{index // 250}.{index % 250 + 1}", 80, weight=spec.weight)
            for index, spec in enumerate(scenario.backends)
        ]
        self.indices = {id(backend): index for index, backend in enumerate(self.backends)}
        seed = scenario.seed
        self.arrivalRandom = random.Random(seed)
        self.serviceRandom = random.Random(seed + 1)
        self.clientRandom = random.Random(seed + 2)
        settings = _chooserSettings(scenario.settings, random.Random(seed + 3), self.clock)
        self.chooser: IChooser = makeChooser(chooserName, registry, settings)
        self.affinity = IAffinityChooser.providedBy(self.chooser)
        self.clients: dict[int, _Client] = {}
        self.busy = [0] * len(self.backends)
        self.queues: list[deque[_Job]] = [deque() for _ in self.backends]
        self.serving: list[set[_Job]] = [set() for _ in self.backends]
        self.latencies: list[float] = []
        self.errors = 0
        self.launched = 0
        self.finished = 0
        self.removal = scenario.removalTime()
        self.before: dict[int, Counter[int]] = {}
        self.after: dict[int, Counter[int]] = {}
        self.replayNames: dict[str, int] = {}

    def client(self, index: int) -> _Client:
        client = self.clients.get(index)
        if client is None:
            client = self.clients[index] = _Client(index)
        return client

    def run(self) -> Result:
        for index, spec in enumerate(self.scenario.backends):
            for start, _ in spec.down:
                self.clock.callLater(start, self.goDown, index)
        arrivals = self.scenario.arrivals
        if arrivals.kind == "closed":
            for _ in range(min(arrivals.concurrency, self.scenario.requests)):
                self.launch()
        elif arrivals.kind == "poisson":
            self.clock.callLater(self.arrivalRandom.expovariate(arrivals.rate), self.poisson)
        else:
            for when, name in zip(
                arrivals.times[: self.scenario.requests],
                arrivals.names[: self.scenario.requests],
                strict=True,
            ):
                self.clock.callLater(when, self.replay, name)
        lastAnswer = 0.0
        clock = self.clock
        while clock.calls:
            due = clock.calls[0].getTime()
            clock.advance(max(0.0, due - clock.seconds()))
            if clock.calls and clock.calls[0].getTime() <= due and clock.seconds() < due:
                clock.rightNow = due
                clock.advance(0)
            if self.finished:
                lastAnswer = max(lastAnswer, clock.seconds())
            if self.finished >= self.scenario.requests:
                break
        self.latencies.sort()
        moved: float | None = None
        if self.removal is not None:
            common = [key for key in self.before if key in self.after]
            if common:
                changed = sum(_home(self.before[key]) != _home(self.after[key]) for key in common)
                moved = changed / len(common)
        return Result(
            chooser=self.chooserName,
            latencies=self.latencies,
            counts=[backend.requests for backend in self.backends],
            errors=self.errors,
            duration=lastAnswer,
            moved=moved,
        )

    def poisson(self) -> None:
        self.launch()
        if self.launched < self.scenario.requests:
            rate = self.scenario.arrivals.rate
            self.clock.callLater(self.arrivalRandom.expovariate(rate), self.poisson)

    def replay(self, name: str | None) -> None:
        if name is None:
            self.launch()
            return
        index = self.replayNames.setdefault(name, len(self.replayNames))
        self.launch(index)

    def launch(self, clientIndex: int | None = None) -> None:
        """
        One request arrives: choose, send, serve or queue.
        """
        self.launched += 1
        if clientIndex is None:
            clientIndex = self.clientRandom.randrange(self.scenario.clients)
        client = self.client(clientIndex)
        request = SimulatedRequest(client)
        now = self.clock.seconds()
        up = self.backends
        if self.removal is not None:
            up = [
                backend
                for backend, spec in zip(self.backends, self.scenario.backends, strict=True)
                if not spec.isDown(now)
            ]
        backend = self.chooser.choose(up, request)  # type: ignore[arg-type]
        if backend is None:
            self.errors += 1
            self.done()
            return
        index = self.indices[id(backend)]
        homes = self.before if self.removal is None or now < self.removal else self.after
        homes.setdefault(clientIndex, Counter())[index] += 1
        backend.requestStarted()
        job = _Job(client, request, index, now)
        capacity = self.scenario.backends[index].capacity
        if capacity is None or self.busy[index] < capacity:
            self.serve(job)
        else:
            self.queues[index].append(job)

    def serve(self, job: _Job) -> None:
        index = job.backend
        spec = self.scenario.backends[index]
        now = self.clock.seconds()
        self.busy[index] += 1
        duration = spec.latency.sample(self.serviceRandom)
        if spec.slow:
            duration *= spec.slowFactor(now)
        job.call = self.clock.callLater(duration, self.answer, job)
        self.serving[index].add(job)

    def answer(self, job: _Job) -> None:
        index = job.backend
        backend = self.backends[index]
        now = self.clock.seconds()
        self.busy[index] -= 1
        self.serving[index].discard(job)
        latency = now - job.arrived
        backend.requestFinished(False, latency=latency, now=now)
        if self.affinity:
            for name, value in self.chooser.responseHeaders(backend, job.request):  # type: ignore[attr-defined]
                if name.lower() == b"set-cookie":
                    _setCookie(job.client, value)
        self.latencies.append(latency)
        self.startNext(index)
        self.done()

    def startNext(self, index: int) -> None:
        capacity = self.scenario.backends[index].capacity
        queue = self.queues[index]
        while queue and (capacity is None or self.busy[index] < capacity):
            self.serve(queue.popleft())

    def goDown(self, index: int) -> None:
        """
        A backend goes down: everything it holds fails.
        """
        backend = self.backends[index]
        now = self.clock.seconds()
        failed = list(self.serving[index]) + list(self.queues[index])
        self.serving[index].clear()
        self.queues[index].clear()
        self.busy[index] = 0
        for job in failed:
            if job.call is not None and job.call.active():
                job.call.cancel()
            backend.requestFinished(True, now=now)
            self.errors += 1
            self.done()

    def done(self) -> None:
        """
        A request is over (answered or failed); a closed-loop client sends
        its next one.
        """
        self.finished += 1
        if self.scenario.arrivals.kind == "closed" and self.launched < self.scenario.requests:
            self.launch()


def simulate(
    scenario: Scenario,
    choosers: list[str] | None = None,
    registry: Mapping[str, ChooserFactory] | None = None,
) -> list[Result]:
    """
    Run each of C{choosers} (default: the scenario's) over C{scenario},
    each with the same seeds, so they see the same arrivals and clients.
    """
    results = []
    for name in choosers if choosers is not None else scenario.choosers:
        results.append(_Run(scenario, name, registry).run())
    return results


__all__ = ["Result", "SimulatedRequest", "simulate"]
