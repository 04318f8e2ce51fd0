"""
The floor: the least a Twisted proxy can do per request on this machine,
to compare lbproxy's CPU per request with (see docs/benchmarks.md,
"Where a request's time goes now").

Each client connection gets its own backend connection; every client read
is written to the backend as it is, every backend read to the client as it
is: no HTTP parsing, no choosing, no headers. Plain TCP, the default
reactor. Not a proxy anyone should run.

    taskset -c 0 python bench/floor.py 18082 127.0.0.2 18080 &
    taskset -c 1 wrk -t1 -c64 -d6 http://127.0.0.1:18082/

Listens on 127.0.0.1 only; stop it by its PID.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol


class Back(protocol.Protocol):
    """
    The backend side: what the backend sends goes to the client.
    """

    def __init__(self, front: Front) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        self.front.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        if self.front.transport is not None:
            self.front.transport.loseConnection()


class Front(protocol.Protocol):
    """
    The client side: what the client sends goes to its backend connection.
    """

    back: Back | None = None
    pending = b""
    backend: tuple[str, int] = ("127.0.0.2", 80)

    def connectionMade(self) -> None:
        endpoint = TCP4ClientEndpoint(reactor, *self.backend)
        connectProtocol(endpoint, Back(self)).addCallback(self._connected)

    def _connected(self, back: Back) -> None:
        self.back = back
        if self.pending:
            back.transport.write(self.pending)  # type: ignore[union-attr]
            self.pending = b""

    def dataReceived(self, data: bytes) -> None:
        if self.back is None:
            self.pending += data
        else:
            self.back.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        if self.back is not None and self.back.transport is not None:
            self.back.transport.loseConnection()


def main(port: int, backendHost: str, backendPort: int) -> None:
    """
    Listen on 127.0.0.1:C{port}, relaying to C{backendHost:backendPort}.
    """
    Front.backend = (backendHost, backendPort)
    reactor.listenTCP(port, protocol.Factory.forProtocol(Front), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
