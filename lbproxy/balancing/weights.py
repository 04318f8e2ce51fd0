# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
Weighted draws shared by the policies: the backends' effective weights
(which slow start scales down) and a draw in proportion to them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lbproxy.upstream.backends import Backend


def effectiveWeights(backends: Sequence[Backend]) -> list[float]:
    """
    The effective weights of C{backends}, with nothing below 0; if none is
    positive, all count as 1 (a pool entirely in slow start still serves).
    """
    weights = [backend.effectiveWeight for backend in backends]
    if min(weights) > 0:
        return weights
    weights = [max(0.0, weight) for weight in weights]
    if not any(weights):
        return [1.0] * len(backends)
    return weights


def uniform(weights: list[float]) -> bool:
    """
    Whether all C{weights} are equal.
    """
    return weights.count(weights[0]) == len(weights)


def weightedIndex(rng: random.Random, weights: Sequence[float], skip: int = -1) -> int:
    """
    An index drawn with probability proportional to C{weights}, never
    C{skip}.
    """
    total = sum(weight for index, weight in enumerate(weights) if index != skip)
    point = rng.random() * total
    last = -1
    for index, weight in enumerate(weights):
        if index == skip or weight <= 0:
            continue
        last = index
        point -= weight
        if point < 0:
            return index
    return last


__all__ = ["effectiveWeights", "uniform", "weightedIndex"]
