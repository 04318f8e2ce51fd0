"""
TCP transports that send at once.

Twisted's TCP transport never sends from C{write()}: it appends to a buffer
and asks the reactor to watch the socket for writability; the next reactor
iteration sends, and then stops watching. For a proxy that writes one small
message per read on each side, that is two C{epoll_ctl} calls and one extra
event dispatch per write, and the profile of lbproxy shows the reactor's
share of each request at 40 %.

The transports here try C{send()} first when nothing is buffered, and fall
back to Twisted's buffered path for what the kernel does not take at once.
Errors are never raised or reported from C{write()}: a failed C{send()}
leaves the data to the buffered path, whose next C{doWrite} finds the error
and reports the connection lost the usual way, so no protocol sees a
callback from inside its own C{write()} call.

L{WriteThroughReactor} hands these transports to code that takes a
reactor: endpoints built on it (C{TCP4ServerEndpoint}, C{HostnameEndpoint},
C{AdoptedStreamServerEndpoint}) listen and connect with them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from zope.interface import directlyProvides, providedBy


class _WriteThrough:
    """
    Mixed into a L{tcp.Connection}: C{write} sends directly while the
    write buffer is empty.
    """

    socket: socket.socket
    connected: int
    disconnecting: int
    dataBuffer: bytes
    _tempDataLen: int
    _writeDisconnected: bool

    def write(self, data: bytes) -> None:
        if (
            data
            and not self._tempDataLen
            and not self.dataBuffer
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
        ):
            try:
                sent = self.socket.send(data)
            except OSError:
                # EAGAIN and the like: the buffered path waits for room.
                # Anything else: the buffered path's send fails the same
                # way and reports the connection lost from doWrite.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if not self._tempDataLen and not self.dataBuffer:
            self.write(b"".join(iovec))
        else:
            super().writeSequence(iovec)  # type: ignore[misc]


class WriteThroughServer(_WriteThrough, tcp.Server):
    """
    An accepted TCP connection that sends at once when it can.
    """


class WriteThroughClient(_WriteThrough, tcp.Client):
    """
    An outgoing TCP connection that sends at once when it can.
    """


class WriteThroughPort(tcp.Port):
    """
    A listening TCP port whose connections are L{WriteThroughServer}s.
    """

    transport = WriteThroughServer


class WriteThroughConnector(tcp.Connector):
    """
    A TCP connector whose connections are L{WriteThroughClient}s.
    """

    def _makeTransport(self) -> WriteThroughClient:
        return WriteThroughClient(self.host, self.port, self.bindAddress, self, self.reactor)


class WriteThroughReactor:
    """
    A reactor that is the given one, except that its TCP ports and
    connections use the write-through transports. Provides every interface
    the wrapped reactor provides.
    """

    def __init__(self, reactor: PosixReactorBase) -> None:
        self._reactor = reactor
        directlyProvides(self, *providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> WriteThroughPort:
        listening = WriteThroughPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> WriteThroughConnector:
        connector = WriteThroughConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return self._reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
        listening = WriteThroughPort._fromListeningDescriptor(
            self._reactor, fileDescriptor, addressFamily, factory
        )
        listening.startListening()
        return listening


def writeThrough(reactor: Any) -> Any:
    """
    C{reactor} with write-through TCP transports if it is one of Twisted's
    socket reactors (epoll, poll, select); any other (a test's
    C{MemoryReactor}, say) is returned unchanged.
    """
    if isinstance(reactor, PosixReactorBase):
        return WriteThroughReactor(reactor)
    return reactor


__all__ = [
    "WriteThroughClient",
    "WriteThroughConnector",
    "WriteThroughPort",
    "WriteThroughReactor",
    "WriteThroughServer",
    "writeThrough",
]
