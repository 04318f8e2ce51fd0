# -*- test-case-name: lbproxy.test.test_h2client -*-
"""
HTTP/2 to backends: the C{h2c://} (cleartext, prior knowledge) and C{h2://}
(TLS, ALPN C{h2}) schemes, for gRPC services and any other HTTP/2 server.

L{H2Upstream} keeps a few connections per backend and multiplexes requests
over them, within the backend's C{SETTINGS_MAX_CONCURRENT_STREAMS}: a
request goes on a connection with a free stream, or waits for one while
another connection is opened (one at a time, up to
L{H2Upstream.maxConnections}). Each L{H2ClientConnection} drives C{h2}'s
L{H2Connection} and answers with an L{H2Response}, which the proxy reads as
it reads the HTTP/1.1 client's L{lbproxy.upstream.connection.BackendResponse}
(C{code}, C{headers}, C{length}, C{deliverBody}), plus C{trailers}.

Both directions stream at once (a bidirectional gRPC call sends request
DATA while response DATA flows), and flow control is the backpressure:

  - the request body (L{lbproxy.upstream.body.StreamedBody}) is sent within
    the stream's and the connection's send windows; past
    L{SEND_BUFFER} bytes waiting, the body is paused (which holds the
    client's reading back);
  - response DATA is acknowledged (its window reopened) only once handed to
    the body protocol while it is not paused, so a slow client closes its
    own stream's window and no other's.

Failures keep the HTTP/1.1 client's vocabulary so the proxy's status
mapping and retry rules apply unchanged: a stream the backend refused
(C{REFUSED_STREAM}) or left unprocessed by its C{GOAWAY} fails with
L{RequestNotSent} (safe to retry whatever the method); a reset before the
response head is L{ResponseFailed}; a lost connection before it is
L{ResponseNeverReceived} (or L{RequestTransmissionFailed} while the body
was still going); a reset or loss after it ends the body with
L{ResponseFailed}, which the proxy turns into a reset of the client's
stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, NoAvailableStreamIDError, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import RESPONSES
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from lbproxy._twisted.newclient import RequestNotSent
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.connection import CLOSE_WAIT, HeaderLines, InvalidResponse

H2_SCHEMES = frozenset({"h2", "h2c"})
"""
The backend schemes spoken over HTTP/2.
"""

STREAM_WINDOW = 256 * 1024
"""
The receive window of each stream: the most of one response lbproxy holds
for a client that does not read.
"""

CONNECTION_WINDOW = 16 * 1024 * 1024
"""
The receive window of each backend connection, shared by its streams.
"""

SEND_BUFFER = 64 * 1024
"""
Request body bytes kept for a stream whose send window is closed before
the client's reading is paused.
"""

MAX_CONNECTIONS = 8
"""
Connections opened to one backend at most (each carries as many streams
as the backend allows); requests beyond wait for a free stream.
"""

# Request header fields that HTTP/2 forbids (RFC 9113 8.2.2) or that become
# pseudo-headers; the edge drops most already, this is the last word.
_NOT_SENT = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
        b"http2-settings",
    }
)

Interim = Callable[[int, bytes, HeaderLines], None]


class StreamResetError(Exception):
    """
    The backend reset the stream (RST_STREAM) with C{code}.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"the backend reset the HTTP/2 stream ({_codeName(self.code)})"


class InvalidRequest(Exception):
    """
    A request C{h2} would not send as it is (a field HTTP/2 does not
    allow).
    """

    def __str__(self) -> str:
        return f"the request cannot be sent over HTTP/2 ({self.args[0]})"


class UpgradeNotRelayed(Exception):
    """
    A request asking for a protocol upgrade (WebSocket over HTTP/1.1) was
    routed to an HTTP/2 backend, which cannot take one.
    """

    def __str__(self) -> str:
        return "an HTTP/1.1 upgrade cannot be relayed to an HTTP/2 backend"


