"""
Tests for the data path through the proxy over loopback sockets: request
bodies streamed while they arrive, interim answers, upgrade tunnels, and a
timeout for every phase (timers on a L{Clock}, so nothing waits).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lbproxy.http.edge import EdgeLimits
from lbproxy.proxy import ProxySettings
from lbproxy.test.fakes import RawClient, RunningProxy, startProxy, until
from lbproxy.upstream.backends import Backend

Gen = Generator[Any, Any, None]


class _Backend(Protocol):
    """
    A scripted backend connection: C{onData(self, data)} runs for each
    read; everything received is kept; C{lost} fires with the reason.
    """

    def __init__(self, onData: Callable[[_Backend, bytes], None]) -> None:
        self.onData = onData
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.onData(self, data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


class _Client(RawClient):
    """
    A raw client connection (see L{RawClient}) with a shorter way to send.
    """

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class StreamingTestCase(TestCase):
    """
    A proxy on loopback in front of one scripted backend, its timers on a
    L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backends: list[_Backend] = []

    @inlineCallbacks
    def start(
        self,
        onData: Callable[[_Backend, bytes], None],
        settings: ProxySettings | None = None,
        limits: EdgeLimits | None = None,
        extra: list[Backend] | None = None,
    ) -> Generator[Any, Any, RunningProxy]:
        def build() -> _Backend:
            protocol = _Backend(onData)
            self.backends.append(protocol)
            return protocol

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(build)
        )
        self.addCleanup(port.stopListening)
        backend = Backend("127.0.0.1", port.getHost().port)
        proxy = yield startProxy(
            self,
            [*(extra or []), backend],
            settings=settings,
            limits=limits,
            clock=self.clock,
        )
        self.addCleanup(self._abortBackends)
        return proxy  # type: ignore[no-any-return]

    def _abortBackends(self) -> Deferred[None] | None:
        waiting = []
        for backend in self.backends:
            if backend.transport is not None and not backend.lost.called:
                backend.transport.abortConnection()  # type: ignore[attr-defined]
                waiting.append(backend.lost)
        if not waiting:
            return None
        from twisted.internet.defer import gatherResults

        return gatherResults(waiting).addCallback(lambda _: None)

    @inlineCallbacks
    def connect(self, proxy: RunningProxy) -> Generator[Any, Any, _Client]:
        client = _Client()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.portNumber).connect(
            Factory.forProtocol(lambda: client)
        )

        def close() -> Deferred[None]:
            if client.transport is not None and not client.closed.called:
                client.transport.abortConnection()  # type: ignore[attr-defined]
            return client.closed

        self.addCleanup(close)
        return client


def _ignore(backend: _Backend, data: bytes) -> None:
    """
    A backend that reads and says nothing.
    """


