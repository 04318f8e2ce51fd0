"""
C{twistd lbproxy --workers 2}, installed, end to end: two worker processes
serve one port, a killed worker is replaced, SIGTERM stops everything, and
workers do not outlive a supervisor that is killed; SIGHUP reloads the
config file in every worker (an invalid one is refused by the supervisor
first), and the admin API the supervisor serves changes every worker.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
from collections import Counter
from typing import Any, cast
from urllib.parse import quote

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import (
    READY_LINE,
    REQUEST_TIMEOUT,
    Backend,
    Twistd,
    fetch,
    freePort,
    logProblems,
    startBackend,
    startTwistd,
    trustingContext,
    until,
)

_STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
_READY = re.compile(r"\[worker \d+ pid (\d+)\] " + re.escape(READY_LINE.decode()))
_ACCESS = re.compile(r'\[worker \d+ pid (\d+)\] 127\.0\.0\.1 "GET ')


def _workers(process: Twistd) -> dict[int, int]:
    """
    The pid now in each worker slot, from the supervisor's log.
    """
    return {int(slot): int(pid) for slot, pid in _STARTED.findall(process.out)}


def _ready(process: Twistd) -> set[int]:
    """
    The pids of the workers that have logged that they are listening.
    """
    return {int(pid) for pid in _READY.findall(process.out)}


def _servers(process: Twistd) -> set[int]:
    """
    The pids of the workers whose access log has a request.
    """
    return {int(pid) for pid in _ACCESS.findall(process.out)}


_SERVED = re.compile(
    r'\[worker \d+ pid (\d+)\] 127\.0\.0\.1 "GET (/\S*) HTTP/1\.1" (\d+) \d+ backend=(\S+)'
)

ALL_APPLIED = "reload: all 2 workers applied the configuration"
REJECTED = "configuration reload rejected, the running configuration is kept: "


def _served(process: Twistd) -> list[tuple[int, str, str]]:
    """
    Each request the workers' access logs show: the worker's pid, the
    path and the backend.
    """
    return [(int(pid), path, backend) for pid, path, _, backend in _SERVED.findall(process.out)]


def _admin(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def admin(port: int, method: str, path: str, body: Any = None) -> Deferred[tuple[int, Any]]:
    """
    One admin API request on a new connection, in a thread: its status and
    its JSON body.
    """
    return deferToThread(_admin, port, method, path, body)


class _Requests:
    """
    Requests to a proxy, each on a new connection with a path of its own
    (C{/r/N}), so that the access log tells which worker sent it where.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self.made = 0

    async def batch(self, count: int = 8) -> list[tuple[int, bytes]]:
        """
        Make C{count} requests at once; their answers.
        """
        first, self.made = self.made, self.made + count
        return await gatherResults(
            [fetch(f"http://127.0.0.1:{self._port}/r/{n}") for n in range(first, self.made)]
        )


def _alive(pid: int) -> bool:
    """
    Whether C{pid} is a running (not zombie) lbproxy worker.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return False
    return state != "Z" and b"lbproxy.workers" in command


class _WorkersCase(TestCase):
    """
    Helpers: C{twistd lbproxy --workers 2} in a temporary directory, and
    any worker a failed test leaves killed.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.seen: set[int] = set()
        self.addCleanup(self._killWorkersLeft)

    def _killWorkersLeft(self) -> None:
        """
        A worker a failed test left running is killed, by its pid.
        """
        for pid in self.seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    async def start(self, *extra: str) -> tuple[Twistd, int]:
        backend = startBackend(self, "127.0.0.1", b"from the backend")
        return await self.launch("--backends", backend.authority, "--health-interval", "0", *extra)

    async def launch(self, *arguments: str) -> tuple[Twistd, int]:
        """
        Start C{twistd lbproxy --workers 2 ARGUMENTS} listening on a free
        port, and wait for both workers to listen.
        """
        port = freePort()
        process = await startTwistd(
            self,
            ["--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1", *arguments],
            self.directory,
        )
        await until(lambda: len(_ready(process)) == 2, "both workers to listen")
        self.seen.update(_workers(process).values())
        return process, port


