"""
Tests for L{lbproxy.http.accesslog}.
"""

from __future__ import annotations

import io
import os
import sys

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
