"""
Tests for L{lbproxy._twisted.transport}: TCP transports that send what was written
during a reactor turn at its end, over real loopback sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer, IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from lbproxy._twisted.transport import (
    BatchingClient,
    BatchingReactor,
    BatchingServer,
    batchingSends,
)
from lbproxy.test.fakes import turn


class _Accepted(Protocol):
    """
    Fires C{made} with itself once connected, C{lost} with the reason once
    disconnected; keeps what it received.
    """

    def __init__(self) -> None:
        self.made: Deferred[_Accepted] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.received: list[bytes] = []

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


def _recvNow(sock: socket.socket) -> bytes:
    """
    What C{sock} has received already, without waiting (the reactor does
    not run in between, so this is what the write sent by itself).
    """
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.settimeout(timeout)


def _readToEnd(sock: socket.socket) -> bytes:
    """
    All C{sock} receives until the peer closes (or resets) the connection;
    blocking, so the reactor cannot send anything meanwhile.
    """
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


class BatchedSendTests(TestCase):
    """
    Data written to an idle transport is on the wire at the end of the
    reactor turn; what the kernel does not take goes through Twisted's
    buffered path, in order; errors are reported as a lost connection, not
    from C{write()}.
    """

    @inlineCallbacks
    def _accept(self) -> Generator[Any, Any, tuple[_Accepted, socket.socket]]:
        """
        A server protocol on a batching port and the plain client
        socket connected to it.
        """
        accepted = _Accepted()
        port = yield TCP4ServerEndpoint(batchingSends(reactor), 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted)
        )
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(client.close)
        yield accepted.made
        return accepted, client

    @inlineCallbacks
    def test_sentAtEndOfTurn(self) -> Generator[Any, Any, None]:
        """
        What is written during a reactor turn is sent, all of it, when the
        turn ends, without the reactor watching the socket for room: the
        client receives it while the reactor is blocked.
        """
        accepted, client = yield self._accept()
        transport: Any = accepted.transport
        self.assertIsInstance(transport, BatchingServer)
        transport.write(b"HTTP/1.1 200 OK\r\n")
        transport.writeSequence([b"a", b"b"])
        self.assertEqual(_recvNow(client), b"")
        self.assertFalse(transport.dataBuffer or transport._tempDataLen)
        yield turn()
        received = b""
        while len(received) < len(b"HTTP/1.1 200 OK\r\nab"):
            received += client.recv(65536)  # blocking: the reactor cannot help
        self.assertEqual(received, b"HTTP/1.1 200 OK\r\nab")

    @inlineCallbacks
    def test_loseConnectionSendsQueued(self) -> Generator[Any, Any, None]:
        """
        Closing the connection right after a write sends what was written
        first, then closes.
        """
        accepted, client = yield self._accept()
        transport: Any = accepted.transport
        transport.write(b"last words")
        transport.loseConnection()
        yield accepted.lost
        self.assertEqual(_readToEnd(client), b"last words")

    @inlineCallbacks
    def test_writeNotBytes(self) -> Generator[Any, Any, None]:
        """
        Writing something other than bytes fails at once, in the caller, as
        with Twisted's transport, and the connection goes on working.
        """
        accepted, client = yield self._accept()
        transport: Any = accepted.transport
        self.assertRaises(TypeError, transport.write, "text")
        transport.write(b"bytes")
        yield turn()
        self.assertEqual(client.recv(65536), b"bytes")

    @inlineCallbacks
    def test_abortDiscardsQueued(self) -> Generator[Any, Any, None]:
        """
        Aborting a connection right after a write sends nothing of it: the
        client sees the connection end with no data.
        """
        accepted, client = yield self._accept()
        transport: Any = accepted.transport
        transport.write(b"never sent")
        transport.abortConnection()
        yield accepted.lost
        self.assertEqual(_readToEnd(client), b"")

    @inlineCallbacks
    def test_largeWriteArrivesWhole(self) -> Generator[Any, Any, None]:
        """
        A write larger than the kernel takes at once arrives whole and in
        order, followed by later writes: the part not sent is buffered and
        goes out before anything written after it.
        """
        accepted = _Accepted()
        port = yield TCP4ServerEndpoint(batchingSends(reactor), 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted)
        )
        self.addCleanup(port.stopListening)
        reader = _Accepted()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: reader)
        )
        yield accepted.made
        transport: Any = accepted.transport
        big = bytes(range(256)) * (128 * 1024)  # 32 MiB: more than loopback buffers hold
        transport.write(big)
        self.assertTrue(transport.dataBuffer or transport._tempDataLen)
        transport.write(b"tail")
        transport.writeSequence([b"-", b"end"])
        transport.loseConnection()
        yield reader.lost
        received = b"".join(reader.received)
        self.assertEqual(len(received), len(big) + len(b"tail-end"))
        self.assertTrue(received == big + b"tail-end")

    @inlineCallbacks
    def test_writeToResetPeer(self) -> Generator[Any, Any, None]:
        """
        Writing to a connection the peer has reset does not raise: the
        protocol learns of it through C{connectionLost}, later.
        """
        accepted, client = yield self._accept()
        assert accepted.transport is not None
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        lostDuringWrite = []
        for _ in range(3):
            accepted.transport.write(b"x" * 1024)
            lostDuringWrite.append(accepted.lost.called)
        self.assertEqual(lostDuringWrite, [False, False, False])
        yield accepted.lost
        self.assertIsInstance(accepted.reason, Failure)

    @inlineCallbacks
    def test_clientConnections(self) -> Generator[Any, Any, None]:
        """
        Outgoing connections made through the batching reactor batch their
        sends too, and their writes arrive.
        """
        accepted = _Accepted()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted)
        )
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(
            batchingSends(reactor), "127.0.0.1", port.getHost().port
        ).connect(Factory.forProtocol(Protocol))
        self.assertIsInstance(client.transport, BatchingClient)
        yield accepted.made
        client.transport.write(b"ping")
        client.transport.loseConnection()
        yield accepted.lost
        self.assertEqual(b"".join(accepted.received), b"ping")


class BatchingReactorTests(SynchronousTestCase):
    """
    L{batchingSends} wraps socket reactors only, and the wrapper is the
    reactor it wraps in every other respect.
    """

    def test_memoryReactorUnchanged(self) -> None:
        """
        An in-memory reactor (as tests use) is returned as it is.
        """
        memory = MemoryReactorClock()
        self.assertIs(batchingSends(memory), memory)

    def test_wrapperProvidesSameInterfaces(self) -> None:
        """
        The wrapper provides the wrapped reactor's interfaces and passes
        everything but TCP listening and connecting through to it.
        """
        wrapped = batchingSends(reactor)
        self.assertIsInstance(wrapped, BatchingReactor)
        self.assertTrue(IReactorTCP.providedBy(wrapped))
        self.assertTrue(IReactorTime.providedBy(wrapped))
        self.assertIs(wrapped.callLater.__self__, reactor)


PRODUCED = 8 * 1024 * 1024
PIECE = 64 * 1024


def _pattern(index: int) -> bytes:
    """
    The C{index}th piece a producer writes: distinct from its neighbours,
    so that data out of order or lost does not compare equal.
    """
    return index.to_bytes(4, "big") * (PIECE // 4)


@implementer(IPullProducer)
class _PullProducer:
    """
    Writes the next piece each time the transport asks, L{PRODUCED} bytes
    in all, then unregisters and closes the connection.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.asked = 0
        self.written = 0

    def resumeProducing(self) -> None:
        self.asked += 1
        if self.written >= PRODUCED:
            return
        self.transport.write(_pattern(self.written // PIECE))
        self.written += PIECE
        if self.written >= PRODUCED:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        pass


@implementer(IPushProducer)
class _PushProducer:
    """
    Writes pieces for as long as it is not paused, one per reactor turn
    while running, L{PRODUCED} bytes in all, then closes the connection.
    """

    def __init__(self, transport: Any, clock: IReactorTime) -> None:
        self.transport = transport
        self.clock = clock
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.written = 0
        self.firstPause: Deferred[None] = Deferred()

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        # Write until paused, as a streaming producer does.
        while not self.paused and self.written < PRODUCED:
            self.transport.write(_pattern(self.written // PIECE))
            self.written += PIECE
        if self.written >= PRODUCED:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1
        if not self.firstPause.called:
            self.firstPause.callback(None)

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self.clock.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self.paused = True


class _Reader(Protocol):
    """
    Reads everything until the connection closes; if C{slow}, stops
    reading after every megabyte until the next reactor turns.
    """

    def __init__(self, slow: bool, clock: IReactorTime) -> None:
        self.slow = slow
        self.clock = clock
        self.received: list[bytes] = []
        self._sinceBreak = 0
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self._sinceBreak += len(data)
        if self.slow and self._sinceBreak >= 1024 * 1024:
            self._sinceBreak = 0
            transport: Any = self.transport
            transport.pauseProducing()
            self.clock.callLater(0.01, transport.resumeProducing)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.done.callback(b"".join(self.received))


class ProducerContractTests(TestCase):
    """
    Producers registered on a batching connection see Twisted's contract
    on real sockets: a pull producer is asked for more each time the
    transport has sent what it had, a push producer is paused when the
    transport's buffer is full and resumed when it drains; every byte
    arrives, in order, at fast and slow readers alike.
    """

    @inlineCallbacks
    def _connect(self, slow: bool) -> Generator[Any, Any, tuple[Any, _Reader]]:
        """
        A batching server transport and the reader connected to it (on
        the plain reactor), the reader paused until the caller resumes it.
        """
        accepted = _Accepted()
        port = yield TCP4ServerEndpoint(batchingSends(reactor), 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted)
        )
        self.addCleanup(port.stopListening)
        clock: IReactorTime = reactor
        reader = _Reader(slow, clock)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: reader)
        )
        yield accepted.made
        self.assertIsInstance(accepted.transport, BatchingServer)
        return accepted.transport, reader

    def _expected(self) -> bytes:
        return b"".join(_pattern(i) for i in range(PRODUCED // PIECE))

    @inlineCallbacks
    def _pull(self, slow: bool) -> Generator[Any, Any, None]:
        transport, reader = yield self._connect(slow)
        producer = _PullProducer(transport)
        transport.registerProducer(producer, False)
        received = yield reader.done
        self.assertEqual(len(received), PRODUCED)
        self.assertTrue(received == self._expected(), "data out of order or corrupted")
        # Asked once per piece: never asked again after the last.
        self.assertEqual(producer.asked, PRODUCED // PIECE)

    def test_pullProducerFastReader(self) -> None:
        """
        A pull producer writing 8 MiB in 64 KiB pieces is asked for every
        piece, and a fast reader receives all of it, in order (it stopped
        after the first piece when batched sends bypassed doWrite).
        """
        return self._pull(slow=False)  # type: ignore[return-value]

    def test_pullProducerSlowReader(self) -> None:
        """
        The same for a reader that keeps stopping to read.
        """
        return self._pull(slow=True)  # type: ignore[return-value]

    @inlineCallbacks
    def _push(self, slow: bool) -> Generator[Any, Any, None]:
        transport, reader = yield self._connect(slow)
        reader.transport.pauseProducing()
        clock: IReactorTime = reactor
        producer = _PushProducer(transport, clock)
        producer.start()
        # The reader takes nothing yet: the transport's buffer fills and
        # the producer is paused.
        yield producer.firstPause
        self.assertLess(producer.written, PRODUCED)
        reader.transport.resumeProducing()
        received = yield reader.done
        self.assertEqual(len(received), PRODUCED)
        self.assertTrue(received == self._expected(), "data out of order or corrupted")
        self.assertGreaterEqual(producer.pauses, 1)
        # Every pause was followed by a resume (Twisted resumes only a
        # paused streaming producer).
        self.assertEqual(producer.resumes, producer.pauses)

    def test_pushProducerFastReader(self) -> None:
        """
        A push producer is paused while the reader takes nothing and
        resumed as the buffer drains; 8 MiB arrive whole and in order.
        """
        return self._push(slow=False)  # type: ignore[return-value]

    def test_pushProducerSlowReader(self) -> None:
        """
        The same for a reader that keeps stopping to read.
        """
        return self._push(slow=True)  # type: ignore[return-value]
