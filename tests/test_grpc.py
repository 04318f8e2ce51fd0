"""
gRPC through the installed C{twistd lbproxy --http2 on}, end to end: a real
C{grpcio} server behind C{h2c://} (or C{h2://}) backends and a real
C{grpcio} client, over the h2c listener (C{--h2c}) and the TLS one. Unary,
server-streaming, client-streaming and bidirectional calls, messages of
some MiB both ways, metadata and trailers, the gRPC status a client sees
when lbproxy fails a call (14 UNAVAILABLE, 4 DEADLINE_EXCEEDED), a backend
killed mid-stream; and a plain HTTP/2 backend for an HTTP/1.1 client.

The backends (L{tests.grpcsupport}) run in threads of the test process;
the blocking gRPC client runs in threads too.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.grpcsupport import MESSAGE_LIMIT, SERVICE, GRPCBackend, H2Backend
from tests.support import Proxy, freePort, logProblems, makeCertificates, startProxy, until

try:
    import grpc
except ImportError:  # pragma: no cover - the dev extras bring it
    grpc = None

try:
    import httpx
except ImportError:  # pragma: no cover - the dev extras bring it
    httpx = None  # type: ignore[assignment]

T = TypeVar("T")

MiB = 1024 * 1024

CALL_TIMEOUT = 60.0
"""
The deadline every gRPC call of these tests is given.
"""

_LIMITS = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
]


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _rpcError(call: Callable[[], object]) -> Any:
    """
    The C{grpc.RpcError} that C{call} fails with, or L{None} if it does not.
    """
    try:
        call()
    except grpc.RpcError as e:
        return e
    return None


class _Case(TestCase):
    """
    A gRPC backend or two, C{twistd lbproxy} in front, gRPC channels to it.
    """

    def setUp(self) -> None:
        if grpc is None:
            self.skipTest("grpcio is not installed (pip install -e '.[dev]')")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def start(self, backends: str, tls: bool = False, *extra: str) -> Proxy:
        flags = ("--http2", "on") if tls else ("--http2", "on", "--h2c")
        self.accessLog = os.path.join(self.directory, "access.log")
        return await startProxy(
            self,
            self.directory,
            backends,
            tls,
            extra=(*flags, "--access-log", self.accessLog, *extra),
        )

    def channel(self, proxy: Proxy) -> Any:
        """
        A gRPC channel to C{proxy}'s listener (TLS trusting only the test
        CA, for a TLS one), closed at cleanup.
        """
        target = f"127.0.0.1:{proxy.port}"
        if proxy.tls:
            assert proxy.caFile is not None
            with open(proxy.caFile, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            channel = grpc.secure_channel(
                target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
            )
        else:
            channel = grpc.insecure_channel(target, options=_LIMITS)
        self.addCleanup(channel.close)
        return channel

    def inThread(self, call: Callable[[], T]) -> Deferred[T]:
        return deferToThread(call)

    def assertClean(self, proxy: Proxy) -> None:
        problem = logProblems(proxy.process)
        if problem is not None:
            self.fail(f"twistd logged an error:\n{problem}")


class CallTests(_Case):
    """
    Each kind of gRPC call passes through lbproxy whole.
    """

    async def test_unaryWithMetadata(self) -> None:
        """
        A unary call gets its answer; the request's metadata reaches the
        backend and the backend's trailing metadata reaches the client
        (HTTP/2 trailers end to end), with status OK.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        unary = self.channel(proxy).unary_unary(_method("Unary"))

        def call() -> tuple[bytes, Any]:
            return unary.with_call(  # type: ignore[no-any-return]
                b"hello", metadata=(("x-meta", "m1"),), timeout=CALL_TIMEOUT
            )

        answer, state = await self.inThread(call)
        self.assertEqual(answer, b"hello")
        self.assertEqual(state.code(), grpc.StatusCode.OK)
        trailing = dict(state.trailing_metadata())
        self.assertEqual(trailing["x-trailer"], "done")
        self.assertEqual(trailing["x-saw-meta"], "m1")
        self.assertClean(proxy)

    async def test_unaryOverTLS(self) -> None:
        """
        Over the TLS listener (ALPN h2, the test CA trusted), a unary call
        and its trailers pass the same.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}", True)
        unary = self.channel(proxy).unary_unary(_method("Unary"))
        answer, state = await self.inThread(
            lambda: unary.with_call(b"over tls", timeout=CALL_TIMEOUT)
        )
        self.assertEqual(answer, b"over tls")
        self.assertEqual(dict(state.trailing_metadata())["x-trailer"], "done")

    async def test_serverStreaming(self) -> None:
        """
        A server-streaming call gets every message, in order.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        count = self.channel(proxy).unary_stream(_method("Count"))
        answers = await self.inThread(lambda: list(count(b"1000", timeout=CALL_TIMEOUT)))
        self.assertEqual(answers, [b"%d" % (i,) for i in range(1000)])

    async def test_clientStreaming(self) -> None:
        """
        A client-streaming call's messages all reach the backend (100 of
        10 KiB).
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        total = self.channel(proxy).stream_unary(_method("Sum"))
        messages = [bytes([i]) * 10240 for i in range(100)]
        answer = await self.inThread(lambda: total(iter(messages), timeout=CALL_TIMEOUT))
        self.assertEqual(answer, b"1024000 100")

    async def test_bidirectionalInterleaved(self) -> None:
        """
        A bidirectional call is full duplex through lbproxy: each message
        is sent only after the answer to the one before has arrived, so
        every answer crossed while the request stream was still open.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        echo = self.channel(proxy).stream_stream(_method("Echo"))

        def converse() -> tuple[list[bytes], list[bytes]]:
            outgoing: queue.Queue[bytes | None] = queue.Queue()

            def requests() -> Iterator[bytes]:
                while (message := outgoing.get(timeout=CALL_TIMEOUT)) is not None:
                    yield message

            answers = echo(requests(), timeout=CALL_TIMEOUT)
            received = []
            for index in range(20):
                outgoing.put(b"m%d" % (index,))
                received.append(next(answers))
            outgoing.put(None)
            return received, list(answers)

        received, rest = await self.inThread(converse)
        self.assertEqual(received, [b"echo m%d" % (i,) for i in range(20)])
        self.assertEqual(rest, [])

    async def test_largeMessages(self) -> None:
        """
        A 5 MiB message goes to the backend and comes back whole, over
        HTTP/2 flow control both ways.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        unary = self.channel(proxy).unary_unary(_method("Unary"))
        message = os.urandom(5 * MiB)
        answer = await self.inThread(lambda: unary(message, timeout=CALL_TIMEOUT))
        self.assertEqual(answer, message)

    async def test_manyCallsOneConnection(self) -> None:
        """
        Concurrent calls on one client connection are multiplexed to the
        backend and all answered.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        unary = self.channel(proxy).unary_unary(_method("Unary"))

        def many() -> list[bytes]:
            futures = [unary.future(b"%d" % (i,), timeout=CALL_TIMEOUT) for i in range(50)]
            return [f.result() for f in futures]

        self.assertEqual(await self.inThread(many), [b"%d" % (i,) for i in range(50)])

    async def test_metrics(self) -> None:
        """
        The backend's counters move for gRPC calls as for HTTP/1.1
        requests: responses by class, bytes both ways, latencies, and one
        open connection that carried them all.
        """
        backend = GRPCBackend(self)
        metricsPort = freePort()
        proxy = await self.start(
            f"h2c://{backend.authority}",
            False,
            "--metrics",
            f"tcp:{metricsPort}:interface=127.0.0.1",
        )
        unary = self.channel(proxy).unary_unary(_method("Unary"))
        for _ in range(3):
            await self.inThread(lambda: unary(b"m" * 1000, timeout=CALL_TIMEOUT))

        def scrape() -> dict[str, float]:
            url = f"http://127.0.0.1:{metricsPort}/metrics"
            with urllib.request.urlopen(url, timeout=CALL_TIMEOUT) as response:
                text = response.read().decode()
            samples = {}
            for line in text.splitlines():
                if backend.authority in line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    metric, _, labels = name.partition("{")
                    kept = [
                        label
                        for label in labels.rstrip("}").split(",")
                        if label and not label.startswith(("backend=", "pool="))
                    ]
                    samples[f"{metric}{{{','.join(kept)}}}"] = float(value)
            return samples

        samples = await self.inThread(scrape)
        self.assertEqual(samples['lbproxy_backend_responses_total{class="2xx"}'], 3)
        self.assertEqual(samples["lbproxy_backend_requests_total{}"], 3)
        self.assertEqual(samples["lbproxy_backend_latency_seconds_count{}"], 3)
        # Each message is 1000 bytes and a 5-byte gRPC prefix.
        self.assertEqual(samples["lbproxy_backend_sent_bytes_total{}"], 3 * 1005)
        self.assertEqual(samples["lbproxy_backend_received_bytes_total{}"], 3 * 1005)
        self.assertEqual(samples["lbproxy_backend_connections_open{}"], 1)

    async def test_h2Backend(self) -> None:
        """
        An C{h2://} backend (TLS with ALPN h2, its certificate verified
        against C{--backend-ca}) carries gRPC calls as an C{h2c://} one
        does.
        """
        certs = os.path.join(self.directory, "certs")
        await makeCertificates(certs)
        with open(os.path.join(certs, "loadbalancer.key"), "rb") as f:
            key = f.read()
        with open(os.path.join(certs, "loadbalancer.crt"), "rb") as f:
            cert = f.read()
        backend = GRPCBackend(self, (key, cert))
        proxy = await self.start(
            f"h2://localhost:{backend.port}",
            False,
            "--backend-ca",
            os.path.join(certs, "ca.crt"),
        )
        unary = self.channel(proxy).unary_unary(_method("Unary"))
        answer, state = await self.inThread(
            lambda: unary.with_call(b"to tls", timeout=CALL_TIMEOUT)
        )
        self.assertEqual(answer, b"to tls")
        self.assertEqual(dict(state.trailing_metadata())["x-trailer"], "done")


