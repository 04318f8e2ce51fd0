"""
Tests for L{lbproxy.upstream.pool}: the idle connections kept per backend,
their bound and their timeout, the retry of a request sent on a connection
the backend had just closed, and closing. Every connection is in memory
and every timer is on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from zope.interface import implementer

from lbproxy.upstream.backends import Backend
from lbproxy.upstream.connection import CLOSE_WAIT, BackendConnection, BackendResponse
from lbproxy.upstream.pool import Upstream, UpstreamSettings
from lbproxy.upstream.reply import Reply

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(IStreamClientEndpoint)
class _Connections:
    """
    An endpoint that connects at once, in memory, keeping every
    connection it made with its transport.
    """

    def __init__(self) -> None:
        self.made: list[tuple[BackendConnection, StringTransport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert isinstance(protocol, BackendConnection)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.made.append((protocol, transport))
        return succeed(protocol)


def _lost(connection: BackendConnection, reason: Exception) -> None:
    """
    The transport of C{connection} ends with C{reason}.
    """
    connection.connectionLost(Failure(reason))


class UpstreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connections = _Connections()
        self.backend = Backend("127.0.0.1", 8080)

    def upstream(self, settings: UpstreamSettings | None = None) -> Upstream:
        return Upstream(
            MemoryReactor(),
            self.clock,
            settings or UpstreamSettings(),
            lambda host, port: self.connections,
        )

    def send(
        self,
        upstream: Upstream,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: None,
    ) -> Deferred[BackendResponse]:
        """
        Send a request through C{upstream} (L{Upstream.request}).
        """
        return upstream.request(backend, method, target, headers, body)

    def finish(self, d: Deferred[BackendResponse]) -> None:
        """
        The response C{d} fired with is a 200, read to its end.
        """
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        response.deliverBody(Protocol())

    def answered(self, upstream: Upstream) -> BackendConnection:
        """
        Send a GET through C{upstream}; the connection it went on answers it
        and the answer is read; return that connection.
        """
        d = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        connection, _ = self.connections.made[-1]
        connection.dataReceived(OK)
        self.finish(d)
        return connection

    def test_idleConnectionReused(self) -> None:
        """
        A connection whose response is complete is kept and carries the next
        request to the same backend: one connection for two requests.
        """
        upstream = self.upstream()
        first = self.answered(upstream)
        self.connections.made[-1][1].clear()
        self.send(upstream, self.backend, b"GET", b"/2", [(b"Host", b"h")], None)
        self.assertEqual(len(self.connections.made), 1)
        self.assertTrue(self.connections.made[0][1].value().startswith(b"GET /2 HTTP/1.1\r\n"))
        self.assertIs(self.connections.made[0][0], first)

    def test_otherBackendNewConnection(self) -> None:
        """
        An idle connection is kept for its own backend only.
        """
        upstream = self.upstream()
        self.answered(upstream)
        self.send(upstream, Backend("127.0.0.1", 8081), b"GET", b"/", [(b"Host", b"h")], None)
        self.assertEqual(len(self.connections.made), 2)

    def test_idleBounded(self) -> None:
        """
        At most C{maxIdlePerBackend} idle connections are kept per backend:
        the oldest is closed when one more becomes idle.
        """
        upstream = self.upstream(UpstreamSettings(maxIdlePerBackend=1))
        first = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        second = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        (one, oneTransport), (two, twoTransport) = self.connections.made
        one.dataReceived(OK)
        self.finish(first)
        two.dataReceived(OK)
        self.finish(second)
        self.assertTrue(oneTransport.disconnecting)
        self.assertFalse(twoTransport.disconnecting)

    def test_idleTimeout(self) -> None:
        """
        A connection idle for C{idleTimeout} seconds is closed by the next
        sweep of idle connections (every half C{idleTimeout} while any is
        idle); one idle for less is kept, never closed before its time; once
        none is idle, no timer is left.
        """
        upstream = self.upstream(UpstreamSettings(idleTimeout=10))
        first = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        second = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        (one, oneTransport), (two, twoTransport) = self.connections.made
        one.dataReceived(OK)
        self.finish(first)
        self.clock.advance(6)
        two.dataReceived(OK)
        self.finish(second)
        self.clock.advance(4)
        self.assertTrue(oneTransport.disconnecting)
        self.assertFalse(twoTransport.disconnecting)
        one.connectionLost(Failure(ConnectionDone()))  # (the close completes)
        self.clock.advance(5)
        self.assertFalse(twoTransport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(twoTransport.disconnecting)
        two.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hungCloseAborted(self) -> None:
        """
        An idle connection whose clean close does not complete (a TLS
        backend that hangs never sends its close_notify) is aborted
        L{CLOSE_WAIT} seconds later, so that it cannot be held for ever.
        """
        upstream = self.upstream(UpstreamSettings(idleTimeout=10))
        first = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        ((one, oneTransport),) = self.connections.made
        one.dataReceived(OK)
        self.finish(first)
        self.clock.advance(10)
        self.assertTrue(oneTransport.disconnecting)
        aborted: list[bool] = []
        oneTransport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.clock.advance(CLOSE_WAIT)
        self.assertEqual(aborted, [True])

    def test_staleConnectionRetried(self) -> None:
        """
        A GET sent on a reused connection that the backend closes before
        answering is sent once more, on a new connection, and answered there.
        """
        upstream = self.upstream()
        stale = self.answered(upstream)
        d = self.send(upstream, self.backend, b"GET", b"/again", [(b"Host", b"h")], None)
        _lost(stale, ConnectionDone())
        self.assertEqual(len(self.connections.made), 2)
        fresh, transport = self.connections.made[1]
        self.assertTrue(transport.value().startswith(b"GET /again HTTP/1.1\r\n"))
        fresh.dataReceived(OK)
        self.finish(d)

    def test_staleNotRetriedForPost(self) -> None:
        """
        A POST is not sent again: the backend may have processed it.
        """
        upstream = self.upstream()
        stale = self.answered(upstream)
        d = self.send(upstream, self.backend, b"POST", b"/", [(b"Host", b"h")], None)
        _lost(stale, ConnectionDone())
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.connections.made), 1)

    def test_closeWaitsForConnections(self) -> None:
        """
        C{close()} closes idle connections, aborts busy ones, cancels the idle
        sweep, and fires once every connection has ended.
        """
        upstream = self.upstream()
        idle = self.answered(upstream)
        waiting = self.send(
            upstream, Backend("127.0.0.1", 8081), b"GET", b"/", [(b"Host", b"h")], None
        )
        busy, busyTransport = self.connections.made[1]
        closed = upstream.close()
        self.assertTrue(self.connections.made[0][1].disconnecting)
        self.assertTrue(busyTransport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        _lost(idle, ConnectionDone())
        self.assertNoResult(closed)
        _lost(busy, ConnectionLost())
        self.assertIsNone(self.successResultOf(closed))
        self.failureResultOf(waiting, ResponseNeverReceived)

    def test_closeWithNothingOpen(self) -> None:
        """
        C{close()} with no connection open has already finished.
        """
        self.assertIsNone(self.successResultOf(self.upstream().close()))


class SendIntoTests(UpstreamTests):
    """
    The same, each request sent with L{Upstream.sendInto} and answered to
    a L{Reply} (the proxy's way), plus cancelling one.
    """

    def send(
        self,
        upstream: Upstream,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: None,
    ) -> Deferred[BackendResponse]:
        d: Deferred[BackendResponse] = Deferred()
        self.reply = Reply(d.callback, d.errback)
        upstream.sendInto(self.reply, backend, method, target, headers, body)
        return d

    def test_cancelReused(self) -> None:
        """
        Cancelling the reply to a request on a reused connection aborts that
        connection and fails the reply with L{CancelledError}, once: the
        connection's loss that follows is not resent.
        """
        upstream = self.upstream()
        reused = self.answered(upstream)
        d = self.send(upstream, self.backend, b"GET", b"/", [(b"Host", b"h")], None)
        aborted: list[bool] = []
        transport = self.connections.made[0][1]
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.reply.cancel()
        self.assertEqual(aborted, [True])
        self.failureResultOf(d, CancelledError)
        _lost(reused, ConnectionLost())
        self.assertEqual(len(self.connections.made), 1)

    def test_cancelResent(self) -> None:
        """
        Cancelling the reply once its request was resent (the reused
        connection was stale) cancels the resent one.
        """
        upstream = self.upstream()
        stale = self.answered(upstream)
        d = self.send(upstream, self.backend, b"GET", b"/again", [(b"Host", b"h")], None)
        _lost(stale, ConnectionDone())
        _, transport = self.connections.made[1]
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.reply.cancel()
        self.assertEqual(aborted, [True])
        self.failureResultOf(d, CancelledError)
