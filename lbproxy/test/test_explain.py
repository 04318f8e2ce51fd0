"""
Tests for L{lbproxy.balancing.explain} and the C{explain} method of every
built-in chooser: right after a C{choose()}, each says what that call
computed, and its figures agree with the choice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from lbproxy.balancing.explain import Explanation, explainChoice
from lbproxy.balancing.hash import HashChooser, parseHashKey
from lbproxy.balancing.leastconn import LeastConnChooser
from lbproxy.balancing.p2c import P2CChooser
from lbproxy.balancing.peakewma import PeakEWMAChooser, peakCost, typicalLatency
from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.registry import BUILTIN_CHOOSERS, ChooserSettings
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.balancing.sticky import StickyChooser
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.test_target import parsedRequest
from lbproxy.upstream.backends import Backend


def _request(
    head: bytes = b"GET / HTTP/1.1\r\nHost: example.com", client: str = "10.1.1.1"
) -> Request:
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
    return parsedRequest(head, transport)


def _backends(*inFlight: int) -> list[Backend]:
    """
    Backends on 127.0.0.2, ports 8001 upwards, with C{inFlight} requests
    in flight each.
    """
    return [
        Backend("127.0.0.2", 8001 + index, inFlight=count) for index, count in enumerate(inFlight)
    ]


def _explained(
    case: SynchronousTestCase, chooser: object, backends: Sequence[Backend], request: IRequest
) -> tuple[Backend | None, Explanation]:
    """
    Choose, then explain that choice; the explanation has one set of
    figures per backend.
    """
    chosen = chooser.choose(backends, request)  # type: ignore[attr-defined]
    explanation = chooser.explain(backends, request, chosen)  # type: ignore[attr-defined]
    case.assertEqual(len(explanation.figures), len(backends))
    return chosen, explanation


class ExplainChoiceTests(SynchronousTestCase):
    """
    L{explainChoice} adds the common figures and never fails.
    """

    def test_commonFigures(self) -> None:
        """
        Every candidate has its address, URL, requests in flight, latency
        estimate in milliseconds, configured and effective weights, and
        whether it was chosen; the chooser's figures are its scores.
        """
        backends = _backends(2, 0)
        backends[0].weight = 3
        backends[1].latencyEWMA.observe(0.0125, 1.0)
        reason, scores = explainChoice(
            RandomChooser(random.Random(1)), backends, backends[1], _request()
        )
        self.assertEqual(reason, "drawn at random in proportion to weight")
        self.assertEqual(
            [(s.address, s.url, s.chosen, s.inFlight, s.ewma, s.weight) for s in scores],
            [
                ("127.0.0.2:8001", "http://127.0.0.2:8001", False, 2, None, 3),
                ("127.0.0.2:8002", "http://127.0.0.2:8002", True, 0, 0.0125, 1),
            ],
        )
        self.assertEqual([s.effectiveWeight for s in scores], [3.0, 1.0])
        self.assertEqual(
            [s.figures for s in scores], [{"probability": 0.75}, {"probability": 0.25}]
        )

    def test_noExplainMethod(self) -> None:
        """
        A chooser without C{explain} gets a reason saying so, and the
        common figures only.
        """
        backends = _backends(0, 0)
        reason, scores = explainChoice(FirstAvailable(), backends, backends[0], _request())
        self.assertEqual(reason, "FirstAvailable does not explain its choices")
        self.assertEqual([s.figures for s in scores], [{}, {}])
        self.assertEqual([s.chosen for s in scores], [True, False])

    def test_explainFails(self) -> None:
        """
        An C{explain} that raises, or gives figures for a different number
        of backends, is reported as the reason; the figures are left out.
        """

        class Raising(FirstAvailable):
            def explain(self, backends: object, request: object, chosen: object) -> Explanation:
                raise KeyError("oops")

        class Short(FirstAvailable):
            def explain(self, backends: object, request: object, chosen: object) -> Explanation:
                return Explanation("short", [{}])

        backends = _backends(0, 0)
        reason, scores = explainChoice(Raising(), backends, backends[0], _request())
        self.assertEqual(reason, "Raising.explain failed: KeyError: 'oops'")
        self.assertEqual([s.figures for s in scores], [{}, {}])
        reason, _ = explainChoice(Short(), backends, backends[0], _request())
        self.assertEqual(reason, "Short.explain gave 1 figures for 2")

    def test_noCandidates(self) -> None:
        """
        With no backend to choose from, the reason says so.
        """
        self.assertEqual(
            explainChoice(RandomChooser(), [], None, _request()),
            ("no backend can take traffic", []),
        )

    def test_everyBuiltinExplains(self) -> None:
        """
        Every built-in chooser has an C{explain} whose figures cover every
        candidate, after choices among one, two and five backends.
        """
        settings = ChooserSettings(rng=random.Random(3), clock=Clock())
        for name, factory in sorted(BUILTIN_CHOOSERS.items()):
            chooser = factory(settings)
            for count in (1, 2, 5):
                backends = _backends(*range(count))
                chosen, explanation = _explained(self, chooser, backends, _request())
                self.assertIn(chosen, backends, name)
                self.assertTrue(explanation.reason, name)


class RandomAndRoundRobinTests(SynchronousTestCase):
    """
    C{random} gives each backend's chance; C{round-robin} its place in the
    rotation.
    """

    def test_randomProbabilities(self) -> None:
        """
        Each backend's probability is its effective weight over the total.
        """
        backends = _backends(0, 0, 0)
        for backend, weight in zip(backends, (1, 2, 5), strict=True):
            backend.weight = weight
        _, explanation = _explained(self, RandomChooser(random.Random(2)), backends, _request())
        self.assertEqual([f["probability"] for f in explanation.figures], [0.125, 0.25, 0.625])

    def test_roundRobinCurrent(self) -> None:
        """
        Weights 2 and 1 go a, b, a; after each pick the chosen backend's
        current value has dropped by the total weight and the other's has
        grown by its weight.
        """
        backends = _backends(0, 0)
        backends[0].weight = 2
        chooser = RoundRobinChooser()
        picks = []
        for _ in range(3):
            chosen, explanation = _explained(self, chooser, backends, _request())
            assert chosen is not None
            picks.append((backends.index(chosen), [f["current"] for f in explanation.figures]))
        self.assertEqual(picks, [(0, [-1.0, 1.0]), (1, [1.0, -1.0]), (0, [0.0, 0.0])])
        self.assertIn("rotation", explanation.reason)


class LeastConnTests(SynchronousTestCase):
    """
    C{least-conn} gives every backend's load.
    """

    def test_loads(self) -> None:
        """
        Each backend's load is its requests in flight over its weight; the
        chosen one is marked least.
        """
        backends = _backends(4, 3, 1)
        backends[1].weight = 3
        chosen, explanation = _explained(self, LeastConnChooser(), backends, _request())
        self.assertIs(chosen, backends[1])
        self.assertEqual(
            explanation.figures,
            [
                {"load": 4.0, "least": False},
                {"load": 1.0, "least": True},
                {"load": 1.0, "least": True},
            ],
        )
        self.assertEqual(
            explanation.reason, "fewest in flight per unit of weight (1); 2 tied, taking turns"
        )

    def test_alone(self) -> None:
        """
        A single least-loaded backend is named without a tie.
        """
        backends = _backends(2, 0)
        chosen, explanation = _explained(self, LeastConnChooser(), backends, _request())
        self.assertIs(chosen, backends[1])
        self.assertEqual(explanation.reason, "fewest in flight per unit of weight (0)")


class TwoChoicesTests(SynchronousTestCase):
    """
    C{p2c} and C{peak-ewma} name the two backends they drew.
    """

    def test_p2cDrawn(self) -> None:
        """
        Exactly the two drawn backends are marked, with their load; the
        chosen one is one of them and no more loaded than the other.
        """
        chooser = P2CChooser(random.Random(7))
        for _ in range(200):
            backends = _backends(3, 0, 2, 5, 1, 4)
            chosen, explanation = _explained(self, chooser, backends, _request())
            drawn = [i for i, f in enumerate(explanation.figures) if f["drawn"]]
            self.assertEqual(len(drawn), 2)
            assert chosen is not None
            self.assertIn(backends.index(chosen), drawn)
            loads = [explanation.figures[i]["load"] for i in drawn]
            self.assertEqual(explanation.figures[backends.index(chosen)]["load"], min(loads))  # type: ignore[type-var]
            self.assertIn("less loaded of the two drawn", explanation.reason)

    def test_p2cUnknownDraw(self) -> None:
        """
        Explaining without a choice among these backends first says that
        the draw is not known.
        """
        backends = _backends(0, 0)
        explanation = P2CChooser().explain(backends, _request(), backends[0])
        self.assertEqual(explanation.reason, "the draw is not known")

    def test_peakEWMACosts(self) -> None:
        """
        Every backend's cost is the chooser's: its latency estimate times
        its requests in flight plus one, over its weight; the two drawn are
        marked and the chosen one is one of them.
        """
        clock = Clock()
        clock.advance(100)
        backends = _backends(0, 2, 1)
        for backend, latency in zip(backends, (0.010, 0.020, 0.200), strict=True):
            backend.latencyEWMA.observe(latency, 100.0)
        chooser = PeakEWMAChooser(clock, random.Random(5))
        typical = typicalLatency(backends)
        self.assertEqual(typical, 0.020)
        for _ in range(50):
            chosen, explanation = _explained(self, chooser, backends, _request())
            costs = [f["cost"] for f in explanation.figures]
            self.assertEqual(costs, [peakCost(b, 1.0, 100.0, typical) for b in backends])
            self.assertEqual(costs, [0.01, 0.06, 0.4])
            self.assertEqual([f["latency_ms"] for f in explanation.figures], [10.0, 20.0, 200.0])
            drawn = [i for i, f in enumerate(explanation.figures) if f["drawn"]]
            self.assertEqual(len(drawn), 2)
            assert chosen is not None
            index = backends.index(chosen)
            self.assertIn(index, drawn)
            self.assertEqual(costs[index], min(costs[i] for i in drawn))  # type: ignore[type-var]
            self.assertIn("(typical latency 20 ms)", explanation.reason)

    def test_peakEWMASecondWins(self) -> None:
        """
        When the second backend drawn wins, the reason says it costs over
        the tolerance less than the first.
        """
        clock = Clock()
        backends = _backends(0, 0)
        backends[0].latencyEWMA.observe(0.5, 0.0)
        backends[1].latencyEWMA.observe(0.01, 0.0)
        reasons = set()
        chooser = PeakEWMAChooser(clock, random.Random(1))
        for _ in range(20):
            chosen, explanation = _explained(self, chooser, backends, _request())
            self.assertIs(chosen, backends[1])
            reasons.add(explanation.reason.split(" (typical")[0])
        self.assertEqual(
            reasons,
            {
                "of the two drawn, 127.0.0.2:8002 costs over 20 % less than 127.0.0.2:8001",
                "of the two drawn, 127.0.0.2:8002 (drawn first) costs less than "
                "127.0.0.2:8001, or within 20 %",
            },
        )


class HashTests(SynchronousTestCase):
    """
    C{hash} names the key's slot and the Maglev table's owner of it.
    """

    def test_owner(self) -> None:
        """
        With room everywhere, the chosen backend owns the key's slot, and
        the slot named is the key's hash modulo the table size.
        """
        chooser = HashChooser(parseHashKey("client-ip"), rng=random.Random(1), tableSize=251)
        backends = _backends(0, 0, 0)
        chosen, explanation = _explained(self, chooser, backends, _request(client="10.9.8.7"))
        owners = [f["owns_slot"] for f in explanation.figures]
        self.assertEqual(owners.count(True), 1)
        assert chosen is not None
        self.assertTrue(owners[backends.index(chosen)])
        self.assertRegex(
            explanation.reason,
            r"^the key hashes to slot \d+ of 251, which the Maglev table gives to "
            + chosen.authority.replace(".", r"\.")
            + "$",
        )

    def test_fullOwner(self) -> None:
        """
        When the owner is full, another backend is chosen and the reason
        says why; the owner's figures show it full at its capacity.
        """
        chooser = HashChooser(parseHashKey("client-ip"), rng=random.Random(1), tableSize=251)
        backends = _backends(0, 0, 0)
        first = chooser.choose(backends, _request(client="10.9.8.7"))
        assert first is not None
        first.inFlight = 5
        chosen, explanation = _explained(self, chooser, backends, _request(client="10.9.8.7"))
        self.assertIsNot(chosen, first)
        owner = explanation.figures[backends.index(first)]
        capacity = math.ceil(1.25 * 6 / 3)
        self.assertEqual(owner, {"owns_slot": True, "capacity": capacity, "full": True})
        self.assertTrue(
            explanation.reason.endswith(
                f"; it is full, so the next slot's backend with room, {chosen}"
            )
        )

    def test_noKey(self) -> None:
        """
        A request without the key goes to a random slot, and the reason
        says so.
        """
        chooser = HashChooser(parseHashKey("header:x-user"), rng=random.Random(1), tableSize=251)
        backends = _backends(0, 0)
        _, explanation = _explained(self, chooser, backends, _request())
        self.assertRegex(explanation.reason, r"^no key: random slot \d+ of 251")


class StickyTests(SynchronousTestCase):
    """
    C{sticky} says whether the cookie named the backend, or what its
    fallback did.
    """

    def test_named(self) -> None:
        """
        A request whose cookie names a backend is explained by the cookie.
        """
        chooser = StickyChooser(RandomChooser(random.Random(1)), b"k" * 32)
        backends = _backends(0, 0)
        cookie = b"lbproxy_backend=" + chooser.token(backends[1])
        request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + cookie)
        chosen, explanation = _explained(self, chooser, backends, request)
        self.assertIs(chosen, backends[1])
        self.assertEqual(explanation.reason, "the affinity cookie names it")
        self.assertEqual(explanation.figures, [{"named": False}, {"named": True}])

    def test_fallback(self) -> None:
        """
        Without a cookie, the fallback's reason and figures are given,
        marked as not named by the cookie.
        """
        chooser = StickyChooser(LeastConnChooser(), b"k" * 32)
        backends = _backends(1, 0)
        chosen, explanation = _explained(self, chooser, backends, _request())
        self.assertIs(chosen, backends[1])
        self.assertEqual(
            explanation.reason,
            "no affinity cookie; LeastConnChooser: fewest in flight per unit of weight (0)",
        )
        self.assertEqual(
            explanation.figures,
            [
                {"named": False, "load": 1.0, "least": False},
                {"named": False, "load": 0.0, "least": True},
            ],
        )

    def test_fallbackWithoutExplain(self) -> None:
        """
        A fallback that does not explain is named; an unknown cookie is
        said to name no backend.
        """
        chooser = StickyChooser(FirstAvailable(), b"k" * 32)
        backends = _backends(0, 0)
        request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: lbproxy_backend=made-up")
        _, explanation = _explained(self, chooser, backends, request)
        self.assertEqual(
            explanation.reason,
            "the affinity cookie names no backend that can take traffic (or is not valid); "
            "chosen by FirstAvailable",
        )
