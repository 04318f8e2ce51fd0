"""
Tests for L{lbproxy.upstream.health}: rise/fall, active checks, outlier ejection and
slow start, all on an injected clock.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.server import NOT_DONE_YET, Request

from lbproxy.test.fakes import reactor, startBackend
from lbproxy.upstream.backends import Backend, BackendPool, SlowStart
from lbproxy.upstream.health import (
    EjectionSettings,
    HealthChecker,
    HealthSettings,
    HTTPProbe,
    OutlierDetector,
    RiseFall,
)
from lbproxy.upstream.pool import Upstream


class RiseFallTests(SynchronousTestCase):
    """
    HAProxy's hysteresis.
    """

    def test_table(self) -> None:
        """
        A backend goes down after C{fall} consecutive failures and up after
        C{rise} consecutive successes; a single result against the streak
        resets it.
        """
        cases: list[tuple[str, list[bool], list[bool]]] = [
            ("two failures are not enough", [False, False], [True, True]),
            ("three failures take it down", [False, False, False], [True, True, False]),
            ("a success resets the failures", [False, False, True, False, False], [True] * 5),
            (
                "down, then two successes bring it up",
                [False, False, False, True, True],
                [True, True, False, False, True],
            ),
            (
                "down, a success then a failure keeps it down",
                [False, False, False, True, False, True],
                [True, True, False, False, False, False],
            ),
        ]
        for name, results, states in cases:
            state = RiseFall(rise=2, fall=3)
            seen = []
            for result in results:
                state.record(result)
                seen.append(state.up)
            self.assertEqual(seen, states, name)

    def test_recordSaysWhenItChanged(self) -> None:
        """
        C{record} returns true exactly on the result that flips the state.
        """
        state = RiseFall(rise=1, fall=1)
        self.assertEqual(
            [state.record(r) for r in (True, False, False, True, True)],
            [False, True, False, True, False],
        )


class _ScriptedProbe:
    """
    A probe whose answers the test gives: each call returns a Deferred the
    test fires.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Backend, Deferred[bool]]] = []

    def __call__(self, backend: Backend) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.calls.append((backend, d))
        return d

    def answer(self, healthy: bool) -> None:
        for _, d in self.calls:
            if not d.called:
                d.callback(healthy)


