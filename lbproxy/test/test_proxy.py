"""
Tests for L{lbproxy.proxy}: the reverse proxy resource relaying to real
backends on loopback.
"""

from __future__ import annotations

import gc
import hashlib
import socket
from collections.abc import Generator
from typing import Any, cast

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from lbproxy.balancing.random import RandomChooser
from lbproxy.proxy import ProxySettings
from lbproxy.test.fakes import (
    answer,
    get,
    rawConnect,
    reactor,
    reset,
    startBackend,
    startProxy,
    startScripted,
    until,
)
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.pool import UpstreamSettings

Gen = Generator[Any, Any, None]


def _closedPort() -> int:
    """
    A loopback port with nothing listening on it.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class DistributionTests(TestCase):
    """
    Requests are spread over the backends by the chooser.
    """

    @inlineCallbacks
    def test_roundRobinAlternates(self) -> Gen:
        """
        With round-robin, successive requests go to successive backends.
        """
        one = yield startBackend(self, b"<p>HTTP Server-1</p>")
        two = yield startBackend(self, b"<p>HTTP Server-2</p>")
        proxy = yield startProxy(self, [one.backend, two.backend])
        bodies = []
        for _ in range(6):
            _, body = yield get(self, proxy.url())
            bodies.append(body)
        self.assertEqual(bodies, [b"<p>HTTP Server-1</p>", b"<p>HTTP Server-2</p>"] * 3)

    @inlineCallbacks
    def test_randomReachesEveryBackend(self) -> Gen:
        """
        The random chooser sends requests to both backends, as its
        (seeded) random source dictates.
        """
        import random

        one = yield startBackend(self, b"1")
        two = yield startBackend(self, b"2")
        proxy = yield startProxy(
            self, [one.backend, two.backend], chooser=RandomChooser(random.Random(7))
        )
        replay = random.Random(7)
        expected = [replay.choice([b"1", b"2"]) for _ in range(20)]
        bodies = []
        for _ in range(20):
            _, body = yield get(self, proxy.url())
            bodies.append(body)
        self.assertEqual(bodies, expected)
        self.assertEqual({b"1", b"2"}, set(bodies))

    @inlineCallbacks
    def test_countersFollowRequests(self) -> Gen:
        """
        Each backend counts the requests it was sent, and none is left in
        flight once they are answered.
        """
        one = yield startBackend(self, b"1")
        two = yield startBackend(self, b"2")
        proxy = yield startProxy(self, [one.backend, two.backend])
        for _ in range(4):
            yield get(self, proxy.url())
        self.assertEqual([2, 2], [one.backend.requests, two.backend.requests])
        self.assertEqual([0, 0], [one.backend.inFlight, two.backend.inFlight])


class RelayTests(TestCase):
    """
    What reaches the backend, and what comes back.
    """

    @inlineCallbacks
    def test_methodPathQueryAndBody(self) -> Gen:
        """
        Method, path, query and request body reach the backend unchanged.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"PUT /a/b%20c;p?x=1&y=%2F HTTP/1.1\r\nHost: example.com\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        yield client.until(b"ok")
        [seen] = backend.resource.received
        self.assertEqual(
            (seen.method, seen.uri, seen.body), (b"PUT", b"/a/b%20c;p?x=1&y=%2F", b"hello")
        )
        self.assertEqual(seen.header(b"content-length"), [b"5"])

    @inlineCallbacks
    def test_chunkedRequestBody(self) -> Gen:
        """
        A chunked request body streams to the backend chunked (its length
        is not known before it ends) and arrives whole.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual(seen.body, b"abcdefg")
        self.assertEqual(seen.header(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(seen.header(b"content-length"), [])

    @inlineCallbacks
    def test_headersRelayedHopByHopRemoved(self) -> Gen:
        """
        Repeated request headers arrive with their values in order; Host is
        unchanged; hop-by-hop headers, and the headers named by Connection,
        are removed.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: shop.example:8443\r\n"
            b"Accept: a\r\nX-Multi: 1\r\nX-Multi: 2\r\nX-Multi: 3\r\n"
            b"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\n"
            b"TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic x\r\n"
            b"Proxy-Connection: keep-alive\r\nTrailer: X\r\n\r\n"
        )
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual(seen.header(b"host"), [b"shop.example:8443"])
        self.assertEqual(seen.header(b"x-multi"), [b"1", b"2", b"3"])
        self.assertEqual(seen.header(b"accept"), [b"a"])
        names = {name.lower() for name, _ in seen.headers}
        for hop in (
            b"x-secret",
            b"keep-alive",
            b"te",
            b"upgrade",
            b"proxy-authorization",
            b"proxy-connection",
            b"trailer",
        ):
            self.assertNotIn(hop, names)
        # The proxy's own connection management toward the backend.
        self.assertNotIn(b"close", b",".join(seen.header(b"connection")).lower())

    @inlineCallbacks
    def test_http10WithoutHostNamesTheBackend(self) -> Gen:
        """
        An HTTP/1.0 request without Host reaches the backend with a Host
        naming the backend (HTTP/1.1 requires one).
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET /old HTTP/1.0\r\n\r\n")
        yield client.closed
        [seen] = backend.resource.received
        self.assertEqual(seen.header(b"host"), [backend.backend.authority.encode("ascii")])

    @inlineCallbacks
    def test_forwardedHeadersReplaceSpoofed(self) -> Gen:
        """
        X-Forwarded-For names the real client, replacing a client-supplied
        value; X-Forwarded-Proto, X-Forwarded-Host and Forwarded are set.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n"
        )
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(seen.header(b"x-forwarded-host"), [b"localhost"])
        self.assertEqual(seen.header(b"forwarded"), [b"for=127.0.0.1;host=localhost;proto=http"])

    @inlineCallbacks
    def test_responseHeadersRelayed(self) -> Gen:
        """
        Repeated response headers (Set-Cookie) survive; hop-by-hop response
        headers, including those named by Connection, do not; the backend's
        status, reason and Server header come through unchanged.
        """

        def handler(request: Request) -> bytes:
            request.setResponseCode(201, b"Made It")
            request.responseHeaders.setRawHeaders(b"Set-Cookie", [b"a=1", b"b=2"])
            request.responseHeaders.setRawHeaders(b"Connection", [b"X-Hop"])
            request.responseHeaders.setRawHeaders(b"X-Hop", [b"secret"])
            request.responseHeaders.setRawHeaders(b"Keep-Alive", [b"timeout=5"])
            request.responseHeaders.setRawHeaders(b"Server", [b"backend/1.0"])
            return b"made"

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        response, body = yield get(self, proxy.url())
        self.assertEqual((response.code, response.phrase, body), (201, b"Made It", b"made"))
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        self.assertIsNone(response.headers.getRawHeaders(b"x-hop"))
        self.assertIsNone(response.headers.getRawHeaders(b"keep-alive"))
        self.assertEqual(response.headers.getRawHeaders(b"server"), [b"backend/1.0"])

    @inlineCallbacks
    def test_noBodyResponses(self) -> Gen:
        """
        HEAD, 204 and 304 answers carry no body, and the client connection
        stays usable for the next request.
        """

        def handler(request: Request) -> bytes:
            if request.uri == b"/204":
                request.setResponseCode(204)
                return b""
            if request.uri == b"/304":
                request.setResponseCode(304)
                return b""
            return b"full body"

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /304 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        data = yield client.until(b"full body")
        self.assertEqual(data.count(b"HTTP/1.1 "), 4)
        headResponse = data.split(b"HTTP/1.1 ")[1]
        self.assertIn(b"Content-Length: 9\r\n", headResponse)
        self.assertEqual(data.count(b"full body"), 1)
        self.assertTrue(data.endswith(b"full body"), data)
        statuses = [
            line.split(b" ")[1] for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")
        ]
        self.assertEqual(statuses, [b"200", b"204", b"304", b"200"])

    @inlineCallbacks
    def test_chunkedAndLengthResponses(self) -> Gen:
        """
        A response of unknown length (streamed by the backend) and one with
        Content-Length both arrive whole; the length is relayed.
        """

        def handler(request: Request) -> int | bytes:
            if request.uri == b"/stream":
                request.write(b"part1-")
                request.write(b"part2")
                request.finish()
                return NOT_DONE_YET
            return b"exact"

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        response, body = yield get(self, proxy.url(b"/stream"))
        self.assertEqual(body, b"part1-part2")
        response, body = yield get(self, proxy.url(b"/fixed"))
        self.assertEqual(body, b"exact")
        self.assertEqual(response.length, 5)

    @inlineCallbacks
    def test_pipelinedAnsweredInOrder(self) -> Gen:
        """
        Requests pipelined on one connection are answered in order, even
        when an earlier one takes longer.
        """
        slow: list[Request] = []

        def handler(request: Request) -> int | bytes:
            if request.uri == b"/slow":
                slow.append(request)
                return NOT_DONE_YET
            return request.uri

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        arrived = backend.resource.nextRequest()
        client.transport.write(
            b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /fast HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        yield arrived
        slow[0].write(b"/slow-done")
        slow[0].finish()
        data = yield client.until(b"/fast")
        self.assertLess(data.index(b"/slow-done"), data.index(b"/fast"))

    @inlineCallbacks
    def test_expectContinue(self) -> Gen:
        """
        Expect: 100-continue is relayed; the backend's 100 Continue reaches
        the client, and the body then reaches the backend intact.
        """
        backend = yield startBackend(self, b"stored")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        yield client.until(b"100 Continue\r\n\r\n")
        client.transport.write(b"0123456789")
        yield client.until(b"stored")
        [seen] = backend.resource.received
        self.assertEqual(seen.body, b"0123456789")
        self.assertEqual(seen.header(b"expect"), [b"100-continue"])


class ConnectionReuseTests(TestCase):
    """
    Backend connections are persistent and pooled.
    """

    @inlineCallbacks
    def test_backendSeesFewerConnectionsThanRequests(self) -> Gen:
        """
        Twenty sequential requests from twenty client connections reach the
        backend over a single reused connection.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        for _ in range(20):
            _, body = yield get(self, proxy.url())
            self.assertEqual(body, b"ok")
        self.assertEqual(len(backend.resource.received), 20)
        self.assertEqual(backend.site.connections, 1)

    @inlineCallbacks
    def test_clientKeepAlive(self) -> Gen:
        """
        A client can send many requests over one keep-alive connection.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        for _ in range(5):
            _, body = yield get(self, proxy.url(), pool=pool)
            self.assertEqual(body, b"ok")
        self.assertEqual(len(proxy.lines), 5)


class GarbageTests(TestCase):
    """
    A proxied request leaves no reference cycles: it is freed as soon as it
    is answered. Otherwise every request waits for CPython's cyclic garbage
    collector, whose full collections pause the proxy (the p99 of the
    benchmark halved when this was fixed).
    """

    @inlineCallbacks
    def _garbageOf(self, proxyPort: int, requests: list[bytes]) -> Generator[Any, Any, list[str]]:
        """
        The type names of what the cyclic collector finds after
        C{requests} are sent, one after another, on one connection.
        """
        client = yield rawConnect(self, proxyPort)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for index, request in enumerate(requests, 1):
                client.transport.write(request)
                yield client.until(b"HTTP/1.1 ", count=index)
            gc.collect()
            return [type(o).__qualname__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            del gc.garbage[:]

    @inlineCallbacks
    def test_answeredRequestsAreNotGarbage(self) -> Gen:
        """
        Neither a relayed answer nor a 502 leaves the request, its exchange
        or its record to the cyclic collector.
        """
        backend = yield startBackend(self, b"ok")
        dead = Backend(host="127.0.0.1", port=_closedPort())
        proxy = yield startProxy(self, [backend.backend, dead], settings=ProxySettings(retries=0))
        get = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        garbage = yield self._garbageOf(proxy.portNumber, [get] * 6)
        self.assertEqual(len(backend.resource.received), 3)
        self.assertEqual(dead.failures, 3)
        for name in ("ProxyRequest", "_Exchange", "ProxyRecord", "BackendResponse"):
            self.assertNotIn(name, garbage)

    @inlineCallbacks
    def test_abandonedUploadsAreNotGarbage(self) -> Gen:
        """
        A client that leaves in the middle of an upload leaves neither its
        request, nor its exchange, nor its body, nor its channel to the
        cyclic collector (1 000 such clients grew the proxy by 7 MiB a
        thousand until a full collection ran).
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(3):
                client = yield rawConnect(self, proxy.portNumber)
                client.transport.write(
                    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
                )
                # Wait until the proxy has sent the request on, then leave.
                yield until(lambda: proxy.pool.backends[0].inFlight, "the request to be sent on")
                client.transport.abortConnection()
                yield client.closed
                yield until(lambda: not proxy.pool.backends[0].inFlight, "the request to end")
                self.assertEqual(proxy.pool.backends[0].inFlight, 0)
            gc.collect()
            garbage = [type(o).__qualname__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            del gc.garbage[:]
        for name in (
            "ProxyRequest",
            "_Exchange",
            "StreamedBody",
            "ProxyChannel",
            # The aborted backend connection and Twisted's connector of it.
            "BatchingClient",
            "BatchingConnector",
        ):
            self.assertNotIn(name, garbage)


class FailureTests(TestCase):
    """
    Backend failures become 502, 503 and 504, each with a short body and a
    log line, and the proxy goes on serving.
    """

    @inlineCallbacks
    def test_refusedIs503(self) -> Gen:
        """
        A backend that refuses connections (and no other to try) gives 503
        Service Unavailable with Retry-After and a short plain-text body
        naming the reason: nothing reached a backend, so the client may
        try again later.
        """
        dead = Backend(host="127.0.0.1", port=_closedPort())
        proxy = yield startProxy(self, [dead])
        response, body = yield get(self, proxy.url())
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn(b"refused", body)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(dead.failures, 1)
        self.assertEqual(dead.inFlight, 0)
        [line] = proxy.lines
        self.assertIn(" 503 ", line)
        self.assertIn(f"backend=127.0.0.1:{dead.port}", line)

    @inlineCallbacks
    def test_failureLogLineNamesBackendAndReason(self) -> Gen:
        """
        A proxy error is logged once, naming the backend and the reason.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        dead = Backend(host="127.0.0.1", port=_closedPort())
        proxy = yield startProxy(self, [dead])
        yield get(self, proxy.url(b"/x"))
        [event] = [e for e in events if e.get("status") == 503 and "reason" in e]
        self.assertEqual(event["backend"], dead.authority)
        self.assertIn("refused", event["reason"])
        self.assertIn(dead.authority, formatEvent(event))

    @inlineCallbacks
    def test_resetBeforeAnswerIs502(self) -> Gen:
        """
        A backend that resets the connection after receiving the request,
        before answering, gives 502.
        """

        resets = yield startScripted(self, reset)
        proxy = yield startProxy(self, [resets.backend])
        response, body = yield get(self, proxy.url())
        self.assertEqual(response.code, 502)
        self.assertIn(b"without a valid response", body)

    @inlineCallbacks
    def test_connectTimeoutIs503(self) -> Gen:
        """
        A backend whose connection is never established within the
        connect timeout gives 503 with Retry-After (the request never
        reached a backend), and the attempt is abandoned.
        """
        attempts: list[Deferred[Any]] = []
        connecting: Deferred[None] = Deferred()

        @implementer(IStreamClientEndpoint)
        class BlackHole:
            def connect(self, factory: object) -> Deferred[Any]:
                attempt: Deferred[Any] = Deferred()
                attempts.append(attempt)
                # The test goes on once the attempt has been returned (and
                # given its timeout), not inside this call.
                reactor.callLater(0, connecting.callback, None)
                return attempt

        clock = Clock()
        proxy = yield startProxy(
            self,
            [Backend("127.0.0.1", 9)],
            clock=clock,
            upstreamSettings=UpstreamSettings(connectTimeout=5),
            endpointFor=lambda host, port: BlackHole(),
        )
        result: Deferred[Any] = get(self, proxy.url())
        yield connecting
        clock.advance(4.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        response, body = yield result
        self.assertEqual(response.code, 503)
        self.assertIn(b"timed out connecting", body)
        self.assertTrue(attempts[0].called, "the connection attempt was not cancelled")

    @inlineCallbacks
    def test_otherBackendStillServes(self) -> Gen:
        """
        With one of two backends refusing connections, every GET still
        succeeds: a request that could not connect is retried on the other.
        """
        dead = Backend(host="127.0.0.1", port=_closedPort())
        alive = yield startBackend(self, b"alive")
        proxy = yield startProxy(self, [dead, alive.backend])
        codes = []
        for _ in range(4):
            response, _ = yield get(self, proxy.url())
            codes.append(response.code)
        self.assertEqual(codes, [200] * 4)
        self.assertGreater(dead.retries, 0)
        self.assertEqual(dead.retries, dead.failures)
        self.assertIn(f"tried={dead.authority},{alive.backend.authority}", "".join(proxy.lines))

    @inlineCallbacks
    def test_noBackendIs503(self) -> Gen:
        """
        With no backend available the proxy answers 503 at once, with
        Retry-After.
        """
        proxy = yield startProxy(self, [])
        response, body = yield get(self, proxy.url())
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn(b"No backend", body)

    @inlineCallbacks
    def test_slowBackendIs504(self) -> Gen:
        """
        A backend that accepts the request but sends no response headers
        within the timeout gives 504, and its connection is dropped.
        """
        hung: list[Request] = []
        backend = yield startBackend(self, b"", _hang(hung))
        clock = Clock()
        proxy = yield startProxy(
            self, [backend.backend], settings=ProxySettings(responseTimeout=30), clock=clock
        )
        arrived = backend.resource.nextRequest()
        result: Deferred[Any] = get(self, proxy.url())
        request = yield arrived
        lost = request.notifyFinish()
        clock.advance(29)
        self.assertNoResult(result)
        clock.advance(1)
        response, body = yield result
        self.assertEqual(response.code, 504)
        self.assertIn(b"did not answer in time", body)
        yield self.assertFailure(lost, Exception)
        self.assertEqual(backend.backend.inFlight, 0)

    @inlineCallbacks
    def test_garbageStatusLineIs502(self) -> Gen:
        """
        A backend answering with something that is not HTTP gives 502.
        """

        garbage = yield startScripted(self, answer(b"SSH-2.0-OpenSSH\r\n\r\n"))
        proxy = yield startProxy(self, [garbage.backend])
        response, _body = yield get(self, proxy.url())
        self.assertEqual(response.code, 502)

    @inlineCallbacks
    def test_backendDiesMidBody(self) -> Gen:
        """
        A backend that dies mid-response makes the proxy close the client
        connection: the client never sees a complete-looking response.
        """

        dies = yield startScripted(
            self, answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        )
        proxy = yield startProxy(self, [dies.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield client.closed
        self.assertIn(b"Content-Length: 100", client.data)
        _head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertEqual(body, b"only-part")
        self.assertIn("truncated", proxy.lines[-1])


class HostTests(TestCase):
    """
    The Host allow-list.
    """

    @inlineCallbacks
    def test_allowedAndMisdirected(self) -> Gen:
        """
        With an allow-list, a listed Host (any port) is served and any
        other gets 421 Misdirected Request without reaching a backend.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(
            self, [backend.backend], settings=ProxySettings(allowedHosts=frozenset({"localhost"}))
        )
        response, _ = yield get(self, b"http://localhost:%d/" % (proxy.portNumber,))
        self.assertEqual(response.code, 200)
        response, _body = yield get(self, proxy.url())
        self.assertEqual(response.code, 421)
        self.assertEqual(len(backend.resource.received), 1)

    @inlineCallbacks
    def test_absoluteFormAuthorityWins(self) -> Gen:
        """
        For an absolute-form target, the target's authority is the Host
        routed on and forwarded; the path and query are relayed.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"GET http://other.example/p?q=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual((seen.uri, seen.header(b"host")), (b"/p?q=1", [b"other.example"]))

    @inlineCallbacks
    def test_badTargetsAre400(self) -> Gen:
        """
        A target without a leading slash, or two Host headers, get 400 and
        reach no backend.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        for request in (
            b"GET admin HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ):
            client = yield rawConnect(self, proxy.portNumber)
            client.transport.write(request)
            data = yield client.until(b"\r\n\r\n")
            self.assertTrue(data.startswith(b"HTTP/1.1 400 "), (request, data))
        self.assertEqual(backend.resource.received, [])


class BodyLimitTests(TestCase):
    """
    Request bodies above the limit are refused with 413.
    """

    @inlineCallbacks
    def test_declaredLengthTooLarge(self) -> Gen:
        """
        A Content-Length above the limit gets 413 without 100 Continue, and
        the connection is closed; the backend sees nothing.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend], maxBodySize=10)
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
        )
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 413 "), client.data)
        self.assertNotIn(b"100 Continue", client.data)
        self.assertEqual(backend.resource.received, [])
        self.assertIn(" 413 ", proxy.lines[-1])

    @inlineCallbacks
    def test_chunkedTooLarge(self) -> Gen:
        """
        A chunked body that grows past the limit gets 413 and the
        connection is closed.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend], maxBodySize=10)
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n01234567\r\n8\r\n01234567\r\n"
        )
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 413 "), client.data)
        self.assertEqual(backend.resource.received, [])

    @inlineCallbacks
    def test_atTheLimit(self) -> Gen:
        """
        A body exactly at the limit is relayed.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend], maxBodySize=10)
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        yield client.until(b"\r\n\r\nok")
        self.assertEqual(backend.resource.received[0].body, b"0123456789")


