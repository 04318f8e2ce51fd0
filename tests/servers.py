"""
Real backend servers for the end-to-end data-path tests: each runs in
threads of the test process on a loopback socket, so that hashing and
sending hundreds of megabytes does not stall the reactor that drives the
tests.

L{DataServer} is an HTTP/1.1 server (the standard library's
C{http.server}) that hashes the request bodies it receives, sends
responses of any size with either framing while noticing when the proxy
stops reading them, and refuses uploads at once. L{WebSocketServer} is a
C{websockets} server running its own asyncio loop in a thread.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import json
import random
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

__all__ = [
    "PIECE",
    "DataServer",
    "Exchange",
    "Flood",
    "WebSocketServer",
    "pattern",
    "patternDigest",
    "writePattern",
]

PIECE = 64 * 1024
"""
Bytes in one piece of L{pattern}.
"""

STALL = 0.3
"""
Seconds a backend's send may wait for the socket to become writable before
the backend reports that it is held back (the proxy stopped reading).
"""

SOCKET_DEADLINE = 30.0
"""
Seconds a backend waits on any one socket operation before it gives up on
the connection, so that no backend thread outlives a test for long.
"""

_BASE = random.Random(20240610).randbytes(PIECE)


def pattern(length: int) -> Iterator[bytes]:
    """
    C{length} deterministic bytes, in pieces of at most L{PIECE}: piece
    number I{k} is a fixed random block whose first eight bytes are I{k},
    so that a lost, repeated or reordered piece changes the digest.
    """
    for index, start in enumerate(range(0, length, PIECE)):
        piece = struct.pack(">Q", index) + _BASE[8:]
        yield piece[: min(PIECE, length - start)]


@functools.cache
def patternDigest(length: int) -> str:
    """
    The hex SHA-256 of L{pattern}C{(length)}.
    """
    digest = hashlib.sha256()
    for piece in pattern(length):
        digest.update(piece)
    return digest.hexdigest()


def writePattern(path: str, length: int) -> str:
    """
    Write L{pattern}C{(length)} into the file C{path}; return its hex
    SHA-256.
    """
    with open(path, "wb") as f:
        for piece in pattern(length):
            f.write(piece)
    return patternDigest(length)


@attrs.define
class Exchange:
    """
    What a backend saw of one request, named by the C{id} query parameter
    of its target; written by a backend thread, read by the test.

    @ivar arrived: Set when the request head has arrived.
    @ivar received: Body bytes read so far.
    @ivar complete: Set when the whole body has been read.
    @ivar lost: Set when the connection ended before the body did.
    @ivar sent: Response body bytes handed to the kernel so far.
    @ivar stalled: Set when a send waited L{STALL} seconds for the socket
        to become writable: the reader of the response is holding it back.
    @ivar done: Set when the whole response has been sent.
    @ivar headers: The request's header fields, lower-case names.
    """

    arrived: threading.Event = attrs.Factory(threading.Event)
    received: int = 0
    complete: threading.Event = attrs.Factory(threading.Event)
    lost: threading.Event = attrs.Factory(threading.Event)
    sent: int = 0
    stalled: threading.Event = attrs.Factory(threading.Event)
    done: threading.Event = attrs.Factory(threading.Event)
    headers: dict[str, str] = attrs.Factory(dict)


class _ConnectionLost(Exception):
    """
    The peer closed the connection in the middle of a request body.
    """


class _Handler(http.server.BaseHTTPRequestHandler):
    """
    The routes of L{DataServer}:

      - C{POST /hash?id=X}: read the body (Content-Length or chunked),
        answer C{{"length": N, "sha256": HEX}} as JSON;
      - C{GET /bytes?n=N&framing=length|chunked&id=X}: answer
        L{pattern}C{(N)} with that framing;
      - C{POST /reject}: answer 413 at once, without a C{100 Continue}
        and without reading the body, then close the connection;
      - C{GET /plain}: answer 200 with a short text, whatever the request
        asked for (an C{Upgrade} too).
    """

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_DEADLINE
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            # The proxy gave up on this connection; the test says so.
            pass

    def handle_expect_100(self) -> bool:
        if self.path.startswith("/reject"):
            return True
        return super().handle_expect_100()

    def _exchange(self) -> Exchange:
        query = parse_qs(urlsplit(self.path).query)
        exchange = self.server.exchange(query.get("id", [""])[0])
        exchange.headers = {k.lower(): v for k, v in self.headers.items()}
        exchange.arrived.set()
        return exchange

    def _query(self, name: str, default: str) -> str:
        return parse_qs(urlsplit(self.path).query).get(name, [default])[0]

    def _answer(self, code: int, body: bytes, close: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path.startswith("/reject"):
            self._reject()
            return
        exchange = self._exchange()
        digest = hashlib.sha256()
        length = 0
        try:
            for piece in self._body():
                digest.update(piece)
                length += len(piece)
                exchange.received += len(piece)
        except (_ConnectionLost, OSError):
            exchange.lost.set()
            self.close_connection = True
            return
        exchange.complete.set()
        answer = {"length": length, "sha256": digest.hexdigest()}
        self._answer(200, json.dumps(answer).encode("ascii"))

    do_PUT = do_POST

    def do_GET(self) -> None:
        if self.path.startswith("/bytes"):
            self._sendBytes()
        else:
            self._answer(200, b'{"answer": "a normal response"}')

    def _body(self) -> Iterator[bytes]:
        """
        The request body in pieces, as it arrives.

        @raise _ConnectionLost: If the connection ends first.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise _ConnectionLost()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                yield from self._exactly(size)
                if self.rfile.readline(16) not in (b"\r\n", b"\n"):
                    raise _ConnectionLost()
            while True:
                trailer = self.rfile.readline(8192)
                if not trailer.endswith(b"\n"):
                    raise _ConnectionLost()
                if trailer in (b"\r\n", b"\n"):
                    return
        yield from self._exactly(int(self.headers.get("Content-Length") or 0))

    def _exactly(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            piece = self.rfile.read1(min(left, PIECE))
            if not piece:
                raise _ConnectionLost()
            left -= len(piece)
            yield piece

    def _reject(self) -> None:
        """
        413 at once; then, as servers do, stop sending and read (and drop)
        what the client still sends for a bounded time before closing, so
        that the close does not reset the connection under the answer.
        """
        self._exchange()
        self._answer(413, b'{"error": "too large"}', close=True)
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(5.0)
            while self.connection.recv(PIECE):
                pass
        except OSError:
            pass

    def _sendBytes(self) -> None:
        exchange = self._exchange()
        length = int(self._query("n", "0"))
        chunked = self._query("framing", "length") == "chunked"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        pieces: Iterator[bytes] = pattern(length)
        if chunked:
            pieces = _chunked(pieces)
        try:
            _sendAll(self.connection, pieces, exchange)
        except OSError:
            exchange.lost.set()
            self.close_connection = True
            return
        exchange.done.set()


def _chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def _sendAll(connection: socket.socket, pieces: Iterator[bytes], exchange: Exchange) -> None:
    """
    Send every piece without blocking; when the socket stays full for
    L{STALL} seconds, set C{exchange.stalled} and keep waiting (at most
    L{SOCKET_DEADLINE} seconds) for room.
    """
    poller = select.poll()
    poller.register(connection, select.POLLOUT)
    connection.setblocking(False)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                try:
                    count = connection.send(view)
                except BlockingIOError:
                    count = 0
                if count:
                    exchange.sent += count
                    view = view[count:]
                    continue
                if not poller.poll(STALL * 1000):
                    exchange.stalled.set()
                    if not poller.poll(SOCKET_DEADLINE * 1000):
                        raise TimeoutError("the reader never made room")
    finally:
        connection.settimeout(SOCKET_DEADLINE)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Many connections at once (HTTP/2 streams each take one to the
    # backend): socketserver's backlog of 5 would drop their SYNs.
    request_queue_size = 256

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self._lock = threading.Lock()
        self._exchanges: dict[str, Exchange] = {}
        self._connections: set[socket.socket] = set()

    def exchange(self, name: str) -> Exchange:
        with self._lock:
            return self._exchanges.setdefault(name, Exchange())

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def closeAll(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DataServer:
    """
    A threaded HTTP/1.1 backend on a loopback address (see L{_Handler} for
    its routes), stopped by the test case's cleanup.

    @ivar host: The address it listens on.
    @ivar port: Its port.
    """

    def __init__(self, testCase: TestCase, host: str = "127.0.0.2") -> None:
        self._server = _Server(host)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        testCase.addCleanup(self._stop)

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} takes it.
        """
        return f"{self.host}:{self.port}"

    def exchange(self, name: str) -> Exchange:
        """
        What the server saw (or will see) of the request with C{id=name}.
        """
        return self._server.exchange(name)

    def _stop(self) -> Deferred[None]:
        def stop() -> None:
            self._server.shutdown()
            self._server.server_close()
            self._server.closeAll()
            self._thread.join(SOCKET_DEADLINE)

        return deferToThread(stop)


@attrs.define
class Flood:
    """
    How far a L{WebSocketServer} got sending a flood of messages.

    @ivar sent: Bytes of message payload sent so far.
    @ivar stalled: Set when a send has waited L{STALL} seconds for the
        connection to drain: the connection is held back.
    @ivar done: Set when the whole flood has been sent.
    """

    sent: int = 0
    stalled: threading.Event = attrs.Factory(threading.Event)
    done: threading.Event = attrs.Factory(threading.Event)


Handler = Callable[[Any], Awaitable[None]]


class WebSocketServer:
    """
    A C{websockets} server on a loopback address, run by its own asyncio
    loop in a thread, stopped by the test case's cleanup. Its routes, by
    request path:

      - C{/echo}: send back every message as it came;
      - C{/close}: after the first message, close with code 4000, reason
        C{"server says bye"};
      - C{/die}: echo messages; on the text message C{"die"}, drop the TCP
        connection without a closing handshake;
      - C{/flood?n=N}: send N bytes in 1 MiB binary messages, recording
        progress in L{flood}, and never read.

    @ivar closes: For each path, the close code and reason the server got
        from the client, once the connection has closed.
    @ivar flood: Progress of the last C{/flood}.
    """

    def __init__(self, testCase: TestCase, host: str = "127.0.0.2") -> None:
        self.host = host
        self.closes: dict[str, tuple[int | None, str | None]] = {}
        self.flood = Flood()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(SOCKET_DEADLINE) or not self.port:
            raise RuntimeError("the WebSocket server did not start")
        testCase.addCleanup(self._stop)

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} takes it.
        """
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stopping = asyncio.Event()
        try:
            async with serve(
                self._route,
                self.host,
                0,
                compression=None,
                max_size=4 * 1024 * 1024,
                ping_interval=None,
                close_timeout=5,
            ) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self._started.set()
                await self._stopping.wait()
                for connection in list(server.connections):
                    connection.transport.abort()
        finally:
            self._started.set()

    async def _route(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        path = urlsplit(connection.request.path).path
        try:
            if path == "/echo":
                async for message in connection:
                    await connection.send(message)
            elif path == "/close":
                await connection.recv()
                await connection.close(4000, "server says bye")
            elif path == "/die":
                async for message in connection:
                    if message == "die":
                        connection.transport.abort()
                        return
                    await connection.send(message)
            elif path == "/flood":
                await self._flood(connection)
        except ConnectionClosed:
            pass
        finally:
            await connection.wait_closed()
            self.closes[path] = (connection.close_code, connection.close_reason)

    async def _flood(self, connection: Any) -> None:
        query = parse_qs(urlsplit(connection.request.path).query)
        total = int(query["n"][0])
        flood = self.flood = Flood()
        message = random.Random(7).randbytes(1024 * 1024)

        while flood.sent < total:
            # A send that is still waiting for the transport to drain after
            # STALL seconds is held back by the reader.
            sending = asyncio.ensure_future(connection.send(message))
            done, _ = await asyncio.wait({sending}, timeout=STALL)
            if not done:
                flood.stalled.set()
            await sending
            flood.sent += len(message)
        flood.done.set()

    def _stop(self) -> Deferred[None]:
        def stop() -> None:
            stopping = self._stopping
            if stopping is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(stopping.set)
            self._thread.join(SOCKET_DEADLINE)

        return deferToThread(stop)


# A scripted raw-socket backend (test_failures).


@attrs.frozen
class Script:
    """
    What a L{ScriptedBackend} does on a connection once it has read the
    request head.

    @ivar answer: Bytes to send (may be empty).
    @ivar then: What follows: C{"close"} (a FIN), C{"reset"} (C{SO_LINGER}
        on with a zero timeout, then close: a TCP reset), C{"stall"}
        (send nothing more and keep the connection open until the peer
        closes it or the test ends), or C{"close-on-next"} (keep the
        connection as if for another request, then close it, unanswered,
        once the next request head arrives: a kept-alive connection the
        backend closes just as it is reused).
    """

    answer: bytes
    then: str = "close"


class ScriptedBackend:
    """
    A raw-socket backend on a loopback address, stopped by the test case's
    cleanup: each connection it accepts is served in a thread of its own,
    which reads the request head and follows the L{Script} for the
    request's path (the request-target up to C{?}), or the one for C{"*"};
    without either it closes the connection.

    @ivar host: The address it listens on.
    @ivar port: Its port.
    @ivar heads: Every request head read, in order.
    @ivar peerClosed: The paths of requests whose connection the peer
        (the proxy) closed or reset while this side stalled or sent.
    @ivar sendFailed: The paths of requests whose answer could not be
        sent whole.
    """

    def __init__(
        self, testCase: TestCase, scripts: dict[str, Script], host: str = "127.0.0.2"
    ) -> None:
        self.host = host
        self.heads: list[bytes] = []
        self.peerClosed: list[str] = []
        self.sendFailed: list[str] = []
        self._scripts = scripts
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        testCase.addCleanup(self._stop)

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} takes it.
        """
        return f"{self.host}:{self.port}"

    def headFor(self, path: str) -> bytes | None:
        """
        The first request head received for C{path}, or L{None}.
        """
        with self._lock:
            for head in self.heads:
                if requestPath(head) == path:
                    return head
        return None

    def _accept(self) -> None:
        for _ in range(int(SOCKET_DEADLINE * 4 / 0.05)):
            if self._stopping.is_set():
                return
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(SOCKET_DEADLINE)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                piece = connection.recv(PIECE)
                if not piece:
                    connection.close()
                    return
                head += piece
        except OSError:
            connection.close()
            return
        head = head.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        with self._lock:
            self.heads.append(head)
        path = requestPath(head)
        script = self._scripts.get(path, self._scripts.get("*"))
        if script is None:
            connection.close()
            return
        try:
            connection.sendall(script.answer)
        except OSError:
            with self._lock:
                self.sendFailed.append(path)
                self.peerClosed.append(path)
            connection.close()
            return
        if script.then == "reset":
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
        elif script.then == "stall":
            self._stall(connection, path)
        elif script.then == "close-on-next":
            self._closeOnNext(connection)
        else:
            connection.close()

    def _closeOnNext(self, connection: socket.socket) -> None:
        """
        Read the next request head on C{connection} (kept in L{heads}),
        then close it without an answer.
        """
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                piece = connection.recv(PIECE)
                if not piece:
                    break
                head += piece
        except OSError:
            pass
        if b"\r\n\r\n" in head:
            with self._lock:
                self.heads.append(head.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
        connection.close()

    def _stall(self, connection: socket.socket, path: str) -> None:
        """
        Send nothing more; note when the peer closes or resets, draining
        whatever it still sends; give up when the test ends.
        """
        connection.settimeout(0.05)
        for _ in range(int(SOCKET_DEADLINE * 2 / 0.05)):
            if self._stopping.is_set():
                return
            try:
                if connection.recv(PIECE):
                    continue
            except TimeoutError:
                continue
            except OSError:
                pass
            with self._lock:
                self.peerClosed.append(path)
            connection.close()
            return

    def _stop(self) -> Deferred[None]:
        def stop() -> None:
            self._stopping.set()
            self._thread.join(SOCKET_DEADLINE)
            self._listener.close()
            with self._lock:
                connections = list(self._connections)
            for connection in connections:
                try:
                    connection.close()
                except OSError:
                    pass

        return deferToThread(stop)


def requestPath(head: bytes) -> str:
    """
    The path of the request-target in a request head (up to C{?}).
    """
    line = head.split(b"\r\n", 1)[0].split(b" ")
    target = line[1].decode("latin-1") if len(line) > 1 else ""
    return target.split("?", 1)[0]


__all__ += ["Script", "ScriptedBackend"]
