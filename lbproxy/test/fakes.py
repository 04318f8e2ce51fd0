"""
Test doubles that are real servers: twisted.web backends on loopback port 0
that record what they received, a proxy listening on loopback, and a raw
HTTP client connection.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import attrs
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from lbproxy._twisted.transport import batchingSends
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import EdgeLimits, ProxySite
from lbproxy.interfaces import IChooser
from lbproxy.proxy import OutcomeObserver, ProxySettings, ReverseProxyResource
from lbproxy.upstream.backends import Backend, BackendPool
from lbproxy.upstream.pool import EndpointForBackend, Upstream, UpstreamSettings
from lbproxy.upstream.retry import RetryBudget

reactor = _globalReactor


@implementer(IChooser)
class FirstAvailable:
    """
    A chooser that always picks the first backend it is given: tests of
    retries then know exactly where each attempt goes.
    """

    def choose(self, backends: Sequence[Backend], request: object) -> Backend | None:
        return backends[0] if backends else None


@attrs.frozen
class Received:
    """
    One request as a backend saw it.
    """

    method: bytes
    uri: bytes
    headers: list[tuple[bytes, list[bytes]]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        """
        All values of header C{name} (case-insensitive).
        """
        for key, values in self.headers:
            if key.lower() == name.lower():
                return values
        return []


Handler = Callable[[Request], "bytes | int"]


class RecordingResource(Resource):
    """
    A backend resource that records every request and answers with
    C{handler(request)} (default: its name as the body).
    """

    isLeaf = True

    def __init__(self, name: bytes, handler: Handler | None = None) -> None:
        super().__init__()
        self.name = name
        self.received: list[Received] = []
        self.arrived: list[Deferred[Request]] = []
        self.handler = handler

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.received.append(
            Received(
                method=request.method,
                uri=request.uri,
                headers=[(k, list(v)) for k, v in request.requestHeaders.getAllRawHeaders()],
                body=request.content.read(),
            )
        )
        result = self.handler(request) if self.handler is not None else self.name
        waiters, self.arrived = self.arrived, []
        for waiter in waiters:
            waiter.callback(request)
        return result

    def nextRequest(self) -> Deferred[Request]:
        """
        Fires with the next request this backend receives.
        """
        d: Deferred[Request] = Deferred()
        self.arrived.append(d)
        return d


class CountingSite(Site):
    """
    A site that counts the TCP connections it accepted.
    """

    connections = 0

    def buildProtocol(self, addr: object) -> object:  # type: ignore[override]
        self.connections += 1
        channel = super().buildProtocol(addr)
        self.channels.append(channel)
        return channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channels: list[Any] = []

    def dropConnections(self) -> None:
        """
        Abort every connection this site accepted, as if the process died.
        """
        for channel in self.channels:
            # Site wraps each HTTPChannel in a protocol-negotiating wrapper.
            transport = getattr(channel, "_channel", channel).transport
            if transport is not None:
                transport.abortConnection()


@attrs.define
class RunningBackend:
    """
    A backend server listening on loopback, and its L{Backend} entry.
    """

    resource: RecordingResource
    site: CountingSite
    port: IListeningPort
    backend: Backend


@inlineCallbacks
def startBackend(
    case: TestCase,
    name: bytes,
    handler: Handler | None = None,
    interface: str = "127.0.0.1",
) -> Generator[Any, Any, RunningBackend]:
    """
    Start a recording backend on C{interface} port 0; stopped at cleanup.
    """
    resource = RecordingResource(name, handler)
    site = CountingSite(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    port = yield TCP4ServerEndpoint(reactor, 0, interface=interface).listen(site)
    case.addCleanup(port.stopListening)
    backend = Backend(host=interface, port=port.getHost().port)
    return RunningBackend(resource, site, port, backend)


@attrs.define
class RunningProxy:
    """
    A proxy listening on loopback.
    """

    port: IListeningPort
    pool: BackendPool
    site: ProxySite
    lines: list[str]

    @property
    def portNumber(self) -> int:
        return self.port.getHost().port  # type: ignore[attr-defined,no-any-return]

    def url(self, path: bytes = b"/") -> bytes:
        return b"http://127.0.0.1:%d%s" % (self.portNumber, path)


@inlineCallbacks
def startProxy(
    case: TestCase,
    backends: list[Backend],
    chooser: IChooser | None = None,
    settings: ProxySettings | None = None,
    upstreamSettings: UpstreamSettings | None = None,
    clock: IReactorTime | None = None,
    maxBodySize: int = 100 * 1024 * 1024,
    limits: EdgeLimits | None = None,
    endpointFor: EndpointForBackend | None = None,
    outcomes: OutcomeObserver | None = None,
    budget: RetryBudget | None = None,
) -> Generator[Any, Any, RunningProxy]:
    """
    Start an lbproxy site on loopback port 0 over C{backends}, with an
    access log collected in C{lines}; stopped at cleanup.
    """
    timers = clock if clock is not None else reactor
    network = batchingSends(reactor)  # the transports the service uses
    lines: list[str] = []
    pool = BackendPool(list(backends))
    upstream = Upstream(network, timers, upstreamSettings or UpstreamSettings(), endpointFor)
    case.addCleanup(upstream.close)
    resource = ReverseProxyResource(
        pool,
        chooser or RoundRobinChooser(),
        upstream,
        timers,
        settings or ProxySettings(),
        outcomes=outcomes,
        budget=budget,
    )
    site = ProxySite(
        resource,
        AccessLog(lines.append),
        limits if limits is not None else EdgeLimits(maxBodySize=maxBodySize),
        reactor=timers,
    )
    port = yield TCP4ServerEndpoint(network, 0, interface="127.0.0.1").listen(site)
    case.addCleanup(port.stopListening)
    return RunningProxy(port, pool, site, lines)


@inlineCallbacks
def get(
    case: TestCase,
    url: bytes,
    method: bytes = b"GET",
    headers: Headers | None = None,
    pool: HTTPConnectionPool | None = None,
) -> Generator[Any, Any, tuple[IResponse, bytes]]:
    """
    Make one request with twisted.web's client; return response and body.
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    response = yield agent.request(method, url, headers)
    body = yield readBody(response)
    return response, body


