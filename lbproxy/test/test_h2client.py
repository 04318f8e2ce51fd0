"""
Tests for L{lbproxy.upstream.h2client}: the HTTP/2 backend client against
a scripted C{h2} server over in-memory transports, so that every frame is
exact and nothing waits on a socket; and the gRPC status L{lbproxy.proxy}
answers a gRPC call it fails with.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes, Settings
from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from lbproxy._twisted.newclient import RequestNotSent
from lbproxy.proxy import ProxySettings, ReverseProxyResource
from lbproxy.test.fakes import CollectedBody, FirstAvailable, RecordedReading
from lbproxy.test.memorynet import MemoryNetwork
from lbproxy.upstream.backends import Backend, BackendPool, parseBackend
from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.connection import CLOSE_WAIT
from lbproxy.upstream.h2client import (
    STREAM_WINDOW,
    H2ClientConnection,
    H2Response,
    H2Upstream,
    StreamResetError,
    UpgradeNotRelayed,
)
from lbproxy.upstream.health import HTTPProbe
from lbproxy.upstream.pool import Upstream, UpstreamSettings

BACKEND = Backend(host="10.0.0.1", port=50051, scheme="h2c")


class _Server:
    """
    A scripted HTTP/2 server on the other end of one client connection:
    what the client wrote goes through L{pump}, and what the test has the
    server say comes back the same way.
    """

    def __init__(self, client: H2ClientConnection, maxStreams: int | None = None) -> None:
        self.client = client
        self.transport = StringTransport()
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        if maxStreams is not None:
            self.h2.local_settings = Settings(
                client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: maxStreams}
            )
        self.h2.initiate_connection()
        self.events: list[Any] = []
        client.makeConnection(self.transport)

    def pump(self) -> None:
        """
        Deliver what each side wrote to the other until both are quiet.
        """
        while True:
            out = self.transport.value()
            self.transport.clear()
            if out:
                self.events += self.h2.receive_data(out)
            back = self.h2.data_to_send()
            if back and not self.client.closed:
                self.client.dataReceived(back)
            if not out and not back:
                return

    def of(self, kind: type) -> list[Any]:
        """
        The events of C{kind} the server has seen.
        """
        return [e for e in self.events if isinstance(e, kind)]

    def headers(self, streamId: int) -> dict[bytes, bytes]:
        """
        The request head of stream C{streamId}.
        """
        (request,) = [e for e in self.of(RequestReceived) if e.stream_id == streamId]
        return dict(request.headers)

    def received(self, streamId: int) -> bytes:
        """
        The request body of stream C{streamId} so far.
        """
        return b"".join(e.data for e in self.of(DataReceived) if e.stream_id == streamId)

    def respond(
        self,
        streamId: int,
        body: bytes = b"",
        trailers: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
        status: bytes = b"200",
    ) -> None:
        """
        Answer stream C{streamId}.
        """
        self.h2.send_headers(
            streamId, [(b":status", status)], end_stream=end and not body and not trailers
        )
        if body:
            self.h2.send_data(streamId, body, end_stream=end and not trailers)
        if trailers:
            self.h2.send_headers(streamId, trailers, end_stream=True)
        self.pump()


def _connection(clock: Clock | None = None) -> H2ClientConnection:
    return H2ClientConnection(clock or Clock(), b"10.0.0.1:50051", False, 30.0)


def _body(length: int | None = None) -> tuple[StreamedBody, RecordedReading]:
    reading = RecordedReading()
    return StreamedBody(length, reading), reading


class ConnectionTests(SynchronousTestCase):
    """
    One connection: requests, responses, trailers, resets, flow control.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = _connection(self.clock)
        self.server = _Server(self.client)
        self.server.pump()

    def request(
        self, headers: list[tuple[bytes, bytes]] | None = None, body: StreamedBody | None = None
    ) -> Deferred[H2Response]:
        d = self.client.request(b"POST", b"/svc/Method", headers or [], body)
        self.server.pump()
        return d

    def test_ready(self) -> None:
        """
        A connection is ready, with room for streams, once the backend's
        SETTINGS arrived.
        """
        client = _connection()
        client.makeConnection(StringTransport())
        self.assertEqual(client.capacity(), 0)
        self.assertTrue(self.client.ready)
        # h2's server advertises 100 streams.
        self.assertEqual(self.client.capacity(), 100)

    def test_noDelay(self) -> None:
        """
        Nagle's algorithm is off on backend connections (frames of many
        streams go out in small writes).
        """
        calls: list[bool] = []
        transport = StringTransport()
        transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        _connection().makeConnection(transport)
        self.assertEqual(calls, [True])

    def test_requestHead(self) -> None:
        """
        Host becomes C{:authority}, header names are lower case, connection
        fields are not sent, and C{te: trailers} is.
        """
        self.request(
            [
                (b"Host", b"api.example"),
                (b"Content-Type", b"application/grpc"),
                (b"Connection", b"keep-alive"),
                (b"grpc-timeout", b"1S"),
            ]
        )
        head = self.server.headers(1)
        self.assertEqual(head[b":authority"], b"api.example")
        self.assertEqual(head[b":method"], b"POST")
        self.assertEqual(head[b":path"], b"/svc/Method")
        self.assertEqual(head[b":scheme"], b"http")
        self.assertEqual(head[b"content-type"], b"application/grpc")
        self.assertEqual(head[b"grpc-timeout"], b"1S")
        self.assertEqual(head[b"te"], b"trailers")
        self.assertNotIn(b"connection", head)
        self.assertNotIn(b"host", head)

    def test_pseudoHeadersNotRelayed(self) -> None:
        """
        Fields named like pseudo-headers are not relayed (h2 would refuse
        the whole head).
        """
        self.request([(b":extra", b"x"), (b"x-ok", b"1")])
        head = self.server.headers(1)
        self.assertNotIn(b":extra", head)
        self.assertEqual(head[b"x-ok"], b"1")

    def test_noHostAuthority(self) -> None:
        """
        Without a Host, the backend's address is the C{:authority}.
        """
        self.request()
        self.assertEqual(self.server.headers(1)[b":authority"], b"10.0.0.1:50051")

    def test_responseAndTrailers(self) -> None:
        """
        The response head, its body and its trailers reach the caller; the
        body ends with L{ResponseDone} and the trailers are set by then.
        """
        d = self.request()
        self.server.respond(1, b"hello", [(b"grpc-status", b"0"), (b"x-trace", b"t")])
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertIs(response.length, UNKNOWN_LENGTH)
        body = CollectedBody()
        response.deliverBody(body)
        self.assertEqual(body.data, b"hello")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(response.trailers, [(b"grpc-status", b"0"), (b"x-trace", b"t")])

    def test_trailersOnly(self) -> None:
        """
        A head that ends the stream (gRPC's trailers-only answer) is a
        response with an empty body, its fields in the head.
        """
        d = self.request()
        self.server.h2.send_headers(
            1, [(b":status", b"200"), (b"grpc-status", b"14")], end_stream=True
        )
        self.server.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"grpc-status"), [b"14"])
        body = CollectedBody()
        response.deliverBody(body)
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertIsNone(response.trailers)

    def test_contentLength(self) -> None:
        """
        A declared length is the response's length, kept out of its
        end-to-end headers.
        """
        d = self.request()
        self.server.h2.send_headers(1, [(b":status", b"200"), (b"content-length", b"2")])
        self.server.h2.send_data(1, b"ok", end_stream=True)
        self.server.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.length, 2)
        self.assertFalse(response.headers.hasHeader(b"content-length"))
        self.assertEqual(response.connectionHeaders.getRawHeaders(b"content-length"), [b"2"])

    def test_multiplexed(self) -> None:
        """
        Requests in flight at once are streams of the one connection,
        answered in any order.
        """
        ds = [self.request() for _ in range(3)]
        self.assertEqual(sorted(e.stream_id for e in self.server.of(RequestReceived)), [1, 3, 5])
        self.server.respond(5, b"five")
        self.server.respond(1, b"one")
        self.assertNoResult(ds[1])
        self.assertEqual(self.successResultOf(ds[2]).code, 200)
        self.assertEqual(self.successResultOf(ds[0]).code, 200)

    def test_requestBodyStreams(self) -> None:
        """
        The request body goes out as it arrives, and the stream ends with
        it.
        """
        body, _ = _body()
        self.request(body=body)
        body.received(b"abc")
        self.server.pump()
        self.assertEqual(self.server.received(1), b"abc")
        self.assertEqual(self.server.of(StreamEnded), [])
        body.received(b"def")
        body.receivedAll()
        self.server.pump()
        self.assertEqual(self.server.received(1), b"abcdef")
        self.assertEqual([e.stream_id for e in self.server.of(StreamEnded)], [1])

    def test_fullDuplex(self) -> None:
        """
        The response head and data reach the caller while the request body
        is still going (a bidirectional call), and more of the body still
        goes out after.
        """
        body, _ = _body()
        d = self.request(body=body)
        body.received(b"ping1")
        self.server.respond(1, b"pong1", end=False)
        response = self.successResultOf(d)
        received = CollectedBody()
        response.deliverBody(received)
        self.assertEqual(received.data, b"pong1")
        body.received(b"ping2")
        self.server.pump()
        self.assertEqual(self.server.received(1), b"ping1ping2")
        self.server.h2.send_data(1, b"pong2")
        self.server.pump()
        self.assertEqual(received.data, b"pong1pong2")
        self.assertIsNone(received.reason)

    def test_requestBodyBackpressure(self) -> None:
        """
        A body the backend's window does not take is kept up to a limit,
        then the client's reading is paused, and resumed once the backend
        opens its window.
        """
        body, reading = _body()
        self.request(body=body)
        # The server's default window is 65535 bytes: the rest waits.
        for _ in range(12):
            body.received(b"x" * 16384)
        self.server.pump()
        self.assertEqual(len(self.server.received(1)), 65535)
        self.assertEqual(reading.paused, {"backend"})
        acknowledged = 0
        for _ in range(10):
            taken = len(self.server.received(1))
            self.server.h2.acknowledge_received_data(taken - acknowledged, 1)
            acknowledged = taken
            self.server.pump()
        self.assertEqual(len(self.server.received(1)), 12 * 16384)
        self.assertEqual(reading.paused, set())

    def test_responseBackpressure(self) -> None:
        """
        A paused response body acknowledges nothing: its stream's window
        closes, and no other stream's; resuming reopens it.
        """
        d1 = self.request()
        d3 = self.request()
        self.server.respond(1, end=False)
        self.server.respond(3, end=False)
        r1, r3 = self.successResultOf(d1), self.successResultOf(d3)
        b1, b3 = CollectedBody(), CollectedBody()
        r1.deliverBody(b1)
        r3.deliverBody(b3)
        assert b1.transport is not None
        b1.transport.pauseProducing()  # type: ignore[attr-defined]
        h2 = self.server.h2
        for _ in range(STREAM_WINDOW // 16384):
            h2.send_data(1, b"y" * 16384)
            h2.send_data(3, b"z" * 16384)
            self.server.pump()
        self.assertEqual(len(b1.data), STREAM_WINDOW)
        self.assertEqual(len(b3.data), STREAM_WINDOW)
        # Stream 1's window is closed; stream 3's was reopened as it was read.
        self.assertEqual(h2.local_flow_control_window(1), 0)
        self.assertEqual(h2.local_flow_control_window(3), STREAM_WINDOW)
        b1.transport.resumeProducing()  # type: ignore[attr-defined]
        self.server.pump()
        self.assertEqual(h2.local_flow_control_window(1), STREAM_WINDOW)

    def test_backendResetBeforeHead(self) -> None:
        """
        A stream the backend resets before answering fails with
        L{ResponseFailed} naming the reset.
        """
        d = self.request()
        self.server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        self.server.pump()
        failure = self.failureResultOf(d, ResponseFailed)
        self.assertTrue(failure.value.reasons[0].check(StreamResetError))

    def test_refusedStream(self) -> None:
        """
        A stream the backend refused was not processed: it fails with
        L{RequestNotSent}, which any request may be retried after.
        """
        d = self.request()
        self.server.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        self.server.pump()
        self.failureResultOf(d, RequestNotSent)

    def test_backendResetMidBody(self) -> None:
        """
        A reset after the head ends the body with L{ResponseFailed}; the
        connection's other streams go on.
        """
        d1, d3 = self.request(), self.request()
        self.server.respond(1, b"part", end=False)
        response = self.successResultOf(d1)
        body = CollectedBody()
        response.deliverBody(body)
        self.server.h2.reset_stream(1, ErrorCodes.CANCEL)
        self.server.pump()
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.server.respond(3, b"fine")
        self.assertEqual(self.successResultOf(d3).code, 200)

    def test_clientGoneResetsStream(self) -> None:
        """
        Stopping a response body (the client left) resets that stream with
        CANCEL, and the body ends on the next turn of the clock.
        """
        d = self.request()
        self.server.respond(1, b"part", end=False)
        body = CollectedBody()
        self.successResultOf(d).deliverBody(body)
        assert body.transport is not None
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.server.pump()
        (reset,) = self.server.of(StreamReset)
        self.assertEqual((reset.stream_id, reset.error_code), (1, ErrorCodes.CANCEL))
        self.assertIsNone(body.reason)
        self.clock.advance(0)
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertFalse(self.client.closed)

    def test_cancelResetsStream(self) -> None:
        """
        Cancelling the wait for a response (a timeout) resets the stream.
        """
        d = self.request()
        d.cancel()
        self.server.pump()
        self.failureResultOf(d, CancelledError)
        (reset,) = self.server.of(StreamReset)
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)
        self.assertEqual(self.client.streams, {})

    def test_goAway(self) -> None:
        """
        GOAWAY fails the streams the backend did not process with
        L{RequestNotSent}, lets the others go on, takes no new ones, and
        closes the connection when they are over.
        """
        d1, d3 = self.request(), self.request()
        self.server.h2.close_connection(last_stream_id=1)
        self.server.pump()
        self.failureResultOf(d3, RequestNotSent)
        self.assertNoResult(d1)
        self.assertEqual(self.client.capacity(), 0)
        self.assertFalse(self.server.transport.disconnecting)
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertTrue(self.server.transport.disconnecting)

    def test_streamsGoOnAfterGoAway(self) -> None:
        """
        The streams a GOAWAY lets finish do: frames after it (a PING, the
        response) are taken, and the connection closes after them.
        """
        d = self.request()
        self.server.h2.close_connection(last_stream_id=1)
        self.server.pump()
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        head = HeadersFrame(1)
        head.data = Encoder().encode([(b":status", b"200")])
        head.flags.add("END_HEADERS")
        data = DataFrame(1)
        data.data = b"late"
        data.flags.add("END_STREAM")
        self.client.dataReceived(ping.serialize() + head.serialize() + data.serialize())
        body = CollectedBody()
        self.successResultOf(d).deliverBody(body)
        self.assertEqual(body.data, b"late")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertTrue(self.server.transport.disconnecting)

    def test_lostBeforeHead(self) -> None:
        """
        A connection lost before the response head fails the request with
        L{ResponseNeverReceived} (or L{RequestTransmissionFailed} while its
        body was going).
        """
        d = self.request()
        self.client.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ResponseNeverReceived)

    def test_lostMidBody(self) -> None:
        """
        A connection lost mid-body ends the body with L{ResponseFailed}.
        """
        d = self.request()
        self.server.respond(1, b"part", end=False)
        body = CollectedBody()
        self.successResultOf(d).deliverBody(body)
        self.client.connectionLost(Failure(ConnectionLost()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_protocolError(self) -> None:
        """
        Bytes that are not HTTP/2 fail the streams and drop the connection.
        """
        d = self.request()
        # A DATA frame on stream 0.
        self.client.dataReceived(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        self.failureResultOf(d, ResponseFailed)
        self.assertTrue(self.server.transport.disconnected)

    def test_idleClose(self) -> None:
        """
        A connection without streams for the idle timeout is closed.
        """
        d = self.request()
        self.server.respond(1)
        self.successResultOf(d).deliverBody(CollectedBody())
        self.clock.advance(29)
        self.assertFalse(self.server.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.server.transport.disconnecting)

    def test_hungCloseAborted(self) -> None:
        """
        A close that does not complete (over TLS, a backend that hangs
        never sends its close_notify) is an abort L{CLOSE_WAIT} seconds
        later; one that completes leaves no timer.
        """
        aborted: list[bool] = []
        self.server.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.client.close()
        self.assertTrue(self.server.transport.disconnecting)
        self.clock.advance(CLOSE_WAIT)
        self.assertEqual(aborted, [True])
        client = _connection(self.clock)
        _Server(client).pump()
        client.close()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Network:
    """
    Connections made by an L{H2Upstream}, each with its scripted server.
    """

    def __init__(self, maxStreams: int | None = None) -> None:
        self.servers: list[_Server] = []
        self.maxStreams = maxStreams
        self.refuse = False
        self.held: list[tuple[Deferred[IProtocol], H2ClientConnection]] = []
        self.hold = False

    def connect(self, backend: Backend, factory: Factory[Any]) -> Deferred[IProtocol]:
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, H2ClientConnection)
        if self.hold:
            d: Deferred[IProtocol] = Deferred()
            self.held.append((d, protocol))
            return d
        self.servers.append(_Server(protocol, self.maxStreams))
        self.pump()
        return succeed(protocol)

    def pump(self) -> None:
        for server in self.servers:
            server.pump()


class UpstreamTests(SynchronousTestCase):
    """
    L{H2Upstream}: streams over few connections per backend.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = _Network()
        self.upstream = H2Upstream(self.clock, self.network.connect, maxConnections=2)

    def send(self) -> Deferred[H2Response]:
        d = self.upstream.request(BACKEND, b"GET", b"/", [], None)
        self.network.pump()
        return d

    def test_oneConnection(self) -> None:
        """
        Requests share one connection while it has room.
        """
        for _ in range(5):
            self.send()
        self.assertEqual(len(self.network.servers), 1)
        self.assertEqual(self.upstream.connectionsTo(BACKEND), 1)
        self.assertTrue(self.upstream.busy())

    def test_alpnRefused(self) -> None:
        """
        An C{h2://} backend whose TLS handshake did not choose C{h2} in ALPN
        has its connection given up at once, and the requests that waited
        for it fail as a connection that could not be made, saying why (the
        proxy then tries another backend, or answers 502).
        """
        self.network.hold = True
        d = self.upstream.request(BACKEND, b"GET", b"/", [], None)
        ((held, protocol),) = self.network.held
        transport = StringTransport()
        transport.negotiatedProtocol = b"http/1.1"  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        held.callback(protocol)
        protocol.handshakeCompleted()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(d, ConnectError)
        self.assertIn(
            "the backend did not agree to HTTP/2 in ALPN (it chose 'http/1.1')",
            failure.getErrorMessage(),
        )

    def test_alpnAgreed(self) -> None:
        """
        A backend that chose C{h2} keeps its connection.
        """
        transport = StringTransport()
        transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
        self.network.hold = True
        self.upstream.request(BACKEND, b"GET", b"/", [], None)
        ((_, protocol),) = self.network.held
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        self.assertFalse(transport.disconnecting)

    def test_waitForSettings(self) -> None:
        """
        Requests made while the connection is opening go out once it is
        ready, on it.
        """
        self.network.hold = True
        ds = [self.upstream.request(BACKEND, b"GET", b"/", [], None) for _ in range(3)]
        self.assertEqual(len(self.network.held), 1)
        d, protocol = self.network.held.pop()
        self.network.servers.append(_Server(protocol))
        d.callback(protocol)
        self.network.pump()
        server = self.network.servers[0]
        self.assertEqual(len(server.of(RequestReceived)), 3)
        # No other connection was opened meanwhile.
        self.assertEqual(self.network.held, [])
        for stream in (1, 3, 5):
            server.respond(stream)
        for each in ds:
            self.assertEqual(self.successResultOf(each).code, 200)

    def test_streamLimitOpensAnother(self) -> None:
        """
        When a connection's streams are all in use (the backend's
        MAX_CONCURRENT_STREAMS), another connection is opened; past the
        connection limit, requests wait for a stream to end.
        """
        self.network.maxStreams = 1
        d1, d2, d3 = self.send(), self.send(), self.send()
        self.assertEqual(len(self.network.servers), 2)
        first, second = self.network.servers
        self.assertEqual(len(first.of(RequestReceived)), 1)
        self.assertEqual(len(second.of(RequestReceived)), 1)
        self.assertNoResult(d3)
        first.respond(1)
        self.network.pump()
        self.assertEqual(self.successResultOf(d1).code, 200)
        self.assertEqual([e.stream_id for e in first.of(RequestReceived)], [1, 3])
        first.respond(3)
        second.respond(1)
        self.assertEqual(self.successResultOf(d3).code, 200)
        self.assertEqual(self.successResultOf(d2).code, 200)

    def test_connectFailure(self) -> None:
        """
        When no connection can be made, the waiting requests fail with the
        connection error (the proxy's 502/503 and retry rules apply).
        """
        self.network.refuse = True
        d = self.send()
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertFalse(self.upstream.busy())

    def test_cancelWhileWaiting(self) -> None:
        """
        A request cancelled while it waits for a stream is never sent.
        """
        self.network.hold = True
        d = self.upstream.request(BACKEND, b"GET", b"/", [], None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        held, protocol = self.network.held.pop()
        server = _Server(protocol)
        self.network.servers.append(server)
        held.callback(protocol)
        self.network.pump()
        self.assertEqual(server.of(RequestReceived), [])

    def test_goAwayOpensNew(self) -> None:
        """
        After a GOAWAY, new requests go on a new connection.
        """
        self.send()
        self.network.servers[0].h2.close_connection(last_stream_id=1)
        self.network.pump()
        self.send()
        self.assertEqual(len(self.network.servers), 2)
        self.assertEqual(len(self.network.servers[1].of(RequestReceived)), 1)

    def test_closeIdle(self) -> None:
        """
        Closing a backend's idle connections closes those without streams.
        """
        d = self.send()
        self.network.servers[0].respond(1)
        self.successResultOf(d).deliverBody(CollectedBody())
        self.assertEqual(self.upstream.idleTo(BACKEND), 1)
        self.upstream.closeIdle(BACKEND)
        self.assertTrue(self.network.servers[0].transport.disconnecting)


class SchemeTests(SynchronousTestCase):
    """
    The C{h2c://} and C{h2://} backend schemes.
    """

    def test_parse(self) -> None:
        """
        C{h2c://} and C{h2://} backends parse, with ports 80 and 443 by
        default.
        """
        self.assertEqual(parseBackend("h2c://grpc.local").key, ("h2c", "grpc.local", 80))
        self.assertEqual(parseBackend("h2://grpc.local").key, ("h2", "grpc.local", 443))
        self.assertEqual(parseBackend("h2c://127.0.0.1:50051").url, "h2c://127.0.0.1:50051")


GRPC = {b"content-type": [b"application/grpc"], b"te": [b"trailers"]}


class GRPCStatusTests(SynchronousTestCase):
    """
    A gRPC call the proxy fails is answered as gRPC clients understand:
    HTTP 200, C{grpc-status} 14 or 4, the HTTP status decided kept in the
    access log.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()

    def site(self, backends: list[Backend]) -> Any:
        proxy = ReverseProxyResource(
            BackendPool(backends),
            FirstAvailable(),
            self.network.upstream(UpstreamSettings()),
            self.network.clock,
            ProxySettings(responseTimeout=5.0),
        )
        return self.network.proxySite(proxy)

    def call(self, site: Any, headers: dict[bytes, list[bytes]] = GRPC) -> Any:
        d = self.network.request(site, b"POST", b"http://api.example/svc/M", headers)
        self.network.flush()
        return self.successResultOf(d)

    def test_noBackend(self) -> None:
        """
        With no backend available, a gRPC call gets 200 with grpc-status
        14 and no body; the access log keeps the 503.
        """
        answer = self.call(self.site([]))
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header(b"content-type"), [b"application/grpc"])
        self.assertEqual(answer.header(b"grpc-status"), [b"14"])
        self.assertEqual(answer.header(b"grpc-message"), [b"No backend is available."])
        self.assertEqual(answer.body, b"")
        self.assertIn("HTTP 503 as grpc-status 14", self.network.accessLog[-1])

    def test_refused(self) -> None:
        """
        A backend that refuses the connection is grpc-status 14, with the
        reason as its grpc-message.
        """
        answer = self.call(self.site([Backend("10.9.9.9", 80)]))
        self.assertEqual(answer.header(b"grpc-status"), [b"14"])
        self.assertEqual(answer.header(b"grpc-message"), [b"the backend refused the connection"])

    def test_timeout(self) -> None:
        """
        A backend slower than the response timeout is grpc-status 4
        (DEADLINE_EXCEEDED).
        """
        server = self.network.backend(b"late")
        server.hold()
        site = self.site([server.backend])
        d = self.network.request(site, b"POST", b"http://api.example/svc/M", GRPC)
        self.network.flush()
        self.network.clock.advance(6)
        self.network.flush()
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.header(b"grpc-status")), (200, [b"4"]))
        self.assertIn("HTTP 504 as grpc-status 4", self.network.accessLog[-1])

    def test_failedBeforeBody(self) -> None:
        """
        A backend that fails after its response head but before any of its
        body, when nothing has reached the client yet, is grpc-status 14
        rather than a cut response.
        """

        def headThenDie(request: Request) -> int:
            request.setHeader(b"content-type", b"application/grpc")
            request.write(b"")
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET

        server = self.network.backend(b"", respond=headThenDie)
        answer = self.call(self.site([server.backend]))
        self.assertEqual((answer.code, answer.header(b"grpc-status")), (200, [b"14"]))
        self.assertIn(
            "the backend failed mid-response (HTTP 502 as grpc-status 14)",
            self.network.accessLog[-1],
        )

    def test_notGRPC(self) -> None:
        """
        Other requests still get the proxy's own 503.
        """
        answer = self.call(self.site([]), {b"content-type": [b"application/json"]})
        self.assertEqual(answer.code, 503)
        self.assertEqual(answer.header(b"grpc-status"), [])


@implementer(IStreamClientEndpoint)
class _ScriptedEndpoint:
    """
    An endpoint whose every connection gets a scripted server of its own.
    """

    def __init__(self, servers: list[_Server]) -> None:
        self._servers = servers

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert isinstance(protocol, H2ClientConnection)
        self._servers.append(_Server(protocol))
        return succeed(protocol)


class PoolTests(SynchronousTestCase):
    """
    L{lbproxy.upstream.pool.Upstream} sends requests for C{h2c://} backends
    over HTTP/2, reports their connections, and health probes them over
    HTTP/2.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.servers: list[_Server] = []
        endpoint = _ScriptedEndpoint(self.servers)
        self.upstream = Upstream(
            self.clock, self.clock, UpstreamSettings(), lambda host, port: endpoint
        )

    def pump(self) -> None:
        for server in self.servers:
            server.pump()

    def test_dispatch(self) -> None:
        """
        An h2c backend's request goes over HTTP/2; its connection is
        counted, busy, then idle; aborting drops it.
        """
        d = self.upstream.request(BACKEND, b"GET", b"/x", [(b"Host", b"h")], None)
        self.pump()
        (server,) = self.servers
        self.assertEqual(server.headers(1)[b":path"], b"/x")
        self.assertEqual(self.upstream.connectionsTo(BACKEND), 1)
        self.assertTrue(self.upstream.busy())
        server.respond(1, b"ok")
        self.successResultOf(d).deliverBody(CollectedBody())
        self.assertFalse(self.upstream.busy())
        self.assertEqual(self.upstream.idleTo(BACKEND), 1)
        self.upstream.abortTo(BACKEND)
        self.assertTrue(server.transport.disconnected)

    def test_noUpgrade(self) -> None:
        """
        An upgrade cannot go to an HTTP/2 backend.
        """
        d = self.upstream.request(BACKEND, b"GET", b"/ws", [], None, upgrade=True)
        self.failureResultOf(d, UpgradeNotRelayed)

    def probe(self) -> tuple[Deferred[bool], _Server]:
        probe = HTTPProbe(
            lambda backend, method, target, headers: self.upstream.request(
                backend, method, target, headers, None
            ),
            self.clock,
            b"/health",
            1.0,
        )
        verdict = probe(BACKEND)
        self.pump()
        return verdict, self.servers[-1]

    def test_probeOverHTTP2(self) -> None:
        """
        The health probe of an h2c backend is a gRPC-shaped POST; a gRPC
        answer (200, any grpc-status) is healthy.
        """
        verdict, server = self.probe()
        head = server.headers(1)
        self.assertEqual((head[b":method"], head[b":path"]), (b"POST", b"/health"))
        self.assertEqual(head[b"content-type"], b"application/grpc")
        server.respond(1, trailers=[(b"grpc-status", b"12")])
        self.assertTrue(self.successResultOf(verdict))

    def test_probeReset(self) -> None:
        """
        A probe whose stream the backend resets is unhealthy.
        """
        verdict, server = self.probe()
        server.h2.reset_stream(1, ErrorCodes.PROTOCOL_ERROR)
        server.pump()
        self.assertFalse(self.successResultOf(verdict))
