"""
Helpers for the end-to-end tests: run the installed C{twistd lbproxy} as a
subprocess, serve in-test backends on loopback, and make real HTTP(S)
requests.

Nothing here imports lbproxy: the tests see it only as a command.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = [
    "READY_LINE",
    "Backend",
    "ExitResult",
    "TrackingFactory",
    "Twistd",
    "fetch",
    "freePort",
    "makeCertificates",
    "peerCertificate",
    "runProgram",
    "runTwistd",
    "startBackend",
    "startTwistd",
    "trustingContext",
    "twistdPath",
    "until",
    "verifyingContext",
]

READY_LINE = b"lbproxy balancing over"
"""
What C{twistd lbproxy} logs once every listener is bound.
"""

START_DEADLINE = 30.0
"""
Seconds a subprocess gets to become ready, or to exit when it should.
"""

STOP_DEADLINE = 10.0
"""
Seconds a subprocess gets to exit after SIGTERM before it is killed.
"""

REQUEST_TIMEOUT = 10.0
"""
Seconds a client waits on a socket before giving up.
"""


def _time() -> IReactorTime:
    return cast(IReactorTime, _globalReactor)


def _tcp() -> IReactorTCP:
    return cast(IReactorTCP, _globalReactor)


def _process() -> IReactorProcess:
    return cast(IReactorProcess, _globalReactor)


async def until(predicate: Callable[[], object], what: str, deadline: float = 20.0) -> None:
    """
    Wait until C{predicate()} is true, checking every 10 ms, at most
    C{deadline} seconds; fail naming C{what} after that.
    """
    for _ in range(int(deadline * 100)):
        if predicate():
            return
        await deferLater(_time(), 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def twistdPath() -> str:
    """
    The C{twistd} installed next to the running Python.
    """
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def freePort(interface: str = "127.0.0.1") -> int:
    """
    A TCP port that was free on C{interface} a moment ago: bound to port 0,
    then closed, so that a subprocess can be told the number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((interface, 0))
        port: int = s.getsockname()[1]
    return port


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@attrs.frozen
class ExitResult:
    """
    How a subprocess ended.

    @ivar code: Its exit status, or L{None} if a signal ended it.
    @ivar signal: The signal that ended it, or L{None}.
    @ivar out: Everything it wrote on standard output.
    @ivar err: Everything it wrote on standard error.
    """

    code: int | None
    signal: int | None
    out: str
    err: str

    @property
    def combined(self) -> str:
        """
        Standard output then standard error.
        """
        return self.out + self.err


class _Collector(ProcessProtocol):
    """
    Collects a subprocess's output; L{ready} fires when C{marker} appears on
    standard output (or fails if the process exits first), L{ended} fires
    with an L{ExitResult}.
    """

    def __init__(self, marker: bytes | None) -> None:
        self._marker = marker
        self.out = b""
        self.err = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[ExitResult] = Deferred()
        self.result: ExitResult | None = None

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self._marker is not None and not self.ready.called and self._marker in self.out:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code: int | None = None
        sig: int | None = None
        if isinstance(value, ProcessDone):
            code = 0
        elif isinstance(value, ProcessTerminated):
            code = value.exitCode
            sig = value.signal
        self.result = ExitResult(
            code=code,
            signal=sig,
            out=self.out.decode("utf-8", "replace"),
            err=self.err.decode("utf-8", "replace"),
        )
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"process exited before it was ready: {self.result}"))
        self.ended.callback(self.result)


def _spawn(argv: list[str], cwd: str, marker: bytes | None) -> tuple[_Collector, Any]:
    collector = _Collector(marker)
    transport = _process().spawnProcess(collector, argv[0], argv, env=_environment(), path=cwd)
    return collector, transport


async def runProgram(argv: list[str], cwd: str) -> ExitResult:
    """
    Run C{argv} in C{cwd} to completion, within L{START_DEADLINE} seconds
    (killed and failed after that).
    """
    collector, transport = _spawn(argv, cwd, None)
    collector.ready.addErrback(lambda f: None)
    ended = collector.ended
    try:
        return await ended.addTimeout(START_DEADLINE, _time())
    except Exception:
        if collector.result is None:
            transport.signalProcess("KILL")
        raise


async def runTwistd(args: list[str], cwd: str) -> ExitResult:
    """
    Run C{twistd -n --pidfile= lbproxy ARGS} in C{cwd} and wait for it to
    exit by itself.
    """
    return await runProgram([twistdPath(), "-n", "--pidfile=", "lbproxy", *args], cwd)


