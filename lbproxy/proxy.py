# -*- test-case-name: lbproxy.test.test_proxy,lbproxy.test.test_streaming,lbproxy.test.test_resilience,lbproxy.test.test_h2client -*-  # noqa: E501
"""
The reverse proxy resource: picks a backend for each request, relays the
request, and streams the answer back with backpressure.

This module is the one place where failures become 502, 503 or 504 (or,
for a gRPC call, HTTP 200 with C{grpc-status} 14 or 4, see L{grpcFailure}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from lbproxy.http.headers import (
    ClientInfo,
    HeaderEdits,
    connectionTokens,
    originalClient,
    requestHeaderLines,
    responseHeadersForClient,
    responseLinesForClient,
)
from lbproxy.http.reasons import reasonPhrase
from lbproxy.http.target import Route, TargetError, hostName, routeTarget
from lbproxy.interfaces import IAffinityChooser, IChooser
from lbproxy.upstream.backends import Backend, BackendPool
from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.connection import BackendResponse, HeaderLines, InvalidResponse
from lbproxy.upstream.deadlines import Deadlines
from lbproxy.upstream.reply import Reply
from lbproxy.upstream.retry import RetryBudget, connectFailureKind, failedToConnect, mayRetry


class UpstreamClient(TypingProtocol):
    """
    What the proxy needs from the upstream side (see L{lbproxy.upstream.pool}).
    """

    def sendInto(
        self,
        reply: Reply,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Callable[[int, bytes, HeaderLines], None] | None = None,
        upgrade: bool = False,
    ) -> None: ...


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutcomeObserver(TypingProtocol):
    """
    Learns how each request to a backend went (see
    L{lbproxy.upstream.health.OutlierDetector}).
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
        headers before answering 504 (from when the request, body and all,
        was sent), and the longest the backend may then send nothing of
        the response body before both connections are dropped.
    @ivar sendTimeout: Seconds a client may take nothing of a response
        before both connections are dropped.
    @ivar tunnelIdleTimeout: Seconds an upgraded connection (WebSocket)
        may carry nothing either way before it is closed.
    @ivar retryAfter: Seconds advertised in C{Retry-After} on a 503.
    @ivar trustedProxies: Networks of proxies in front of lbproxy whose
        X-Forwarded-For and Forwarded are kept and appended to, not
        replaced.
    @ivar retries: How many other backends a failed request may be tried
        on (see L{lbproxy.upstream.retry.mayRetry} for when).
    """

    allowedHosts: frozenset[str] | None = None
    responseTimeout: float = 30.0
    sendTimeout: float = 60.0
    tunnelIdleTimeout: float = 3600.0
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
    @ivar tunnelToBackend: For an upgraded connection, the bytes the
        client sent through it; L{None} for a plain request.
    @ivar tunnelToClient: For an upgraded connection, the bytes the
        backend sent through it.
    @ivar tunnelSeconds: For an upgraded connection that closed, how long
        it was open.
    @ivar pool: The name of the pool the request was routed to, when a
        router routed it.
    """

    backend: Backend | None = None
    upstreamSeconds: float | None = None
    error: str | None = None
    truncated: bool = False
    tried: list[Backend] = attrs.Factory(list)
    client: str | None = None
    tunnelToBackend: int | None = None
    tunnelToClient: int = 0
    tunnelSeconds: float | None = None
    pool: str | None = None


RECORD_ATTRIBUTE = "proxyRecord"
"""
The request attribute where the proxy keeps its L{ProxyRecord}
(L{setProxyRecord}) and the access log reads it (L{proxyRecordOf}). The
request may be the edge's or a plain twisted.web one (a twisted.web site
can mount the proxy resource), so the attribute is not declared on a class.
"""

# The client protocols that take interim (1xx) responses, so whose Expect:
# 100-continue is relayed (RFC 9110 15.2: not HTTP/1.0).
_EXPECTING = frozenset({b"HTTP/1.1", b"HTTP/2"})


