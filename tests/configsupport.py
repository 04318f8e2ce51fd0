"""
Helpers for the end-to-end tests of the config file and its reload
(L{tests.test_config}): backends that say who they are and what they
received, a client that sends any Host and headers and can keep its
connection, a load client that counts the connections it opens, and
SIGHUP reloads that wait for twistd to say how they went.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import attrs
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.support import STOP_DEADLINE, ExitResult, TrackingFactory, Twistd, startTwistd, until

__all__ = [
    "REJECTED",
    "RELOADED",
    "Answer",
    "EchoBackend",
    "KeepAlive",
    "LoadClient",
    "LoadResult",
    "Outcome",
    "Seen",
    "get",
    "refused",
    "reload",
    "startConfigured",
    "writeConfig",
]

CLIENT_TIMEOUT = 10.0
"""
Seconds a client waits on its socket before it gives up.
"""

RELOADED = "configuration reloaded from"
"""
What twistd logs once a reload has been applied.
"""

REJECTED = "configuration reload rejected, the running configuration is kept: "
"""
What twistd logs when a reload is refused, before the reason.
"""


def _time() -> IReactorTime:
    return cast(IReactorTime, _globalReactor)


def _tcp() -> IReactorTCP:
    return cast(IReactorTCP, _globalReactor)


# Backends.


@attrs.frozen
class Seen:
    """
    One request as a backend received it.

    @ivar target: The request-target.
    @ivar headers: The header fields, by lower-case name.
    """

    target: str
    headers: Mapping[str, list[str]]


class _Echo(Resource):
    """
    Answers every request with a JSON object naming the backend and
    repeating the request-target and headers it got; holds requests whose
    query is C{hold} until the test releases them.
    """

    isLeaf = True

    def __init__(self, backend: EchoBackend) -> None:
        super().__init__()
        self._backend = backend

    def render(self, request: Request) -> int | bytes:
        backend = self._backend
        target = request.uri.decode("latin-1")
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        backend.seen.append(Seen(target, headers))
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Backend", backend.name.encode("ascii"))
        request.setHeader(b"X-Internal", b"backend secret")
        body = json.dumps({"backend": backend.name, "target": target, "headers": headers})
        if target.endswith("?hold"):
            backend.held.append((request, body.encode("utf-8")))
            return NOT_DONE_YET
        return body.encode("utf-8")




class EchoBackend:
    """
    An HTTP backend in the test process, on a loopback address and a free
    port, until the test case's cleanup. Every answer is JSON
    C{{"backend": NAME, "target": ..., "headers": {...}}} with the header
    C{X-Backend: NAME} (and C{X-Internal}, for header edits to remove); a
    request whose query is C{hold} (C{/x?hold}) is held until L{release}.

    @ivar name: What it answers it is.
    @ivar seen: Every request it received, in order.
    @ivar held: The requests it holds, with the body each will get.
    """

    def __init__(self, testCase: TestCase, host: str, name: str) -> None:
        self.host = host
        self.name = name
        self.seen: list[Seen] = []
        self.held: list[tuple[Request, bytes]] = []
        site = Site(_Echo(self))
        site.log = lambda request: None  # type: ignore[method-assign]
        factory = self._factory = TrackingFactory(site)
        # WrappingFactory is typed as a ClientFactory, but serves as well.
        port: IListeningPort = _tcp().listenTCP(0, factory, interface=host)  # type: ignore[arg-type]
        self.port: int = port.getHost().port  # type: ignore[attr-defined]

        async def stop() -> None:
            await port.stopListening()  # type: ignore[misc]
            await factory.closeAll().addTimeout(STOP_DEADLINE, _time())

        testCase.addCleanup(stop)

    @property
    def authority(self) -> str:
        """
        C{host:port}, as a pool's C{backends} takes it.
        """
        return f"{self.host}:{self.port}"

    def count(self) -> int:
        """
        How many requests it has received.
        """
        return len(self.seen)

    def connections(self) -> int:
        """
        How many connections to it are open now.
        """
        return len(self._factory.protocols)

    def release(self) -> None:
        """
        Answer every held request.
        """
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()


# Config files and reloads.


def writeConfig(path: str, text: str) -> None:
    """
    Replace the file at C{path} with C{text}, atomically: a reader sees the
    old file or the new one, never part of it.
    """
    temporary = path + ".new"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


async def startConfigured(
    testCase: TestCase, directory: str, text: str, extra: Iterable[str] = ()
) -> tuple[Twistd, str]:
    """
    Write C{text} as C{lbproxy.toml} in C{directory} and start
    C{twistd lbproxy --config lbproxy.toml EXTRA} there; return the
    process and the file's path once it is listening.
    """
    path = os.path.join(directory, "lbproxy.toml")
    writeConfig(path, text)
    process = await startTwistd(testCase, ["--config", "lbproxy.toml", *extra], directory)
    return process, path


async def reload(process: Twistd, path: str, text: str) -> str:
    """
    Write C{text} into the config file at C{path}, send twistd SIGHUP and
    wait until it logs that the reload was applied or rejected; return
    that line.

    @raise AssertionError: If twistd exits instead.
    """
    applied = process.out.count(RELOADED)
    rejected = process.out.count(REJECTED)
    gone: list[ExitResult] = []
    watching = ensureDeferred(process.exited())
    watching.addCallbacks(gone.append, lambda failure: None)
    writeConfig(path, text)
    process.signal("HUP")
    try:
        await until(
            lambda: (
                process.out.count(RELOADED) > applied
                or process.out.count(REJECTED) > rejected
                or bool(gone)
            ),
            "twistd to apply or reject the reload",
        )
    finally:
        watching.cancel()
    if gone:
        raise AssertionError(f"twistd exited on SIGHUP instead of reloading: {gone[0]}")
    lines = [line for line in process.out.splitlines() if RELOADED in line or REJECTED in line]
    return lines[-1]


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether a connection to C{host:port} is refused now.
    """
    with socket.socket() as s:
        s.settimeout(CLIENT_TIMEOUT)
        return s.connect_ex((host, port)) != 0


