# -*- test-case-name: lbproxy.test.test_maglev -*-
"""
Maglev consistent hashing (Eisenbud et al., NSDI 2016), with Envoy's
weighting.

A Maglev table is a list of C{size} slots (a prime), each naming a backend.
Every backend walks its own permutation of the slots, derived only from its
name, and the backends take turns claiming the next free slot of their
permutation. The result spreads keys almost perfectly evenly (each backend
owns C{size / N} slots, give or take one) and, when a backend is removed,
moves little more than the keys it owned.

Everything here is a pure function of the backend names and weights: two
processes (two lbproxy instances) with the same backends build the same
table and map the same key to the same backend, whatever order the backends
were listed in. Hashes are BLAKE2b, never Python's per-process C{hash()}.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 65537
"""
The table size Maglev's paper and Envoy use: a prime, enough for about 650
backends at 1 % imbalance.
"""


def keyHash(data: bytes) -> int:
    """
    A stable 64-bit hash of C{data}, the same in every process.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _permutation(name: str, size: int) -> tuple[int, int]:
    """
    The C{(offset, skip)} of C{name}'s permutation of C{size} slots.
    """
    digest = hashlib.blake2b(
        name.encode("utf-8"), digest_size=16, person=b"lbproxy-maglev"
    ).digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def _isPrime(number: int) -> bool:
    if number < 2:
        return False
    divisor = 2
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 1
    return True


def buildTable(
    names: Sequence[str], weights: Sequence[float] | None = None, size: int = DEFAULT_TABLE_SIZE
) -> list[int]:
    """
    Build a Maglev lookup table.

    @param names: Distinct backend names (lbproxy uses their URLs).
    @param weights: Positive relative weights, one per name; L{None} for
        equal weights. A backend of half the largest weight claims a slot
        every second round (Envoy's scheme), so it owns about half as many.
    @param size: The number of slots, a prime larger than C{len(names)}.
    @return: C{size} indices into C{names}.
    @raise ValueError: For no names, duplicate names, a bad weight or a bad
        size.
    """
    count = len(names)
    if count == 0:
        raise ValueError("a Maglev table needs at least one backend")
    if len(set(names)) != count:
        raise ValueError("Maglev backend names must be distinct")
    if not _isPrime(size) or size <= count:
        raise ValueError(f"Maglev table size must be a prime above {count}, not {size}")
    if weights is None:
        weights = [1.0] * count
    if len(weights) != count or not all(weight > 0 for weight in weights):
        raise ValueError("Maglev weights must be positive, one per backend")
    # Fill in name order, so that the order backends are listed in does not
    # matter.
    order = sorted(range(count), key=lambda index: names[index])
    heaviest = max(weights)
    offsets: list[int] = []
    skips: list[int] = []
    for index in order:
        offset, skip = _permutation(names[index], size)
        offsets.append(offset)
        skips.append(skip)
    normalized = [weights[index] / heaviest for index in order]
    targets = [0.0] * count
    nexts = [0] * count
    table = [-1] * size
    filled = 0
    iteration = 0
    while filled < size:
        iteration += 1
        for position in range(count):
            # A backend of weight w claims a slot in a fraction w of the
            # rounds (Envoy's target-weight bookkeeping).
            if iteration * normalized[position] < targets[position]:
                continue
            targets[position] += 1.0
            offset, skip, step = offsets[position], skips[position], nexts[position]
            slot = (offset + step * skip) % size
            while table[slot] >= 0:
                step += 1
                slot = (offset + step * skip) % size
            table[slot] = order[position]
            nexts[position] = step + 1
            filled += 1
            if filled == size:
                break
    return table


__all__ = ["DEFAULT_TABLE_SIZE", "buildTable", "keyHash"]
