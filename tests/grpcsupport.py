"""
Real HTTP/2 backends for the gRPC end-to-end tests, in threads of the test
process on loopback sockets: a C{grpcio} server with a small service
(bytes in, bytes out: no generated code, identity serializers), and a
plain HTTP/2 server (the C{h2} library over a socket) for requests that
are not gRPC.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

# The tests fork twistd from this process: without this, gRPC's fork
# handlers may abort the child before it runs twistd.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

__all__ = ["MESSAGE_LIMIT", "SERVICE", "GRPCBackend", "H2Backend"]

SERVICE = "test.Echo"
"""
The service's name: its methods are C{/test.Echo/<Method>}.
"""

MESSAGE_LIMIT = 32 * 1024 * 1024
"""
The largest message either side takes (gRPC's default is 4 MiB).
"""

WAIT = 30.0
"""
The longest a handler waits for the test to let it go on.
"""


class GRPCBackend:
    """
    A C{grpcio} server (h2c, or TLS with C{certificate}) with the methods:

      - C{Unary}: answers the request; trailing metadata C{x-trailer:
        done} and C{x-saw-meta} (the request's C{x-meta});
      - C{Count}: server streaming, the request is a count C{n}: answers
        C{n} messages C{0..n-1};
      - C{Sum}: client streaming: answers the total length of the
        messages it received, and their number;
      - C{Echo}: bidirectional: answers each message as it comes;
      - C{Slow}: answers only once the test lets it (L{release});
      - C{Stall}: server streaming: one message, then waits for the test
        (L{release}) before a second one.

    @ivar port: Its port on 127.0.0.1.
    @ivar started: Set by C{Stall} and C{Slow} once they have started.
    @ivar ended: Set when a C{Stall} call ends before its second message
        (it was cancelled, or the server stopped).
    """

    def __init__(self, testCase: TestCase, certificate: tuple[bytes, bytes] | None = None) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self._release = threading.Event()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ],
        )
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
            "Sum": grpc.stream_unary_rpc_method_handler(self._sum),
            "Echo": grpc.stream_stream_rpc_method_handler(self._echo),
            "Slow": grpc.unary_unary_rpc_method_handler(self._slow),
            "Stall": grpc.unary_stream_rpc_method_handler(self._stall),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        if certificate is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials([(certificate[0], certificate[1])])
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()
        self._stopped = False
        testCase.addCleanup(self.stop)

    @property
    def authority(self) -> str:
        """
        C{127.0.0.1:port}.
        """
        return f"127.0.0.1:{self.port}"

    def release(self) -> None:
        """
        Let C{Slow} and C{Stall} go on.
        """
        self._release.set()

    def stop(self) -> Deferred[None]:
        """
        Stop at once: calls in progress are cut off (and then let go of).
        """
        if self._stopped:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        self._stopped = True

        def stop() -> None:
            self._server.stop(0).wait(WAIT)
            self._release.set()

        return deferToThread(stop)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata(
            (("x-trailer", "done"), ("x-saw-meta", str(metadata.get("x-meta", ""))))
        )
        return request

    def _count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for index in range(int(request)):
            yield b"%d" % (index,)

    def _sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = count = 0
        for message in requests:
            total += len(message)
            count += 1
        return b"%d %d" % (total, count)

    def _echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield b"echo " + message

    def _slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.started.set()
        self._release.wait(WAIT)
        return request

    def _stall(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        done = threading.Event()
        context.add_callback(lambda: None if done.is_set() else self.ended.set())
        yield b"first"
        self.started.set()
        self._release.wait(WAIT)
        done.set()
        yield b"second"


class _H2Handler(socketserver.BaseRequestHandler):
    """
    One HTTP/2 connection (prior knowledge): every request is answered
    with 200, C{x-path} and C{x-length} (of its body) headers, a body of
    C{hello <path>} and a C{x-trailer} trailer.
    """

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(WAIT)
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        heads: dict[int, dict[bytes, bytes]] = {}
        lengths: dict[int, int] = {}
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    heads[event.stream_id] = dict(event.headers)
                    lengths[event.stream_id] = 0
                elif isinstance(event, DataReceived):
                    lengths[event.stream_id] = lengths.get(event.stream_id, 0) + len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    head = heads.pop(event.stream_id, {})
                    self.server.seen.append(head)  # type: ignore[attr-defined]
                    path = head.get(b":path", b"")
                    body = b"hello " + path
                    conn.send_headers(
                        event.stream_id,
                        [
                            (b":status", b"200"),
                            (b"x-path", path),
                            (b"x-length", b"%d" % (lengths.pop(event.stream_id, 0),)),
                            (b"content-type", b"text/plain"),
                        ],
                    )
                    conn.send_data(event.stream_id, body)
                    conn.send_headers(event.stream_id, [(b"x-trailer", b"t")], end_stream=True)
                elif isinstance(event, ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            sock.sendall(conn.data_to_send())


class _ThreadedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class H2Backend:
    """
    A plain HTTP/2 server (h2c by prior knowledge) on 127.0.0.1 (see
    L{_H2Handler} for its answers).

    @ivar seen: The request heads it received (pseudo-headers included).
    """

    def __init__(self, testCase: TestCase) -> None:
        self._server = _ThreadedServer(("127.0.0.1", 0), _H2Handler)
        self.seen: list[dict[bytes, bytes]] = []
        self._server.seen = self.seen  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        testCase.addCleanup(self._stop)

    @property
    def authority(self) -> str:
        """
        C{127.0.0.1:port}.
        """
        return f"127.0.0.1:{self.port}"

    def _stop(self) -> Deferred[Any]:
        def stop() -> None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(WAIT)

        return deferToThread(stop)
