"""
Tests for L{lbproxy.workers}: C{--workers}, the restart policy, the
supervisor on a L{Clock} with recorded processes (its reloads and the
admin API it serves for the workers), the check it makes before a reload,
the passing of sockets to a real child process, a real worker answering
control requests, and the load balancer on adopted sockets.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.control import MARKER, isReply
from lbproxy.control.health import SharedHealth
from lbproxy.control.wire import adminRequest, encodeReply, readResponse
from lbproxy.http.accesslog import AccessLog
from lbproxy.listen import ListenError, parseListen, socketDescription
from lbproxy.reuseport import TCPAddress, bindGroup, tcpAddress
from lbproxy.service import LoadBalancerConfig, LoadBalancerService, StartupError
from lbproxy.test.fakes import get, reactor, startBackend, until
from lbproxy.test.memorynet import MemoryNetwork
from lbproxy.test.test_tap import OptionsTestCase
from lbproxy.upstream.health import HealthSettings
from lbproxy.workers import (
    KILL_GRACE,
    REUSE_PORT,
    RestartPolicy,
    WorkersError,
    WorkerSupervisor,
    _answerWriter,
    _SupervisorPipe,
    _textObserver,
    checkWorkers,
    configurationCheck,
    parseWorkers,
    reusePortChoice,
    workerArgv,
    workerEnvironment,
)

Gen = Generator[Any, Any, None]


class ParseWorkersTests(SynchronousTestCase):
    """
    C{--workers} takes a count or C{auto}.
    """

    def test_counts(self) -> None:
        """
        A whole number from 1 is that many workers.
        """
        self.assertEqual([parseWorkers(t) for t in ("1", "2", " 16 ")], [1, 2, 16])

    def test_auto(self) -> None:
        """
        C{auto} is one worker per CPU this process may use, at least one.
        """
        self.assertEqual(parseWorkers("auto", cpuCount=lambda: 6), 6)
        self.assertEqual(parseWorkers("AUTO", cpuCount=lambda: 0), 1)

    def test_refused(self) -> None:
        """
        Zero, negative, fractional and non-numbers are refused, naming the
        value.
        """
        for text in ("0", "-2", "1.5", "many", ""):
            with self.assertRaises(usage.UsageError) as raised:
                parseWorkers(text)
            self.assertIn(repr(text), str(raised.exception))


class WorkersOptionTests(OptionsTestCase):
    """
    C{--workers} on the command line.
    """

    def test_defaultOne(self) -> None:
        """
        Without C{--workers} there is one process, and the arguments are
        kept as given (a supervisor passes them on to its workers).
        """
        argv = ["--backends", "127.0.0.1:80", "--listen", "tcp:0"]
        options = self.parse(*argv)
        self.assertEqual((options.workers, options.arguments), (1, argv))

    def test_count(self) -> None:
        """
        C{--workers 3} asks for three.
        """
        options = self.parse("--workers", "3", "--backends", "h", "--listen", "tcp:0")
        self.assertEqual(options.workers, 3)

    def test_bad(self) -> None:
        """
        A bad count is one usage line.
        """
        output = self.refused("--workers", "0", "--backends", "h", "--listen", "tcp:0")
        self.assertIn("--workers must be a whole number from 1, or auto", output)

    def test_demo(self) -> None:
        """
        C{--demo} with more than one worker is refused: the demo backends
        live in one process.
        """
        output = self.refused("--workers", "2", "--demo")
        self.assertIn("--demo", output)

    def test_stickyNeedsSharedSecret(self) -> None:
        """
        C{--chooser sticky} with more than one worker needs
        C{--sticky-secret-file}: every worker must sign with one key.
        """
        common = ["--backends", "h", "--listen", "tcp:0", "--chooser", "sticky"]
        output = self.refused("--workers", "2", *common)
        self.assertIn("--sticky-secret-file", output)
        secret = os.path.abspath("secret")
        with open(secret, "wb") as f:
            f.write(b"s" * 32)
        options = self.parse("--workers", "2", *common, "--sticky-secret-file", secret)
        self.assertEqual(options.workers, 2)

    def test_unsharedListener(self) -> None:
        """
        A listener whose socket lbproxy does not bind (C{systemd:}) is
        refused with more than one worker, and accepted with one.
        """
        for listens, redirect in [
            (["tcp:80", "systemd:domain=INET:index=0"], None),
            (["ssl:443"], "systemd:domain=INET:index=1"),
        ]:
            config = LoadBalancerConfig(
                backends=[],
                listens=[parseListen(d) for d in listens],
                chooser=RoundRobinChooser(),
                redirectHTTP=None if redirect is None else parseListen(redirect),
            )
            with self.assertRaises(WorkersError) as raised:
                checkWorkers(2, config)
            self.assertIn("systemd:domain=INET", str(raised.exception))
            self.assertIn("can be shared by --workers", str(raised.exception))
            checkWorkers(1, config)


class ReusePortOptionTests(OptionsTestCase):
    """
    C{--reuse-port} and C{--no-reuse-port}.
    """

    def test_choice(self) -> None:
        """
        Workers get sockets of their own where the platform spreads
        connections over them, unless C{--no-reuse-port}; C{--reuse-port}
        insists, and is refused where it cannot be had.
        """
        self.assertEqual(
            [
                reusePortChoice(False, False, available=True),
                reusePortChoice(True, False, available=True),
                reusePortChoice(False, True, available=True),
                reusePortChoice(False, False, available=False),
                reusePortChoice(False, True, available=False),
            ],
            [True, True, False, False, False],
        )
        with self.assertRaises(WorkersError) as raised:
            reusePortChoice(True, False, available=False)
        self.assertIn("--no-reuse-port", str(raised.exception))

    def test_flags(self) -> None:
        """
        On Linux the default is on; C{--no-reuse-port} turns it off; both
        flags at once are refused.
        """
        common = ["--workers", "2", "--backends", "h", "--listen", "tcp:0"]
        self.assertEqual(self.parse(*common).reusePort, REUSE_PORT)
        self.assertFalse(self.parse(*common, "--no-reuse-port").reusePort)
        output = self.refused(*common, "--reuse-port", "--no-reuse-port")
        self.assertIn("not both", output)

    def test_commandLineWinsOverFile(self) -> None:
        """
        One of the flags in the config file and the other on the command
        line: the command line wins, as for every option.
        """
        with open("lbproxy.toml", "w") as f:
            f.write('workers = 2\nno-reuse-port = true\nlisten = ["tcp:0"]\nbackends = ["h"]\n')
        self.assertFalse(self.parse("--config", "lbproxy.toml").reusePort)
        if REUSE_PORT:
            self.assertTrue(self.parse("--config", "lbproxy.toml", "--reuse-port").reusePort)


class TCPAddressTests(SynchronousTestCase):
    """
    L{tcpAddress} reads where a C{tcp:} or C{tcp6:} description binds, as
    Twisted would.
    """

    def test_table(self) -> None:
        """
        The port, the interface (its family from it) and the backlog, named
        or in Twisted's order; other types have none.
        """
        table: list[tuple[str, TCPAddress | None]] = [
            ("tcp:80", TCPAddress(socket.AF_INET, "", 80, 50)),
            (
                "tcp:80:interface=127.0.0.1:backlog=7",
                TCPAddress(socket.AF_INET, "127.0.0.1", 80, 7),
            ),
            ("tcp:80:10.0.0.1:9", TCPAddress(socket.AF_INET, "10.0.0.1", 80, 9)),
            ("tcp:port=81", TCPAddress(socket.AF_INET, "", 81, 50)),
            ("tcp:80:interface=\\:\\:1", TCPAddress(socket.AF_INET6, "::1", 80, 50)),
            ("tcp6:80", TCPAddress(socket.AF_INET6, "::", 80, 50)),
            ("tcp6:80:9:\\:\\:1", TCPAddress(socket.AF_INET6, "::1", 80, 9)),
            ("unix:/run/lb.sock", None),
        ]
        self.assertEqual([(d, tcpAddress(d)) for d, _ in table], table)

    def test_bad(self) -> None:
        """
        A port or backlog that is not a number is refused.
        """
        for description in ("tcp:http", "tcp:80:backlog=many"):
            self.assertRaises(ValueError, tcpAddress, description)


class BindGroupTests(SynchronousTestCase):
    """
    L{bindGroup} binds sockets that share a port.
    """

    def group(self, count: int) -> list[socket.socket]:
        sockets = bindGroup(TCPAddress(socket.AF_INET, "127.0.0.1", 0, 128), count)
        for s in sockets:
            self.addCleanup(s.close)
        return sockets

    def test_onePort(self) -> None:
        """
        Port 0 binds the first socket to a free port and the others to the
        same one; each listens, does not block and has C{SO_REUSEPORT}.
        """
        sockets = self.group(3)
        self.assertEqual(len({s.getsockname()[1] for s in sockets}), 1)
        self.assertEqual(
            [
                (
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
                    s.getblocking(),
                )
                for s in sockets
            ],
            [(1, 1, False)] * 3,
        )

    def test_connectionsSpread(self) -> None:
        """
        New connections are spread over the sockets: 64 connections land
        on both of two (all 64 on one has odds of 2 in 2^64).
        """
        sockets = self.group(2)
        port = sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        for client in clients:
            self.addCleanup(client.close)
        counts = []
        for s in sockets:
            count = 0
            while True:
                try:
                    accepted, _ = s.accept()
                except BlockingIOError:
                    break
                accepted.close()
                count += 1
            counts.append(count)
        self.assertEqual(sum(counts), 64)
        self.assertNotIn(0, counts)

    def test_portTaken(self) -> None:
        """
        A port another group holds is refused (sockets of one user could
        otherwise share it without a word); a port a plain socket listens
        on too.
        """
        for taken in (self.group(2)[0], _listening()):
            self.addCleanup(taken.close)
            address = TCPAddress(socket.AF_INET, "127.0.0.1", taken.getsockname()[1])
            with self.assertRaises(OSError) as raised:
                bindGroup(address, 2)
            self.assertEqual(raised.exception.errno, errno.EADDRINUSE)


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


class SocketDescriptionTests(SynchronousTestCase):
    """
    L{socketDescription} names the plain socket under a listener.
    """

    def test_table(self) -> None:
        """
        C{ssl:} listens on TCP with its port, interface and backlog;
        C{haproxy:} on what it wraps; C{tcp:}, C{tcp6:} and C{unix:} are
        their own socket.
        """
        table = [
            ("ssl:443", "tcp:443:interface=:backlog=50"),
            (
                "ssl:8443:interface=\\:\\:1:backlog=7:privateKey=k",
                "tcp:8443:interface=\\:\\:1:backlog=7",
            ),
            ("tcp:80:interface=127.0.0.1", "tcp:80:interface=127.0.0.1"),
            ("tcp6:80", "tcp6:80"),
            ("unix:/run/lb.sock:mode=660", "unix:/run/lb.sock:mode=660"),
            ("haproxy:tcp:8080", "tcp:8080"),
            ("haproxy:unix:/run/p.sock", "unix:/run/p.sock"),
        ]
        self.assertEqual(
            [(d, socketDescription(parseListen(d))) for d, _ in table],
            table,
        )

    def test_others(self) -> None:
        """
        Other types are refused: their socket is not lbproxy's to bind.
        """
        for description in ("systemd:domain=INET:index=0", "haproxy:systemd:domain=INET:index=0"):
            self.assertRaises(ListenError, socketDescription, parseListen(description))


class RestartPolicyTests(SynchronousTestCase):
    """
    L{RestartPolicy} spaces restarts.
    """

    def test_stableRestartsAtOnce(self) -> None:
        """
        A worker that ran at least C{stableAfter} seconds is restarted at
        once, and its crash-loop count starts again.
        """
        self.assertEqual(RestartPolicy(stableAfter=10).after(10, 4), (0.0, 0))

    def test_atMostOncePerInterval(self) -> None:
        """
        A first quick exit is restarted C{interval} seconds after the start
        it followed.
        """
        policy = RestartPolicy(interval=1, stableAfter=10)
        self.assertEqual(policy.after(0.25, 0), (0.75, 1))
        self.assertEqual(policy.after(5, 0), (0.0, 1))

    def test_crashLoopBacksOff(self) -> None:
        """
        Each quick exit in a row doubles the wait, up to C{maxDelay}.
        """
        policy = RestartPolicy(interval=1, maxDelay=30, stableAfter=10)
        delays = []
        quick = 0
        for _ in range(7):
            delay, quick = policy.after(0, quick)
            delays.append(delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30])


@attrs.define
class _Process:
    """
    A recorded worker: what it was started with, the signals sent to it.
    """

    protocol: ProcessProtocol
    argv: list[str]
    childFDs: dict[int, int | str]
    pid: int
    signals: list[str] = attrs.Factory(list)
    ended: bool = False
    stdin: bytes = b""

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def write(self, data: bytes) -> None:
        self.stdin += data

    def requests(self) -> list[dict[str, Any]]:
        """
        The control requests written to the worker so far.
        """
        return [json.loads(line) for line in self.stdin.splitlines()]

    def answer(self, fields: dict[str, Any], index: int = -1) -> None:
        """
        The worker answers its C{index}-th request with C{fields}, on its
        standard output.
        """
        id = self.requests()[index]["id"]
        self.protocol.childDataReceived(1, encodeReply(id, fields))

    def end(self, reason: Exception) -> None:
        """
        The process exits: its protocol is told, as the reactor would.
        """
        self.ended = True
        self.protocol.processEnded(Failure(reason))


class _Processes:
    """
    An C{IReactorProcess} that records processes instead of starting them;
    sockets are bound with the real reactor.
    """

    def __init__(self) -> None:
        self.started: list[_Process] = []
        self.listenTCP = reactor.listenTCP
        self.listenUNIX = cast(IReactorUNIX, reactor).listenUNIX

    def spawnProcess(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: object = None,
        path: object = None,
        uid: object = None,
        gid: object = None,
        usePTY: object = False,
        childFDs: dict[int, int | str] | None = None,
    ) -> _Process:
        process = _Process(protocol, list(args), dict(childFDs or {}), 1000 + len(self.started))
        self.started.append(process)
        protocol.makeConnection(process)
        return process


def _argv(fds: Sequence[int]) -> list[str]:
    return ["worker", ",".join(map(str, fds))]


def _lines(events: Sequence[dict[str, Any]], level: LogLevel) -> list[str]:
    """
    The text of the supervisor's own events at C{level} (not the lines it
    relays from workers).
    """
    return [formatEvent(e) for e in events if e["log_level"] == level and "line" not in e]


class _SupervisorCase(TestCase):
    """
    Helpers: L{WorkerSupervisor} with recorded processes and a L{Clock};
    the sockets are real, closed by the reactor after each test.
    """

    def supervisor(
        self,
        count: int = 2,
        sockets: Sequence[str] = (),
        check: Callable[[], str | None] | None = None,
        admin: str | None = None,
        reusePort: bool = False,
        health: SharedHealth | None = None,
    ) -> WorkerSupervisor:
        self.clock = Clock()
        self.processes = _Processes()
        supervisor = WorkerSupervisor(
            count,
            sockets,
            _argv,
            self.processes,
            self.clock,
            drainTimeout=30,
            policy=RestartPolicy(interval=1, maxDelay=30, stableAfter=10),
            check=check,
            admin=admin,
            reusePort=reusePort,
            health=health,
        )
        self.closing: list[Any] = []
        self.addCleanup(self._closePorts, supervisor)
        return supervisor

    def _closePorts(self, supervisor: WorkerSupervisor) -> Deferred[Any]:
        return DeferredList(
            [listener.close() for listener in supervisor.listeners]
            + [maybeDeferred(port.stopListening) for port in self.closing]
        )

    def running(self) -> list[_Process]:
        return [p for p in self.processes.started if not p.ended]


class SupervisorTests(_SupervisorCase):
    """
    L{WorkerSupervisor} starts, restarts, reloads and stops its workers.
    """

    def test_startsEveryWorker(self) -> None:
        """
        Starting starts one worker per slot; each gets the bound sockets as
        file descriptors 3, 4..., a pipe on 0, 1 and 2, and is told their
        numbers.
        """
        supervisor = self.supervisor(2, ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"])
        supervisor.startService()
        fds = [port.fileno() for port in supervisor.ports]  # type: ignore[attr-defined]
        self.assertEqual(len(self.processes.started), 2)
        for process in self.processes.started:
            self.assertEqual(process.argv, ["worker", "3,4"])
            self.assertEqual(process.childFDs, {0: "w", 1: "r", 2: "r", 3: fds[0], 4: fds[1]})
        self.assertEqual([slot.pid for slot in supervisor.slots], [1000, 1001])

    def test_socketsBoundNotRead(self) -> None:
        """
        The supervisor's sockets accept connections (into their queue) but
        the supervisor itself never accepts them.
        """
        supervisor = self.supervisor(1, ["tcp:0:interface=127.0.0.1"])
        supervisor.privilegedStartService()
        port = supervisor.ports[0]
        self.assertNotIn(port, reactor.getReaders())
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5):  # type: ignore[attr-defined]
            pass

    def test_bindFailureBindsNothing(self) -> None:
        """
        If one socket cannot be bound, L{StartupError} names it and those
        already bound are closed.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        supervisor = self.supervisor(1, ["tcp:0:interface=127.0.0.1", description])
        with self.assertRaises(StartupError) as raised:
            supervisor.privilegedStartService()
        self.assertIn(repr(description), str(raised.exception))
        self.assertEqual(supervisor.ports, [])
        self.assertEqual(self.processes.started, [])

    def test_restartsAWorkerThatDies(self) -> None:
        """
        A worker that exits while the supervisor runs is replaced in its
        slot: at once after a long life, the others untouched.
        """
        supervisor = self.supervisor(2)
        supervisor.startService()
        self.clock.advance(60)
        first, second = self.processes.started
        with capturedLogs() as events:
            first.end(ProcessTerminated(signal=9))
        self.assertEqual(len(self.processes.started), 2)
        self.clock.advance(0)
        self.assertEqual(self.running(), [second, self.processes.started[2]])
        self.assertEqual(supervisor.slots[0].pid, 1002)
        warning = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(
            [(e["slot"], e["pid"], e["how"]) for e in warning], [(1, 1000, "signal SIGKILL")]
        )

    def test_crashLoopBacksOff(self) -> None:
        """
        A worker that keeps dying at once is restarted no more than once a
        second, then after 2, 4... seconds.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        waits = []
        for _ in range(4):
            self.processes.started[-1].end(ProcessTerminated(exitCode=1))
            started = len(self.processes.started)
            waited = 0.0
            while len(self.processes.started) == started:
                self.clock.advance(0.5)
                waited += 0.5
            waits.append(waited)
        self.assertEqual(waits, [1, 2, 4, 8])
        self.assertEqual(supervisor.slots[0].quickExits, 4)

    def test_reloadAsksEveryWorker(self) -> None:
        """
        A reload sends every worker a C{reload} request on its standard
        input (no signal); when all answer that they applied it, the
        supervisor logs that all applied the configuration.
        """
        supervisor = self.supervisor(2)
        supervisor.startService()
        with capturedLogs() as events:
            reloaded = supervisor.reload()
            self.assertEqual(
                [[r["kind"] for r in p.requests()] for p in self.processes.started],
                [["reload"], ["reload"]],
            )
            self.assertNoResult(reloaded)
            for process in self.processes.started:
                process.answer({"ok": True, "why": None})
        self.assertTrue(self.successResultOf(reloaded))
        self.assertEqual([p.signals for p in self.processes.started], [[], []])
        self.assertEqual(
            _lines(events, LogLevel.info), ["reload: all 2 workers applied the configuration"]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reloadFailuresNamed(self) -> None:
        """
        A worker that answers that it did not apply the configuration, one
        that does not answer within 10 s and one that is not running each
        count as failed, named with their pid and why, in one error line.
        """
        supervisor = self.supervisor(3)
        supervisor.startService()
        self.clock.advance(60)
        self.processes.started[2].end(ProcessTerminated(exitCode=1))
        with capturedLogs() as events:
            reloaded = supervisor.reload()
            self.processes.started[0].answer({"ok": False, "why": "pool 'web': no backends"})
            self.clock.advance(9.9)
            self.assertNoResult(reloaded)
            self.clock.advance(0.1)
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(
            _lines(events, LogLevel.error),
            [
                "reload: 3 of 3 workers failed: worker 1 (pid 1000): pool 'web': no "
                "backends; worker 2 (pid 1001): no answer within 10 s; worker 3: not running"
            ],
        )

    def test_reloadWorkerExits(self) -> None:
        """
        A worker that exits before it answers has failed the reload, and
        its exit is named.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        with capturedLogs() as events:
            reloaded = supervisor.reload()
            self.processes.started[0].end(ProcessTerminated(exitCode=3))
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(
            _lines(events, LogLevel.error),
            [
                "reload: 1 of 1 workers failed: worker 1 (pid 1000): exited "
                "(exit status 3) before answering"
            ],
        )

    def test_reloadRejectedFirst(self) -> None:
        """
        A configuration the supervisor's own check refuses is one error
        line saying why, and no worker is asked or signalled.
        """
        supervisor = self.supervisor(2, check=lambda: "lbproxy.toml, line 3: bad key")
        supervisor.startService()
        with capturedLogs() as events:
            reloaded = supervisor.reload()
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(
            _lines(events, LogLevel.error),
            [
                "configuration reload rejected, the running configuration is kept: "
                "lbproxy.toml, line 3: bad key"
            ],
        )
        self.assertEqual([p.stdin for p in self.processes.started], [b"", b""])
        self.assertEqual([p.signals for p in self.processes.started], [[], []])

    def test_reloadCheckBroken(self) -> None:
        """
        A check that fails unexpectedly is logged with its traceback and
        refuses the reload; no worker is asked.
        """

        def broken() -> str | None:
            raise ZeroDivisionError("oops")

        supervisor = self.supervisor(1, check=broken)
        supervisor.startService()
        with capturedLogs() as events:
            reloaded = supervisor.reload()
        self.assertFalse(self.successResultOf(reloaded))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn(
            "configuration reload rejected, the running configuration is kept: the check "
            "failed unexpectedly",
            _lines(events, LogLevel.error)[-1],
        )
        self.assertEqual(self.processes.started[0].stdin, b"")

    def test_reloadCertificatesReloads(self) -> None:
        """
        L{WorkerSupervisor.reloadCertificates}, what SIGHUP calls, is the
        whole reload.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        supervisor.reloadCertificates()
        self.assertEqual([r["kind"] for r in self.processes.started[0].requests()], ["reload"])

    def test_answersNotLogged(self) -> None:
        """
        Answers to control requests on a worker's standard output go to the
        request, not to the log; the same line on standard error is logged.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        process = self.processes.started[0]
        with capturedLogs() as events:
            reloaded = supervisor.reload()
            id = process.requests()[0]["id"]
            reply = encodeReply(id, {"ok": True})
            process.protocol.childDataReceived(1, b"before\n" + reply[:5])
            process.protocol.childDataReceived(1, reply[5:] + b"after\n")
            process.protocol.childDataReceived(2, reply)
        self.assertTrue(self.successResultOf(reloaded))
        relayed = [e["line"] for e in events if e.get("log_system") == "worker 1 pid 1000"]
        self.assertEqual(relayed, ["before", "after", reply.decode().rstrip("\n")])

    def test_longAnswerKeptWhole(self) -> None:
        """
        An answer longer than a log line's limit is read whole; a log line
        that long is cut.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        process = self.processes.started[0]
        asked = supervisor.slots[0].call("admin", {})
        big = "x" * (200 * 1024)
        reply = encodeReply(process.requests()[0]["id"], {"big": big})
        with capturedLogs() as events:
            for start in range(0, len(reply), 4096):
                process.protocol.childDataReceived(1, reply[start : start + 4096])
            process.protocol.childDataReceived(1, b"y" * (100 * 1024))
        self.assertEqual(self.successResultOf(asked), {"big": big})
        relayed = [e["line"] for e in events if "line" in e]
        self.assertEqual([len(line) for line in relayed], [100 * 1024])

    @inlineCallbacks
    def test_stopDrainsEveryWorker(self) -> Gen:
        """
        Stopping closes the supervisor's sockets, sends SIGTERM to every
        worker and fires once all have exited; none is restarted.
        """
        supervisor = self.supervisor(2, ["tcp:0:interface=127.0.0.1"])
        supervisor.startService()
        port = supervisor.ports[0]
        self.closing.append(port)
        stopped = supervisor.stopService()
        self.assertEqual([p.signals for p in self.processes.started], [["TERM"], ["TERM"]])
        self.assertTrue(port.disconnecting)  # type: ignore[attr-defined]
        self.processes.started[0].end(ProcessDone(0))
        self.assertNoResult(stopped)
        self.processes.started[1].end(ProcessDone(0))
        yield stopped
        self.clock.advance(60)
        self.assertEqual(len(self.processes.started), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopCancelsPendingRestart(self) -> None:
        """
        A restart still waiting when the supervisor stops never happens.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        self.processes.started[0].end(ProcessTerminated(exitCode=1))
        self.successResultOf(supervisor.stopService())
        self.clock.advance(60)
        self.assertEqual(len(self.processes.started), 1)

    def test_stragglerKilled(self) -> None:
        """
        A worker still running C{KILL_GRACE} seconds after the drain timeout
        is killed with SIGKILL.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        stopped = supervisor.stopService()
        self.clock.advance(30 + KILL_GRACE - 0.5)
        self.assertEqual(self.processes.started[0].signals, ["TERM"])
        self.clock.advance(0.5)
        self.assertEqual(self.processes.started[0].signals, ["TERM", "KILL"])
        self.processes.started[0].end(ProcessTerminated(signal=9))
        self.successResultOf(stopped)

    def test_outputLogged(self) -> None:
        """
        Each line a worker writes is logged with its slot and pid as the log
        system: standard output at info, standard error as a warning;
        lines split across reads are joined, and a last unfinished line is
        logged when the worker exits.
        """
        supervisor = self.supervisor(1)
        supervisor.startService()
        protocol = self.processes.started[0].protocol
        with capturedLogs() as events:
            protocol.childDataReceived(1, b"one\ntw")
            protocol.childDataReceived(2, b"oops {x}\n")
            protocol.childDataReceived(1, b"o\nthree")
            supervisor.stopService()
            self.processes.started[0].end(ProcessDone(0))
        relayed = [e for e in events if e.get("log_system") == "worker 1 pid 1000"]
        self.assertEqual(
            [(e["line"], e["log_level"]) for e in relayed],
            [
                ("one", LogLevel.info),
                ("oops {x}", LogLevel.warn),
                ("two", LogLevel.info),
                ("three", LogLevel.info),
            ],
        )


class ReusePortSupervisorTests(_SupervisorCase):
    """
    With C{reusePort}, every worker slot has a socket of its own on each
    TCP listener, all on one port.
    """

    def test_aSocketEach(self) -> None:
        """
        Each worker gets its slot's socket of a TCP listener (all on one
        port, with C{SO_REUSEPORT}) and the one socket of a UNIX listener,
        which they share.
        """
        # A short path: AF_UNIX paths are limited to 107 bytes, and the
        # trial temp directory of a CI run can be longer than that.
        directory = tempfile.mkdtemp(prefix="lb")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s")
        supervisor = self.supervisor(
            2, ["tcp:0:interface=127.0.0.1", f"unix:{path}"], reusePort=True
        )
        supervisor.startService()
        tcp, unix = supervisor.listeners
        self.assertEqual((tcp.shared, unix.shared), (False, True))
        ports = {s.getsockname()[1] for s in tcp.sockets}
        self.assertEqual(len(ports), 1)
        self.assertEqual(
            [s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in tcp.sockets], [1, 1]
        )
        first, second = self.processes.started
        self.assertEqual(first.argv, ["worker", "3,4"])
        self.assertEqual(
            [(p.childFDs[3], p.childFDs[4]) for p in (first, second)],
            [(tcp.sockets[0].fileno(), unix.fileno(1)), (tcp.sockets[1].fileno(), unix.fileno(1))],
        )

    def test_restartedWorkerAdoptsItsSlotsSocket(self) -> None:
        """
        A worker started again in its slot gets the same socket as the one
        before it, which the supervisor kept open: the connections queued
        on it while the slot was empty are waiting for the new worker.
        """
        supervisor = self.supervisor(2, ["tcp:0:interface=127.0.0.1"], reusePort=True)
        supervisor.startService()
        held = supervisor.listeners[0].sockets[0]
        self.clock.advance(60)
        self.processes.started[0].end(ProcessTerminated(signal=9))
        port = held.getsockname()[1]
        queued = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
        for connection in queued:
            self.addCleanup(connection.close)
        self.clock.advance(0)
        self.assertEqual(self.processes.started[2].childFDs[3], held.fileno())
        waiting = 0
        while True:
            try:
                accepted, _ = held.accept()
            except BlockingIOError:
                break
            accepted.close()
            waiting += 1
        self.assertGreater(waiting, 0)

    def test_stopClosesEverySocket(self) -> None:
        """
        Stopping closes the supervisor's copy of every slot's sockets: the
        port is free once the workers close theirs.
        """
        supervisor = self.supervisor(2, ["tcp:0:interface=127.0.0.1"], reusePort=True)
        supervisor.startService()
        port = supervisor.listeners[0].sockets[0].getsockname()[1]
        for process in self.processes.started:
            process.signals.clear()
        stopped = supervisor.stopService()
        for process in self.processes.started:
            process.end(ProcessDone(0))
        self.successResultOf(stopped)
        again = socket.socket()
        self.addCleanup(again.close)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))

    def test_takenPortBindsNothing(self) -> None:
        """
        A port another group of SO_REUSEPORT sockets holds (another lbproxy
        started twice) is refused, naming the listener, and nothing stays
        bound.
        """
        other = bindGroup(TCPAddress(socket.AF_INET, "127.0.0.1", 0), 2)
        for s in other:
            self.addCleanup(s.close)
        description = f"tcp:{other[0].getsockname()[1]}:interface=127.0.0.1"
        supervisor = self.supervisor(2, ["tcp:0:interface=127.0.0.1", description], reusePort=True)
        with self.assertRaises(StartupError) as raised:
            supervisor.privilegedStartService()
        self.assertIn(repr(description), str(raised.exception))
        self.assertIn("Address already in use", str(raised.exception))
        self.assertEqual(supervisor.listeners, [])


class SupervisorHealthTests(_SupervisorCase):
    """
    The supervisor runs the shared health checks: it learns the pools from
    a worker and tells each worker that starts what it knows.
    """

    def health(self) -> SharedHealth:
        self.network = MemoryNetwork()
        return SharedHealth(self.network.clock, self.network.upstream)

    def test_asksTheFirstWorker(self) -> None:
        """
        Once the workers are started, the first is asked for its pools.
        """
        self.supervisor(2, health=self.health()).startService()
        self.assertEqual(
            [[r["kind"] for r in p.requests()] for p in self.processes.started],
            [["health-pools"], []],
        )

    def test_restartedWorkerTold(self) -> None:
        """
        A worker started again in its slot is told the health of every
        backend.
        """
        self.supervisor(2, health=self.health()).startService()
        first = self.processes.started[0]
        first.answer(
            {
                "pools": [
                    {
                        "name": "web",
                        "interval": 0,
                        "path": "/",
                        "timeout": 1,
                        "fall": 1,
                        "rise": 1,
                        "backends": [["http", "10.0.0.1", 80]],
                    }
                ]
            }
        )
        self.clock.advance(60)
        first.end(ProcessTerminated(signal=9))
        self.clock.advance(0)
        (told,) = self.processes.started[2].requests()
        self.assertEqual(
            (told["kind"], told["backends"]),
            (
                "health",
                [
                    {
                        "pool": "web",
                        "scheme": "http",
                        "host": "10.0.0.1",
                        "port": 80,
                        "healthy": True,
                    }
                ],
            ),
        )

    def test_refreshedAfterReload(self) -> None:
        """
        After a reload the first worker is asked for its pools again.
        """
        supervisor = self.supervisor(2, health=self.health())
        supervisor.startService()
        first, second = self.processes.started
        first.answer({"pools": []})
        reloaded = supervisor.reload()
        for process in (first, second):
            process.answer({"ok": True, "why": None})
        self.successResultOf(reloaded)
        self.assertEqual(first.requests()[-1]["kind"], "health-pools")

    @inlineCallbacks
    def test_refreshedAfterAdminChange(self) -> Gen:
        """
        After a change through the admin API the first worker is asked for
        its pools again.
        """
        supervisor = self.supervisor(2, health=self.health(), admin="tcp:0:interface=127.0.0.1")
        supervisor.startService()
        self.closing.append(supervisor.adminPort)
        first, second = self.processes.started
        first.answer({"pools": []})
        assert supervisor.adminPort is not None
        port = supervisor.adminPort.getHost().port  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}/pools/web/backends".encode()
        answer = get(self, url, method=b"POST")
        yield until(lambda: len(second.requests()) == 1, "both workers to be asked")
        for process in (first, second):
            process.answer(_jsonAnswer(201, {}))
        response, _ = yield answer
        self.assertEqual(response.code, 201)
        self.assertEqual(first.requests()[-1]["kind"], "health-pools")


class SupervisorAdminTests(_SupervisorCase):
    """
    The supervisor serves the admin API for its workers, over real
    loopback HTTP, answered by recorded workers.
    """

    def adminURL(self, supervisor: WorkerSupervisor, path: str) -> bytes:
        assert supervisor.adminPort is not None
        port = supervisor.adminPort.getHost().port  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}{path}".encode()

    @inlineCallbacks
    def test_adminAnsweredByEveryWorker(self) -> Gen:
        """
        The supervisor listens on C{--admin} and accepts there itself; a
        C{GET} of a pool goes to every worker, and the answer is their
        views combined: the requests of each backend summed, C{"workers"}
        the number of workers.
        """
        supervisor = self.supervisor(2, admin="tcp:0:interface=127.0.0.1")
        supervisor.startService()
        self.closing.append(supervisor.adminPort)
        self.assertIsNotNone(supervisor.adminPort)
        answer = get(self, self.adminURL(supervisor, "/pools/web/backends"))
        yield until(
            lambda: all(p.stdin for p in self.processes.started), "both workers to be asked"
        )
        for process, requests in zip(self.processes.started, (3, 4), strict=True):
            (request,) = process.requests()
            self.assertEqual(
                (request["kind"], request["method"], request["path"]),
                ("admin", "GET", "/pools/web/backends"),
            )
            view = {"pool": "web", "backends": [{"url": "http://b:80", "requests": requests}]}
            process.answer(_jsonAnswer(200, view))
        response, body = yield answer
        self.assertEqual(response.code, 200)
        self.assertEqual(
            json.loads(body),
            {"pool": "web", "backends": [{"url": "http://b:80", "requests": 7}], "workers": 2},
        )

    @inlineCallbacks
    def test_adminChangeInEveryWorker(self) -> Gen:
        """
        A C{POST} is sent to every worker; when they agree, the answer is
        the first worker's, its headers and all.
        """
        supervisor = self.supervisor(2, admin="tcp:0:interface=127.0.0.1")
        supervisor.startService()
        self.closing.append(supervisor.adminPort)
        answer = get(self, self.adminURL(supervisor, "/pools/web/backends"), method=b"POST")
        yield until(
            lambda: all(p.stdin for p in self.processes.started), "both workers to be asked"
        )
        for process in self.processes.started:
            process.answer(
                _jsonAnswer(201, {"pid": process.pid}, [["Location", "/pools/web/backends/b"]])
            )
        response, body = yield answer
        self.assertEqual((response.code, json.loads(body)), (201, {"pid": 1000}))
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/pools/web/backends/b"])

    def test_adminPortClosedOnStop(self) -> Deferred[None]:
        """
        Stopping closes the admin API's port with the shared sockets.
        """
        supervisor = self.supervisor(1, admin="tcp:0:interface=127.0.0.1")
        supervisor.startService()
        port = supervisor.adminPort
        assert port is not None
        supervisor.stopService()
        self.assertIsNone(supervisor.adminPort)
        self.assertTrue(port.disconnecting)  # type: ignore[attr-defined]
        # The port finishes closing in the next reactor turn (stopping it
        # once more at clean-up would close it twice).
        return deferLater(reactor, 0, lambda: None)

    def test_adminBindFailureBindsNothing(self) -> None:
        """
        An admin endpoint that cannot be bound is a L{StartupError} naming
        it, and the shared sockets bound before it are closed.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        admin = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        supervisor = self.supervisor(1, ["tcp:0:interface=127.0.0.1"], admin=admin)
        with self.assertRaises(StartupError) as raised:
            supervisor.privilegedStartService()
        self.assertIn(repr(admin), str(raised.exception))
        self.assertEqual((supervisor.ports, supervisor.adminPort), ([], None))


