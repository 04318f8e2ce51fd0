# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
A client's HTTP/2 connection: lbproxy's glue on C{h2}'s sans-I/O
L{H2Connection}, server side.

Each request stream becomes an L{lbproxy.http2.stream.H2Stream} with its
request, handed to the site's resource once the read that brought its
head has been processed whole: a stream opened and reset in the same read
(the rapid reset attack, CVE-2023-44487) never reaches a backend. Client
resets are also rate limited (a token bucket, L{HTTP2Settings.resetBurst}
and L{HTTP2Settings.resetRate}); past it the connection is closed with
GOAWAY ENHANCE_YOUR_CALM. So are the acknowledgements a client makes
queue while not reading (PING and SETTINGS floods,
L{HTTP2Settings.maxPendingAcks}). A malformed frame, a CONTINUATION flood
(C{h2} holds at most 64 CONTINUATION frames) or a header list above
L{HTTP2Settings.maxHeaderListSize} (the HPACK bomb) is a connection error:
GOAWAY with its code, and the connection closes.

A header block that decodes but is malformed as a request (RFC 9113 8.1.1:
upper-case or illegal names and values, connection-specific fields,
missing, repeated or unknown pseudo-headers, an empty C{:path}) is a
stream error: RST_STREAM PROTOCOL_ERROR on that stream only, the other
streams and the connection go on. The checks are C{h2}'s own
(L{h2.utilities.validate_headers}), run here on each request's and
trailer's fields instead of inside C{h2}, which would make every one a
connection error. Those resets are spent from the same budget as the
client's own (a client could otherwise make lbproxy reset streams for it,
as in "MadeYouReset", CVE-2025-8671). So are the streams refused
(RST_STREAM REFUSED_STREAM) for going over the limit of concurrent streams,
a stream error here too (L{_EdgeH2Connection}).

Output is driven by the windows and by the transport: the connection is
its transport's producer, and while the transport is paused no DATA is
sent; each stream holds what it cannot send yet, pausing its backend past
L{HTTP2Settings.streamBuffer} bytes (see L{lbproxy.http2.stream}). A
stream with something to send is marked ready, and the ready streams are
framed once at the end of the reactor turn and written in one write: a
small response whose head, body and end arrive in one read of its backend
leaves as one HEADERS and one DATA frame with END_STREAM, in one TLS
record with the other streams' (one write per event cost about 10 % of
an HTTP/2 request's CPU). Response headers are encoded by
L{lbproxy.http2.hpackplain.PlainEncoder} and not checked again by C{h2}
(the response head is built from checked parts, see
L{lbproxy.http2.stream.H2Stream.writeHeaders}).
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from h2.utilities import HeaderValidationFlags, validate_headers
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.http.checks import Rejection
from lbproxy.http.edge import ProxySite
from lbproxy.http2.head import checkHead, plainlyWellFormed
from lbproxy.http2.hpackplain import PlainEncoder
from lbproxy.http2.settings import HTTP2Settings
from lbproxy.http2.stream import H2Stream


