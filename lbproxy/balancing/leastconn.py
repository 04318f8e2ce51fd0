# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
C{--chooser least-conn}: the backend with the fewest in-flight requests per
unit of weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.explain import Explanation, Figures
from lbproxy.balancing.roundrobin import SmoothWeights
from lbproxy.balancing.weights import effectiveWeights
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend


@implementer(IChooser)
class LeastConnChooser:
    """
    The backend with the fewest in-flight requests per unit of weight
    (nginx's and HAProxy's C{least_conn}/C{leastconn}). Ties, such as an
    idle pool, are broken by smooth weighted round robin among the tied
    backends, so they take turns rather than the first always winning.
    """

    def __init__(self) -> None:
        self._smooth = SmoothWeights()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the least loaded backend, taking turns among equals.
        """
        if not backends:
            return None
        weights = effectiveWeights(backends)
        best: list[int] = []
        bestLoad = math.inf
        for index, (backend, weight) in enumerate(zip(backends, weights, strict=True)):
            if weight <= 0:
                continue
            load = backend.inFlight / weight
            if load < bestLoad:
                best, bestLoad = [index], load
            elif load == bestLoad:
                best.append(index)
        if len(best) == 1:
            return backends[best[0]]
        return self._smooth.pick(
            [backends[index] for index in best], [weights[index] for index in best], backends
        )

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Each backend's load (in flight per unit of weight), and how many
        shared the lowest.
        """
        weights = effectiveWeights(backends)
        loads = [
            backend.inFlight / weight if weight > 0 else None
            for backend, weight in zip(backends, weights, strict=True)
        ]
        known = [load for load in loads if load is not None]
        lowest = min(known) if known else None
        tied = sum(1 for load in loads if load == lowest)
        figures: list[Figures] = [{"load": load, "least": load == lowest} for load in loads]
        if lowest is None:
            return Explanation("no backend has a positive weight", figures)
        reason = f"fewest in flight per unit of weight ({lowest:.4g})"
        if tied > 1:
            reason += f"; {tied} tied, taking turns"
        return Explanation(reason, figures)


__all__ = ["LeastConnChooser"]
