"""
Every failure answered right (issue 11), end to end: the installed
C{twistd lbproxy} on real loopback sockets, facing clients and backends
that stall, reset, never read, never connect or break the protocol.

Backends are scripted raw sockets (L{tests.servers.ScriptedBackend}) or
the threaded HTTP server of the data-path tests
(L{tests.servers.DataServer}); clients are raw sockets, C{http.client}
and curl, all run off the reactor (threads or subprocesses). Timeouts are
set to 1-2 s so that each failure shows within a few seconds.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.servers import PIECE, DataServer, Script, ScriptedBackend, requestPath
from tests.support import (
    Proxy,
    fetch,
    freePort,
    logProblems,
    makeCertificates,
    runClient,
    startProxy,
    until,
)

CLIENT_TIMEOUT = 10.0
"""
Seconds a client waits on its socket before it reports a hang.
"""

FEW_SECONDS = 4.0
"""
What "within a few seconds" means here, with 1 s timeouts configured.
"""

AT_ONCE = 1.5
"""
What "at once" means here: well before any configured timeout.
"""

READ_LIMIT = 256 * 1024 * 1024
"""
Most bytes a client reads before it gives up on seeing the end.
"""

KEPT = 64 * 1024
"""
Bytes of what a client read that are kept for checks and reports.
"""

ACCESS_LOG = ("--access-log", "-")
"""
Access log lines on twistd's standard output, where the tests read them.
"""


@attrs.frozen
class _Ending:
    """
    How a client's connection went.

    @ivar data: The first L{KEPT} bytes received.
    @ivar length: Every byte received.
    @ivar end: C{"eof"} (a clean close), C{"reset"} (C{ECONNRESET}) or
        C{"timeout"} (nothing for L{CLIENT_TIMEOUT} seconds).
    @ivar seconds: From the client's last send to the end.
    @ivar sendError: Why a send failed, if one did.
    """

    data: bytes
    length: int
    end: str
    seconds: float
    sendError: str | None = None

    @property
    def statusLine(self) -> str:
        """
        The first line received.
        """
        return self.data.split(b"\r\n", 1)[0].decode("latin-1")

    def describe(self) -> str:
        """
        The ending, for a failure message.
        """
        sent = f", send failed: {self.sendError}" if self.sendError else ""
        return (
            f"got {self.length} bytes {self.data[:160]!r} then {self.end} "
            f"after {self.seconds:.2f} s{sent}"
        )


def _readToEnd(connection: socket.socket, started: float, sendError: str | None = None) -> _Ending:
    """
    Read C{connection} until it ends (or L{READ_LIMIT} bytes, or
    L{CLIENT_TIMEOUT} seconds of silence).
    """
    kept = b""
    length = 0
    end = "limit"
    while length < READ_LIMIT:
        try:
            piece = connection.recv(PIECE)
        except ConnectionResetError:
            end = "reset"
            break
        except TimeoutError:
            end = "timeout"
            break
        if not piece:
            end = "eof"
            break
        length += len(piece)
        if len(kept) < KEPT:
            kept += piece[: KEPT - len(kept)]
    return _Ending(kept, length, end, time.monotonic() - started, sendError)


def _exchange(port: int, data: bytes, halfClose: bool = False) -> _Ending:
    """
    Connect to the proxy on C{port}, send C{data} (then, with
    C{halfClose}, C{shutdown(SHUT_WR)}), and read to the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as connection:
        connection.sendall(data)
        if halfClose:
            connection.shutdown(socket.SHUT_WR)
        return _readToEnd(connection, time.monotonic())


