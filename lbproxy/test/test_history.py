"""
Tests for L{lbproxy.observe.history}: once a second on the injected
clock, each backend's rates, latency percentiles and requests in flight,
and its state changes as events.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.observe.history import HistorySampler, quantileOfGrowth
from lbproxy.test.test_admin import makeBalancer
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.latency import LatencyHistogram


def _serve(
    backend: Backend, count: int, latency: float, failed: int = 0, status5xx: int = 0
) -> None:
    """
    Count C{count} requests to C{backend} answered in C{latency} seconds
    (C{failed} of them failing at the proxy, C{status5xx} answered 5xx).
    """
    for index in range(count):
        backend.requestStarted()
        if index < failed:
            backend.requestFinished(failed=True)
        else:
            backend.requestFinished(latency=latency)
            if index < failed + status5xx:
                backend.responses[5] += 1
            else:
                backend.responses[2] += 1


class HistoryTests(SynchronousTestCase):
    """
    A L{HistorySampler} over a balancer with pools C{web} (two backends)
    and C{api} (one).
    """

    def setUp(self) -> None:
        self.balancer, self.clock = makeBalancer()
        self.clock.advance(1000)
        self.history = HistorySampler(self.balancer, self.clock)
        self.a, self.b = self.balancer.pool("web").backends.backends
        self.history.start()
        self.addCleanup(self.history.stop)

    def test_rates(self) -> None:
        """
        Each second's sample holds the requests per second, the errors per
        second (5xx answers and proxy failures), the median and 99th
        percentile of that second's latencies, and the requests in flight
        at its end.
        """
        _serve(self.a, 10, 0.004, failed=1, status5xx=2)
        _serve(self.a, 10, 0.2)
        self.a.inFlight = 3
        self.clock.advance(1)
        _serve(self.a, 5, 0.02)
        self.clock.advance(1)
        samples = self.history.samples("web", self.a.url)
        self.assertEqual(
            [(s.time, s.rate, s.errorRate, s.inFlight) for s in samples],
            [(1001.0, 20.0, 3.0, 3), (1002.0, 5.0, 0.0, 3)],
        )
        first, second = samples
        # 19 latencies: 9 in the 2.5-5 ms bucket, 10 in the 100-250 ms one.
        self.assertAlmostEqual(first.p50 or 0, 0.1 + 0.15 * (9.5 - 9) / 10)
        self.assertAlmostEqual(first.p99 or 0, 0.1 + 0.15 * (18.81 - 9) / 10)
        self.assertAlmostEqual(second.p50 or 0, 0.01 + 0.015 * 2.5 / 5)
        quiet = self.history.samples("web", self.b.url)
        self.assertEqual([(s.rate, s.p50, s.p99) for s in quiet], [(0.0, None, None)] * 2)

    def test_windowBounded(self) -> None:
        """
        The last 300 samples (five minutes) are kept.
        """
        self.clock.pump([1.0] * 400)
        samples = self.history.samples("web", self.a.url)
        self.assertEqual(len(samples), 300)
        self.assertEqual(samples[-1].time, 1400.0)

    def test_longerInterval(self) -> None:
        """
        A look that comes late divides by the time that passed.
        """
        self.history.stop()
        _serve(self.a, 30, 0.001)
        self.clock.advance(3)
        self.history.look()
        (sample,) = self.history.samples("web", self.a.url)
        self.assertEqual(sample.rate, 10.0)

    def test_stop(self) -> None:
        """
        After L{HistorySampler.stop} no more samples are taken; what was
        kept stays.
        """
        self.clock.pump([1.0, 1.0])
        self.history.stop()
        self.clock.advance(5)
        self.assertEqual(len(self.history.samples("web", self.a.url)), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stateEvents(self) -> None:
        """
        A backend going down, coming back and draining are events, newest
        first, with the state before and after and a note.
        """
        self.a.healthy = False
        self.clock.advance(1)
        self.a.healthy = True
        self.clock.advance(1)
        self.b.draining = True
        self.clock.advance(1)
        self.assertEqual(
            [(e.time, e.backend, e.before, e.after, e.note) for e in self.history.events],
            [
                (1003.0, "127.0.0.3:80", "up", "draining", "draining"),
                (1002.0, "127.0.0.2:80", "down", "up", "up"),
                (1001.0, "127.0.0.2:80", "up", "down", "health checks failed"),
            ],
        )

    def test_ejectionBetweenLooks(self) -> None:
        """
        An ejection that ended before the next look is an event too.
        """
        self.a.ejections += 1
        self.clock.advance(1)
        (event,) = self.history.events
        self.assertEqual(
            (event.before, event.after, event.note),
            ("up", "up", "ejected and re-admitted since the last look"),
        )

    def test_addedAndRemoved(self) -> None:
        """
        A backend added to a pool is an event and gets samples from the
        look after; one that leaves is an event and its samples go.
        """
        self.balancer.addBackend("web", Backend("127.0.0.9", 80))
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.history.samples("web", "http://127.0.0.9:80")), 1)
        self.balancer.pool("web").backends.backends.pop()
        self.clock.advance(1)
        self.assertEqual(self.history.samples("web", "http://127.0.0.9:80"), [])
        self.assertEqual(
            [(e.backend, e.before, e.after, e.note) for e in self.history.events],
            [("127.0.0.9:80", "up", None, "removed"), ("127.0.0.9:80", None, "up", "added")],
        )

    def test_view(self) -> None:
        """
        The view has every backend's samples as columns, latencies in
        milliseconds, and the events.
        """
        _serve(self.a, 4, 0.002)
        self.a.healthy = False
        self.clock.advance(1)
        view = self.history.view()
        self.assertEqual((view["interval"], view["window"], view["now"]), (1.0, 300, 1001.0))
        self.assertEqual(
            [(b["pool"], b["address"]) for b in view["backends"]],
            [("web", "127.0.0.2:80"), ("web", "127.0.0.3:80"), ("api", "127.0.0.4:80")],
        )
        first = view["backends"][0]
        self.assertEqual(
            {k: v for k, v in first.items() if k not in ("p50_ms", "p99_ms")},
            {
                "pool": "web",
                "url": "http://127.0.0.2:80",
                "address": "127.0.0.2:80",
                "state": "down",
                "time": [1001.0],
                "rate": [4.0],
                "error_rate": [0.0],
                "in_flight": [0],
            },
        )
        self.assertEqual(first["p50_ms"], [1.75])
        self.assertEqual(
            view["events"],
            [
                {
                    "time": 1001.0,
                    "pool": "web",
                    "backend": "127.0.0.2:80",
                    "from": "up",
                    "to": "down",
                    "note": "health checks failed",
                }
            ],
        )


class QuantileTests(SynchronousTestCase):
    """
    L{quantileOfGrowth} reads percentiles from the growth of a histogram.
    """

    def test_growth(self) -> None:
        """
        Only what was counted between the two readings counts.
        """
        histogram = LatencyHistogram()
        for _ in range(100):
            histogram.observe(5.0)
        before = tuple(histogram.counts)
        for _ in range(10):
            histogram.observe(0.0005)
        after = tuple(histogram.counts)
        self.assertEqual(quantileOfGrowth(before, after, 0.99), 0.001 * 9.9 / 10)
        self.assertIsNone(quantileOfGrowth(after, after, 0.5))