class WorkersTests(_WorkersCase):
    """
    C{--workers 2} under twistd.
    """

    async def test_workersServeAndAreReplaced(self) -> None:
        """
        Two workers with distinct pids answer requests on one port (and on
        a TLS port); a worker killed with SIGKILL is replaced in its slot
        while requests keep being answered; SIGTERM to the supervisor ends
        every worker and twistd exits 0.
        """
        tlsPort = freePort()
        process, port = await self.start(
            "--adhoc", "--listen", f"ssl:{tlsPort}:interface=127.0.0.1"
        )
        workers = _workers(process)
        self.assertEqual(sorted(workers), [1, 2])
        self.assertEqual(len(set(workers.values())), 2)
        self.assertNotIn(process.pid, workers.values())

        url = f"http://127.0.0.1:{port}/"
        for _ in range(50):
            answers = await gatherResults([fetch(url) for _ in range(8)])
            self.assertEqual(set(answers), {(200, b"from the backend")})
            if _servers(process) == set(workers.values()):
                break
        self.assertEqual(_servers(process), set(workers.values()))
        self.assertEqual(
            await fetch(f"https://127.0.0.1:{tlsPort}/", trustingContext()),
            (200, b"from the backend"),
        )

        killed = workers[1]
        os.kill(killed, signal.SIGKILL)
        await until(lambda: _workers(process)[1] != killed, "worker 1 to be replaced")
        replacement = _workers(process)[1]
        self.seen.add(replacement)
        self.assertIn("(signal SIGKILL)", process.out)
        answers = await gatherResults([fetch(url) for _ in range(8)])
        self.assertEqual(set(answers), {(200, b"from the backend")})
        await until(lambda: replacement in _ready(process), "the new worker to listen")
        self.assertFalse(_alive(killed))

        result = await process.stop("TERM")
        self.assertEqual((result.code, result.signal), (0, None), result.combined)
        self.assertNotIn("Traceback", result.combined)
        self.assertEqual(result.out.count("received SIGTERM: draining"), 3, result.out)
        self.assertEqual([pid for pid in self.seen if _alive(pid)], [])

    async def test_workersOutliveNoSupervisor(self) -> None:
        """
        Workers whose supervisor is killed (SIGKILL, no chance to stop
        them) see their pipe from it close, drain and exit.
        """
        process, _port = await self.start()
        workers = set(_workers(process).values())
        result = await process.stop("KILL")
        self.assertEqual(result.signal, signal.SIGKILL)
        await until(lambda: not any(_alive(pid) for pid in workers), "the workers to exit")


