# -*- test-case-name: lbproxy.test.test_reply,lbproxy.test.test_pool -*-
"""
Where a backend's answer goes, without a L{Deferred}.

The proxy asks the pool for one response per request. A L{Deferred} for it
(made, given two callback entries, fired, run through its callback loop)
cost about 1.5 µs of the 65 a proxied request takes. A L{Reply} holds the
proxy's two callables and is called directly by the backend connection;
it keeps the part of a L{Deferred}'s contract the proxy relies on: it is
called once, C{cancel} stops the work (and fails it with
L{CancelledError} if that did not), and it can L{follow} a L{Deferred}
where the answer comes from one (a new connection, HTTP/2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.python.failure import Failure


class Pending(Protocol):
    """
    What a backend connection answers its current request to: a L{Reply}
    or a L{Deferred}.
    """

    called: Any

    def callback(self, result: Any) -> object: ...

    def errback(self, fail: Any = None) -> object: ...


class Reply:
    """
    Hands a backend's response (or the failure to get one) to
    C{onResponse} (or C{onFailure}), once.

    @ivar called: Whether it was answered (or cancelled).
    """

    __slots__ = ("_canceller", "_onFailure", "_onResponse", "called")

    def __init__(
        self, onResponse: Callable[[Any], object], onFailure: Callable[[Failure], object]
    ) -> None:
        self._onResponse = onResponse
        self._onFailure = onFailure
        self._canceller: Callable[[], object] | None = None
        self.called = False

    def callback(self, response: Any) -> None:
        """
        The response (its head) has arrived.
        """
        if self.called:
            raise AlreadyCalledError(self)
        self.called = True
        self._canceller = None
        self._onResponse(response)

    def errback(self, failure: Any = None) -> None:
        """
        No response will come: C{failure} says why.
        """
        if self.called:
            raise AlreadyCalledError(self)
        if not isinstance(failure, Failure):
            failure = Failure(failure)
        self.called = True
        self._canceller = None
        self._onFailure(failure)

    def cancelWith(self, canceller: Callable[[], object]) -> None:
        """
        Stop the work with C{canceller()} if this is cancelled.
        """
        self._canceller = canceller

    def follow(self, source: Deferred[Any]) -> None:
        """
        Answer with what C{source} fires with; cancelling this cancels it.
        """
        self._canceller = source.cancel
        source.addCallbacks(self._fromDeferred, self._failedDeferred)

    def _fromDeferred(self, response: Any) -> None:
        if not self.called:
            self.callback(response)

    def _failedDeferred(self, failure: Failure) -> None:
        if not self.called:
            self.errback(failure)

    def cancel(self) -> None:
        """
        Stop the work: its canceller runs, and unless that answered, this
        fails with L{CancelledError} (as a L{Deferred} without a result
        does). Nothing happens once answered.
        """
        if self.called:
            return
        canceller, self._canceller = self._canceller, None
        if canceller is not None:
            canceller()
        if not self.called:
            self.errback(Failure(CancelledError()))


__all__ = ["Pending", "Reply"]
