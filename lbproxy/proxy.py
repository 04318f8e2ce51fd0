"""
The reverse proxy resource: picks a backend for each request, relays the
request, and streams the answer back with backpressure.

This module is the one place where failures become 502, 503 or 504.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbproxy.backends import Backend, BackendPool
from lbproxy.client import BackendResponse, InvalidResponse
from lbproxy.deadlines import Deadlines
from lbproxy.headers import (
    ClientInfo,
    originalClient,
    requestHeaderLines,
    responseHeadersForClient,
)
from lbproxy.interfaces import IAffinityChooser, IChooser
from lbproxy.retry import RetryBudget, mayRetry
from lbproxy.target import TargetError, hostName, routeTarget
from lbproxy.upstream import RequestBody


class UpstreamClient(TypingProtocol):
    """
    What the proxy needs from the upstream side (see L{lbproxy.upstream}).
    """

    def request(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: RequestBody | None,
    ) -> Deferred[BackendResponse]: ...

    def bodyFromFile(self, content: Any, length: int) -> RequestBody: ...


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutcomeObserver(TypingProtocol):
    """
    Learns how each request to a backend went (see
    L{lbproxy.health.OutlierDetector}).
    """

    def succeeded(self, backend: Backend, status: int) -> None: ...

    def failed(self, backend: Backend) -> None: ...


@attrs.frozen
class ProxySettings:
    """
    How the proxy resource behaves.

    @ivar allowedHosts: Lower-case host names (no port) that are served;
        C{None} serves every Host. Others get 421.
    @ivar responseTimeout: Seconds to wait for the backend's response
        headers before answering 504.
    @ivar retryAfter: Seconds advertised in C{Retry-After} on a 503.
    @ivar trustedProxies: Networks of proxies in front of lbproxy whose
        X-Forwarded-For and Forwarded are kept and appended to, not
        replaced.
    @ivar retries: How many other backends a failed request may be tried
        on (see L{lbproxy.retry.mayRetry} for when).
    """

    allowedHosts: frozenset[str] | None = None
    responseTimeout: float = 30.0
    retryAfter: int = 1
    retries: int = 2
    trustedProxies: tuple[IPNetwork, ...] = ()


@attrs.define
class ProxyRecord:
    """
    What the proxy did for one request, for the access log.

    @ivar backend: The backend the request went to, if any.
    @ivar upstreamSeconds: Seconds from sending the request to the
        backend until its response headers arrived (or it failed).
    @ivar error: A short reason when the proxy answered on its own.
    @ivar truncated: Whether the response was cut short.
    @ivar client: The original client's address, through trusted proxies.
    @ivar tried: Every backend the request was sent to, in order; more
        than one when it was retried.
    """

    backend: Backend | None = None
    upstreamSeconds: float | None = None
    error: str | None = None
    truncated: bool = False
    tried: list[Backend] = attrs.Factory(list)
    client: str | None = None


class ReverseProxyResource(Resource):
    """
    Answers every request by relaying it to a backend chosen by an
    L{IChooser}.

    Requests must be L{twisted.web.server.Request}s whose body has been
    received into C{request.content} (as twisted.web does).
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        chooser: IChooser,
        upstream: UpstreamClient,
        clock: IReactorTime,
        settings: ProxySettings | None = None,
        outcomes: OutcomeObserver | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        """
        @param outcomes: Told of every backend request's outcome (passive
            health checks).
        @param budget: Limits retries; L{None} allows C{settings.retries}
            per request without a global limit.
        """
        super().__init__()
        self.pool = pool
        self.chooser = chooser
        self.upstream = upstream
        self.clock = clock
        self.settings = settings if settings is not None else ProxySettings()
        self.outcomes = outcomes
        self.budget = budget
        self.log = self._log
        self.deadlines = Deadlines(clock, self.settings.responseTimeout)

    def render(self, request: Request) -> int | bytes:  # type: ignore[override]
        """
        Relay C{request} to a backend; the response is written later.
        """
        record = ProxyRecord()
        request.proxyRecord = record  # type: ignore[attr-defined]
        try:
            route = routeTarget(request)
        except TargetError as e:
            return _answer(request, 400, str(e), record)
        allowed = self.settings.allowedHosts
        if allowed is not None and hostName(route.host) not in allowed:
            return _answer(request, 421, "This proxy does not serve that host.", record)
        backend = self.chooser.choose(self.pool.available(), request)
        if backend is None:
            request.setHeader(b"Retry-After", b"%d" % (self.settings.retryAfter,))
            self._log.warn(
                "no backend available for {method} {path}", method=request.method, path=request.uri
            )
            return _answer(request, 503, "No backend is available.", record)
        peer = _clientAddress(request)
        trusted = peer is not None and self.isTrustedProxy(peer)
        record.client = originalClient(request.requestHeaders, peer, self.isTrustedProxy)
        exchange = _Exchange(self, request, backend, record)
        exchange.start(
            route.target,
            ClientInfo(
                address=peer,
                secure=request.isSecure(),
                host=route.host,
                trusted=trusted,
            ),
        )
        return NOT_DONE_YET

    def isTrustedProxy(self, address: str) -> bool:
        """
        Whether C{address} is in one of the C{--trusted-proxy} networks.
        """
        if not self.settings.trustedProxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.settings.trustedProxies)


