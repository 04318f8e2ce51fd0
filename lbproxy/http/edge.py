# -*- test-case-name: lbproxy.test.test_edge,lbproxy.test.test_chunks,lbproxy.test.test_streaming -*-  # noqa: E501
"""
The client-facing HTTP server: a twisted.web L{Site} whose channel parses
strictly and enforces the limits, and whose log is lbproxy's access log.

A request with a body is handed to the proxy as soon as its head has been
checked, and the body streams to the backend as it arrives
(L{lbproxy.upstream.body.StreamedBody}); nothing is spooled. The channel's reading
is paused and resumed for several reasons at once (twisted.web's own
pipelining and response backpressure, a full body buffer, a backend that
reads slowly, a tunnel), so one reason's resume never undoes another's
pause (L{_ReadGate}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import NO_BODY_CODES, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from lbproxy._twisted.httpchannel import ChannelInternals
from lbproxy._twisted.request import LeanRequest
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.checks import (
    MAX_CONTENT_LENGTH,
    PlainHead,
    Rejection,
    badRequest,
    checkFraming,
    checkHost,
    checkRequestLine,
    parsePlainHead,
)
from lbproxy.http.headers import HeaderEdits, canonicalName, connectionTokens
from lbproxy.http.requestid import RequestIdSettings, assignRequestId, newRequestId
from lbproxy.upstream.body import StreamedBody

DEFAULT_MAX_BODY = 100 * 1024 * 1024


@attrs.frozen
class EdgeLimits:
    """
    What a client may send and how long it may take.

    @ivar maxBodySize: The largest request body, in bytes (413 above); 0
        for no limit.
    @ivar maxTarget: The longest request-target, in bytes (414 above).
    @ivar maxHeaderBytes: The largest header section, in bytes (431 above).
    @ivar maxFields: The most header fields (431 above).
    @ivar headerTimeout: Seconds to receive a whole request head once it
        has started (408 after; the slowloris defence).
    @ivar bodyTimeout: Seconds a request body may make no progress (408
        after, or 504 when it is the backend that takes nothing).
    @ivar idleTimeout: Seconds a keep-alive connection may sit idle.
    @ivar maxConnections: Client connections open at once; more are
        answered 503 and closed at once.
    """

    maxBodySize: int = DEFAULT_MAX_BODY
    maxTarget: int = 8 * 1024
    maxHeaderBytes: int = 64 * 1024
    maxFields: int = 100
    headerTimeout: float = 10.0
    bodyTimeout: float = 30.0
    idleTimeout: float = 60.0
    maxConnections: int = 10_000


_TOO_LARGE = Rejection(
    413, "Content Too Large", "The request body is larger than this proxy accepts."
)


class ProxyRequest(LeanRequest):
    """
    A request whose body streams to the proxy as it arrives (L{body})
    instead of being spooled into C{content}; the request is handed to the
    site's resource as soon as its head has been checked. A body that
    passes the site's limit is answered 413 and the connection closed.

    @ivar body: The request body on its way, or L{None} for a request
        without one (C{content} is then an empty file, as twisted.web has
        it).
    """

    _received = 0
    rejected = False
    body: StreamedBody | None = None
    onConnectionLost: Callable[[Failure], object] | None = None
    """
    Called, instead of a C{notifyFinish} errback, if the client connection
    is lost before the response is finished (the proxy sets it: one
    Deferred fewer per request).
    """
    onAbandon: Callable[[], object] | None = None
    """
    Called if the edge gives up on the request before the response is
    finished (its body was too large or stalled): the proxy stops the
    exchange and writes nothing more; the edge answers.
    """
    requestId: bytes | None = None
    """
    The request's ID (see L{lbproxy.http.requestid}), once it is handed to
    the site's resource; L{None} with request IDs off.
    """
    receivedAt: float | None = None
    """
    When the request was handed to the site's resource (its head read), by
    the site's reactor, for the access log's duration.
    """

    def gotLength(self, length: int | None) -> None:
        """
        A request with a body streams it (L{body}); one without gets
        twisted.web's empty C{content}.
        """
        if length == 0:
            super().gotLength(length)
            return
        self.content = None
        channel: ProxyChannel = self.channel  # type: ignore[assignment]
        self.body = StreamedBody(length, channel)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        A request without a body has arrived whole: hand it to the resource
        (twisted.web's C{requestReceived}, without parsing the query string
        into C{args}: the proxy relays the target as it came, and nothing
        reads C{args}).
        """
        self._takeRequestLine(command, path, version)
        self.process()

    def _takeRequestLine(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri = command, path
        self.clientproto = version
        self.args = {}
        self.path = path.split(b"?", 1)[0]

    def dispatch(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Hand the request to the resource now, while its body is still
        arriving (twisted.web's C{requestReceived} without the spooled
        body's form parsing).
        """
        self._takeRequestLine(command, path, version)
        # When the whole request has arrived, twisted.web calls
        # requestReceived: for this request that only completes the body.
        # (An attribute of this request alone, so that the many requests
        # without a body pay for no override.)
        self.requestReceived = self._bodyReceived  # type: ignore[method-assign]
        self.process()

    def _bodyReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole request has arrived, its streamed body complete.
        """
        if not self.finished and self.body is not None:
            self.body.receivedAll()

    def abandon(self) -> None:
        """
        Stop the proxy's work on this request (see L{onAbandon}).
        """
        self.onConnectionLost = None
        onAbandon, self.onAbandon = self.onAbandon, None
        if onAbandon is not None:
            onAbandon()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        onConnectionLost, self.onConnectionLost = self.onConnectionLost, None
        # The proxy's hooks hold this request (a cycle): let go of them.
        self.onAbandon = None
        self.__dict__.pop("requestReceived", None)
        if onConnectionLost is not None and not self.finished:
            onConnectionLost(reason)

    def finish(self) -> None:
        self._dropHooks()
        super().finish()

    def _dropHooks(self) -> None:
        # The hooks are the proxy's bound methods, which hold this request:
        # dropping them when it finishes leaves no reference cycle, so a
        # finished request is freed at once, not by the cyclic collector.
        self.onConnectionLost = None
        self.onAbandon = None
        self.__dict__.pop("requestReceived", None)  # (see dispatch)

    def process(self) -> None:
        """
        Hand the request to the site's one resource: no traversal, no
        C{postpath} unquoting and no Server header (the backend's answer
        brings its own headers; the proxy's own answers set theirs).
        """
        site: ProxySite = self.channel.site  # type: ignore[attr-defined]
        self.site = site
        self.prepath = []
        self.postpath = []
        now = self.receivedAt = site.reactor.seconds()
        # The proxy's own response headers, as lines until a Headers is
        # needed (a response written whole needs none):
        self.presetHeader(b"Date", site.dateHeader(now))
        requestIds = site.requestIds
        if requestIds is not None and requestIds.enabled:
            requestId = self.requestId = assignRequestId(
                self.requestHeaders,
                None,
                getattr(self.getClientAddress(), "host", None),
                requestIds,
            )
            self.presetHeader(canonicalName(requestIds.header), requestId)
        try:
            self.render(site.resource)
        except BaseException:  # noqa: BLE001 - as twisted.web does: answer 500, log
            self.processingFailed(Failure())

    wholeResponses = True
    """
    Whether the proxy may answer with L{respondWhole} (the edge's requests,
    HTTP/1.x and HTTP/2, may; a plain twisted.web request has no such
    attribute and gets the streamed relay; tests turn it off to compare).
    """

    def respondWhole(
        self,
        code: int,
        phrase: bytes,
        lines: list[tuple[bytes, bytes]],
        body: bytes,
        edits: HeaderEdits | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
        names: frozenset[bytes] | None = None,
    ) -> None:
        """
        Send a whole response and finish: the status, the relayed header
        C{lines} (which replace this request's own response headers of the
        same names, such as C{Date}) and C{body}, in one write, without
        copying the lines into C{responseHeaders}.

        @param lines: Header lines, framing included: C{Content-Length}
            where the response has one.
        @param edits: A route's changes to the response's headers (its own
            and the relayed ones), made before C{extra} is added.
        @param extra: Header lines added last (a sticky chooser's cookie).
        @param names: The lower-cased names of C{lines}, if known (framing
            headers aside: the proxy's own never count).
        """
        self.code = code
        self.code_message = phrase
        self.startedWriting = 1
        if names is None:
            names = frozenset(name.lower() for name, _ in lines)
        preset = self.takePresetLines()
        if preset is None:
            preset = [
                (name, value)
                for name, values in self.responseHeaders.getAllRawHeaders()
                for value in values
            ]
        own = [
            line
            for line in preset
            if (lower := line[0].lower()) not in names and lower not in _FRAMING
        ]
        if self.method == b"HEAD" or code in NO_BODY_CODES:
            body = b""
        self.sentLength = len(body)
        head = own + lines
        if edits is not None:
            head = edits.applyToLines(head)
        if extra:
            head.extend(extra)
        channel: ProxyChannel = self.channel  # type: ignore[assignment]
        channel.writeWholeResponse(self.clientproto, code, phrase, head, body)
        self._dropHooks()
        if not self.finishWritten():
            self.finish()

    def write(self, data: bytes) -> None:
        """
        Write response data; the first write sends the response head and
        C{data} in one transport write (one C{send} for a small answer).
        """
        if self.startedWriting or not data:
            super().write(data)
            return
        channel: ProxyChannel = self.channel  # type: ignore[assignment]
        channel.holdHead()
        try:
            super().write(data)
        finally:
            channel.releaseHead()

    def handleContentChunk(self, data: bytes) -> None:
        if self.rejected or self.finished:
            return
        self._received += len(data)
        channel: ProxyChannel = self.channel  # type: ignore[assignment]
        limit = channel.site.limits.maxBodySize
        if limit and self._received > limit:
            self.rejected = True
            channel.abandonRequest(_TOO_LARGE)
            return
        channel.bodyProgress()
        if self.body is not None:
            self.body.received(data)
        else:
            super().handleContentChunk(data)


@implementer(IPushProducer)
class _ReadGate:
    """
    Reading from the client's socket, paused while any reason holds it:
    twisted.web's own (C{"channel"}, through the C{IPushProducer} calls it
    makes on what it takes for the transport) and lbproxy's (a full body
    buffer, a slow backend, a tunnel's backend).
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._transport.resumeProducing()

    def isPausedFor(self, reason: str) -> bool:
        return reason in self._reasons

    def release(self) -> None:
        """
        Read again, whatever held reading back (the connection is closing
        and what still arrives is read only to be discarded).
        """
        if self._reasons:
            self._reasons.clear()
            self._transport.resumeProducing()

    # What twisted.web's HTTPChannel calls on its "network producer".

    def pauseProducing(self) -> None:
        self.pause("channel")

    def resumeProducing(self) -> None:
        self.resume("channel")

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


@implementer(IPushProducer)
class _PauseFor:
    """
    A producer for another transport (a backend's) that pauses the
    client's reading for one reason.
    """

    def __init__(self, gate: _ReadGate, reason: str) -> None:
        self._gate = gate
        self._reason = reason

    def pauseProducing(self) -> None:
        self._gate.pause(self._reason)

    def resumeProducing(self) -> None:
        self._gate.resume(self._reason)

    def stopProducing(self) -> None:
        self._gate.resume(self._reason)


LINGER = 5.0
"""
Seconds a connection answered before the client finished sending its body
is kept half-open, reading and discarding, so that the answer is not lost
to a reset (nginx's C{lingering_timeout}).
"""


@implementer(IHalfCloseableProtocol)
class ProxyChannel(ChannelInternals):
    """
    twisted.web's HTTP channel, stricter: it checks the request line, Host,
    framing headers and sizes before twisted.web acts on them (see
    L{lbproxy.http.checks}), times out a request head that arrives too
    slowly, and refuses oversized bodies before reading them. Every refusal
    is a short answer of the proxy's own, an access log line, and the end
    of the connection: nothing more it sent is parsed.

    A connection closed while the client is still sending a body (refused,
    or answered early by the backend) is closed for writing first and read
    to its end, for up to L{LINGER} seconds, so that the client reads the
    answer instead of a reset. A client that half-closes its connection
    after a request still gets its answer.
    """

    site: ProxySite
    _log = Logger()
    _rejected = False
    _busy = False
    _phase = "line"
    _headerBytes = 0
    _fields = 0
    _lastByte = b""
    _headerTimer: IDelayedCall | None = None
    _bodyTimer: IDelayedCall | None = None
    _requestLine: bytes = b""
    _discardBody = False
    _lingerTimer: IDelayedCall | None = None
    _readClosed = False
    _tunnel: Any = None
    _gate: _ReadGate

    _peer: Any = None
    _host: Any = None

    def getPeer(self) -> Any:
        """
        The client's address, asked of the transport once (each request
        asks for it; the transport makes a new address object each time).
        """
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def getHost(self) -> Any:
        """
        The address the client connected to, asked of the transport once.
        """
        if self._host is None:
            self._host = super().getHost()
        return self._host

    _secure: bool | None = None

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS, asked of the transport once (by
        adaptation, which each request would otherwise pay for).
        """
        if self._secure is None:
            if self.transport is None:
                return False
            self._secure = bool(super().isSecure())
        return self._secure

    def connectionMade(self) -> None:
        limits = self.site.limits
        # twisted.web's own limits sit above ours, so ours answer first.
        self.MAX_LENGTH = limits.maxHeaderBytes + limits.maxTarget + 1024
        self.totalHeadersSize = self.MAX_LENGTH
        self.maxHeaders = limits.maxFields + 1
        super().connectionMade()
        # twisted.web pauses and resumes its "network producer"; so do we,
        # for reasons of our own: one gate keeps them apart.
        self.wrapNetworkProducer(self._makeGate)
        self.site.channelOpened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopHeaderTimer()
        self._stopBodyTimer()
        if self._lingerTimer is not None and self._lingerTimer.active():
            self._lingerTimer.cancel()
        self._lingerTimer = None
        super().connectionLost(reason)
        # Requests (and their bodies, which read through this channel)
        # would otherwise hold it in a cycle after a client left mid-request.
        self.requests = []
        self.forgetRequest()
        self.site.channelClosed(self)

    # Closing.

    def loseConnection(self) -> None:
        """
        Close the connection once what was written has been sent; while the
        client is still sending a request body, close for writing only and
        discard what still arrives (see L{LINGER}).
        """
        if (
            self._phase == "body"
            and not self._readClosed
            and self._tunnel is None
            and self.bodyMayFollow()
        ):
            self._lingeringClose()
            return
        super().loseConnection()

    def _lingeringClose(self) -> None:
        transport: Any = self.transport
        if self._lingerTimer is not None or transport is None:
            return
        if not hasattr(transport, "loseWriteConnection"):
            super().loseConnection()
            return
        self._discardBody = True
        self._stopBodyTimer()
        self.setTimeout(None)
        self._gate.release()
        if self.isSecure():
            # TLS has no half-close: keep reading (and discarding) until the
            # client, told Connection: close, closes; close after LINGER.
            self._lingerTimer = self.callLater(LINGER, self._endLinger)
            return
        self._lingerTimer = self.callLater(LINGER, transport.abortConnection)
        transport.loseWriteConnection()

    def _endLinger(self) -> None:
        """
        The lingering close of a TLS connection is over: close it, as
        twisted.web closes a channel (the channel stops being the TLS
        transport's producer first; while it is one, TLS waits for it and
        never closes).
        """
        self._lingerTimer = None
        super().loseConnection()

    def readConnectionLost(self) -> None:
        """
        The client closed its side. After a whole request that said it
        would be the last (C{Connection: close}, or HTTP/1.0), that is a
        half-close: the answer still goes out, then the connection closes.
        Otherwise the client is gone (a request in progress is given up on
        and logged as such).
        """
        self._readClosed = True
        halfClose = bool(self.requests) and self._phase == "line" and not self.persistent
        self.persistent = False
        if self._lingerTimer is not None or not halfClose:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our side is closed (a lingering close): wait for the client's.
        """

    def _makeGate(self, producer: Any) -> _ReadGate:
        self._gate = _ReadGate(producer)
        return self._gate

    # Reading control (see lbproxy.upstream.body.ReadingControl).

    def pauseReading(self, reason: str) -> None:
        """
        Stop reading from the client until L{resumeReading} with the same
        C{reason} (and every other reason's resume).
        """
        self._gate.pause(reason)

    def resumeReading(self, reason: str) -> None:
        """
        Lift the pause for C{reason}.
        """
        self._gate.resume(reason)

    # Tunnels (after a 101 answer).

    def startTunnel(self, toBackend: Any) -> None:
        """
        From now on every byte from the client goes to C{toBackend} (a
        L{lbproxy.upstream.connection.BackendTunnel}), which pauses the client's
        reading while the backend cannot take more; what the client sent
        after the upgrade request goes first.
        """
        self._tunnel = toBackend
        self._stopHeaderTimer()
        self._stopBodyTimer()
        self.setTimeout(None)
        pending = self.takeUnreadInput()
        toBackend.registerProducer(_PauseFor(self._gate, "tunnel"))
        self.resumeReading("channel")
        if pending:
            toBackend.write(pending)

    def writeInterim(self, code: int, phrase: bytes, lines: Any) -> None:
        """
        Send an interim (1xx) response with the given header lines ahead
        of the final one.
        """
        head = [b"HTTP/1.1 %d %s\r\n" % (code, phrase or http.RESPONSES.get(code, b""))]
        for name, value in lines:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"\r\n")
        assert self.transport is not None
        self.transport.write(b"".join(head))

    def continueExpected(self) -> None:
        """
        The backend decides: Expect is relayed, and its 100 Continue (or its
        early final answer) reaches the client.
        """

    # Request bodies.

    def bodyProgress(self) -> None:
        """
        Some of the request body arrived: the body timer starts again.
        """
        if self._bodyTimer is not None:
            self._bodyTimer.reset(self.site.limits.bodyTimeout)

    def _stopBodyTimer(self) -> None:
        if self._bodyTimer is not None:
            if self._bodyTimer.active():
                self._bodyTimer.cancel()
            self._bodyTimer = None

    def _bodyTimedOut(self) -> None:
        self._bodyTimer = None
        if self._gate.isPausedFor("backend"):
            rejection = Rejection(
                504, "Gateway Timeout", "the backend did not take the request body in time"
            )
        else:
            rejection = Rejection(408, "Request Timeout", "the request body did not arrive in time")
        self.abandonRequest(rejection)

    def abandonRequest(self, rejection: Rejection) -> None:
        """
        Give up on the request whose body is arriving: the proxy stops
        (its backend connection is dropped), the client gets C{rejection}
        if no response has started, or a reset connection if one has.
        """
        self._stopBodyTimer()
        request = self.requests[-1] if self.requests else None
        if isinstance(request, ProxyRequest):
            request.abandon()
            if request.startedWriting:
                self._rejected = True
                self._log.warn(
                    "{code} {message}; dropping the connection mid-response",
                    code=rejection.code,
                    message=rejection.message,
                )
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
        self.reject(rejection)

    def drain(self) -> None:
        """
        Close this connection as soon as it has no request in progress:
        now if it is idle, otherwise after the current responses (which say
        C{Connection: close}); nothing further is read from it.
        """
        self.persistent = False
        if not self.requests:
            self.loseConnection()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self._phase == "body":
            # Answered before the request body ended: the rest of the body
            # cannot be told from a next request, so the connection closes.
            self.persistent = False
        if not self.persistent:
            headers.setRawHeaders(b"Connection", [b"close"])
        if self.site.hsts is not None and self.isSecure():
            headers.setRawHeaders(b"Strict-Transport-Security", [self.site.hsts])
        # As twisted.web writes a head, from the request's Headers; held
        # back while the first body data is on its way (see holdHead).
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        head = b"".join(lines)
        if self._holdingHead:
            self._heldHead = head
        else:
            assert self.transport is not None
            self.transport.write(head)

    def writeWholeResponse(
        self,
        version: bytes,
        code: int,
        reason: bytes,
        lines: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """
        Write a whole response, head and C{body}, in one write: what
        L{writeHeaders} and the body's writes send, from header lines
        rather than a L{Headers} (see L{ProxyRequest.respondWhole}).
        """
        if self._phase == "body":
            self.persistent = False  # (as in writeHeaders)
        replaced: frozenset[bytes] = frozenset()
        extra = []
        if not self.persistent:
            replaced = _CONNECTION
            extra.append(b"Connection: close\r\n")
        hsts = self.site.hsts
        if hsts is not None and self.isSecure():
            replaced = replaced | _STS
            extra.append(b"Strict-Transport-Security: %s\r\n" % (hsts,))
        parts = [b"%s %d %s\r\n" % (version, code, reason)]
        if replaced:
            lines = [(name, value) for name, value in lines if name.lower() not in replaced]
        parts += [b"%s: %s\r\n" % line for line in lines]
        parts.extend(extra)
        parts.append(b"\r\n")
        parts.append(body)
        assert self.transport is not None
        self.transport.write(b"".join(parts))

    # Writing the response head together with the first data.

    _holdingHead = False
    _heldHead: bytes | None = None

    def holdHead(self) -> None:
        """
        Keep the next response head back until the next write, which sends
        both at once (see L{ProxyRequest.write}).
        """
        self._holdingHead = True

    def releaseHead(self) -> None:
        """
        Stop holding response heads; send one still held.
        """
        self._holdingHead = False
        if self._heldHead is not None:
            held, self._heldHead = self._heldHead, None
            assert self.transport is not None
            self.transport.write(held)

    def write(self, data: bytes) -> None:
        if self._heldHead is not None:
            data, self._heldHead = self._heldHead + data, None
        assert self.transport is not None
        self.transport.write(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        if self._heldHead is not None:
            iovec, self._heldHead = [self._heldHead, *iovec], None
        assert self.transport is not None
        self.transport.writeSequence(iovec)

    # Reading the request head.

    fastHeads = True
    """
    Whether a plain request head that arrives whole on an idle connection
    is parsed in one pass (L{_receivePlainHead}) rather than line by line.
    Either way the request and the answer are the same; tests and
    benchmarks turn it off to compare the two.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._rejected or self._lingerTimer is not None:
            return
        if not self._busy and self._phase != "body" and data:
            if self.fastHeads and self._receivePlainHead(data):
                return
            self._startHeaderTimer()
            window = self._lastByte + data
            end = window.find(b"\r\n\r\n")
            if _bareLF(window if end < 0 else window[: end + 4]):
                self.reject(badRequest("line ending without CR"))
                return
            # A CR that a LF may complete in the next data; a LF ends a line.
            self._lastByte = b"\r" if data.endswith(b"\r") else b""
        super().dataReceived(data)

    def _receivePlainHead(self, data: bytes) -> bool:
        """
        Take a whole plain request head (see L{parsePlainHead}) at the
        start of C{data} in one pass, if nothing of an earlier head is
        pending, and hand the request over as twisted.web's line by line
        path would; what follows the head is read as that path reads it.

        @return: Whether the head was taken; if not, nothing has changed.
        """
        # Nothing of an earlier head or request pending, and not inside
        # LineReceiver's own loop:
        if (
            self._lastByte
            or self._headerTimer is not None
            or self._phase != "line"
            or self.paused
            or not self.persistent
            or not self.canTakeWholeHead()
        ):
            return False
        end = data.find(b"\r\n\r\n")
        # Within both of twisted.web's limits: the longest line and the
        # total of the request line and the header lines.
        if end < 0 or end + 4 > min(self.MAX_LENGTH, self.totalHeadersSize):
            return False
        limits = self.site.limits
        head = parsePlainHead(
            data[: end + 2],
            limits.maxTarget,
            limits.maxHeaderBytes,
            min(limits.maxFields, self.maxHeaders),
        )
        if head is None:
            return False
        self._handOver(head, data[end + 4 :])
        return True

    def _handOver(self, head: PlainHead, rest: bytes) -> None:
        """
        Make the request for C{head} and hand it to the site, leaving this
        channel as twisted.web's C{lineReceived}, C{allHeadersReceived} and
        C{allContentReceived} (and ours) leave it after a bodiless request;
        then read C{rest} as C{LineReceiver.dataReceived} would read what
        follows the head in the same data.
        """
        # lineReceived, for the request line and the end of the head:
        request = self.requestFactory(self, len(self.requests))
        request.requestHeaders = head.headers
        self.requests.append(request)
        self._requestLine = head.requestLine
        # allHeadersReceived, with no body to wait for (cookies are parsed
        # when read, see LeanRequest):
        self.persistent = self.checkPersistence(request, head.version)
        # allContentReceived: what follows waits until this request is done;
        # the idle timer runs on (see timeoutConnection) and requestDone
        # pushes it back.
        self._busy = True
        self.handOver(
            request, rest, lambda: request.requestReceived(head.method, head.target, head.version)
        )

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        limits = self.site.limits
        if self._phase == "line":
            if not line:
                # twisted.web tolerates one empty line before a request.
                super().lineReceived(line)
                return
            self._startHeaderTimer()
            rejection = checkRequestLine(line, limits.maxTarget)
            if rejection is not None:
                self.reject(rejection, line)
                return
            self._requestLine = line
            self._phase = "headers"
            self._headerBytes = self._fields = 0
        elif self._phase == "headers" and line:
            if line[:1] in (b" ", b"\t"):
                self.reject(badRequest("obsolete line folding in a header"))
                return
            self._headerBytes += len(line) + 2
            self._fields += 1
            if self._headerBytes > limits.maxHeaderBytes or self._fields > limits.maxFields:
                self.reject(
                    Rejection(
                        431,
                        "Request Header Fields Too Large",
                        f"more than {limits.maxFields} header fields "
                        f"or {limits.maxHeaderBytes} bytes of headers",
                    )
                )
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._phase == "line":
            self.reject(Rejection(414, "URI Too Long", "request line too long"))
        else:
            self.reject(Rejection(431, "Request Header Fields Too Large", "header too long"))

    def allHeadersReceived(self) -> None:
        self._stopHeaderTimer()
        self._phase = "body"
        request = self.requests[-1]
        headers = request.requestHeaders
        rejection = checkHost(
            headers.getRawHeaders(b"host", []), self.requestVersion()
        ) or checkFraming(
            headers.getRawHeaders(b"content-length", []),
            headers.getRawHeaders(b"transfer-encoding", []),
        )
        if rejection is not None:
            self.reject(rejection)
            return
        limit = self.site.limits.maxBodySize
        if limit and self.length is not None and self.length > limit:
            request.rejected = True
            self.reject(_TOO_LARGE)
            return
        self.boundChunkSizes(MAX_CONTENT_LENGTH)
        super().allHeadersReceived()
        if self.length != 0 and not self._rejected:
            # A body follows: hand the request over now and stream it.
            self._bodyTimer = self.callLater(self.site.limits.bodyTimeout, self._bodyTimedOut)
            request.dispatch(*self.requestLine())

    def rawDataReceived(self, data: bytes) -> None:
        if not self._rejected and not self._discardBody:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._stopBodyTimer()
        if self._rejected or self._discardBody:
            return
        self._busy = True
        self._phase = "line"
        self._lastByte = b""
        super().allContentReceived()

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        """
        twisted.web's rule (HTTP/1.1 persists unless it says C{close};
        HTTP/1.0 never), reading every C{Connection} line and token
        (twisted.web reads the first line only, split on spaces).
        """
        tokens = connectionTokens(request.requestHeaders)
        if version == b"HTTP/1.1" and b"close" not in tokens:
            return True
        if version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def requestDone(self, request: Request) -> None:
        self._busy = False
        if self._phase == "body":
            # Answered before the body ended (see writeHeaders): the rest of
            # it is not read; the connection closes.
            self._discardBody = True
            self._stopBodyTimer()
        super().requestDone(request)
        if not self.idleTimerSuspended():
            # The idle timer ran on during the request: idle from now, or
            # no timer at all once the connection is closing.
            if self.persistent:
                self.resetTimeout()
            else:
                self.setTimeout(None)

    def timeoutConnection(self) -> None:
        if self.requests:
            # Not idle: a request is in progress (the idle timer runs on
            # while requests taken in one pass are handled). Wait again.
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def malformedRequest(self) -> None:
        """
        twisted.web's own refusals (bad header syntax, CL+TE and the like)
        get the same answer, log line and closing as ours.
        """
        self.reject(badRequest("malformed request"))

    # Timeouts.

    def _startHeaderTimer(self) -> None:
        if self._headerTimer is None:
            self._headerTimer = self.callLater(self.site.limits.headerTimeout, self._headerTimedOut)

    def _stopHeaderTimer(self) -> None:
        if self._headerTimer is not None:
            if self._headerTimer.active():
                self._headerTimer.cancel()
            self._headerTimer = None

    def _headerTimedOut(self) -> None:
        self._headerTimer = None
        self.reject(Rejection(408, "Request Timeout", "the request head did not arrive in time"))

    # Refusing.

    def reject(self, rejection: Rejection, requestLine: bytes | None = None) -> None:
        """
        Answer with C{rejection} before the request reaches the proxy, log
        it, and close the connection; nothing more of it is parsed.
        """
        if self._rejected:
            return
        self._rejected = True
        self._stopHeaderTimer()
        for request in self.requests:
            if isinstance(request, ProxyRequest):
                # Already handed to the proxy (its body was arriving): stop
                # that exchange; this answer is the request's only one.
                request.abandon()
        body = f"{rejection.code} {rejection.reason}: {rejection.message}\n".encode()
        assert self.transport is not None
        self.site.countRejection(self.transport, rejection.code)
        # A refused request gets a new ID: what it brought was not read, or
        # not believed.
        requestIds = self.site.requestIds
        requestId = None
        idLine = b""
        if requestIds is not None and requestIds.enabled:
            requestId = newRequestId()
            idLine = b"%s: %s\r\n" % (requestIds.header, requestId)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n%s"
            % (rejection.code, rejection.reason.encode("ascii"), len(body), idLine, body)
        )
        line = requestLine if requestLine is not None else self._requestLine
        method, _, rest = line.partition(b" ")
        target, _, version = rest.rpartition(b" ") if b" " in rest else (rest, b"", b"")
        self.site.accessLog.logRejected(
            self.transport.getPeer(),
            method[:32] or None,
            target[:1024] or None,
            version[:16] or None,
            rejection.code,
            len(body),
            rejection.message,
            requestId=requestId,
            transport=self.transport,
        )
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.loseConnection()


_CONNECTION = frozenset({b"connection"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_STS = frozenset({b"strict-transport-security"})


def _bareLF(data: bytes) -> bool:
    """
    Whether C{data} has a line feed not preceded by a carriage return.
    """
    return data.count(b"\n") != data.count(b"\r\n")


def listenerKey(transport: Any) -> object:
    """
    What tells a connection's listener apart: the local address and port
    (or socket path) it was accepted on, read from C{transport.getHost()}.
    A listening port gives its own the same way; one bound to every address
    (C{0.0.0.0}, C{::}) is matched by port alone (see
    L{lbproxy.metrics.collector}).
    """
    address = transport.getHost()
    port = getattr(address, "port", None)
    if port is None:
        return getattr(address, "name", None)
    return (getattr(address, "host", ""), port)


class _Overloaded(Protocol):
    """
    Answers a connection beyond C{--max-connections} with 503 and closes
    it, so that the client knows why.
    """

    def connectionMade(self) -> None:
        body = b"503 Service Unavailable: too many connections\n"
        assert self.transport is not None
        factory = getattr(self, "factory", None)
        if isinstance(factory, ProxySite):
            factory.countRejection(self.transport, 503)
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        self.transport.loseConnection()


class ProxySite(Site):
    """
    The proxy's site: L{ProxyChannel}s making L{ProxyRequest}s, an access
    log of lbproxy's own, no sessions.

    @ivar limits: What clients may send (see L{EdgeLimits}).
    @ivar accessLog: Where access log lines go.
    @ivar hsts: The C{Strict-Transport-Security} value set on every
        response over TLS (replacing a backend's), or L{None} for none.
    @ivar requestIds: How requests get IDs; L{None} for none.
    """

    _log = Logger()
    protocol = ProxyChannel  # type: ignore[assignment]
    requestFactory = ProxyRequest  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False
    hsts: bytes | None = None
    requestIds: RequestIdSettings | None = None

    def __init__(
        self,
        resource: IResource,
        accessLog: AccessLog,
        limits: EdgeLimits | None = None,
        **kwargs: Any,
    ) -> None:
        self.limits = limits if limits is not None else EdgeLimits()
        kwargs.setdefault("timeout", self.limits.idleTimeout)
        super().__init__(resource, **kwargs)
        self.accessLog = accessLog
        self.channels: set[ProxyChannel] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []
        self.rejections: dict[tuple[object, int], int] = {}

    def countRejection(self, transport: Any, status: int) -> None:
        """
        Count a request (or connection) refused at the edge with C{status},
        by the listener it came to (L{listenerKey} of C{transport}).
        """
        key = (listenerKey(transport), status)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    _date = (-1, b"")

    def dateHeader(self, now: float | None = None) -> bytes:
        """
        The C{Date} header value for now (or C{now}, the reactor's time),
        formatted once per second.
        """
        second = int(self.reactor.seconds() if now is None else now)
        if self._date[0] != second:
            self._date = (second, datetimeToString(second))
        return self._date[1]

    def buildProtocol(self, addr: Any) -> Any:
        """
        A channel for a new client connection, or a 503 answer when
        C{limits.maxConnections} are already open.
        """
        if len(self.channels) >= self.limits.maxConnections:
            self._log.warn(
                "refusing a connection: {count} are open (--max-connections)",
                count=len(self.channels),
            )
            overloaded = _Overloaded()
            overloaded.factory = self
            return overloaded
        return super().buildProtocol(addr)

    def channelOpened(self, channel: ProxyChannel) -> None:
        """
        Track an open client connection; while draining, close it at once.
        """
        self.channels.add(channel)
        if self.draining:
            channel.drain()

    def channelClosed(self, channel: ProxyChannel) -> None:
        """
        Forget a closed client connection.
        """
        self.channels.discard(channel)
        if self.draining and not self.channels:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Close idle client connections now and busy ones when their current
        responses are done; after C{timeout} seconds abort what is left.

        @return: Fires when every client connection is closed.
        """
        self.draining = True
        done: Deferred[None] = Deferred()
        if not self.channels:
            done.callback(None)
            return done
        self._drained.append(done)
        for channel in list(self.channels):
            channel.drain()
        if not self.channels:
            return done
        self._log.info(
            "draining {count} client connections (up to {timeout:g}s)",
            count=len(self.channels),
            timeout=timeout,
        )

        def abortRest() -> None:
            if self.channels:
                self._log.warn(
                    "drain timeout: aborting {count} client connections",
                    count=len(self.channels),
                )
            for channel in list(self.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()  # type: ignore[attr-defined]

        timer = self.reactor.callLater(timeout, abortRest)
        done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return done

    def log(self, request: Request) -> None:  # type: ignore[override]
        """
        Write the access log line for a finished request.
        """
        self.accessLog.logRequest(request)

    def startFactory(self) -> None:
        """
        Nothing to open: the access log is opened by its owner.
        """

    def stopFactory(self) -> None:
        """
        Nothing to close: the access log is closed by its owner.
        """
