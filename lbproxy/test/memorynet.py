"""
An in-memory network for whole conversations through the proxy, with
every timer on one L{MemoryReactorClock}: real twisted.web backends (a
L{RecordingResource} behind a L{Site}), the proxy's own L{ProxySite} and
upstream connections, and a real HTTP client (twisted.web's L{Agent}),
joined by Twisted's in-memory pumps (C{twisted.test.iosim}, as treq's
C{RequestTraversalAgent} joins its client and server). Nothing touches a
socket, so the tests that use it are synchronous: send, L{flush}, look.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, IOPump
from twisted.test.iosim import connect as pumpBetween
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import ProxySite
from lbproxy.test.fakes import Handler, RecordingResource
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.pool import Upstream, UpstreamSettings

CLIENT = IPv4Address("TCP", "192.0.2.7", 50000)
"""
Where every client connection comes from.
"""


class MemoryTransport(FakeTransport):
    """
    An in-memory transport that remembers whether it was aborted (iosim's
    own treats an abort as a close).
    """

    aborted = False
    peer: MemoryTransport | None = None

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    @property
    def abortedByPeer(self) -> bool:
        """
        Whether the other end aborted the connection (rather than closed
        it).
        """
        return self.peer is not None and self.peer.aborted


@attrs.define
class MemoryBackend:
    """
    A twisted.web backend on the in-memory network.

    @ivar backend: Its entry for a pool's configuration (a template: a
        balancer's live pool has its own L{Backend} objects).
    @ivar resource: Records what it received; answers with its name
        unless the test holds requests (L{hold}).
    @ivar connections: The server side of each connection it accepted
        (the proxy's side is its C{peer}).
    @ivar held: Requests it received while holding, not yet answered.
    """

    backend: Backend
    resource: RecordingResource
    site: Site
    connections: list[MemoryTransport] = attrs.Factory(list)
    held: list[Request] = attrs.Factory(list)
    holding: bool = False

    def hold(self) -> None:
        """
        Keep the requests that arrive from now on unanswered, in L{held}.
        """
        self.holding = True

    def release(self) -> None:
        """
        Answer requests at once again (those already held stay held).
        """
        self.holding = False

    def open(self) -> list[MemoryTransport]:
        """
        The server side of its connections that are still open.
        """
        return [t for t in self.connections if not t.disconnected]


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _Endpoint:
    network: MemoryNetwork
    connectTo: Callable[[], tuple[Site, list[MemoryTransport]] | None]

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        found = self.connectTo()
        if found is None:
            return fail(ConnectionRefusedError("nothing listens there"))
        site, connections = found
        return succeed(self.network.join(site, protocolFactory, connections))


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _ToSite:
    endpoint: _Endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self.endpoint


@attrs.frozen
class Answer:
    """
    A response as the client received it.
    """

    code: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        """
        All values of header C{name}.
        """
        return list(self.headers.getRawHeaders(name, []))


class _Collect(Protocol):
    """
    A raw client connection: collects all it receives.
    """

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class MemoryNetwork:
    """
    Backends, the proxy's upstream connections and clients, in memory.

    @ivar clock: The one clock: the proxy's, the backends' and the pumps'.
    """

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)
        self.backends: dict[tuple[str, int], MemoryBackend] = {}
        self._pumps: list[IOPump] = []
        self.accessLog: list[str] = []

    def backend(
        self,
        name: bytes,
        host: str = "10.0.0.1",
        port: int = 80,
        respond: Handler | None = None,
    ) -> MemoryBackend:
        """
        Start a backend at C{host:port} that answers with C{name}, or with
        what C{respond(request)} returns.
        """
        server: MemoryBackend

        def handler(request: Request) -> bytes | int:
            if server.holding:
                server.held.append(request)
                return NOT_DONE_YET
            return name if respond is None else respond(request)

        resource = RecordingResource(name, handler)
        site = Site(resource, reactor=self.clock)
        site.log = lambda request: None  # type: ignore[method-assign]
        server = MemoryBackend(Backend(host, port), resource, site)
        self.backends[(host, port)] = server
        return server

    def endpointFor(self, host: str, port: int) -> IStreamClientEndpoint:
        """
        How the proxy's upstream reaches the backend at C{host:port}
        (refused when there is none).
        """

        def find() -> tuple[Site, list[MemoryTransport]] | None:
            server = self.backends.get((host, port))
            return None if server is None else (server.site, server.connections)

        return _Endpoint(self, find)

    def upstream(self, settings: UpstreamSettings) -> Upstream:
        """
        A pool's backend connections over this network (a balancer's
        C{makeUpstream}).
        """
        return Upstream(self.clock, self.clock, settings, self.endpointFor)

    def proxySite(self, resource: Any) -> ProxySite:
        """
        The proxy's site in front of C{resource}, its access log in
        L{accessLog}.
        """
        return ProxySite(resource, AccessLog(self.accessLog.append), reactor=self.clock)

    def join(
        self,
        site: Any,
        clientFactory: IProtocolFactory,
        connections: list[MemoryTransport] | None = None,
    ) -> IProtocol:
        """
        Connect a client built by C{clientFactory} to C{site}; return the
        client's protocol.
        """
        server = site.buildProtocol(CLIENT)
        client = clientFactory.buildProtocol(CLIENT)
        serverTransport = MemoryTransport(server, isServer=True, peerAddress=CLIENT)
        clientTransport = MemoryTransport(client, isServer=False, hostAddress=CLIENT)
        serverTransport.peer, clientTransport.peer = clientTransport, serverTransport
        if connections is not None:
            connections.append(serverTransport)
        self._pumps.append(
            pumpBetween(
                server, serverTransport, client, clientTransport, greet=False, clock=self.clock
            )
        )
        assert client is not None
        return client

    def flush(self) -> None:
        """
        Deliver everything written, both ways on every connection, and
        every close, until nothing moves (timers due now run too; none
        later).
        """
        for _ in range(1000):
            moved = False
            for pump in list(self._pumps):
                if pump.pump():
                    moved = True
            self._pumps = [
                p for p in self._pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)
            ]
            if not moved:
                return
        raise AssertionError("the in-memory network never went quiet")

    def request(
        self,
        site: Any,
        method: bytes,
        url: bytes,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Deferred[Answer]:
        """
        Send one request to C{site} with twisted.web's client (a
        connection of its own); fires with the whole answer once the
        network has been L{flush}ed.
        """
        agent = Agent.usingEndpointFactory(
            self.clock,
            _ToSite(_Endpoint(self, lambda: (site, []))),
            HTTPConnectionPool(self.clock, persistent=False),
        )
        d: Deferred[Any] = agent.request(method, url, Headers(headers or {}))

        def read(response: Any) -> Deferred[Answer]:
            body: Deferred[bytes] = readBody(response)
            return body.addCallback(lambda data: Answer(response.code, response.headers, data))

        answered: Deferred[Answer] = d.addCallback(read)
        return answered

    def raw(self, site: Any, data: bytes) -> _Collect:
        """
        Open a client connection to C{site} and send C{data} as it is;
        what comes back is in the result's C{data} once the network has
        been L{flush}ed.
        """
        client = self.join(site, Factory.forProtocol(_Collect))
        assert isinstance(client, _Collect)
        client.transport.write(data)  # type: ignore[union-attr]
        return client


__all__ = ["CLIENT", "Answer", "MemoryBackend", "MemoryNetwork", "MemoryTransport"]
