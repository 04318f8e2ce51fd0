# -*- test-case-name: lbproxy.test.test_retry -*-
"""
When a failed request may be tried again, and how many retries the pool
can afford (a retry budget, as Finagle and Envoy have).
"""

from __future__ import annotations

import math

import attrs
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet.defer import TimeoutError
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from lbproxy._twisted.newclient import RequestNotSent

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class ConnectTimeoutError(TimeoutError, TCPTimedOutError):
    """
    No connection to the backend within the connect timeout.

    Both a L{twisted.internet.defer.TimeoutError} (what C{addTimeout}
    fails with) and a L{ConnectError} (what every other failure to connect
    is), so either check recognises it.
    """

    def __init__(self, timeout: float) -> None:
        TCPTimedOutError.__init__(self, string=f"{timeout:g}s")
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no connection to the backend within {self.timeout:g}s (--connect-timeout)"


def _tlsHandshakeFailed(failure: Failure) -> bool:
    """
    Whether C{failure} is the lean client's report of a connection whose
    TLS handshake failed (OpenSSL refused it, or the certificate does not
    name the backend): no response, and an OpenSSL or certificate error as
    the reason. The request's bytes wait in the TLS layer until the
    handshake is done, so none of them reached the backend.
    """
    if not failure.check(ResponseNeverReceived, RequestTransmissionFailed):
        return False
    reasons: list[Failure] = getattr(failure.value, "reasons", [])
    return any(reason.check(SSL.Error, VerificationError) for reason in reasons)


def failedToConnect(failure: Failure) -> bool:
    """
    Whether C{failure} means no usable connection to the backend was made,
    so that nothing of the request reached it: the connection was refused,
    timed out (L{ConnectTimeoutError}, or Twisted's own timeouts), had no
    route (any L{ConnectError}), the backend's name did not resolve
    (L{DNSLookupError}, which is not a L{ConnectError}), or the TLS
    handshake with an C{https://} backend failed.

    Such a request may go to another backend whatever its method; the
    proxy counts it as a failure of the backend (passive ejection), and
    answers 503 with C{Retry-After} when every try failed this way.
    """
    return bool(failure.check(ConnectError, TimeoutError, DNSLookupError)) or _tlsHandshakeFailed(
        failure
    )


def connectFailureKind(failure: Failure) -> str:
    """
    What kind of connection failure C{failure} is (one that
    L{failedToConnect} accepts), as a metrics label: C{refused},
    C{timeout}, C{dns}, C{tls} or C{unreachable} (any other connect error).
    """
    if failure.check(ConnectionRefusedError):
        return "refused"
    if failure.check(TimeoutError, TCPTimedOutError):
        return "timeout"
    if failure.check(DNSLookupError):
        return "dns"
    if _tlsHandshakeFailed(failure):
        return "tls"
    return "unreachable"


def nothingWasSent(failure: Failure) -> bool:
    """
    Whether C{failure} happened before any of the request reached the
    backend: the connection could not be made (L{failedToConnect}), or
    twisted.web's client did not send the request (L{RequestNotSent}).
    """
    return failedToConnect(failure) or bool(failure.check(RequestNotSent))


def mayRetry(method: bytes, failure: Failure) -> bool:
    """
    Whether a request that failed with C{failure} before its response
    headers arrived (so nothing of an answer reached the client) may be
    sent to another backend: always when nothing was sent; for idempotent
    methods also when the backend closed or reset the connection, or sent
    something that is not an HTTP response. A response timeout
    (cancellation) is not retried: the backend may still be working on it.
    (The proxy decides separately whether a body can be sent again.)
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
        now = math.floor(self.clock.seconds())
        if now != self._prunedAt:
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
