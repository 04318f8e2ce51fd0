"""
The installed C{twistd lbproxy --http2 on} against misbehaving HTTP/2
clients on real sockets: rapid reset, a CONTINUATION flood, an HPACK
bomb, PING and SETTINGS floods from a client that reads nothing, a window
that never opens, a body that never comes, malformed header blocks. Each
gets a clear answer (a reset stream, or GOAWAY and a closed connection),
costs bounded work and memory, logs no traceback, and a well-behaved
client on another connection is served all along.

The misbehaving client (L{RawH2}) is the C{h2} library over a blocking
socket, run in a thread; with its checks off it sends what no real client
would.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.servers import DataServer
from tests.support import Proxy, logProblems, residentBytes, startProxy, until

MiB = 1024 * 1024

READ_DEADLINE = 30.0
"""
Seconds a raw client waits for what it expects before the test fails.
"""


class RawH2:
    """
    A blocking HTTP/2 client on one connection (TLS with ALPN h2, or
    prior-knowledge h2c), for threads: it sends what it is told, checked
    by C{h2} or not, and keeps every event the server's frames make.

    @ivar events: The events so far, in order.
    @ivar closed: Whether the server closed the connection.
    @ivar alpn: The protocol ALPN chose (TLS).
    @ivar certificate: The server's DER certificate (TLS).
    """

    closed = False
    alpn: str | None = None
    certificate: bytes | None = None
    _h2Failed = False

    def __init__(
        self,
        proxy: Proxy,
        settings: dict[int, int] | None = None,
        checked: bool = True,
        receiveBuffer: int | None = None,
        caFile: str | None = None,
    ) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receiveBuffer is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        raw.settimeout(READ_DEADLINE)
        raw.connect(("127.0.0.1", proxy.port))
        self.sock: socket.socket = raw
        if proxy.tls:
            context = ssl.create_default_context(cafile=caFile or proxy.caFile)
            context.set_alpn_protocols(["h2", "http/1.1"])
            tls = context.wrap_socket(raw, server_hostname="localhost")
            self.sock = tls
            self.alpn = tls.selected_alpn_protocol()
            self.certificate = tls.getpeercert(binary_form=True)
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=checked,
                normalize_outbound_headers=checked,
            )
        )
        self.events: list[Event] = []
        self.frames: list[tuple[int, int, bytes]] = []
        self._unparsed = b""
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        """
        Send what C{h2} has queued.
        """
        self.write(self.h2.data_to_send())

    def write(self, data: bytes) -> None:
        """
        Send C{data} as it is; a connection the server has closed takes
        nothing more.
        """
        if not data or self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        extra: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        """
        Open a stream with a request; return its ID.
        """
        streamId: int = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *((n.encode(), v.encode()) for n, v in extra),
        ]
        self.h2.send_headers(streamId, fields, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(streamId, body, end_stream=end)
        self.flush()
        return streamId

    def headersFrame(self, streamId: int, fields: list[tuple[bytes, bytes]], **kw: Any) -> bytes:
        """
        A HEADERS frame carrying C{fields} as they are (encoded with this
        connection's HPACK state).
        """
        frame = HeadersFrame(streamId, **kw)
        frame.data = self.h2.encoder.encode(fields)
        return frame.serialize()

    def readUntil(self, done: Callable[[], bool], deadline: float = READ_DEADLINE) -> None:
        """
        Read and handle what the server sends until C{done()}, the server
        closes the connection, or C{deadline} seconds pass (a failure).
        """
        end = time.monotonic() + deadline
        while not done():
            if self.closed:
                return
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing expected arrived in {deadline}s: {self.events[-5:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self._parse(data)
            if self._h2Failed:
                continue
            try:
                self.events += self.h2.receive_data(data)
            except ProtocolError:
                # What the raw frames sent are not h2's streams: from now
                # on only the frames are read (see goAway and resets).
                self._h2Failed = True
                continue
            self.flush()

    def _parse(self, data: bytes) -> None:
        """
        Keep each whole frame received, as (type, stream, payload).
        """
        buffer = self._unparsed + data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind = buffer[3]
            streamId = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            self.frames.append((kind, streamId, buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
        self._unparsed = buffer

    def readable(self) -> bool:
        """
        Whether the server has sent something not yet read.
        """
        return bool(select.select([self.sock], [], [], 0)[0])

    def readToClose(self, deadline: float = READ_DEADLINE) -> None:
        """
        Read until the server closes the connection.
        """
        self.readUntil(lambda: False, deadline)

    def goAway(self) -> tuple[int, int] | None:
        """
        The first GOAWAY the server sent, if it has: its last stream ID and
        error code.
        """
        for kind, _, payload in self.frames:
            if kind == _GOAWAY:
                return (
                    int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                    int.from_bytes(payload[4:8], "big"),
                )
        return None

    def resets(self) -> dict[int, int]:
        """
        The streams the server reset, with their error codes.
        """
        return {
            streamId: int.from_bytes(payload[:4], "big")
            for kind, streamId, payload in self.frames
            if kind == _RST_STREAM
        }

    def ended(self, streamId: int) -> bool:
        """
        Whether stream C{streamId} is over: complete, or reset.
        """
        return streamId in self.resets() or any(
            isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == streamId
            for e in self.events
        )

    def response(self, streamId: int) -> tuple[int | None, dict[bytes, bytes], bytes]:
        """
        Stream C{streamId}'s status, final head and body so far (its flow
        control windows opened as data arrives).
        """
        status = None
        head: dict[bytes, bytes] = {}
        body = []
        for event in self.events:
            if getattr(event, "stream_id", None) != streamId:
                continue
            if isinstance(event, ResponseReceived):
                head = dict(event.headers)
                status = int(head[b":status"])
            elif isinstance(event, DataReceived):
                body.append(event.data)
        return status, head, b"".join(body)

    def informational(self, streamId: int) -> list[dict[bytes, bytes]]:
        """
        The interim (1xx) heads stream C{streamId} received.
        """
        return [
            dict(e.headers)
            for e in self.events
            if isinstance(e, InformationalResponseReceived) and e.stream_id == streamId
        ]

    def get(self, path: str = "/", deadline: float = READ_DEADLINE) -> tuple[int | None, bytes]:
        """
        One GET, read whole (acknowledging its data as it comes).
        """
        streamId = self.request(path)
        seen = 0

        def done() -> bool:
            nonlocal seen
            for event in self.events[seen:]:
                if isinstance(event, DataReceived) and event.stream_id == streamId:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, streamId)
            seen = len(self.events)
            return self.ended(streamId)

        self.readUntil(done, deadline)
        status, _, body = self.response(streamId)
        return status, body


def wellBehavedGet(
    proxy: Proxy, path: str = "/bytes?n=1000&id=ok"
) -> tuple[str | None, int | None]:
    """
    A GET on a new connection of a client that follows the rules; its
    ALPN protocol (TLS) and status.
    """
    client = RawH2(proxy)
    try:
        status, _ = client.get(path)
    finally:
        client.close()
    return client.alpn, status


_GOAWAY = 0x7
_RST_STREAM = 0x3

_FIELDS = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"localhost"),
    (b":path", b"/bytes?n=10&id=attack"),
]


class _Case(TestCase):
    """
    A backend, and C{twistd lbproxy --http2 on} in front of it.
    """

    timeout = 120

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.server = DataServer(self)

    async def start(self, tls: bool = False, *extra: str) -> Proxy:
        flags = ("--http2", "on") if tls else ("--http2", "on", "--h2c")
        return await startProxy(
            self, self.directory, self.server.authority, tls, extra=(*flags, *extra)
        )

    async def assertServes(self, proxy: Proxy) -> None:
        """
        A well-behaved client on a connection of its own is served.
        """
        alpn, status = await deferToThread(wellBehavedGet, proxy)
        self.assertEqual(status, 200)
        if proxy.tls:
            self.assertEqual(alpn, "h2")

    def assertClean(self, proxy: Proxy) -> None:
        problem = logProblems(proxy.process)
        if problem is not None:
            self.fail(f"twistd logged an error:\n{problem}")


class AttackTests(_Case):
    """
    Each known HTTP/2 attack, on a real socket.
    """

    async def test_rapidReset(self) -> None:
        """
        A client that opens and at once resets 10 000 streams (CVE-2023-44487)
        is sent GOAWAY ENHANCE_YOUR_CALM and disconnected long before the
        last of them (the reset budget, not the attack, bounds the work);
        the proxy goes on serving others and logs no traceback.
        """
        proxy = await self.start(True)

        def attack() -> RawH2:
            client = RawH2(proxy)
            batch = []
            for i in range(10_000):
                streamId = 1 + 2 * i
                batch.append(self.headersFrame(client, streamId))
                batch.append(_reset(streamId))
                if len(batch) >= 200:
                    client.write(b"".join(batch))
                    batch = []
                if client.closed:
                    break
            client.write(b"".join(batch))
            client.readToClose()
            client.close()
            return client

        client = await deferToThread(attack)
        goAway = client.goAway()
        assert goAway is not None, client.events[-5:]
        self.assertEqual(goAway[1], ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.closed)
        # Taken: the burst (200) and what the rate (100 a second) earned
        # back while the attack lasted, not 10 000 streams.
        self.assertLess(goAway[0], 2 * 5_000)
        await self.assertServes(proxy)
        self.assertClean(proxy)

    def headersFrame(self, client: RawH2, streamId: int) -> bytes:
        return client.headersFrame(streamId, _FIELDS, flags=["END_HEADERS", "END_STREAM"])

    async def test_continuationFlood(self) -> None:
        """
        A header block sent as endless CONTINUATION frames (CVE-2024-27316
        family) is a connection error once lbproxy has taken 64 of them:
        the connection is closed (with GOAWAY, which a client still
        sending may not get to read before the reset); the proxy goes on
        serving others.
        """
        proxy = await self.start()

        def attack() -> RawH2:
            client = RawH2(proxy)
            first = HeadersFrame(1, flags=[])
            first.data = client.h2.encoder.encode(_FIELDS)
            client.write(first.serialize())
            piece = ContinuationFrame(1, flags=[])
            piece.data = b"\x00" * 1000  # never END_HEADERS
            frame = piece.serialize()
            for _ in range(1000):
                client.write(frame * 10)
                if client.closed or client.readable():
                    break
            client.readToClose()
            client.close()
            return client

        client = await deferToThread(attack)
        self.assertTrue(client.closed)
        goAway = client.goAway()
        if goAway is not None:
            self.assertEqual(goAway[1], ErrorCodes.PROTOCOL_ERROR)
        await until(
            lambda: "HTTP/2 connection error from 127.0.0.1" in proxy.process.out,
            "the connection error's line",
        )
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_hpackBomb(self) -> None:
        """
        A header block that references one 3 KB field 10 000 times (30 MB
        decoded from 13 KB: the HPACK bomb) is over the 64 KiB header list
        limit: GOAWAY, the connection closed, lbproxy's memory barely
        moved, and others are served.
        """
        proxy = await self.start()
        await until(lambda: residentBytes(proxy.process.pid) > 0, "the proxy's memory")
        before = residentBytes(proxy.process.pid)

        def attack() -> RawH2:
            client = RawH2(proxy)
            # The big field goes into the dynamic table (index 62), then
            # one byte per reference to it.
            block = client.h2.encoder.encode([*_FIELDS, (b"x-bomb", b"a" * 3000)])
            block += b"\xbe" * 10_000
            frame = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
            frame.data = block
            client.write(frame.serialize())
            client.readToClose()
            client.close()
            return client

        client = await deferToThread(attack)
        goAway = client.goAway()
        assert goAway is not None, client.events[-5:]
        self.assertEqual(goAway[1], ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.closed)
        grown = residentBytes(proxy.process.pid) - before
        self.assertLess(grown, 16 * MiB, f"grew by {grown / MiB:.1f} MiB")
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_pingAndSettingsFloodUnread(self) -> None:
        """
        PING and SETTINGS frames sent by a client that reads none of the
        acknowledgements (its receive buffer tiny) end in GOAWAY
        ENHANCE_YOUR_CALM and a dropped connection once a bounded number
        are queued; lbproxy's memory stays bounded and others are served.
        """
        proxy = await self.start()
        await until(lambda: residentBytes(proxy.process.pid) > 0, "the proxy's memory")
        before = residentBytes(proxy.process.pid)

        def attack() -> tuple[RawH2, int]:
            client = RawH2(proxy, receiveBuffer=4096)
            ping = PingFrame(0, opaque_data=b"12345678").serialize()
            settings = SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 0}).serialize()
            batch = (ping + settings) * 500
            sent = 0
            end = time.monotonic() + READ_DEADLINE
            # Bounded: 1000 batches of 1000 frames, or the deadline.
            for _ in range(1000):
                if client.closed or time.monotonic() > end:
                    break
                client.write(batch)
                sent += 1000
            closedWhileSending = client.closed
            client.readToClose()
            client.close()
            return client, sent if closedWhileSending else -sent

        client, sent = await deferToThread(attack)
        self.assertGreater(sent, 0, f"the connection stayed open through {-sent} frames")
        self.assertTrue(client.closed)
        grown = residentBytes(proxy.process.pid) - before
        self.assertLess(grown, 32 * MiB, f"grew by {grown / MiB:.1f} MiB")
        await until(lambda: "ENHANCE_YOUR_CALM" in proxy.process.out, "the calm line")
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_zeroWindow(self) -> None:
        """
        A client that sets its stream window to 0 and never opens it gets
        its streams reset after C{--send-timeout}, a large response's (the
        backend paused meanwhile: lbproxy holds at most the stream buffer)
        and a small one's alike; others are served.
        """
        proxy = await self.start(False, "--send-timeout", "2")

        def attack() -> tuple[RawH2, list[int], float]:
            client = RawH2(proxy, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
            started = time.monotonic()
            big = client.request(f"/bytes?n={64 * MiB}&id=zero")
            small = client.request("/bytes?n=1000&id=small")
            client.readUntil(lambda: client.ended(big) and client.ended(small))
            elapsed = time.monotonic() - started
            client.close()
            return client, [big, small], elapsed

        client, streams, elapsed = await deferToThread(attack)
        self.assertEqual(sorted(client.resets()), streams, client.events[-5:])
        self.assertIsNone(client.goAway())
        self.assertGreaterEqual(elapsed, 1.5)
        exchange = self.server.exchange("zero")
        self.assertTrue(exchange.stalled.is_set())
        self.assertLess(exchange.sent, 32 * MiB)
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_tooManyStreams(self) -> None:
        """
        A stream opened over the limit of concurrent streams (a client
        ignoring SETTINGS_MAX_CONCURRENT_STREAMS) is refused on its own,
        RST_STREAM REFUSED_STREAM; the connection stays open.
        """
        proxy = await self.start(False, "--http2-max-concurrent-streams", "10")

        def attack() -> tuple[RawH2, list[int]]:
            # Windows shut: no response can finish, every stream stays open.
            client = RawH2(proxy, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
            streams = [client.request(f"/bytes?n=100000&id=many{i}") for i in range(11)]
            client.readUntil(lambda: streams[-1] in client.resets())
            client.close()
            return client, streams

        client, streams = await deferToThread(attack)
        self.assertEqual(client.resets(), {streams[-1]: ErrorCodes.REFUSED_STREAM})
        self.assertIsNone(client.goAway())
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_emptyDataFrameSmuggling(self) -> None:
        """
        Empty DATA frames in a request body of no declared length do not
        end it early at the backend: the backend hashes the whole body, and
        the HTTP/1.1 request hidden in it is never read as a request of its
        own.
        """
        proxy = await self.start()
        hidden = b"GET /bytes?n=1&id=smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"

        def attack() -> tuple[int | None, bytes]:
            client = RawH2(proxy)
            streamId = client.request("/up?id=carrier", method="POST", end=False)
            client.h2.send_data(streamId, b"")
            client.h2.send_data(streamId, hidden, end_stream=True)
            client.flush()
            client.readUntil(lambda: client.ended(streamId))
            status, _, body = client.response(streamId)
            client.close()
            return status, body

        status, body = await deferToThread(attack)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["length"], len(hidden))
        self.assertFalse(self.server.exchange("smuggled").arrived.is_set())
        self.assertClean(proxy)

    async def test_bodyNeverSent(self) -> None:
        """
        A stream whose head promises a body that never comes is answered
        408 after C{--body-timeout}; the connection goes on.
        """
        proxy = await self.start(False, "--body-timeout", "1")

        def attack() -> tuple[int | None, int | None]:
            client = RawH2(proxy)
            streamId = client.request(
                "/up?id=never", method="POST", extra=[("content-length", "100")], end=False
            )
            client.readUntil(lambda: client.ended(streamId))
            status = client.response(streamId)[0]
            again, _ = client.get("/bytes?n=10&id=after")
            client.close()
            return status, again

        status, again = await deferToThread(attack)
        self.assertEqual((status, again), (408, 200))
        await self.assertServes(proxy)
        self.assertClean(proxy)

    async def test_malformedHeads(self) -> None:
        """
        Malformed request heads (an upper-case name, no C{:path}, a
        connection-specific field, a CR LF in a value) each reset their
        own stream with PROTOCOL_ERROR (RFC 9113 8.1.1); no backend sees
        them, and a good request on the same connection is served.
        """
        proxy = await self.start(True)
        bad: list[list[tuple[bytes, bytes]]] = [
            [*_FIELDS, (b"X-Upper", b"1")],
            [f for f in _FIELDS if f[0] != b":path"],
            [*_FIELDS, (b"connection", b"keep-alive")],
            [*_FIELDS, (b"x-smuggle", b"a\r\nx-b: c")],
        ]

        def attack() -> tuple[RawH2, list[int], int | None]:
            client = RawH2(proxy, checked=False)
            ids = []
            for fields in bad:
                streamId = client.h2.get_next_available_stream_id()
                client.h2.send_headers(streamId, fields, end_stream=True)
                ids.append(streamId)
            client.flush()
            client.readUntil(lambda: all(client.ended(i) for i in ids))
            status, _ = client.get("/bytes?n=10&id=good")
            client.close()
            return client, ids, status

        client, ids, status = await deferToThread(attack)
        self.assertEqual(client.resets(), {i: ErrorCodes.PROTOCOL_ERROR for i in ids})
        self.assertIsNone(client.goAway())
        self.assertEqual(status, 200)
        await self.assertServes(proxy)
        self.assertClean(proxy)


def _reset(streamId: int) -> bytes:
    from hyperframe.frame import RstStreamFrame

    return RstStreamFrame(streamId, error_code=ErrorCodes.CANCEL).serialize()