class FailureTests(_Case):
    """
    What a gRPC client sees when lbproxy fails its call, a backend dies, or
    lbproxy drains.
    """

    async def test_h2BackendWithoutALPN(self) -> None:
        """
        An C{h2://} backend that completes TLS without choosing C{h2} in
        ALPN (an HTTP/1.1-only server) counts as one that could not be
        reached: 503 (as for any failure to connect, after trying the
        others), saying why, and a log line, rather than an HTTP/2 preface
        it cannot read.
        """
        certs = os.path.join(self.directory, "certs")
        await makeCertificates(certs)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            os.path.join(certs, "loadbalancer.crt"), os.path.join(certs, "loadbalancer.key")
        )
        context.set_alpn_protocols(["http/1.1"])
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(CALL_TIMEOUT)
        port = listener.getsockname()[1]

        chosen: list[str | None] = []

        def serve() -> None:
            # Until the listener closes at cleanup: the proxy's requests
            # and health checks, each dropped by the proxy at once.
            while True:
                try:
                    raw, _ = listener.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(raw, server_side=True) as tls:
                        chosen.append(tls.selected_alpn_protocol())
                        tls.settimeout(CALL_TIMEOUT)
                        tls.recv(1024)
                except OSError:
                    pass

        served = deferToThread(serve)

        def stop() -> Deferred[None]:
            # shutdown() wakes the thread's accept(), close() would not.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            return served

        self.addCleanup(stop)
        proxy = await self.start(
            f"h2://localhost:{port}", False, "--backend-ca", os.path.join(certs, "ca.crt")
        )

        def get() -> tuple[int, bytes]:
            connection = proxy.connection()
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        status, body = await self.inThread(get)
        self.assertEqual(status, 503, body)
        self.assertIn(b"did not agree to HTTP/2 in ALPN", body)
        self.assertNotIn("h2", chosen)
        await until(lambda: "did not agree to HTTP/2 in ALPN" in proxy.process.out, "the log line")
        self.assertIsNone(logProblems(proxy.process))

    async def test_backendDown(self) -> None:
        """
        With its only backend down, a call fails with UNAVAILABLE (HTTP
        200, grpc-status 14), and the access log keeps the 503 the proxy
        decided on.
        """
        proxy = await self.start(f"h2c://127.0.0.1:{freePort()}")
        unary = self.channel(proxy).unary_unary(_method("Unary"))

        error = await self.inThread(lambda: _rpcError(lambda: unary(b"x", timeout=CALL_TIMEOUT)))
        self.assertIsNotNone(error)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("refused", error.details())
        await until(lambda: "grpc-status 14" in _read(self.accessLog), "the access log line")
        self.assertIn("HTTP 503 as grpc-status 14", _read(self.accessLog))

    async def test_tooSlow(self) -> None:
        """
        A backend slower than C{--timeout} fails the call with
        DEADLINE_EXCEEDED (grpc-status 4).
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}", False, "--timeout", "1")
        slow = self.channel(proxy).unary_unary(_method("Slow"))

        error = await self.inThread(lambda: _rpcError(lambda: slow(b"x", timeout=CALL_TIMEOUT)))
        backend.release()
        self.assertIsNotNone(error)
        self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    async def test_backendKilledMidStream(self) -> None:
        """
        A backend killed while it streams an answer: the client's call
        fails (its stream is reset), lbproxy logs it, and the next call is
        answered by the other backend.
        """
        first, second = GRPCBackend(self), GRPCBackend(self)
        proxy = await self.start(f"h2c://{first.authority},h2c://{second.authority}")
        channel = self.channel(proxy)
        stall = channel.unary_stream(_method("Stall"))
        answers = stall(b"", timeout=CALL_TIMEOUT)
        self.assertEqual(await self.inThread(lambda: next(answers)), b"first")
        await until(lambda: first.started.is_set() or second.started.is_set(), "the stall")
        dying = first if first.started.is_set() else second
        await dying.stop()

        error = await self.inThread(lambda: _rpcError(lambda: list(answers)))
        self.assertIsNotNone(error)
        self.assertNotEqual(error.code(), grpc.StatusCode.OK)
        await until(lambda: "cut short" in proxy.process.out, "lbproxy to log the cut")
        unary = channel.unary_unary(_method("Unary"))
        for index in range(4):
            answer = await self.inThread(lambda: unary(b"after", timeout=CALL_TIMEOUT))
            self.assertEqual(answer, b"after", index)
        self.assertClean(proxy)

    async def test_backendKilledBeforeAnswering(self) -> None:
        """
        A backend killed before it answered at all: the call fails with
        UNAVAILABLE (grpc-status 14 from lbproxy), not a reset.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        slow = self.channel(proxy).unary_unary(_method("Slow"))
        call = slow.future(b"x", timeout=CALL_TIMEOUT)
        await until(backend.started.is_set, "the slow call")
        await backend.stop()
        error = await self.inThread(call.exception)
        self.assertIsNotNone(error)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE, error.details())
        self.assertClean(proxy)

    async def test_clientCancels(self) -> None:
        """
        A client that cancels a streaming call (RST_STREAM) has the
        backend's stream reset too: the backend sees the call end.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        stall = self.channel(proxy).unary_stream(_method("Stall"))
        answers = stall(b"", timeout=CALL_TIMEOUT)
        self.assertEqual(await self.inThread(lambda: next(answers)), b"first")
        await until(backend.started.is_set, "the stall")
        self.assertFalse(backend.ended.is_set())
        answers.cancel()
        await until(backend.ended.is_set, "the backend to see the call end")
        self.assertClean(proxy)

    async def test_drainLetsStreamFinish(self) -> None:
        """
        SIGTERM while a streaming call is in progress: the call finishes
        whole (its backend stream is not cut), then twistd exits 0.
        """
        backend = GRPCBackend(self)
        proxy = await self.start(f"h2c://{backend.authority}")
        stall = self.channel(proxy).unary_stream(_method("Stall"))
        answers = stall(b"", timeout=CALL_TIMEOUT)
        self.assertEqual(await self.inThread(lambda: next(answers)), b"first")
        await until(backend.started.is_set, "the stall")
        proxy.process.signal("TERM")
        await until(lambda: "draining" in proxy.process.out, "the drain to start")
        backend.release()
        self.assertEqual(await self.inThread(lambda: list(answers)), [b"second"])
        self.assertEqual(answers.code(), grpc.StatusCode.OK)
        result = await proxy.process.exited()
        self.assertEqual((result.code, result.signal), (0, None), result.combined)
        self.assertNotIn("Traceback", result.combined)

    async def test_healthChecksOverHTTP2(self) -> None:
        """
        Active health checks speak HTTP/2 to h2c backends: a gRPC server is
        up, a closed port is down.
        """
        backend = GRPCBackend(self)
        dead = freePort()
        proxy = await self.start(
            f"h2c://{backend.authority},h2c://127.0.0.1:{dead}",
            False,
            "--health-interval",
            "0.2",
            "--health-fall",
            "2",
        )
        await until(lambda: f"127.0.0.1:{dead} is DOWN" in proxy.process.out, "the dead one DOWN")
        self.assertNotIn(f"{backend.authority} is DOWN", proxy.process.out)
        unary = self.channel(proxy).unary_unary(_method("Unary"))
        for _ in range(4):
            self.assertEqual(await self.inThread(lambda: unary(b"up", timeout=CALL_TIMEOUT)), b"up")


class PlainHTTP2BackendTests(_Case):
    """
    An HTTP/2 backend that is not gRPC, for an HTTP/1.1 client.
    """

    async def test_http11Client(self) -> None:
        """
        An HTTP/1.1 GET and POST reach an h2c backend as HTTP/2 requests:
        Host became C{:authority}, connection fields are gone; the answers
        come back (the backend's trailers are dropped for HTTP/1.1).
        """
        backend = H2Backend(self)
        proxy = await self.start(f"h2c://{backend.authority}")

        def exchange() -> list[tuple[int, bytes, str | None]]:
            connection = proxy.connection()
            results = []
            try:
                connection.request("GET", "/plain?x=1", headers={"Connection": "keep-alive"})
                response = connection.getresponse()
                results.append((response.status, response.read(), response.getheader("x-path")))
                connection.request("POST", "/up", body=b"z" * 100000)
                response = connection.getresponse()
                results.append((response.status, response.read(), response.getheader("x-length")))
            finally:
                connection.close()
            return results

        results = await self.inThread(exchange)
        self.assertEqual(
            results,
            [(200, b"hello /plain?x=1", "/plain?x=1"), (200, b"hello /up", "100000")],
        )
        head = backend.seen[0]
        self.assertEqual(head[b":authority"], f"127.0.0.1:{proxy.port}".encode())
        self.assertEqual(head[b":method"], b"GET")
        self.assertNotIn(b"connection", head)
        self.assertNotIn(b"host", head)
        self.assertClean(proxy)

    async def test_http2Client(self) -> None:
        """
        An HTTP/2 client (httpx, prior knowledge) reaches an h2c backend
        over HTTP/2 on both sides, ten requests on one client connection.
        """
        if httpx is None:
            self.skipTest("httpx is not installed (pip install -e '.[dev]')")
        backend = H2Backend(self)
        proxy = await self.start(f"h2c://{backend.authority}")

        def fetch() -> list[tuple[str, int, bytes]]:
            with httpx.Client(http1=False, http2=True, timeout=CALL_TIMEOUT) as client:
                return [
                    (r.http_version, r.status_code, r.content)
                    for r in (client.get(f"{proxy.url}/n{i}") for i in range(10))
                ]

        answers = await self.inThread(fetch)
        self.assertEqual(answers, [("HTTP/2", 200, b"hello /n%d" % (i,)) for i in range(10)])
        self.assertEqual(len(backend.seen), 10)
        self.assertClean(proxy)
