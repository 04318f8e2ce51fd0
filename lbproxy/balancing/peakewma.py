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

from lbproxy.balancing.p2c import twoChoices
from lbproxy.balancing.weights import effectiveWeights
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend

DEFAULT_TOLERANCE = 0.2
"""
Relative difference below which two peak-EWMA costs count as equal.
"""


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
    """

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
        first, second = twoChoices(self._random, backends, weights)
        known = [b.latencyEWMA.value for b in backends if b.latencyEWMA.value is not None]
        typical = statistics.median(known) if known else 1.0
        now = self._clock.seconds()

        def cost(index: int) -> float:
            backend = backends[index]
            latency = backend.latencyEWMA.estimate(now, typical)
            return latency * (backend.inFlight + 1) / weights[index]

        if cost(second) * (1.0 + self._tolerance) < cost(first):
            return backends[second]
        return backends[first]


__all__ = ["DEFAULT_TOLERANCE", "PeakEWMAChooser"]
