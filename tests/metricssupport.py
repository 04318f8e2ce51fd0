"""
Helpers for the end-to-end tests of the Prometheus metrics
(L{tests.test_metrics}): a backend that answers with the status and the
body size the path asks for, clients that make one request (or one raw
exchange) per connection, connections held open, and a scrape parsed with
C{prometheus_client}'s own parser.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import cast

import attrs
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import REQUEST_TIMEOUT, STOP_DEADLINE, TrackingFactory

__all__ = [
    "UPLOAD_ANSWER",
    "Exposition",
    "Held",
    "StatusBackend",
    "bodyFor",
    "connectAndClose",
    "exchange",
    "exchangeFor",
    "exchangeStatus",
    "hold",
    "rawScrape",
    "request",
    "scrape",
    "scrapeUntil",
    "startStatusBackend",
    "statusOf",
]

UPLOAD_ANSWER = 777
"""
Bytes in a L{StatusBackend}'s answer to a C{POST}.
"""


def _time() -> IReactorTime:
    return cast(IReactorTime, _globalReactor)


def bodyFor(status: int) -> bytes:
    """
    The body a L{StatusBackend} answers a C{GET} for C{/status/STATUS}
    with: as many bytes as the status's number (200 bytes for a 200).
    """
    return b"b" * status


class _Statuses(Resource):
    """
    C{GET /status/NNN...} is answered with status NNN and L{bodyFor}C{(NNN)};
    C{GET /hold} is held until L{release}, then answered as C{/status/200};
    any other C{GET} as C{/status/200}; a C{POST} has its body read and
    counted, and is answered 200 with L{UPLOAD_ANSWER} bytes.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.uploads: list[int] = []
        self.held: list[tuple[Request, list[object]]] = []

    def release(self) -> None:
        held, self.held = self.held, []
        for request, lost in held:
            if not lost:
                request.write(bodyFor(200))
                request.finish()

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if request.path == b"/hold":
            lost: list[object] = []
            request.notifyFinish().addErrback(lost.append)
            self.held.append((request, lost))
            return NOT_DONE_YET
        if request.method == b"POST":
            assert request.content is not None
            self.uploads.append(len(request.content.read()))
            return b"u" * UPLOAD_ANSWER
        segments = request.path.split(b"/")
        status = 200
        if len(segments) > 2 and segments[1] == b"status" and segments[2].isdigit():
            status = int(segments[2])
        request.setResponseCode(status)
        return bodyFor(status)




