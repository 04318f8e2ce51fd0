"""
Tests for L{lbproxy.upstream.deadlines}: many deadlines of one length on one timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.upstream.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    """
    Each deadline expires exactly C{timeout} after it was added unless
    removed, with at most one timer pending for all of them.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, 30.0)
        self.expired: list[str] = []

    def add(self, key: str) -> None:
        self.deadlines.add(key, lambda: self.expired.append(key), self.clock.seconds())

    def test_expiresOnTime(self) -> None:
        """
        A deadline expires after exactly the timeout, not before.
        """
        self.add("a")
        self.clock.advance(29.999)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.expired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_inOrderOneTimer(self) -> None:
        """
        Deadlines added at different times expire in that order, each on
        time, while a single timer is pending.
        """
        for key in "abc":
            self.add(key)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            self.clock.advance(10)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a", "b"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_removed(self) -> None:
        """
        A removed deadline never expires; removing the last one leaves no
        timer pending.
        """
        self.add("a")
        self.add("b")
        self.deadlines.remove("a")
        self.clock.advance(30)
        self.assertEqual(self.expired, ["b"])
        self.add("c")
        self.deadlines.remove("c")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.expired, ["b"])

    def test_addedAgainStartsOver(self) -> None:
        """
        Adding a key again starts its deadline over.
        """
        self.add("a")
        self.clock.advance(20)
        self.add("a")
        self.clock.advance(20)
        self.assertEqual(self.expired, [])
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a"])

    def test_addedWhileExpiring(self) -> None:
        """
        A deadline added by an expiry callback (a retry, say) gets its full
        timeout, and still only one timer is pending.
        """
        self.deadlines.add("a", lambda: self.add("retry"), self.clock.seconds())
        self.add("b")
        self.clock.advance(30)
        self.assertEqual(self.expired, ["b"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(29)
        self.assertEqual(self.expired, ["b"])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["b", "retry"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