class RestartResyncTests(_SupervisorCase):
    """
    A worker restarted in its slot is brought up to date with a running
    worker's backends when the admin API is on.
    """

    def restarted(self, admin: str | None) -> WorkerSupervisor:
        supervisor = self.supervisor(2, admin=admin)
        supervisor.startService()
        if supervisor.adminPort is not None:
            self.closing.append(supervisor.adminPort)
        self.clock.advance(60)
        self.processes.started[0].end(ProcessTerminated(signal=9))
        self.clock.advance(0)
        self.assertEqual(len(self.processes.started), 3)
        return supervisor

    def test_resynced(self) -> None:
        """
        The restarted worker is asked for its pools' backends, as is a
        running one, and given the changes that make them the same; the
        supervisor logs what they were.
        """
        with capturedLogs() as events:
            self.restarted(admin="tcp:0:interface=127.0.0.1")
            _, model, new = self.processes.started
            self.assertEqual(new.stdin, b"")
            self.assertEqual([r["path"] for r in model.requests()], ["/pools"])
            model.answer(_jsonAnswer(200, {"pools": [{"name": "web"}]}))
            self.assertEqual(model.requests()[-1]["path"], "/pools/web/backends")
            view = {"url": "http://a:80", "weight": 2, "state": "up", "removing": False}
            model.answer(_jsonAnswer(200, {"pool": "web", "backends": [view]}))
            self.assertEqual(
                [(r["method"], r["path"]) for r in new.requests()],
                [("GET", "/pools/web/backends")],
            )
            new.answer(_jsonAnswer(200, {"pool": "web", "backends": []}))
            (post,) = new.requests()[1:]
            self.assertEqual(
                (post["method"], post["path"], json.loads(base64.b64decode(post["body"]))),
                ("POST", "/pools/web/backends", {"address": "http://a:80", "weight": 2}),
            )
            new.answer(_jsonAnswer(201, {}))
        self.assertEqual(
            _lines(events, LogLevel.info)[-1],
            "worker 1 (pid 1002) brought up to date with worker 2 (pid 1001): "
            "add http://a:80 to web",
        )

    def test_notResynced(self) -> None:
        """
        A running worker that does not answer leaves the restarted one as
        it started, and the supervisor warns.
        """
        with capturedLogs() as events:
            self.restarted(admin="tcp:0:interface=127.0.0.1")
            self.clock.advance(10)
        self.assertEqual(
            _lines(events, LogLevel.warn)[-1],
            "worker 1 (pid 1002) not brought up to date with worker 2 (pid 1001): "
            "no answer within 10 s",
        )

    def test_noAdminNoResync(self) -> None:
        """
        Without the admin API nothing can have changed: no worker is asked.
        """
        self.restarted(admin=None)
        self.assertEqual([p.stdin for p in self.processes.started], [b"", b"", b""])


