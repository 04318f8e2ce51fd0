# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
C{--chooser random}: random choice, in proportion to the backends' weights.

(Inside this package C{import random} still means the standard library's:
imports are absolute.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.explain import Explanation, only
from lbproxy.balancing.weights import effectiveWeights, uniform, weightedIndex
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend


@implementer(IChooser)
class RandomChooser:
    """
    Random choice in proportion to the backends' weights; with equal
    weights, exactly the original write-up's C{random.choice}.

    @ivar _random: The source of randomness, injected so tests are exact.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick one of C{backends} at random, in proportion to its weight.
        """
        if not backends:
            return None
        weights = effectiveWeights(backends)
        if uniform(weights):
            return self._random.choice(backends)
        return backends[weightedIndex(self._random, weights)]

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Each backend's chance: its weight over the total.
        """
        single = only(backends)
        if single is not None:
            return single
        weights = effectiveWeights(backends)
        total = sum(weights)
        return Explanation(
            "drawn at random in proportion to weight",
            [{"probability": weight / total} for weight in weights],
        )


__all__ = ["RandomChooser"]
