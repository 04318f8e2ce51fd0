"""
Tests for L{lbproxy.http.accesslog}.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lbproxy.http.accesslog import AccessLog
from lbproxy.proxy import ProxyRecord, setProxyRecord
from lbproxy.test.test_target import parsedRequest
from lbproxy.upstream.backends import Backend

_CLIENT = IPv4Address("TCP", "192.0.2.7", 50123)


def _answered(
    head: bytes = b"GET /p?q=1 HTTP/1.1\r\nHost: example.com",
    record: ProxyRecord | None = None,
    status: int = 200,
    body: bytes = b"hello",
    peer: IAddress = _CLIENT,
) -> Request:
    """
    A request parsed from C{head}, received from C{peer}, answered with
    C{status} and C{body}, carrying C{record} (L{setProxyRecord}).
    """
    request = parsedRequest(head, StringTransport(peerAddress=peer))
    if record is not None:
        setProxyRecord(request, record)
    request.setResponseCode(status)
    request.write(body)
    request.finish()
    return request


def _record() -> ProxyRecord:
    """
    The record of a request relayed to 127.0.0.2:8080 in 12.3 ms.
    """
    return ProxyRecord(backend=Backend("127.0.0.2", 8080), upstreamSeconds=0.0123)


_LINE = '192.0.2.7 "GET /p?q=1 HTTP/1.1" 200 5 backend=127.0.0.2:8080 upstream=0.012s\n'


class LineTests(SynchronousTestCase):
    """
    What a line says about a request.
    """

    def lines(self, request: Request) -> list[str]:
        """
        The lines an L{AccessLog} writes for C{request}.
        """
        written: list[str] = []
        AccessLog(written.append).logRequest(request)
        return written

    def test_relayed(self) -> None:
        """
        A relayed request gives one line with the client, method, path,
        protocol, status, body bytes, backend and upstream time.
        """
        self.assertEqual(self.lines(_answered(record=_record())), [_LINE])

    def test_cases(self) -> None:
        """
        Requests the proxy answered itself, cut short, from IPv6 or UNIX
        clients, or without a record show what is known and C{-} for the
        rest.
        """
        cases = [
            (
                _answered(record=ProxyRecord(error="no backend"), status=503, body=b""),
                '192.0.2.7 "GET /p?q=1 HTTP/1.1" 503 0 backend=- upstream=- error="no backend"\n',
            ),
            (
                _answered(
                    record=ProxyRecord(
                        backend=Backend("::1", 81), upstreamSeconds=2.0, truncated=True
                    ),
                    peer=IPv6Address("TCP", "2001:db8::7", 5),
                ),
                '2001:db8::7 "GET /p?q=1 HTTP/1.1" 200 5 backend=[::1]:81 upstream=2.000s'
                " truncated\n",
            ),
            (
                _answered(
                    b"POST /upload HTTP/1.0",
                    record=ProxyRecord(
                        backend=Backend("backend.example"), upstreamSeconds=30.0, error="timeout"
                    ),
                    status=504,
                    body=b"gateway timeout",
                    peer=UNIXAddress(b"/tmp/lbproxy.sock"),
                ),
                '- "POST /upload HTTP/1.0" 504 15 backend=backend.example:80 upstream=30.000s'
                ' error="timeout"\n',
            ),
            (
                _answered(),
                '192.0.2.7 "GET /p?q=1 HTTP/1.1" 200 5 backend=- upstream=-\n',
            ),
        ]
        for request, line in cases:
            self.assertEqual(self.lines(request), [line])

    def test_newlineAndQuote(self) -> None:
        """
        Newlines, quotes and bytes beyond ASCII in the path are escaped: the
        line stays one line and the request field one quoted field.
        """
        request = _answered(record=_record())
        request.uri = b'/a\nb"c\nd\xff'
        self.assertEqual(
            self.lines(request),
            [
                '192.0.2.7 "GET /a\\nb\\"c\\nd\\xff HTTP/1.1" 200 5'
                " backend=127.0.0.2:8080 upstream=0.012s\n"
            ],
        )

    def test_carriageReturn(self) -> None:
        """
        A carriage return in the path is escaped too, so no reader that
        ends lines at CR sees the line in two.
        """
        request = _answered(record=_record())
        request.uri = b"/a\rb"
        (line,) = self.lines(request)
        self.assertEqual(line.splitlines(), [line[:-1]])
        self.assertIn('"GET /a\\rb HTTP/1.1"', line)

    def test_rejected(self) -> None:
        """
        A request refused before it reached the proxy logs what was read of
        it, C{-} for the rest, and the reason.
        """
        written: list[str] = []
        log = AccessLog(written.append)
        log.logRejected(_CLIENT, b"PUT", b"/big", b"HTTP/1.1", 413, 42, "too large")
        log.logRejected(_CLIENT, None, None, None, 400, 0, "bad request")
        self.assertEqual(
            written,
            [
                '192.0.2.7 "PUT /big HTTP/1.1" 413 42 backend=- upstream=- error="too large"\n',
                '192.0.2.7 "- - -" 400 0 backend=- upstream=- error="bad request"\n',
            ],
        )


class DestinationTests(SynchronousTestCase):
    """
    Where L{AccessLog.fromOption} sends the lines.
    """

    def test_stdout(self) -> None:
        """
        C{-} writes each line to standard output.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = AccessLog.fromOption("-")
        log.logRequest(_answered(record=_record()))
        log.logRequest(_answered(record=_record()))
        log.close()
        self.assertEqual(stdout.getvalue(), _LINE * 2)

    def test_file(self) -> None:
        """
        A path names a file the lines are appended to, after what it
        already holds.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("earlier\n")
        for _ in range(2):
            log = AccessLog.fromOption(path)
            self.addCleanup(log.close)
            log.open()
            log.logRequest(_answered(record=_record()))
            log.close()
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "earlier\n" + _LINE * 2)

    def test_fileLineBuffered(self) -> None:
        """
        Each line is in the file as soon as it is logged.
        """
        path = self.mktemp()
        log = AccessLog.fromOption(path)
        self.addCleanup(log.close)
        log.open()
        log.logRequest(_answered(record=_record()))
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), _LINE)

    def test_openedOnlyByOpen(self) -> None:
        """
        L{AccessLog.fromOption} opens nothing: the file is created by
        L{AccessLog.open} (which the service calls when it starts), and
        lines logged before it are dropped. Closed, it can be opened again.
        """
        path = self.mktemp()
        log = AccessLog.fromOption(path)
        self.addCleanup(log.close)
        self.assertEqual(log.path, path)
        log.logRequest(_answered(record=_record()))
        self.assertFalse(os.path.exists(path))
        log.open()
        log.open()
        log.logRequest(_answered(record=_record()))
        log.close()
        log.logRequest(_answered(record=_record()))
        log.open()
        log.logRequest(_answered(record=_record()))
        log.close()
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), _LINE * 2)

    def test_unopenable(self) -> None:
        """
        A path that cannot be opened raises L{OSError} when it is opened.
        """
        missing = os.path.join(self.mktemp(), "no-such-directory", "access.log")
        self.assertRaises(OSError, AccessLog.fromOption(missing).open)
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertRaises(OSError, AccessLog.fromOption(directory).open)

    def test_none(self) -> None:
        """
        C{none} writes nothing anywhere, for answered or refused requests.
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = AccessLog.fromOption("none")
        with capturedLogs() as events:
            log.logRequest(_answered(record=_record()))
            log.logRejected(_CLIENT, b"GET", b"/", b"HTTP/1.1", 400, 0, "bad")
        log.close()
        self.assertEqual((list(events), stdout.getvalue()), ([], ""))
        self.assertFalse(os.path.exists("none"))

    def test_disabledWriter(self) -> None:
        """
        A disabled log never calls its writer.
        """
        written: list[str] = []
        AccessLog(written.append, enabled=False).logRequest(_answered(record=_record()))
        self.assertEqual(written, [])

    def test_logger(self) -> None:
        """
        Without a writer, each request is a twisted.logger event with its
        fields as keys, formatting to the line.
        """
        log = AccessLog.fromOption(None)
        with capturedLogs() as events:
            log.logRequest(_answered(record=_record()))
        (event,) = events
        fields = {
            "client": "192.0.2.7",
            "method": "GET",
            "path": "/p?q=1",
            "protocol": "HTTP/1.1",
            "status": 200,
            "bytes": 5,
            "backend": "127.0.0.2:8080",
            "upstream": "0.012s",
            "extra": "",
        }
        self.assertEqual({key: event.get(key) for key in fields}, fields)
        self.assertEqual(formatEvent(event) + "\n", _LINE)

    def test_loggerNamespace(self) -> None:
        """
        Access log events are in the C{lbproxy.access} namespace, so
        observers can pick them out.
        """
        with capturedLogs() as events:
            AccessLog(None).logRequest(_answered(record=_record()))
        self.assertEqual([event["log_namespace"] for event in events], ["lbproxy.access"])