class Twistd:
    """
    A running C{twistd -n lbproxy}.

    @ivar pid: Its process id.
    """

    def __init__(self, collector: _Collector, transport: Any) -> None:
        self._collector = collector
        self._transport = transport
        self.pid: int = transport.pid

    @property
    def out(self) -> str:
        """
        What it has written on standard output so far.
        """
        return self._collector.out.decode("utf-8", "replace")

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (e.g. C{"TERM"}) to the process, by its id.
        """
        self._transport.signalProcess(name)

    async def exited(self) -> ExitResult:
        """
        Wait (at most L{STOP_DEADLINE} seconds) for the process to exit.
        """
        if self._collector.result is not None:
            return self._collector.result
        ended: Deferred[ExitResult] = Deferred()
        self._collector.ended.addCallback(_relay, ended)
        return await ended.addTimeout(STOP_DEADLINE, _time())

    async def stop(self, signal: str = "TERM") -> ExitResult:
        """
        Send C{signal} to the process (by its id) and wait for it to exit; if
        it has not after L{STOP_DEADLINE} seconds, kill it with SIGKILL and
        wait for that.
        """
        if self._collector.result is not None:
            return self._collector.result
        ended: Deferred[ExitResult] = Deferred()
        self._collector.ended.addCallback(_relay, ended)
        self._transport.signalProcess(signal)
        try:
            return await ended.addTimeout(STOP_DEADLINE, _time())
        except Exception:
            if self._collector.result is None:
                self._transport.signalProcess("KILL")
                killed: Deferred[ExitResult] = Deferred()
                self._collector.ended.addCallback(_relay, killed)
                await killed.addTimeout(STOP_DEADLINE, _time())
            raise


def _relay(result: ExitResult, to: Deferred[ExitResult]) -> ExitResult:
    if not to.called:
        to.callback(result)
    return result


async def startTwistd(testCase: TestCase, args: list[str], cwd: str) -> Twistd:
    """
    Start C{twistd -n --pidfile= lbproxy ARGS} in C{cwd}, stopped by
    C{testCase}'s cleanup, and wait (at most L{START_DEADLINE} seconds) for
    it to log that it is listening.
    """
    argv = [twistdPath(), "-n", "--pidfile=", "lbproxy", *args]
    collector, transport = _spawn(argv, cwd, READY_LINE)
    process = Twistd(collector, transport)
    testCase.addCleanup(process.stop)
    await collector.ready.addTimeout(START_DEADLINE, _time())
    return process


async def makeCertificates(directory: str) -> None:
    """
    Write a CA and a server certificate into C{directory} with
    C{python -m lbproxy.certs}.
    """
    os.makedirs(directory, exist_ok=True)
    result = await runProgram([sys.executable, "-m", "lbproxy.certs", directory], directory)
    if result.code != 0:
        raise RuntimeError(f"python -m lbproxy.certs failed: {result}")


class _Answer(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._body


class TrackingFactory(WrappingFactory):
    """
    Remembers open connections, so that they can be closed at cleanup.
    """

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._waiting: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Protocol) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Abort every open connection; fires once all are closed.
        """
        d: Deferred[None] = Deferred()
        if not self.protocols:
            d.callback(None)
            return d
        self._waiting.append(d)
        for p in list(self.protocols):
            transport = p.transport
            if transport is not None:
                transport.abortConnection()
        return d


@attrs.frozen
class Backend:
    """
    An HTTP server in the test process.

    @ivar host: The address it listens on.
    @ivar port: Its port.
    """

    host: str
    port: int

    @property
    def authority(self) -> str:
        """
        C{host:port}, as C{--backends} takes it.
        """
        return f"{self.host}:{self.port}"


def startBackend(testCase: TestCase, host: str, body: bytes) -> Backend:
    """
    Serve C{body} for every request on C{host}, on a free port, until
    C{testCase}'s cleanup; cleanup also closes connections still open.
    """
    site = Site(_Answer(body))
    site.log = lambda request: None  # type: ignore[method-assign]
    factory = TrackingFactory(site)
    # WrappingFactory is typed as a ClientFactory, but serves as well.
    port: IListeningPort = _tcp().listenTCP(0, factory, interface=host)  # type: ignore[arg-type]

    async def stop() -> None:
        await port.stopListening()  # type: ignore[misc]
        await factory.closeAll().addTimeout(STOP_DEADLINE, _time())

    testCase.addCleanup(stop)
    return Backend(host, port.getHost().port)  # type: ignore[attr-defined]


