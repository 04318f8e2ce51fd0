"""
Tests for L{lbproxy._twisted.reactor}: the epoll reactor without the
per-event log context, on real loopback sockets; and Twisted's own
reactor conformance tests for TCP, run against it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import protocol
from twisted.internet.test import test_core, test_tcp
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lbproxy._twisted.reactor import LeanEPollReactor, installPreferred, logPrefixOf
from lbproxy.cli.options import preferLeanReactor

_LEAN = "lbproxy._twisted.reactor.LeanEPollReactor"


def _noContextPrefix(self: object) -> None:
    raise SkipTest(
        "by design: a legacy log.msg inside dataReceived is not tagged with "
        "the protocol's log prefix (unhandled errors are: test_errorLoggedWithPrefix)"
    )


def _conformance(builder: type) -> dict[str, type]:
    """
    Twisted's test cases of C{builder}, made for L{LeanEPollReactor} only.
    """
    overrides: dict[str, object] = {"_reactors": [_LEAN]}
    if hasattr(builder, "test_logPrefix"):
        overrides["test_logPrefix"] = _noContextPrefix
    lean = type(builder.__name__, (builder,), overrides)
    return lean.makeTestCaseClasses()  # type: ignore[attr-defined, no-any-return]


for _builder in (
    test_core.SystemEventTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
):
    globals().update(_conformance(_builder))


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if data == b"boom":
            raise ValueError("a bug in dataReceived")
        self.transport.write(data)


class _Prefixed(protocol.Protocol):
    def logPrefix(self) -> str:
        return "EchoChannel,7"


def _serve(reactor: LeanEPollReactor) -> int:
    factory = protocol.Factory.forProtocol(_Echo)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return int(port.getHost().port)


def _iterate(reactor: LeanEPollReactor, done: Callable[[], bool]) -> None:
    """
    Run C{reactor}'s loop one turn at a time (at most 200 turns of at most
    50 ms) until C{done()}.
    """
    for _ in range(200):
        if done():
            return
        reactor.runUntilCurrent()
        reactor.doIteration(0.05)
    raise AssertionError("the reactor did not get there in 200 turns")


def _recvAll(client: socket.socket, size: int, reactor: LeanEPollReactor) -> bytes:
    got = b""

    def enough() -> bool:
        nonlocal got
        try:
            got += client.recv(65536)
        except BlockingIOError:
            pass
        return len(got) >= size

    _iterate(reactor, enough)
    return got


class LeanDispatchTests(SynchronousTestCase):
    """
    L{LeanEPollReactor} serves real loopback connections as Twisted's
    epoll reactor does, and logs an unhandled error with the connection's
    log prefix.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self._tearDown)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def _tearDown(self) -> None:
        reactor: Any = self.reactor
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor.disconnectAll()
        for port in list(reactor.getReaders()):
            reactor.removeReader(port)
            port.connectionLost(None)
        reactor._poller.close()

    def _connect(self) -> socket.socket:
        port = _serve(self.reactor)
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        self.addCleanup(client.close)
        return client

    def test_echo(self) -> None:
        """
        Data sent over a loopback connection is read and answered, 1 MiB
        of it too.
        """
        client = self._connect()
        client.sendall(b"hello")
        self.assertEqual(_recvAll(client, 5, self.reactor), b"hello")
        big = bytes(range(256)) * 4096
        sent = 0

        def sendSome() -> bool:
            nonlocal sent
            try:
                sent += client.send(big[sent : sent + 65536])
            except BlockingIOError:
                pass
            return sent == len(big)

        got = b""

        def pump() -> bool:
            nonlocal got
            sendSome()
            try:
                got += client.recv(1 << 20)
            except BlockingIOError:
                pass
            return len(got) == len(big)

        _iterate(self.reactor, pump)
        self.assertEqual(got, big)

    def test_errorLoggedWithPrefix(self) -> None:
        """
        An exception out of C{dataReceived} drops that connection and is
        logged tagged with the connection's log prefix, as Twisted's
        reactor tags it; another connection is served on.
        """
        broken = self._connect()
        other = self._connect()
        broken.sendall(b"boom")

        def closed() -> bool:
            try:
                return broken.recv(10) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True

        _iterate(self.reactor, closed)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        systems = [e["system"] for e in self.events if e.get("isError") and e.get("failure")]
        self.assertEqual(len(systems), 1)
        self.assertTrue(systems[0].startswith("_Echo,"), systems)
        other.sendall(b"still here")
        self.assertEqual(_recvAll(other, 10, self.reactor), b"still here")

    def test_buggyLogPrefix(self) -> None:
        """
        A log prefix that raises is named as buggy, as Twisted names it.
        """

        class Buggy:
            def logPrefix(self) -> str:
                raise RuntimeError("no")

        self.assertEqual(logPrefixOf(Buggy()), "(buggy logPrefix method)")
        self.assertEqual(logPrefixOf(_Prefixed()), "EchoChannel,7")


class InstallTests(SynchronousTestCase):
    """
    lbproxy installs its reactor only where none is installed yet.
    """

    def test_leavesInstalledReactor(self) -> None:
        """
        With a reactor already installed (trial's), neither
        L{installPreferred} nor the options' L{preferLeanReactor} replaces
        it.
        """
        from twisted.internet import reactor

        self.assertFalse(installPreferred())
        preferLeanReactor()
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