@implementer(IPushProducer)
class H2EdgeConnection(Protocol):
    """
    One client's HTTP/2 connection, its streams relayed through C{site}.

    @ivar site: The proxy's site: its resource, limits and access log.
    @ivar settings: What clients may do over HTTP/2.
    @ivar clock: Times the timeouts and the reset budget.
    @ivar h2: The protocol state (C{h2}'s).
    @ivar streams: The streams in progress, by ID.
    @ivar closeReason: Why lbproxy closed the connection, if it did (an
        C{h2} error code name), for the log and the tests.
    """

    _log = Logger()
    _writePaused = False
    _closing = False
    _draining = False
    _idleTimer: IDelayedCall | None = None
    _sendTimer: IDelayedCall | None = None
    _pendingAcks = 0
    _addresses: tuple[Any, Any] | None = None
    closeReason: str | None = None

    def __init__(self, site: ProxySite, settings: HTTP2Settings, clock: IReactorTime) -> None:
        self.site = site
        self.factory = site
        self.settings = settings
        self.clock = clock
        self.streams: dict[int, H2Stream] = {}
        self._ready: dict[H2Stream, None] = {}
        self._readyCall: IDelayedCall | None = None
        self._resetTokens = float(settings.resetBurst)
        self._resetCheckedAt = clock.seconds()
        self._lastStreamId = 0
        self.h2 = _EdgeH2Connection(
            H2Configuration(
                client_side=False,
                # Checked per stream instead (_malformed).
                validate_inbound_headers=False,
                normalize_inbound_headers=True,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                header_encoding=None,
            )
        )
        self.h2.encoder = PlainEncoder()  # type: ignore[assignment]

    # Protocol.

    def connectionMade(self) -> None:
        settings = self.settings
        h2 = self.h2
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.maxConcurrentStreams,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.maxHeaderListSize,
                SettingCodes.INITIAL_WINDOW_SIZE: settings.initialWindowSize,
                SettingCodes.MAX_FRAME_SIZE: settings.maxFrameSize,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Until the client acknowledges the settings, h2 decodes with its
        # own default limit; the advertised one applies from the start.
        h2.decoder.max_header_list_size = settings.maxHeaderListSize
        h2.initiate_connection()
        extra = settings.connectionWindowSize - 65535
        if extra > 0:
            h2.increment_flow_control_window(extra)
        transport: Any = self.transport
        # Nagle's algorithm stays on, as on the HTTP/1.1 edge: the ready
        # streams' frames already leave in one write per reactor turn, and
        # TCP_NODELAY cost 20 % more CPU per request under h2load (a
        # segment per write on loopback) for no gain in gRPC calls a second
        # (1 869 with it, 2 012 without, 32 concurrent unary calls).
        transport.registerProducer(self, True)
        self.site.channelOpened(self)  # type: ignore[arg-type]
        self._flush()
        self._startIdleTimer()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            code = getattr(e, "error_code", ErrorCodes.PROTOCOL_ERROR)
            self._log.info(
                "HTTP/2 connection error from {peer}: {error}",
                peer=self._peer(),
                error=str(e),
            )
            # h2 has queued its GOAWAY.
            self._close(_codeName(code), goAway=False)
            return
        self._handle(events)
        if not self._closing:
            self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        if self._readyCall is not None and self._readyCall.active():
            self._readyCall.cancel()
        self._readyCall = None
        self._stopIdleTimer()
        if self._sendTimer is not None and self._sendTimer.active():
            self._sendTimer.cancel()
        self._sendTimer = None
        lost = Failure(ConnectionLost("the client connection closed"))
        for stream in list(self.streams.values()):
            stream.lost(lost)
        self.streams.clear()
        self.site.channelClosed(self)  # type: ignore[arg-type]

    # Events.

    def _handle(self, events: list[Event]) -> None:
        streams = self.streams
        new: list[H2Stream] = []
        windowsOpened = False
        for event in events:
            if isinstance(event, DataReceived):
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
                else:
                    stream.dataReceived(event.data, event.flow_controlled_length)
            elif isinstance(event, RequestReceived):
                streamId: int = event.stream_id
                self._lastStreamId = max(self._lastStreamId, streamId)
                if self._draining:
                    self.resetStream(streamId, ErrorCodes.REFUSED_STREAM)
                    continue
                if self._malformed(streamId, event.headers, _REQUEST):
                    if not self._spendReset():
                        return
                    continue
                stream = self._newStream(streamId, event.headers)
                if stream is not None:
                    new.append(stream)
                    if event.stream_ended is not None:
                        stream.ended = True
            elif isinstance(event, StreamRefused):
                if not self._spendReset():
                    return
            elif isinstance(event, TrailersReceived):
                if self._malformed(event.stream_id, event.headers, _TRAILERS):
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.resetByPeer()
                    if not self._spendReset():
                        return
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.endReceived()
            elif isinstance(event, StreamReset):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.resetByPeer()
                if event.remote_reset and not self._spendReset():
                    return
            elif isinstance(event, WindowUpdated):
                windowsOpened = True
            elif isinstance(event, (PingReceived, RemoteSettingsChanged)):
                # New settings may open every stream's window.
                windowsOpened = windowsOpened or isinstance(event, RemoteSettingsChanged)
                if self._writePaused:
                    self._pendingAcks += 1
                    if self._pendingAcks > self.settings.maxPendingAcks:
                        self._calm("PING or SETTINGS acknowledgements left unread")
                        return
            elif isinstance(event, ConnectionTerminated):
                self._draining = True
                if not self.streams:
                    self._close(None, goAway=False)
                    return
        # Every stream of this read that is still open goes to the site:
        # one opened and reset at once costs no backend anything.
        for stream in new:
            if not stream.closed and not self._closing:
                self._stopIdleTimer()
                stream.dispatch()
        # Streams that wait for a window may send now; the others with
        # something to send have asked already (see send).
        if windowsOpened:
            self._sendAll()

    def _newStream(self, streamId: int, fields: list[tuple[bytes, bytes]]) -> H2Stream | None:
        limits = self.site.limits
        head = checkHead(fields, limits.maxTarget, limits.maxHeaderBytes, limits.maxFields)
        if isinstance(head, Rejection):
            stream = H2Stream(self, streamId, _emptyHead(fields))
            self.streams[streamId] = stream
            stream.ended = True
            stream.answer(head)
            return None
        stream = H2Stream(self, streamId, head)
        self.streams[streamId] = stream
        return stream

    def _malformed(self, streamId: int, fields: list[Any], flags: HeaderValidationFlags) -> bool:
        """
        Whether a header block is malformed (RFC 9113 8.1.1, by C{h2}'s
        checks, after L{plainlyWellFormed}'s one pass for the usual case);
        if it is, reset its stream with PROTOCOL_ERROR.
        """
        if plainlyWellFormed(fields, flags.is_trailer):
            return False
        try:
            for _ in validate_headers(fields, flags):
                pass
        except ProtocolError as e:
            self._log.info(
                "HTTP/2 stream {stream} from {peer} malformed, reset: {error}",
                stream=streamId,
                peer=self._peer(),
                error=str(e),
            )
            self.resetStream(streamId, ErrorCodes.PROTOCOL_ERROR)
            return True
        return False

    def _spendReset(self) -> bool:
        """
        Take one client reset from the budget; when it is spent, close the
        connection (ENHANCE_YOUR_CALM) and return C{False}.
        """
        now = self.clock.seconds()
        settings = self.settings
        self._resetTokens = min(
            float(settings.resetBurst),
            self._resetTokens + (now - self._resetCheckedAt) * settings.resetRate,
        )
        self._resetCheckedAt = now
        self._resetTokens -= 1
        if self._resetTokens < 0:
            self._calm("too many streams reset by the client")
            return False
        return True

    def _calm(self, why: str) -> None:
        self._log.warn(
            "closing the HTTP/2 connection from {peer}: {why} (ENHANCE_YOUR_CALM)",
            peer=self._peer(),
            why=why,
        )
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._lastStreamId)
        self._close("ENHANCE_YOUR_CALM", goAway=False)

    # What streams call.

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def addresses(self) -> tuple[Any, Any]:
        """
        The client's address and lbproxy's, asked of the transport once
        for every stream (each request of each stream takes both).
        """
        if self._addresses is None:
            transport: Any = self.transport
            self._addresses = (transport.getPeer(), transport.getHost())
        return self._addresses

    def acknowledge(self, streamId: int, count: int) -> None:
        """
        C{count} flow-controlled bytes of stream C{streamId} were taken:
        the client may send as many more.
        """
        if count and not self._closing:
            try:
                self.h2.acknowledge_received_data(count, streamId)
            except (ProtocolError, ValueError, KeyError):
                return
            self._flush()

    def acknowledgeConnection(self, count: int) -> None:
        """
        C{count} flow-controlled bytes were dropped for a stream whose own
        window stays shut: only the connection's window opens again.
        """
        if count and not self._closing:
            self.h2.increment_flow_control_window(count)
            self._flush()

    def resetStream(self, streamId: int, code: int) -> None:
        """
        Reset stream C{streamId} with C{code}, if it is still open.
        """
        if self._closing:
            return
        try:
            self.h2.reset_stream(streamId, code)
        except ProtocolError:
            return
        self._flush()

    def send(self, stream: H2Stream) -> None:
        """
        Send what C{stream} may send now.
        """
        if self._closing or self._writePaused:
            self._watchSending()
            return
        self._ready[stream] = None
        if self._readyCall is None:
            self._readyCall = self.clock.callLater(0, self._sendReady)

    def _sendReady(self) -> None:
        self._readyCall = None
        ready, self._ready = self._ready, {}
        if self._closing or self._writePaused:
            self._watchSending()
            return
        now = self.clock.seconds()
        for stream in ready:
            stream.sendSome(now)
        self._flush()
        self._watchSending()

    def streamGone(self, stream: H2Stream) -> None:
        """
        C{stream} is done, or over.
        """
        if stream.done() and self.streams.get(stream.streamId) is stream:
            del self.streams[stream.streamId]
        if not self.streams:
            if self._draining:
                self._close(None)
            else:
                self._startIdleTimer()

    # Output.

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _sendAll(self) -> None:
        if self._closing or self._writePaused:
            return
        # Round robin, a frame per stream per pass, so that one stream with
        # much to send does not take every window update for itself.
        now = self.clock.seconds()
        moving = True
        while moving and not (self._writePaused or self._closing):
            moving = False
            for stream in [s for s in self.streams.values() if s.pending()]:
                if stream.sendSome(now, frames=1):
                    moving = True
            self._flush()
        self._watchSending()

    def _watchSending(self) -> None:
        """
        Time the streams that wait for the client's window (or for the
        transport): after L{HTTP2Settings.sendTimeout} without progress,
        they are reset.
        """
        if self._sendTimer is not None or self._closing:
            return
        oldest = min(
            (s for s in (st.waitingSince() for st in self.streams.values()) if s is not None),
            default=None,
        )
        if oldest is None:
            return
        delay = max(0.0, oldest + self.settings.sendTimeout - self.clock.seconds())
        self._sendTimer = self.clock.callLater(delay, self._sendTimedOut)

    def _sendTimedOut(self) -> None:
        self._sendTimer = None
        now = self.clock.seconds()
        for stream in list(self.streams.values()):
            since = stream.waitingSince()
            if since is not None and now - since >= self.settings.sendTimeout:
                self._log.info(
                    "HTTP/2 client {peer} took nothing of stream {stream} for {timeout:g}s; "
                    "resetting it",
                    peer=self._peer(),
                    stream=stream.streamId,
                    timeout=self.settings.sendTimeout,
                )
                stream.reset(ErrorCodes.CANCEL)
        self._watchSending()

    # IPushProducer, for the transport.

    def pauseProducing(self) -> None:
        self._writePaused = True

    def resumeProducing(self) -> None:
        self._writePaused = False
        self._pendingAcks = 0
        self._sendAll()

    def stopProducing(self) -> None:
        self._writePaused = True

    # Idle and drain.

    def _startIdleTimer(self) -> None:
        if self._idleTimer is None and not self._closing:
            self._idleTimer = self.clock.callLater(self.site.limits.idleTimeout, self._idle)

    def _stopIdleTimer(self) -> None:
        timer, self._idleTimer = self._idleTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self._idleTimer = None
        if not self.streams:
            self._close(None)

    def drain(self) -> None:
        """
        Close gracefully (GOAWAY, NO_ERROR): streams in progress finish,
        no new ones are taken; the connection closes when the last ends.
        """
        if self._draining or self._closing:
            return
        self._draining = True
        if not self.streams:
            self._close(None)
            return
        # h2 cannot send on streams after its own GOAWAY: this one is sent
        # as a frame of lbproxy's (the streams' frames follow it).
        self._flush()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self._lastStreamId, error_code=0)
        assert self.transport is not None
        self.transport.write(frame.serialize())

    def _close(self, reason: str | None, goAway: bool = True) -> None:
        """
        Close the connection: GOAWAY (unless one is queued already), then
        close once it is sent; a transport that cannot send (a client
        that reads nothing) is aborted.
        """
        if self._closing:
            return
        self.closeReason = reason
        if goAway:
            try:
                self.h2.close_connection(last_stream_id=self._lastStreamId)
            except ProtocolError:
                pass
        self._flush()
        self._closing = True
        self._stopIdleTimer()
        transport: Any = self.transport
        if transport is None:
            return
        # A transport with a producer registered (TLS's) waits for it to
        # go before it closes.
        transport.unregisterProducer()
        if self._writePaused:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _peer(self) -> str:
        peer = getattr(self.transport, "getPeer", None)
        return str(getattr(peer(), "host", "-")) if peer is not None else "-"


