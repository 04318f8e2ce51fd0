"""
C{twistd lbproxy --workers 2}, installed, end to end: two worker processes
serve one port, a killed worker is replaced, SIGTERM stops everything, and
workers do not outlive a supervisor that is killed.
"""

from __future__ import annotations

import os
import re
import signal

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from tests.support import (
    READY_LINE,
    Twistd,
    fetch,
    freePort,
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


class WorkersTests(TestCase):
    """
    C{--workers 2} under twistd.
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
        port = freePort()
        process = await startTwistd(
            self,
            [
                "--workers",
                "2",
                "--backends",
                backend.authority,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--health-interval",
                "0",
                *extra,
            ],
            self.directory,
        )
        await until(lambda: len(_ready(process)) == 2, "both workers to listen")
        self.seen.update(_workers(process).values())
        return process, port

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