_NOW = 1_700_000_000.25
"""
When the lines of L{FormatTests} are logged: 2023-11-14 22:13:20.250 UTC.
"""

_BROWSER = (
    b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11)\r\nReferer: https://example.com/a"
)

_HOSTILE_AGENT = b'evil" \\ \x01\x1b[31m\x7f\xff\xc3\xa9 \xe2\x80\xa8end'
"""
A User-Agent with a quote, a backslash, control characters, invalid UTF-8,
an e acute and U+2028 (a line separator to C{str.splitlines}): twisted.web
takes all of these in a header value.
"""

COMBINED = re.compile(
    r'^(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)
"""
The combined format as log tools read it (Logstash's COMBINEDAPACHELOG,
GoAccess's C{COMBINED}): quoted fields hold no quote, and what follows the
User-Agent is not theirs.
"""


class _TLSHandle:
    def __init__(self, version: str) -> None:
        self._version = version

    def get_protocol_version_name(self) -> str:
        return self._version


class _TLSTransport(StringTransport):
    """
    A transport whose handle is an OpenSSL connection that negotiated
    C{version}.
    """

    def __init__(self, version: str) -> None:
        super().__init__(peerAddress=_CLIENT)
        self._handle = _TLSHandle(version)

    def getHandle(self) -> _TLSHandle:
        return self._handle


def _withId(request: Request, requestId: bytes, receivedAt: float | None = None) -> Request:
    """
    C{request} as the edge leaves it: with its ID and, if given, the time
    it was handed over.
    """
    request.requestId = requestId  # type: ignore[attr-defined]
    if receivedAt is not None:
        request.receivedAt = receivedAt  # type: ignore[attr-defined]
    return request


def _fixed(now: float) -> Callable[[], float]:
    """
    A clock that always says C{now}.
    """
    return lambda: now


class FormatTests(SynchronousTestCase):
    """
    The C{combined} and C{json} formats, and the request ID in each.
    """

    def lines(self, format: str, *requests: Request) -> list[str]:
        """
        The lines an L{AccessLog} in C{format} writes for C{requests} at
        L{_NOW}.
        """
        written: list[str] = []
        log = AccessLog(written.append, format=format, clock=lambda: _NOW)
        for request in requests:
            log.logRequest(request)
        return written

    def test_lbproxyRequestId(self) -> None:
        """
        lbproxy's line ends with the request ID, escaped to one token.
        """
        relayed = _withId(_answered(record=_record()), b"0123abcd")
        fromProxy = _withId(
            _answered(record=ProxyRecord(error="no\nbackend"), status=503, body=b""),
            b'an id "with" spaces',
        )
        self.assertEqual(
            self.lines("lbproxy", relayed, fromProxy),
            [
                _LINE[:-1] + " rid=0123abcd\n",
                '192.0.2.7 "GET /p?q=1 HTTP/1.1" 503 0 backend=- upstream=-'
                ' error="no\\nbackend" rid=an\\x20id\\x20\\"with\\"\\x20spaces\n',
            ],
        )

    def test_combined(self) -> None:
        """
        A combined line has the client, C{- -}, the time in UTC, the
        request line, status, bytes, Referer and User-Agent, then the
        request ID in quotes; C{-} for what is empty (no body, no Referer,
        no User-Agent) and no ID field without an ID.
        """
        relayed = _withId(_answered(_BROWSER, record=_record()), b"0123abcd")
        bare = _answered(record=ProxyRecord(error="no backend"), status=503, body=b"")
        self.assertEqual(
            self.lines("combined", relayed, bare),
            [
                '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /p?q=1 HTTP/1.1" 200 5 '
                '"https://example.com/a" "Mozilla/5.0 (X11)" "0123abcd"\n',
                '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /p?q=1 HTTP/1.1" 503 - '
                '"-" "-"\n',
            ],
        )

    def test_combinedClient(self) -> None:
        """
        The client is the original one behind trusted proxies, as in
        lbproxy's format.
        """
        record = _record()
        record.client = "198.51.100.9"
        (line,) = self.lines("combined", _answered(record=record))
        self.assertTrue(line.startswith("198.51.100.9 - - ["), line)

    def test_combinedParses(self) -> None:
        """
        Every line parses with the combined format's usual pattern, even
        with a hostile User-Agent, Referer, ID or target: one line, each
        quoted field whole, nothing but printable ASCII.
        """
        hostile = _answered(
            b"GET /p HTTP/1.1\r\nUser-Agent: " + _HOSTILE_AGENT + b"\r\nReferer: a\"b",
            record=_record(),
        )
        hostile.uri = b'/a b"c\\d\n'
        _withId(hostile, b'x" y')
        (line,) = self.lines("combined", hostile)
        self.assertEqual(line.splitlines(), [line[:-1]])
        self.assertTrue(line[:-1].isascii() and line[:-1].isprintable(), line)
        match = COMBINED.match(line)
        assert match is not None, line
        self.assertEqual(
            match.group("agent"),
            "evil\\x22 \\x5C \\x01\\x1B[31m\\x7F\\xFF\\xC3\\xA9 \\xE2\\x80\\xA8end",
        )
        self.assertEqual(match.group("referer"), "a\\x22b")
        self.assertEqual(match.group("request"), "GET /a\\x20b\\x22c\\x5Cd\\x0A HTTP/1.1")
        self.assertTrue(line.endswith(' "x\\x22 y"\n'), line)

    def test_combinedRejected(self) -> None:
        """
        A refused request's combined line has what was read of its request
        line (C{-} when nothing was) and its ID.
        """
        written: list[str] = []
        log = AccessLog(written.append, format="combined", clock=lambda: _NOW)
        log.logRejected(_CLIENT, b"PUT", b"/big", b"HTTP/1.1", 413, 42, "too large", b"ab12")
        log.logRejected(_CLIENT, None, None, None, 400, 0, "bad request")
        self.assertEqual(
            written,
            [
                '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "PUT /big HTTP/1.1" 413 42 '
                '"-" "-" "ab12"\n',
                '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "-" 400 - "-" "-"\n',
            ],
        )
        for line in written:
            self.assertIsNotNone(COMBINED.match(line), line)

    def test_json(self) -> None:
        """
        A JSON line is one object with every field, numbers as numbers and
        C{null} for what is not known.
        """
        record = ProxyRecord(
            backend=Backend("127.0.0.3", 8080),
            upstreamSeconds=0.0123,
            tried=[Backend("127.0.0.2", 8080), Backend("127.0.0.3", 8080)],
            client="198.51.100.9",
            pool="web",
        )
        request = _withId(
            _answered(
                _BROWSER,
                record=record,
                peer=IPv4Address("TCP", "10.0.0.1", 5),
            ),
            b"0123abcd",
            receivedAt=_NOW - 0.0456,
        )
        request.transport = _TLSTransport("TLSv1.3")
        (line,) = self.lines("json", request)
        self.assertEqual(line.count("\n"), 1)
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(
            json.loads(line),
            {
                "time": "2023-11-14T22:13:20.250Z",
                "client": "198.51.100.9",
                "method": "GET",
                "target": "/p?q=1",
                "protocol": "HTTP/1.1",
                "status": 200,
                "bytes": 5,
                "duration": 0.0456,
                "upstream_time": 0.0123,
                "backend": "127.0.0.3:8080",
                "pool": "web",
                "retries": 1,
                "tried": ["127.0.0.2:8080", "127.0.0.3:8080"],
                "request_id": "0123abcd",
                "tls_version": "TLSv1.3",
                "user_agent": "Mozilla/5.0 (X11)",
                "referer": "https://example.com/a",
                "error": None,
                "truncated": False,
            },
        )

    def test_jsonUnknown(self) -> None:
        """
        A request the proxy answered itself, over plain TCP, without an ID
        or a time of arrival, has C{null} for each of those.
        """
        (line,) = self.lines(
            "json", _answered(record=ProxyRecord(error="no backend"), status=503, body=b"")
        )
        fields = json.loads(line)
        self.assertEqual(
            {key: fields[key] for key in fields if fields[key] in (None, [], 0, False)},
            {
                "bytes": 0,
                "duration": None,
                "upstream_time": None,
                "backend": None,
                "pool": None,
                "retries": 0,
                "tried": [],
                "request_id": None,
                "tls_version": None,
                "user_agent": None,
                "referer": None,
                "truncated": False,
            },
        )
        self.assertEqual(fields["error"], "no backend")

    def test_jsonTunnel(self) -> None:
        """
        An upgraded connection's line has the bytes each way and how long
        it was open.
        """
        record = _record()
        record.tunnelToBackend = 10
        record.tunnelToClient = 20
        record.tunnelSeconds = 3.5
        (line,) = self.lines("json", _answered(record=record, status=101, body=b""))
        fields = json.loads(line)
        self.assertEqual(
            (fields["tunnel_up"], fields["tunnel_down"], fields["tunnel_time"]), (10, 20, 3.5)
        )
        self.assertNotIn("tunnel_up", json.loads(self.lines("json", _answered())[0]))

    def test_jsonHostile(self) -> None:
        """
        Whatever a client sends, its JSON line is one line of ASCII that
        parses back to what was sent: valid UTF-8 as text, invalid bytes as
        C{\\xHH}.
        """
        request = _answered(b"GET /p HTTP/1.1\r\nUser-Agent: " + _HOSTILE_AGENT, record=_record())
        request.uri = b'/a"b\\c\n'
        (line,) = self.lines("json", _withId(request, b'x"\xff'))
        self.assertEqual(line.splitlines(), [line[:-1]])
        self.assertTrue(line[:-1].isascii() and line[:-1].isprintable(), line)
        fields = json.loads(line)
        self.assertEqual(fields["user_agent"], 'evil" \\ \x01\x1b[31m\x7f\\xff\xe9 \u2028end')
        self.assertEqual(fields["target"], '/a"b\\c\n')
        self.assertEqual(fields["request_id"], 'x"\\xff')

    def test_jsonRejected(self) -> None:
        """
        A refused request's JSON line has what was read of it, its ID and
        its reason.
        """
        written: list[str] = []
        log = AccessLog(written.append, format="json", clock=lambda: _NOW)
        log.logRejected(
            _CLIENT, None, None, None, 400, 0, "bad request", b"ab12", _TLSTransport("TLSv1.2")
        )
        fields = json.loads(written[0])
        self.assertEqual(
            [fields[key] for key in ("method", "target", "status", "request_id", "tls_version")],
            [None, None, 400, "ab12", "TLSv1.2"],
        )
        self.assertEqual(fields["error"], "bad request")

    def test_timeMilliseconds(self) -> None:
        """
        The JSON time has milliseconds, cut (not rounded) so that a line
        never claims the next second; the combined time is whole seconds.
        """
        for now, stamp in [
            (1_700_000_000.0, "2023-11-14T22:13:20.000Z"),
            (1_700_000_000.9999, "2023-11-14T22:13:20.999Z"),
            (1_700_000_061.5, "2023-11-14T22:14:21.500Z"),
        ]:
            written: list[str] = []
            log = AccessLog(written.append, format="json", clock=_fixed(now))
            log.logRequest(_answered())
            self.assertEqual(json.loads(written[0])["time"], stamp)

    def test_logger(self) -> None:
        """
        To twisted.logger, a JSON or combined event formats to its line; a
        JSON event also carries the object's keys.
        """
        for format in ("json", "combined"):
            log = AccessLog(None, format=format, clock=lambda: _NOW)
            with capturedLogs() as events:
                log.logRequest(_withId(_answered(record=_record()), b"ab12"))
            (event,) = events
            (line,) = self.lines(format, _withId(_answered(record=_record()), b"ab12"))
            self.assertEqual(formatEvent(event) + "\n", line)
            self.assertEqual(event["log_namespace"], "lbproxy.access")
            if format == "json":
                self.assertEqual((event["status"], event["request_id"]), (200, "ab12"))

    def test_formats(self) -> None:
        """
        L{AccessLog.fromOption} takes the format; an unknown one is a
        L{ValueError}.
        """
        self.assertEqual(AccessLog.fromOption("-", "json").format, "json")
        self.assertEqual(AccessLog.fromOption(None).format, "lbproxy")
        self.assertRaises(ValueError, AccessLog, None, format="common")
