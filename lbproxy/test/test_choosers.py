"""
Tests for the choosers (L{lbproxy.balancing.random}, L{roundrobin<lbproxy.balancing.roundrobin>},
L{leastconn<lbproxy.balancing.leastconn>}, L{p2c<lbproxy.balancing.p2c>},
L{peakewma<lbproxy.balancing.peakewma>}, L{hash<lbproxy.balancing.hash>},
L{sticky<lbproxy.balancing.sticky>}) and their registry
(L{lbproxy.balancing.registry}).
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from collections.abc import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.balancing.hash import HashChooser, HashSettings, parseHashKey
from lbproxy.balancing.leastconn import LeastConnChooser
from lbproxy.balancing.p2c import P2CChooser
from lbproxy.balancing.peakewma import PeakEWMAChooser
from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.registry import (
    BUILTIN_CHOOSERS,
    DEFAULT_CHOOSER,
    ChooserError,
    ChooserSettings,
    makeChooser,
    registry,
)
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.balancing.sticky import StickyChooser, StickySettings
from lbproxy.interfaces import IAffinityChooser, IChooser
from lbproxy.test.test_backends import assertOneLineError
from lbproxy.test.test_target import parsedRequest
from lbproxy.upstream.backends import Backend, SlowStart

_REQUEST = parsedRequest(b"GET / HTTP/1.1\r\nHost: example.com")


def _settings(seed: int = 1) -> ChooserSettings:
    """
    Chooser settings with seeded randomness and a fake clock.
    """
    return ChooserSettings(rng=random.Random(seed), clock=Clock())


def _backends(count: int) -> list[Backend]:
    """
    C{count} distinct backends on 127.0.0.2, ports 8001 upwards.
    """
    return [Backend("127.0.0.2", 8001 + index) for index in range(count)]


def _picks(chooser: IChooser, backends: Sequence[Backend], count: int) -> list[Backend | None]:
    """
    The backends C{chooser} picks for C{count} successive requests.
    """
    return [chooser.choose(backends, _REQUEST) for _ in range(count)]


@implementer(IChooser)
class FirstChooser:
    """
    A chooser defined outside lbproxy: always the first backend.
    """

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        return backends[0] if backends else None


class NotAChooser:
    """
    A class with a C{choose} method that does not declare L{IChooser}.
    """

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        return None


@implementer(IChooser)
class ChooserWithArguments:
    """
    A chooser whose constructor needs an argument.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        return self.backend


@implementer(IChooser)
class ExplodingChooser:
    """
    A chooser whose constructor fails with a message of several lines.
    """

    def __init__(self) -> None:
        raise RuntimeError("first line\nsecond line")

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        return None


class InterfaceTests(SynchronousTestCase):
    """
    Every built-in chooser is an L{IChooser}.
    """

    def test_builtinsProvideIChooser(self) -> None:
        """
        Each registered chooser, and each chooser class, provides
        L{IChooser}.
        """
        for name, factory in BUILTIN_CHOOSERS.items():
            self.assertTrue(verifyObject(IChooser, factory(_settings())), name)
        for chooser in [RandomChooser(), RandomChooser(random.Random(1)), RoundRobinChooser()]:
            self.assertTrue(verifyObject(IChooser, chooser))

    def test_emptyGivesNone(self) -> None:
        """
        Every built-in chooser picks nothing from no backends.
        """
        for name in BUILTIN_CHOOSERS:
            self.assertIsNone(makeChooser(name, settings=_settings()).choose([], _REQUEST), name)


class RandomChooserTests(SynchronousTestCase):
    """
    Tests for L{RandomChooser}.
    """

    def test_sequenceOfInjectedRandom(self) -> None:
        """
        With an injected C{random.Random}, the picks are exactly those of
        C{choice} on a generator with the same seed.
        """
        backends = _backends(5)
        for seed in [0, 1, 12345]:
            expected = random.Random(seed)
            picks = _picks(RandomChooser(random.Random(seed)), backends, 200)
            self.assertEqual(picks, [expected.choice(backends) for _ in range(200)], seed)

    def test_evenSplit(self) -> None:
        """
        Over 10 000 picks, each of two backends gets 50% +- 3%.
        """
        backends = _backends(2)
        counts = Counter(
            id(backend) for backend in _picks(RandomChooser(random.Random(7)), backends, 10_000)
        )
        for backend in backends:
            self.assertTrue(4_700 <= counts[id(backend)] <= 5_300, counts)

    def test_single(self) -> None:
        """
        With one backend, that backend is picked every time.
        """
        backends = _backends(1)
        self.assertEqual(_picks(RandomChooser(random.Random(3)), backends, 5), backends * 5)

    def test_ownRandomByDefault(self) -> None:
        """
        Without an injected generator each chooser still picks only from
        the backends it is given.
        """
        backends = _backends(3)
        for pick in _picks(RandomChooser(), backends, 50):
            self.assertIn(pick, backends)


