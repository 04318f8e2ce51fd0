"""
Tests for L{lbproxy.http.edge}: strict parsing at the edge, as a table of raw
requests sent over real sockets to a proxy in front of a recording backend,
plus the header timeout, the connection limit and backend framing errors;
and request heads parsed in one pass against the same heads parsed line by
line, as conversations over an in-memory transport.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbproxy.http.accesslog import AccessLog
from lbproxy.http.checks import (
    PlainHead,
    checkFraming,
    checkHost,
    checkRequestLine,
    parsePlainHead,
    validHost,
)
from lbproxy.http.edge import EdgeLimits, ProxyChannel, ProxySite
from lbproxy.test.fakes import (
    answer,
    get,
    rawConnect,
    startBackend,
    startProxy,
    startScripted,
    turn,
    until,
)

Gen = Generator[Any, Any, None]

H = b"Host: example.com\r\n"


@attrs.frozen
class Case:
    """
    One row: what the client sends, the status it must get, whether the
    proxy must close the connection, and what the backend must receive
    (C{(method, target)} pairs).
    """

    name: str
    payload: bytes
    status: int
    closed: bool
    forwarded: tuple[tuple[bytes, bytes], ...] = ()


CASES = [
    Case("valid", b"GET /a?b HTTP/1.1\r\n" + H + b"\r\n", 200, False, ((b"GET", b"/a?b"),)),
    Case("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", 200, True, ((b"GET", b"/"),)),
    Case("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400, True),
    Case("two Host headers", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400, True),
    Case("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, True),
    Case("Host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, True),
    Case("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, True),
    Case("Host with a bad port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400, True),
    Case(
        "absolute form: authority wins",
        b"GET http://other.example/p HTTP/1.1\r\n" + H + b"\r\n",
        200,
        False,
        ((b"GET", b"/p"),),
    ),
    Case("target without slash", b"GET admin HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    Case("GET *", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    Case("DEL in target", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    Case("8-bit target", b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    Case("NUL in target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    Case(
        "Content-Length too large to represent",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
        400,
        True,
    ),
    Case("bare LF line endings", b"GET / HTTP/1.1\n" + H[:-2] + b"\n\n", 400, True),
    Case("bare LF after the request line", b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, True),
    Case("target too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, True),
    Case(
        "header section too large",
        b"GET / HTTP/1.1\r\n" + H + (b"X-Big: " + b"a" * 1000 + b"\r\n") * 70 + b"\r\n",
        431,
        True,
    ),
    Case(
        "one header line too long",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 80000 + b"\r\n\r\n",
        431,
        True,
    ),
    Case(
        "too many header fields",
        b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n" * 100 + b"\r\n",
        431,
        True,
    ),
    Case(
        "Transfer-Encoding: identity",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: identity\r\n\r\nGET /smuggled HTTP/1.1\r\n",
        501,
        True,
    ),
    Case(
        "gzip then chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        True,
    ),
    Case(
        "Content-Length and Transfer-Encoding",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        True,
    ),
    Case(
        "two Content-Lengths",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
        True,
    ),
    Case("obsolete line folding", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400, True),
    Case("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, True),
    Case("HTTP/0.9 request", b"GET /\r\n\r\n", 400, True),
    Case("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X : a\r\n\r\n", 400, True),
    Case(
        "nothing parsed after a refusal",
        b"GET admin HTTP/1.1\r\n" + H + b"\r\nGET /next HTTP/1.1\r\n" + H + b"\r\n",
        400,
        True,
    ),
    Case(
        "chunked body relayed with the proxy's own framing",
        b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        200,
        False,
        ((b"POST", b"/up"),),
    ),
]


class StrictParsingTests(TestCase):
    """
    The table: every row is sent on a fresh connection.
    """

    @inlineCallbacks
    def test_table(self) -> Gen:
        """
        Each request gets the expected status; refused requests close the
        connection and reach no backend; accepted ones reach it as sent.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        for case in CASES:
            backend.resource.received.clear()
            client = yield rawConnect(self, proxy.portNumber)
            client.transport.write(case.payload)
            if case.closed:
                yield client.closed
            else:
                yield client.until(b"\r\n\r\nok")
            status = int(client.data.split(b" ", 2)[1]) if client.data else 0
            self.assertEqual(status, case.status, f"{case.name}: {client.data[:200]!r}")
            if not case.closed:
                self.assertTrue(client.transport.connected, f"{case.name}: kept open")
            forwarded = tuple((r.method, r.uri) for r in backend.resource.received)
            self.assertEqual(forwarded, case.forwarded, case.name)
            if status >= 400:
                self.assertIn(b"Content-Type: text/plain", client.data, case.name)

    @inlineCallbacks
    def test_refusalsLogged(self) -> Gen:
        """
        Each refusal writes one access log line with its status and reason.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        yield client.closed
        [line] = proxy.lines
        self.assertIn(' "GET / HTTP/1.1" 400 ', line)
        self.assertIn('error="invalid Host header"', line)


class HeaderTimeoutTests(TestCase):
    """
    The slowloris defence.
    """

    @inlineCallbacks
    def test_slowHeadTimesOut(self) -> Gen:
        """
        A request head still incomplete after the header timeout gets 408
        and the connection closes, however steadily bytes trickle in.
        """
        backend = yield startBackend(self, b"ok")
        clock = Clock()
        proxy = yield startProxy(
            self, [backend.backend], clock=clock, limits=EdgeLimits(headerTimeout=10)
        )
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HT")
        yield until(
            lambda: any(c._headerTimer for c in proxy.site.channels), "the head timer to start"
        )
        for piece in (b"TP/1.1\r\n", b"Host: a\r\n", b"X-Slow: 1\r\n"):
            client.transport.write(piece)
            clock.advance(3)
        yield turn()
        self.assertEqual(client.data, b"")
        clock.advance(1)
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 408 "), client.data)
        self.assertEqual(backend.resource.received, [])

    @inlineCallbacks
    def test_idleKeepAliveIsNotAHeadTimeout(self) -> Gen:
        """
        A keep-alive connection that sends nothing after its response is
        not given a 408 by the header timeout.
        """
        backend = yield startBackend(self, b"ok")
        clock = Clock()
        proxy = yield startProxy(
            self,
            [backend.backend],
            clock=clock,
            limits=EdgeLimits(headerTimeout=10, idleTimeout=60),
        )
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield client.until(b"\r\n\r\nok")
        clock.advance(30)
        self.assertNotIn(b"408", client.data)
        self.assertTrue(client.transport.connected)


class ConnectionLimitTests(TestCase):
    """
    C{maxConnections}.
    """

    @inlineCallbacks
    def test_beyondTheLimit503(self) -> Gen:
        """
        A connection beyond the limit is answered 503 and closed; the open
        ones keep working.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend], limits=EdgeLimits(maxConnections=2))
        first = yield rawConnect(self, proxy.portNumber)
        second = yield rawConnect(self, proxy.portNumber)
        first.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield first.until(b"\r\n\r\nok")
        third = yield rawConnect(self, proxy.portNumber)
        yield third.closed
        self.assertTrue(third.data.startswith(b"HTTP/1.1 503 "), third.data)
        second.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield second.until(b"\r\n\r\nok")