class WorkersControlTests(_WorkersCase):
    """
    Reloads and the admin API with C{--workers 2}: every worker applies
    each change.
    """

    def writeConfig(self, *backends: Backend, extra: str = "") -> str:
        path = os.path.join(self.directory, "lbproxy.toml")
        listed = ", ".join(f'"{b.authority}"' for b in backends)
        with open(path, "w") as f:
            f.write(f"health-interval = 0\n{extra}[pools.web]\nbackends = [{listed}]\n")
        return path

    async def reachedThroughBoth(
        self, process: Twistd, requests: _Requests, backend: Backend, after: int = 0
    ) -> None:
        """
        Make requests until the access logs show that each worker sent one
        of the requests from number C{after} on to C{backend}; every answer
        must be a 200.
        """
        workers = set(_workers(process).values())

        def senders() -> set[int]:
            return {
                pid
                for pid, path, to in _served(process)
                if to == backend.authority and int(path.rsplit("/", 1)[1]) >= after
            }

        for _ in range(50):
            answers = await requests.batch()
            self.assertEqual({status for status, _ in answers}, {200}, answers)
            await until(lambda: len(_served(process)) >= requests.made, "the access log lines")
            if senders() == workers:
                return
        self.fail(f"only {senders()} of {workers} sent requests to {backend.authority}")

    async def test_reloadInEveryWorker(self) -> None:
        """
        SIGHUP with a changed config file is applied by both workers (each
        sends requests to the backend it adds) and the supervisor says so in
        one line; an invalid file is refused by the supervisor in one line,
        no worker is asked, and both keep serving the configuration before.
        """
        first = startBackend(self, "127.0.0.1", b"first")
        added = startBackend(self, "127.0.0.1", b"added")
        config = self.writeConfig(first)
        process, port = await self.launch("--config", config)
        requests = _Requests(port)

        self.writeConfig(first, added)
        process.signal("HUP")
        await until(lambda: ALL_APPLIED in process.out, "the workers to apply the reload")
        await self.reachedThroughBoth(process, requests, added)

        self.writeConfig(first, added, extra="no-such-option = 1\n")
        before = requests.made
        process.signal("HUP")
        await until(lambda: REJECTED in process.out, "the reload to be refused")
        (line,) = [line for line in process.out.splitlines() if REJECTED in line]
        self.assertIn("no-such-option", line)
        self.assertNotIn("[worker", line)
        self.assertEqual(process.out.count(ALL_APPLIED), 1)
        await self.reachedThroughBoth(process, requests, added, after=before)
        self.assertIsNone(logProblems(process))

    async def test_adminChangesEveryWorker(self) -> None:
        """
        The supervisor serves the admin API: a backend added there gets
        requests from both workers, and the pool's counters are the sum of
        both workers' (as many requests as were made); drained there, it
        gets no new request from either worker.
        """
        first = startBackend(self, "127.0.0.1", b"first")
        added = startBackend(self, "127.0.0.1", b"added")
        adminPort = freePort()
        process, port = await self.launch(
            "--backends",
            first.authority,
            "--health-interval",
            "0",
            "--admin",
            f"tcp:{adminPort}:interface=127.0.0.1",
        )
        self.assertIn("admin API listening on", process.out)
        requests = _Requests(port)

        status, body = await admin(
            adminPort, "POST", "/pools/default/backends", {"address": added.authority}
        )
        self.assertEqual(status, 201, body)
        await self.reachedThroughBoth(process, requests, added)

        status, pool = await admin(adminPort, "GET", "/pools/default/backends")
        self.assertEqual((status, pool["workers"]), (200, 2), pool)
        counted = {b["address"]: b["requests"] for b in pool["backends"]}
        logged = Counter(to for _, _, to in _served(process))
        self.assertEqual(sum(counted.values()), requests.made)
        self.assertEqual(
            counted,
            {first.authority: logged[first.authority], added.authority: logged[added.authority]},
        )

        address = quote(added.authority, safe="")
        status, body = await admin(
            adminPort, "PATCH", f"/pools/default/backends/{address}", {"drain": True}
        )
        self.assertEqual((status, body["state"]), (200, "draining"), body)
        drainedAt = requests.made
        await self.reachedThroughBoth(process, requests, first, after=drainedAt)
        late = [
            (pid, path)
            for pid, path, to in _served(process)
            if to == added.authority and int(path.rsplit("/", 1)[1]) >= drainedAt
        ]
        self.assertEqual(late, [])
        status, pool = await admin(adminPort, "GET", "/pools/default/backends")
        (view,) = [b for b in pool["backends"] if b["address"] == added.authority]
        self.assertEqual((view["state"], view["requests"]), ("draining", counted[added.authority]))
        self.assertIsNone(logProblems(process))

    async def test_restartedWorkerUpToDate(self) -> None:
        """
        A worker killed after a backend was added through the admin API is
        replaced by one that the supervisor brings up to date: it sends
        requests to that backend too.
        """
        first = startBackend(self, "127.0.0.1", b"first")
        added = startBackend(self, "127.0.0.1", b"added")
        adminPort = freePort()
        process, port = await self.launch(
            "--backends",
            first.authority,
            "--health-interval",
            "0",
            "--admin",
            f"tcp:{adminPort}:interface=127.0.0.1",
        )
        status, body = await admin(
            adminPort, "POST", "/pools/default/backends", {"address": added.authority}
        )
        self.assertEqual(status, 201, body)

        killed = _workers(process)[1]
        os.kill(killed, signal.SIGKILL)
        await until(lambda: _workers(process)[1] != killed, "worker 1 to be replaced")
        replacement = _workers(process)[1]
        self.seen.add(replacement)
        await until(lambda: "brought up to date" in process.out, "the new worker's update")
        (line,) = [line for line in process.out.splitlines() if "brought up to date" in line]
        self.assertIn(f"worker 1 (pid {replacement}) brought up to date with worker 2", line)
        self.assertIn(f"add http://{added.authority} to default", line)
        await self.reachedThroughBoth(process, _Requests(port), added)
        self.assertIsNone(logProblems(process))