DEADLINE = 10.0
"""
Seconds (on the real reactor's clock) a test waits for loopback sockets to
deliver before it fails: far more than they ever need.
"""


def turn() -> Deferred[None]:
    """
    Let the real reactor run once: what loopback sockets have ready is
    delivered.
    """
    return deferLater(reactor, 0, lambda: None)


@inlineCallbacks
def until(
    condition: Callable[[], object], what: str = "the condition", deadline: float = DEADLINE
) -> Generator[Any, Any, None]:
    """
    The one poll of the unit tests, for state that has no Deferred to wait
    on: run the real reactor, a turn at a time, until C{condition()} holds;
    fail naming C{what} after C{deadline} seconds.
    """
    clock: IReactorTime = reactor
    giveUp = clock.seconds() + deadline
    while not condition():
        if clock.seconds() > giveUp:
            raise AssertionError(f"timed out waiting for {what}")
        yield turn()


class RawClient(Protocol):
    """
    A client connection that sends bytes as given and collects everything
    it receives; C{closed} fires when the connection ends, and C{reason}
    says how.
    """

    reason: Failure | None = None

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self.waiting: list[tuple[bytes, int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        waiting, self.waiting = self.waiting, []
        for marker, count, d in waiting:
            if self.data.count(marker) >= count:
                d.callback(self.data)
            else:
                self.waiting.append((marker, count, d))

    def until(self, marker: bytes, count: int = 1) -> Deferred[bytes]:
        """
        Fires with all data received once it contains C{marker} (at least
        C{count} times); fails with L{TimeoutError} after L{DEADLINE}
        seconds.
        """
        d: Deferred[bytes] = Deferred()
        if self.data.count(marker) >= count:
            d.callback(self.data)
            return d
        self.waiting.append((marker, count, d))
        return d.addTimeout(DEADLINE, reactor)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.reason = reason
        self.closed.callback(None)


@inlineCallbacks
def rawConnect(case: TestCase, portNumber: int) -> Generator[Any, Any, RawClient]:
    """
    Open a raw TCP connection to the proxy; closed at cleanup.
    """
    client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber).connect(
        Factory.forProtocol(RawClient)
    )

    def close() -> Deferred[None]:
        if client.transport is not None and client.transport.connected:
            client.transport.abortConnection()
        closed: Deferred[None] = client.closed
        return closed

    case.addCleanup(close)
    return client  # type: ignore[no-any-return]


class Scripted(Protocol):
    """
    A fake backend server connection that runs C{script(self)} on the
    first bytes it receives; C{received} holds everything it was sent.
    """

    def __init__(self, script: Callable[[Scripted], None]) -> None:
        self.script = script
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        first = not self.received
        self.received += data
        if first:
            self.script(self)


def answer(data: bytes, close: bool = True) -> Callable[[Scripted], None]:
    """
    A script that writes C{data} (anything, valid HTTP or not) and then
    closes the connection, unless C{close} is false.
    """

    def script(protocol: Scripted) -> None:
        transport: Any = protocol.transport
        transport.write(data)
        if close:
            transport.loseConnection()

    return script


def reset(protocol: Scripted) -> None:
    """
    A script that resets the connection as soon as a request arrives.
    """
    transport: Any = protocol.transport
    transport.abortConnection()


@attrs.define
class ScriptedBackend:
    """
    A scripted fake backend and the connections it accepted.
    """

    backend: Backend
    connections: list[Scripted]


@inlineCallbacks
def startScripted(
    case: TestCase, script: Callable[[Scripted], None]
) -> Generator[Any, Any, ScriptedBackend]:
    """
    Start a backend on loopback port 0 whose every connection runs
    C{script}; stopped at cleanup.
    """
    connections: list[Scripted] = []

    def build() -> Scripted:
        protocol = Scripted(script)
        connections.append(protocol)
        return protocol

    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(build)
    )
    case.addCleanup(port.stopListening)
    return ScriptedBackend(Backend("127.0.0.1", port.getHost().port), connections)


class RecordedReading:
    """
    A client's reading control (see L{lbproxy.upstream.body.ReadingControl})
    that records why reading is paused.
    """

    def __init__(self) -> None:
        self.paused: set[str] = set()

    def pauseReading(self, reason: str) -> None:
        self.paused.add(reason)

    def resumeReading(self, reason: str) -> None:
        self.paused.discard(reason)


class CollectedBody(Protocol):
    """
    Collects a response body delivered to it (C{deliverBody}) and how it
    ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.reason = reason