class RoundRobinChooserTests(SynchronousTestCase):
    """
    Tests for L{RoundRobinChooser}.
    """

    def test_configuredOrderCycles(self) -> None:
        """
        Successive requests go to successive backends in configured order,
        starting again at the first after the last.
        """
        backends = _backends(3)
        self.assertEqual(_picks(RoundRobinChooser(), backends, 7), backends * 2 + backends[:1])

    def test_shrinking(self) -> None:
        """
        When the list shrinks below the cursor the rotation goes on over the
        backends that remain, serving each of them.
        """
        backends = _backends(3)
        chooser = RoundRobinChooser()
        self.assertEqual(_picks(chooser, backends, 2), backends[:2])
        fewer = backends[:2]
        picks = _picks(chooser, fewer, 4)
        self.assertEqual(set(map(id, picks)), set(map(id, fewer)))
        self.assertEqual(picks[:2], picks[2:])

    def test_shrinkingToOne(self) -> None:
        """
        When only one backend is left it gets every request.
        """
        backends = _backends(4)
        chooser = RoundRobinChooser()
        _picks(chooser, backends, 3)
        self.assertEqual(_picks(chooser, backends[1:2], 3), backends[1:2] * 3)

    def test_growing(self) -> None:
        """
        When the list grows, the rotation takes in the new backends and
        serves each backend once per round.
        """
        backends = _backends(4)
        chooser = RoundRobinChooser()
        _picks(chooser, backends[:2], 1)
        picks = _picks(chooser, backends, 8)
        self.assertEqual(picks[:4], picks[4:])
        self.assertEqual(set(map(id, picks)), set(map(id, backends)))

    def test_emptyBetween(self) -> None:
        """
        An empty list in between gives L{None} and the rotation carries on
        afterwards.
        """
        backends = _backends(2)
        chooser = RoundRobinChooser()
        self.assertEqual(
            [
                chooser.choose(backends, _REQUEST),
                chooser.choose([], _REQUEST),
                chooser.choose(backends, _REQUEST),
            ],
            [backends[0], None, backends[1]],
        )

    def test_changingEveryTime(self) -> None:
        """
        A list whose length changes on every call never makes the chooser
        fail, and every pick is from the list it was given.
        """
        backends = _backends(5)
        chooser = RoundRobinChooser()
        for step in range(100):
            given = backends[: 1 + (step * 7) % 5]
            self.assertIn(chooser.choose(given, _REQUEST), given)


class MakeChooserTests(SynchronousTestCase):
    """
    Tests for L{makeChooser}.
    """

    def assertChooserError(self, name: str, *fragments: str) -> str:
        """
        L{makeChooser} refuses C{name} with a one-line L{ChooserError}
        naming it and holding each of C{fragments}; return the message.
        """
        return assertOneLineError(self, ChooserError, makeChooser, name, *fragments)

    def test_builtinNames(self) -> None:
        """
        The short names build the built-in choosers, and the default is
        one of them.
        """
        self.assertIsInstance(makeChooser("random"), RandomChooser)
        self.assertIsInstance(makeChooser("round-robin"), RoundRobinChooser)
        self.assertIn(DEFAULT_CHOOSER, BUILTIN_CHOOSERS)

    def test_dottedName(self) -> None:
        """
        The dotted name of a class providing L{IChooser} builds an instance
        of it.
        """
        chooser = makeChooser(f"{__name__}.FirstChooser")
        self.assertIsInstance(chooser, FirstChooser)

    def test_dottedBuiltin(self) -> None:
        """
        A built-in chooser can be named by its dotted name too.
        """
        self.assertIsInstance(
            makeChooser("lbproxy.balancing.roundrobin.RoundRobinChooser"), RoundRobinChooser
        )

    def test_otherRegistry(self) -> None:
        """
        A registry passed in replaces the built-in one.
        """
        registry = {"first": lambda settings: FirstChooser()}
        self.assertIsInstance(makeChooser("first", registry), FirstChooser)
        message = str(self.assertRaises(ChooserError, makeChooser, "random", registry))
        self.assertIn("first", message)

    def test_unknownShortName(self) -> None:
        """
        An unknown short name is refused with a message listing the known
        names.
        """
        for name in ["fastest", "Random", "roundrobin", ""]:
            self.assertChooserError(name, "unknown chooser", "random", "round-robin")

    def test_unimportable(self) -> None:
        """
        A dotted name that does not import is refused.
        """
        for name in [
            "nosuchpackage.Chooser",
            "lbproxy.nosuchmodule.Chooser",
            f"{__name__}.NoSuchChooser",
            "lbproxy..Chooser",
        ]:
            self.assertChooserError(name, "cannot import")

    def test_notAChooser(self) -> None:
        """
        A class that does not provide L{IChooser} is refused.
        """
        self.assertChooserError(f"{__name__}.NotAChooser", "IChooser")

    def test_constructorNeedsArguments(self) -> None:
        """
        A class whose constructor needs arguments is refused.
        """
        self.assertChooserError(f"{__name__}.ChooserWithArguments", "cannot instantiate")

    def test_notCallable(self) -> None:
        """
        A dotted name of something that cannot be called is refused.
        """
        self.assertChooserError("lbproxy.balancing.registry.DEFAULT_CHOOSER", "cannot instantiate")

    def test_constructorFailsOnSeveralLines(self) -> None:
        """
        A constructor failing with a message of several lines still gives a
        one-line L{ChooserError}.
        """
        self.assertChooserError(f"{__name__}.ExplodingChooser", "cannot instantiate")

    def test_sideBySide(self) -> None:
        """
        Two choosers built side by side keep separate cursors.
        """
        backends = _backends(3)
        one = makeChooser("round-robin")
        two = makeChooser("round-robin")
        self.assertEqual(_picks(one, backends, 2), backends[:2])
        self.assertEqual(_picks(two, backends, 3), backends)
        self.assertEqual(_picks(one, backends, 1), backends[2:])

    def test_randomSideBySide(self) -> None:
        """
        Two random choosers built by name do not share a generator.
        """
        one = makeChooser("random")
        two = makeChooser("random")
        assert isinstance(one, RandomChooser) and isinstance(two, RandomChooser)
        self.assertIsNot(one._random, two._random)


