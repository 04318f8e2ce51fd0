"""
Helpers for the end-to-end tests of the admin API (L{tests.test_admin}): a
client of the admin API (TCP or a unix socket, with or without a token),
backends that count the requests they get and can hold some open, a
bounded load over keep-alive connections, and a C{twistd lbproxy} started
with C{--admin}.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

import attrs
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorFromThreads,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import (
    REQUEST_TIMEOUT,
    STOP_DEADLINE,
    TrackingFactory,
    Twistd,
    freePort,
    startTwistd,
)

__all__ = [
    "AdminAnswer",
    "AdminClient",
    "AdminProxy",
    "CountingBackend",
    "Load",
    "eventually",
    "startAdminProxy",
    "startCountingBackend",
]


def _time() -> IReactorTime:
    return cast(IReactorTime, _globalReactor)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, deadline: float = 20.0
) -> None:
    """
    Wait until C{await check()} is true, checking every 10 ms, at most
    C{deadline} seconds; fail naming C{what} after that. For conditions
    that take a request to see (L{until} takes a plain predicate).
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await check():
            return
        await deferLater(_time(), 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@attrs.frozen
class AdminAnswer:
    """
    One answer of the admin API.

    @ivar headers: Its header fields, lower-case names, each one's values.
    """

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """
        The (last) value of header C{name}, or L{None}.
        """
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        """
        The body, parsed as JSON.
        """
        return json.loads(self.body)


class _UNIXConnection(http.client.HTTPConnection):
    """
    An HTTP connection over a unix socket.
    """

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout)
        try:
            connection.connect(self._path)
        except OSError:
            connection.close()
            raise
        self.sock = connection


@attrs.frozen
class AdminClient:
    """
    A client of the admin API listening on C{127.0.0.1:port} or on the
    unix socket C{unixPath}: each request on a new connection, made with
    Python's own HTTP client in a thread.

    @ivar token: Sent as C{Authorization: Bearer TOKEN} when given.
    """

    port: int | None = None
    unixPath: str | None = None
    token: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.unixPath is not None:
            return _UNIXConnection(self.unixPath, REQUEST_TIMEOUT)
        assert self.port is not None
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> AdminAnswer:
        connection = self._connection()
        try:
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            fields: dict[str, list[str]] = {}
            for name, value in response.getheaders():
                fields.setdefault(name.lower(), []).append(value)
            return AdminAnswer(response.status, fields, response.read())
        finally:
            connection.close()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred[AdminAnswer]:
        """
        Send one request. C{body} is sent as it is when it is C{bytes},
        encoded when it is C{str}, as JSON otherwise (nothing for
        L{None}). C{headers} add to (or replace) the token's.
        """
        fields = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        fields.update(headers or {})
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
        return deferToThread(self._request, method, path, data, fields)

    async def get(self, path: str) -> Any:
        """
        GET C{path}; fail unless the answer is a 200; return its JSON.
        """
        answer = await self.request("GET", path)
        if answer.status != 200:
            raise AssertionError(f"GET {path}: {answer.status} {answer.body!r}")
        return answer.json()

    async def text(self, path: str) -> str:
        """
        GET C{path}; fail unless the answer is a 200; return its body as
        text.
        """
        answer = await self.request("GET", path)
        if answer.status != 200:
            raise AssertionError(f"GET {path}: {answer.status} {answer.body!r}")
        return answer.body.decode("utf-8")

    async def backends(self, pool: str = "default") -> dict[str, dict[str, Any]]:
        """
        The backends of C{pool} as C{GET /pools/POOL/backends} shows them,
        by address.
        """
        view = await self.get(f"/pools/{pool}/backends")
        return {backend["address"]: backend for backend in view["backends"]}


class _Counting(Resource):
    """
    Answers every request with its backend's name, counting them; a
    request for C{holdPath} is held open until L{release}.
    """

    isLeaf = True

    def __init__(self, name: bytes, holdPath: bytes | None) -> None:
        super().__init__()
        self.name = name
        self.holdPath = holdPath
        self.count = 0
        self.held: list[tuple[Request, list[object]]] = []

    def render(self, request: Request) -> bytes | int:
        self.count += 1
        if self.holdPath is not None and request.path == self.holdPath:
            lost: list[object] = []
            request.notifyFinish().addErrback(lost.append)
            self.held.append((request, lost))
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"text/plain")
        return self.name

    def release(self) -> None:
        held, self.held = self.held, []
        for request, lost in held:
            if lost:
                continue
            request.setHeader(b"Content-Type", b"text/plain")
            request.write(self.name + b" held")
            request.finish()