# Clients.


@attrs.frozen
class Answer:
    """
    A response as a client got it.

    @ivar headers: Its header fields, by lower-case name.
    """

    status: int
    headers: Mapping[str, list[str]]
    body: bytes

    @property
    def backend(self) -> str | None:
        """
        The backend that answered (its C{X-Backend}), if one did.
        """
        values = self.headers.get("x-backend")
        return values[0] if values else None

    def echo(self) -> dict[str, Any]:
        """
        What the backend said it received (its JSON body).
        """
        value: dict[str, Any] = json.loads(self.body)
        return value


def _exchange(
    connection: http.client.HTTPConnection, target: str, headers: Mapping[str, str]
) -> Answer:
    connection.request("GET", target, headers=dict(headers))
    response = connection.getresponse()
    body = response.read()
    fields: dict[str, list[str]] = {}
    for name, value in response.getheaders():
        fields.setdefault(name.lower(), []).append(value)
    return Answer(response.status, fields, body)


def _getOnce(port: int, target: str, headers: Mapping[str, str]) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        return _exchange(connection, target, headers)
    finally:
        connection.close()


def get(
    port: int, target: str = "/", host: str | None = None, headers: Mapping[str, str] = {}
) -> Deferred[Answer]:
    """
    GET C{target} from C{127.0.0.1:port} on a new connection (closed
    after), with C{Host: host} when given and C{headers}, with Python's
    C{http.client} in a thread.
    """
    fields = dict(headers)
    if host is not None:
        fields["Host"] = host
    return deferToThread(_getOnce, port, target, fields)


