"""
When a failed request may be tried again, and how many retries the pool
can afford (a retry budget, as Finagle and Envoy have).
"""

from __future__ import annotations

import math

import attrs
from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def nothingWasSent(failure: Failure) -> bool:
    """
    Whether C{failure} happened before any of the request reached the
    backend: the connection could not be made.
    """
    return bool(failure.check(ConnectError, TimeoutError, RequestNotSent))


def mayRetry(method: bytes, failure: Failure) -> bool:
    """
    Whether a request that failed with C{failure} before its response
    headers arrived (so nothing of an answer reached the client) may be
    sent to another backend: always when nothing was sent; for idempotent
    methods also when the backend closed or reset the connection, or sent
    something that is not an HTTP response. A response timeout
    (cancellation) is not retried: the backend may still be working on it.
    """
    if nothingWasSent(failure):
        return True
    if method not in IDEMPOTENT_METHODS:
        return False
    return bool(failure.check(ResponseFailed, RequestTransmissionFailed))


@attrs.define
class RetryBudget:
    """
    Allows retries up to C{ratio} of the requests of the last C{window}
    seconds, plus C{minPerSecond} retries per second, so that a sick pool
    is not hit by a retry storm.

    Counts are kept in one-second buckets on the injected clock.
    """

    clock: IReactorTime
    ratio: float = 0.2
    minPerSecond: float = 3.0
    window: int = 10
    _requests: dict[int, int] = attrs.field(factory=dict)
    _retries: dict[int, int] = attrs.field(factory=dict)
    _prunedAt: int = -1

    def _now(self) -> int:
        return math.floor(self.clock.seconds())

    def _prune(self, now: int) -> None:
        # Buckets only expire when the second changes: prune once per second.
        if now == self._prunedAt:
            return
        self._prunedAt = now
        for buckets in (self._requests, self._retries):
            for second in [s for s in buckets if s <= now - self.window]:
                del buckets[second]

    def requestMade(self) -> None:
        """
        Count a first attempt of a request.
        """
        now = self._now()
        self._prune(now)
        self._requests[now] = self._requests.get(now, 0) + 1

    def tryRetry(self) -> bool:
        """
        Take one retry from the budget, if there is one left.
        """
        now = self._now()
        self._prune(now)
        allowed = self.ratio * sum(self._requests.values()) + self.minPerSecond * self.window
        if sum(self._retries.values()) + 1 > allowed:
            return False
        self._retries[now] = self._retries.get(now, 0) + 1
        return True