def _fetch(url: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    parts = url.split("/", 3)
    scheme, authority = parts[0], parts[2]
    path = "/" + (parts[3] if len(parts) > 3 else "")
    host, _, port = authority.rpartition(":")
    connection: http.client.HTTPConnection
    if scheme == "https:":
        connection = http.client.HTTPSConnection(
            host, int(port), timeout=REQUEST_TIMEOUT, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fetch(url: str, context: ssl.SSLContext | None = None) -> Deferred[tuple[int, bytes]]:
    """
    GET C{url} on a new connection, with Python's own HTTP client and (for
    C{https:}) TLS, in a thread; fires with the status and the body.
    """
    return deferToThread(_fetch, url, context)


def verifyingContext(caFile: str) -> ssl.SSLContext:
    """
    A client TLS context that trusts only the CA in C{caFile} and checks
    the server's name.
    """
    return ssl.create_default_context(cafile=caFile)


def trustingContext() -> ssl.SSLContext:
    """
    A client TLS context that accepts any certificate (for C{--adhoc}).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _peerCertificate(port: int) -> bytes:
    context = trustingContext()
    raw = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise RuntimeError(f"no certificate from 127.0.0.1:{port}")
    return der


def peerCertificate(port: int) -> Deferred[bytes]:
    """
    The DER certificate served on C{127.0.0.1:port}, read in a thread.
    """
    return deferToThread(_peerCertificate, port)


# Helpers for the data-path tests (test_datapath, test_websocket).


@attrs.frozen
class Proxy:
    """
    A running C{twistd lbproxy} with one listener.

    @ivar process: The twistd process.
    @ivar port: The port it listens on, on 127.0.0.1.
    @ivar tls: Whether the listener speaks TLS.
    @ivar caFile: The CA certificate that signed the listener's
        certificate (for C{curl --cacert}), when C{tls}.
    """

    process: Twistd
    port: int
    tls: bool
    caFile: str | None

    @property
    def url(self) -> str:
        """
        The listener's base URL, without a trailing slash.
        """
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext | None:
        """
        A client TLS context that trusts only the listener's CA, or
        L{None} for plain HTTP.
        """
        if self.caFile is None:
            return None
        return verifyingContext(self.caFile)

    def connection(self, timeout: float = REQUEST_TIMEOUT) -> http.client.HTTPConnection:
        """
        A new (not yet connected) C{http.client} connection to the
        listener.
        """
        if self.tls:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=self.context()
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


_READY_WORKER = b"] " + READY_LINE


async def startProxy(
    testCase: TestCase,
    directory: str,
    backends: str,
    tls: bool,
    workers: int = 1,
    extra: tuple[str, ...] = (),
) -> Proxy:
    """
    Start C{twistd lbproxy} balancing over C{backends} with one listener
    on a free port of 127.0.0.1: plain, or TLS with a certificate from
    C{python -m lbproxy.certs} (made in C{directory}). C{workers} above 1
    passes C{--workers} and waits until every worker listens. Health checks
    are off: only the test's requests reach the backends.
    """
    port = freePort()
    args = ["--backends", backends, "--health-interval", "0", *extra]
    caFile = None
    if tls:
        certs = os.path.join(directory, "certs")
        if not os.path.exists(os.path.join(certs, "ca.crt")):
            await makeCertificates(certs)
        key = os.path.join(certs, "loadbalancer.key")
        cert = os.path.join(certs, "loadbalancer.crt")
        args += ["--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
        caFile = os.path.join(certs, "ca.crt")
    else:
        args += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    if workers != 1:
        args += ["--workers", str(workers)]
    process = await startTwistd(testCase, args, directory)
    if workers != 1:
        await until(
            lambda: process.out.count(_READY_WORKER.decode()) >= workers,
            f"all {workers} workers to listen",
        )
    return Proxy(process, port, tls, caFile)


def residentBytes(pid: int) -> int:
    """
    The resident set size of process C{pid} (VmRSS in C{/proc/PID/status}),
    in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def runClient(argv: list[str], cwd: str) -> ExitResult:
    """
    Like L{runProgram}, with standard input closed at once: curl 7.88
    stalls a chunked TLS upload while its standard input is an open pipe
    (it does so against any TLS server).
    """
    collector, transport = _spawn(argv, cwd, None)
    transport.closeStdin()
    collector.ready.addErrback(lambda f: None)
    try:
        return await collector.ended.addTimeout(START_DEADLINE + 60, _time())
    except Exception:
        if collector.result is None:
            transport.signalProcess("KILL")
        raise


def logProblems(process: Twistd) -> str | None:
    """
    The lines around the first C{Unhandled Error} or C{Traceback} that
    C{process} has logged, or L{None} if it has logged neither.
    """
    lines = process.out.splitlines()
    for index, line in enumerate(lines):
        if "Unhandled Error" in line or "Traceback" in line:
            return "\n".join(lines[max(0, index - 3) : index + 20])
    return None
