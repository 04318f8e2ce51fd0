# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
C{--chooser round-robin}: smooth weighted round robin, as nginx does it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.explain import Explanation, only
from lbproxy.balancing.weights import effectiveWeights
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend


class SmoothWeights:
    """
    nginx's smooth weighted round robin: each pick, every candidate's
    current value grows by its weight, the largest is picked and loses the
    total. Weights 5, 1, 1 give C{a a b a c a a}, never C{a a a a a b c}.
    """

    def __init__(self) -> None:
        self._current: dict[Backend, float] = {}

    def pick(
        self, candidates: Sequence[Backend], weights: Sequence[float], everyone: Sequence[Backend]
    ) -> Backend:
        """
        Pick one of C{candidates} (non-empty, with positive total weight);
        C{everyone} is the whole list the chooser was given, so that the
        state of backends no longer there is dropped.
        """
        current = self._current
        if len(current) > len(everyone):
            kept = set(everyone)
            self._current = current = {b: v for b, v in current.items() if b in kept}
        best = candidates[0]
        bestValue = -math.inf
        for backend, weight in zip(candidates, weights, strict=True):
            value = current.get(backend, 0.0) + weight
            current[backend] = value
            if value > bestValue:
                best, bestValue = backend, value
        current[best] -= sum(weights)
        return best

    def current(self, backend: Backend) -> float:
        """
        C{backend}'s current value: the largest, after its weight is added,
        is picked next.
        """
        return self._current.get(backend, 0.0)


@implementer(IChooser)
class RoundRobinChooser:
    """
    Smooth weighted round robin, as nginx does it: successive requests go
    to successive backends in configured order, a backend of weight C{w}
    gets C{w} picks per round, spread out rather than in a burst.

    When the list of available backends changes, backends that stay keep
    their place in the rotation and new ones join it.
    """

    def __init__(self) -> None:
        self._smooth = SmoothWeights()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the next backend of the smooth weighted rotation.
        """
        if not backends:
            return None
        weights = effectiveWeights(backends)
        candidates = [b for b, w in zip(backends, weights, strict=True) if w > 0]
        return self._smooth.pick(candidates, [w for w in weights if w > 0], backends)

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Each backend's place in the rotation: its current value after the
        pick (the chosen one has just lost the total weight).
        """
        single = only(backends)
        if single is not None:
            return single
        return Explanation(
            "next in the smooth weighted rotation (highest current value + weight)",
            [{"current": self._smooth.current(b)} for b in backends],
        )


__all__ = ["RoundRobinChooser", "SmoothWeights"]
