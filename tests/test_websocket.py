"""
WebSocket tunnels through the installed C{twistd lbproxy}, end to end,
plain and TLS: the C{websockets} client against a C{websockets} server
(L{tests.servers.WebSocketServer}, its own asyncio loop in a thread) as the
backend. Messages are echoed intact, closes go through in both directions,
a dead backend closes the client's connection, a client that stops
reading holds the backend back without the proxy's memory growing, and an
Upgrade answered with a plain 200 is relayed as a plain response.

Blocking clients run in threads, off the reactor.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.servers import DataServer, WebSocketServer
from tests.support import Proxy, logProblems, residentBytes, startProxy, until

MESSAGES = 10_000
"""
Messages echoed per connection.
"""

WINDOW = 32
"""
Messages sent before their echoes are read, in the echo test.
"""

TIMEOUT = 10.0
"""
Seconds a client waits for the handshake, a message or a close.
"""

FLOOD = 200 * 1024 * 1024
"""
Bytes the backend tries to send to a client that reads none of them.
"""

MAX_GROWTH = 64 * 1024 * 1024
"""
How much the proxy's resident memory may grow while it holds a flood back.
"""

_BLOCK = random.Random(99).randbytes(1024 * 1024 + 8)


def _sizes() -> list[int]:
    """
    L{MESSAGES} message sizes from 1 B to 1 MiB: every WebSocket length
    encoding and its edges (125, 126, 65535, 65536), mostly small, ten
    messages of 1 MiB, about 16 MiB in all.
    """
    small = [1, 2, 7, 64, 125, 126, 127, 200, 1000, 4096]
    sizes = []
    for i in range(MESSAGES):
        if i % 1000 == 999:
            sizes.append(1024 * 1024)
        elif i % 100 == 50:
            sizes.append((65535, 65536, 65537)[i // 100 % 3])
        else:
            sizes.append(small[i % len(small)])
    return sizes


def _message(index: int, size: int) -> str | bytes:
    """
    Message number C{index}, of C{size} bytes: text for every third small
    one, binary otherwise; its content depends on C{index}.
    """
    data = struct.pack(">Q", index) + _BLOCK[8 + index % 1024 :]
    data = data[:size]
    if index % 3 == 0 and size <= 4096:
        return data.hex()[:size]
    return data


def _url(proxy: Proxy, path: str) -> str:
    return f"{'wss' if proxy.tls else 'ws'}://127.0.0.1:{proxy.port}{path}"


def _connect(proxy: Proxy, path: str) -> ClientConnection:
    return connect(
        _url(proxy, path),
        ssl=proxy.context(),
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=4 * 1024 * 1024,
        compression=None,
        ping_interval=None,
    )


def _echo(proxy: Proxy) -> str | None:
    """
    Send L{MESSAGES} messages, L{WINDOW} at a time ahead of their echoes;
    return what went wrong first, or L{None}.
    """
    sizes = _sizes()
    with _connect(proxy, "/echo") as ws:
        for start in range(0, len(sizes), WINDOW):
            batch = [_message(i, sizes[i]) for i in range(start, min(start + WINDOW, len(sizes)))]
            for message in batch:
                ws.send(message)
            for offset, message in enumerate(batch):
                echoed = ws.recv(timeout=TIMEOUT)
                if echoed != message:
                    return (
                        f"message {start + offset} ({len(message)} bytes, "
                        f"{type(message).__name__}) came back as {len(echoed)} "
                        f"bytes of {type(echoed).__name__}, not the same"
                    )
        ws.close()
    return None


def _clientCloses(proxy: Proxy) -> int | None:
    """
    Exchange a message, then close with 1000 C{"client done"}; return the
    close code the server sent back.
    """
    with _connect(proxy, "/echo") as ws:
        ws.send("hello")
        if ws.recv(timeout=TIMEOUT) != "hello":
            raise AssertionError("no echo before the close")
        ws.close(1000, "client done")
        return ws.close_code


def _serverCloses(proxy: Proxy) -> tuple[int, str]:
    """
    Send a message to C{/close}; return the code and reason of the close
    frame the server then sends.
    """
    with _connect(proxy, "/close") as ws:
        ws.send("please close")
        try:
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as e:
            if e.rcvd is None:
                raise AssertionError("closed without a close frame from the server") from e
            return e.rcvd.code, e.rcvd.reason
        raise AssertionError("the server's close did not arrive")


def _backendDies(proxy: Proxy) -> str:
    """
    Exchange a message with C{/die}, then make the backend drop its
    connection; return how the client saw its connection end.
    """
    with _connect(proxy, "/die") as ws:
        ws.send("before")
        if ws.recv(timeout=TIMEOUT) != "before":
            raise AssertionError("no echo before the backend died")
        ws.send("die")
        try:
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as e:
            return type(e).__name__
        except TimeoutError:
            raise AssertionError(
                f"the client's connection stayed open {TIMEOUT} s after the backend's died"
            ) from None
        raise AssertionError("a message arrived after the backend died")


def _rawConnection(proxy: Proxy) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    context = proxy.context()
    if context is None:
        return raw
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _openUnread(proxy: Proxy, target: str) -> socket.socket:
    """
    Open a WebSocket to C{target} by hand and read only the handshake's
    answer, never a message; return the connection.
    """
    connection = _rawConnection(proxy)
    connection.sendall(
        (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
    )
    head = b""
    while b"\r\n\r\n" not in head:
        piece = connection.recv(1)
        if not piece:
            connection.close()
            raise AssertionError(f"the connection closed during the handshake: {head!r}")
        head += piece
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        connection.close()
        raise AssertionError(f"handshake answered {status!r}")
    return connection


def _upgradeRefused(proxy: Proxy) -> list[str]:
    """
    Ask C{/plain} for an Upgrade with C{http.client}, then make a plain
    request; and try a C{websockets} handshake there. Return what went
    wrong.
    """
    problems = []
    connection = proxy.connection(TIMEOUT)
    try:
        connection.request(
            "GET",
            "/plain",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        response = connection.getresponse()
        body = response.read()
        if (response.status, body) != (200, b'{"answer": "a normal response"}'):
            problems.append(f"the Upgrade request got {response.status} {body[:200]!r}")
        connection.request("GET", "/plain")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            problems.append(f"the next request got {response.status} {body[:200]!r}")
    finally:
        connection.close()
    try:
        _connect(proxy, "/plain").close()
        problems.append("the websockets client opened a WebSocket")
    except InvalidStatus as e:
        if e.response.status_code != 200:
            problems.append(f"the websockets client got {e.response.status_code}, not 200")
    return problems


class WebSocketTests(TestCase):
    """
    WebSocket tunnels through C{twistd lbproxy}.
    """

    timeout = 90

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def _proxy(self, tls: bool) -> tuple[Proxy, WebSocketServer]:
        server = WebSocketServer(self)
        proxy = await startProxy(self, self.directory, server.authority, tls)
        return proxy, server

    def assertCleanLog(self, proxy: Proxy) -> None:
        """
        Fail if the proxy logged an unhandled error.
        """
        self.assertIsNone(logProblems(proxy.process), "twistd logged an error")

    def _log(self, proxy: Proxy) -> str:
        return "\n--- twistd log (end) ---\n" + "\n".join(proxy.process.out.splitlines()[-10:])

    async def _echoes(self, tls: bool) -> None:
        proxy, _ = await self._proxy(tls)
        try:
            problem = await deferToThread(_echo, proxy)
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        self.assertIsNone(problem, self._log(proxy))
        self.assertCleanLog(proxy)

    async def test_echoPlain(self) -> None:
        """
        Over plain HTTP, 10 000 text and binary messages of 1 B to 1 MiB
        come back from an echoing backend intact and in order.
        """
        await self._echoes(tls=False)

    async def test_echoTLS(self) -> None:
        """
        Over TLS, 10 000 text and binary messages of 1 B to 1 MiB come back
        from an echoing backend intact and in order.
        """
        await self._echoes(tls=True)

    async def _closes(self, tls: bool) -> None:
        proxy, server = await self._proxy(tls)
        log = self._log
        try:
            code = await deferToThread(_clientCloses, proxy)
        except Exception as e:
            self.fail(f"client close: {type(e).__name__}: {e}{log(proxy)}")
        self.assertEqual(code, 1000, "the server's answer to the client's close" + log(proxy))
        await until(lambda: "/echo" in server.closes, "the server to see the close")
        self.assertEqual(server.closes["/echo"], (1000, "client done"), log(proxy))
        try:
            closed = await deferToThread(_serverCloses, proxy)
        except Exception as e:
            self.fail(f"server close: {type(e).__name__}: {e}{log(proxy)}")
        self.assertEqual(closed, (4000, "server says bye"), log(proxy))
        await until(lambda: "/close" in server.closes, "the server to see the answer to its close")
        self.assertEqual(
            server.closes["/close"][0], 4000, "the client's answer to the server's close"
        )
        self.assertCleanLog(proxy)

    async def test_closesPlain(self) -> None:
        """
        Over plain HTTP, a close the client starts reaches the server with
        its code and reason and the server's answer reaches the client; a
        close the server starts reaches the client likewise and the
        client's answer reaches the server.
        """
        await self._closes(tls=False)

    async def test_closesTLS(self) -> None:
        """
        Over TLS, closes started by either side go through with their code
        and reason, and each is answered.
        """
        await self._closes(tls=True)

    async def _backendDies(self, tls: bool) -> None:
        proxy, _ = await self._proxy(tls)
        try:
            how = await deferToThread(_backendDies, proxy)
        except Exception as e:
            self.fail(f"{type(e).__name__}: {e}{self._log(proxy)}")
        self.assertIn(how, {"ConnectionClosedError", "ConnectionClosedOK"})
        self.assertCleanLog(proxy)

    async def test_backendDiesPlain(self) -> None:
        """
        Over plain HTTP, when the backend drops its connection in the
        middle of a tunnel, the client's connection closes too.
        """
        await self._backendDies(tls=False)

    async def test_backendDiesTLS(self) -> None:
        """
        Over TLS, when the backend drops its connection in the middle of a
        tunnel, the client's connection closes too.
        """
        await self._backendDies(tls=True)

    async def _clientStopsReading(self, tls: bool) -> None:
        proxy, server = await self._proxy(tls)
        before = residentBytes(proxy.process.pid)
        connection: Any = await deferToThread(_openUnread, proxy, f"/flood?n={FLOOD}")
        self.addCleanup(connection.close)
        await until(
            lambda: server.flood.stalled.is_set() or server.flood.done.is_set(),
            "the backend to be held back or to send everything",
            deadline=60.0,
        )
        flood = server.flood
        grown = residentBytes(proxy.process.pid) - before
        self.assertFalse(
            flood.done.is_set(),
            f"the backend sent all {FLOOD} bytes to a client that read none: "
            f"the proxy did not hold it back (its memory grew {grown >> 20} MiB)",
        )
        self.assertLess(
            grown,
            MAX_GROWTH,
            f"the proxy's memory grew {grown >> 20} MiB while the backend was held back "
            f"after {flood.sent >> 20} MiB",
        )
        self.assertLess(flood.sent, FLOOD // 2)
        self.assertCleanLog(proxy)

    async def test_clientStopsReadingPlain(self) -> None:
        """
        Over plain HTTP, a client that reads nothing while the backend
        tries to send it 200 MiB holds the backend back, and the proxy's
        resident memory grows by less than 64 MiB meanwhile.
        """
        await self._clientStopsReading(tls=False)

    async def test_clientStopsReadingTLS(self) -> None:
        """
        Over TLS, a client that reads nothing while the backend tries to
        send it 200 MiB holds the backend back, and the proxy's resident
        memory grows by less than 64 MiB meanwhile.
        """
        await self._clientStopsReading(tls=True)

    async def test_upgradeAnsweredWith200(self) -> None:
        """
        A backend that answers an Upgrade request with a plain 200 has that
        response relayed as a plain response (and the next request on the
        connection answered), over plain HTTP and TLS; the websockets
        client sees a 200, not a WebSocket.
        """
        backend = DataServer(self)
        problems = []
        for tls in (False, True):
            proxy = await startProxy(self, self.directory, backend.authority, tls)
            found = await deferToThread(_upgradeRefused, proxy)
            problems += [f"{proxy.url}: {problem}" for problem in found]
            logged = logProblems(proxy.process)
            if logged is not None:
                problems.append(f"{proxy.url}: twistd logged an error:\n{logged}")
        self.assertEqual(problems, [])