def _clientAddress(request: Request) -> str | None:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


_REASONS = {
    400: "Bad Request",
    421: "Misdirected Request",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _answer(request: Request, code: int, message: str, record: ProxyRecord) -> bytes:
    """
    Make C{request} a short plain-text answer of the proxy's own.
    """
    record.error = message
    body = f"{code} {_REASONS.get(code, '')}: {message}\n".encode()
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def classifyFailure(failure: Failure, timedOut: bool) -> tuple[int, str]:
    """
    The status and short reason for a request that got no response from
    its backend. This is the proxy's one mapping from failures to status.
    """
    if timedOut:
        return 504, "the backend did not answer in time"
    if failure.check(TimeoutError):
        return 504, "timed out connecting to the backend"
    if failure.check(ConnectionRefusedError):
        return 502, "the backend refused the connection"
    if failure.check(ConnectError):
        return 502, f"cannot connect to the backend ({failure.getErrorMessage()})"
    if failure.check(ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        for reason in reasons:
            if reason.check(InvalidResponse):
                return 502, f"invalid response from the backend ({reason.getErrorMessage()})"
            if reason.check(VerificationError):
                return 502, "the backend's certificate does not match its name"
            if reason.check(SSL.Error):
                return 502, f"TLS with the backend failed ({_tlsDetail(reason)})"
        detail = "; ".join(r.getErrorMessage() for r in reasons) or "no response"
        return 502, f"the backend closed the connection without a valid response ({detail})"
    return 502, f"error talking to the backend ({failure.getErrorMessage()})"


def _tlsDetail(reason: Failure) -> str:
    """
    The most telling part of an OpenSSL error, e.g. C{certificate verify
    failed}.
    """
    details = getattr(reason.value, "args", [[]])[0]
    if isinstance(details, list) and details and isinstance(details[-1], tuple):
        return str(details[-1][-1])
    return reason.getErrorMessage()


class _Exchange:
    """
    One client request relayed to a backend: waits for the response
    headers (with a timeout), retries on another backend when that is safe
    and the budget allows, then streams the body back.
    """

    def __init__(
        self,
        proxy: ReverseProxyResource,
        request: Request,
        backend: Backend,
        record: ProxyRecord,
    ) -> None:
        self._proxy = proxy
        self._clock = proxy.clock
        self._request = request
        self._backend = backend
        self._record = record
        self._log = proxy.log
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._needsHost = False
        self._pending: Deferred[BackendResponse] | None = None
        self._timedOut = False
        self._clientGone = False
        self._done = False
        self._started = 0.0
        self._bodyProducer: IPushProducer | None = None

    def start(self, target: bytes, client: ClientInfo) -> None:
        request = self._request
        self._target = target
        self._headers = requestHeaderLines(request.requestHeaders, client)
        self._needsHost = client.host is None
        if hasattr(request, "onConnectionLost"):
            request.onConnectionLost = self._clientLost
        else:
            request.notifyFinish().addErrback(self._clientLost)
        if self._proxy.budget is not None:
            self._proxy.budget.requestMade()
        self._attempt(self._backend)

    def _attempt(self, backend: Backend) -> None:
        request = self._request
        self._backend = backend
        self._record.backend = backend
        self._record.tried.append(backend)
        self._done = False
        self._timedOut = False
        body = self._requestBody()
        backend.requestStarted()
        self._started = self._clock.seconds()
        self._proxy.deadlines.add(self, self._timeUp, self._started)
        headers = self._headers
        if self._needsHost:
            # An HTTP/1.0 request without Host: name the backend.
            headers = [(b"Host", backend.authority.encode("ascii")), *headers]
        self._pending = self._proxy.upstream.request(
            backend, request.method, self._target, headers, body
        )
        self._pending.addCallbacks(self._gotResponse, self._noResponse)

    def _requestBody(self) -> RequestBody | None:
        content = self._request.content
        if content is None:
            return None
        length = content.seek(0, 2)
        content.seek(0, 0)
        hasFraming = self._request.requestHeaders.hasHeader(
            b"content-length"
        ) or self._request.requestHeaders.hasHeader(b"transfer-encoding")
        if length == 0 and not hasFraming:
            return None
        return self._proxy.upstream.bodyFromFile(content, length)

    def _timeUp(self) -> None:
        self._timedOut = True
        if self._pending is not None:
            self._pending.cancel()

    def _stopTimer(self) -> None:
        self._proxy.deadlines.remove(self)

    def _finish(self, failed: bool) -> None:
        if not self._done:
            self._done = True
            latency = None if failed else self._record.upstreamSeconds
            self._backend.requestFinished(failed, latency=latency, now=self._clock.seconds())
            observer = self._proxy.outcomes
            if observer is not None and failed:
                observer.failed(self._backend)

    def _gotResponse(self, response: BackendResponse) -> None:
        self._pending = None
        self._stopTimer()
        self._record.upstreamSeconds = self._clock.seconds() - self._started
        if self._proxy.outcomes is not None:
            self._proxy.outcomes.succeeded(self._backend, response.code)
        if self._clientGone:
            response.deliverBody(_Discard())
            self._finish(failed=False)
            return
        request = self._request
        request.setResponseCode(response.code, response.phrase)
        # The backend's headers replace the server side's (Date); its
        # Connection: close, if any, stays.
        connection = getattr(response, "connectionHeaders", None)
        for name, values in responseHeadersForClient(response.headers, connection):
            request.responseHeaders.setRawHeaders(name, values)
        # Framing is kept out of response.headers; a declared body length is
        # response.length. The answer to HEAD has no body but says how long
        # the body of a GET would be: relay the backend's Content-Length.
        if request.method == b"HEAD":
            lengths = connection.getRawHeaders(b"content-length") if connection else None
            if lengths:
                request.setHeader(b"Content-Length", lengths[0])
        elif response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"Content-Length", b"%d" % (cast(int, response.length),))
        request.defaultContentType = None
        chooser = self._proxy.chooser
        if IAffinityChooser.providedBy(chooser):
            for name, value in chooser.responseHeaders(self._backend, request):
                request.responseHeaders.addRawHeader(name, value)
        response.deliverBody(_BodyRelay(self))

    def _noResponse(self, failure: Failure) -> None:
        self._pending = None
        self._stopTimer()
        self._record.upstreamSeconds = self._clock.seconds() - self._started
        if self._clientGone:
            self._record.error = "client closed the connection"
            self._finish(failed=False)
            return
        code, reason = classifyFailure(failure, self._timedOut)
        self._finish(failed=True)
        retryTo = None if self._timedOut else self._retryBackend(failure)
        self._log.warn(
            "{status} from backend {backend} for {method} {path}: {reason}{action}",
            status=code,
            method=self._request.method,
            path=self._request.uri,
            backend=self._backend.authority,
            reason=reason,
            action=f"; retrying on {retryTo.authority}" if retryTo is not None else "",
        )
        if retryTo is not None:
            self._backend.retries += 1
            self._attempt(retryTo)
            return
        body = _answer(self._request, code, reason, self._record)
        self._request.write(body)
        self._request.finish()

    def _retryBackend(self, failure: Failure) -> Backend | None:
        """
        The backend to retry on, if this failure may be retried, retries
        are left and the budget allows one; C{None} otherwise.
        """
        proxy = self._proxy
        if len(self._record.tried) > proxy.settings.retries:
            return None
        if not mayRetry(self._request.method, failure):
            return None
        untried = [b for b in proxy.pool.available() if b not in self._record.tried]
        if not untried:
            return None
        if proxy.budget is not None and not proxy.budget.tryRetry():
            self._log.warn(
                "retry budget exhausted; not retrying {method} {path}",
                method=self._request.method,
                path=self._request.uri,
            )
            return None
        return proxy.chooser.choose(untried, self._request)

    def _clientLost(self, failure: Failure) -> None:
        self._clientGone = True
        if self._pending is not None:
            self._pending.cancel()
        elif self._bodyProducer is not None:
            self._bodyProducer.stopProducing()

    # Called by _BodyRelay:

    def bodyStarted(self, producer: IPushProducer) -> None:
        self._bodyProducer = producer
        self._request.registerProducer(producer, True)

    def bodyData(self, data: bytes) -> None:
        self._request.write(data)

    def bodyEnded(self, reason: Failure) -> None:
        request = self._request
        if self._bodyProducer is not None and not self._clientGone:
            request.unregisterProducer()
        self._bodyProducer = None
        if self._clientGone:
            self._finish(failed=False)
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finish(failed=False)
            request.finish()
            return
        self._finish(failed=True)
        self._record.truncated = True
        self._record.error = "backend failed mid-response"
        self._log.warn(
            "response from backend {backend} for {method} {path} cut short: "
            "{reason}; closing the client connection",
            backend=self._backend.authority,
            method=request.method,
            path=request.uri,
            reason=reason.getErrorMessage(),
        )
        site = getattr(request, "site", None)
        if site is not None:
            site.log(request)
        # Never let a cut response look complete: close the connection after
        # what was relayed, without the end of the message.
        request.channel.loseConnection()


class _BodyRelay(Protocol):
    """
    Receives a backend response body and hands it to the exchange; the
    backend transport is registered as the client's producer, so a slow
    client pauses reading from the backend.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        self._exchange.bodyStarted(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._exchange.bodyData(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._exchange.bodyEnded(reason)


class _Discard(Protocol):
    """
    Swallows the body of a response nobody is waiting for any more.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


__all__ = [
    "ProxyRecord",
    "ProxySettings",
    "ReverseProxyResource",
    "UpstreamClient",
    "classifyFailure",
]
