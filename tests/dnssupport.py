"""
Helpers for the end-to-end tests of backends from DNS
(L{tests.test_discovery}): a DNS server in the test process, on loopback
UDP, answering for a zone whose records the test changes and counting the
queries it gets; and backends that share one port on several loopback
addresses (a C{dns:NAME:PORT} source gives every address the same port).

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from typing import Any, cast

import attrs
from twisted.internet import reactor as _globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime, IReactorUDP
from twisted.names import authority, dns, server
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import STOP_DEADLINE, TrackingFactory

__all__ = ["DNSServer", "NamedBackend", "Query", "Zone", "namedBackends"]


def _time() -> IReactorTime:
    return cast(IReactorTime, _globalReactor)


def _tcp() -> IReactorTCP:
    return cast(IReactorTCP, _globalReactor)


def _udp() -> IReactorUDP:
    return cast(IReactorUDP, _globalReactor)


@attrs.frozen
class Query:
    """
    One query the server got.

    @ivar at: C{time.monotonic()} when it arrived.
    """

    name: str
    type: int
    at: float


class Zone(authority.FileAuthority):
    """
    The records of C{test.}, in memory: L{set} and L{forget} change them
    while lbproxy runs. A name it does not have is answered NXDOMAIN; a
    name without records of the type asked, with none.
    """

    soa: Any
    records: Any

    def __init__(self) -> None:
        super().__init__("test")

    def loadFile(self, filename: Any) -> None:
        self.soa = (
            b"test",
            dns.Record_SOA(mname=b"ns.test", rname=b"root.test", minimum=1, expire=1, ttl=1),
        )
        self.records = {}

    def set(self, name: str, *records: Any) -> None:
        """
        Make C{records} (C{dns.Record_A(...)} and so on) all of C{name}'s.
        """
        self.records[name.lower().encode("ascii")] = list(records)

    def forget(self, name: str) -> None:
        """
        Remove C{name} and its records.
        """
        self.records.pop(name.lower().encode("ascii"), None)


class _Factory(server.DNSServerFactory):
    """
    Answers from a L{Zone}; counts every query; answers SERVFAIL to all of
    them while C{failing}.
    """

    def __init__(self, zone: Zone) -> None:
        super().__init__(authorities=[zone])
        self.queries: list[Query] = []
        self.failing = False

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        for query in message.queries:
            self.queries.append(
                Query(query.name.name.decode("ascii"), query.type, time.monotonic())
            )
        if not self.failing:
            super().handleQuery(message, protocol, address)
            return
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode, rCode=dns.ESERVER)
        response.queries = message.queries
        response.timeReceived = message.timeReceived
        self.sendReply(protocol, response, address)


class DNSServer:
    """
    A DNS server for L{zone} on 127.0.0.1, a free UDP port, until the test
    case's cleanup.

    @ivar zone: Its records.
    @ivar port: Its UDP port.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.zone = Zone()
        self._factory = _Factory(self.zone)
        listening = _udp().listenUDP(0, dns.DNSDatagramProtocol(self._factory), "127.0.0.1", 8192)
        testCase.addCleanup(listening.stopListening)
        self.port: int = cast(IPv4Address, listening.getHost()).port

    @property
    def address(self) -> str:
        """
        C{127.0.0.1:PORT}, as C{--resolver} takes it.
        """
        return f"127.0.0.1:{self.port}"

    def fail(self, failing: bool = True) -> None:
        """
        Answer every query with SERVFAIL from now on (or stop doing so).
        """
        self._factory.failing = failing

    def queries(self, name: str, type: int = dns.A) -> list[Query]:
        """
        The queries it got for C{name}'s records of C{type}, in order.
        """
        return [q for q in self._factory.queries if (q.name, q.type) == (name, type)]


class _Named(Resource):
    """
    Answers with the backend's name (in the body and C{X-Backend}); holds
    a request whose query is C{hold} until the test releases it.
    """

    isLeaf = True

    def __init__(self, backend: NamedBackend) -> None:
        super().__init__()
        self._backend = backend

    def render(self, request: Request) -> int | bytes:
        backend = self._backend
        backend.requests += 1
        request.setHeader(b"X-Backend", backend.name.encode("ascii"))
        if request.uri.endswith(b"?hold"):
            backend.held.append(request)
            return NOT_DONE_YET
        return backend.name.encode("ascii")


class NamedBackend:
    """
    An HTTP backend in the test process on C{host:port}, until the test
    case's cleanup.

    @ivar requests: How many requests it has received.
    @ivar held: The requests it holds (C{?hold}), until L{release}.
    """

    def __init__(self, testCase: TestCase, host: str, port: int, name: str) -> None:
        self.host = host
        self.name = name
        self.requests = 0
        self.held: list[Request] = []
        site = Site(_Named(self))
        site.log = lambda request: None  # type: ignore[method-assign]
        factory = TrackingFactory(site)
        # WrappingFactory is typed as a ClientFactory, but serves as well.
        listening: IListeningPort = _tcp().listenTCP(port, factory, interface=host)  # type: ignore[arg-type]
        self.port: int = cast(IPv4Address, listening.getHost()).port

        async def stop() -> None:
            await listening.stopListening()  # type: ignore[misc]
            await factory.closeAll().addTimeout(STOP_DEADLINE, _time())

        testCase.addCleanup(stop)

    def release(self) -> None:
        """
        Answer every held request with the backend's name.
        """
        held, self.held = self.held, []
        for request in held:
            request.write(self.name.encode("ascii"))
            request.finish()




def namedBackends(testCase: TestCase, hosts: Sequence[str]) -> list[NamedBackend]:
    """
    One L{NamedBackend} on each of C{hosts}, all on the same free port,
    each named after its address (C{127.0.0.2}...).
    """
    for _ in range(50):
        first = NamedBackend(testCase, hosts[0], 0, hosts[0])
        backends = [first]
        try:
            for host in hosts[1:]:
                backends.append(NamedBackend(testCase, host, first.port, host))
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) != errno.EADDRINUSE:
                raise
            continue
        return backends
    raise RuntimeError(f"no port free on all of {', '.join(hosts)}")
