"""
Tests for whole responses (L{lbproxy.http.edge.ProxyRequest.respondWhole}):
a backend response whose body arrives with its head is answered in one
write, without the streamed relay; the client must not be able to tell,
so each conversation here runs both ways over loopback sockets and the
answers are compared.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import inlineCallbacks

from lbproxy.http.edge import ProxyRequest
from lbproxy.http.headers import HeaderEdits
from lbproxy.http.requestid import RequestIdSettings
from lbproxy.test.test_streaming import StreamingTestCase, _answerWhen, _Backend

Gen = Generator[Any, Any, None]
CLOSING_GET = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def parseResponse(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, bytes]:
    """
    A response as a client reads it: the status line, the header lines but
    framing and C{Date} (lower-cased names, by name, the values of one name
    in order: where different names come is not for a client to rely on),
    the decoded body, and what followed the response.
    """
    head, _, rest = data.partition(b"\r\n\r\n")
    statusLine, *lines = head.split(b"\r\n")
    split = (line.partition(b":") for line in lines)
    fields = [(name.strip().lower(), value.strip()) for name, _, value in split]
    values = dict(fields)
    if values.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size, 16)
            if not length:
                rest = rest[2:]
                break
            body, rest = body + rest[:length], rest[length + 2 :]
    elif b"content-length" in values and b" 304 " not in statusLine:
        length = int(values[b"content-length"])
        body, rest = rest[:length], rest[length:]
    else:
        body, rest = rest, b""
    framing = (b"transfer-encoding", b"content-length", b"date")
    kept = [(name, value) for name, value in fields if name not in framing]
    return statusLine, sorted(kept, key=lambda field: field[0]), body, rest


class WholeResponseTests(StreamingTestCase):
    """
    The same backend answers, relayed whole and streamed, reach the client
    the same (framing aside: a whole response always states its length).
    """

    edits: HeaderEdits | None = None

    @inlineCallbacks
    def exchange(self, response: bytes, request: bytes, whole: bool) -> Generator[Any, Any, bytes]:
        """
        Send C{request} through a proxy whose backend answers C{response};
        return what the client received once the connection closed.
        """
        self.patch(ProxyRequest, "wholeResponses", whole)
        proxy = yield self.start(_answerWhen(b"\r\n\r\n", response))
        if self.edits is not None:
            # As a route with response-headers edits relays.
            resource = proxy.site.resource
            relay, edits = resource.relay, self.edits
            self.patch(
                resource,
                "relay",
                lambda request, route, record: relay(request, route, record, None, edits),
            )
        client = yield self.connect(proxy)
        client.send(request)
        yield client.closed
        return client.data  # type: ignore[no-any-return]

    @inlineCallbacks
    def assertSameBothWays(
        self, response: bytes, request: bytes = CLOSING_GET
    ) -> Generator[Any, Any, bytes]:
        """
        Relay C{response} to C{request} whole and streamed; the client
        reads the same. Returns what the whole one sent.
        """
        whole = yield self.exchange(response, request, whole=True)
        streamed = yield self.exchange(response, request, whole=False)
        self.assertEqual(parseResponse(whole), parseResponse(streamed))
        return whole  # type: ignore[no-any-return]

    @inlineCallbacks
    def test_plain(self) -> Gen:
        """
        A response with a length: status, headers (repeats kept, in order)
        and body are the same; the whole one states its length.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 201 Made\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nX-Y: z\r\n"
            b"Set-Cookie: b=2\r\n\r\nhello"
        )
        self.assertTrue(data.startswith(b"HTTP/1.1 201 Made\r\n"), data)
        self.assertIn(b"Content-Length: 5\r\n", data)
        self.assertEqual(data.count(b"Set-Cookie:"), 2)

    @inlineCallbacks
    def test_backendDateWins(self) -> Gen:
        """
        The backend's C{Date} replaces the proxy's: there is one, the
        backend's.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(data.lower().count(b"\r\ndate:"), 1)
        self.assertIn(b"\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n", data)

    @inlineCallbacks
    def test_hopByHopDropped(self) -> Gen:
        """
        Hop-by-hop headers, and those the backend's C{Connection} names,
        are not relayed; the client's C{Connection: close} is answered with
        C{Connection: close}.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
            b"X-Secret: s\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok"
        )
        lower = data.lower()
        self.assertNotIn(b"keep-alive", lower)
        self.assertNotIn(b"x-secret", lower)
        self.assertIn(b"\r\nx-kept: k\r\n", lower)
        self.assertEqual(lower.count(b"\r\nconnection: close\r\n"), 1)

    @inlineCallbacks
    def test_routeEdits(self) -> Gen:
        """
        A route's response-header edits apply to the relayed headers and
        the proxy's own alike: a header removed is gone, one set replaces
        the backend's, and setting the proxy's C{Date} replaces it.
        """
        self.edits = HeaderEdits.fromText(
            set=[("X-Set", "ours"), ("Date", "Mon, 07 Nov 1994 08:49:37 GMT")],
            remove=["X-Secret"],
        )
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nX-Secret: s\r\nX-Set: theirs\r\nX-Kept: k\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        lower = data.lower()
        self.assertNotIn(b"x-secret", lower)
        self.assertIn(b"\r\nX-Set: ours\r\n", data)
        self.assertNotIn(b"theirs", data)
        self.assertIn(b"\r\nx-kept: k\r\n", lower)
        self.assertEqual(lower.count(b"\r\ndate:"), 1)
        self.assertIn(b"\r\nDate: Mon, 07 Nov 1994 08:49:37 GMT\r\n", data)

    @inlineCallbacks
    def test_chunkedArrivedWhole(self) -> Gen:
        """
        A chunked response that arrived whole is answered with its length
        and the decoded body.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        self.assertIn(b"\r\nContent-Length: 5\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\nabcde"), data)

    @inlineCallbacks
    def test_head(self) -> Gen:
        """
        The answer to HEAD relays the backend's C{Content-Length} and has
        no body.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        self.assertTrue(data.endswith(b"\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n"))

    @inlineCallbacks
    def test_noContent(self) -> Gen:
        """
        A 204 has no length and no body.
        """
        data = yield self.assertSameBothWays(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertNotIn(b"content-length", data.lower())

    @inlineCallbacks
    def test_http10Client(self) -> Gen:
        """
        An HTTP/1.0 client gets an HTTP/1.0 answer with its length.
        """
        data = yield self.assertSameBothWays(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        )
        self.assertTrue(data.startswith(b"HTTP/1.0 200 OK\r\n"), data)

    @inlineCallbacks
    def test_keepAlive(self) -> Gen:
        """
        On a kept-alive connection the next request is answered after a
        whole response, and the backend connection is reused for it.
        """
        proxy = yield self.start(_answerEach(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        client = yield self.connect(proxy)
        client.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        yield client.until(b"ok")
        client.send(b"GET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        yield client.closed
        self.assertEqual(client.data.count(b"HTTP/1.1 200 OK\r\n"), 2)
        self.assertEqual(len(self.backends), 1)
        self.assertEqual(self.backends[0].received.count(b"GET /"), 2)

    @inlineCallbacks
    def test_stateOfTheRequest(self) -> Gen:
        """
        The access log sees the status and the bytes of the body sent.
        """
        proxy = yield self.start(
            _answerWhen(b"\r\n\r\n", b"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\nabc")
        )
        client = yield self.connect(proxy)
        client.send(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        yield client.closed
        self.assertEqual(len(proxy.lines), 1)
        self.assertIn('"GET /x HTTP/1.1" 202 3 ', proxy.lines[0])


class OwnHeaderTests(StreamingTestCase):
    """
    The proxy's own response headers (C{Date}, the request ID), which a
    whole response writes as lines without a L{Headers}, are written as
    the streamed relay writes them.
    """

    @inlineCallbacks
    def ownLines(self, whole: bool) -> Generator[Any, Any, list[bytes]]:
        """
        The response header lines of two answers on one kept-alive
        connection (the first keeps the connection open, so only the
        proxy's own headers precede the backend's), with IDs in a header
        configured in lower case.
        """
        self.patch(ProxyRequest, "wholeResponses", whole)
        proxy = yield self.start(_answerEach(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        proxy.site.requestIds = RequestIdSettings(header=b"x-trace-id")
        client = yield self.connect(proxy)
        client.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        yield client.until(b"ok")
        client.send(b"GET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        yield client.closed
        return [
            line.partition(b":")[0]
            for line in client.data.split(b"\r\n")
            if b":" in line and not line.startswith(b"HTTP/")
        ]

    @inlineCallbacks
    def test_sameNames(self) -> Gen:
        """
        Both ways, each answer has one C{Date} and one C{X-Trace-Id}, their
        names written alike (as twisted.web writes them).
        """
        whole = yield self.ownLines(whole=True)
        streamed = yield self.ownLines(whole=False)
        for names in (whole, streamed):
            self.assertEqual(names.count(b"Date"), 2, names)
            self.assertEqual(names.count(b"X-Trace-Id"), 2, names)
        self.assertEqual(sorted(set(whole)), sorted(set(streamed)))


def _answerEach(response: bytes) -> Any:
    """
    A backend that answers C{response} to every request head it receives.
    """

    def onData(backend: _Backend, data: bytes) -> None:
        answered = getattr(backend, "answered", 0)
        heads = backend.received.count(b"\r\n\r\n")
        for _ in range(heads - answered):
            backend.write(response)
        backend.answered = heads  # type: ignore[attr-defined]

    return onData