def _weighted(*weights: int) -> list[Backend]:
    """
    Distinct backends with the given configured weights.
    """
    return [Backend("127.0.0.2", 8001 + index, weight=w) for index, w in enumerate(weights)]


def _shares(picks: Sequence[Backend | None], backends: Sequence[Backend]) -> list[float]:
    """
    The fraction of C{picks} that went to each of C{backends}.
    """
    counts = Counter(id(pick) for pick in picks)
    return [counts[id(backend)] / len(picks) for backend in backends]


def _assertNear(case: SynchronousTestCase, value: float, target: float, tolerance: float) -> None:
    """
    C{value} is within C{tolerance} of C{target}.
    """
    case.assertTrue(abs(value - target) <= tolerance, f"{value} not within {tolerance} of {target}")


def _slowStarting(backend: Backend, clock: Clock, fraction: float) -> Backend:
    """
    Put C{backend} into a slow start that is C{fraction} of the way through
    on C{clock} (so its effective weight is that fraction of its weight).
    """
    backend.slowStart = SlowStart(clock, clock.seconds() - 10 * fraction, 10.0, floor=0.0)
    return backend


def _request(
    head: bytes = b"GET / HTTP/1.1\r\nHost: example.com", client: str = "10.1.1.1"
) -> Request:
    """
    A parsed request from C{client}.
    """
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
    return parsedRequest(head, transport)


class WeightedRandomTests(SynchronousTestCase):
    """
    Tests for L{RandomChooser} with weights.
    """

    def test_proportional(self) -> None:
        """
        Over 40 000 picks, backends weighted 3 and 1 get 75 % and 25 % of
        them, within 1.5 points.
        """
        backends = _weighted(3, 1)
        shares = _shares(_picks(RandomChooser(random.Random(5)), backends, 40_000), backends)
        _assertNear(self, shares[0], 0.75, 0.015)

    def test_effectiveWeight(self) -> None:
        """
        The effective weight counts, not the configured one: a backend of
        weight 2 half-way through slow start gets the share of weight 1.
        """
        clock = Clock()
        clock.advance(100)
        backends = _weighted(2, 1)
        _slowStarting(backends[0], clock, 0.5)
        shares = _shares(_picks(RandomChooser(random.Random(5)), backends, 20_000), backends)
        _assertNear(self, shares[0], 0.5, 0.02)