class StreamRefused(Event):
    """
    A stream the client opened over the limit of concurrent streams was
    refused (RST_STREAM REFUSED_STREAM).

    @ivar stream_id: Its ID.
    """

    def __init__(self, streamId: int) -> None:
        self.stream_id = streamId

    def __repr__(self) -> str:
        return f"<StreamRefused stream_id:{self.stream_id}>"


class _EdgeH2Connection(H2Connection):
    """
    C{h2}'s connection with one difference: a HEADERS frame that would open
    more streams than SETTINGS_MAX_CONCURRENT_STREAMS allows is a stream
    error, RST_STREAM REFUSED_STREAM (RFC 9113 5.1.2), not a connection
    error that would end every other stream: the stream is opened (its
    header block decoded, so that HPACK stays in step), reset at once, and
    reported as a L{StreamRefused} event instead of its request.
    """

    _admitting = False

    @property
    def open_inbound_streams(self) -> int:
        if self._admitting:
            return 0
        # Counting walks every stream (and forgets the closed ones); while
        # fewer are known than the limit, their number is bound enough.
        known = len(self.streams)
        if known < self.local_settings.max_concurrent_streams:
            return known
        return super().open_inbound_streams

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[Event]]:
        streamId: int = frame.stream_id
        if (
            streamId in self.streams
            or self.open_inbound_streams < self.local_settings.max_concurrent_streams
        ):
            return super()._receive_headers_frame(frame)
        self._admitting = True
        try:
            frames, events = super()._receive_headers_frame(frame)
        finally:
            self._admitting = False
        self.reset_stream(streamId, ErrorCodes.REFUSED_STREAM)
        kept = [e for e in events if getattr(e, "stream_id", None) != streamId]
        return frames, [*kept, StreamRefused(streamId)]


_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILERS = HeaderValidationFlags(
    is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False
)


def _emptyHead(fields: list[tuple[bytes, bytes]]) -> Any:
    """
    What a refused stream's log line shows of its head.
    """
    from twisted.web.http_headers import Headers

    from lbproxy.http2.head import H2Head

    pseudo = {name: value for name, value in fields if name.startswith(b":")}
    return H2Head(
        pseudo.get(b":method", b""),
        pseudo.get(b":path", b""),
        pseudo.get(b":scheme", b""),
        Headers(),
        None,
    )


def _codeName(code: Any) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


__all__ = ["H2EdgeConnection", "StreamRefused"]