def _jsonAnswer(
    status: int, value: object, headers: list[list[str]] | None = None
) -> dict[str, Any]:
    """
    The fields of a worker's answer to an admin call: C{value} as JSON.
    """
    return {
        "status": status,
        "contentType": "application/json",
        "body": base64.b64encode(json.dumps(value).encode()).decode(),
        "headers": headers or [],
    }


class ConfigurationCheckTests(OptionsTestCase):
    """
    L{configurationCheck}: what the supervisor checks before a reload.
    """

    def write(self, text: str) -> None:
        with open("lbproxy.toml", "w") as f:
            f.write(text)

    def check(self) -> str | None:
        arguments = ["--config", "lbproxy.toml", "--workers", "2"]
        options = self.parse(*arguments)
        assert options.config is not None
        self.checkNow = configurationCheck(arguments, options.config)
        return self.checkNow()

    def test_valid(self) -> None:
        """
        A configuration that can be used passes, changed pools and all.
        """
        self.write('listen = ["tcp:0"]\n[pools.web]\nbackends = ["127.0.0.2:80"]\n')
        self.assertIsNone(self.check())
        self.write('listen = ["tcp:0"]\n[pools.web]\nbackends = ["127.0.0.3:80"]\n')
        self.assertIsNone(self.checkNow())

    def test_invalid(self) -> None:
        """
        An invalid file is refused with the line the command line would
        print, naming the file and key.
        """
        self.write('listen = ["tcp:0"]\n[pools.web]\nbackends = ["127.0.0.2:80"]\n')
        self.assertIsNone(self.check())
        self.write('listen = ["tcp:0"]\n[pools.web]\nbackendz = ["127.0.0.2:80"]\n')
        why = self.checkNow()
        assert why is not None
        self.assertIn("lbproxy.toml", why)
        self.assertIn("backendz", why)

    def test_listenersKept(self) -> None:
        """
        A configuration that changes the listeners is refused: the
        supervisor holds their sockets.
        """
        self.write('listen = ["tcp:0"]\n[pools.web]\nbackends = ["127.0.0.2:80"]\n')
        self.assertIsNone(self.check())
        self.write('listen = ["tcp:1"]\n[pools.web]\nbackends = ["127.0.0.2:80"]\n')
        self.assertIn("listeners cannot change", self.checkNow() or "")


