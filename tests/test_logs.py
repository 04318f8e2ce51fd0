"""
Access log formats and request IDs through the installed C{twistd
lbproxy}, end to end: each C{--access-log-format}'s line for a real
request parses as log tools parse it (C{combined} with the usual pattern,
C{json} one object per line) even for a hostile User-Agent; the request ID
reaches the backend and comes back to the client, is made when absent,
replaced when an untrusted client brings one and kept from a
C{--trusted-proxy}; C{--request-id off} sends none.

Blocking clients run in threads, off the reactor.
"""

from __future__ import annotations

import json
import os
import re
import socket
from email.message import Message

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.servers import DataServer
from tests.support import REQUEST_TIMEOUT, Proxy, logProblems, startProxy, until

COMBINED = re.compile(
    r"^(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)
"""
The combined format as log tools read it (Logstash's COMBINEDAPACHELOG,
GoAccess's C{COMBINED}): quoted fields hold no quote; what follows the
User-Agent is not theirs.
"""

HOSTILE_AGENT = (
    b'Mozilla/5.0 "quoted" \\ \x0b\x0c\x1c\x1d\x1e \xc2\x85 \xe2\x80\xa8 \xe2\x80\xa9 '
    b"\xff\xfe bad \x1b[31m red \x7f"
)
"""
A User-Agent with quotes, a backslash, every byte or character some reader
splits lines at (VT, FF, FS, GS, RS, NEL, U+2028, U+2029), invalid UTF-8,
a terminal escape and DEL: all of them valid in a header value as HTTP
servers take it (only NUL, CR and LF are refused).
"""

_HEX32 = re.compile(r"[0-9a-f]{32}\Z")


class _Answer:
    """
    What a client got back.
    """

    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def requestId(self, name: str = "X-Request-ID") -> list[str]:
        """
        The values of header C{name} in the answer.
        """
        return self.headers.get_all(name) or []


def _get(proxy: Proxy, target: str, headers: tuple[tuple[str, bytes], ...] = ()) -> _Answer:
    connection = proxy.connection()
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return _Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


async def get(proxy: Proxy, target: str, *headers: tuple[str, bytes]) -> _Answer:
    """
    GET C{target} through C{proxy} on a new connection with C{headers}
    (values as bytes, sent as they are), in a thread.
    """
    return await deferToThread(_get, proxy, target, headers)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return received


class LogTests(TestCase):
    """
    The access log of a running lbproxy, in each format.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.log = os.path.join(self.directory, "access.log")
        self.backend = DataServer(self)

    async def start(self, *extra: str, tls: bool = False) -> Proxy:
        """
        Start lbproxy over L{backend}, logging to L{log}, with C{extra}
        options.
        """
        return await startProxy(
            self,
            self.directory,
            self.backend.authority,
            tls,
            extra=("--access-log", self.log, *extra),
        )

    async def lines(self, count: int) -> list[str]:
        """
        Wait until the access log has C{count} lines, and return them
        (newlines kept).
        """

        def read() -> list[str]:
            if not os.path.exists(self.log):
                return []
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8").splitlines(keepends=True)

        await until(lambda: len(read()) >= count, f"{count} access log lines")
        return read()

    def sentTo(self, name: str) -> str | None:
        """
        The X-Request-ID the backend got with the request C{id=name}.
        """
        return self.backend.exchange(name).headers.get("x-request-id")

    async def test_combined(self) -> None:
        """
        A combined line parses with the combined pattern: client, time,
        request line, status, bytes, Referer and User-Agent, and then the
        request ID the backend and the client got, in quotes.
        """
        proxy = await self.start("--access-log-format", "combined")
        answer = await get(
            proxy,
            "/bytes?n=5&id=c",
            ("User-Agent", b"test-agent/1.0"),
            ("Referer", b"https://example.com/from"),
        )
        self.assertEqual((answer.status, len(answer.body)), (200, 5))
        [line] = await self.lines(1)
        match = COMBINED.match(line)
        assert match is not None, line
        self.assertEqual(
            [match.group(n) for n in ("client", "ident", "user", "request", "status", "bytes")],
            ["127.0.0.1", "-", "-", "GET /bytes?n=5&id=c HTTP/1.1", "200", "5"],
        )
        self.assertRegex(match.group("time"), r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000$")
        self.assertEqual(
            (match.group("referer"), match.group("agent")),
            ("https://example.com/from", "test-agent/1.0"),
        )
        [requestId] = answer.requestId()
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(self.sentTo("c"), requestId)
        self.assertEqual(line[match.end() :], f' "{requestId}"\n')

    async def test_json(self) -> None:
        """
        Over TLS, each request is one JSON object on one line, a hostile
        User-Agent's included, with its TLS version, timings, backend and
        request ID; the hostile User-Agent reads back as sent (invalid UTF-8
        as C{\\xHH}).
        """
        proxy = await self.start("--access-log-format", "json", tls=True)
        plain = await get(proxy, "/bytes?n=5&id=plain", ("User-Agent", b"test-agent/1.0"))
        hostile = await get(proxy, "/bytes?n=7&id=hostile", ("User-Agent", HOSTILE_AGENT))
        self.assertEqual((plain.status, hostile.status), (200, 200))
        lines = await self.lines(2)
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertTrue(line.endswith("}\n") and line[:-1].isascii(), line)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(
            {key: first[key] for key in ("client", "method", "target", "protocol", "status")},
            {
                "client": "127.0.0.1",
                "method": "GET",
                "target": "/bytes?n=5&id=plain",
                "protocol": "HTTP/1.1",
                "status": 200,
            },
        )
        self.assertEqual(
            (first["bytes"], first["backend"], first["tried"], first["retries"]),
            (5, self.backend.authority, [self.backend.authority], 0),
        )
        self.assertEqual(
            (first["tls_version"], first["pool"], first["error"]), ("TLSv1.3", "default", None)
        )
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreaterEqual(first["duration"], first["upstream_time"])
        self.assertGreater(first["upstream_time"], 0)
        self.assertEqual(first["user_agent"], "test-agent/1.0")
        self.assertEqual(first["request_id"], plain.requestId()[0])
        self.assertEqual(self.sentTo("plain"), plain.requestId()[0])
        self.assertEqual(second["user_agent"], HOSTILE_AGENT.decode("utf-8", "backslashreplace"))
        self.assertEqual(second["request_id"], hostile.requestId()[0])
        self.assertIsNone(logProblems(proxy.process))

    async def test_rejected(self) -> None:
        """
        A request refused at the edge is logged too, in JSON with its
        status, reason and the ID it was answered with.
        """
        proxy = await self.start("--access-log-format", "json")
        answer = await deferToThread(_raw, proxy.port, b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        found = re.search(rb"\r\nX-Request-ID: ([0-9a-f]{32})\r\n", answer)
        assert found is not None, answer
        [line] = await self.lines(1)
        fields = json.loads(line)
        self.assertEqual(
            [fields[key] for key in ("status", "method", "target", "request_id", "backend")],
            [400, "GET", "/", found.group(1).decode(), None],
        )
        self.assertIn("Host", fields["error"])

    async def test_lbproxyFormat(self) -> None:
        """
        lbproxy's own line (the default) ends with the request ID.
        """
        proxy = await self.start()
        answer = await get(proxy, "/bytes?n=5&id=l")
        [line] = await self.lines(1)
        [requestId] = answer.requestId()
        self.assertRegex(
            line,
            rf'^127\.0\.0\.1 "GET /bytes\?n=5&id=l HTTP/1\.1" 200 5 backend=\S+ '
            rf"upstream=\d+\.\d+s rid={requestId}\n$",
        )


class RequestIdTests(TestCase):
    """
    Request IDs as the backend and the client see them.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.backend = DataServer(self)

    async def start(self, *extra: str) -> Proxy:
        """
        Start lbproxy over L{backend} with C{extra} options.
        """
        return await startProxy(
            self,
            self.directory,
            self.backend.authority,
            False,
            extra=("--access-log", "none", *extra),
        )

    def sentTo(self, name: str, header: str = "x-request-id") -> str | None:
        """
        The ID header the backend got with the request C{id=name}.
        """
        return self.backend.exchange(name).headers.get(header)

    async def test_untrusted(self) -> None:
        """
        Without a trusted proxy, a request without an ID gets a new one and
        one that brings its own gets a new one instead; the backend and the
        client get the same, each request its own.
        """
        proxy = await self.start()
        made = await get(proxy, "/bytes?n=1&id=absent")
        replaced = await get(proxy, "/bytes?n=1&id=offered", ("X-Request-ID", b"chosen-by-client"))
        ids = []
        for answer, name in ((made, "absent"), (replaced, "offered")):
            [requestId] = answer.requestId()
            self.assertRegex(requestId, _HEX32)
            self.assertEqual(self.sentTo(name), requestId)
            ids.append(requestId)
        self.assertNotEqual(ids[0], ids[1])

    async def test_trusted(self) -> None:
        """
        From a C{--trusted-proxy}, the request's own ID goes to the backend
        and back; without one it still gets a new one.
        """
        proxy = await self.start("--trusted-proxy", "127.0.0.1")
        kept = await get(proxy, "/bytes?n=1&id=kept", ("X-Request-ID", b"from-the-edge-proxy-42"))
        self.assertEqual(kept.requestId(), ["from-the-edge-proxy-42"])
        self.assertEqual(self.sentTo("kept"), "from-the-edge-proxy-42")
        made = await get(proxy, "/bytes?n=1&id=made")
        [requestId] = made.requestId()
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(self.sentTo("made"), requestId)

    async def test_otherHeader(self) -> None:
        """
        C{--request-id-header} names the header that carries the ID both
        ways; X-Request-ID is then left alone.
        """
        proxy = await self.start("--request-id-header", "X-Correlation-ID")
        answer = await get(proxy, "/bytes?n=1&id=other", ("X-Request-ID", b"left-alone"))
        [requestId] = answer.requestId("X-Correlation-ID")
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(self.sentTo("other", "x-correlation-id"), requestId)
        self.assertEqual(self.sentTo("other"), "left-alone")
        self.assertEqual(answer.requestId(), [])

    async def test_off(self) -> None:
        """
        With C{--request-id off}, no ID goes to the backend or comes back.
        """
        proxy = await self.start("--request-id", "off")
        answer = await get(proxy, "/bytes?n=1&id=off")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.requestId(), [])
        self.assertTrue(self.backend.exchange("off").arrived.is_set())
        self.assertIsNone(self.sentTo("off"))