class SmoothRoundRobinTests(SynchronousTestCase):
    """
    Tests for L{RoundRobinChooser} with weights.
    """

    def test_nginxSequence(self) -> None:
        """
        Weights 5, 1, 1 give nginx's documented smooth sequence
        C{a a b a c a a}, round after round.
        """
        a, b, c = _weighted(5, 1, 1)
        picks = _picks(RoundRobinChooser(), [a, b, c], 14)
        self.assertEqual(picks, [a, a, b, a, c, a, a] * 2)

    def test_table(self) -> None:
        """
        Over whole rounds each backend gets exactly its weight's number of
        picks, and the heaviest never gets more than about half its weight
        in a row, unless the others are too few to break it up more (a
        plain weighted rotation would send all of it at once).
        """
        for weights in [(1, 1), (2, 1), (3, 2, 1), (10, 1, 1, 1), (1, 7)]:
            backends = _weighted(*weights)
            rounds = 3
            picks = _picks(RoundRobinChooser(), backends, rounds * sum(weights))
            counts = Counter(id(pick) for pick in picks)
            self.assertEqual([counts[id(b)] for b in backends], [rounds * w for w in weights])
            heaviest = backends[weights.index(max(weights))]
            longest = run = 0
            for pick in picks:
                run = run + 1 if pick is heaviest else 0
                longest = max(longest, run)
            others = sum(weights) - max(weights)
            bound = max(math.ceil(max(weights) / others), max(weights) // 2 + 1)
            self.assertLessEqual(longest, bound, weights)

    def test_slowStartShrinksShare(self) -> None:
        """
        A backend a quarter of the way through slow start gets a quarter of
        its weight's picks.
        """
        clock = Clock()
        clock.advance(100)
        backends = _weighted(4, 4)
        _slowStarting(backends[1], clock, 0.25)
        shares = _shares(_picks(RoundRobinChooser(), backends, 500), backends)
        self.assertEqual(shares, [0.8, 0.2])


class LeastConnTests(SynchronousTestCase):
    """
    Tests for L{LeastConnChooser}.
    """

    def test_table(self) -> None:
        """
        The backend with the fewest in-flight requests per unit of weight
        is picked.
        """
        cases: list[tuple[list[int], list[int], int]] = [
            # (in flight, weights, expected index)
            ([2, 0, 1], [1, 1, 1], 1),
            ([0, 1, 1], [1, 1, 1], 0),
            ([5, 3, 9], [1, 1, 1], 1),
            ([4, 3], [3, 1], 0),
            ([1, 1], [1, 2], 1),
        ]
        for inFlight, weights, expected in cases:
            backends = _weighted(*weights)
            for backend, count in zip(backends, inFlight, strict=True):
                backend.inFlight = count
            self.assertIs(LeastConnChooser().choose(backends, _REQUEST), backends[expected])

    def test_tiesTakeTurns(self) -> None:
        """
        Among equally loaded backends the picks take turns in configured
        order instead of always going to the first.
        """
        backends = _backends(3)
        backends[2].inFlight = 4
        chooser = LeastConnChooser()
        self.assertEqual(_picks(chooser, backends, 4), [backends[0], backends[1]] * 2)
        backends[2].inFlight = 0
        self.assertEqual(set(map(id, _picks(chooser, backends, 3))), set(map(id, backends)))

    def test_idleWeighted(self) -> None:
        """
        An idle pool is shared in proportion to weight.
        """
        backends = _weighted(2, 1)
        shares = _shares(_picks(LeastConnChooser(), backends, 300), backends)
        self.assertAlmostEqual(shares[0], 2 / 3, places=6)

    def test_followsLoad(self) -> None:
        """
        When every pick starts a request that stays in flight, the
        in-flight counts stay within one of each other.
        """
        backends = _backends(4)
        chooser = LeastConnChooser()
        for _ in range(41):
            pick = chooser.choose(backends, _REQUEST)
            assert pick is not None
            pick.requestStarted()
        counts = [backend.inFlight for backend in backends]
        self.assertLessEqual(max(counts) - min(counts), 1)


class P2CTests(SynchronousTestCase):
    """
    Tests for L{P2CChooser}.
    """

    def test_twoBackendsLessLoaded(self) -> None:
        """
        With two backends both are always drawn, so the less loaded one is
        always picked.
        """
        backends = _backends(2)
        backends[0].inFlight = 3
        backends[1].inFlight = 1
        picks = _picks(P2CChooser(random.Random(2)), backends, 50)
        self.assertEqual(picks, [backends[1]] * 50)

    def test_neverTheMostLoaded(self) -> None:
        """
        The most loaded of several backends is never picked, since the
        other backend drawn with it is always less loaded.
        """
        backends = _backends(5)
        for index, backend in enumerate(backends):
            backend.inFlight = index
        picks = _picks(P2CChooser(random.Random(3)), backends, 500)
        self.assertNotIn(backends[4], picks)
        self.assertEqual(set(map(id, picks)), set(map(id, backends[:4])))

    def test_tieGoesToFirstDrawn(self) -> None:
        """
        With equal loads the first backend drawn wins, so an idle pool is
        shared evenly (each of 4 backends within 25 % +- 2 %).
        """
        backends = _backends(4)
        shares = _shares(_picks(P2CChooser(random.Random(4)), backends, 20_000), backends)
        for share in shares:
            _assertNear(self, share, 0.25, 0.02)

    def test_weighted(self) -> None:
        """
        Weights count in both the draw and the comparison: an idle pool
        weighted 3 and 1 is shared 75 % to 25 % (within 2 points), and the
        heavier backend with 2 in flight (2/3 per unit of weight) loses to
        an idle lighter one.
        """
        backends = _weighted(3, 1)
        shares = _shares(_picks(P2CChooser(random.Random(1)), backends, 10_000), backends)
        _assertNear(self, shares[0], 0.75, 0.02)
        backends[0].inFlight = 2
        self.assertEqual(_picks(P2CChooser(random.Random(1)), backends, 10), [backends[1]] * 10)

    def test_onlyOnePositiveWeight(self) -> None:
        """
        When every other backend's effective weight is 0 the one left gets
        every pick.
        """
        clock = Clock()
        backends = _weighted(1, 1, 1)
        _slowStarting(backends[0], clock, 0.0)
        _slowStarting(backends[2], clock, 0.0)
        self.assertEqual(_picks(P2CChooser(random.Random(1)), backends, 20), [backends[1]] * 20)


class PeakEWMAChooserTests(SynchronousTestCase):
    """
    Tests for L{PeakEWMAChooser}.
    """

    def test_prefersFast(self) -> None:
        """
        Of two equally loaded backends, the one with the lower latency
        estimate is picked.
        """
        clock = Clock()
        fast, slow = _backends(2)
        for backend, latency in [(fast, 0.010), (slow, 0.500)]:
            backend.requestStarted()
            backend.requestFinished(latency=latency, now=clock.seconds())
        chooser = PeakEWMAChooser(clock, random.Random(1))
        self.assertEqual(_picks(chooser, [fast, slow], 20), [fast] * 20)

    def test_loadCounts(self) -> None:
        """
        A backend twice as fast but with three times the in-flight requests
        costs more (latency times in-flight plus one) and is passed over.
        """
        clock = Clock()
        fast, slow = _backends(2)
        for backend, latency in [(fast, 0.010), (slow, 0.020)]:
            backend.requestStarted()
            backend.requestFinished(latency=latency, now=0.0)
        fast.inFlight = 3
        chooser = PeakEWMAChooser(clock, random.Random(1))
        self.assertEqual(_picks(chooser, [fast, slow], 5), [slow] * 5)

    def test_unknownIsTypical(self) -> None:
        """
        A backend without any latency sample counts as typical (the median
        estimate): it beats a slower backend and loses to a faster one, so
        of fast, new and slow, slow is never picked and new only when drawn
        with slow.
        """
        clock = Clock()
        fast, new, slow = _backends(3)
        for backend, latency in [(fast, 0.01), (slow, 0.09)]:
            backend.requestStarted()
            backend.requestFinished(latency=latency, now=0.0)
        chooser = PeakEWMAChooser(clock, random.Random(1))
        shares = _shares(_picks(chooser, [fast, new, slow], 3000), [fast, new, slow])
        self.assertEqual(shares[2], 0)
        _assertNear(self, shares[1], 1 / 3, 0.03)

    def test_notStarved(self) -> None:
        """
        A backend that answered slowly once (2 s), and so got no traffic, is
        tried again within 4.5 s while identical others keep answering in
        8-12 ms, and from then on gets its third of the traffic (+- 5
        points).
        """
        clock = Clock()
        backends = _backends(3)
        unlucky = backends[2]
        for backend, latency in zip(backends, [0.010, 0.010, 2.0], strict=True):
            backend.requestStarted()
            backend.requestFinished(latency=latency, now=0.0)
        chooser = PeakEWMAChooser(clock, random.Random(6))
        latencies = random.Random(7)
        picks: list[tuple[float, Backend]] = []
        for _ in range(2_000):
            clock.advance(0.005)
            pick = chooser.choose(backends, _REQUEST)
            assert pick is not None
            picks.append((clock.seconds(), pick))
            pick.requestStarted()
            pick.requestFinished(latency=latencies.uniform(0.008, 0.012), now=clock.seconds())
        probes = [when for when, backend in picks if backend is unlucky]
        self.assertTrue(probes)
        self.assertLessEqual(probes[0], 4.5)
        later = [backend for when, backend in picks if when > probes[0]]
        _assertNear(self, _shares(later, backends)[2], 1 / 3, 0.05)

    def test_noSamplesAnywhere(self) -> None:
        """
        Before any sample the chooser is least-request over two random
        backends.
        """
        backends = _backends(2)
        backends[0].inFlight = 1
        chooser = PeakEWMAChooser(Clock(), random.Random(1))
        self.assertEqual(_picks(chooser, backends, 5), [backends[1]] * 5)


class HashKeyTests(SynchronousTestCase):
    """
    Tests for L{parseHashKey}.
    """

    def test_table(self) -> None:
        """
        Each kind of key reads its part of the request, and L{None} when it
        is missing.
        """
        request = _request(
            b"GET /cart/1?x=2 HTTP/1.1\r\nHost: h\r\nX-User: alice\r\nX-User: bob\r\n"
            b"Cookie: session=s3cr3t; other=1",
            client="10.9.8.7",
        )
        bare = _request(b"GET / HTTP/1.1\r\nHost: h")
        cases: list[tuple[str, bytes | None, bytes | None]] = [
            ("client-ip", b"10.9.8.7", b"10.1.1.1"),
            ("path", b"/cart/1", b"/"),
            ("header:X-User", b"alice,bob", None),
            ("header:x-user", b"alice,bob", None),
            ("cookie:session", b"s3cr3t", None),
            ("cookie:missing", None, None),
        ]
        for text, expected, expectedBare in cases:
            key = parseHashKey(text)
            self.assertEqual(key(request), expected, text)
            self.assertEqual(key(bare), expectedBare, text)

    def test_refused(self) -> None:
        """
        Anything else is a one-line L{ChooserError} naming the value.
        """
        for text in ["", "ip", "header:", "cookie:", "client-ip:x", "path:/", "uri", "header:é"]:
            assertOneLineError(self, ChooserError, parseHashKey, text, "--hash-key")


class HashChooserTests(SynchronousTestCase):
    """
    Tests for L{HashChooser}.
    """

    def chooser(self, key: str = "client-ip", factor: float = 1.25) -> HashChooser:
        return HashChooser(parseHashKey(key), factor, random.Random(1), tableSize=1009)

    def test_sameKeySameBackend(self) -> None:
        """
        Every request with the same key goes to the same backend, and many
        keys are spread over all the backends.
        """
        backends = _backends(4)
        chooser = self.chooser()
        owners = {}
        for client in range(200):
            address = f"10.0.{client // 250}.{client % 250}"
            picks = {id(chooser.choose(backends, _request(client=address))) for _ in range(3)}
            self.assertEqual(len(picks), 1)
            owners[address] = picks.pop()
        self.assertEqual(set(owners.values()), set(map(id, backends)))

    def test_instancesAgree(self) -> None:
        """
        Two choosers (two proxies) with the same backends, even listed in
        another order and as other objects, map each key to the same
        backend address.
        """
        one = _backends(5)
        two = list(reversed(_backends(5)))
        first, second = self.chooser("path"), self.chooser("path")
        for index in range(100):
            request = _request(b"GET /item/%d HTTP/1.1\r\nHost: h" % (index,))
            a, b = first.choose(one, request), second.choose(two, request)
            assert a is not None and b is not None
            self.assertEqual(a.url, b.url)

    def test_boundedLoad(self) -> None:
        """
        A hot key's first request goes to the key's backend; while requests
        pile up, no backend goes above the balance factor times the average
        in flight, the overflow is spread over every backend, and it goes
        to the same backends in the same order in another proxy.
        """
        backends = _backends(4)
        hot = _request(b"GET /hot HTTP/1.1\r\nHost: h")
        owner = self.chooser("path").choose(backends, hot)
        sequences = []
        for _ in range(2):
            for backend in backends:
                backend.inFlight = 0
            chooser = self.chooser("path", factor=1.25)
            picks = []
            for _ in range(40):
                pick = chooser.choose(backends, hot)
                assert pick is not None
                pick.requestStarted()
                picks.append(pick)
                total = sum(backend.inFlight for backend in backends)
                for backend in backends:
                    self.assertLessEqual(backend.inFlight, math.ceil(1.25 * total / 4))
            sequences.append(picks)
            self.assertIs(picks[0], owner)
            self.assertEqual(len({id(pick) for pick in picks}), 4)
        self.assertEqual(sequences[0], sequences[1])

    def test_missingKeyIsSpread(self) -> None:
        """
        Requests without the key are spread at random rather than all sent
        to one backend.
        """
        backends = _backends(3)
        chooser = self.chooser("header:X-User")
        picks = _picks(chooser, backends, 300)
        for share in _shares(picks, backends):
            self.assertGreater(share, 0.2)

    def test_weighted(self) -> None:
        """
        A backend of weight 3 owns three times the keys of one of weight 1.
        """
        backends = _weighted(3, 1)
        chooser = self.chooser("path", factor=100)
        picks = [
            chooser.choose(backends, _request(b"GET /%d HTTP/1.1\r\nHost: h" % (i,)))
            for i in range(4000)
        ]
        _assertNear(self, _shares(picks, backends)[0], 0.75, 0.03)

    def test_removalMovesFewKeys(self) -> None:
        """
        When one of five backends goes, its keys move, and at least 95 % of
        the other keys stay where they were (Maglev's small disruption;
        nothing is in flight, so bounded load plays no part).
        """
        backends = _backends(5)
        chooser = self.chooser("path")
        requests = [_request(b"GET /%d HTTP/1.1\r\nHost: h" % (i,)) for i in range(1000)]
        before = [chooser.choose(backends, request) for request in requests]
        fewer = backends[:2] + backends[3:]
        after = [chooser.choose(fewer, request) for request in requests]
        kept = [
            old is new for old, new in zip(before, after, strict=True) if old is not backends[2]
        ]
        self.assertNotIn(backends[2], after)
        self.assertGreaterEqual(sum(kept) / len(kept), 0.95)


class StickyChooserTests(SynchronousTestCase):
    """
    Tests for L{StickyChooser}.
    """

    def setUp(self) -> None:
        self.backends = _backends(3)
        self.sticky = StickyChooser(RoundRobinChooser(), b"k" * 32, "lb")

    def cookieFor(self, backend: Backend, secure: bool = False) -> bytes:
        """
        The cookie value set on a response from C{backend}.
        """
        request = _request()
        if secure:
            request.isSecure = lambda: True  # type: ignore[method-assign]
        [(name, value)] = self.sticky.responseHeaders(backend, request)
        self.assertEqual(name, b"Set-Cookie")
        return value

    def test_cookieRoundTrip(self) -> None:
        """
        A request carrying the cookie set by a response from a backend goes
        back to that backend, and its response sets no new cookie.
        """
        for backend in self.backends:
            token = self.cookieFor(backend).split(b";")[0]
            request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + token)
            self.assertEqual(_picks(self.sticky, self.backends, 1) and [], [])
            for _ in range(3):
                self.assertIs(self.sticky.choose(self.backends, request), backend)
            self.assertEqual(list(self.sticky.responseHeaders(backend, request)), [])

    def test_cookieAttributes(self) -> None:
        """
        The cookie is an opaque session cookie for the whole site: HttpOnly,
        SameSite=Lax, Secure over TLS, and it does not contain the
        backend's address.
        """
        backend = Backend("10.20.30.40", 8080)
        plain = self.cookieFor(backend)
        self.assertRegex(plain, rb"^lb=[A-Za-z0-9_-]{22}; Path=/; HttpOnly; SameSite=Lax$")
        self.assertNotIn(b"10.20.30.40", plain)
        self.assertNotIn(b"8080", plain)
        self.assertTrue(self.cookieFor(backend, secure=True).endswith(b"; Secure"))

    def test_fallback(self) -> None:
        """
        Without a cookie, with a made-up or otherwise-signed cookie, or when
        the cookie's backend is not among those given, the fallback chooser
        picks, and the response sets a cookie for the backend it picked.
        """
        other = StickyChooser(RoundRobinChooser(), b"x" * 32, "lb")
        gone = self.backends[0]
        token = self.cookieFor(gone).split(b";")[0]
        cases = [
            (b"", self.backends),
            (b"lb=AAAAAAAAAAAAAAAAAAAAAA", self.backends),
            (other.responseHeaders(gone, _request())[0][1].split(b";")[0], self.backends),
            (token, self.backends[1:]),
        ]
        for cookie, given in cases:
            chooser = StickyChooser(RoundRobinChooser(), b"k" * 32, "lb")
            request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + cookie)
            self.assertEqual(
                [chooser.choose(given, request) for _ in range(len(given))], list(given)
            )
            self.assertTrue(chooser.responseHeaders(given[0], request), cookie)

    def test_sameSecretSameCookie(self) -> None:
        """
        Two choosers with the same secret (two instances, or a restart with
        C{--sticky-secret-file}) accept each other's cookies.
        """
        twin = StickyChooser(RandomChooser(random.Random(1)), b"k" * 32, "lb")
        for backend in self.backends:
            token = self.cookieFor(backend).split(b";")[0]
            request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + token)
            self.assertIs(twin.choose(self.backends, request), backend)

    def test_providesIAffinityChooser(self) -> None:
        """
        The sticky chooser is an L{IAffinityChooser}, built by name with
        its fallback.
        """
        settings = ChooserSettings(sticky=StickySettings(fallback="round-robin"))
        chooser = makeChooser("sticky", settings=settings)
        self.assertTrue(verifyObject(IAffinityChooser, chooser))
        assert isinstance(chooser, StickyChooser)
        self.assertIsInstance(chooser._fallback, RoundRobinChooser)


