"""
Tests for L{lbproxy.upstream.reply.Reply}: the part of a L{Deferred}'s
contract the proxy relies on, kept without one.
"""

from __future__ import annotations

from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.upstream.reply import Reply


class ReplyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.responses: list[object] = []
        self.failures: list[Failure] = []
        self.reply = Reply(self.responses.append, self.failures.append)

    def test_response(self) -> None:
        """
        A response is handed on once; a second answer is a programming
        error, as for a L{Deferred}.
        """
        self.reply.callback("response")
        self.assertEqual(self.responses, ["response"])
        self.assertTrue(self.reply.called)
        self.assertRaises(AlreadyCalledError, self.reply.callback, "again")
        self.assertRaises(AlreadyCalledError, self.reply.errback, Failure(ValueError()))
        self.assertEqual(self.failures, [])

    def test_failure(self) -> None:
        """
        A failure is handed on as a L{Failure}, an exception wrapped in one.
        """
        self.reply.errback(ValueError("no"))
        (failure,) = self.failures
        self.assertIsInstance(failure, Failure)
        self.assertTrue(failure.check(ValueError))

    def test_cancel(self) -> None:
        """
        Cancelling runs the canceller once and fails the reply with
        L{CancelledError}; cancelling again, or once answered, does nothing.
        """
        stopped: list[bool] = []
        self.reply.cancelWith(lambda: stopped.append(True))
        self.reply.cancel()
        self.reply.cancel()
        self.assertEqual(stopped, [True])
        (failure,) = self.failures
        self.assertTrue(failure.check(CancelledError))

    def test_cancellerAnswers(self) -> None:
        """
        A canceller that answers the reply itself leaves that answer.
        """
        self.reply.cancelWith(lambda: self.reply.errback(Failure(ValueError())))
        self.reply.cancel()
        (failure,) = self.failures
        self.assertTrue(failure.check(ValueError))

    def test_cancelAnswered(self) -> None:
        """
        Cancelling an answered reply runs no canceller.
        """
        stopped: list[bool] = []
        self.reply.cancelWith(lambda: stopped.append(True))
        self.reply.callback("response")
        self.reply.cancel()
        self.assertEqual(stopped, [])
        self.assertEqual(self.failures, [])

    def test_follow(self) -> None:
        """
        Following a L{Deferred}, the reply answers with its result.
        """
        d: Deferred[str] = Deferred()
        self.reply.follow(d)
        d.callback("response")
        self.assertEqual(self.responses, ["response"])

    def test_followFailure(self) -> None:
        """
        Following a L{Deferred} that fails, the reply fails alike.
        """
        d: Deferred[str] = Deferred()
        self.reply.follow(d)
        d.errback(ValueError())
        (failure,) = self.failures
        self.assertTrue(failure.check(ValueError))

    def test_followCancelled(self) -> None:
        """
        Cancelling a reply that follows a L{Deferred} cancels that
        L{Deferred} (its canceller runs) and fails the reply once.
        """
        stopped: list[bool] = []
        d: Deferred[str] = Deferred(lambda _: stopped.append(True))
        self.reply.follow(d)
        self.reply.cancel()
        self.assertEqual(stopped, [True])
        (failure,) = self.failures
        self.assertTrue(failure.check(CancelledError))
        self.assertIsNone(self.successResultOf(d.addErrback(lambda f: None)))