class KeepAlive:
    """
    One client connection kept open between requests (C{http.client}, in
    threads, one request at a time), closed by the test case's cleanup.
    """

    def __init__(self, testCase: TestCase, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        self._local: tuple[str, int] | None = None
        testCase.addCleanup(self._connection.close)

    @property
    def local(self) -> tuple[str, int] | None:
        """
        The client's address of the connection the last request went on.
        """
        return self._local

    def _get(self, target: str, headers: Mapping[str, str]) -> Answer:
        answer = _exchange(self._connection, target, headers)
        sock = self._connection.sock
        self._local = None if sock is None else sock.getsockname()
        return answer

    def get(self, target: str = "/", host: str | None = None) -> Deferred[Answer]:
        """
        GET C{target} on this connection (opening it if it is not open).
        """
        fields = {} if host is None else {"Host": host}
        return deferToThread(self._get, target, fields)


# A load of keep-alive requests.


@attrs.frozen
class Outcome:
    """
    One request of a load: what was asked, when, and how it went.

    @ivar sent: C{time.monotonic()} when it was sent.
    @ivar answered: C{time.monotonic()} when its response ended (or it
        failed).
    @ivar status: The response's status, or L{None} if it failed.
    @ivar backend: The backend that answered, if one did.
    @ivar error: Why it failed, if it did.
    """

    target: str
    sent: float
    answered: float
    status: int | None
    backend: str | None
    error: str | None


@attrs.frozen
class LoadResult:
    """
    How a load went.

    @ivar outcomes: Every request's, in the order they ended.
    @ivar opened: The TCP connections the client opened.
    @ivar seconds: How long it took.
    """

    outcomes: list[Outcome]
    opened: int
    seconds: float


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    def __init__(self, client: LoadClient, port: int) -> None:
        self._client = client
        self._endpoint = TCP4ClientEndpoint(_globalReactor, "127.0.0.1", port, timeout=10)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._client.opened += 1
        return self._endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, client: LoadClient, port: int) -> None:
        self._client = client
        self._port = port

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return _CountingEndpoint(self._client, self._port)


def _describe(error: BaseException) -> str:
    """
    An error of Twisted's HTTP client, with the failures it wraps.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = ", ".join(f"{type(r.value).__name__}: {r.value}" for r in reasons)
        return f"{type(error).__name__}({inner})"
    return f"{type(error).__name__}: {error}"


class LoadClient:
    """
    Twisted's HTTP client with a pool of persistent connections to
    C{127.0.0.1:port}, at most C{connections} of them, and no automatic
    retry (a request lost with its connection is a failure, not hidden);
    a request not answered within L{CLIENT_TIMEOUT} seconds fails.

    @ivar opened: How many TCP connections it has opened.
    @ivar done: How many requests have ended.
    """

    def __init__(self, testCase: TestCase, port: int, connections: int) -> None:
        self.opened = 0
        self.done = 0
        self._port = port
        self._connections = connections
        self._pool = HTTPConnectionPool(_globalReactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._pool.retryAutomatically = False
        self._agent = Agent.usingEndpointFactory(_globalReactor, _Endpoints(self, port), self._pool)
        testCase.addCleanup(self._pool.closeCachedConnections)

    async def _one(self, target: str) -> Outcome:
        sent = time.monotonic()
        url = f"http://127.0.0.1:{self._port}{target}".encode("ascii")
        try:
            requesting = self._agent.request(b"GET", url, Headers())
            response = await requesting.addTimeout(CLIENT_TIMEOUT, _time())
            await readBody(response).addTimeout(CLIENT_TIMEOUT, _time())
        except Exception as e:
            self.done += 1
            return Outcome(target, sent, time.monotonic(), None, None, _describe(e))
        self.done += 1
        backends = response.headers.getRawHeaders(b"x-backend") or []
        backend = backends[0].decode("ascii") if backends else None
        return Outcome(target, sent, time.monotonic(), response.code, backend, None)

    async def run(self, targets: list[str], deadline: float) -> LoadResult:
        """
        Send one request for each of C{targets}, C{connections} at a time
        (each of them one after the other on its connection); stop
        starting new ones after C{deadline} seconds.
        """
        started = time.monotonic()
        outcomes: list[Outcome] = []
        pending = iter(targets)

        async def worker() -> None:
            for target in pending:
                if time.monotonic() - started > deadline:
                    return
                outcomes.append(await self._one(target))

        await gatherResults([ensureDeferred(worker()) for _ in range(self._connections)])
        return LoadResult(outcomes, self.opened, time.monotonic() - started)