def _request(path: str, *fields: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """
    A request head for C{path} with C{Host: localhost} and C{fields}.
    """
    lines = [f"{method} {path} {version}", "Host: localhost", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@attrs.frozen
class _Head:
    """
    A response head.

    @ivar line: Its status line.
    @ivar fields: Its header fields, names in lower case, in order.
    """

    line: str
    fields: tuple[tuple[str, str], ...]

    @property
    def status(self) -> int:
        """
        The status code.
        """
        return int(self.line.split(" ")[1])

    def values(self, name: str) -> list[str]:
        """
        The values of every field called C{name} (lower case).
        """
        return [value for key, value in self.fields if key == name]


class _Reader:
    """
    Reads responses from a raw client socket, one head at a time.
    """

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def _more(self, what: str) -> None:
        piece = self.connection.recv(PIECE)
        if not piece:
            raise AssertionError(f"connection closed before {what}; had {self.buffer[:200]!r}")
        self.buffer += piece

    def head(self) -> _Head:
        """
        The next response head (its bytes taken from the buffer).
        """
        for _ in range(1024):
            if b"\r\n\r\n" in self.buffer:
                break
            self._more("a whole response head")
        else:
            raise AssertionError(f"no response head in {self.buffer[:200]!r}")
        raw, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        line, *rest = raw.decode("latin-1").split("\r\n")
        fields = []
        for field in rest:
            name, _, value = field.partition(":")
            fields.append((name.strip().lower(), value.strip()))
        return _Head(line, tuple(fields))

    def exactly(self, size: int) -> bytes:
        """
        The next C{size} bytes.
        """
        for _ in range(size // 1024 + 1024):
            if len(self.buffer) >= size:
                break
            self._more(f"{size} body bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _headFields(head: bytes) -> dict[str, list[str]]:
    """
    A request head's fields by lower-case name.
    """
    fields: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


def _accessLines(proxy: Proxy, path: str) -> list[str]:
    """
    The access log lines of requests for C{path} logged so far.
    """
    return [
        line
        for line in proxy.process.out.splitlines()
        if f" {path} HTTP/" in line and "backend=" in line
    ]


def _accessLine(proxy: Proxy, path: str) -> str | None:
    """
    The first access log line of a request for C{path}, if logged yet.
    """
    lines = _accessLines(proxy, path)
    return lines[0] if lines else None


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        raise AssertionError("curl is not installed")
    return curl


@attrs.frozen
class _CurlResult:
    """
    How a curl run went.

    @ivar code: Its exit status.
    @ivar status: The HTTP status it reported (C{%{http_code}}).
    @ivar err: What it wrote on standard error.
    @ivar seconds: How long it ran.
    """

    code: int | None
    status: str
    err: str
    seconds: float

    def describe(self) -> str:
        """
        The run, for a failure message.
        """
        return (
            f"curl exited {self.code} after {self.seconds:.2f} s with status {self.status}: "
            f"{self.err.strip()[-300:]!r}"
        )


class FailureTests(TestCase):
    """
    Issue 11: each way a request can fail is answered right.
    """

    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def curl(self, url: str, *options: str) -> _CurlResult:
        """
        Run curl on C{url} with C{options}, its output discarded, and a
        C{--max-time} of L{CLIENT_TIMEOUT}.
        """
        argv = [
            _curl(),
            "--silent",
            "--show-error",
            "--max-time",
            str(CLIENT_TIMEOUT),
            "--output",
            os.devnull,
            "--write-out",
            "%{http_code}",
            *options,
            url,
        ]
        started = time.monotonic()
        result = await runClient(argv, self.directory)
        return _CurlResult(result.code, result.out.strip(), result.err, time.monotonic() - started)

    async def waitFor(
        self, failures: list[str], predicate: Callable[[], object], what: str, deadline: float
    ) -> bool:
        """
        Wait at most C{deadline} seconds for C{predicate()}; on a timeout
        add a failure naming C{what}. Return whether it came true.
        """
        try:
            await until(predicate, what, deadline)
        except AssertionError as e:
            failures.append(str(e))
            return False
        return True

    async def logged(self, failures: list[str], proxy: Proxy, path: str) -> str:
        """
        The access log line for C{path}, waited for a few seconds (a
        failure, and an empty line, if it never comes).
        """
        await self.waitFor(
            failures,
            lambda: _accessLine(proxy, path) is not None,
            f"the access log line for {path}",
            FEW_SECONDS,
        )
        return _accessLine(proxy, path) or ""

    def checkOneLineEach(self, failures: list[str], proxy: Proxy, paths: list[str]) -> None:
        """
        Add a failure for each of C{paths} (one request each) that has more
        than one access log line: the access log has one line per request.
        """
        for path in paths:
            lines = _accessLines(proxy, path)
            if len(lines) > 1:
                failures.append(
                    f"{len(lines)} access log lines for the one request for {path}:\n"
                    + "\n".join(lines)
                )

    def assertNoFailures(self, failures: list[str], *proxies: Proxy) -> None:
        """
        Fail listing every failure and the end of each proxy's log; or if
        a proxy logged an unhandled error or a traceback.
        """
        logs = []
        for proxy in proxies:
            problem = logProblems(proxy.process)
            if problem is not None:
                failures = [*failures, f"twistd logged an error:\n{problem}"]
            logs.append("\n".join(proxy.process.out.splitlines()[-20:]))
        if failures:
            self.fail("\n".join(failures) + "\n--- twistd log (end) ---\n" + "\n---\n".join(logs))

    async def _stalledWave(self, proxy: Proxy, chunked: bool, failures: list[str]) -> None:
        """
        Five clients at once send a request head and 2 body bytes (of a
        Content-Length of 10, or of a 10-byte chunk) and stop; each must
        read a 408 and be closed within a few seconds; then a new client
        must be served.
        """
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 10"
        part = b"a\r\nxy" if chunked else b"xy"
        kind = "chunked" if chunked else "Content-Length"
        endings = await gatherResults(
            [
                deferToThread(
                    _exchange,
                    proxy.port,
                    _request(f"/hash?id={kind}{n}", framing, method="POST") + part,
                )
                for n in range(5)
            ],
            consumeErrors=True,
        )
        for n, ending in enumerate(endings):
            name = f"stalled {kind} body {n}"
            if not ending.statusLine.startswith("HTTP/1.1 408"):
                failures.append(f"{name}: no 408: {ending.describe()}")
            elif ending.end not in ("eof", "reset") or ending.seconds > FEW_SECONDS:
                failures.append(f"{name}: not closed within {FEW_SECONDS} s: {ending.describe()}")
        try:
            after = await deferToThread(_exchange, proxy.port, _request("/", "Connection: close"))
        except OSError as e:
            failures.append(f"a new client after the stalled {kind} bodies: {e!r}")
            return
        if not after.statusLine.startswith("HTTP/1.1 200"):
            failures.append(
                f"a new client after the stalled {kind} bodies was not served: {after.describe()}"
            )

    async def test_stalledRequestBody(self) -> None:
        """
        With C{--max-connections 5 --body-timeout 1}, five clients that
        each send a request head and 2 of 10 body bytes (Content-Length,
        then chunked) and stop each get a 408 and are closed within a few
        seconds; afterwards a new client is served (not refused as one too
        many).
        """
        backend = DataServer(self)
        proxy = await startProxy(
            self,
            self.directory,
            backend.authority,
            False,
            extra=(
                "--header-timeout",
                "2",
                "--client-idle-timeout",
                "2",
                "--max-connections",
                "5",
                "--body-timeout",
                "1",
                *ACCESS_LOG,
            ),
        )
        failures: list[str] = []
        await self._stalledWave(proxy, False, failures)
        await self._stalledWave(proxy, True, failures)
        self.assertNoFailures(failures, proxy)

    async def test_stalledResponseBody(self) -> None:
        """
        With C{--timeout 1}, when a backend sends a 200 head with
        C{Content-Length: 1000} and 10 body bytes and then stalls, the
        client sees the response cut short within a few seconds
        (C{http.client} raises C{IncompleteRead} or C{ECONNRESET}, curl
        exits non-zero) and the access log line says C{truncated}.
        """
        backend = ScriptedBackend(
            self,
            {"*": Script(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, "stall")},
        )
        proxy = await startProxy(
            self, self.directory, backend.authority, False, extra=("--timeout", "1", *ACCESS_LOG)
        )
        failures: list[str] = []

        def withHttpClient() -> str | None:
            connection = proxy.connection(CLIENT_TIMEOUT)
            started = time.monotonic()
            try:
                connection.request("GET", "/stall-http-client")
                response = connection.getresponse()
                body = response.read()
            except (http.client.IncompleteRead, ConnectionResetError) as e:
                # Cut short: fewer bytes than announced, then a close or a reset.
                seconds = time.monotonic() - started
                if seconds > FEW_SECONDS:
                    return f"http.client: cut short only after {seconds:.2f} s ({e!r})"
                return None
            except (OSError, http.client.HTTPException) as e:
                return f"http.client: {e!r} after {time.monotonic() - started:.2f} s"
            finally:
                connection.close()
            return (
                f"http.client: a clean end after {len(body)} bytes, status {response.status}, "
                f"after {time.monotonic() - started:.2f} s"
            )

        clientDone = deferToThread(withHttpClient)
        curled = await self.curl(proxy.url + "/stall-curl")
        clientProblem = await clientDone
        if clientProblem is not None:
            failures.append(clientProblem)
        if curled.code == 0 or curled.seconds > FEW_SECONDS:
            failures.append(f"curl: not cut short within {FEW_SECONDS} s: {curled.describe()}")
        for path in ("/stall-http-client", "/stall-curl"):
            line = await self.logged(failures, proxy, path)
            if line and "truncated" not in line:
                failures.append(f"the access log line does not say truncated: {line}")
        self.checkOneLineEach(failures, proxy, ["/stall-http-client", "/stall-curl"])
        self.assertNoFailures(failures, proxy)

    async def test_clientNeverReads(self) -> None:
        """
        With C{--send-timeout 1}, when a client asks for 100 MiB and reads
        none of it, within a few seconds of the backend being held back the
        proxy drops the client's connection and the backend's (whose send
        fails).
        """
        backend = DataServer(self)
        proxy = await startProxy(
            self, self.directory, backend.authority, False, extra=("--send-timeout", "1")
        )
        failures: list[str] = []
        exchange = backend.exchange("unread")
        release = threading.Event()
        self.addCleanup(release.set)

        def neverRead() -> _Ending:
            connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            connection.settimeout(CLIENT_TIMEOUT)
            with connection:
                connection.connect(("127.0.0.1", proxy.port))
                connection.sendall(_request(f"/bytes?n={100 * 1024 * 1024}&id=unread"))
                release.wait(30)
                return _readToEnd(connection, time.monotonic())

        reading = deferToThread(neverRead)
        if await self.waitFor(
            failures,
            lambda: exchange.stalled.is_set() or exchange.lost.is_set() or exchange.done.is_set(),
            "the backend to be held back by the client that does not read",
            CLIENT_TIMEOUT,
        ):
            started = time.monotonic()
            if await self.waitFor(
                failures,
                lambda: exchange.lost.is_set() or exchange.done.is_set(),
                "the backend's connection to be dropped",
                FEW_SECONDS + 2,
            ):
                if exchange.done.is_set():
                    failures.append("the backend sent all 100 MiB: nothing held it back")
                elif time.monotonic() - started > FEW_SECONDS:
                    failures.append(
                        f"the backend's send failed only {time.monotonic() - started:.2f} s "
                        "after it was held back"
                    )
        release.set()
        ending = await reading
        if ending.end not in ("eof", "reset") or ending.length >= 100 * 1024 * 1024:
            failures.append(f"the client's connection was not dropped: {ending.describe()}")
        self.assertNoFailures(failures, proxy)

    async def test_silentTLSClient(self) -> None:
        """
        On a TLS listener with C{--handshake-timeout 1}, a client that
        connects and sends nothing is closed by the proxy after about a
        second (its read ends or is reset), and TLS clients are served.
        """
        backend = DataServer(self)
        proxy = await startProxy(
            self, self.directory, backend.authority, True, extra=("--handshake-timeout", "1")
        )
        failures: list[str] = []

        def silent() -> _Ending:
            with socket.create_connection(
                ("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT
            ) as connection:
                return _readToEnd(connection, time.monotonic())

        ending = await deferToThread(silent)
        if ending.end not in ("eof", "reset") or not 0.5 <= ending.seconds <= 3.5:
            failures.append(f"a silent TLS client was not closed after 1-3 s: {ending.describe()}")

        def served() -> int:
            connection = proxy.connection(CLIENT_TIMEOUT)
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                return response.status
            finally:
                connection.close()

        try:
            status = await deferToThread(served)
            if status != 200:
                failures.append(f"a TLS client got {status}")
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            failures.append(f"a TLS client was not served: {e!r}")
        self.assertNoFailures(failures, proxy)

    async def test_tlsCloseNotifyUnanswered(self) -> None:
        """
        A TLS client that asks for C{Connection: close}, reads the answer
        and then neither answers the proxy's close_notify nor closes is
        closed by the proxy after a few seconds (Twisted's TLS layer would
        wait for it for ever, the connection counted against
        C{--max-connections}); other clients are served meanwhile.
        """
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, True)
        failures: list[str] = []

        def mute() -> _Ending:
            context = ssl.create_default_context(cafile=proxy.caFile)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            with socket.create_connection(
                ("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT
            ) as connection:
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        connection.sendall(outgoing.read())
                        incoming.write(connection.recv(PIECE))
                tls.write(b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                connection.sendall(outgoing.read())
                # Raw from here on: the close_notify is never answered.
                return _readToEnd(connection, time.monotonic())

        ending = await deferToThread(mute)
        if ending.end not in ("eof", "reset") or ending.seconds > 8:
            failures.append(f"the mute client was not closed within 8 s: {ending.describe()}")
        try:
            status, _ = await fetch(f"{proxy.url}/plain", proxy.context())
            if status != 200:
                failures.append(f"another client got {status}")
        except (OSError, ssl.SSLError) as e:
            failures.append(f"another client was not served: {e!r}")
        self.assertNoFailures(failures, proxy)

    async def test_hungTLSBackendDropped(self) -> None:
        """
        An idle connection to a TLS backend that then hangs (it neither
        answers the proxy's close_notify nor closes) is dropped a few
        seconds after the idle timeout closes it, not kept open for ever.
        """
        certs = os.path.join(self.directory, "certs")
        await makeCertificates(certs)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            os.path.join(certs, "loadbalancer.crt"), os.path.join(certs, "loadbalancer.key")
        )
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.2", 0))
        listener.listen(8)
        listener.settimeout(CLIENT_TIMEOUT)

        def hangAfterOneAnswer() -> _Ending:
            connection, _ = listener.accept()
            tls = context.wrap_socket(connection, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(PIECE)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            # Hung from here on: no TLS (so no close_notify), no close.
            with socket.socket(fileno=tls.detach()) as raw:
                raw.settimeout(20)
                return _readToEnd(raw, time.monotonic())

        hanging = deferToThread(hangAfterOneAnswer)
        proxy = await startProxy(
            self,
            self.directory,
            f"https://127.0.0.2:{listener.getsockname()[1]}",
            False,
            extra=(*ACCESS_LOG, "--backend-insecure", "--backend-idle-timeout", "1"),
        )
        status, body = await fetch(f"{proxy.url}/")
        ending = await hanging
        failures: list[str] = []
        if (status, body) != (200, b"ok"):
            failures.append(f"the client got {status} {body[:80]!r}")
        if ending.end not in ("eof", "reset") or ending.seconds > 12:
            failures.append(
                f"the hung backend's connection was not dropped within 12 s: {ending.describe()}"
            )
        self.assertNoFailures(failures, proxy)

    async def test_closeDelimitedBodyReset(self) -> None:
        """
        When a backend answers with C{Connection: close} and no length,
        sends 5000 body bytes and resets the connection, curl through the
        proxy fails (exit 56 or 18, never 0) and the access log line says
        C{truncated}; three times over.
        """
        answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 5000
        backend = ScriptedBackend(self, {"*": Script(answer, "reset")})
        proxy = await startProxy(self, self.directory, backend.authority, False, extra=ACCESS_LOG)
        failures: list[str] = []
        for n in range(3):
            path = f"/reset{n}"
            curled = await self.curl(proxy.url + path)
            if curled.code == 0:
                failures.append(f"{path}: a clean end: {curled.describe()}")
            line = await self.logged(failures, proxy, path)
            if line and "truncated" not in line:
                failures.append(f"{path}: the access log line does not say truncated: {line}")
        self.checkOneLineEach(failures, proxy, [f"/reset{n}" for n in range(3)])
        self.assertNoFailures(failures, proxy)

    async def test_http10ClientChunkedBodyCut(self) -> None:
        """
        When a backend dies in the middle of a chunked body (a FIN, or a
        reset), an HTTP/1.0 client, whose response can only end with the
        connection, sees its connection reset, not closed cleanly: a raw
        socket's read fails with C{ECONNRESET}, C{curl -0} exits non-zero.
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        cut = head + b"400\r\n" + b"z" * 1024 + b"\r\n"
        backend = ScriptedBackend(
            self, {"/fin": Script(cut, "close"), "/rst": Script(cut, "reset")}
        )
        proxy = await startProxy(self, self.directory, backend.authority, False, extra=ACCESS_LOG)
        failures: list[str] = []
        for path in ("/fin", "/rst"):
            ending = await deferToThread(_exchange, proxy.port, _request(path, version="HTTP/1.0"))
            if ending.end != "reset":
                failures.append(f"HTTP/1.0 GET {path} (raw socket): {ending.describe()}")
        curled = await self.curl(proxy.url + "/fin?curl", "-0")
        if curled.code == 0:
            failures.append(f"curl -0 GET /fin: {curled.describe()}")
        self.assertNoFailures(failures, proxy)

    async def test_connectFailures(self) -> None:
        """
        Failing to connect is answered right: with one backend where
        nothing listens, 503 with C{Retry-After}; with one refusing and one
        healthy backend, every GET succeeds (retried); with one backend
        whose accept queue is full and C{--connect-timeout 1}, 503 within a
        few seconds.
        """
        refusingAlone = f"127.0.0.2:{freePort('127.0.0.2')}"
        refusing = f"127.0.0.2:{freePort('127.0.0.2')}"
        healthy = DataServer(self)
        full = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(full.close)
        full.bind(("127.0.0.2", 0))
        full.listen(0)
        address = full.getsockname()
        fillers = [socket.create_connection(address, timeout=CLIENT_TIMEOUT)]
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        for filler in fillers:
            self.addCleanup(filler.close)

        starting: list[Deferred[Proxy]] = [
            ensureDeferred(
                startProxy(self, self.directory, refusingAlone, False, extra=ACCESS_LOG)
            ),
            ensureDeferred(
                startProxy(
                    self,
                    self.directory,
                    f"{refusing},{healthy.authority}",
                    False,
                    extra=("--chooser", "round-robin", *ACCESS_LOG),
                )
            ),
            ensureDeferred(
                startProxy(
                    self,
                    self.directory,
                    f"{address[0]}:{address[1]}",
                    False,
                    extra=("--connect-timeout", "1", *ACCESS_LOG),
                )
            ),
        ]
        alone, pair, queued = await gatherResults(starting, consumeErrors=True)
        failures: list[str] = []

        def get(proxy: Proxy, path: str) -> tuple[int, list[tuple[str, str]], bytes, float]:
            connection = proxy.connection(CLIENT_TIMEOUT)
            started = time.monotonic()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                return (
                    response.status,
                    response.getheaders(),
                    response.read(),
                    time.monotonic() - started,
                )
            finally:
                connection.close()

        status, headers, body, _ = await deferToThread(get, alone, "/nothing-listens")
        if status != 503 or not any(k.lower() == "retry-after" for k, _ in headers):
            failures.append(
                f"nothing listening: {status} {headers} {body[:100]!r}, not 503 with Retry-After"
            )

        statuses = []
        for n in range(8):
            status, _, _, _ = await deferToThread(get, pair, f"/pair{n}")
            statuses.append(status)
        if statuses != [200] * 8:
            failures.append(f"one refusing, one healthy backend: statuses {statuses}")
        if "retries=" not in pair.process.out:
            failures.append("one refusing, one healthy backend: no request was logged as retried")

        try:
            status, _, body, seconds = await deferToThread(get, queued, "/queue-full")
            if status != 503 or seconds > FEW_SECONDS:
                failures.append(
                    f"accept queue full: {status} {body[:100]!r} after {seconds:.2f} s, "
                    f"not 503 within {FEW_SECONDS} s"
                )
        except OSError as e:
            failures.append(f"accept queue full: no answer: {e!r}")
        self.assertNoFailures(failures, alone, pair, queued)

    async def test_relayedAnswers(self) -> None:
        """
        Backend answers are relayed as RFC 9110 says: a 304's
        C{Content-Length: 1234} reaches the client with no body; a 204
        without a length reaches it without C{Content-Length}; a
        C{103 Early Hints} with its C{Link} reaches an HTTP/1.1 client
        before the final 200; a response head with bare-LF line endings
        gets a 502 at once (well before C{--timeout 5}).
        """
        backend = ScriptedBackend(
            self,
            {
                "/304": Script(
                    b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'
                ),
                "/204": Script(b"HTTP/1.1 204 No Content\r\n\r\n"),
                "/103": Script(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                ),
                "/bare-lf": Script(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "stall"),
            },
        )
        proxy = await startProxy(
            self, self.directory, backend.authority, False, extra=("--timeout", "5", *ACCESS_LOG)
        )

        def converse() -> list[str]:
            problems = []
            with socket.create_connection(
                ("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT
            ) as connection:
                reader = _Reader(connection)
                connection.sendall(_request("/304"))
                head = reader.head()
                if head.status != 304 or head.values("content-length") != ["1234"]:
                    problems.append(f"304: got {head}")
                connection.sendall(_request("/204"))
                head = reader.head()
                if head.status != 204:
                    problems.append(f"a body followed the 304 (the next head read was {head})")
                    return problems
                if head.values("content-length") or head.values("transfer-encoding"):
                    problems.append(f"204: got {head}, with a length")
                connection.sendall(_request("/103"))
                head = reader.head()
                if head.status != 103 or not head.values("link"):
                    problems.append(f"103: the first head was {head}, not the 103 with Link")
                    return problems
                head = reader.head()
                body = reader.exactly(2)
                if head.status != 200 or body != b"ok":
                    problems.append(f"103: the final answer was {head} {body!r}")
            return problems

        failures: list[str] = []
        try:
            failures += await deferToThread(converse)
        except (OSError, AssertionError) as e:
            failures.append(f"304/204/103 on one connection: {e!r}")
        ending = await deferToThread(
            _exchange, proxy.port, _request("/bare-lf", "Connection: close")
        )
        if not ending.statusLine.startswith("HTTP/1.1 502"):
            failures.append(f"bare-LF response head: not a 502: {ending.describe()}")
        elif ending.seconds > AT_ONCE + 1:
            failures.append(f"bare-LF response head: 502 only after {ending.seconds:.2f} s")
        self.assertNoFailures(failures, proxy)

    async def test_staleBackendConnection(self) -> None:
        """
        A kept-alive backend connection that the backend closes just as the
        next request arrives on it (the race every connection pool meets):
        a GET is sent again on a new connection and answered 200; a POST,
        which the backend may have processed, is not sent again: 502.
        """
        backend = ScriptedBackend(
            self,
            {"*": Script(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "close-on-next")},
        )
        proxy = await startProxy(self, self.directory, backend.authority, False, extra=ACCESS_LOG)
        failures: list[str] = []
        for path in ("/one", "/two"):
            status, body = await fetch(f"http://127.0.0.1:{proxy.port}{path}")
            if (status, body) != (200, b"ok"):
                failures.append(f"GET {path}: {status} {body!r}, not 200 'ok'")
        paths = [requestPath(head) for head in backend.heads]
        if paths != ["/one", "/two", "/two"]:
            failures.append(f"the backend saw {paths}, not /one, /two and /two sent again")
        ending = await deferToThread(
            _exchange,
            proxy.port,
            _request("/three", "Content-Length: 1", "Connection: close", method="POST") + b"x",
        )
        if not ending.statusLine.startswith("HTTP/1.1 502"):
            failures.append(f"POST on a stale connection: not a 502: {ending.describe()}")
        posts = [head for head in backend.heads if head.startswith(b"POST")]
        if len(posts) != 1:
            failures.append(f"the POST reached the backend {len(posts)} times, not once")
        self.assertNoFailures(failures, proxy)

    async def test_edgeAnswers(self) -> None:
        """
        The edge answers odd requests right: C{Connection: host} does not
        strip Host; a client's C{X-Real-IP} is replaced by its address;
        C{HTTP2-Settings} is not forwarded; a chunk size of 18 hex digits
        gets a 400 and the connection closed at once; with C{--allow-host
        localhost}, C{GET http://localhost:1,evil.com/} is refused (400 or
        421) and never reaches the backend; a client that half-closes after
        a complete request with C{Connection: close} gets its response; a
        client that leaves (a reset) while the backend thinks is logged
        (499 or C{client closed}) within a few seconds.
        """
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        backend = ScriptedBackend(
            self,
            {
                "*": Script(ok),
                "/think": Script(b"", "stall"),
                "/chunk": Script(b"", "stall"),
            },
        )
        proxy = await startProxy(
            self,
            self.directory,
            backend.authority,
            False,
            extra=("--allow-host", "localhost", "--drain-timeout", "1", *ACCESS_LOG),
        )
        failures: list[str] = []

        async def send(name: str, data: bytes, halfClose: bool = False) -> _Ending | None:
            try:
                return await deferToThread(_exchange, proxy.port, data, halfClose)
            except OSError as e:
                failures.append(f"{name}: {e!r}")
                return None

        ending = await send("Connection: host", _request("/conn-host", "Connection: host, close"))
        head = backend.headFor("/conn-host")
        if head is None or not _headFields(head).get("host"):
            failures.append(f"Connection: host: the backend saw {head!r}, no Host")
        elif ending is not None and not ending.statusLine.startswith("HTTP/1.1 200"):
            failures.append(f"Connection: host: {ending.describe()}")

        await send("X-Real-IP", _request("/real-ip", "X-Real-IP: 1.2.3.4", "Connection: close"))
        head = backend.headFor("/real-ip")
        if head is None or _headFields(head).get("x-real-ip") != ["127.0.0.1"]:
            failures.append(f"X-Real-IP: 1.2.3.4: the backend saw {head!r}")

        await send(
            "HTTP2-Settings",
            _request("/h2-settings", "HTTP2-Settings: AAMAAABkAAQAAP__", "Connection: close"),
        )
        head = backend.headFor("/h2-settings")
        if head is None or "http2-settings" in _headFields(head):
            failures.append(f"HTTP2-Settings: the backend saw {head!r}")

        ending = await send(
            "huge chunk size",
            _request("/chunk", "Transfer-Encoding: chunked", method="POST")
            + b"ffffffffffffffffff\r\n",
        )
        if ending is not None and (
            not ending.statusLine.startswith("HTTP/1.1 400")
            or ending.end not in ("eof", "reset")
            or ending.seconds > AT_ONCE
        ):
            failures.append(
                f"a chunk size of 18 hex digits: not 400 and closed at once: {ending.describe()}"
            )

        ending = await send(
            "absolute-form with a comma",
            b"GET http://localhost:1,evil.com/evil HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\n\r\n",
        )
        if ending is not None and not (
            ending.statusLine.startswith("HTTP/1.1 400")
            or ending.statusLine.startswith("HTTP/1.1 421")
        ):
            failures.append(f"GET http://localhost:1,evil.com/evil: {ending.describe()}")
        reached = [h for h in backend.heads if b"evil" in h]
        if reached:
            failures.append(f"GET http://localhost:1,evil.com/evil reached the backend: {reached}")

        ending = await send(
            "half-close", _request("/half-close", "Connection: close"), halfClose=True
        )
        if ending is not None and (
            not ending.statusLine.startswith("HTTP/1.1 200") or not ending.data.endswith(b"ok")
        ):
            failures.append(f"a client that half-closed after its request: {ending.describe()}")

        def think() -> socket.socket:
            connection = socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT)
            connection.sendall(_request("/think"))
            return connection

        leaving = await deferToThread(think)
        await self.waitFor(
            failures,
            lambda: backend.headFor("/think") is not None,
            "the backend to receive /think",
            FEW_SECONDS,
        )
        # Gone for good: a reset, as a FIN alone is a half-close, still answered.
        leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaving.close()
        line = await self.logged(failures, proxy, "/think")
        if line and '" 499 ' not in line and "client closed" not in line:
            failures.append(f"a client that left while the backend thought: logged {line}")
        self.checkOneLineEach(failures, proxy, ["/think"])
        self.assertNoFailures(failures, proxy)

    async def test_earlyAnswerReadable(self) -> None:
        """
        When a backend answers 413 at once to a 10 MiB upload without
        reading it, the client reads that 413 (a raw socket sending the
        whole body, and curl), not a reset, and the connection is closed
        after it.
        """
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, False, extra=ACCESS_LOG)
        size = 10 * 1024 * 1024
        failures: list[str] = []

        def upload() -> _Ending:
            with socket.create_connection(
                ("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT
            ) as connection:
                connection.sendall(
                    _request(
                        "/reject?id=raw",
                        f"Content-Length: {size}",
                        "Content-Type: application/octet-stream",
                        method="POST",
                    )
                )
                sendError = None
                piece = b"\0" * PIECE
                try:
                    for _ in range(size // PIECE):
                        connection.sendall(piece)
                except OSError as e:
                    sendError = repr(e)
                return _readToEnd(connection, time.monotonic(), sendError)

        ending = await deferToThread(upload)
        if not ending.statusLine.startswith("HTTP/1.1 413") or ending.end != "eof":
            failures.append(f"raw socket: not a 413 then a clean close: {ending.describe()}")

        path = os.path.join(self.directory, "upload.bin")
        with open(path, "wb") as f:
            f.truncate(size)
        curled = await self.curl(
            proxy.url + "/reject?id=curl", "-H", "Expect:", "--data-binary", f"@{path}"
        )
        if curled.code != 0 or curled.status != "413":
            failures.append(f"curl: not a 413: {curled.describe()}")
        self.assertNoFailures(failures, proxy)