def setProxyRecord(request: Request, record: ProxyRecord) -> None:
    """
    Keep C{record} on C{request}, for the access log.
    """
    setattr(request, RECORD_ATTRIBUTE, record)


def proxyRecordOf(request: Request) -> ProxyRecord | None:
    """
    The record kept on C{request} by L{setProxyRecord}; L{None} for a
    request the proxy did not handle.
    """
    record = getattr(request, RECORD_ATTRIBUTE, None)
    return record if isinstance(record, ProxyRecord) else None


class ReverseProxyResource(Resource):
    """
    Answers every request by relaying it to a backend chosen by an
    L{IChooser}.

    Requests are the edge's L{lbproxy.http.edge.ProxyRequest}s, whose body
    streams as it arrives, or plain L{twisted.web.server.Request}s whose
    body has been received into C{request.content} (so a twisted.web site
    can mount this resource).
    """

    isLeaf = True
    _log = Logger()

    sampleIn = 0
    """
    Requests until the next choice is handed to L{decisions}, which sets
    it again; 0 hands none. The only per-request cost of sampling.
    """

    decisions: Callable[[Sequence[Backend], Backend | None, Request], None] | None = None
    """
    Records a sampled choice: the candidates, the chosen backend, the
    request (see L{lbproxy.observe.decisions}).
    """

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
        self.activity = Deadlines(clock, self.settings.responseTimeout)
        self.sending = Deadlines(clock, self.settings.sendTimeout)
        self.tunnels = Deadlines(clock, self.settings.tunnelIdleTimeout)

    def render(self, request: Request) -> int | bytes:
        """
        Relay C{request} to a backend; the response is written later.
        """
        record = ProxyRecord()
        setProxyRecord(request, record)
        try:
            route = routeTarget(request)
        except TargetError as e:
            return answer(request, 400, str(e), record)
        allowed = self.settings.allowedHosts
        if allowed is not None and hostName(route.host) not in allowed:
            return answer(request, 421, "This proxy does not serve that host.", record)
        return self.relay(request, route, record)

    def relay(
        self,
        request: Request,
        route: Route,
        record: ProxyRecord,
        requestEdits: HeaderEdits | None = None,
        responseEdits: HeaderEdits | None = None,
    ) -> int | bytes:
        """
        Relay C{request}, already checked and routed to this pool, to one
        of its backends (a router's entry point, see
        L{lbproxy.routing.Router}).

        @param route: The target to send and the Host to forward.
        @param record: The request's L{ProxyRecord}, already set on it.
        @param requestEdits: Header changes for the request sent on.
        @param responseEdits: Header changes for the response relayed back.
        @return: What C{render} returns.
        """
        available = self.pool.available()
        backend = self.chooser.choose(available, request)
        if self.sampleIn:
            self.sampleIn -= 1
            if not self.sampleIn and self.decisions is not None:
                self.decisions(available, backend, request)
        if backend is None:
            self._log.warn(
                "no backend available for {method} {path}",
                method=_text(request.method),
                path=_text(request.uri),
            )
            if isGRPC(request):
                grpcFailure(request, 503, "No backend is available.", record)
                return NOT_DONE_YET
            request.setHeader(b"Retry-After", b"%d" % (self.settings.retryAfter,))
            return answer(request, 503, "No backend is available.", record)
        peer = _clientAddress(request)
        trusted = peer is not None and self.isTrustedProxy(peer)
        if trusted:
            record.client = originalClient(request.requestHeaders, peer, self.isTrustedProxy)
        else:
            record.client = peer  # (what originalClient makes of an untrusted peer)
        exchange = _Exchange(self, request, backend, record)
        if requestEdits:
            exchange.requestEdits = requestEdits
        if responseEdits:
            exchange.responseEdits = responseEdits
        exchange.start(
            route.target,
            ClientInfo(
                address=peer,
                secure=request.isSecure(),
                host=route.host,
                trusted=trusted,
                original=record.client,
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


def answer(request: Request, code: int, message: str, record: ProxyRecord) -> bytes:
    """
    Make C{request} a short plain-text answer of the proxy's own, noting
    C{message} in C{record}; returns the body to write.
    """
    record.error = message
    reason = reasonPhrase(code)
    body = b"%d %s: %s\n" % (code, reason, message.encode())
    request.setResponseCode(code, reason)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4


def isGRPC(request: Request) -> bool:
    """
    Whether C{request} is a gRPC call (C{content-type: application/grpc},
    or one of its C{+proto}, C{+json}, C{-web} forms).
    """
    types = request.requestHeaders.getRawHeaders(b"content-type")
    return types is not None and types[0].strip().lower().startswith(b"application/grpc")


def grpcFailure(request: Request, code: int, message: str, record: ProxyRecord) -> None:
    """
    Answer a gRPC call that the proxy failed with C{code} (502, 503 or 504)
    as gRPC clients understand it and as Envoy does: HTTP 200 with
    C{grpc-status} 14 (UNAVAILABLE), or 4 (DEADLINE_EXCEEDED) for a
    timeout, and the reason in C{grpc-message}, as a trailers-only response
    (a single HEADERS frame that ends the stream). The record keeps the
    HTTP status the proxy decided on, for the access log.
    """
    status = GRPC_DEADLINE_EXCEEDED if code == 504 else GRPC_UNAVAILABLE
    record.error = f"{message} (HTTP {code} as grpc-status {status})"
    request.responseHeaders = Headers()
    request.setResponseCode(200, b"OK")
    request.setHeader(b"Content-Type", b"application/grpc")
    request.setHeader(b"grpc-status", b"%d" % (status,))
    request.setHeader(b"grpc-message", _grpcMessage(message))
    if request.clientproto != b"HTTP/2":
        request.setHeader(b"Content-Length", b"0")
    _finishResponse(request, None)


def _grpcMessage(message: str) -> bytes:
    """
    C{message} percent-encoded as C{grpc-message} wants it.
    """
    return "".join(
        c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        for c in message
    ).encode("ascii")


def _finishResponse(request: Request, trailers: Sequence[tuple[bytes, bytes]] | None) -> None:
    """
    Finish C{request}'s response, with C{trailers} for an HTTP/2 client (an
    HTTP/1.x client gets none: gRPC needs HTTP/2 end to end). A response
    with no body yet goes out as one HEADERS frame that ends the stream
    (or, with trailers, is followed by them), as gRPC's trailers-only
    responses must.
    """
    channel: Any = request.channel
    writeTrailers = (
        getattr(channel, "writeTrailers", None) if request.clientproto == b"HTTP/2" else None
    )
    if writeTrailers is None:
        request.finish()
        return
    if trailers:
        writeTrailers(list(trailers))
    if request.startedWriting:
        request.finish()
        return
    channel.holdHead()
    try:
        request.finish()
    finally:
        channel.releaseHead()


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
    and the budget allows, then streams the body back, or, after a C{101},
    relays bytes both ways until either side closes.
    """

    # State most exchanges never change, as class defaults: an exchange is
    # made per request, and each assignment in __init__ costs.
    _target = b""
    _needsHost = False
    _pending: Reply | None = None
    _timedOut = False
    _clientGone = False
    _abandoned = False
    _done = False
    _started = 0.0
    _attempts = 0
    _sentBefore = 0
    _connectFailures = 0
    _bodyProducer: IPushProducer | None = None
    _body: StreamedBody | None = None
    _tunnel: Any = None
    _logged = False
    _upgrade = False
    _response: Any = None
    _tunnelOpened = 0.0
    # Whether the response body is being watched for stalls: only once it
    # did not arrive with its head (most small bodies do), so that a small
    # response costs no timer.
    _watching = False
    _bodyEnded = False
    _clientPaused = False
    requestEdits: HeaderEdits | None = None
    responseEdits: HeaderEdits | None = None

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
        self._headers: list[tuple[bytes, bytes]] = []

    def start(self, target: bytes, client: ClientInfo) -> None:
        request = self._request
        self._target = target
        self._headers = requestHeaderLines(request.requestHeaders, client)
        if self.requestEdits is not None:
            self._headers = self.requestEdits.applyToLines(self._headers)
        self._body = _requestBody(request)
        controls, self._upgrade = _relayedControls(request, self._body)
        if controls:
            self._headers += controls
        # An HTTP/1.0 request without Host gets the backend's name as
        # Host, unless its route set one.
        self._needsHost = client.host is None and not any(
            name.lower() == b"host" for name, _ in self._headers
        )
        if hasattr(request, "onConnectionLost"):
            request.onConnectionLost = self._clientLost
            request.onAbandon = self._abandon  # type: ignore[attr-defined]
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
        self._attempts += 1
        backend.requestStarted()
        self._started = self._clock.seconds()
        body = self._body
        if body is not None:
            self._sentBefore = body.sent
        if body is None or body.complete:
            self._proxy.deadlines.add(self, self._timeUp, self._started)
        else:
            # The response timeout starts once the whole body went out (a
            # slow upload is the edge's body timeout's business).
            attempt = self._attempts
            body.whenSent(lambda: self._bodySent(attempt))
        headers = self._headers
        if self._needsHost:
            # An HTTP/1.0 request without Host: name the backend.
            headers = [(b"Host", backend.authority.encode("ascii")), *headers]
        reply = self._pending = Reply(self._gotResponse, self._noResponse)
        self._proxy.upstream.sendInto(
            reply,
            backend,
            request.method,
            self._target,
            headers,
            body,
            self._interim,
            self._upgrade,
        )

    def _bodySent(self, attempt: int) -> None:
        if attempt == self._attempts and self._pending is not None:
            self._proxy.deadlines.add(self, self._timeUp, self._clock.seconds())

    def _interim(self, code: int, phrase: bytes, headers: HeaderLines) -> None:
        request = self._request
        if self._clientGone or self._abandoned:
            return
        if request.clientproto not in _EXPECTING:
            return  # HTTP/1.0 clients get no 1xx (RFC 9110 15.2).
        writeInterim = getattr(request.channel, "writeInterim", None)
        if writeInterim is not None:
            lines = [
                (name, value)
                for name, values in responseHeadersForClient(headers, None)
                for value in values
            ]
            writeInterim(code, phrase, lines)

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
            if self._body is not None:
                self._backend.bytesToBackend += self._body.sent - self._sentBefore
            observer = self._proxy.outcomes
            if observer is not None and failed:
                observer.failed(self._backend)

    def _gotResponse(self, response: BackendResponse) -> None:
        self._pending = None
        self._stopTimer()
        self._record.upstreamSeconds = self._clock.seconds() - self._started
        self._backend.responses[min(response.code // 100, 5)] += 1
        if self._proxy.outcomes is not None:
            self._proxy.outcomes.succeeded(self._backend, response.code)
        if self._clientGone or self._abandoned:
            response.deliverBody(_Discard())
            self._finish(failed=False)
            return
        if response.tunnel is not None:
            self._startTunnel(response)
            return
        self._response = response
        request = self._request
        if getattr(request, "wholeResponses", False) and self._respondWhole(response):
            return
        request.setResponseCode(response.code, response.phrase)
        # The backend's headers replace the server side's (Date); its
        # Connection: close, if any, stays.
        connection = getattr(response, "connectionHeaders", None)
        for name, values in responseHeadersForClient(response.headers, connection):
            request.responseHeaders.setRawHeaders(name, values)
        length = None if response.length is UNKNOWN_LENGTH else cast(int, response.length)
        contentLength = _clientLength(request.method, response, length)
        if contentLength is not None:
            request.setHeader(b"Content-Length", contentLength)
        request.defaultContentType = None
        if self.responseEdits is not None:
            self.responseEdits.applyToHeaders(request.responseHeaders)
        chooser = self._proxy.chooser
        if IAffinityChooser.providedBy(chooser):
            for name, value in chooser.responseHeaders(self._backend, request):
                request.responseHeaders.addRawHeader(name, value)
        response.deliverBody(_BodyRelay(self))
        if not self._bodyEnded and self._tunnel is None:
            self._watching = True
            self.clientPaused(self._clientPaused)

    def _respondWhole(self, response: BackendResponse) -> bool:
        """
        Answer at once with a response whose whole body came with its head
        (most small ones): one write of head and body, no body relay, no
        header copies (see L{lbproxy.http.edge.ProxyRequest.respondWhole}).

        @return: Whether it did; if not, nothing has changed and the body
            is to be relayed as it arrives.
        """
        body = response.takeWholeBody()
        if body is None:
            return False
        request = self._request
        code = response.code
        headers = response.headers
        names = headers.names
        lines = responseLinesForClient(headers.lines, response.connectionHeaders, names)
        contentLength = _clientLength(request.method, response, len(body))
        if contentLength is not None:
            lines.append((b"Content-Length", contentLength))
        chooser = self._proxy.chooser
        affinity: Sequence[tuple[bytes, bytes]] = ()
        if IAffinityChooser.providedBy(chooser):
            affinity = chooser.responseHeaders(self._backend, request)
        self._bodyEnded = True
        self._backend.bytesFromBackend += len(body)
        self._finish(failed=False)
        request.respondWhole(  # type: ignore[attr-defined]
            code, response.phrase, lines, body, self.responseEdits, affinity, names
        )
        return True

    def _noResponse(self, failure: Failure) -> None:
        self._pending = None
        self._stopTimer()
        self._record.upstreamSeconds = self._clock.seconds() - self._started
        if self._clientGone or self._abandoned:
            if self._clientGone:
                self._record.error = "client closed the connection"
            self._finish(failed=False)
            return
        code, reason = classifyFailure(failure, self._timedOut)
        if not self._timedOut and failedToConnect(failure):
            self._connectFailures += 1
            kind = connectFailureKind(failure)
            failures = self._backend.connectFailures
            failures[kind] = failures.get(kind, 0) + 1
        self._finish(failed=True)
        retryTo = None if self._timedOut else self._retryBackend(failure)
        if retryTo is None and self._connectFailures == self._attempts:
            # No backend could even be reached: as HAProxy and Envoy do,
            # "unavailable, try again later".
            code = 503
        self._log.warn(
            "{status} from backend {backend} for {method} {path}: {reason}{action}",
            status=code,
            method=_text(self._request.method),
            path=_text(self._request.uri),
            backend=self._backend.authority,
            reason=reason,
            action=f"; retrying on {retryTo.authority}" if retryTo is not None else "",
        )
        if retryTo is not None:
            self._backend.retries += 1
            self._attempt(retryTo)
            return
        if isGRPC(self._request):
            grpcFailure(self._request, code, reason, self._record)
            return
        if code == 503:
            self._request.setHeader(b"Retry-After", b"%d" % (self._proxy.settings.retryAfter,))
        body = answer(self._request, code, reason, self._record)
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
        if self._body is not None and not self._body.replayable():
            # Part of a body that was not kept went out: it cannot be sent
            # again.
            return None
        untried = [b for b in proxy.pool.available() if b not in self._record.tried]
        if not untried:
            return None
        if proxy.budget is not None and not proxy.budget.tryRetry():
            self._log.warn(
                "retry budget exhausted; not retrying {method} {path}",
                method=_text(self._request.method),
                path=_text(self._request.uri),
            )
            return None
        return proxy.chooser.choose(untried, self._request)

    def _clientLost(self, failure: Failure) -> None:
        if self._clientGone:
            return  # Already given up on (and logged).
        self._clientGone = True
        if self._body is not None:
            self._body.abandon()
        if self._tunnel is not None:
            self._tunnel.loseConnection()
            return
        if self._pending is not None:
            self._pending.cancel()
        elif self._bodyProducer is not None:
            self._bodyProducer.stopProducing()
        request = self._request
        if not self._record.error:
            self._record.error = "client closed the connection"
        if not request.startedWriting:
            # Nothing was sent: log the request as nginx does, 499.
            request.code = 499
        self._logNow()

    def _abandon(self) -> None:
        """
        The edge gave up on the request (see
        L{lbproxy.http.edge.ProxyRequest.onAbandon}): drop the backend side.
        """
        self._abandoned = True
        if self._body is not None:
            self._body.abandon()
        if self._pending is not None:
            self._pending.cancel()
        elif self._bodyProducer is not None:
            self._bodyProducer.stopProducing()

    def _logNow(self) -> None:
        """
        Write the access log line of a request that will not finish the
        usual way (cut, abandoned, or a tunnel), once.
        """
        if self._logged:
            return
        self._logged = True
        site = getattr(self._request, "site", None)
        if site is not None:
            site.log(self._request)

    # Called by _BodyRelay:

    def bodyStarted(self, producer: IPushProducer) -> None:
        self._bodyProducer = producer
        self._request.registerProducer(_RelayProducer(self, producer), True)

    def bodyData(self, data: bytes) -> None:
        self._backend.bytesFromBackend += len(data)
        if self._tunnel is not None:
            self._record.tunnelToClient += len(data)
            self._tunnelActive()
            self._request.channel.write(data)
            return
        self._request.write(data)

    def bodyEnded(self, reason: Failure) -> None:
        request = self._request
        self._bodyEnded = True
        if self._watching:
            self._watching = False
            self._proxy.activity.remove(self)
            self._proxy.sending.remove(self)
        if self._bodyProducer is not None and not self._clientGone:
            request.unregisterProducer()
        self._bodyProducer = None
        if self._tunnel is not None:
            self._tunnelEnded(reason)
            return
        if self._clientGone or self._abandoned:
            self._finish(failed=False)
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finish(failed=False)
            _finishResponse(request, getattr(self._response, "trailers", None))
            return
        self._finish(failed=True)
        if not request.startedWriting and isGRPC(request):
            # Nothing of the answer went out yet: the call fails as gRPC
            # clients understand, not with a reset.
            self._log.warn(
                "backend {backend} failed {method} {path} before its response "
                "body: {reason}; answering grpc-status 14",
                backend=self._backend.authority,
                method=_text(request.method),
                path=_text(request.uri),
                reason=reason.getErrorMessage(),
            )
            grpcFailure(request, 502, "the backend failed mid-response", self._record)
            return
        self._record.truncated = True
        self._record.error = "backend failed mid-response"
        self._log.warn(
            "response from backend {backend} for {method} {path} cut short: "
            "{reason}; resetting the client connection",
            backend=self._backend.authority,
            method=_text(request.method),
            path=_text(request.uri),
            reason=reason.getErrorMessage(),
        )
        self._logNow()
        # Never let a cut response look complete: reset the connection, so
        # that even a client whose response ends with the connection (HTTP/1.0,
        # or no length) sees an error rather than a short answer.
        _abortClient(request)

    # Response-body timeouts (see _RelayProducer and _BodyRelay).

    def backendActive(self) -> None:
        """
        Bytes came from the backend: its inactivity timeout starts over
        (a tunnel has its own idle timeout instead).
        """
        if not self._watching:
            return
        self._proxy.activity.add(self, self._backendStalled, self._clock.seconds())

    def clientPaused(self, paused: bool) -> None:
        """
        The client stopped (or resumed) taking the response: while it
        takes nothing, the backend is not to blame, and the send timeout
        runs instead (a tunnel has its own idle timeout instead).
        """
        self._clientPaused = paused
        if not self._watching:
            return
        now = self._clock.seconds()
        if paused:
            self._proxy.activity.remove(self)
            self._proxy.sending.add(self, self._clientStalled, now)
        else:
            self._proxy.sending.remove(self)
            self._proxy.activity.add(self, self._backendStalled, now)

    def _backendStalled(self) -> None:
        self._log.warn(
            "backend {backend} sent nothing for {timeout:g}s of the response to "
            "{method} {path}; dropping both connections",
            backend=self._backend.authority,
            timeout=self._proxy.activity.timeout,
            method=_text(self._request.method),
            path=_text(self._request.uri),
        )
        self._stopBoth("the backend stopped sending the response")

    def _clientStalled(self) -> None:
        self._log.warn(
            "client took nothing for {timeout:g}s of the response to {method} {path}; "
            "dropping both connections",
            timeout=self._proxy.sending.timeout,
            method=_text(self._request.method),
            path=_text(self._request.uri),
        )
        self._stopBoth("the client stopped reading the response")

    def _stopBoth(self, why: str) -> None:
        if self._clientGone:
            return  # _clientLost has stopped both already.
        self._record.truncated = True
        self._record.error = why
        producer, self._bodyProducer = self._bodyProducer, None
        if producer is not None:
            self._request.unregisterProducer()
            producer.stopProducing()
        self._clientGone = True
        self._finish(failed=True)
        self._logNow()
        _abortClient(self._request)

    # Tunnels.

    def _startTunnel(self, response: BackendResponse) -> None:
        request = self._request
        channel = request.channel
        tunnel = response.tunnel
        assert tunnel is not None
        self._tunnel = tunnel
        self._record.tunnelToBackend = 0
        self._record.tunnelToClient = 0
        self._tunnelOpened = self._clock.seconds()
        request.setResponseCode(101, response.phrase or b"Switching Protocols")
        lines = [b"HTTP/1.1 101 %s\r\n" % (response.phrase or b"Switching Protocols",)]
        for name, values in response.headers.getAllRawHeaders():
            for value in values:
                lines.append(b"%s: %s\r\n" % (name, value))
        upgrade = response.connectionHeaders.getRawHeaders(b"upgrade") or [b""]
        lines.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (upgrade[0],))
        request.startedWriting = True
        channel.write(b"".join(lines))
        channel.startTunnel(_CountingTunnel(self, tunnel))  # type: ignore[attr-defined]
        self._tunnelActive()
        response.deliverBody(_BodyRelay(self))

    def tunnelSent(self, count: int) -> None:
        self._backend.bytesToBackend += count
        self._record.tunnelToBackend = (self._record.tunnelToBackend or 0) + count
        self._tunnelActive()

    def _tunnelActive(self) -> None:
        self._proxy.tunnels.add(self, self._tunnelIdle, self._clock.seconds())

    def _tunnelIdle(self) -> None:
        self._log.info(
            "closing an idle tunnel to {backend} after {timeout:g}s",
            backend=self._backend.authority,
            timeout=self._proxy.tunnels.timeout,
        )
        self._record.error = "tunnel idle timeout"
        self._tunnel.loseConnection()
        self._request.channel.loseConnection()

    def _tunnelEnded(self, reason: Failure) -> None:
        self._proxy.tunnels.remove(self)
        self._record.tunnelSeconds = self._clock.seconds() - self._tunnelOpened
        failed = not reason.check(ResponseDone, PotentialDataLoss) and not self._clientGone
        self._finish(failed=failed)
        if failed and not self._record.error:
            self._record.error = "backend failed mid-tunnel"
        self._logNow()
        request = self._request
        if not self._clientGone and request.channel is not None:
            if failed:
                _abortClient(request)
            else:
                request.channel.loseConnection()


def _clientLength(method: bytes, response: BackendResponse, length: int | None) -> bytes | None:
    """
    The C{Content-Length} the client is told for C{response}, whose body is
    C{length} bytes (L{None}: not known yet), or L{None} for none.

    Framing is kept out of the response's headers. The answer to HEAD has
    no body but says how long the body of a GET would be, and so may a
    304: the backend's C{Content-Length} is relayed. A 204 has none at all
    (RFC 9110 8.6).
    """
    code = response.code
    if method == b"HEAD" or code == 304:
        connection = getattr(response, "connectionHeaders", None)
        lengths = connection.getRawHeaders(b"content-length") if connection else None
        return lengths[0] if lengths else None
    if code == 204 or length is None:
        return None
    return b"%d" % (length,)


def _abortClient(request: Request) -> None:
    channel = request.channel
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.abortConnection()


def _text(value: bytes | None) -> str:
    """
    Bytes from a request, as text for a log line.
    """
    return "-" if value is None else value.decode("latin-1")


_NOT_STREAMED = object()


def _requestBody(request: Request) -> StreamedBody | None:
    """
    The request's body: the edge's streamed body, or, for a request from
    a plain twisted.web site, its spooled content.
    """
    body: Any = getattr(request, "body", _NOT_STREAMED)
    if body is not _NOT_STREAMED:
        # The edge's request: its body streams (or it has none).
        streamed: StreamedBody | None = body
        return streamed
    content = request.content
    if content is None:
        return None
    length = content.seek(0, 2)
    content.seek(0, 0)
    headers = request.requestHeaders
    if length == 0 and not (
        headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")
    ):
        return None
    spooled = StreamedBody(length, _NoReading())
    while chunk := content.read(64 * 1024):
        spooled.received(chunk)
    spooled.receivedAll()
    return spooled


class _NoReading:
    """
    The reading control of a body that has arrived already.
    """

    def pauseReading(self, reason: str) -> None:
        pass

    def resumeReading(self, reason: str) -> None:
        pass


def _relayedControls(
    request: Request, body: StreamedBody | None
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """
    The request's control headers that go to the backend: C{Expect:
    100-continue} for a body still to come (the backend's 100 or early
    answer reaches the client), and an upgrade request (except to h2c,
    which is HTTP/2 and not relayed).

    @return: The header lines, and whether they ask for an upgrade.
    """
    headers = request.requestHeaders
    lines: list[tuple[bytes, bytes]] = []
    if body is not None and not body.complete and request.clientproto in _EXPECTING:
        expect = headers.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue":
            lines.append((b"Expect", b"100-continue"))
    upgrade = headers.getRawHeaders(b"upgrade")
    if (
        upgrade
        and request.clientproto == b"HTTP/1.1"
        and body is None
        and b"upgrade" in connectionTokens(headers)
        and upgrade[0].strip().lower() != b"h2c"
    ):
        lines += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade[0])]
        return lines, True
    return lines, False


@implementer(IPushProducer)
class _RelayProducer:
    """
    The backend's body producer, as the client side sees it: pausing it
    (the client is slow) also switches the response's timeout from the
    backend's inactivity to the client's.
    """

    def __init__(self, exchange: _Exchange, producer: IPushProducer) -> None:
        self._exchange = exchange
        self._producer = producer

    def pauseProducing(self) -> None:
        self._exchange.clientPaused(True)
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._exchange.clientPaused(False)
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class _CountingTunnel:
    """
    The backend end of a tunnel, counting what the client sends.
    """

    def __init__(self, exchange: _Exchange, tunnel: Any) -> None:
        self._exchange = exchange
        self._tunnel = tunnel

    def write(self, data: bytes) -> None:
        self._exchange.tunnelSent(len(data))
        self._tunnel.write(data)

    def registerProducer(self, producer: IPushProducer) -> None:
        self._tunnel.registerProducer(producer)

    def loseConnection(self) -> None:
        self._tunnel.loseConnection()


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
        self._exchange.backendActive()
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