def _answerWhen(marker: bytes, response: bytes) -> Callable[[_Backend, bytes], None]:
    """
    A backend that answers C{response} once it has received C{marker}.
    """

    def onData(backend: _Backend, data: bytes) -> None:
        if marker in backend.received and not getattr(backend, "answered", False):
            backend.answered = True  # type: ignore[attr-defined]
            backend.write(response)

    return onData


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RequestBodyTests(StreamingTestCase):
    """
    Request bodies stream to the backend as they arrive.
    """

    @inlineCallbacks
    def test_headBeforeBody(self) -> Gen:
        """
        The backend receives the request head, and the body so far, while
        the client has not finished sending it.
        """
        proxy = yield self.start(_answerWhen(b"0123456789", OK))
        client = yield self.connect(proxy)
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
        yield until(lambda: self.backends and self.backends[0].received.endswith(b"01234"))
        self.assertIn(b"Content-Length: 10\r\n", self.backends[0].received)
        client.send(b"56789")
        yield until(lambda: client.data.endswith(b"ok"))

    @inlineCallbacks
    def test_chunkedRelayedChunked(self) -> Gen:
        """
        A chunked body goes to the backend chunked, as it arrives, and ends
        with the last chunk.
        """
        proxy = yield self.start(_answerWhen(b"0\r\n\r\n", OK))
        client = yield self.connect(proxy)
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        yield until(lambda: self.backends and b"abc" in self.backends[0].received)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", self.backends[0].received)
        client.send(b"0\r\n\r\n")
        yield until(lambda: client.data.endswith(b"ok"))
        self.assertTrue(self.backends[0].received.endswith(b"3\r\nabc\r\n0\r\n\r\n"))

    @inlineCallbacks
    def test_bodyTimeout(self) -> Gen:
        """
        A body that makes no progress for the body timeout gets 408, the
        client connection is closed and the backend connection dropped
        (the stalled-body denial of service: no connection is held).
        """
        proxy = yield self.start(_ignore, limits=EdgeLimits(bodyTimeout=5))
        client = yield self.connect(proxy)
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
        yield until(lambda: self.backends and self.backends[0].received.endswith(b"ab"))
        self.clock.advance(4)
        client.send(b"c")
        yield until(lambda: self.backends[0].received.endswith(b"c"))
        self.clock.advance(4)
        self.assertFalse(client.closed.called)
        self.clock.advance(1)
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        yield self.backends[0].lost
        self.assertTrue(any(" 408 " in line for line in proxy.lines), proxy.lines)

    @inlineCallbacks
    def test_chunkedOverLimit(self) -> Gen:
        """
        A chunked body that passes the size limit while streaming gets 413;
        the backend connection is dropped, not left with half a body.
        """
        proxy = yield self.start(_ignore, limits=EdgeLimits(maxBodySize=100))
        client = yield self.connect(proxy)
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"50\r\n" + b"x" * 80 + b"\r\n")
        yield until(lambda: self.backends and b"x" * 80 in self.backends[0].received)
        client.send(b"50\r\n" + b"y" * 80 + b"\r\n")
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        yield self.backends[0].lost
        self.assertNotIn(b"y", self.backends[0].received.split(b"\r\n\r\n", 1)[1])

    @inlineCallbacks
    def test_earlyAnswerClosesConnection(self) -> Gen:
        """
        A backend that answers before the body is in (here 413 at once)
        has its answer relayed with C{Connection: close}; the rest of the
        body is not taken for a next request.
        """
        early = b"HTTP/1.1 413 Too Big\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", early))
        client = yield self.connect(proxy)
        client.send(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
        yield until(lambda: client.data.endswith(b"big!"))
        self.assertIn(b"Connection: close\r\n", client.data)
        # The client goes on sending what is left of its body: the proxy
        # reads it and discards it, then closes.
        client.send(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n" + b"z" * 1000)
        client.transport.loseWriteConnection()
        yield client.closed
        self.assertEqual(client.data.count(b"HTTP/1.1"), 1)
        self.assertTrue(client.reason is not None and client.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_expectRelayed(self) -> Gen:
        """
        Expect: 100-continue goes to the backend; its 100 Continue reaches
        the client before the body is sent.
        """

        def onData(backend: _Backend, data: bytes) -> None:
            if backend.received.endswith(b"\r\n\r\n") and b"Expect" in backend.received:
                backend.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if backend.received.endswith(b"hello"):
                backend.write(OK)

        proxy = yield self.start(onData)
        client = yield self.connect(proxy)
        client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        yield until(lambda: b"100 Continue" in client.data)
        client.send(b"hello")
        yield until(lambda: client.data.endswith(b"ok"))
        self.assertTrue(client.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"))

    @inlineCallbacks
    def test_smallBodyRetried(self) -> Gen:
        """
        A PUT whose backend drops the connection before answering is sent,
        body and all, to another backend.
        """

        def dropper(backend: _Backend, data: bytes) -> None:
            if backend.received.endswith(b"payload"):
                backend.transport.abortConnection()  # type: ignore[union-attr]

        dropped = []

        def build() -> _Backend:
            protocol = _Backend(dropper)
            dropped.append(protocol)
            return protocol

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(build)
        )
        self.addCleanup(port.stopListening)
        first = Backend("127.0.0.1", port.getHost().port)
        from lbproxy.test.fakes import FirstAvailable

        proxy = yield startProxy(self, [first], chooser=FirstAvailable(), clock=self.clock)
        good = yield self.start(_answerWhen(b"payload", OK))
        proxy.pool.backends.append(good.pool.backends[0])
        client = yield self.connect(proxy)
        client.send(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\npayload")
        yield until(lambda: client.data.endswith(b"ok"))
        self.assertTrue(self.backends[0].received.endswith(b"\r\n\r\npayload"))


class ResponseTests(StreamingTestCase):
    """
    Responses relayed as RFC 9110 says, and never looking complete when
    they are not.
    """

    @inlineCallbacks
    def test_earlyHints(self) -> Gen:
        """
        A backend's 103 Early Hints reaches an HTTP/1.1 client, with its
        Link header, before the final response.
        """
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", hints + OK))
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: client.data.endswith(b"ok"))
        self.assertTrue(client.data.startswith(hints + b"HTTP/1.1 200 OK\r\n"))

    @inlineCallbacks
    def test_noInterimForHTTP10(self) -> Gen:
        """
        An HTTP/1.0 client gets no 1xx answer, only the final response.
        """
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", hints + OK))
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.0 200 OK\r\n"), client.data)

    @inlineCallbacks
    def test_notModifiedKeepsLength(self) -> Gen:
        """
        A 304's Content-Length (the length the full response would have)
        is relayed unchanged, with no body.
        """
        proxy = yield self.start(
            _answerWhen(b"\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n")
        )
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: client.data.endswith(b"\r\n\r\n"))
        self.assertIn(b"\r\nContent-Length: 1234\r\n", client.data)

    @inlineCallbacks
    def test_noContentHasNoLength(self) -> Gen:
        """
        A 204 is relayed without Content-Length (RFC 9110 8.6: a MUST NOT).
        """
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"))
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: client.data.endswith(b"\r\n\r\n"))
        self.assertTrue(client.data.startswith(b"HTTP/1.1 204 "))
        self.assertNotIn(b"content-length", client.data.lower())

    @inlineCallbacks
    def test_bareLineFeedAtOnce(self) -> Gen:
        """
        A response head with bare LF line endings gets 502 at once, not a
        504 when the response timeout ends.
        """
        proxy = yield self.start(
            _answerWhen(b"\r\n\r\n", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
        )
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: b"\r\n\r\n" in client.data)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), client.data)
        self.assertIn(b"line ending without CR", client.data)

    @inlineCallbacks
    def test_resetIsTruncation(self) -> Gen:
        """
        A close-delimited body that ends with a reset, not a clean close,
        reaches the client as a reset connection, never a clean end; the
        access log says it was truncated.
        """

        proxy = yield self.start(
            _answerWhen(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000)
        )
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        # Relayed chunked (the client cannot see the end otherwise).
        yield until(lambda: client.data.count(b"x") >= 5000)
        self.backends[0].transport.abortConnection()  # type: ignore[union-attr]
        yield client.closed
        self.assertIsNotNone(client.reason)
        assert client.reason is not None
        self.assertFalse(client.reason.check(ConnectionDone), client.reason)
        self.assertTrue(any("truncated" in line for line in proxy.lines), proxy.lines)

    @inlineCallbacks
    def test_http10TruncationReset(self) -> Gen:
        """
        An HTTP/1.0 client, for which a closed connection ends a response,
        gets a reset when the backend dies mid-body.
        """

        def onData(backend: _Backend, data: bytes) -> None:
            backend.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            backend.transport.loseConnection()  # type: ignore[union-attr]

        proxy = yield self.start(onData)
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
        yield client.closed
        assert client.reason is not None
        self.assertFalse(client.reason.check(ConnectionDone), client.reason)

    @inlineCallbacks
    def test_backendStallsMidBody(self) -> Gen:
        """
        A backend that stops sending in the middle of a body for the
        response timeout has both connections dropped: the client sees a
        cut, not a clean end.
        """
        proxy = yield self.start(
            _answerWhen(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"),
            settings=ProxySettings(responseTimeout=5),
        )
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: client.data.endswith(b"0123456789"))
        self.clock.advance(4.9)
        self.assertFalse(client.closed.called)
        self.clock.advance(0.1)
        yield client.closed
        yield self.backends[0].lost
        assert client.reason is not None
        self.assertFalse(client.reason.check(ConnectionDone))
        self.assertTrue(any("truncated" in line for line in proxy.lines), proxy.lines)

    @inlineCallbacks
    def test_clientGoneLogged(self) -> Gen:
        """
        A client that leaves while the backend is still working leaves an
        access log line (499, client closed), and the backend connection
        is dropped.
        """
        proxy = yield self.start(_ignore)
        client = yield self.connect(proxy)
        client.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        yield until(lambda: bool(self.backends) and self.backends[0].received)
        client.transport.loseConnection()
        yield self.backends[0].lost
        yield until(lambda: bool(proxy.lines))
        [line] = proxy.lines
        self.assertIn(" 499 ", line)
        self.assertIn("client closed", line)

    @inlineCallbacks
    def test_halfClosedClientAnswered(self) -> Gen:
        """
        A client that sends its request and then closes its sending side
        still gets the answer.
        """
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", OK))
        client = yield self.connect(proxy)
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        client.transport.loseWriteConnection()
        yield client.closed
        self.assertTrue(client.data.endswith(b"ok"), client.data)


_UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _switching(backend: _Backend, data: bytes) -> None:
    """
    A backend that switches protocols on an upgrade request, then echoes
    every byte in upper case.
    """
    if not getattr(backend, "switched", False):
        if b"\r\n\r\n" in backend.received:
            backend.switched = True  # type: ignore[attr-defined]
            backend.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n"
            )
            rest = backend.received.split(b"\r\n\r\n", 1)[1]
            if rest:
                backend.write(rest.upper())
        return
    backend.write(data.upper())


class TunnelTests(StreamingTestCase):
    """
    An upgrade answered 101 becomes a byte tunnel both ways.
    """

    @inlineCallbacks
    def test_tunnel(self) -> Gen:
        """
        The upgrade request reaches the backend with its Upgrade and
        Connection headers; after the 101, bytes flow both ways unchanged;
        while open it counts as a request in flight on its backend.
        """
        proxy = yield self.start(_switching)
        client = yield self.connect(proxy)
        client.send(_UPGRADE)
        yield until(lambda: b"\r\n\r\n" in client.data)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"Upgrade: websocket\r\n", client.data)
        received = self.backends[0].received
        self.assertIn(b"Upgrade: websocket\r\n", received)
        self.assertIn(b"Connection: Upgrade\r\n", received)
        client.send(b"hello")
        yield until(lambda: client.data.endswith(b"HELLO"))
        self.assertEqual(proxy.pool.backends[0].inFlight, 1)
        client.transport.loseConnection()
        yield self.backends[0].lost
        yield until(lambda: bool(proxy.lines))
        self.assertEqual(proxy.pool.backends[0].inFlight, 0)
        [line] = proxy.lines
        self.assertIn(" 101 ", line)
        # The bytes each way through the tunnel, and how long it was open.
        self.assertIn(" tunnel_up=5 tunnel_down=5 tunnel_time=", line)

    @inlineCallbacks
    def test_backendClosesTunnel(self) -> Gen:
        """
        The backend closing its end of a tunnel closes the client's.
        """
        proxy = yield self.start(_switching)
        client = yield self.connect(proxy)
        client.send(_UPGRADE)
        yield until(lambda: b"\r\n\r\n" in client.data)
        self.backends[0].transport.loseConnection()  # type: ignore[union-attr]
        yield client.closed

    @inlineCallbacks
    def test_tunnelIdleTimeout(self) -> Gen:
        """
        A tunnel that carries nothing for its idle timeout is closed; one
        that carries data is kept.
        """
        proxy = yield self.start(_switching, settings=ProxySettings(tunnelIdleTimeout=60))
        client = yield self.connect(proxy)
        client.send(_UPGRADE)
        yield until(lambda: b"\r\n\r\n" in client.data)
        self.clock.advance(50)
        client.send(b"ping")
        yield until(lambda: client.data.endswith(b"PING"))
        self.clock.advance(50)
        self.assertFalse(client.closed.called)
        self.clock.advance(10)
        yield client.closed
        yield self.backends[0].lost

    @inlineCallbacks
    def test_h2cNotRelayed(self) -> Gen:
        """
        An upgrade to h2c is not relayed: the backend sees a plain request.
        """
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", OK))
        client = yield self.connect(proxy)
        client.send(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        yield until(lambda: client.data.endswith(b"ok"))
        received = self.backends[0].received.lower()
        self.assertNotIn(b"upgrade", received)
        self.assertNotIn(b"http2-settings", received)