_ENTRY_POINTS = f"""\
[lbproxy.choosers]
first-available = {__name__}:FirstChooser
random = {__name__}:FirstChooser
broken = {__name__}:NoSuchChooser
not-a-chooser = {__name__}:NotAChooser
"""


class EntryPointTests(SynchronousTestCase):
    """
    Third-party choosers registered in the C{lbproxy.choosers} entry point
    group of a real (temporary) installed distribution.
    """

    def setUp(self) -> None:
        site = FilePath(self.mktemp())
        distInfo = site.child("lbproxy_test_plugin-1.0.dist-info")
        distInfo.makedirs()
        distInfo.child("METADATA").setContent(
            b"Metadata-Version: 2.1\nName: lbproxy-test-plugin\nVersion: 1.0\n"
        )
        distInfo.child("entry_points.txt").setContent(_ENTRY_POINTS.encode())
        self.patch(sys, "path", [site.path, *sys.path])

    def test_byShortName(self) -> None:
        """
        A chooser registered as an entry point is built by its short name.
        """
        self.assertIsInstance(makeChooser("first-available"), FirstChooser)
        self.assertIn("first-available", registry())

    def test_builtinWins(self) -> None:
        """
        An entry point named like a built-in chooser does not replace it.
        """
        self.assertIsInstance(makeChooser("random"), RandomChooser)

    def test_listedWhenUnknown(self) -> None:
        """
        The message for an unknown name lists entry point names too.
        """
        self.assertChooserError = assertOneLineError(
            self, ChooserError, makeChooser, "fastest", "first-available", "p2c"
        )

    def test_broken(self) -> None:
        """
        An entry point that does not load, or names no chooser, is a
        one-line error naming it.
        """
        message = str(self.assertRaises(ChooserError, makeChooser, "broken"))
        self.assertIn("cannot load chooser broken", message)
        self.assertEqual(len(message.splitlines()), 1)
        message = str(self.assertRaises(ChooserError, makeChooser, "not-a-chooser"))
        self.assertIn("does not provide", message)


