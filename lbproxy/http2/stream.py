# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
One HTTP/2 stream as the edge's request sees a channel.

An L{H2Stream} is to its L{H2Request} what L{lbproxy.http.edge.ProxyChannel}
is to a L{lbproxy.http.edge.ProxyRequest}: it hands the request to the
site's resource once its head is checked, streams the request body to it
(acknowledging flow-controlled bytes only while nothing holds reading
back, so that a backend slow to take a body closes that stream's window
and no other's), and takes the response: its head, its data (sent within
the stream's and the connection's windows; past L{HTTP2Settings.streamBuffer
<lbproxy.http2.settings.HTTP2Settings.streamBuffer>} bytes waiting, the
producer feeding it, the backend's body, is paused) and its end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from lbproxy.http.checks import Rejection
from lbproxy.http.edge import ProxyRequest
from lbproxy.http.requestid import newRequestId
from lbproxy.http2.head import CONNECTION_SPECIFIC, H2Head
from lbproxy.proxy import ProxyRecord, proxyRecordOf, setProxyRecord

if TYPE_CHECKING:
    from lbproxy.http.edge import ProxySite
    from lbproxy.http2.connection import H2EdgeConnection

_VERSION = b"HTTP/2"

EARLY_RESET_DELAY = 1.0
"""
Seconds a stream answered before its request ended waits, its window shut,
for the client to read the answer before it is reset (NO_ERROR, RFC 9113
8.1), unless the client ends the request first.
"""

# Response fields that mean nothing (or harm) in HTTP/2 (RFC 9113 8.2.2).
_HOP_BY_HOP = CONNECTION_SPECIFIC | {b"te"}
_STS = b"strict-transport-security"


class H2Request(ProxyRequest):
    """
    The edge's request, over an HTTP/2 stream: everything the proxy and
    the access log use is the HTTP/1.1 request's; only its channel (an
    L{H2Stream}) differs, and its protocol is C{HTTP/2}.
    """

    clientproto = _VERSION


class _StreamTransport:
    """
    What a request takes for its connection's transport: the stream's own
    end (aborting it resets the stream, not the connection), and the
    connection's addresses and TLS handle (for the access log).
    """

    def __init__(self, stream: H2Stream) -> None:
        self._stream = stream
        self._transport = stream.connection.transport

    def abortConnection(self) -> None:
        self._stream.reset(ErrorCodes.INTERNAL_ERROR)

    def loseConnection(self) -> None:
        self._stream.reset(ErrorCodes.CANCEL)

    def getPeer(self) -> Any:
        return self._stream.connection.addresses()[0]

    def getHost(self) -> Any:
        return self._stream.connection.addresses()[1]

    def getHandle(self) -> Any:
        getHandle = getattr(self._transport, "getHandle", None)
        return getHandle() if getHandle is not None else None


class H2Stream:
    """
    One stream of an L{H2EdgeConnection}: the channel of one L{H2Request}.

    @ivar streamId: The stream's ID.
    @ivar request: The request once handed to the site's resource.
    @ivar ended: Whether the client has sent all of its request.
    @ivar closed: Whether the stream is over (nothing more is sent).
    """

    request: H2Request | None = None
    ended = False
    closed = False
    _bodyTimer: IDelayedCall | None = None
    _earlyReset: IDelayedCall | None = None
    _producer: IPushProducer | None = None
    _producerPaused = False
    _holding = False
    _finished = False
    _endSent = False
    _unacked = 0
    _earlyAcks = 0
    _head: list[tuple[bytes, bytes]] | None = None
    _headSent = False
    _offset = 0
    _outBytes = 0
    _waitingSince: float | None = None
    _trailers: list[tuple[bytes, bytes]] | None = None

    def __init__(self, connection: H2EdgeConnection, streamId: int, head: H2Head) -> None:
        self.connection = connection
        self.streamId = streamId
        self.head = head
        self.site: ProxySite = connection.site
        self.factory = self.site
        self.transport = _StreamTransport(self)
        self._early: list[bytes] = []
        self._pausedFor: set[str] = set()
        self._out: deque[bytes] = deque()

    # What twisted.web's Request asks of its channel.

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return self.connection.isSecure()

    # Receiving the request.

    def dispatch(self) -> None:
        """
        Hand the request to the site's resource, with what of its body has
        arrived so far; a request whose body ended already has its length.
        """
        head = self.head
        length = head.contentLength
        if length is None and self.ended:
            length = sum(len(data) for data in self._early)
        limits = self.site.limits
        if limits.maxBodySize and length is not None and length > limits.maxBodySize:
            self.answer(
                Rejection(
                    413, "Content Too Large", "The request body is larger than this proxy accepts."
                )
            )
            return
        request = H2Request(self, queued=False)
        request.requestHeaders = head.headers
        self.request = request
        request.gotLength(length)
        if not self.ended:
            self._bodyTimer = self.connection.clock.callLater(
                limits.bodyTimeout, self._bodyTimedOut
            )
        request.dispatch(head.method, head.path, _VERSION)
        early, self._early = self._early, []
        for data in early:
            if request.finished or request.rejected or self.closed:
                break
            request.handleContentChunk(data)
        acks, self._earlyAcks = self._earlyAcks, 0
        self._acknowledge(acks)
        if self.ended:
            self._requestEnded()

    def dataReceived(self, data: bytes, flowControlled: int) -> None:
        """
        Request body data arrived, taking C{flowControlled} bytes of the
        windows.
        """
        if self._endSent and not self.closed:
            # Answered early, and the client still sends: what it sends is
            # dropped, its stream's window stays shut, the connection's
            # opens again (the reset follows, see _sentAll).
            self.connection.acknowledgeConnection(flowControlled)
            return
        request = self.request
        if not data:
            # An empty DATA frame (padding at most) is no body: as a chunk
            # to an HTTP/1.1 backend it would end the body early (a
            # zero-size chunk is the last one), and what follows would be
            # read as another request.
            if request is None:
                self._earlyAcks += flowControlled
            else:
                self._acknowledge(flowControlled)
            return
        if request is None:
            self._early.append(data)
            self._earlyAcks += flowControlled
            return
        if request.finished or request.rejected or self.closed:
            self.connection.acknowledge(self.streamId, flowControlled)
            return
        request.handleContentChunk(data)
        self._acknowledge(flowControlled)

    def endReceived(self) -> None:
        """
        The client has sent all of its request.
        """
        self.ended = True
        if self.request is not None:
            self._requestEnded()
        if self._endSent:
            self._stopEarlyReset()
            self.connection.streamGone(self)

    def _requestEnded(self) -> None:
        self._stopBodyTimer()
        request = self.request
        if request is not None and not request.finished and not request.rejected:
            request.requestReceived(request.method, request.uri, _VERSION)

    def _acknowledge(self, count: int) -> None:
        if not count:
            return
        if self._pausedFor:
            self._unacked += count
        else:
            self.connection.acknowledge(self.streamId, count)

    # Reading control (see lbproxy.upstream.body.ReadingControl): holding
    # reading back is holding back the window.

    def pauseReading(self, reason: str) -> None:
        self._pausedFor.add(reason)

    def resumeReading(self, reason: str) -> None:
        self._pausedFor.discard(reason)
        if not self._pausedFor and self._unacked:
            count, self._unacked = self._unacked, 0
            if not self.closed:
                self.connection.acknowledge(self.streamId, count)

    def bodyProgress(self) -> None:
        if self._bodyTimer is not None:
            self._bodyTimer.reset(self.site.limits.bodyTimeout)

    def _stopBodyTimer(self) -> None:
        timer, self._bodyTimer = self._bodyTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _bodyTimedOut(self) -> None:
        self._bodyTimer = None
        if "backend" in self._pausedFor:
            rejection = Rejection(
                504, "Gateway Timeout", "the backend did not take the request body in time"
            )
        else:
            rejection = Rejection(408, "Request Timeout", "the request body did not arrive in time")
        self.abandonRequest(rejection)

    def abandonRequest(self, rejection: Rejection) -> None:
        """
        Give up on the request whose body is arriving (too large, or
        stalled): the proxy stops; the client gets C{rejection} if no
        response has started, or a reset stream if one has.
        """
        self._stopBodyTimer()
        request = self.request
        if request is None or request.finished:
            return
        request.rejected = True
        request.abandon()
        if request.producer is not None:
            request.unregisterProducer()
        if request.startedWriting:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        record = proxyRecordOf(request)
        if record is None:
            record = ProxyRecord()
            setProxyRecord(request, record)
        record.error = rejection.message
        body = f"{rejection.code} {rejection.reason}: {rejection.message}\n".encode()
        request.responseHeaders = Headers()
        request.setResponseCode(rejection.code, rejection.reason.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.setHeader(b"date", self.site.dateHeader())
        self.site.countRejection(self.transport, rejection.code)
        request.write(body)
        request.finish()

    def answer(self, rejection: Rejection, method: bytes | None = None) -> None:
        """
        Answer the stream with C{rejection} before any request is made of
        it (its head failed a check), and log it as the HTTP/1.1 edge logs
        its refusals.
        """
        body = f"{rejection.code} {rejection.reason}: {rejection.message}\n".encode()
        head = [
            (b":status", b"%d" % (rejection.code,)),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % (len(body),)),
            (b"date", self.site.dateHeader()),
        ]
        requestIds = self.site.requestIds
        requestId = None
        if requestIds is not None and requestIds.enabled:
            requestId = newRequestId()
            head.append((requestIds.header.lower(), requestId))
        self.site.countRejection(self.transport, rejection.code)
        self.site.accessLog.logRejected(
            self.getPeer(),
            (method or self.head.method)[:32] or None,
            self.head.path[:1024] or None,
            _VERSION,
            rejection.code,
            len(body),
            rejection.message,
            requestId=requestId,
            transport=self.transport,
        )
        self._head = head
        self._out.append(body)
        self._outBytes += len(body)
        self._finished = True
        self.connection.send(self)

    # Taking the response (what ProxyRequest and twisted.web's Request call).

    def holdHead(self) -> None:
        self._holding = True

    def releaseHead(self) -> None:
        self._holding = False
        self.connection.send(self)

    def writeInterim(self, code: int, phrase: bytes, lines: Any) -> None:
        """
        Send an interim (1xx) response, C{100 Continue} or C{103 Early
        Hints}, as a HEADERS frame without END_STREAM, ahead of the final
        one (what L{lbproxy.http.edge.ProxyChannel.writeInterim} is to
        HTTP/1.1; the phrase has no place in HTTP/2).
        """
        if self.closed or self._headSent or self._head is not None or code == 101:
            return
        head = [(b":status", b"%d" % (code,))]
        for name, value in lines:
            lowered = name.lower()
            if lowered not in _HOP_BY_HOP:
                head.append((lowered, value))
        try:
            self.connection.h2.send_headers(self.streamId, head, end_stream=False)
        except ProtocolError:
            return
        self.connection.send(self)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        self._setHead(
            code, ((name, value) for name, values in headers.getAllRawHeaders() for value in values)
        )
        self.connection.send(self)

    def writeWholeResponse(
        self,
        version: bytes,
        code: int,
        reason: bytes,
        lines: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """
        A whole response: its head (from header lines, as L{writeHeaders}
        makes it from a L{Headers}) and its body, framed together (see
        L{lbproxy.http.edge.ProxyRequest.respondWhole}).
        """
        self._setHead(b"%d" % (code,), lines)
        if body and not self.closed:
            self._out.append(body)
            self._outBytes += len(body)
        self.connection.send(self)

    def _setHead(self, status: bytes, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """
        The response head to send: C{:status}, then C{fields} lower-cased
        without the connection-specific ones, and the site's HSTS over TLS
        in place of any other.
        """
        hsts = self.site.hsts if self.isSecure() else None
        head = [(b":status", status)]
        for name, value in fields:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or (hsts is not None and lowered == _STS):
                continue
            head.append((lowered, value))
        if hsts is not None:
            head.append((_STS, hsts))
        self._head = head

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._out.append(data)
        self._outBytes += len(data)
        self.connection.send(self)
        if (
            self._outBytes > self.connection.settings.streamBuffer
            and self._producer is not None
            and not self._producerPaused
            and not self.closed
        ):
            self._producerPaused = True
            self._producer.pauseProducing()

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._producer = producer
        self._producerPaused = False
        if self._outBytes > self.connection.settings.streamBuffer:
            self._producerPaused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producerPaused = False

    def writeTrailers(self, lines: list[tuple[bytes, bytes]]) -> None:
        """
        End the response with trailer fields (a gRPC status), sent as a
        last HEADERS frame once the body is out; call before the request
        finishes.
        """
        trailers = [
            (name.lower(), value)
            for name, value in lines
            if not name.startswith(b":") and name.lower() not in _HOP_BY_HOP
        ]
        if trailers:
            self._trailers = trailers

    def requestDone(self, request: H2Request) -> None:
        self._stopBodyTimer()
        self._finished = True
        self.connection.send(self)

    def loseConnection(self) -> None:
        self.reset(ErrorCodes.CANCEL)

    # Sending (the connection calls these).

    def pending(self) -> bool:
        """
        Whether the stream has something to send.
        """
        return (
            not self.closed
            and not self._endSent
            and (self._head is not None or bool(self._out) or (self._finished and self._headSent))
        )

    def sendSome(self, now: float, frames: int = 1 << 30) -> bool:
        """
        Hand the connection's C{h2} state what may be sent now: the head,
        data within the windows (at most C{frames} DATA frames), the end of
        the stream.

        @return: Whether any DATA went.
        """
        if self.closed or self._holding or self._endSent:
            return False
        conn = self.connection.h2
        streamId = self.streamId
        if self._head is not None:
            head, self._head = self._head, None
            end = self._finished and not self._out
            conn.send_headers(streamId, head, end_stream=end and self._trailers is None)
            self._headSent = True
            if end:
                self._endWithTrailers()
                self._sentAll()
                return False
        if not self._headSent:
            return False
        out = self._out
        sent = False
        while out and frames > 0:
            frames -= 1
            window = conn.local_flow_control_window(streamId)
            if window <= 0:
                break
            chunk = out[0]
            size = min(len(chunk) - self._offset, window, conn.max_outbound_frame_size)
            piece = chunk[self._offset : self._offset + size]
            self._offset += size
            if self._offset == len(chunk):
                out.popleft()
                self._offset = 0
            self._outBytes -= size
            end = self._finished and not out
            conn.send_data(streamId, piece, end_stream=end and self._trailers is None)
            sent = True
            self._waitingSince = None
            if end:
                self._endWithTrailers()
                self._sentAll()
                return True
        if out:
            if self._waitingSince is None and not sent:
                self._waitingSince = now
        elif self._finished:
            if self._trailers is None:
                conn.end_stream(streamId)
            self._endWithTrailers()
            self._sentAll()
            return sent
        if (
            self._producerPaused
            and self._producer is not None
            and self._outBytes <= self.connection.settings.streamBuffer // 2
        ):
            self._producerPaused = False
            self._producer.resumeProducing()
        return sent

    def _endWithTrailers(self) -> None:
        trailers, self._trailers = self._trailers, None
        if trailers is not None:
            self.connection.h2.send_headers(self.streamId, trailers, end_stream=True)

    def waitingSince(self) -> float | None:
        """
        Since when the stream has had data it could not send, if it has;
        not while its producer is paused: the proxy's own send timeout
        (C{--send-timeout}) then runs, and drops both sides.
        """
        if self._producerPaused or not self._out or self.closed:
            return None
        return self._waitingSince

    def _sentAll(self) -> None:
        self._endSent = True
        self._out.clear()
        self._outBytes = 0
        self._waitingSince = None
        if not self.ended:
            # A complete answer before the whole request: the client may
            # stop sending it (RFC 9113 8.1), and a reset (NO_ERROR) says
            # so, EARLY_RESET_DELAY later: curl drops a response whose
            # reset it reads before it has taken the response (an early
            # 413 showed as no answer, or as a stream error). Meanwhile the
            # stream's window stays shut: the client sends at most that.
            self._earlyReset = self.connection.clock.callLater(EARLY_RESET_DELAY, self._resetEarly)
            return
        self.connection.streamGone(self)

    def _resetEarly(self) -> None:
        self._earlyReset = None
        if self.closed:
            return
        self.connection.resetStream(self.streamId, ErrorCodes.NO_ERROR)
        self.closed = True
        self._releaseWindow()
        self.connection.streamGone(self)

    def _stopEarlyReset(self) -> None:
        timer, self._earlyReset = self._earlyReset, None
        if timer is not None and timer.active():
            timer.cancel()

    def _releaseWindow(self) -> None:
        """
        Give the connection's window back for the body bytes this stream
        held and will not pass on (the stream's own window goes with it).
        """
        count = self._earlyAcks + self._unacked
        self._earlyAcks = self._unacked = 0
        self._early = []
        if count:
            self.connection.acknowledge(self.streamId, count)

    def done(self) -> bool:
        """
        Whether the stream is over: reset, or complete both ways.
        """
        return self.closed or (self.ended and self._endSent)

    # Ending.

    def reset(self, code: int) -> None:
        """
        Reset the stream (the proxy gave up on it, or its response cannot
        be sent in time): nothing more is sent; a request in progress is
        told its connection is gone.
        """
        if self.closed:
            return
        self.connection.resetStream(self.streamId, code)
        self.lost(Failure(ConnectionAborted("stream reset")))

    def lost(self, reason: Failure) -> None:
        """
        The stream is over before its end (the client reset it, or the
        connection is gone).
        """
        if self.closed:
            return
        self.closed = True
        self._stopBodyTimer()
        self._stopEarlyReset()
        self._out.clear()
        self._outBytes = 0
        self._releaseWindow()
        producer, self._producer = self._producer, None
        request = self.request
        if request is not None and not request.finished and not request._disconnected:
            request.connectionLost(reason)
        elif producer is not None:
            producer.stopProducing()
        self.connection.streamGone(self)

    def resetByPeer(self) -> None:
        """
        The client reset the stream.
        """
        self.lost(Failure(ConnectionLost("the client reset the stream")))


__all__ = ["H2Request", "H2Stream"]