class BackendFramingTests(TestCase):
    """
    Backend answers with invalid framing become 502, and the connection is
    not reused.
    """

    timeout = 20

    @inlineCallbacks
    def test_table(self) -> Gen:
        """
        Content-Length with Transfer-Encoding, two different
        Content-Lengths, a garbage status line and an oversized header all
        give 502.
        """
        cases = [
            (
                "CL and TE",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
            ),
            ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
            ("garbage status", b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"),
            (
                "header too long",
                b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\nContent-Length: 2\r\n\r\nok",
            ),
        ]
        for name, data in cases:
            scripted = yield startScripted(self, answer(data, close=False))
            proxy = yield startProxy(self, [scripted.backend])
            response, _ = yield get(self, proxy.url(), method=b"POST")
            self.assertEqual(response.code, 502, name)


class ChecksTests(SynchronousTestCase):
    """
    The pure checks.
    """

    def test_requestLine(self) -> None:
        """
        Request lines are accepted or refused with the right status.
        """
        for line, code in [
            (b"GET / HTTP/1.1", None),
            (b"OPTIONS * HTTP/1.1", None),
            (b"GET http://a/b HTTP/1.0", None),
            (b"GET  / HTTP/1.1", 400),
            (b"GET / HTTP/1.1 x", 400),
            (b"G(T / HTTP/1.1", 400),
            (b"GET / HTTP/1.2", 505),
            (b"GET / http/1.1", 400),
            (b"GET ftp://a/ HTTP/1.1", 400),
            (b"GET /" + b"a" * 100 + b" HTTP/1.1", 414),
        ]:
            rejection = checkRequestLine(line, maxTarget=64)
            self.assertEqual(None if rejection is None else rejection.code, code, line)

    def test_hosts(self) -> None:
        """
        Valid and invalid Host values.
        """
        for value in (b"a", b"a.b:80", b"127.0.0.1:8443", b"[::1]", b"[::1]:443", b"xn--bcher-kva"):
            self.assertTrue(validHost(value), value)
        for value in (b"", b"a b", b"a/b", b"u@a", b"[::1", b"[::1]x", b"a:b", b"[zz]"):
            self.assertFalse(validHost(value), value)
        self.assertIsNone(checkHost([], b"HTTP/1.0"))
        rejection = checkHost([], b"HTTP/1.1")
        assert rejection is not None
        self.assertEqual(rejection.code, 400)

    def test_plainHead(self) -> None:
        """
        A plain head is parsed into its request line's parts and its
        headers as twisted.web stores them; anything else is left to the
        line by line parser.
        """
        line = b"GET /a HTTP/1.1\r\n"
        head = parsePlainHead(line + b"host: a\r\nX-A: 1\r\nx-a: \t2 \r\n", 64, 1024, 10)
        assert head is not None
        self.assertEqual(head[:3], (b"GET", b"/a", b"HTTP/1.1"))
        self.assertEqual(
            list(head.headers.getAllRawHeaders()), [(b"Host", [b"a"]), (b"X-A", [b"1", b"2"])]
        )
        fields = b"Host: a\r\n" + b"X: 1\r\n" * 9
        for plain in [
            b"GET / HTTP/1.0\r\n",
            line + b"Host: a\r\nContent-Length: 0\r\n",
            line + fields,
            line + b"Host: a\r\nX: " + b"a" * (1024 - 14) + b"\r\n",
            b"GET /" + b"a" * 63 + b" HTTP/1.1\r\nHost: a\r\n",
        ]:
            self.assertIsNotNone(parsePlainHead(plain, 64, 1024, 10), plain)
        for other in [
            b"\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n",
            b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: a\r\n",
            line + fields + b"X: 1\r\n",
            line + b"Host: a\r\nX: " + b"a" * (1024 - 13) + b"\r\n",
            line,
            line + b"Host: a\r\nHost: a\r\n",
            line + b"Host: a b\r\n",
            line + b"Host: a\r\nContent-Length: 1\r\n",
            line + b"Host: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n",
            line + b"Host: a\r\nTransfer-Encoding: chunked\r\n",
            line + b"Host: a\r\nexpect: 100-continue\r\n",
            line + b"Host: a\r\nX: a\r\n b\r\n",
            line + b"Host: a\nX: a\r\n",
            line + b"Host: a\r\nX: a\rb\r\n",
            line + b"Host: a\r\nX: a\x00b\r\n",
            line + b"Host: a\r\nX : a\r\n",
            line + b"Host: a\r\nX\r\n",
        ]:
            self.assertIsNone(parsePlainHead(other, 64, 1024, 10), other)

    def test_framing(self) -> None:
        """
        Framing headers are accepted or refused with the right status.
        """
        for lengths, encodings, code in [
            ([b"5"], [], None),
            ([], [b"chunked"], None),
            ([], [b"Chunked "], None),
            ([], [b"identity"], 501),
            ([], [b"gzip"], 501),
            ([], [b"gzip, chunked"], 501),
            ([], [b"chunked", b"chunked"], 501),
            ([], [b","], 400),
            ([b"5"], [b"chunked"], 400),
            ([b"-1"], [], 400),
            ([b"9" * 30], [], 400),
        ]:
            rejection = checkFraming(lengths, encodings)
            self.assertEqual(
                None if rejection is None else rejection.code, code, (lengths, encodings)
            )


class _Counting(ProxyChannel):
    """
    A channel that counts the request heads it takes in one pass.
    """

    onePass = 0

    def _handOver(self, head: PlainHead, rest: bytes) -> None:
        self.onePass += 1
        super()._handOver(head, rest)


class _LineByLine(_Counting):
    """
    The same channel with the one-pass parser off.
    """

    fastHeads = False


class _Recorder(Resource):
    """
    Records what each request looks like when it reaches the site, and
    answers it at once (inside C{render}) or when the test says.
    """

    isLeaf = True

    def __init__(self, atOnce: bool) -> None:
        super().__init__()
        self.atOnce = atOnce
        self.seen: list[tuple[Any, ...]] = []
        self.held: list[Request] = []

    def render(self, request: Request) -> int:
        self.seen.append(
            (
                request.method,
                request.uri,
                request.path,
                request.args,
                request.clientproto,
                [
                    (name, list(values))
                    for name, values in request.requestHeaders.getAllRawHeaders()
                ],
                request.received_cookies,
                _bodyOf(request),
                request.channel.persistent,
                request.responseHeaders.getRawHeaders(b"connection"),
            )
        )
        if self.atOnce:
            _answerHeld(request)
        else:
            self.held.append(request)
        return NOT_DONE_YET


class _Collected(bytearray):
    """
    A streamed request body as it arrives (see L{_bodyOf}).
    """

    complete = False

    def writeBody(self, data: bytes) -> None:
        self.extend(data)

    def finishBody(self) -> None:
        self.complete = True


def _bodyOf(request: Request) -> bytes | _Collected:
    """
    The request's body: all of it for a request without one streamed, or
    what arrives of a streamed body, collected as it comes.
    """
    body = getattr(request, "body", None)
    if body is None:
        return request.content.read()  # type: ignore[union-attr,no-any-return]
    collected = _Collected()
    body.attach(collected)
    return collected


def _answerHeld(request: Request) -> None:
    request.write(b"answer to " + request.uri)
    request.finish()


@attrs.frozen
class Transcript:
    """
    Everything a client, the site and the operator can see of one
    conversation: the requests as the site got them, the bytes written
    back, whether the connection was closed, the access log and the
    timers left running.
    """

    seen: list[tuple[Any, ...]]
    written: bytes
    closed: bool
    log: list[str]
    timers: list[float]


_CLIENT = IPv4Address("TCP", "192.0.2.7", 50000)


def _connected(
    site: ProxySite, transport: StringTransport | None = None
) -> tuple[Any, StringTransport]:
    """
    A channel of C{site} connected to C{transport} (by default a new
    in-memory one) from L{_CLIENT}.
    """
    if transport is None:
        transport = StringTransport(peerAddress=_CLIENT)
    channel = site.buildProtocol(_CLIENT)
    channel.makeConnection(transport)
    return channel, transport


def converse(
    reads: tuple[bytes, ...], lineByLine: bool = False, atOnce: bool = False
) -> tuple[Transcript, int]:
    """
    Feed C{reads} to a fresh channel, one C{dataReceived} each, answering
    each request at once (inside C{render}) or after each read.

    @return: What could be seen, and how many heads were taken in one pass.
    """
    clock = Clock()
    clock.advance(1_700_000_000)
    lines: list[str] = []
    resource = _Recorder(atOnce)
    site = ProxySite(resource, AccessLog(lines.append), reactor=clock)
    site.protocol = _LineByLine if lineByLine else _Counting
    channel, transport = _connected(site)
    for data in reads:
        channel.dataReceived(data)
        clock.advance(1)
        while resource.held:
            _answerHeld(resource.held.pop(0))
    timers = sorted(call.getTime() for call in clock.getDelayedCalls())
    seen = Transcript(resource.seen, transport.value(), transport.disconnecting, lines, timers)
    return seen, channel.onePass


P = b"GET /a?b=1&b=2 HTTP/1.1\r\n" + H + b"\r\n"
BROWSER = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0.0.0\r\n"
    b"Accept: */*\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"\r\n"
)