class SettingsTests(SynchronousTestCase):
    """
    Tests for L{lbproxy.balancing.registry.checkSettings}; the settings
    read from the command line are tested in L{lbproxy.test.test_clichoosers}.
    """

    def test_checkedWhicheverChooser(self) -> None:
        """
        Each policy's settings are checked by the policy's own module, and
        L{makeChooser} refuses a bad one (with a one-line L{ChooserError}
        naming it) whichever chooser it builds.
        """
        cases: list[tuple[ChooserSettings, str]] = [
            (ChooserSettings(hash=HashSettings(key="ip")), "--hash-key"),
            (ChooserSettings(hash=HashSettings(balanceFactor=0.5)), "--hash-balance-factor"),
            (ChooserSettings(sticky=StickySettings(cookie="a b")), "--sticky-cookie"),
            (ChooserSettings(sticky=StickySettings(fallback="sticky")), "--sticky-fallback"),
            (ChooserSettings(sticky=StickySettings(secret=b"short")), "at least 16 bytes"),
        ]
        for settings, fragment in cases:
            for name in ("random", "hash", "sticky"):
                raised = self.assertRaises(ChooserError, makeChooser, name, None, settings)
                self.assertIn(fragment, str(raised))
                self.assertEqual(len(str(raised).splitlines()), 1)

    def test_unknownFallback(self) -> None:
        """
        An unknown fallback chooser is refused when the sticky chooser is
        built.
        """
        settings = ChooserSettings(sticky=StickySettings(fallback="fastest"))
        self.assertRaises(ChooserError, makeChooser, "sticky", settings=settings)


