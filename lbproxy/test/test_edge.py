"""
Tests for L{lbproxy.edge}: strict parsing at the edge, as a table of raw
requests sent over real sockets to a proxy in front of a recording backend,
plus the header timeout, the connection limit and backend framing errors.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.edge import EdgeLimits
from lbproxy.httpcheck import checkFraming, checkHost, checkRequestLine, validHost
from lbproxy.test.fakes import (
    answer,
    get,
    rawConnect,
    reactor,
    startBackend,
    startProxy,
    startScripted,
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
        yield _until(lambda: any(c._headerTimer for c in proxy.site.channels))
        for piece in (b"TP/1.1\r\n", b"Host: a\r\n", b"X-Slow: 1\r\n"):
            client.transport.write(piece)
            clock.advance(3)
        yield _turn()
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


def _turn() -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.001, lambda: None)


@inlineCallbacks
def _until(predicate: Any) -> Gen:
    """
    Wait (a bounded number of reactor turns) until C{predicate()} holds.
    """
    for _ in range(2000):
        if predicate():
            return
        yield _turn()
    raise AssertionError("condition never held")