def _codeName(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


@implementer(IOpenSSLClientConnectionCreator)
class ALPNh2:
    """
    Client TLS that offers only C{h2} in ALPN, around the verified client
    TLS an C{https://} backend gets (L{lbproxy.tls.client.BackendTLS}).
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        connection.set_alpn_protos([b"h2"])
        return connection


class H2Response:
    """
    A response's head from an HTTP/2 backend; its body is delivered later.

    @ivar trailers: The trailer fields, once the body has ended with them
        (L{None} before, or without any).
    @ivar tunnel: Always L{None} (there are no upgrades over HTTP/2).
    """

    tunnel = None
    trailers: list[tuple[bytes, bytes]] | None = None

    def __init__(
        self,
        stream: _Stream,
        code: int,
        headers: HeaderLines,
        connectionHeaders: HeaderLines,
        length: int | object,
    ) -> None:
        self._stream = stream
        self.code = code
        self.phrase = RESPONSES.get(code, b"")
        self.headers = headers
        self.connectionHeaders = connectionHeaders
        self.length = length

    def deliverBody(self, protocol: Protocol) -> None:
        """
        Stream the body to C{protocol}: C{makeConnection} with a producer
        (pause, resume, stop resets the stream), C{dataReceived}s, then
        C{connectionLost} with L{ResponseDone} (L{trailers} set by then)
        or another failure.
        """
        self._stream.deliverBody(protocol)

    def takeWholeBody(self) -> bytes | None:
        """
        Always L{None}: an HTTP/2 body (and its trailers) is streamed with
        L{deliverBody}.
        """
        return None


@implementer(IPushProducer)
class _Stream:
    """
    One request and its response on an L{H2ClientConnection}: the writer
    of the request body (L{lbproxy.upstream.body.BodyWriter}) and the
    producer of the response body.
    """

    response: H2Response | None = None
    _body: StreamedBody | None = None
    _bodyProtocol: Protocol | None = None
    _bodyEnd: Failure | None = None
    _paused = False
    _unacked = 0
    _outBytes = 0
    _finishing = False
    _endSent = False
    _bodyPaused = False
    closed = False

    def __init__(
        self,
        connection: H2ClientConnection,
        streamId: int,
        method: bytes,
        interim: Interim | None,
    ) -> None:
        self.connection = connection
        self.streamId = streamId
        self.method = method
        self.interim = interim
        self.pending: Deferred[H2Response] | None = Deferred(self._cancel)
        self._out: deque[bytes] = deque()
        self._buffered: list[bytes] = []

    # The request body (BodyWriter).

    def writeBody(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._out.append(data)
        self._outBytes += len(data)
        self.connection.sendBody(self)
        if self._outBytes > SEND_BUFFER and self._body is not None and not self._bodyPaused:
            self._bodyPaused = True
            self._body.pauseProducing()

    def finishBody(self) -> None:
        self._finishing = True
        self._body = None
        if not self.closed:
            self.connection.sendBody(self)

    def sentAll(self) -> None:
        """
        The request went out whole with its head (it has no body).
        """
        self._finishing = self._endSent = True

    def attachBody(self, body: StreamedBody) -> None:
        self._body = body
        body.attach(self)

    def sendSome(self, h2: H2Connection) -> None:
        """
        Hand C{h2} what of the request body the windows take now, and the
        end of the stream once the body is complete.
        """
        out = self._out
        while out:
            window = min(h2.local_flow_control_window(self.streamId), h2.max_outbound_frame_size)
            if window <= 0:
                break
            chunk = out.popleft()
            if len(chunk) > window:
                out.appendleft(chunk[window:])
                chunk = chunk[:window]
            self._outBytes -= len(chunk)
            h2.send_data(self.streamId, chunk, end_stream=self._finishing and not out)
            if self._finishing and not out:
                self._endSent = True
        if not out and self._finishing and not self._endSent:
            self._endSent = True
            h2.end_stream(self.streamId)
        if self._bodyPaused and self._outBytes <= SEND_BUFFER // 2 and self._body is not None:
            self._bodyPaused = False
            self._body.resumeProducing()

    @property
    def requestSent(self) -> bool:
        """
        Whether the whole request went out (its stream half-closed).
        """
        return self._endSent

    def stopBody(self) -> None:
        """
        Nothing more of the request body goes out on this stream.
        """
        body, self._body = self._body, None
        self._out.clear()
        self._outBytes = 0
        if body is not None:
            body.detach()

    # The response.

    def gotResponse(self, response: H2Response) -> None:
        self.response = response
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.callback(response)

    def deliverBody(self, protocol: Protocol) -> None:
        self._bodyProtocol = protocol
        protocol.makeConnection(self)
        buffered, self._buffered = self._buffered, []
        for data in buffered:
            if self._bodyProtocol is None:
                break
            protocol.dataReceived(data)
        if self._bodyEnd is not None:
            self._endBody(self._bodyEnd)
        elif not self._paused:
            self._acknowledge()

    def dataReceived(self, data: bytes, flowControlled: int) -> None:
        self._unacked += flowControlled
        if self._bodyProtocol is None:
            if data:
                self._buffered.append(data)
            return
        if data:
            self._bodyProtocol.dataReceived(data)
        if not self._paused:
            self._acknowledge()

    def _acknowledge(self) -> None:
        count, self._unacked = self._unacked, 0
        if count:
            self.connection.acknowledge(self.streamId, count)

    def bodyEnded(self, reason: Failure) -> None:
        """
        The response body is over: complete (L{ResponseDone}) or not.
        """
        if self._bodyEnd is not None:
            return
        self._bodyEnd = reason
        if self._bodyProtocol is not None:
            self._endBody(reason)

    def _endBody(self, reason: Failure) -> None:
        protocol, self._bodyProtocol = self._bodyProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)

    def fail(self, reason: Failure) -> None:
        """
        The stream is over before its response (head or body) was complete.
        """
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.errback(reason)
        elif self.response is not None:
            self.bodyEnded(reason)

    # Producer of the response body (for the proxy's relay).

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._bodyProtocol is not None and not self.closed:
            self._acknowledge()

    def stopProducing(self) -> None:
        """
        The client left: reset the backend's stream (the connection and
        its other streams go on); the body ends, as an aborted HTTP/1.1
        connection's does, on the next turn of the clock.
        """
        if self.closed:
            return
        self.connection.cancel(self, ErrorCodes.CANCEL)
        gone = Failure(ResponseFailed([Failure(CancelledError())]))
        self.connection.later(lambda: self.bodyEnded(gone))

    def _cancel(self, d: Deferred[H2Response]) -> None:
        # The proxy gave up waiting for the response head (timeout, or the
        # client left): the deferred then fails with CancelledError.
        self.pending = None
        self.connection.cancel(self, ErrorCodes.CANCEL)

    def releaseWindow(self) -> None:
        """
        Give back the connection window this stream's unread data holds
        (the stream is over; what was buffered is still delivered).
        """
        self._acknowledge()


@implementer(IHandshakeListener)
class H2ClientConnection(Protocol):
    """
    One HTTP/2 connection to a backend, carrying many streams at once.

    @ivar ready: Whether the backend's SETTINGS arrived (its stream limit is
        known); no stream is opened before.
    @ivar goingAway: Whether the backend sent GOAWAY (no new streams).
    @ivar onReady: Called with this connection when it becomes ready, and
        whenever one of its streams ends (room for another).
    @ivar onClosed: Called with this connection when it is closed.
    @ivar refusal: Why lbproxy gave the connection up before it was ready
        (an C{h2://} backend that did not agree to HTTP/2 in ALPN), for
        the requests that waited for it.
    """

    _log = Logger()
    refusal: Failure | None = None
    ready = False
    goingAway = False
    closed = False
    onReady: Callable[[H2ClientConnection], None] | None = None
    onClosed: Callable[[H2ClientConnection], None] | None = None
    _idleTimer: IDelayedCall | None = None
    _closeTimer: IDelayedCall | None = None

    def __init__(self, clock: IReactorTime, authority: bytes, secure: bool, idleTimeout: float):
        """
        @param authority: The C{:authority} of requests without a Host.
        @param secure: Whether the connection is TLS (the C{:scheme}).
        @param idleTimeout: Seconds without a stream before closing.
        """
        self.clock = clock
        self.authority = authority
        self.scheme = b"https" if secure else b"http"
        self.idleTimeout = idleTimeout
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, _Stream] = {}

    def connectionMade(self) -> None:
        # Frames of many streams go out in small writes: Nagle's algorithm
        # would hold each behind the backend's delayed ACK (40 ms).
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        h2 = self.h2
        h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - h2.inbound_flow_control_window)
        self._flush()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake with an C{h2://} backend is done: unless it chose
        C{h2} in ALPN, it would read the HTTP/2 preface as a bad HTTP/1.1
        request; give the connection up with a reason that says so.
        """
        chosen = getattr(self.transport, "negotiatedProtocol", None)
        if chosen == b"h2":
            return
        what = "no protocol" if chosen is None else repr(chosen.decode("ascii", "replace"))
        self.refusal = Failure(
            ConnectError(string=f"the backend did not agree to HTTP/2 in ALPN (it chose {what})")
        )
        self._log.warn(
            "h2 backend {backend}: did not agree to HTTP/2 in ALPN (it chose {what})",
            backend=self.authority.decode("ascii", "replace"),
            what=what,
        )
        self.abort()

    # Capacity.

    def capacity(self) -> int:
        """
        How many more streams may be opened now.
        """
        if not self.ready or self.goingAway or self.closed:
            return 0
        limit = self.h2.remote_settings.max_concurrent_streams
        return max(0, limit - max(len(self.streams), self.h2.open_outbound_streams))

    # Requests.

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Interim | None = None,
    ) -> Deferred[H2Response]:
        """
        Open a stream for a request; fires with the response once its head
        arrived.

        @param headers: The request's header lines (no framing); C{Host}
            becomes C{:authority}, HTTP/1.1 connection fields are dropped.
        """
        self._stopIdle()
        authority = self.authority
        fields: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                authority = value
            elif lower not in _NOT_SENT and lower[:1] not in (b":", b""):
                fields.append((lower, value))
        if body is not None and body.length is not None:
            fields.append((b"content-length", b"%d" % (body.length,)))
        fields.append((b"te", b"trailers"))
        head = [
            (b":method", method),
            (b":scheme", self.scheme),
            (b":authority", authority),
            (b":path", target),
            *fields,
        ]
        streamId = self.h2.get_next_available_stream_id()
        empty = body is None or (body.complete and body.length == 0)
        try:
            self.h2.send_headers(streamId, head, end_stream=empty)
        except (TooManyStreamsError, NoAvailableStreamIDError):
            raise
        except H2Error as e:
            # Fields h2 will not send (they passed the edge's checks, so
            # this is rare): the request fails. h2 has encoded part of the
            # head by then, so the connection's header compression is out
            # of step with the backend's: it takes no new stream.
            self.goingAway = True
            if not self.streams:
                self.close()
            return fail(InvalidRequest(str(e)))
        stream = _Stream(self, streamId, method, interim)
        self.streams[streamId] = stream
        pending = stream.pending
        assert pending is not None
        self._flush()
        if empty:
            stream.sentAll()
        else:
            assert body is not None
            stream.attachBody(body)
        return pending

    def sendBody(self, stream: _Stream) -> None:
        """
        Send what of C{stream}'s request body the windows allow.
        """
        if self.closed or stream.closed:
            return
        try:
            stream.sendSome(self.h2)
        except H2Error:
            # The stream closed under us (reset by the backend meanwhile).
            stream.stopBody()
        self._flush()

    def acknowledge(self, streamId: int, count: int) -> None:
        """
        C{count} bytes of stream C{streamId}'s response were taken: the
        backend may send as many more.
        """
        if self.closed:
            return
        try:
            self.h2.acknowledge_received_data(count, streamId)
        except H2Error:
            return
        self._flush()

    def cancel(self, stream: _Stream, code: int) -> None:
        """
        Reset C{stream} (the proxy gave up on it).
        """
        if stream.closed:
            return
        if not self.closed:
            try:
                self.h2.reset_stream(stream.streamId, code)
            except H2Error:
                pass
        self._streamOver(stream)
        self._flush()

    def later(self, call: Callable[[], object]) -> None:
        """
        Run C{call} on the next turn of the clock.
        """
        self.clock.callLater(0, call)

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self._log.warn("HTTP/2 protocol error from a backend: {error}", error=str(e))
            self._flush()
            self._failAll(Failure(ResponseFailed([Failure(InvalidResponse(f"HTTP/2: {e}"))])))
            self.abort()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.dataReceived(event.data, event.flow_controlled_length)
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.gotResponse(_response(stream, event.headers))
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._streamOver(stream)
                if not stream.requestSent:
                    # A complete answer before the whole request: stop
                    # sending it (RFC 9113 8.1).
                    try:
                        self.h2.reset_stream(stream.streamId, ErrorCodes.NO_ERROR)
                    except H2Error:
                        pass
                stream.bodyEnded(Failure(ResponseDone()))
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.response is not None:
                stream.response.trailers = [
                    (name, value) for name, value in event.headers if not name.startswith(b":")
                ]
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._streamOver(stream)
                stream.fail(_resetFailure(stream, event.error_code))
        elif isinstance(event, WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.sendBody(stream)
            else:
                for stream in list(self.streams.values()):
                    self.sendBody(stream)
        elif isinstance(event, InformationalResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.interim is not None:
                code, fields = _split(event.headers)
                stream.interim(code, RESPONSES.get(code, b""), HeaderLines(fields))
        elif isinstance(event, RemoteSettingsChanged):
            if not self.ready:
                self.ready = True
            if self.onReady is not None:
                self.onReady(self)
        elif isinstance(event, ConnectionTerminated):
            self._goneAway(int(event.error_code or 0), event.last_stream_id)

    def _goneAway(self, code: int, lastStreamId: int | None) -> None:
        self.goingAway = True
        last = lastStreamId if lastStreamId is not None else 0
        self._log.info(
            "HTTP/2 backend sent GOAWAY ({code}); {count} streams not processed will be retried",
            code=_codeName(code),
            count=sum(1 for s in self.streams if s > last),
        )
        for streamId, stream in sorted(self.streams.items()):
            if streamId > last:
                self._streamOver(stream)
                stream.fail(Failure(RequestNotSent()))
        if not self.streams:
            self.close()
        else:
            # h2 closes its side at a GOAWAY and would refuse every frame
            # after it, but the streams the backend did take go on (a
            # gRPC server's graceful GOAWAY is followed by a PING, then
            # their answers): keep the connection open for them.
            self.h2.state_machine.state = ConnectionState.CLIENT_OPEN

    def _streamOver(self, stream: _Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        stream.stopBody()
        stream.releaseWindow()
        self.streams.pop(stream.streamId, None)
        if not self.streams:
            if self.goingAway:
                self.close()
            else:
                self._startIdle()
        if self.onReady is not None and not self.closed:
            self.onReady(self)

    # Idle connections.

    def _startIdle(self) -> None:
        if self._idleTimer is None and not self.closed:
            self._idleTimer = self.clock.callLater(self.idleTimeout, self._idle)

    def _stopIdle(self) -> None:
        timer, self._idleTimer = self._idleTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self._idleTimer = None
        if not self.streams:
            self.close()

    def idle(self) -> bool:
        """
        Whether no stream is open.
        """
        return not self.streams

    # Closing.

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """
        Say GOAWAY and close once what was written is sent (streams still
        open fail).
        """
        if self.closed or self.transport is None:
            return
        self.goingAway = True
        try:
            self.h2.close_connection()
        except H2Error:
            pass
        self._flush()
        self.transport.loseConnection()
        if self._closeTimer is None and not self.closed:
            # Over TLS a close waits for the backend's close_notify: a
            # backend that hangs would hold the connection for ever.
            self._closeTimer = self.clock.callLater(CLOSE_WAIT, self.abort)

    def abort(self) -> None:
        """
        Drop the connection at once: its streams fail.
        """
        self.goingAway = True
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _failAll(self, reason: Failure) -> None:
        for stream in list(self.streams.values()):
            self._streamOver(stream)
            stream.fail(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.goingAway = True
        self._stopIdle()
        closeTimer, self._closeTimer = self._closeTimer, None
        if closeTimer is not None and closeTimer.active():
            closeTimer.cancel()
        streams = list(self.streams.values())
        self.closed = True
        for stream in streams:
            self._streamOver(stream)
            if stream.response is not None:
                stream.fail(Failure(ResponseFailed([reason])))
            elif not stream.requestSent:
                stream.fail(Failure(RequestTransmissionFailed([reason])))
            else:
                stream.fail(Failure(ResponseNeverReceived([reason])))
        self.streams = {}
        if self.onClosed is not None:
            self.onClosed(self)


def _split(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]]]:
    """
    A response head's status and its regular fields.
    """
    code = 0
    fields = []
    for name, value in headers:
        if name == b":status":
            code = int(value)
        elif not name.startswith(b":"):
            fields.append((name, value))
    return code, fields


def _response(stream: _Stream, headers: Sequence[tuple[bytes, bytes]]) -> H2Response:
    code, fields = _split(headers)
    lengths = [value for name, value in fields if name == b"content-length"]
    endToEnd = [(name, value) for name, value in fields if name != b"content-length"]
    length: int | object = UNKNOWN_LENGTH
    if stream.method == b"HEAD" or code in (204, 304):
        length = 0
    elif lengths and lengths[0].isdigit():
        length = int(lengths[0])
    connectionLines = [(b"content-length", value) for value in lengths[:1]]
    return H2Response(stream, code, HeaderLines(endToEnd), HeaderLines(connectionLines), length)


def _resetFailure(stream: _Stream, code: int) -> Failure:
    """
    What a stream the backend reset fails with: L{RequestNotSent} when it
    refused the stream unprocessed (any request may then be retried).
    """
    if code == ErrorCodes.REFUSED_STREAM and stream.response is None:
        return Failure(RequestNotSent())
    return Failure(ResponseFailed([Failure(StreamResetError(code))]))


Connect = Callable[[Backend, "Factory[Any]"], "Deferred[IProtocol]"]
"""
Opens a connection to a backend with a protocol factory (TCP, or TLS with
ALPN C{h2} for an C{h2://} backend, within the connect timeout).
"""


class _Waiting:
    """
    A request waiting for a free stream.
    """

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Interim | None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.interim = interim
        self.result: Deferred[H2Response] = Deferred(self._cancel)
        self.cancelled = False
        self.sent: Deferred[H2Response] | None = None

    def _cancel(self, d: Deferred[H2Response]) -> None:
        self.cancelled = True
        sent, self.sent = self.sent, None
        if sent is not None:
            sent.cancel()


class _BackendConnections:
    """
    The connections to one backend and the requests waiting for a stream.
    """

    def __init__(self) -> None:
        self.connections: list[H2ClientConnection] = []
        self.connecting = False
        self.waiting: deque[_Waiting] = deque()


class H2Upstream:
    """
    Requests to HTTP/2 backends, multiplexed over a few connections per
    backend (see the module's description).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        connect: Connect,
        idleTimeout: float = 30.0,
        maxConnections: int = MAX_CONNECTIONS,
    ) -> None:
        """
        @param connect: Opens a connection to a backend.
        @param idleTimeout: Seconds a connection without streams is kept.
        @param maxConnections: Connections to one backend at most.
        """
        self._clock = clock
        self._connect = connect
        self._idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self._backends: dict[str, _BackendConnections] = {}
        self._closing: list[Deferred[None]] = []

    def request(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Interim | None = None,
    ) -> Deferred[H2Response]:
        """
        Send one request to C{backend} on a free stream (see
        L{lbproxy.upstream.pool.Upstream.request}).
        """
        entry = self._backends.setdefault(backend.url, _BackendConnections())
        waiting = _Waiting(method, target, headers, body, interim)
        entry.waiting.append(waiting)
        self._dispatch(backend, entry)
        return waiting.result

    def _dispatch(self, backend: Backend, entry: _BackendConnections) -> None:
        while entry.waiting:
            waiting = entry.waiting[0]
            if waiting.cancelled:
                entry.waiting.popleft()
                continue
            connection = next((c for c in entry.connections if c.capacity() > 0), None)
            if connection is None:
                open = [c for c in entry.connections if not c.goingAway]
                # A connection still waiting for its SETTINGS may take them.
                opening = entry.connecting or any(not c.ready for c in open)
                if not opening and len(open) < self.maxConnections:
                    self._open(backend, entry)
                return
            entry.waiting.popleft()
            try:
                sent = connection.request(
                    waiting.method, waiting.target, waiting.headers, waiting.body, waiting.interim
                )
            except (TooManyStreamsError, NoAvailableStreamIDError):
                # Out of stream IDs, or the limit changed under us: no new
                # streams on this one.
                connection.goingAway = True
                entry.waiting.appendleft(waiting)
                continue
            waiting.sent = sent
            sent.chainDeferred(waiting.result)

    def _open(self, backend: Backend, entry: _BackendConnections) -> None:
        entry.connecting = True

        def build() -> H2ClientConnection:
            connection = H2ClientConnection(
                self._clock,
                backend.authority.encode("ascii"),
                backend.scheme == "h2",
                self._idleTimeout,
            )
            connection.onReady = lambda c: self._dispatch(backend, entry)
            connection.onClosed = lambda c: self._closed(backend, entry, c)
            return connection

        def connected(protocol: IProtocol) -> None:
            entry.connecting = False
            assert isinstance(protocol, H2ClientConnection)
            if not protocol.closed:
                entry.connections.append(protocol)
            self._dispatch(backend, entry)

        def failed(reason: Failure) -> None:
            entry.connecting = False
            if any(not c.goingAway for c in entry.connections):
                self._dispatch(backend, entry)
                return
            # Nothing else could carry them: they fail as an HTTP/1.1
            # request to an unreachable backend fails.
            waiting, entry.waiting = entry.waiting, deque()
            for each in waiting:
                if not each.cancelled:
                    each.result.errback(reason)
            self._forget(backend, entry)

        factory = Factory.forProtocol(build)
        factory.noisy = False
        self._connect(backend, factory).addCallbacks(connected, failed)

    def _closed(
        self, backend: Backend, entry: _BackendConnections, connection: H2ClientConnection
    ) -> None:
        if connection in entry.connections:
            entry.connections.remove(connection)
        usable = any(not c.goingAway for c in entry.connections) or entry.connecting
        if entry.waiting and not connection.ready and not usable:
            # It closed before its SETTINGS and nothing else may carry
            # them: the requests waiting for it would wait for ever.
            waiting, entry.waiting = entry.waiting, deque()
            reason = connection.refusal or Failure(
                ResponseNeverReceived([Failure(ConnectionDone())])
            )
            for each in waiting:
                if not each.cancelled:
                    each.result.errback(reason)
        elif entry.waiting:
            self._dispatch(backend, entry)
        self._forget(backend, entry)
        if not any(e.connections for e in self._backends.values()):
            closing, self._closing = self._closing, []
            for d in closing:
                d.callback(None)

    def _forget(self, backend: Backend, entry: _BackendConnections) -> None:
        unused = not entry.connections and not entry.connecting and not entry.waiting
        if unused and self._backends.get(backend.url) is entry:
            del self._backends[backend.url]

    # What the pool reports and how it closes (see Upstream).

    def connectionsTo(self, backend: Backend) -> int:
        """
        How many connections to C{backend} are open.
        """
        entry = self._backends.get(backend.url)
        return 0 if entry is None else len(entry.connections)

    def idleTo(self, backend: Backend) -> int:
        """
        How many connections to C{backend} carry no stream.
        """
        entry = self._backends.get(backend.url)
        return 0 if entry is None else sum(1 for c in entry.connections if c.idle())

    def busy(self) -> bool:
        """
        Whether any stream is open or any request waits.
        """
        return any(
            e.waiting or any(not c.idle() for c in e.connections) for e in self._backends.values()
        )

    def closeIdle(self, backend: Backend) -> None:
        """
        Close C{backend}'s connections that carry no stream; the others
        take no new ones and close when their streams are done.
        """
        entry = self._backends.get(backend.url)
        if entry is None:
            return
        for connection in list(entry.connections):
            if connection.idle():
                connection.close()
            else:
                connection.goingAway = True

    def abortTo(self, backend: Backend) -> None:
        """
        Drop every connection to C{backend} (its drain time is up).
        """
        entry = self._backends.get(backend.url)
        if entry is None:
            return
        for connection in list(entry.connections):
            connection.abort()

    def close(self) -> Deferred[None]:
        """
        Drop every connection; fires when they are all closed.
        """
        done: Deferred[None] = Deferred()
        connections = [c for e in self._backends.values() for c in e.connections]
        if not connections:
            done.callback(None)
            return done
        self._closing.append(done)
        for connection in connections:
            connection.abort()
        return done


__all__ = [
    "H2_SCHEMES",
    "ALPNh2",
    "H2ClientConnection",
    "H2Response",
    "H2Upstream",
    "InvalidRequest",
    "StreamResetError",
    "UpgradeNotRelayed",
]
