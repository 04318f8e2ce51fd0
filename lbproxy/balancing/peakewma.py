# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
C{--chooser peak-ewma}: latency-aware power of two choices. The latency
estimate itself is kept on each backend (L{lbproxy.balancing.ewma}).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.explain import Explanation, Figures, only
from lbproxy.balancing.p2c import drawnPair, twoChoices
from lbproxy.balancing.weights import effectiveWeights
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend

DEFAULT_TOLERANCE = 0.2
"""
Relative difference below which two peak-EWMA costs count as equal.
"""


def peakCost(backend: Backend, weight: float, now: float, typical: float) -> float:
    """
    The cost L{PeakEWMAChooser} gives C{backend} of effective weight
    C{weight} at clock time C{now}, when the pool's typical latency is
    C{typical}: its latency estimate times its in-flight requests plus one,
    over its weight.
    """
    return backend.latencyEWMA.estimate(now, typical) * (backend.inFlight + 1) / weight


def typicalLatency(backends: Sequence[Backend]) -> float:
    """
    The pool's typical latency: the median of its backends' estimates, or
    1 second before any has one.
    """
    known = [b.latencyEWMA.value for b in backends if b.latencyEWMA.value is not None]
    return statistics.median(known) if known else 1.0


@implementer(IChooser)
class PeakEWMAChooser:
    """
    Latency-aware power of two choices, as Finagle's and Linkerd's "peak
    EWMA" balancers: of two backends drawn at random (in proportion to
    weight), pick the one with the lower cost, its peak-sensitive latency
    estimate (L{lbproxy.balancing.ewma.PeakEWMA}, kept on the backend) times its
    in-flight requests plus one, divided by its weight. Costs within
    C{tolerance} (20 %) of each other count as equal and the first drawn
    wins, so identical backends share traffic evenly instead of being ranked
    by the noise in their latencies.

    It does not starve a backend: an estimate that has not been refreshed
    for a second decays toward the pool's typical latency (the median
    estimate) with a time constant of half a second (see
    L{lbproxy.balancing.ewma.PeakEWMA}), so a backend that once answered 30 times
    slower than the others and then got no traffic is tried again after
    about four seconds, and its next fast answer restores it. A backend
    with no estimate yet counts as typical.

    @ivar _clock: The proxy's clock, the one latencies are stamped with.
    @ivar drawn: The indices its last choice among two or more backends
        drew (for L{explain}).
    """

    drawn: tuple[int, int] = (-1, -1)

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self._clock = clock
        self._random = rng if rng is not None else random.Random()
        self._tolerance = tolerance

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the cheaper of two random backends.
        """
        if not backends:
            return None
        if len(backends) == 1:
            return backends[0]
        weights = effectiveWeights(backends)
        first, second = self.drawn = twoChoices(self._random, backends, weights)
        typical = typicalLatency(backends)
        now = self._clock.seconds()
        one = peakCost(backends[first], weights[first], now, typical)
        two = peakCost(backends[second], weights[second], now, typical)
        if two * (1.0 + self._tolerance) < one:
            return backends[second]
        return backends[first]

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Every backend's cost (see L{peakCost}) and latency estimate as the
        choice saw them, and which two were drawn.
        """
        single = only(backends)
        if single is not None:
            return single
        weights = effectiveWeights(backends)
        typical = typicalLatency(backends)
        now = self._clock.seconds()
        pair = drawnPair(backends, self.drawn)
        figures: list[Figures] = []
        for index, backend in enumerate(backends):
            figures.append(
                {
                    "cost": peakCost(backend, weights[index], now, typical),
                    "latency_ms": backend.latencyEWMA.estimate(now, typical) * 1000,
                    "drawn": pair is not None and index in pair,
                }
            )
        if pair is None:
            return Explanation("the draw is not known", figures)
        first, second = pair
        percent = round(self._tolerance * 100)
        if chosen is backends[second] and first != second:
            reason = (
                f"of the two drawn, {backends[second]} costs over {percent} % less "
                f"than {backends[first]}"
            )
        else:
            reason = (
                f"of the two drawn, {backends[first]} (drawn first) costs less than "
                f"{backends[second]}, or within {percent} %"
            )
        return Explanation(f"{reason} (typical latency {typical * 1000:.3g} ms)", figures)


__all__ = ["DEFAULT_TOLERANCE", "PeakEWMAChooser", "peakCost", "typicalLatency"]
