"""
Tests for L{lbproxy.observe.decisions}: the ring of the last decisions,
and the sampler that records one choice in N of every pool's proxy, with
whole requests through a balancer to in-memory backends.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.explain import Explanation
from lbproxy.balancing.p2c import P2CChooser
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.observe.decisions import MAX_PATH, RING_SIZE, DecisionRing, DecisionSampler
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.test_balancer import URL, BalancerCase, _config, _pool


def _fields(path: str = "/") -> dict[str, object]:
    return {
        "time": 1.0,
        "pool": "web",
        "chooser": "random",
        "method": "GET",
        "path": path,
        "reason": "r",
        "chosen": None,
        "candidates": [],
    }


class DecisionRingTests(SynchronousTestCase):
    """
    The ring keeps the last decisions, numbered, newest first.
    """

    def test_bounded(self) -> None:
        """
        Past its size the oldest decisions go; the rest are listed newest
        first, numbered in the order they came, and the count goes on.
        """
        ring = DecisionRing(size=3)
        for index in range(5):
            ring.add(**_fields(f"/{index}"))
        self.assertEqual([d.path for d in ring.recent()], ["/4", "/3", "/2"])
        self.assertEqual([d.number for d in ring.recent()], [5, 4, 3])
        self.assertEqual(ring.count, 5)

    def test_defaultSize(self) -> None:
        """
        By default the last 200 are kept.
        """
        ring = DecisionRing()
        for _ in range(RING_SIZE + 50):
            ring.add(**_fields())
        self.assertEqual(len(ring.recent()), 200)
        self.assertEqual(ring.recent()[-1].number, 51)


class SamplerTests(BalancerCase):
    """
    A L{DecisionSampler} attached to a balancer's pools records one
    request's choice in every C{every}, from the first.
    """

    def sampled(self, every: int, chooser: object = None) -> DecisionSampler:
        self.build(
            _config(
                _pool(
                    "web",
                    [self.a, self.b, self.c],
                    chooser if chooser is not None else RoundRobinChooser(),  # type: ignore[arg-type]
                    options={"chooser": "round-robin"},
                )
            )
        )
        sampler = DecisionSampler(every, self.clock)
        self.balancer.watchPools(sampler.attach)
        return sampler

    def test_oneInN(self) -> None:
        """
        With one in 3, the 1st, 4th and 7th requests' choices are recorded
        (newest first), with the time, pool, chooser name, method, path
        without its query, reason, every candidate with its scores, and
        the chosen backend; the others cost a countdown only.
        """
        sampler = self.sampled(3)
        for index in range(8):
            self.clock.advance(1)
            self.get(URL + b"page/%d?secret=x" % (index,))
        recent = sampler.ring.recent()
        self.assertEqual([d.path for d in recent], ["/page/6", "/page/3", "/page/0"])
        self.assertEqual(self.balancer.pool("web").proxy.sampleIn, 2)
        newest = recent[0]
        self.assertEqual(
            (newest.pool, newest.chooser, newest.method, newest.number),
            ("web", "round-robin", "GET", 3),
        )
        self.assertEqual(newest.time, self.clock.seconds() - 1)
        self.assertIn("rotation", newest.reason)
        self.assertEqual(
            [c.address for c in newest.candidates], ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        )
        self.assertEqual([c.chosen for c in newest.candidates], [True, False, False])
        self.assertIs(newest.chosen, self.live(self.a))
        self.assertEqual(set(newest.candidates[0].figures), {"current"})

    def test_off(self) -> None:
        """
        With 0, nothing is recorded and the proxies' countdown stays 0.
        """
        sampler = self.sampled(0)
        self.assertEqual(self.bodies(5), [b"a", b"b", b"c", b"a", b"b"])
        self.assertEqual(sampler.ring.recent(), [])
        proxy = self.balancer.pool("web").proxy
        self.assertEqual((proxy.sampleIn, proxy.decisions), (0, None))

    def test_refused(self) -> None:
        """
        A negative rate is refused.
        """
        with self.assertRaises(ValueError):
            DecisionSampler(-1, self.clock)

    def test_longPath(self) -> None:
        """
        A path longer than 200 characters is kept to its first 200.
        """
        sampler = self.sampled(1)
        self.get(URL + b"x" * 500)
        (decision,) = sampler.ring.recent()
        self.assertEqual(len(decision.path), MAX_PATH)
        self.assertEqual(decision.path, "/" + "x" * 199)

    def test_noneAvailable(self) -> None:
        """
        A request no backend can take is recorded with no candidates and
        nothing chosen.
        """
        sampler = self.sampled(1)
        for backend in self.balancer.pool("web").backends.backends:
            backend.healthy = False
        self.assertEqual(self.get().code, 503)
        (decision,) = sampler.ring.recent()
        self.assertEqual(
            (decision.chosen, list(decision.candidates), decision.reason),
            (None, [], "no backend can take traffic"),
        )

    def test_reloadedPoolsSampled(self) -> None:
        """
        A reload builds each pool's proxy anew; the new one is sampled too,
        from its first request.
        """
        sampler = self.sampled(100)
        self.get()
        self.balancer.apply(
            _config(_pool("web", [self.a, self.b], P2CChooser(random.Random(1)), chooserKey="p2c"))
        )
        self.get()
        recent = sampler.ring.recent()
        self.assertEqual(len(recent), 2)
        self.assertEqual(recent[0].chooser, "P2CChooser")
        self.assertEqual(len(recent[0].candidates), 2)

    def test_explainFailureLogged(self) -> None:
        """
        A failure while recording is logged; the request is answered and
        sampling goes on.
        """

        class Broken(FirstAvailable):
            def explain(self, backends: object, request: object, chosen: object) -> Explanation:
                return Explanation("ok", [{"x": object()}])  # type: ignore[dict-item]

        sampler = self.sampled(1, Broken())
        sampler.ring.add = None  # type: ignore[method-assign, assignment]
        self.assertEqual(self.get().body, b"a")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.balancer.pool("web").proxy.sampleIn, 1)

    def test_viewRounds(self) -> None:
        """
        Scores are recorded as the chooser gives them and shown to six
        significant digits.
        """

        class Thirds(FirstAvailable):
            def explain(self, backends: object, request: object, chosen: object) -> Explanation:
                return Explanation("thirds", [{"share": 1 / 3, "n": 7, "ok": True}] * 3)

        sampler = self.sampled(1, Thirds())
        self.get()
        (decision,) = sampler.ring.recent()
        self.assertEqual(decision.candidates[0].figures["share"], 1 / 3)
        (candidate, _, _) = decision.view()["candidates"]
        self.assertEqual(candidate["scores"], {"share": 0.333333, "n": 7, "ok": True})

    def test_view(self) -> None:
        """
        The view lists the decisions newest first, each candidate with its
        common figures and its scores, and the rate.
        """
        sampler = self.sampled(2)
        self.bodies(3)
        view = sampler.view()
        self.assertEqual((view["sample"], view["recorded"]), (2, 2))
        newest = view["decisions"][0]
        self.assertEqual(newest["chosen"], "10.0.0.3:80")
        self.assertEqual(
            newest["candidates"][2],
            {
                "address": "10.0.0.3:80",
                "url": "http://10.0.0.3:80",
                "chosen": True,
                "in_flight": 0,
                "ewma_ms": None,
                "weight": 1,
                "effective_weight": 1.0,
                "scores": {"current": 0.0},
            },
        )