@attrs.define
class StatusBackend:
    """
    An HTTP/1.1 (keep-alive) server in the test process answering as
    L{_Statuses} does.

    @ivar host: The address it listens on.
    @ivar port: Its port.
    """

    host: str
    port: int
    _resource: _Statuses
    _listening: IListeningPort
    _factory: TrackingFactory
    _stopped: bool = False

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} and the metrics' C{backend} label
        name it.
        """
        return f"{self.host}:{self.port}"

    @property
    def held(self) -> int:
        """
        How many C{GET /hold} requests it holds now.
        """
        return len(self._resource.held)

    def release(self) -> None:
        """
        Answer every held request as C{/status/200}.
        """
        self._resource.release()

    @property
    def uploads(self) -> list[int]:
        """
        The size of each request body it has received.
        """
        return self._resource.uploads

    async def stop(self) -> None:
        """
        Stop listening and abort every open connection (once; cleanup
        calls it again).
        """
        if self._stopped:
            return
        self._stopped = True
        self._resource.release()
        await self._listening.stopListening()  # type: ignore[misc]
        await self._factory.closeAll().addTimeout(STOP_DEADLINE, _time())


def startStatusBackend(testCase: TestCase, host: str = "127.0.0.1") -> StatusBackend:
    """
    Serve a L{StatusBackend} on C{host}, on a free port, until it is
    stopped or C{testCase}'s cleanup.
    """
    resource = _Statuses()
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    factory = TrackingFactory(site)
    tcp = cast(IReactorTCP, _globalReactor)
    # WrappingFactory is typed as a ClientFactory, but serves as well.
    port: IListeningPort = tcp.listenTCP(0, factory, interface=host)  # type: ignore[arg-type]
    backend = StatusBackend(host, port.getHost().port, resource, port, factory)  # type: ignore[attr-defined]
    testCase.addCleanup(backend.stop)
    return backend


# Clients: each request on a connection of its own, in a thread.


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    context: ssl.SSLContext | None,
    source: str | None,
    headers: Mapping[str, str],
) -> tuple[int, bytes]:
    address = None if source is None else (source, 0)
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=REQUEST_TIMEOUT, context=context, source_address=address
        )
    else:
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=REQUEST_TIMEOUT, source_address=address
        )
    try:
        connection.request(method, path, body, dict(headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    source: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Deferred[tuple[int, bytes]]:
    """
    Send one request to C{127.0.0.1:port} on a new connection (TLS with
    C{context} when given, from address C{source} when given, with
    C{headers} added) with Python's own HTTP client; fires with the status
    and the body.
    """
    return deferToThread(_request, port, method, path, body, context, source, headers or {})


def _exchange(
    port: int, data: bytes, context: ssl.SSLContext | None, deadline: float | None
) -> tuple[bytes, bool]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
    s = raw if context is None else context.wrap_socket(raw, server_hostname="localhost")
    with raw, s:
        s.sendall(data)
        received = b""
        end = None if deadline is None else time.monotonic() + deadline
        while True:
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return received, False
                s.settimeout(left)
            try:
                piece = s.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError):
                return received, True
            except TimeoutError:
                if end is None:
                    raise
                return received, False
            if not piece:
                return received, True
            received += piece


async def exchange(port: int, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """
    Send C{data} to C{127.0.0.1:port} on a new connection (TLS with
    C{context} when given) and read until the other side closes it (at
    most L{REQUEST_TIMEOUT} seconds of silence); return everything read.
    """
    received, _ = await deferToThread(_exchange, port, data, context, None)
    return received


def exchangeFor(
    port: int, data: bytes, deadline: float, context: ssl.SSLContext | None = None
) -> Deferred[tuple[bytes, bool]]:
    """
    Send C{data} to C{127.0.0.1:port} on a new connection (TLS with
    C{context} when given) and read for at most C{deadline} seconds;
    fires with everything read and whether the other side closed the
    connection by then.
    """
    return deferToThread(_exchange, port, data, context, deadline)


def _connectAndClose(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT).close()


def connectAndClose(port: int) -> Deferred[None]:
    """
    Connect to C{127.0.0.1:port} and close the connection at once, having
    sent nothing.
    """
    return deferToThread(_connectAndClose, port)


def statusOf(answer: bytes) -> int:
    """
    The status code of the raw HTTP response C{answer}.
    """
    line = answer.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) < 2 or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP response: {answer[:200]!r}")
    return int(parts[1])


async def exchangeStatus(port: int, data: bytes, context: ssl.SSLContext | None = None) -> int:
    """
    L{exchange} C{data}; the status code of the answer.
    """
    return statusOf(await exchange(port, data, context))


@attrs.define
class Held:
    """
    Client connections held open (L{hold}).
    """

    sockets: list[socket.socket]

    def close(self) -> None:
        """
        Close every one of them.
        """
        sockets, self.sockets = self.sockets, []
        for s in sockets:
            s.close()


def _hold(port: int, count: int, context: ssl.SSLContext | None) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
            if context is None:
                sockets.append(raw)
                continue
            try:
                sockets.append(context.wrap_socket(raw, server_hostname="localhost"))
            except BaseException:
                raw.close()
                raise
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


async def hold(
    testCase: TestCase, port: int, count: int, context: ssl.SSLContext | None = None
) -> Held:
    """
    Open C{count} connections to C{127.0.0.1:port} (each with its TLS
    handshake done, with C{context}) and keep them open, sending nothing,
    until closed or C{testCase}'s cleanup.
    """
    sockets = await deferToThread(_hold, port, count, context)
    held = Held(sockets)
    testCase.addCleanup(held.close)
    return held


# Scrapes.

Labels = Mapping[str, str]


@attrs.frozen
class Exposition:
    """
    One scrape, parsed by C{prometheus_client.parser}.

    @ivar text: The exposition as served.
    @ivar contentType: Its C{Content-Type}.
    @ivar types: Each metric family's type, by family name.
    @ivar samples: Each sample's value, by sample name and labels.
    """

    text: str
    contentType: str
    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str, contentType: str = "") -> Exposition:
        """
        Parse C{text} (Prometheus's text format).
        """
        types: dict[str, str] = {}
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(text, contentType, types, samples)

    def value(self, name: str, labels: Labels | None = None, default: float | None = None) -> float:
        """
        The value of sample C{name} with exactly C{labels}; C{default} if
        there is none (an error if no default is given).
        """
        key = (name, frozenset((labels or {}).items()))
        if key in self.samples:
            return self.samples[key]
        if default is not None:
            return default
        known = sorted(str(dict(labels)) for sample, labels in self.samples if sample == name)
        raise AssertionError(f"no sample {name}{dict(labels or {})}; there are {known}")

    def named(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """
        Every sample named C{name}, by its labels.
        """
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def labelValues(self) -> set[str]:
        """
        Every label value of every sample.
        """
        return {value for _, labels in self.samples for _, value in labels}


def _scrape(port: int, path: str, method: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def rawScrape(
    port: int, path: str = "/metrics", method: str = "GET"
) -> Deferred[tuple[int, str, bytes]]:
    """
    Send C{METHOD PATH} to C{127.0.0.1:port}; fires with the status, the
    C{Content-Type} and the body.
    """
    return deferToThread(_scrape, port, path, method)


async def scrape(port: int, path: str = "/metrics") -> Exposition:
    """
    Scrape C{127.0.0.1:port} at C{path}; fail unless the answer is a 200.
    """
    status, contentType, body = await rawScrape(port, path)
    if status != 200:
        raise AssertionError(f"GET {path}: {status} {body[:500]!r}")
    return Exposition.parse(body.decode("utf-8"), contentType)


async def scrapeUntil(
    port: int,
    predicate: Callable[[Exposition], bool],
    what: str,
    deadline: float = 20.0,
    path: str = "/metrics",
) -> Exposition:
    """
    Scrape C{127.0.0.1:port} every 10 ms until C{predicate} holds for the
    scrape, at most C{deadline} seconds and C{deadline * 100} scrapes;
    return that scrape, or fail naming C{what}.
    """
    end = time.monotonic() + deadline
    for _ in range(int(deadline * 100)):
        exposition = await scrape(port, path)
        if predicate(exposition):
            return exposition
        if time.monotonic() >= end:
            break
        await deferLater(_time(), 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")