def _keepAlive(port: int, paths: list[list[str]]) -> list[list[int]]:
    """
    Open one connection per item of C{paths}, all of them first, then make
    each of its requests on it in turn (keep-alive); the statuses, by
    connection.  Every connection is closed at the end.
    """
    connections = [
        http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT) for _ in paths
    ]
    try:
        for connection in connections:
            connection.connect()
        statuses = []
        for connection, requests in zip(connections, paths, strict=True):
            answered = []
            for path in requests:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                answered.append(response.status)
            statuses.append(answered)
        return statuses
    finally:
        for connection in connections:
            connection.close()


def _sendNow(port: int, paths: list[str]) -> list[socket.socket]:
    """
    Open one connection per path and send its request at once, without
    waiting for any answer; the connections.
    """
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in paths]
    for s, path in zip(sockets, paths, strict=True):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n".encode())
    return sockets


def _statusesOf(sockets: list[socket.socket]) -> list[int | str]:
    """
    The status of the answer each connection gets (or why it got none),
    each connection then closed.
    """
    statuses: list[int | str] = []
    for s in sockets:
        try:
            head = b""
            while b"\r\n" not in head:
                data = s.recv(4096)
                if not data:
                    break
                head += data
            statuses.append(int(head.split(b" ", 2)[1]) if head else "closed")
        except OSError as e:
            statuses.append(type(e).__name__)
        finally:
            s.close()
    return statuses


