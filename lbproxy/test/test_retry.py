"""
Tests for L{lbproxy.retry}: which failures may be retried, and the budget.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, TCPTimedOutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from lbproxy.retry import RetryBudget, mayRetry


def _failure(error: Exception) -> Failure:
    try:
        raise error
    except Exception:
        return Failure()


class MayRetryTests(SynchronousTestCase):
    """
    Retrying is safe when nothing reached the backend, or the method is
    idempotent and no answer started.
    """

    def test_table(self) -> None:
        """
        Connection failures are retried for every method; a close, reset or
        unparseable answer before the response headers only for idempotent
        methods; a cancellation (response timeout) never.
        """
        lost = [Failure(ConnectionLost())]
        cases = [
            (b"POST", ConnectionRefusedError(), True),
            (b"POST", TCPTimedOutError(), True),
            (b"POST", TimeoutError(), True),
            (b"GET", ConnectionRefusedError(), True),
            (b"GET", ResponseNeverReceived(lost), True),
            (b"HEAD", ResponseNeverReceived(lost), True),
            (b"PUT", ResponseNeverReceived(lost), True),
            (b"DELETE", RequestTransmissionFailed(lost), True),
            (b"POST", ResponseNeverReceived(lost), False),
            (b"PATCH", ResponseNeverReceived(lost), False),
            (b"GET", ResponseFailed(lost), True),
            (b"POST", ResponseFailed(lost), False),
            (b"GET", CancelledError(), False),
        ]
        for method, error, expected in cases:
            self.assertEqual(mayRetry(method, _failure(error)), expected, (method, error))


class RetryBudgetTests(SynchronousTestCase):
    """
    The retry budget.
    """

    def test_floor(self) -> None:
        """
        With no traffic, the floor allows C{minPerSecond} retries per second
        over the window, and no more.
        """
        budget = RetryBudget(Clock(), ratio=0.2, minPerSecond=1, window=10)
        self.assertEqual(sum(budget.tryRetry() for _ in range(15)), 10)

    def test_ratio(self) -> None:
        """
        With traffic, retries up to the ratio of recent requests are
        allowed on top of the floor.
        """
        budget = RetryBudget(Clock(), ratio=0.2, minPerSecond=0, window=10)
        for _ in range(100):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(50)), 20)

    def test_window(self) -> None:
        """
        Requests and retries older than the window no longer count.
        """
        clock = Clock()
        budget = RetryBudget(clock, ratio=0.5, minPerSecond=0, window=10)
        for _ in range(10):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(10)), 5)
        clock.advance(10)
        self.assertFalse(budget.tryRetry())
        for _ in range(4):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(10)), 2)