class _Lines(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class RealProcessTests(TestCase):
    """
    The supervisor with the real reactor: sockets reach the worker.
    """

    @inlineCallbacks
    def test_workerGetsTheSocket(self) -> Gen:
        """
        A real worker process finds the supervisor's listening socket on
        file descriptor 3, bound to the same port; its output is logged.
        """
        script = (
            "import socket, sys; "
            "s = socket.socket(fileno=int(sys.argv[1])); "
            "print('port', s.getsockname()[1], s.family.name, flush=True)"
        )
        supervisor = WorkerSupervisor(
            1,
            ["tcp:0:interface=127.0.0.1"],
            lambda fds: [sys.executable, "-c", script, str(fds[0])],
            reactor,
            reactor,
            drainTimeout=5,
        )
        with capturedLogs() as events:
            supervisor.startService()
            ended = supervisor.slots[0].whenEnded()
            port = supervisor.ports[0].getHost().port  # type: ignore[attr-defined]
            yield ended
        yield supervisor.stopService()
        lines = [e["line"] for e in events if "line" in e]
        self.assertIn(f"port {port} AF_INET", lines)


class RealWorkerTests(TestCase):
    """
    A real worker (C{python -m lbproxy.workers}) answers the supervisor's
    control requests.
    """

    @inlineCallbacks
    def test_workerAnswers(self) -> Gen:
        """
        A worker answers admin calls from its own admin API and serves no
        admin listener itself (C{--admin} is the supervisor's); it answers
        a reload of an invalid file with the reason, and applies a valid
        one; it describes its pools for the supervisor's health checks,
        and marks a backend down when told.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "lbproxy.toml")
        valid = '[pools.web]\nbackends = ["127.0.0.2:80"]\nhealth-interval = 0\n'
        with open(config, "w") as f:
            f.write(valid)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        adminPort = taken.getsockname()[1]
        taken.close()
        arguments = [
            "--config",
            config,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--admin",
            f"tcp:{adminPort}:interface=127.0.0.1",
            "--access-log",
            "none",
        ]
        supervisor = WorkerSupervisor(
            1,
            ["tcp:0:interface=127.0.0.1"],
            workerArgv(arguments),
            reactor,
            reactor,
            drainTimeout=5,
            environment=workerEnvironment(),
            answerTimeout=30,
        )
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        slot = supervisor.slots[0]

        answer = yield slot.call("admin", adminRequest("GET", "/pools", b"", None))
        response = readResponse(answer)
        self.assertEqual(response.status, 200)
        self.assertEqual(
            [p["name"] for p in json.loads(response.body)["pools"]], ["web"], response.body
        )
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", adminPort), timeout=5).close()

        with open(config, "w") as f:
            f.write(valid.replace("backends", "backendz"))
        answer = yield slot.call("reload", {})
        self.assertEqual(answer["ok"], False)
        self.assertIn("backendz", answer["why"])

        with open(config, "w") as f:
            f.write(valid.replace("127.0.0.2:80", "127.0.0.3:80"))
        answer = yield slot.call("reload", {})
        self.assertEqual(answer, {"ok": True, "why": None})
        answer = yield slot.call("admin", adminRequest("GET", "/pools/web", b"", None))
        backends = json.loads(readResponse(answer).body)["backends"]
        self.assertEqual([b["address"] for b in backends], ["127.0.0.3:80"])

        answer = yield slot.call("health-pools", {})
        self.assertEqual(
            [(p["name"], p["interval"], p["backends"]) for p in answer["pools"]],
            [("web", 0.0, [["http", "127.0.0.3", 80]])],
        )
        down = {"pool": "web", "scheme": "http", "host": "127.0.0.3", "port": 80}
        answer = yield slot.call("health", {"backends": [{**down, "healthy": False}]})
        self.assertEqual(answer, {"changed": 1})
        answer = yield slot.call("admin", adminRequest("GET", "/pools/web", b"", None))
        backends = json.loads(readResponse(answer).body)["backends"]
        self.assertEqual([b["state"] for b in backends], ["down"])


class AdoptedSocketTests(TestCase):
    """
    L{LoadBalancerService} listens on sockets it is given.
    """

    @inlineCallbacks
    def test_servesOnAdoptedSocket(self) -> Gen:
        """
        Given an endpoint over a socket bound elsewhere, the service serves
        on that socket instead of binding its C{--listen} address.
        """
        backend = yield startBackend(self, b"adopted")
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        port = listening.getsockname()[1]
        fd = os.dup(listening.fileno())
        listening.close()
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen("tcp:1:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                health=HealthSettings(interval=0),
            ),
            reactor,
            reactor,
            [AdoptedStreamServerEndpoint(reactor, fd, socket.AF_INET)],
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.ports[0].getHost().port, port)  # type: ignore[attr-defined]
        response, body = yield get(self, b"http://127.0.0.1:%d/" % (port,))
        self.assertEqual((response.code, body), (200, b"adopted"))


class SupervisorPipeTests(TestCase):
    """
    A worker reads control requests from the pipe on its standard input,
    and drains when the pipe closes.
    """

    @inlineCallbacks
    def test_linesThenEnd(self) -> Gen:
        """
        Each line read is handed on, split across reads or not; the end of
        the pipe is reported once every line before it was.
        """
        readEnd, writeEnd = os.pipe()
        lines: list[bytes] = []
        ended: Deferred[None] = Deferred()
        pipe = _SupervisorPipe(reactor, readEnd, lines.append, lambda: ended.callback(None))
        pipe.startReading()
        self.addCleanup(os.close, readEnd)
        os.write(writeEnd, b'{"id": 1}\n{"id"')
        yield until(lambda: lines, "the first line")
        os.write(writeEnd, b": 2}\n")
        os.close(writeEnd)
        yield ended
        self.assertEqual(lines, [b'{"id": 1}', b'{"id": 2}'])


class WorkerOutputTests(SynchronousTestCase):
    """
    What a worker writes on its standard output.
    """

    def test_logLinesNeverAnswers(self) -> None:
        """
        A log event whose text holds the answer marker, even at the start
        of a line, is written with the marker's first character escaped, so
        the supervisor logs it rather than taking it for an answer.
        """
        stream = io.StringIO()
        observer = _textObserver(stream)
        marker = MARKER.decode()
        observer({"log_format": "{x}", "x": marker + '{"id": 1}\n' + marker, "log_time": 0})
        self.assertEqual(stream.getvalue().count("\n"), 2)
        lines = stream.getvalue().encode().splitlines()
        self.assertFalse(any(isReply(line) for line in lines), lines)
        self.assertIn(b"\\x1elbproxy-control", lines[0])

    def test_answersWholeLines(self) -> None:
        """
        An answer is written as the one line it is, and flushed.
        """
        stream = io.StringIO()
        _answerWriter(stream)(encodeReply(3, {"ok": True}))
        self.assertEqual(stream.getvalue().encode(), encodeReply(3, {"ok": True}))


class WorkerArgvTests(SynchronousTestCase):
    """
    L{workerArgv} starts this Python on L{lbproxy.workers}.
    """

    def test_argv(self) -> None:
        """
        The worker is C{python -m lbproxy.workers --fds 3,4} followed by the
        supervisor's lbproxy arguments.
        """
        argv = workerArgv(["--backends", "h"])([3, 4])
        self.assertEqual(
            argv, [sys.executable, "-m", "lbproxy.workers", "--fds", "3,4", "--backends", "h"]
        )
