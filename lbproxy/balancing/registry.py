# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
The chooser registry: C{--chooser} names to factories, the default, the
third-party choosers of the C{lbproxy.choosers} entry point group, dotted
names, and L{makeChooser}, which builds any of them from L{ChooserSettings}.

Each policy lives in a module of its own, with its settings and their
validation beside its C{choose()}: L{lbproxy.balancing.random},
L{roundrobin<lbproxy.balancing.roundrobin>},
L{leastconn<lbproxy.balancing.leastconn>}, L{p2c<lbproxy.balancing.p2c>},
L{peakewma<lbproxy.balancing.peakewma>}, L{hash<lbproxy.balancing.hash>}
and L{sticky<lbproxy.balancing.sticky>}.

Every chooser is given, on every call, only the backends that can take
traffic (in configured order) and returns one of them, or L{None} for none
(the proxy answers 503). Choosers never block and never do I/O; live
counters (in-flight requests, latency estimates) live on
L{lbproxy.upstream.backends.Backend} and are maintained by the proxy. Weighted
choosers read L{Backend.effectiveWeight}, which slow start scales down.
Randomness and time are injected, so tests and the simulator are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.python.reflect import namedAny
from zope.interface.verify import verifyObject

from lbproxy.balancing.errors import ChooserError
from lbproxy.balancing.hash import HashChooser, HashSettings
from lbproxy.balancing.leastconn import LeastConnChooser
from lbproxy.balancing.p2c import P2CChooser
from lbproxy.balancing.peakewma import PeakEWMAChooser
from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.balancing.sticky import StickyChooser, StickySettings
from lbproxy.interfaces import IChooser

ENTRY_POINT_GROUP = "lbproxy.choosers"
"""
The entry point group third-party packages register choosers under.
"""


@attrs.frozen
class ChooserSettings:
    """
    Everything the built-in choosers can be configured with: what they all
    share, and each configurable policy's own settings.

    @ivar rng: The randomness to use; L{None} gives each chooser a
        C{random.Random()} of its own.
    @ivar clock: The proxy's clock (latency-aware choosers); L{None} means
        the global reactor.
    @ivar hash: C{hash}'s settings (L{lbproxy.balancing.hash}).
    @ivar sticky: C{sticky}'s settings (L{lbproxy.balancing.sticky}).
    """

    rng: random.Random | None = None
    clock: IReactorTime | None = None
    hash: HashSettings = attrs.field(factory=HashSettings)
    sticky: StickySettings = attrs.field(factory=StickySettings)

    def random(self) -> random.Random:
        """
        The injected randomness, or a new generator of a chooser's own.
        """
        return self.rng if self.rng is not None else random.Random()

    def reactorTime(self) -> IReactorTime:
        """
        The injected clock, or the global reactor.
        """
        if self.clock is not None:
            return self.clock
        from twisted.internet import reactor

        return reactor


ChooserFactory = Callable[[ChooserSettings], IChooser]
"""
Builds a chooser from the settings; the registry's values.
"""


def _sticky(settings: ChooserSettings) -> IChooser:
    fallback = makeChooser(settings.sticky.fallback, settings=settings)
    return StickyChooser.fromSettings(settings.sticky, fallback)


BUILTIN_CHOOSERS: Mapping[str, ChooserFactory] = {
    "random": lambda settings: RandomChooser(settings.random()),
    "round-robin": lambda settings: RoundRobinChooser(),
    "least-conn": lambda settings: LeastConnChooser(),
    "p2c": lambda settings: P2CChooser(settings.random()),
    "peak-ewma": lambda settings: PeakEWMAChooser(settings.reactorTime(), settings.random()),
    "hash": lambda settings: HashChooser.fromSettings(settings.hash, settings.random()),
    "sticky": _sticky,
}
"""
The built-in choosers by C{--chooser} name. Read-only.
"""

DEFAULT_CHOOSER = "random"


def _entryPointFactory(entryPoint: EntryPoint) -> ChooserFactory:
    """
    A factory that loads C{entryPoint} when first used and calls what it
    names without arguments.
    """

    def factory(settings: ChooserSettings) -> IChooser:
        name = f"{entryPoint.name} ({entryPoint.value})"
        try:
            loaded = entryPoint.load()
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            raise ChooserError(f"cannot load chooser {name}: {_oneLine(e)}") from None
        return _instantiate(name, loaded)

    return factory


def registry(
    builtins: Mapping[str, ChooserFactory] = BUILTIN_CHOOSERS,
) -> dict[str, ChooserFactory]:
    """
    The chooser names C{--chooser} knows: C{builtins} plus every entry point
    in the L{ENTRY_POINT_GROUP} group of the installed distributions. A
    built-in name wins over an entry point of the same name. Entry points are
    only imported when chosen.
    """
    known: dict[str, ChooserFactory] = {}
    for entryPoint in entry_points(group=ENTRY_POINT_GROUP):
        known.setdefault(entryPoint.name, _entryPointFactory(entryPoint))
    known.update(builtins)
    return known


def checkSettings(settings: ChooserSettings) -> None:
    """
    Check every policy's settings, whichever chooser is in use, so that a
    typo in C{--hash-key} is reported even when another chooser is in use.

    @raise ChooserError: With a one-line message.
    """
    settings.hash.check()
    settings.sticky.check()


def makeChooser(
    name: str,
    registry: Mapping[str, ChooserFactory] | None = None,
    settings: ChooserSettings = ChooserSettings(),
) -> IChooser:
    """
    Build the chooser called C{name}: a registered short name (built-in or
    from an entry point), or the dotted name of a class providing
    L{IChooser} that takes no arguments.

    @param registry: The names to know; L{None} for the built-ins plus the
        installed entry points (see L{registry}).
    @raise ChooserError: With a one-line message listing the known names.
    """
    checkSettings(settings)
    known = _registry() if registry is None else registry
    if name in known:
        return known[name](settings)
    names = ", ".join(sorted(known))
    if "." not in name:
        raise ChooserError(
            f"unknown chooser {name!r}; known choosers: {names}, "
            "or the dotted name of a class providing lbproxy.interfaces.IChooser"
        )
    try:
        factory = namedAny(name)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot import chooser {name!r}: {_oneLine(e)}") from None
    return _instantiate(repr(name), factory)


_registry = registry


def _instantiate(name: str, factory: Any) -> IChooser:
    """
    Call C{factory} without arguments and check that the result provides
    L{IChooser}.
    """
    try:
        chooser = factory()
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot instantiate chooser {name}: {_oneLine(e)}") from None
    try:
        verifyObject(IChooser, chooser)
    except Exception:  # noqa: BLE001 - verifyObject raises several kinds
        raise ChooserError(f"chooser {name} does not provide lbproxy.interfaces.IChooser") from None
    return chooser  # type: ignore[no-any-return]


def _oneLine(error: Exception) -> str:
    """
    The first line of an exception's message, for a one-line error.
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


__all__ = [
    "BUILTIN_CHOOSERS",
    "DEFAULT_CHOOSER",
    "ENTRY_POINT_GROUP",
    "ChooserError",
    "ChooserFactory",
    "ChooserSettings",
    "checkSettings",
    "makeChooser",
    "registry",
]
