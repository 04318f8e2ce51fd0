"""
Tests for L{lbproxy.choosers}.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.backends import Backend
from lbproxy.choosers import (
    BUILTIN_CHOOSERS,
    DEFAULT_CHOOSER,
    ChooserError,
    RandomChooser,
    RoundRobinChooser,
    makeChooser,
)
from lbproxy.interfaces import IChooser
from lbproxy.test.test_backends import assertOneLineError
from lbproxy.test.test_target import parsedRequest

_REQUEST = parsedRequest(b"GET / HTTP/1.1\r\nHost: example.com")


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
            self.assertTrue(verifyObject(IChooser, factory()), name)
        for chooser in [RandomChooser(), RandomChooser(random.Random(1)), RoundRobinChooser()]:
            self.assertTrue(verifyObject(IChooser, chooser))

    def test_emptyGivesNone(self) -> None:
        """
        Every built-in chooser picks nothing from no backends.
        """
        for name in BUILTIN_CHOOSERS:
            self.assertIsNone(makeChooser(name).choose([], _REQUEST), name)


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
        self.assertIsInstance(makeChooser("lbproxy.choosers.RoundRobinChooser"), RoundRobinChooser)

    def test_otherRegistry(self) -> None:
        """
        A registry passed in replaces the built-in one.
        """
        registry = {"first": FirstChooser}
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
        self.assertChooserError("lbproxy.choosers.DEFAULT_CHOOSER", "cannot instantiate")

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