@implementer(IPushProducer)
class _Stream:
    """
    A backend response body written by a push producer: C{total} bytes in
    64 KiB chunks, as fast as the proxy lets it; records pauses.
    """

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.remaining = total
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.digest = hashlib.sha256()
        self.done: Deferred[None] = Deferred()
        self.firstPause: Deferred[None] = Deferred()
        request.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1
        if not self.firstPause.called:
            self.firstPause.callback(None)

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.remaining > 0 and not self.stopped:
            chunk = bytes([self.remaining % 251]) * min(65536, self.remaining)
            self.remaining -= len(chunk)
            self.digest.update(chunk)
            self.request.write(chunk)
        if self.remaining == 0 and not self.stopped:
            self.remaining = -1
            self.request.unregisterProducer()
            self.request.finish()
            self.done.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True


class StreamingTests(TestCase):
    """
    Response bodies stream with backpressure.
    """

    @inlineCallbacks
    def test_largeResponseIntact(self) -> Gen:
        """
        A 32 MiB response arrives byte for byte.
        """
        streams: list[_Stream] = []

        def handler(request: Request) -> int:
            request.setHeader(b"Content-Length", b"%d" % (32 * 1024 * 1024,))
            streams.append(_Stream(request, 32 * 1024 * 1024))
            return NOT_DONE_YET

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        _response, body = yield get(self, proxy.url())
        self.assertEqual(len(body), 32 * 1024 * 1024)
        self.assertEqual(hashlib.sha256(body).hexdigest(), streams[0].digest.hexdigest())

    @inlineCallbacks
    def test_slowReaderPausesBackend(self) -> Gen:
        """
        While the client reads nothing, the backend is paused after a
        bounded amount of data, far less than the response; when the client
        reads again, the whole response arrives.
        """
        total = 256 * 1024 * 1024
        streams: list[_Stream] = []

        def handler(request: Request) -> int:
            request.setHeader(b"Content-Length", b"%d" % (total,))
            streams.append(_Stream(request, total))
            return NOT_DONE_YET

        backend = yield startBackend(self, b"", handler)
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.pauseProducing()
        arrived = backend.resource.nextRequest()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield arrived
        stream = streams[0]
        # Wait until the backend has been paused by backpressure.
        yield stream.firstPause
        self.assertTrue(stream.paused)
        sent = total - stream.remaining
        self.assertLess(sent, 64 * 1024 * 1024)
        client.transport.abortConnection()
        yield client.closed
        # The client went away: the proxy stops the backend transfer.
        yield until(lambda: stream.stopped or backend.backend.inFlight == 0, "the transfer to stop")
        self.assertEqual(backend.backend.inFlight, 0)

    @inlineCallbacks
    def test_clientAbortStopsBackend(self) -> Gen:
        """
        A client that disconnects while waiting for the response headers
        makes the proxy drop its backend request.
        """
        hung: list[Request] = []
        backend = yield startBackend(self, b"", _hang(hung))
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        arrived = backend.resource.nextRequest()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        request = yield arrived
        lost = request.notifyFinish()
        client.transport.abortConnection()
        yield self.assertFailure(lost, Exception)
        self.assertEqual(backend.backend.inFlight, 0)


def _hang(into: list[Request]) -> Any:
    """
    A backend handler that keeps every request open, collecting it.
    """

    def handler(request: Request) -> int:
        into.append(request)
        return NOT_DONE_YET

    return handler
