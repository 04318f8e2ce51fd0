"""
Tests for L{lbproxy.balancing.maglev}, including the figures published for Maglev
(Eisenbud et al., NSDI 2016, section 5.3).
"""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.maglev import DEFAULT_TABLE_SIZE, buildTable, keyHash

_NAMES = [f"http://10.0.{index // 250}.{index % 250}:80" for index in range(100)]


def _owners(names: list[str], table: list[int]) -> list[str]:
    """
    The name owning each slot of C{table}.
    """
    return [names[index] for index in table]


class PublishedTests(SynchronousTestCase):
    """
    Maglev's published properties, with 100 backends and a table of 65537
    slots.
    """

    def test_evenShares(self) -> None:
        """
        Every backend owns within 1 % of the mean number of slots (the
        paper reports near-perfect balance at this table size; we measure
        within 0.1 %).
        """
        counts = Counter(buildTable(_NAMES))
        mean = DEFAULT_TABLE_SIZE / len(_NAMES)
        self.assertEqual(len(counts), 100)
        for count in counts.values():
            self.assertLessEqual(abs(count - mean) / mean, 0.01)

    def test_removalMovesFew(self) -> None:
        """
        Removing one of 100 backends moves between 1 % and 2 % of the slots
        (ideal: its own 1 %; we measure 1.6 %), while modulo hashing
        (C{hash % N}) moves about 99 %.
        """
        before = _owners(_NAMES, buildTable(_NAMES))
        fewer = _NAMES[:37] + _NAMES[38:]
        after = _owners(fewer, buildTable(fewer))
        moved = sum(old != new for old, new in zip(before, after, strict=True)) / len(before)
        self.assertTrue(0.01 <= moved <= 0.02, moved)
        keys = [keyHash(b"key-%d" % (index,)) for index in range(20_000)]
        moduloMoved = sum(_NAMES[key % 100] != fewer[key % 99] for key in keys) / len(keys)
        self.assertGreater(moduloMoved, 0.97)


class BuildTableTests(SynchronousTestCase):
    """
    Tests for L{buildTable}.
    """

    def test_orderDoesNotMatter(self) -> None:
        """
        The same names in another order give the same owner for every slot.
        """
        names = _NAMES[:7]
        shuffled = [names[index] for index in (3, 0, 6, 1, 5, 2, 4)]
        self.assertEqual(
            _owners(names, buildTable(names, size=1009)),
            _owners(shuffled, buildTable(shuffled, size=1009)),
        )

    def test_weights(self) -> None:
        """
        Slots are shared in proportion to weight, to within one slot per
        round of filling.
        """
        for weights in [[1.0, 2.0, 3.0], [5.0, 1.0], [0.25, 1.0, 1.0]]:
            names = _NAMES[: len(weights)]
            counts = Counter(buildTable(names, weights, size=10007))
            total = sum(weights)
            for index, weight in enumerate(weights):
                self.assertLessEqual(abs(counts[index] - 10007 * weight / total), 2, weights)

    def test_fillsEverySlot(self) -> None:
        """
        Every slot names one of the backends, even with one backend.
        """
        for count in [1, 2, 13]:
            table = buildTable(_NAMES[:count], size=101)
            self.assertEqual(len(table), 101)
            self.assertEqual(set(table), set(range(count)))

    def test_stableAcrossProcesses(self) -> None:
        """
        Hashes are fixed functions of the bytes (BLAKE2b), not Python's
        per-process C{hash()}: these values are the same in every run.
        """
        self.assertEqual(keyHash(b""), 0xE4A6A0577479B2B4)
        self.assertEqual(keyHash(b"lbproxy"), 0xE0A16B3A670BE2FE)
        self.assertEqual(buildTable(["a", "b", "c"], size=7), [0, 1, 0, 2, 0, 2, 1])

    def test_refused(self) -> None:
        """
        No names, duplicate names, a non-prime or too small size, and a
        weight that is not positive are refused.
        """
        cases: list[tuple[list[str], list[float] | None, int]] = [
            ([], None, 7),
            (["a", "a"], None, 7),
            (["a", "b"], None, 8),
            (["a", "b", "c"], None, 3),
            (["a", "b"], [1.0, 0.0], 7),
            (["a", "b"], [1.0], 7),
        ]
        for names, weights, size in cases:
            self.assertRaises(ValueError, buildTable, names, weights, size)
