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
from collections import Counter
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

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