class BallsIntoBinsTests(SynchronousTestCase):
    """
    The classic balls-into-bins results (Azar, Broder, Karlin and Upfal,
    1999; Mitzenmacher, 2001), measured on the real choosers: 1000 requests
    that never finish ("balls") into 1000 backends ("bins").
    """

    def maxLoads(self, name: str, seeds: range) -> list[int]:
        """
        The largest in-flight count after 1000 picks by the chooser called
        C{name}, once per seed.
        """
        loads = []
        for seed in seeds:
            backends = _backends(1000)
            chooser = makeChooser(name, settings=_settings(seed))
            for _ in range(1000):
                pick = chooser.choose(backends, _REQUEST)
                assert pick is not None
                pick.requestStarted()
            loads.append(max(backend.inFlight for backend in backends))
        return loads

    def test_random(self) -> None:
        """
        With one random choice the fullest backend holds about 5.5 (the
        expected maximum for n = 1000 is near ln n / ln ln n scaled, 5 to
        6 in practice): the mean over 8 seeds is between 4.5 and 6.5.
        """
        loads = self.maxLoads("random", range(8))
        _assertNear(self, sum(loads) / len(loads), 5.5, 1.0)

    def test_p2c(self) -> None:
        """
        With two choices the fullest backend holds about 3 (ln ln n / ln 2
        + O(1)): every one of 8 seeds gives 3 or 4, with a mean within
        0.5 of 3.
        """
        loads = self.maxLoads("p2c", range(8))
        self.assertTrue(set(loads) <= {3, 4}, loads)
        _assertNear(self, sum(loads) / len(loads), 3.0, 0.5)