class HealthCheckerTests(SynchronousTestCase):
    """
    Active checks on a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backends = [Backend("127.0.0.2"), Backend("127.0.0.3")]
        self.pool = BackendPool(list(self.backends))
        self.probe = _ScriptedProbe()

    def checker(self, **settings: Any) -> HealthChecker:
        checker = HealthChecker(
            self.pool, self.probe, self.clock, HealthSettings(**settings), slowStart=30
        )
        checker.start()
        self.addCleanup(checker.stop)
        return checker

    def test_probesEveryInterval(self) -> None:
        """
        Every backend is probed at start and then every interval.
        """
        self.checker(interval=2)
        self.assertEqual(len(self.probe.calls), 2)
        self.probe.answer(True)
        self.clock.advance(2)
        self.assertEqual(len(self.probe.calls), 4)

    def test_slowProbeNotStacked(self) -> None:
        """
        A probe still running when the next is due is not doubled.
        """
        self.checker(interval=2)
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(len(self.probe.calls), 2)

    def test_fallAndRise(self) -> None:
        """
        Three failed probes take a backend out of the pool, two good ones
        bring it back, with a slow-start ramp.
        """
        self.checker(interval=2, fall=3, rise=2)
        for _ in range(3):
            self.probe.answer(False)
            self.clock.advance(2)
        self.assertEqual(self.pool.available(), [])
        self.probe.answer(True)
        self.clock.advance(2)
        self.assertEqual(self.pool.available(), [])
        self.probe.answer(True)
        self.assertEqual(self.pool.available(), self.backends)
        self.assertIsNotNone(self.backends[0].slowStart)

    def test_changesReported(self) -> None:
        """
        Each change of a backend's health is reported once, after the
        backend is marked: going down, then coming back up.
        """
        seen: list[tuple[str, bool]] = []
        checker = HealthChecker(
            self.pool,
            self.probe,
            self.clock,
            HealthSettings(interval=2, fall=2, rise=1),
            onChange=lambda backend: seen.append((backend.authority, backend.healthy)),
        )
        checker.start()
        self.addCleanup(checker.stop)
        for healthy in (False, False, False, True, True):
            self.probe.answer(healthy)
            self.clock.advance(2)
        self.assertEqual(
            seen,
            [
                ("127.0.0.2:80", False),
                ("127.0.0.3:80", False),
                ("127.0.0.2:80", True),
                ("127.0.0.3:80", True),
            ],
        )

    def test_zeroIntervalDisables(self) -> None:
        """
        With an interval of 0 nothing is probed.
        """
        self.checker(interval=0)
        self.clock.advance(100)
        self.assertEqual(self.probe.calls, [])


class _FakeResponse:
    """
    A response head with status C{code} whose body the test delivers:
    C{protocol} is given a transport that records C{stopProducing}.
    """

    phrase = b"Reason"

    def __init__(self, code: int) -> None:
        self.code = code
        self.protocol: Protocol | None = None
        self.stopped = False

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def stopProducing(self) -> None:
        self.stopped = True


class _FakeRequests:
    """
    Stands in for L{Upstream.request}: each request returns a Deferred the
    test fires with a L{_FakeResponse}.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[_FakeResponse]] = []

    def __call__(
        self, backend: Backend, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Deferred[_FakeResponse]:
        d: Deferred[_FakeResponse] = Deferred()
        self.pending.append(d)
        return d

    def respond(self, code: int) -> _FakeResponse:
        response = _FakeResponse(code)
        self.pending.pop(0).callback(response)
        return response


class HTTPProbeExchangeTests(SynchronousTestCase):
    """
    A probe's whole exchange, head and body, is bounded by its timeout, and
    only a whole body counts as healthy.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.requests = _FakeRequests()
        self.probe = HTTPProbe(self.requests, self.clock, b"/", 1.0)
        self.backend = Backend("127.0.0.2")

    def test_stalledBodyIsUnhealthy(self) -> None:
        """
        A probe whose response body stops arriving fails when the timeout
        is up, counted from the start of the probe, and its connection is
        dropped.
        """
        result = self.probe(self.backend)
        self.clock.advance(0.5)
        response = self.requests.respond(200)
        assert response.protocol is not None
        response.protocol.dataReceived(b"partial")
        self.clock.advance(0.4)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertIs(self.successResultOf(result), False)
        self.assertTrue(response.stopped)

    def test_cutBodyIsUnhealthy(self) -> None:
        """
        A 200 whose body is cut off is a failed probe.
        """
        result = self.probe(self.backend)
        response = self.requests.respond(200)
        assert response.protocol is not None
        response.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertIs(self.successResultOf(result), False)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wholeBodyIsHealthy(self) -> None:
        """
        A 2xx whose body ends, at its length or at a close when it has no
        length, is a healthy probe, and no timer is left; a 5xx is not.
        """
        for code, end, expected in [
            (200, ResponseDone(), True),
            (204, ResponseDone(), True),
            (200, PotentialDataLoss(), True),
            (503, ResponseDone(), False),
        ]:
            result = self.probe(self.backend)
            response = self.requests.respond(code)
            assert response.protocol is not None
            response.protocol.dataReceived(b"ok")
            response.protocol.connectionLost(Failure(end))
            self.assertIs(self.successResultOf(result), expected, (code, end))
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noHeadIsUnhealthy(self) -> None:
        """
        A probe whose response head does not arrive in time fails, and its
        request is cancelled.
        """
        result = self.probe(self.backend)
        [pending] = self.requests.pending
        self.clock.advance(0.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertIs(self.successResultOf(result), False)
        self.assertTrue(pending.called)

    def test_stalledBodyDoesNotWedgeChecks(self) -> None:
        """
        A backend whose health endpoint stalls mid-body is still probed
        every interval, and goes down after C{fall} failed probes.
        """
        checker = HealthChecker(
            BackendPool([self.backend]),
            self.probe,
            self.clock,
            HealthSettings(interval=2, timeout=1, fall=2, rise=1),
        )
        checker.start()
        self.addCleanup(checker.stop)
        for _ in range(2):
            self.requests.respond(200)
            self.clock.advance(2)
        self.assertFalse(self.backend.healthy)


class HTTPProbeTests(TestCase):
    """
    The default probe against real backends on loopback.
    """

    @inlineCallbacks
    def test_statusDecides(self) -> Generator[Any, Any, None]:
        """
        2xx and 3xx answers are healthy; 5xx and 4xx are not; the probe
        asks for the configured path.
        """
        codes = iter([200, 302, 503, 404])

        def handler(request: Request) -> bytes:
            request.setResponseCode(next(codes))
            return b""

        backend = yield startBackend(self, b"", handler)
        upstream = Upstream(reactor, reactor)
        self.addCleanup(upstream.close)
        probe = HTTPProbe(
            lambda b, m, t, h: upstream.request(b, m, t, h, None), reactor, b"/healthz", 1.0
        )
        results = []
        for _ in range(4):
            results.append((yield probe(backend.backend)))
        self.assertEqual(results, [True, True, False, False])
        self.assertEqual({r.uri for r in backend.resource.received}, {b"/healthz"})

    @inlineCallbacks
    def test_timeoutIsUnhealthy(self) -> Generator[Any, Any, None]:
        """
        A backend that does not answer within the probe timeout is
        unhealthy.
        """
        held: list[Request] = []

        def hold(request: Request) -> int:
            held.append(request)
            return NOT_DONE_YET

        backend = yield startBackend(self, b"", hold)
        clock = Clock()
        upstream = Upstream(reactor, clock)
        self.addCleanup(upstream.close)
        probe = HTTPProbe(lambda b, m, t, h: upstream.request(b, m, t, h, None), clock, b"/", 1.0)
        result = probe(backend.backend)
        yield backend.resource.nextRequest()
        clock.advance(1)
        self.assertIs((yield result), False)

    @inlineCallbacks
    def test_refusedIsUnhealthy(self) -> Generator[Any, Any, None]:
        """
        A backend that refuses connections is unhealthy.
        """
        backend = yield startBackend(self, b"")
        yield backend.port.stopListening()
        upstream = Upstream(reactor, reactor)
        self.addCleanup(upstream.close)
        probe = HTTPProbe(lambda b, m, t, h: upstream.request(b, m, t, h, None), reactor, b"/", 1.0)
        self.assertIs((yield probe(backend.backend)), False)


class OutlierDetectorTests(SynchronousTestCase):
    """
    Passive checks.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backends = [Backend(f"127.0.0.{n}") for n in range(2, 6)]
        self.pool = BackendPool(list(self.backends))

    def detector(self, **settings: Any) -> OutlierDetector:
        detector = OutlierDetector(self.pool, self.clock, EjectionSettings(**settings))
        self.addCleanup(detector.stop)
        return detector

    def test_ejectedAfterConsecutiveFailures(self) -> None:
        """
        C{maxFails} failures in a row eject a backend; a success in between
        resets the count.
        """
        detector = self.detector(maxFails=3)
        backend = self.backends[0]
        detector.failed(backend)
        detector.failed(backend)
        detector.succeeded(backend, 200)
        detector.failed(backend)
        detector.failed(backend)
        self.assertFalse(backend.ejected)
        detector.failed(backend)
        self.assertTrue(backend.ejected)
        self.assertNotIn(backend, self.pool.available())

    def test_backoffDoublesUpToCap(self) -> None:
        """
        The first ejection lasts the base time; each repeat doubles it, up
        to the cap; the backend is re-admitted when it ends.
        """
        detector = self.detector(maxFails=1, baseTime=10, maxTime=35)
        backend = self.backends[0]
        durations = []
        for _ in range(4):
            detector.failed(backend)
            start = self.clock.seconds()
            while backend.ejected:
                self.clock.advance(1)
            durations.append(self.clock.seconds() - start)
        self.assertEqual(durations, [10, 20, 35, 35])
        self.assertEqual(backend.ejections, 4)

    def test_backoffResetsAfterGoodBehaviour(self) -> None:
        """
        A backend that stays in service for a whole cap after coming back
        is ejected for the base time again.
        """
        detector = self.detector(maxFails=1, baseTime=10, maxTime=40)
        backend = self.backends[0]
        detector.failed(backend)
        self.clock.advance(10)
        detector.failed(backend)
        self.clock.advance(20)
        self.clock.advance(40)
        detector.failed(backend)
        self.clock.advance(9)
        self.assertTrue(backend.ejected)
        self.clock.advance(1)
        self.assertFalse(backend.ejected)

    def test_neverMoreThanMaxPercent(self) -> None:
        """
        With half the pool ejected, a third failing backend stays in.
        """
        detector = self.detector(maxFails=1, maxPercent=50)
        for backend in self.backends:
            detector.failed(backend)
        self.assertEqual([b.ejected for b in self.backends], [True, True, False, False])

    def test_fiveHundredsOnlyWhenAsked(self) -> None:
        """
        5xx answers count as failures only with C{on5xx}.
        """
        lenient = self.detector(maxFails=1)
        lenient.succeeded(self.backends[0], 503)
        self.assertFalse(self.backends[0].ejected)
        strict = self.detector(maxFails=1, on5xx=True)
        strict.succeeded(self.backends[1], 503)
        self.assertTrue(self.backends[1].ejected)

    def test_zeroMaxFailsDisables(self) -> None:
        """
        With C{maxFails} 0 nothing is ever ejected.
        """
        detector = self.detector(maxFails=0)
        for _ in range(10):
            detector.failed(self.backends[0])
        self.assertFalse(self.backends[0].ejected)

    def test_readmittedWithSlowStart(self) -> None:
        """
        A re-admitted backend ramps up its weight over the slow-start time.
        """
        detector = OutlierDetector(
            self.pool, self.clock, EjectionSettings(maxFails=1, baseTime=10), slowStart=20
        )
        backend = self.backends[0]
        detector.failed(backend)
        self.clock.advance(10)
        self.assertFalse(backend.ejected)
        weights = []
        for _ in range(3):
            weights.append(backend.effectiveWeight)
            self.clock.advance(10)
        self.assertEqual(weights, [0.05, 0.5, 1.0])


class SlowStartTests(SynchronousTestCase):
    """
    The slow-start ramp.
    """

    def test_ramp(self) -> None:
        """
        Weight grows linearly from the floor to the full weight over the
        duration, and stays there.
        """
        clock = Clock()
        backend = Backend("127.0.0.2", weight=4)
        backend.slowStart = SlowStart(clock, clock.seconds(), 10)
        seen = []
        for _ in range(4):
            seen.append(backend.effectiveWeight)
            clock.advance(5)
        self.assertEqual(seen, [0.2, 2.0, 4.0, 4.0])
        self.assertTrue(backend.slowStart.finished())