class _ProbeCounter(Resource):
    """
    A backend that notes when each health check (C{GET /health}) and each
    other request arrives, and answers 200, or 503 once told it is down.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self._clock = clock
        self.probes: list[float] = []
        self.requests: list[float] = []
        self.healthy = True

    def render(self, request: Request) -> bytes:
        now = self._clock.seconds()
        (self.probes if request.path == b"/health" else self.requests).append(now)
        if not self.healthy:
            request.setResponseCode(503)
            return b"down"
        return b"counted"


class ReusePortTests(_WorkersCase):
    """
    C{--workers 2} with C{--reuse-port} (the default on Linux): each
    worker accepts from a socket of its own.
    """

    async def test_connectionsSpreadEvenly(self) -> None:
        """
        Sixteen rounds of 64 keep-alive connections (1 024 connections, two
        requests each, all 64 of a round open at once) are spread over both
        workers in every round and within 45/55 over all; both requests of
        a connection are served by the same worker.  (The kernel picks a
        socket per connection by a hash, so one round of 64 splits like 64
        coin tosses: within 45/55 about 6 times in 10; over 1 024 a split
        outside 45/55 has odds of about 1 in 800.)
        """
        process, port = await self.launch(
            "--backends", startBackend(self, "127.0.0.1", b"b").authority, "--health-interval", "0"
        )
        self.assertIn("(a socket each, SO_REUSEPORT)", process.out)
        workers = set(_workers(process).values())
        rounds, size = 16, 64
        perRound = []
        overall: Counter[int] = Counter()
        for number in range(rounds):
            paths = [[f"/k/{number}/{c}/1", f"/k/{number}/{c}/2"] for c in range(size)]
            statuses = await deferToThread(_keepAlive, port, paths)
            self.assertEqual(statuses, [[200, 200]] * size)
            expected = 2 * size * (number + 1)
            await until(lambda: len(_served(process)) >= expected, "the access log lines")  # noqa: B023
            byConnection: dict[tuple[str, str], set[int]] = {}
            for pid, path, _ in _served(process):
                _, _, r, c, _ = path.split("/")
                if r == str(number):
                    byConnection.setdefault((r, c), set()).add(pid)
            self.assertEqual([len(pids) for pids in byConnection.values()], [1] * size)
            counts = Counter(next(iter(pids)) for pids in byConnection.values())
            self.assertEqual(set(counts), workers, f"round {number}: {counts}")
            perRound.append([counts[pid] for pid in sorted(workers)])
            overall.update(counts)
        self.assertLessEqual(max(overall.values()), 0.55 * rounds * size, perRound)
        self.assertIsNone(logProblems(process))

    async def test_queuedConnectionsServedByReplacement(self) -> None:
        """
        Connections that arrive while a killed worker's slot is empty are
        not reset: those the kernel gave that slot's socket wait in its
        queue, and the worker started again in the slot (on the same
        socket) answers them; the others are answered by the other worker.
        """
        process, port = await self.launch(
            "--backends", startBackend(self, "127.0.0.1", b"b").authority, "--health-interval", "0"
        )
        killed, other = _workers(process)[1], _workers(process)[2]
        os.kill(killed, signal.SIGKILL)
        paths = [f"/q/{n}" for n in range(32)]
        sockets = await deferToThread(_sendNow, port, paths)
        self.assertEqual(
            [pid for pid in _ready(process) if pid not in (killed, other)],
            [],
            "the replacement was listening before the connections were made",
        )
        statuses = await deferToThread(_statusesOf, sockets)
        self.assertEqual(statuses, [200] * len(paths))
        replacement = _workers(process)[1]
        self.seen.add(replacement)
        self.assertNotEqual(replacement, killed)
        await until(lambda: len(_served(process)) >= len(paths), "the access log lines")
        servedBy = Counter(pid for pid, path, _ in _served(process) if path.startswith("/q/"))
        self.assertEqual(set(servedBy), {replacement, other}, servedBy)
        self.assertIsNone(logProblems(process))


class SharedHealthTests(_WorkersCase):
    """
    The supervisor runs the active health checks for both workers.
    """

    async def test_oneProbePerInterval(self) -> None:
        """
        With C{--health-interval 0.5}, a backend gets one probe per
        interval with two workers (not two); when it fails them, the
        supervisor logs it once, and neither worker sends it a request.
        """
        counter = _ProbeCounter(cast(IReactorTime, _reactor))
        site = Site(counter)
        site.log = lambda request: None  # type: ignore[method-assign]
        listening = cast(IReactorTCP, _reactor).listenTCP(
            0,
            site,  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(listening.stopListening)
        counted = f"127.0.0.1:{listening.getHost().port}"  # type: ignore[attr-defined]
        healthy = startBackend(self, "127.0.0.1", b"healthy")
        process, port = await self.launch(
            "--backends",
            f"{counted},{healthy.authority}",
            "--health-interval",
            "0.5",
            "--health-path",
            "/health",
        )
        await until(lambda: counter.probes, "the first probe")
        clock = cast(IReactorTime, _reactor)
        start = clock.seconds()
        await deferLater(clock, 4.0)
        probes = [t for t in counter.probes if start <= t < start + 4.0]
        # One prober: 8 in 4 s (fewer if the machine is busy); two: 16.
        self.assertTrue(5 <= len(probes) <= 9, counter.probes)

        counter.healthy = False
        down = f"backend {counted} is DOWN"
        await until(lambda: down in process.out, "the backend to be found down")
        (line,) = [line for line in process.out.splitlines() if down in line]
        self.assertNotIn("[worker", line)
        requests = _Requests(port)
        answers = []
        for _ in range(6):
            answers += await requests.batch()
        self.assertEqual(set(answers), {(200, b"healthy")})
        await until(lambda: len(_served(process)) >= requests.made, "the access log lines")
        self.assertEqual(counter.requests, [])
        self.assertEqual({pid for pid, _, _ in _served(process)}, set(_workers(process).values()))
        self.assertIsNone(logProblems(process))
