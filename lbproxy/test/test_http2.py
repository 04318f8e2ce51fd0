"""
Tests for HTTP/2 at the edge (L{lbproxy.http2}): whole conversations
between an C{h2} client and the proxy's site over the in-memory network
(L{lbproxy.test.memorynet}), through the balancer to twisted.web
backends, every timer on one clock; and the attacks HTTP/2 invites.
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
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lbproxy.balancer import Balancer, BalancerConfig, PoolConfig
from lbproxy.http.checks import Rejection
from lbproxy.http.edge import EdgeLimits, ProxyRequest
from lbproxy.http2.connection import H2EdgeConnection
from lbproxy.http2.head import H2Head, checkHead
from lbproxy.http2.negotiate import NegotiatingFactory
from lbproxy.http2.settings import H2_PREFACE, HTTP2Settings
from lbproxy.http2.stream import EARLY_RESET_DELAY
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.memorynet import MemoryNetwork


class _ClientProtocol(Protocol):
    """
    The client end of one connection: feeds what arrives to an C{h2}
    client connection and keeps the events.
    """

    def __init__(self, client: H2Client) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.received(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.closed = True


class H2Client:
    """
    An C{h2} client over the in-memory network.

    @ivar events: Every event the server's frames made, in order.
    """

    closed = False
    afterGoAway: bytes | None = None

    def __init__(
        self, network: MemoryNetwork, factory: Any, settings: dict[int, int] | None = None
    ) -> None:
        self.network = network
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events: list[Event] = []
        self.protocol = network.join(factory, Factory.forProtocol(lambda: _ClientProtocol(self)))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.flush()

    @property
    def transport(self) -> Any:
        return self.protocol.transport  # type: ignore[attr-defined]

    def received(self, data: bytes) -> None:
        if self.afterGoAway is not None:
            # h2's client takes nothing after a GOAWAY: keep the bytes.
            self.afterGoAway += data
            return
        try:
            self.events += self.h2.receive_data(data)
        except ProtocolError:
            self.afterGoAway = data
        self.send()

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.disconnected:
            self.transport.write(data)

    def flush(self) -> None:
        self.send()
        self.network.flush()

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        body: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        streamId: int = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", path),
            *(extra or []),
        ]
        self.h2.send_headers(streamId, headers, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(streamId, body, end_stream=end)
        return streamId

    def response(self, streamId: int) -> tuple[dict[bytes, bytes], bytes, bool]:
        """
        The head, the body so far, and whether the stream ended.
        """
        head: dict[bytes, bytes] = {}
        body = b""
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != streamId:
                continue
            if isinstance(event, ResponseReceived):
                head = dict(event.headers)
            elif isinstance(event, DataReceived):
                body += event.data
            elif isinstance(event, StreamEnded):
                ended = True
        return head, body, ended

    def resets(self) -> list[tuple[int, int]]:
        return [(e.stream_id, e.error_code) for e in self.events if isinstance(e, StreamReset)]

    def goAway(self) -> ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return event
        return None

    def readAll(self) -> None:
        """
        Acknowledge everything received (open the windows again).
        """
        for event in self.events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                try:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length,
                        event.stream_id,
                    )
                except Exception:  # closed streams: nothing to open
                    pass
                event.flow_controlled_length = 0


class HTTP2Case(SynchronousTestCase):
    """
    The proxy's site behind a L{NegotiatingFactory} with h2c, in front of
    one backend, all in memory.
    """

    settings = HTTP2Settings(enabled=True, h2c=True)
    limits = EdgeLimits()

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.clock = self.network.clock
        self.backend = self.network.backend(b"backend", respond=self.respond)
        self.balancer = Balancer(
            BalancerConfig(
                pools=(
                    PoolConfig(
                        name="default",
                        backends=(self.backend.backend,),
                        chooser=FirstAvailable(),
                    ),
                ),
                routes=RouteTable((RouteRule(pool="default"),)),
            ),
            self.clock,
            self.clock,
            self.network.upstream,
        )
        self.site = self.network.proxySite(self.balancer.router)
        self.site.limits = self.limits
        self.factory = NegotiatingFactory(self.site, self.settings, self.clock)

    def respond(self, request: Request) -> bytes | int:
        size = request.getHeader(b"x-size")
        if size is not None:
            return b"x" * int(size)
        body = self.backend.resource.received[-1].body
        return b"echo:" + body if body else b"backend"

    def connect(self, settings: dict[int, int] | None = None) -> H2Client:
        return H2Client(self.network, self.factory, settings)

    def serverConnection(self) -> H2EdgeConnection:
        (channel,) = self.site.channels
        assert isinstance(channel, H2EdgeConnection)
        return channel


class ExchangeTests(HTTP2Case):
    """
    Requests over HTTP/2 take the HTTP/1.1 edge's path to the backend.
    """

    def test_get(self) -> None:
        """
        A GET over h2c is answered with the backend's response.
        """
        client = self.connect()
        stream = client.request(b"/hello?x=1")
        client.flush()
        head, body, ended = client.response(stream)
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body, b"backend")
        self.assertTrue(ended)
        (received,) = self.backend.resource.received
        self.assertEqual(received.method, b"GET")
        self.assertEqual(received.uri, b"/hello?x=1")

    def test_wholeAndStreamedSame(self) -> None:
        """
        A response that came whole from its backend is framed as the
        streamed relay frames it: the same fields (repeats kept, C{Date}
        from the backend, no connection-specific ones) and the same body.
        """

        def respond(request: Request) -> bytes:
            request.setHeader(b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT")
            request.responseHeaders.setRawHeaders(b"Set-Cookie", [b"a=1", b"b=2"])
            request.setHeader(b"Connection", b"keep-alive")
            return b"answer"

        self.backend.resource.handler = respond
        answers = []
        for whole in (True, False):
            self.patch(ProxyRequest, "wholeResponses", whole)
            client = self.connect()
            stream = client.request(b"/")
            client.flush()
            (fields,) = [
                e.headers
                for e in client.events
                if isinstance(e, ResponseReceived) and e.stream_id == stream
            ]
            _, body, ended = client.response(stream)
            answers.append((sorted(fields), body, ended))
        self.assertEqual(answers[0], answers[1])
        fields, body, ended = answers[0]
        self.assertEqual((body, ended), (b"answer", True))
        self.assertEqual([v for n, v in fields if n == b"set-cookie"], [b"a=1", b"b=2"])
        self.assertEqual([v for n, v in fields if n == b"date"], [b"Sun, 06 Nov 1994 08:49:37 GMT"])
        self.assertNotIn(b"connection", [n for n, _ in fields])

    def test_wholeHeadAndNoContent(self) -> None:
        """
        Whole answers without a body end the stream with their head: HEAD
        keeps the backend's length, 204 has none, and neither has DATA.
        """

        def respond(request: Request) -> bytes:
            if request.uri == b"/none":
                request.setResponseCode(204)
                return b""
            return b"twelve bytes"

        self.backend.resource.handler = respond
        client = self.connect()
        head = client.request(b"/", method=b"HEAD")
        none = client.request(b"/none")
        client.flush()
        fields, body, ended = client.response(head)
        self.assertEqual((fields[b":status"], fields[b"content-length"]), (b"200", b"12"))
        self.assertEqual((body, ended), (b"", True))
        fields, body, ended = client.response(none)
        self.assertEqual(fields[b":status"], b"204")
        self.assertNotIn(b"content-length", fields)
        self.assertEqual((body, ended), (b"", True))

    def test_forwardingHeaders(self) -> None:
        """
        The backend gets the Host from C{:authority} and the forwarding
        headers an HTTP/1.1 request would bring.
        """
        client = self.connect()
        client.request(b"/", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        client.flush()
        (received,) = self.backend.resource.received
        headers = {name.lower(): values for name, values in received.headers}
        self.assertEqual(headers[b"host"], [b"example.com"])
        self.assertEqual(headers[b"x-forwarded-for"], [b"192.0.2.7"])
        self.assertEqual(headers[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(headers[b"cookie"], [b"a=1; b=2"])

    def test_accessLog(self) -> None:
        """
        The access log line names the protocol, HTTP/2.
        """
        client = self.connect()
        client.request(b"/logged")
        client.flush()
        (line,) = self.network.accessLog
        self.assertIn('"GET /logged HTTP/2"', line)
        self.assertIn(" 200 ", line)

    def test_postBody(self) -> None:
        """
        A request body goes to the backend whole, and its answer comes back.
        """
        client = self.connect()
        stream = client.request(b"/up", method=b"POST", body=b"hello body")
        client.flush()
        _, body, ended = client.response(stream)
        self.assertEqual(body, b"echo:hello body")
        self.assertTrue(ended)

    def test_emptyDataFrames(self) -> None:
        """
        Empty DATA frames in a request body without a length add nothing
        to it: the backend gets the whole body and one request (as a
        zero-size chunk, an empty frame would end the body early and what
        follows would be read as another request).
        """
        client = self.connect()
        streamId = client.request(b"/up", method=b"POST", end=False)
        client.flush()
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: backend\r\n\r\n"
        client.h2.send_data(streamId, b"")
        client.h2.send_data(streamId, b"", pad_length=10)
        client.h2.send_data(streamId, smuggled, end_stream=True)
        client.flush()
        head, body, ended = client.response(streamId)
        self.assertEqual((head[b":status"], body, ended), (b"200", b"echo:" + smuggled, True))
        self.assertEqual([r.body for r in self.backend.resource.received], [smuggled])

    def test_bodyInPieces(self) -> None:
        """
        A body sent in pieces over several reads, without a length, streams
        to the backend.
        """
        client = self.connect()
        stream = client.request(b"/up", method=b"POST", end=False)
        client.flush()
        for piece in (b"one ", b"two ", b"three"):
            client.h2.send_data(stream, piece)
            client.flush()
        client.h2.end_stream(stream)
        client.flush()
        _, body, _ = client.response(stream)
        self.assertEqual(body, b"echo:one two three")

    def test_largeResponse(self) -> None:
        """
        A response larger than every window arrives whole as the client
        opens its windows.
        """
        client = self.connect()
        size = 1024 * 1024
        stream = client.request(b"/big", extra=[(b"x-size", b"%d" % size)])
        client.flush()
        for _ in range(200):
            client.readAll()
            client.flush()
        _, body, ended = client.response(stream)
        self.assertEqual(len(body), size)
        self.assertTrue(ended)

    def test_concurrentStreams(self) -> None:
        """
        Many streams on one connection are each answered.
        """
        client = self.connect()
        streams = [client.request(b"/%d" % i) for i in range(50)]
        client.flush()
        for stream in streams:
            head, body, ended = client.response(stream)
            self.assertEqual((head[b":status"], body, ended), (b"200", b"backend", True))

    def test_idleClosed(self) -> None:
        """
        A connection with no stream for the idle timeout gets GOAWAY and is
        closed, having first stopped being its transport's producer (TLS
        does not close a transport that still has one).
        """
        client = self.connect()
        server = self.serverConnection()
        self.assertIs(server.transport.producer, server)  # type: ignore[union-attr]
        self.clock.advance(self.limits.idleTimeout)
        client.flush()
        goAway = client.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(client.closed)
        self.assertIsNone(server.transport.producer)  # type: ignore[union-attr]

    def test_drain(self) -> None:
        """
        Draining sends GOAWAY at once; the stream in progress still gets
        its answer, and the connection closes after it.
        """
        self.backend.hold()
        client = self.connect()
        stream = client.request(b"/slow")
        client.flush()
        drained = self.site.drain(30)
        client.flush()
        self.assertIsNotNone(client.goAway())
        self.assertFalse(client.closed)
        (held,) = self.backend.held
        held.write(b"late")
        held.finish()
        client.flush()
        # (h2's client reads nothing after a GOAWAY: the raw frames.)
        assert client.afterGoAway is not None
        self.assertIn(b"late", client.afterGoAway)
        self.assertIn(" 200 ", self.network.accessLog[0])
        self.assertTrue(client.closed)
        self.assertEqual(stream, 1)
        self.successResultOf(drained)

    def test_http11Still(self) -> None:
        """
        On a plain listener with h2c, an HTTP/1.1 request is answered as
        ever.
        """
        raw = self.network.raw(self.factory, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.network.flush()
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 200 OK\r\n"), raw.data[:100])


class HeadCheckTests(SynchronousTestCase):
    """
    L{checkHead} checks an HTTP/2 head as the HTTP/1.1 edge checks a head.
    """

    def check(self, *extra: tuple[bytes, bytes], path: bytes = b"/") -> Any:
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", path),
            *extra,
        ]
        return checkHead(fields, 8192, 65536, 100)

    def test_authorityIsHost(self) -> None:
        """
        C{:authority} becomes the Host.
        """
        head = self.check((b":authority", b"example.com:8443"))
        assert isinstance(head, H2Head)
        self.assertEqual(head.headers.getRawHeaders(b"host"), [b"example.com:8443"])

    def test_badAuthority(self) -> None:
        """
        An authority that is not a valid Host is refused, 400.
        """
        self.assertEqual(self.check((b":authority", b"a b")).code, 400)

    def test_noAuthority(self) -> None:
        """
        A request with neither C{:authority} nor Host is refused, 400.
        """
        self.assertEqual(self.check().code, 400)

    def test_hostDiffers(self) -> None:
        """
        A Host that differs from C{:authority} is refused, 400.
        """
        self.assertEqual(self.check((b":authority", b"a.com"), (b"host", b"b.com")).code, 400)

    def test_connectionSpecific(self) -> None:
        """
        Connection-specific fields are refused (RFC 9113 8.2.2).
        """
        for field in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"):
            self.assertEqual(self.check((b":authority", b"a"), (field, b"x")).code, 400)
        self.assertEqual(self.check((b":authority", b"a"), (b"te", b"gzip")).code, 400)
        self.assertIsInstance(self.check((b":authority", b"a"), (b"te", b"trailers")), H2Head)

    def test_longTarget(self) -> None:
        """
        A C{:path} longer than the limit is 414.
        """
        self.assertEqual(self.check((b":authority", b"a"), path=b"/" + b"a" * 9000).code, 414)

    def test_tooManyFields(self) -> None:
        """
        More fields than the limit is 431.
        """
        fields = [(b"x-%d" % i, b"v") for i in range(101)]
        self.assertEqual(self.check((b":authority", b"a"), *fields).code, 431)

    def test_badContentLength(self) -> None:
        """
        A malformed Content-Length is 400.
        """
        self.assertEqual(self.check((b":authority", b"a"), (b"content-length", b"x")).code, 400)


class RefusalTests(HTTP2Case):
    """
    Streams that fail the head checks are answered on their own; the
    connection goes on.
    """

    def test_refusedStream(self) -> None:
        """
        A stream whose target is too long is answered 414 and logged; no
        backend sees it, and the next stream is served.
        """
        client = self.connect()
        bad = client.request(b"/" + b"a" * 9000)
        good = client.request(b"/")
        client.flush()
        head, _, ended = client.response(bad)
        self.assertEqual((head[b":status"], ended), (b"414", True))
        self.assertEqual(client.response(good)[0][b":status"], b"200")
        self.assertEqual(len(self.backend.resource.received), 1)
        self.assertIn(" 414 ", self.network.accessLog[0])

    def test_malformedIsStreamError(self) -> None:
        """
        A malformed request head (RFC 9113 8.1.1: a connection-specific
        field, an upper-case name, no C{:path}, an unknown pseudo-header, a
        CR in a value) is a stream error: that stream is reset with
        PROTOCOL_ERROR, nothing reaches a backend, and a good stream on the
        same connection is served.
        """
        base = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
        ]
        malformed = [
            [*base, (b":path", b"/"), (b"connection", b"keep-alive")],
            [*base, (b":path", b"/"), (b"X-Upper", b"1")],
            base,
            [*base, (b":path", b"/"), (b":protocol", b"x")],
            [*base, (b":path", b"/"), (b"x-a", b"1\r\nx-b: 2")],
            [*base, (b":path", b"")],
        ]
        client = self.connect()
        client.h2.config.validate_outbound_headers = False
        client.h2.config.normalize_outbound_headers = False
        ids = []
        for fields in malformed:
            streamId = client.h2.get_next_available_stream_id()
            client.h2.send_headers(streamId, fields, end_stream=True)
            ids.append(streamId)
        good = client.request(b"/")
        client.flush()
        self.assertEqual(
            client.resets(), [(streamId, ErrorCodes.PROTOCOL_ERROR) for streamId in ids]
        )
        self.assertIsNone(client.goAway())
        self.assertEqual(client.response(good)[0][b":status"], b"200")
        self.assertEqual(len(self.backend.resource.received), 1)
        self.assertFalse(client.closed)

    def test_bodyTooLarge(self) -> None:
        """
        A declared length above the body limit is answered 413.
        """
        self.site.limits = EdgeLimits(maxBodySize=10)
        client = self.connect()
        stream = client.request(
            b"/", method=b"POST", end=False, extra=[(b"content-length", b"100")]
        )
        client.flush()
        self.assertEqual(client.response(stream)[0][b":status"], b"413")

    def _earlyAnswer(self, client: H2Client, size: int = 60000) -> int:
        """
        Send C{size} bytes of a body the proxy refuses at its head (413),
        without ending the stream.
        """
        self.site.limits = EdgeLimits(maxBodySize=10)
        stream = client.request(
            b"/", method=b"POST", end=False, extra=[(b"content-length", b"%d" % (10 * size,))]
        )
        for offset in range(0, size, 16384):
            client.h2.send_data(stream, b"x" * min(16384, size - offset))
        client.flush()
        return stream

    def test_earlyAnswerWindowShut(self) -> None:
        """
        A response complete before its request is not followed by a reset
        at once (curl drops a response it reads together with the reset):
        more of the request is dropped, and the stream's window stays shut
        while the connection's opens again.
        """
        client = self.connect()
        stream = self._earlyAnswer(client)
        head, _body, ended = client.response(stream)
        self.assertEqual((head[b":status"], ended), (b"413", True))
        window = client.h2.local_flow_control_window(stream)
        connectionWindow = client.h2.outbound_flow_control_window
        client.h2.send_data(stream, b"y" * 1000)
        client.flush()
        self.assertEqual(client.resets(), [])
        self.assertEqual(client.h2.local_flow_control_window(stream), window - 1000)
        self.assertEqual(client.h2.outbound_flow_control_window, connectionWindow)

    def test_earlyAnswerResetLater(self) -> None:
        """
        A client that sends nothing more after an early answer has the
        stream reset (NO_ERROR) after C{EARLY_RESET_DELAY} seconds.
        """
        client = self.connect()
        stream = self._earlyAnswer(client)
        self.clock.advance(EARLY_RESET_DELAY - 0.1)
        client.flush()
        self.assertEqual(client.resets(), [])
        self.clock.advance(0.1)
        client.flush()
        self.assertEqual(client.resets(), [(stream, ErrorCodes.NO_ERROR)])
        self.assertEqual(self.serverConnection().streams, {})

    def test_earlyAnswersKeepTheConnectionWindow(self) -> None:
        """
        The body bytes of streams answered early (and reset) are given back
        to the connection's window: a client may be refused many uploads
        on one connection, more than the connection's window, and still
        send a body on it.
        """
        client = self.connect()
        window = self.settings.connectionWindowSize
        for _ in range(window // 60000 + 10):
            self._earlyAnswer(client)
            self.clock.advance(EARLY_RESET_DELAY)
            client.flush()
        self.site.limits = EdgeLimits()
        stream = client.request(b"/", method=b"POST", body=b"z" * 1000)
        client.flush()
        head, body, ended = client.response(stream)
        self.assertEqual((head[b":status"], body, ended), (b"200", b"echo:" + b"z" * 1000, True))


class InterimTests(HTTP2Case):
    """
    Interim (1xx) responses reach HTTP/2 clients as informational HEADERS.
    """

    def informational(self, client: H2Client, streamId: int) -> list[dict[bytes, bytes]]:
        return [
            dict(e.headers)
            for e in client.events
            if isinstance(e, InformationalResponseReceived) and e.stream_id == streamId
        ]

    def test_earlyHints(self) -> None:
        """
        A 103 written to a stream before its final response reaches the
        client as an informational HEADERS frame (no END_STREAM, header
        names lower-case, hop-by-hop fields dropped), then the final
        response follows on the same stream.
        """
        self.backend.hold()
        client = self.connect()
        streamId = client.request(b"/")
        client.flush()
        stream = self.serverConnection().streams[streamId]
        stream.writeInterim(
            103, b"Early Hints", [(b"Link", b"</s.css>; rel=preload"), (b"Connection", b"x")]
        )
        client.flush()
        self.assertEqual(
            self.informational(client, streamId),
            [{b":status": b"103", b"link": b"</s.css>; rel=preload"}],
        )
        self.assertEqual(client.response(streamId), ({}, b"", False))
        (held,) = self.backend.held
        held.write(b"late")
        held.finish()
        client.flush()
        head, body, ended = client.response(streamId)
        self.assertEqual((head[b":status"], body, ended), (b"200", b"late", True))

    def test_afterFinalIgnored(self) -> None:
        """
        An interim response after the final head has gone is not sent.
        """
        client = self.connect()
        streamId = client.request(b"/", method=b"POST", body=b"x", end=False)
        client.flush()
        stream = self.serverConnection().streams[streamId]
        stream.answer(Rejection(400, "Bad Request", "no"))
        client.flush()
        stream.writeInterim(100, b"Continue", [])
        client.flush()
        self.assertEqual(self.informational(client, streamId), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_continueRelayed(self) -> None:
        """
        C{expect: 100-continue} goes to the backend, and its C{100 Continue}
        (twisted.web sends one) reaches the HTTP/2 client before the body
        is sent.
        """
        self.backend.hold()
        client = self.connect()
        streamId = client.request(
            b"/", method=b"POST", body=b"", end=False, extra=[(b"expect", b"100-continue")]
        )
        client.flush()
        self.assertEqual(self.informational(client, streamId), [{b":status": b"100"}])


class FlowControlTests(HTTP2Case):
    """
    Flow control is backpressure, both ways, per stream.
    """

    settings = HTTP2Settings(enabled=True, h2c=True, sendTimeout=60.0)

    def test_slowReaderPausesItsBackend(self) -> None:
        """
        A client that opens no window gets one window's worth; its backend
        is paused once the stream holds C{streamBuffer} bytes; another
        stream is served meanwhile, and reading resumes as the client
        reads.
        """
        self.backend.hold()
        client = self.connect()
        slow = client.request(b"/big")
        client.flush()
        (held,) = self.backend.held
        held.setHeader(b"content-length", b"%d" % (1024 * 1024))
        piece = b"x" * 16384
        for _ in range(20):
            held.write(piece)
            client.flush()
        body = client.response(slow)[1]
        self.assertEqual(len(body), 65535)
        (stream,) = self.serverConnection().streams.values()
        # Paused: over a socket the backend's is no longer read (the
        # in-memory transports ignore pauses; tests/test_http2.py measures
        # the bound over real sockets).
        self.assertTrue(stream._producerPaused)
        self.backend.release()
        fast = client.request(b"/small")
        client.flush()
        # The connection window is spent by the slow stream: read it.
        client.readAll()
        client.flush()
        self.assertEqual(client.response(fast)[1], b"backend")
        for _ in range(10):
            client.readAll()
            client.flush()
        self.assertFalse(stream._producerPaused)

    def test_zeroWindowTimesOut(self) -> None:
        """
        A stream whose window never opens is reset after the send timeout;
        the connection stays, and memory held is one buffer.
        """
        client = self.connect({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        stream = client.request(b"/small")
        client.flush()
        self.assertEqual(client.response(stream)[1], b"")
        self.clock.advance(self.settings.sendTimeout)
        client.flush()
        self.assertIn((stream, ErrorCodes.CANCEL), client.resets())
        self.assertFalse(client.closed)
        self.assertEqual(self.serverConnection().streams, {})

    def test_bodyNeverSent(self) -> None:
        """
        A stream that announces a body and sends none is answered 408
        after the body timeout.
        """
        client = self.connect()
        stream = client.request(b"/", method=b"POST", end=False)
        client.flush()
        self.clock.advance(self.limits.bodyTimeout)
        client.flush()
        self.assertEqual(client.response(stream)[0][b":status"], b"408")
        self.assertFalse(client.closed)

    def test_uploadWindow(self) -> None:
        """
        While a stream's reading is held back (its body buffer is full, or
        its backend reads slowly), nothing it receives is acknowledged: the
        client can send one window and no more; once reading resumes, the
        window opens again.
        """
        self.backend.hold()
        client = self.connect()
        stream = client.request(b"/", method=b"POST", end=False)
        client.flush()
        (serverStream,) = self.serverConnection().streams.values()
        serverStream.pauseReading("backend")
        window = client.h2.local_flow_control_window(stream)
        for offset in range(0, window, 16384):
            client.h2.send_data(stream, b"u" * min(16384, window - offset))
        client.flush()
        self.assertEqual(client.h2.local_flow_control_window(stream), 0)
        serverStream.resumeReading("backend")
        client.flush()
        self.assertEqual(client.h2.local_flow_control_window(stream), window)


class AttackTests(HTTP2Case):
    """
    The known HTTP/2 attacks are survived with bounded work and memory.
    """

    def test_rapidResetSameRead(self) -> None:
        """
        Streams opened and reset in the same read never reach a backend;
        past the reset budget the connection is closed with GOAWAY
        ENHANCE_YOUR_CALM: of 5 000 such streams, the proxy takes no more
        than the budget (the clock does not move, so none is earned back).
        """
        client = self.connect()
        for _ in range(5000):
            stream = client.request(b"/")
            client.h2.reset_stream(stream, ErrorCodes.CANCEL)
            if client.closed:
                break
        client.flush()
        self.assertEqual(self.backend.resource.received, [])
        goAway = client.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.closed)
        # Client streams are odd: the (burst + 1)th reset is refused.
        last = goAway.last_stream_id
        assert last is not None
        self.assertLessEqual(last, 2 * (self.settings.resetBurst + 1) - 1)
        self.flushLoggedErrors()

    def test_rapidResetAcrossReads(self) -> None:
        """
        Streams opened and reset in separate reads (each reaching the
        backend) also spend the budget: ENHANCE_YOUR_CALM, no traceback.
        """
        self.backend.hold()
        client = self.connect()
        for _ in range(self.settings.resetBurst + 10):
            if client.closed:
                break
            stream = client.request(b"/")
            client.flush()
            client.h2.reset_stream(stream, ErrorCodes.CANCEL)
            client.flush()
        goAway = client.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_malformedSpendsResetBudget(self) -> None:
        """
        Streams that lbproxy resets because their heads are malformed spend
        the reset budget as the client's own resets do ("MadeYouReset"):
        past it, GOAWAY ENHANCE_YOUR_CALM; no backend is asked.
        """
        client = self.connect()
        client.h2.config.validate_outbound_headers = False
        client.h2.config.normalize_outbound_headers = False
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"a"),
            (b":path", b"/"),
            (b"Upper", b"1"),
        ]
        for i in range(self.settings.resetBurst + 10):
            if client.closed:
                break
            client.h2.send_headers(client.h2.get_next_available_stream_id(), fields, True)
            if i % 50 == 49:
                client.flush()
        client.flush()
        goAway = client.goAway()
        assert goAway is not None
        self.assertEqual(goAway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(self.backend.resource.received, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_malformedTrailers(self) -> None:
        """
        Trailers with a pseudo-header reset their stream (PROTOCOL_ERROR);
        the connection goes on.
        """
        self.backend.hold()
        client = self.connect()
        client.h2.config.validate_outbound_headers = False
        stream = client.request(b"/", method=b"POST", body=b"x", end=False)
        client.h2.send_headers(stream, [(b":path", b"/again")], end_stream=True)
        client.flush()
        self.assertIn((stream, ErrorCodes.PROTOCOL_ERROR), client.resets())
        self.assertIsNone(client.goAway())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_resetsWithinBudget(self) -> None:
        """
        Resets within the budget's rate leave the connection usable: after
        thousands of them, spread over time, a request is served.
        """
        client = self.connect()
        for _ in range(30):
            for _ in range(100):
                stream = client.request(b"/")
                client.h2.reset_stream(stream, ErrorCodes.CANCEL)
            client.flush()
            self.clock.advance(1.0)
        self.assertIsNone(client.goAway())
        stream = client.request(b"/after")
        client.flush()
        self.assertEqual(client.response(stream)[1], b"backend")

    def test_continuationFlood(self) -> None:
        """
        A header block continued by endless CONTINUATION frames is a
        connection error after h2's limit of 64, before much is held.
        """
        client = self.connect()
        transport = client.transport
        first = HeadersFrame(1, flags=[])
        first.data = client.h2.encoder.encode([(b":method", b"GET")])
        transport.write(first.serialize())
        for _ in range(1000):
            if transport.disconnected:
                break
            frame = ContinuationFrame(1, flags=[])
            frame.data = b"\x00" * 1000
            transport.write(frame.serialize())
            self.network.flush()
        self.network.flush()
        self.assertTrue(client.closed)
        self.assertEqual(self.backend.resource.received, [])

    def test_hpackBomb(self) -> None:
        """
        A header list that decodes above the limit (one large value
        repeated by index) is refused: the connection is closed, nothing
        reaches a backend.
        """
        client = self.connect()
        big = b"b" * 4000
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"a"),
            (b":path", b"/"),
        ] + [(b"x-bomb", big)] * 100
        client.h2.send_headers(client.h2.get_next_available_stream_id(), fields, end_stream=True)
        client.flush()
        goAway = client.goAway()
        assert goAway is not None
        self.assertNotEqual(goAway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(client.closed)
        self.assertEqual(self.backend.resource.received, [])

    def test_pingFloodUnread(self) -> None:
        """
        PINGs sent by a client that reads nothing (the transport is paused)
        close the connection past the bound on queued acknowledgements.
        """
        client = self.connect()
        server = self.serverConnection()
        server.pauseProducing()
        for i in range(self.settings.maxPendingAcks + 10):
            client.h2.ping(b"%08d" % i)
        client.flush()
        self.assertEqual(server.closeReason, "ENHANCE_YOUR_CALM")
        self.assertTrue(client.closed)

    def test_settingsFloodRead(self) -> None:
        """
        SETTINGS frames from a client that reads its acknowledgements cost
        only their handling: the connection stays usable.
        """
        client = self.connect()
        for _ in range(2000):
            client.h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
        client.flush()
        stream = client.request(b"/")
        client.flush()
        self.assertEqual(client.response(stream)[1], b"backend")

    def test_tooManyStreams(self) -> None:
        """
        A stream opened over the limit of concurrent streams is refused on
        its own (RST_STREAM REFUSED_STREAM, RFC 9113 5.1.2); the streams
        already open are answered and the connection goes on.
        """
        self.backend.hold()
        client = self.connect()
        # The client's h2 would not open more than the limit itself.
        client.h2.remote_settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        client.h2.remote_settings.acknowledge()
        limit = self.settings.maxConcurrentStreams
        streams = [client.request(b"/") for _ in range(limit + 1)]
        client.flush()
        self.assertEqual(client.resets(), [(streams[-1], ErrorCodes.REFUSED_STREAM)])
        self.assertIsNone(client.goAway())
        self.assertFalse(client.closed)
        self.assertEqual(len(self.backend.held), limit)
        self.backend.release()
        for held in self.backend.held:
            held.write(b"ok")
            held.finish()
        self.network.flush()
        self.assertEqual(self.serverConnection().streams, {})
        self.assertEqual(self.flushLoggedErrors(), [])


class NegotiationTests(SynchronousTestCase):
    """
    L{NegotiatingFactory} picks the protocol per connection.
    """

    def test_plainWithoutH2c(self) -> None:
        """
        Without h2c, the preface gets the HTTP/1.1 channel's answer (505).
        """
        network = MemoryNetwork()
        site = network.proxySite(None)
        factory = NegotiatingFactory(site, HTTP2Settings(enabled=True), network.clock)
        raw = network.raw(factory, H2_PREFACE)
        network.flush()
        self.assertIn(b"505", raw.data.split(b"\r\n")[0])
