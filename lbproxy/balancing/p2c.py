# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
C{--chooser p2c}: the power of two random choices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.explain import Explanation, Figures, only
from lbproxy.balancing.weights import effectiveWeights, uniform, weightedIndex
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend


def twoChoices(
    rng: random.Random, backends: Sequence[Backend], weights: list[float]
) -> tuple[int, int]:
    """
    Two distinct indices into C{backends}, drawn in proportion to
    C{weights}; the same index twice only when just one backend has a
    positive weight.
    """
    count = len(backends)
    if uniform(weights):
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        return first, second + 1 if second >= first else second
    first = weightedIndex(rng, weights)
    if sum(1 for weight in weights if weight > 0) < 2:
        return first, first
    return first, weightedIndex(rng, weights, skip=first)


def drawnPair(backends: Sequence[Backend], drawn: tuple[int, int]) -> tuple[int, int] | None:
    """
    C{drawn} (a chooser's last draw), if both its indices are within
    C{backends}; L{None} otherwise (it was not a draw from these).
    """
    first, second = drawn
    if 0 <= first < len(backends) and 0 <= second < len(backends):
        return drawn
    return None


@implementer(IChooser)
class P2CChooser:
    """
    Power of two random choices (Envoy's default C{LEAST_REQUEST},
    HAProxy's C{random(2)}): draw two distinct backends at random, in
    proportion to weight, and pick the one with fewer in-flight requests per
    unit of weight (the first drawn on a tie, so an idle pool is shared in
    proportion to weight). Nearly as good as least-conn at spreading load,
    without herding every proxy onto the same backend.

    @ivar drawn: The indices its last choice among two or more backends
        drew (for L{explain}).
    """

    drawn: tuple[int, int] = (-1, -1)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the less loaded of two random backends.
        """
        if not backends:
            return None
        if len(backends) == 1:
            return backends[0]
        weights = effectiveWeights(backends)
        first, second = self.drawn = twoChoices(self._random, backends, weights)
        one, two = backends[first], backends[second]
        if two.inFlight / weights[second] < one.inFlight / weights[first]:
            return two
        return one

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        The two backends drawn, and their load (in flight per unit of
        weight).
        """
        single = only(backends)
        if single is not None:
            return single
        pair = drawnPair(backends, self.drawn)
        if pair is None:
            return Explanation("the draw is not known", [{} for _ in backends])
        weights = effectiveWeights(backends)
        figures: list[Figures] = [{"drawn": False} for _ in backends]
        for index in pair:
            load = backends[index].inFlight / weights[index]
            figures[index] = {"drawn": True, "load": load}
        first, second = pair
        return Explanation(
            f"the less loaded of the two drawn ({backends[first]} and {backends[second]}); "
            "the first drawn on a tie",
            figures,
        )


__all__ = ["P2CChooser", "drawnPair", "twoChoices"]