@attrs.define
class CountingBackend:
    """
    An HTTP server in the test process (its reactor) that answers every
    request with C{name} and counts them.

    @ivar host: The address it listens on.
    @ivar port: Its port.
    """

    host: str
    port: int
    _resource: _Counting

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} and the admin API take it.
        """
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> bytes:
        """
        The body of its answers.
        """
        return self._resource.name

    @property
    def count(self) -> int:
        """
        How many requests it has received (held ones included).
        """
        return self._resource.count

    @property
    def held(self) -> int:
        """
        How many requests it holds now.
        """
        return len(self._resource.held)

    def release(self) -> None:
        """
        Answer every held request (with C{name} and C{" held"}).
        """
        self._resource.release()


def startCountingBackend(
    testCase: TestCase, host: str, name: bytes, holdPath: bytes | None = None
) -> CountingBackend:
    """
    Serve a L{CountingBackend} on C{host}, on a free port, until
    C{testCase}'s cleanup (which also aborts connections still open).
    Requests for C{holdPath}, if given, are held until released.
    """
    resource = _Counting(name, holdPath)
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    factory = TrackingFactory(site)
    tcp = cast(IReactorTCP, _globalReactor)
    # WrappingFactory is typed as a ClientFactory, but serves as well.
    port: IListeningPort = tcp.listenTCP(0, factory, interface=host)  # type: ignore[arg-type]

    async def stop() -> None:
        resource.release()
        await port.stopListening()  # type: ignore[misc]
        await factory.closeAll().addTimeout(STOP_DEADLINE, _time())

    testCase.addCleanup(stop)
    return CountingBackend(host, port.getHost().port, resource)  # type: ignore[attr-defined]


class Load:
    """
    GET requests through a proxy on C{127.0.0.1:port} over C{connections}
    keep-alive connections, one thread each, until L{stop} is called, or
    C{limit} requests have been sent, or C{deadline} seconds have passed.
    A request that fails (no answer, a broken connection) is counted in
    L{errors} and the next one goes on a new connection.

    @ivar completed: Requests finished, answered or not.
    @ivar statuses: How many answers had each status.
    @ivar answers: How many answers had each body.
    @ivar errors: One line for each request that got no answer.
    @ivar reconnects: How many times the proxy closed a connection after an
        answer (the next request then went on a new one).
    @ivar bounded: Whether it ended at C{limit} or C{deadline} rather than
        by L{stop}.
    @ivar done: Fires when every thread has ended.
    """

    def __init__(
        self, port: int, connections: int, limit: int, deadline: float, path: str = "/"
    ) -> None:
        self._port = port
        self._limit = limit
        self._deadline = deadline
        self._path = path
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            for index in range(connections)
        ]
        self._running = 0
        self._end = 0.0
        self._started = 0
        self.completed = 0
        self.statuses: Counter[int] = Counter()
        self.answers: Counter[bytes] = Counter()
        self.errors: list[str] = []
        self.reconnects = 0
        self.bounded = False
        self.done: Deferred[None] = Deferred()

    @property
    def finished(self) -> bool:
        """
        Whether every thread has ended.
        """
        return self.done.called

    def start(self) -> None:
        """
        Start every connection's thread.
        """
        self._running = len(self._threads)
        self._end = time.monotonic() + self._deadline
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """
        Let each thread finish its request and end; wait (at most
        L{STOP_DEADLINE} seconds after the last request's timeout) for all
        of them.
        """
        self._stopping.set()
        if self._running == 0:
            return
        ended: Deferred[None] = Deferred()
        self.done.addCallback(_relay, ended)
        await ended.addTimeout(REQUEST_TIMEOUT + STOP_DEADLINE, _time())

    def _next(self) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            if self._started >= self._limit or time.monotonic() >= self._end:
                self.bounded = True
                return False
            self._started += 1
            return True

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        try:
            while self._next():
                if connection is None:
                    connection = http.client.HTTPConnection(
                        "127.0.0.1", self._port, timeout=REQUEST_TIMEOUT
                    )
                try:
                    connection.request("GET", self._path)
                    response = connection.getresponse()
                    body = response.read()
                except Exception as e:
                    connection.close()
                    connection = None
                    with self._lock:
                        self.errors.append(f"{type(e).__name__}: {e}")
                        self.completed += 1
                    continue
                with self._lock:
                    self.statuses[response.status] += 1
                    self.answers[body] += 1
                    self.completed += 1
                if response.will_close:
                    connection.close()
                    connection = None
                    with self._lock:
                        self.reconnects += 1
        finally:
            if connection is not None:
                connection.close()
            cast(IReactorFromThreads, _globalReactor).callFromThread(self._ended)

    def _ended(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.done.callback(None)


def _relay(result: None, to: Deferred[None]) -> None:
    if not to.called:
        to.callback(None)


@attrs.frozen
class AdminProxy:
    """
    A running C{twistd lbproxy} with one plain listener and the admin API.

    @ivar port: The listener's port, on 127.0.0.1.
    @ivar admin: A client of its admin API.
    """

    process: Twistd
    port: int
    admin: AdminClient

    @property
    def url(self) -> str:
        """
        The listener's base URL, without a trailing slash.
        """
        return f"http://127.0.0.1:{self.port}"


async def startAdminProxy(
    testCase: TestCase,
    directory: str,
    args: list[str],
    admin: str | None = None,
    client: AdminClient | None = None,
) -> AdminProxy:
    """
    Start C{twistd lbproxy ARGS} with C{--listen} on a free port of
    127.0.0.1 and C{--admin} (by default on another free port of
    127.0.0.1), and wait until it listens. Without C{--config} in C{ARGS},
    health checks are turned off (C{--health-interval 0}): only the
    test's requests reach the backends. With it, the file says.

    @param client: The admin client to use, when C{admin} is given.
    """
    port = freePort()
    if admin is None:
        adminPort = freePort()
        admin = f"tcp:{adminPort}:interface=127.0.0.1"
        client = AdminClient(port=adminPort)
    assert client is not None
    listen = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    health = [] if "--config" in args else ["--health-interval", "0"]
    process = await startTwistd(testCase, [*args, *listen, *health, "--admin", admin], directory)
    return AdminProxy(process, port, client)
