"""
Tests for L{lbproxy.workers}: C{--workers}, the restart policy, the
supervisor on a L{Clock} with recorded processes, the passing of sockets
to a real child process, and the load balancer on adopted sockets.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Generator, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.listen import ListenError, parseListen, socketDescription
from lbproxy.service import LoadBalancerConfig, LoadBalancerService, StartupError
from lbproxy.test.fakes import get, reactor, startBackend
from lbproxy.test.test_tap import OptionsTestCase
from lbproxy.upstream.health import HealthSettings
from lbproxy.workers import (
    KILL_GRACE,
    RestartPolicy,
    WorkersError,
    WorkerSupervisor,
    checkWorkers,
    parseWorkers,
    workerArgv,
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

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

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


class SupervisorTests(TestCase):
    """
    L{WorkerSupervisor} with recorded processes and a L{Clock}; the
    sockets are real, closed by the reactor after each test.
    """

    def supervisor(self, count: int = 2, sockets: Sequence[str] = ()) -> WorkerSupervisor:
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
        )
        self.closing: list[Any] = []
        self.addCleanup(self._closePorts, supervisor)
        return supervisor

    def _closePorts(self, supervisor: WorkerSupervisor) -> Deferred[Any]:
        return DeferredList(
            [maybeDeferred(port.stopListening) for port in supervisor.ports + self.closing]
        )

    def running(self) -> list[_Process]:
        return [p for p in self.processes.started if not p.ended]

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

    def test_signalsForwarded(self) -> None:
        """
        A certificate reload sends SIGHUP to every running worker.
        """
        supervisor = self.supervisor(3)
        supervisor.startService()
        self.processes.started[1].end(ProcessDone(0))
        supervisor.reloadCertificates()
        self.assertEqual([p.signals for p in self.processes.started], [["HUP"], [], ["HUP"]])

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