@attrs.frozen
class Conversation:
    """
    One row: what the client sends, in which reads, and how many heads the
    one-pass parser takes when each request is answered at once and when
    answered later (pipelined requests then wait, and are read again).
    """

    name: str
    reads: tuple[bytes, ...]
    onePassAtOnce: int
    onePassLater: int


CONVERSATIONS = [
    Conversation("wrk's request", (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",), 1, 1),
    Conversation("a browser's request", (BROWSER,), 1, 1),
    Conversation("keep-alive: three requests in three reads", (P, P, BROWSER), 3, 3),
    Conversation("pipelined: three requests in one read", (P + BROWSER + P,), 1, 3),
    Conversation("a head split in two reads", (b"GET / HTTP/1.1\r\nHo", b"st: a\r\n\r\n", P), 1, 1),
    Conversation("the request line alone first", (b"GET / HTTP/1.1\r\n", H + b"\r\n", P), 1, 1),
    Conversation("HTTP/1.0 without Host", (b"GET /x HTTP/1.0\r\n\r\n",), 1, 1),
    Conversation("HTTP/1.0, then more", (b"GET /x HTTP/1.0\r\n\r\n" + P, P), 1, 1),
    Conversation(
        "Connection: close, then more",
        (b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n" + P, P),
        1,
        1,
    ),
    Conversation(
        "Connection: keep-alive on HTTP/1.0",
        (b"GET / HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n", P),
        1,
        1,
    ),
    Conversation(
        "repeated fields, in order",
        (b"GET / HTTP/1.1\r\n" + H + b"Accept: a\r\nx-a: 1\r\nACCEPT: b\r\nX-A: 2\r\n\r\n",),
        1,
        1,
    ),
    Conversation(
        "spaces and tabs around values, an empty value, odd case",
        (b"GET / HTTP/1.1\r\nhOST: \t a:80 \t\r\nX-Empty:\r\nx-tAb:\tv w\t\r\nDnt: 1\r\n\r\n",),
        1,
        1,
    ),
    Conversation(
        "8-bit and control bytes in a value", (P[:-2] + b"X: \xc3\xa9\x01\x7f\r\n\r\n",), 1, 1
    ),
    Conversation(
        "Content-Length: 0", (b"POST /f HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",), 1, 1
    ),
    Conversation(
        "a body, then a request",
        (b"POST /f HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc" + P,),
        0,
        1,
    ),
    Conversation(
        "a chunked body, then a request",
        (
            b"POST /f HTTP/1.1\r\n"
            + H
            + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            + P,
        ),
        0,
        1,
    ),
    Conversation(
        # Answered (at once or after the first read) before its body
        # arrives: the connection then closes, since the rest of the body
        # cannot be told from a next request.
        "a body in the next read",
        (b"PUT /f HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\n", b"abc", P),
        0,
        0,
    ),
    Conversation(
        "Expect: 100-continue",
        (b"POST /f HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n",),
        0,
        0,
    ),
    Conversation(
        "a value that mentions Transfer-Encoding",
        (P[:-2] + b"X-Note: transfer-encoding: none\r\n\r\n",),
        0,
        0,
    ),
    Conversation("an empty line before the request", (b"\r\n" + P, P), 1, 1),
    Conversation("an empty line after each request", (P + b"\r\n", P, b"\r\n" + P), 2, 1),
    Conversation(
        "absolute form, then OPTIONS *",
        (
            b"GET http://other.example/p?q HTTP/1.1\r\n"
            + H
            + b"\r\nOPTIONS * HTTP/1.1\r\n"
            + H
            + b"\r\n",
        ),
        1,
        2,
    ),
    Conversation("a whole head, then part of one", (P + b"GET /next HTTP/1.1\r\nHo",), 1, 1),
    Conversation(
        "a whole head, then a malformed one",
        (P + b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",),
        1,
        1,
    ),
    Conversation("HTTP/1.1 without Host", (b"GET / HTTP/1.1\r\n\r\n",), 0, 0),
    Conversation("two Hosts", (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", P), 0, 0),
    Conversation("an invalid Host", (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", P), 0, 0),
    Conversation(
        "two Content-Lengths of 0", (P[:-2] + b"Content-Length: 0\r\n" * 2 + b"\r\n",), 0, 0
    ),
    Conversation("obs-fold", (P[:-2] + b"X: a\r\n b\r\n\r\n",), 0, 0),
    Conversation("bare LF", (b"GET / HTTP/1.1\n" + H + b"\r\n",), 0, 0),
    Conversation("NUL in a value", (P[:-2] + b"X: a\x00b\r\n\r\n",), 0, 0),
    Conversation("space before a colon", (P[:-2] + b"X : a\r\n\r\n",), 0, 0),
    Conversation(
        "a target too long", (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n",), 0, 0
    ),
    Conversation("too many fields", (P[:-2] + b"X-A: 1\r\n" * 100 + b"\r\n",), 0, 0),
    Conversation(
        "a refused request, then more", (b"GET admin HTTP/1.1\r\n" + H + b"\r\n" + P, P), 0, 0
    ),
]


class OnePassTests(SynchronousTestCase):
    """
    Request heads parsed in one pass and line by line make the same
    requests and the same answers.
    """

    def test_sameConversations(self) -> None:
        """
        For every conversation, answered at once or later, the site gets
        requests of the same method, target, path, arguments, version,
        headers (in order), cookies, body and persistence, and the client
        gets the same bytes, closing, access log lines and timers, whether
        heads are parsed in one pass or line by line; the one-pass parser
        takes the plain heads and leaves the rest.
        """
        for case in CONVERSATIONS:
            for atOnce, expected in ((True, case.onePassAtOnce), (False, case.onePassLater)):
                name = f"{case.name} (answered {'at once' if atOnce else 'later'})"
                slow, slowOnePass = converse(case.reads, lineByLine=True, atOnce=atOnce)
                fast, onePass = converse(case.reads, atOnce=atOnce)
                self.assertEqual(fast, slow, name)
                self.assertEqual((onePass, slowOnePass), (expected, 0), name)

    def test_servedAndRefused(self) -> None:
        """
        The conversations' answers are what the table's rows say: plain
        requests are served and the connection kept, HTTP/1.0 and
        C{Connection: close} end it, invalid heads are refused with 400.
        """
        fast, _ = converse((P, BROWSER))
        self.assertEqual(fast.written.count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(
            [seen[:5] for seen in fast.seen],
            [
                # The query is relayed as it came; it is not parsed into args.
                (b"GET", b"/a?b=1&b=2", b"/a", {}, b"HTTP/1.1"),
                (b"GET", b"/static/app.js?v=3", b"/static/app.js", {}, b"HTTP/1.1"),
            ],
        )
        self.assertEqual(fast.seen[1][6], {b"session": b"abc123", b"theme": b"dark"})
        self.assertFalse(fast.closed)
        for closing in [b"GET /x HTTP/1.0\r\n\r\n", P[:-2] + b"Connection: close\r\n\r\n"]:
            closed, _ = converse((closing + P,))
            self.assertEqual(len(closed.seen), 1, closing)
            self.assertIn(b"\r\nConnection: close\r\n", closed.written, closing)
            self.assertTrue(closed.closed, closing)
        refused, _ = converse((b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",))
        self.assertTrue(refused.written.startswith(b"HTTP/1.1 400 "))
        self.assertEqual(refused.seen, [])
        self.assertIn('error="invalid Host header"', refused.log[0])

    def test_headSplitAfterALine(self) -> None:
        """
        A head that arrives in pieces each ending right after a line's CRLF
        is served (that LF is no bare LF); a LF alone at the start of the
        next piece is one.
        """
        served, _ = converse((b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n"))
        self.assertTrue(served.written.startswith(b"HTTP/1.1 200 "), served.written)
        self.assertEqual(len(served.seen), 1)
        refused, _ = converse((b"GET / HTTP/1.1\r\nHost: a\r\n", b"\n"))
        self.assertTrue(refused.written.startswith(b"HTTP/1.1 400 "), refused.written)
        self.assertIn("line ending without CR", refused.log[0])

    def test_headersAsTwistedStoresThem(self) -> None:
        """
        Header names are canonicalised, values stripped of spaces and tabs,
        and repeated fields kept in the order sent.
        """
        head = b"GET / HTTP/1.1\r\nhOST: \t a:80 \t\r\nx-a: 1\r\nX-Empty:\r\nX-A: 2\r\nDnt: 1\r\n"
        fast, _ = converse((head + b"\r\n",))
        [seen] = fast.seen
        self.assertEqual(
            seen[5],
            [
                (b"Host", [b"a:80"]),
                (b"X-A", [b"1", b"2"]),
                (b"X-Empty", [b""]),
                (b"DNT", [b"1"]),
            ],
        )


class _CountingWrites(StringTransport):
    """
    A transport that keeps each write (or write of a sequence) apart.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=_CLIENT)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))


class _Sized(Resource):
    """
    Answers with a body of a declared length, or chunked if C{length} is
    false, in one write.
    """

    isLeaf = True

    def __init__(self, length: bool) -> None:
        super().__init__()
        self.length = length

    def render(self, request: Request) -> int:
        if self.length:
            request.setHeader(b"Content-Length", b"5")
        request.write(b"hello")
        request.finish()
        return NOT_DONE_YET


class IdleTimeoutTests(SynchronousTestCase):
    """
    The idle timeout of a keep-alive connection counts from the end of the
    last response, never while a request is in progress.
    """

    def test_slowAnswerNotIdle(self) -> None:
        """
        A request whose answer takes longer than the idle timeout is not cut
        off; once answered, the connection is closed after the idle timeout
        and not before.
        """
        clock = Clock()
        resource = _Recorder(atOnce=False)
        site = ProxySite(
            resource, AccessLog(lambda line: None), EdgeLimits(idleTimeout=60), reactor=clock
        )
        channel, transport = _connected(site)
        channel.dataReceived(P)
        clock.advance(150)
        self.assertFalse(transport.disconnecting)
        _answerHeld(resource.held.pop())
        self.assertIn(b"answer to /a?b=1&b=2", transport.value())
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)


class ResponseWriteTests(SynchronousTestCase):
    """
    The response head goes to the client together with the first body
    data: one write (so one send, one TCP segment) for a small answer.
    """

    def _answer(self, resource: Resource) -> list[bytes]:
        site = ProxySite(resource, AccessLog(lambda line: None), reactor=Clock())
        transport = _CountingWrites()
        channel, _ = _connected(site, transport)
        channel.dataReceived(P)
        return transport.writes

    def test_headWithBody(self) -> None:
        """
        A response with a Content-Length is written in one write, head and
        body.
        """
        [written] = self._answer(_Sized(length=True))
        self.assertTrue(written.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(written.endswith(b"\r\n\r\nhello"))

    def test_chunkedHeadWithFirstChunk(self) -> None:
        """
        A chunked response's head goes with its first chunk; the last chunk
        follows when the response finishes.
        """
        first, last = self._answer(_Sized(length=False))
        self.assertTrue(first.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(first.endswith(b"\r\n\r\n5\r\nhello\r\n"))
        self.assertEqual(last, b"0\r\n\r\n")
