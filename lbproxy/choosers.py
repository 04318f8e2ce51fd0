"""
Choosers: the load-balancing policies, and the registry that maps
C{--chooser} names to them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from twisted.python.reflect import namedAny
from twisted.web.iweb import IRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.backends import Backend
from lbproxy.interfaces import IChooser


@implementer(IChooser)
class RandomChooser:
    """
    Uniform random choice, the original write-up's C{random.choice}.

    @ivar _random: The source of randomness, injected so tests are exact.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick one of C{backends} uniformly at random.
        """
        if not backends:
            return None
        return self._random.choice(backends)


@implementer(IChooser)
class RoundRobinChooser:
    """
    Successive requests go to successive backends, in configured order.

    The cursor is an index into the list it is given, so when the list of
    available backends changes the rotation continues from the same position.
    """

    def __init__(self) -> None:
        self._next = 0

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the next backend after the one picked last time.
        """
        if not backends:
            return None
        backend = backends[self._next % len(backends)]
        self._next = (self._next + 1) % len(backends)
        return backend


ChooserFactory = Callable[[], IChooser]

BUILTIN_CHOOSERS: Mapping[str, ChooserFactory] = {
    "random": RandomChooser,
    "round-robin": RoundRobinChooser,
}
"""
The built-in choosers by C{--chooser} name. Read-only.
"""

DEFAULT_CHOOSER = "random"


class ChooserError(ValueError):
    """
    A C{--chooser} value names nothing usable; the message says why.
    """


def makeChooser(name: str, registry: Mapping[str, ChooserFactory] = BUILTIN_CHOOSERS) -> IChooser:
    """
    Build the chooser called C{name}: a registered short name, or the dotted
    name of a class providing L{IChooser} that takes no arguments.

    @raise ChooserError: With a one-line message listing the known names.
    """
    if name in registry:
        return registry[name]()
    known = ", ".join(sorted(registry))
    if "." not in name:
        raise ChooserError(
            f"unknown chooser {name!r}; known choosers: {known}, "
            "or the dotted name of a class providing lbproxy.interfaces.IChooser"
        )
    try:
        factory = namedAny(name)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot import chooser {name!r}: {_oneLine(e)}") from None
    try:
        chooser = factory()
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot instantiate chooser {name!r}: {_oneLine(e)}") from None
    try:
        verifyObject(IChooser, chooser)
    except Exception:  # noqa: BLE001 - verifyObject raises several kinds
        raise ChooserError(
            f"chooser {name!r} does not provide lbproxy.interfaces.IChooser"
        ) from None
    return chooser  # type: ignore[no-any-return]


def _oneLine(error: Exception) -> str:
    """
    The first line of an exception's message, for a one-line error.
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
