# -*- test-case-name: lbproxy.test.test_workers -*-
"""
Several processes, one set of sockets: C{--workers N}.

Twisted runs in one thread, so one lbproxy process uses one core.  With
C{--workers N} (N > 1) the process twistd runs is a supervisor,
L{WorkerSupervisor}, that does no proxying:

  - it binds the plain socket under every C{--listen} (and
    C{--redirect-http}): the TCP socket of an C{ssl:} listener, the socket
    under an C{haproxy:} one (L{lbproxy.listen.socketDescription}), and
    never accepts on them itself.  With C{--reuse-port} (the default on
    Linux) it binds each TCP socket N times, once per worker slot, with
    C{SO_REUSEPORT} (L{lbproxy.reuseport}): each slot's worker accepts
    from its own socket, and the kernel spreads new connections over the
    sockets by a hash of their addresses and ports.  Otherwise, and always
    for C{unix:} listeners, every worker accepts from the one socket,
    whichever wakes first taking what is queued;
  - it starts N workers, each C{python -m lbproxy.workers --fds 3,4,...
    ARGS}, with its slot's sockets as the worker's file descriptors 3,
    4... and ARGS the supervisor's own lbproxy arguments.  A worker
    (L{workerMain}) runs the single-process load balancer on the sockets it
    was given (L{twisted.internet.endpoints.AdoptedStreamServerEndpoint}),
    doing TLS itself;
  - a worker's standard output and error are pipes to the supervisor, which
    logs each line it reads, with the worker's slot and pid as the log
    system; a worker's standard input is a pipe from the supervisor, whose
    end (the supervisor died) makes the worker drain and exit;
  - the same pipes carry the control channel (L{lbproxy.control}): the
    supervisor writes requests as JSON lines on a worker's standard input,
    the worker answers with lines marked L{lbproxy.control.MARKER} on its
    standard output, which the supervisor takes out instead of logging;
  - SIGHUP reloads: the supervisor first reads the configuration again
    itself (the same arguments, the config file read anew); if it is
    invalid (or changes the listeners, whose sockets it holds), it logs
    C{configuration reload rejected, the running configuration is kept:
    WHY} and no worker is asked.  Otherwise every worker reloads (its config
    file and TLS certificates, L{lbproxy.cli.reload.Reloader}) and answers
    whether it applied everything, and the supervisor logs C{reload: all N
    workers applied the configuration} or C{reload: K of N workers failed:
    worker 2 (pid 1234): WHY; ...} (a worker that does not answer within
    L{lbproxy.control.ANSWER_TIMEOUT} seconds, or is not running, failed);
  - the admin API (C{--admin}) is served once, by the supervisor, for all
    workers (L{lbproxy.control.WorkersAdmin}); the workers run without one.
    Each request goes to the workers, each of which answers from its own
    L{lbproxy.admin.AdminAPI}: a change (C{POST}, C{PATCH}, C{DELETE},
    C{POST /config} too) is made in every worker and answered as the first
    worker answered when all agree (500 naming each worker's answer when
    they do not); C{GET /pools...} combines every worker's view (counters
    summed, the most severe state, the highest latency, and C{"workers"}:
    how many it combines); C{GET /config} and C{GET /} ask worker 1;
  - on SIGTERM or SIGINT the supervisor closes its copy of the sockets (and
    the admin API) and sends SIGTERM to every worker, each drains
    (C{--drain-timeout}) and exits, and the supervisor exits when they have
    (it kills a worker still there L{KILL_GRACE} seconds after the drain
    timeout);
  - a worker that exits when it was not asked to is started again in its
    slot, no sooner than L{RestartPolicy} allows.  It starts from the
    command line and the config file; with the admin API on, the
    supervisor then makes its pools' backends (which, their weights,
    draining) those of a running worker (L{lbproxy.control.resync}).  It
    adopts the sockets of its slot, which the supervisor kept open: with
    C{--reuse-port}, the connections the kernel gave that slot's socket
    while it was empty waited in its queue (up to its backlog; SYNs past
    that are dropped, and the clients send them again), and are served by
    the new worker;
  - active health checks are the supervisor's (L{lbproxy.control.health}):
    it probes each backend once per interval for all the workers, which
    run none, and tells every worker each change, and a worker that starts
    the state of every backend.

Ejections (passive checks) and retry budgets are each worker's own.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO, cast

import attrs
from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventAsText,
    globalLogBeginner,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._twisted.transport import batchingSends
from lbproxy.admin import AdminAPI, AdminResponse, adminSite
from lbproxy.control import (
    ANSWER_TIMEOUT,
    MAX_MESSAGE,
    ControlClient,
    ControlError,
    ControlServer,
    LineBuffer,
    ReloadReport,
    ReportedReload,
    Resynced,
    SharedHealth,
    WorkersAdmin,
    adminHandler,
    askAll,
    escapeLogText,
    healthHandlers,
    isReply,
    resync,
)
from lbproxy.listen import ListenError, ListenSpec, socketDescription
from lbproxy.metrics.site import metricsSite
from lbproxy.reuseport import REUSE_PORT, bindGroup, tcpAddress
from lbproxy.service import LoadBalancerConfig, StartupError, makeLoadBalancer
from lbproxy.tls.client import BackendTLS
from lbproxy.upstream.pool import Upstream, UpstreamSettings

__all__ = [
    "KILL_GRACE",
    "REUSE_PORT",
    "RestartPolicy",
    "WorkerSupervisor",
    "WorkersError",
    "checkWorkers",
    "configurationCheck",
    "makeSupervisor",
    "parseWorkers",
    "reusePortChoice",
    "workerArgv",
    "workerEnvironment",
    "workerMain",
]

FIRST_FD = 3
"""
The worker's file descriptor for the first socket; the others follow.
"""

KILL_GRACE = 10.0
"""
Seconds after the drain timeout that a stopping worker is killed (SIGKILL).
"""

_MAX_LINE = 64 * 1024


def _cpuCount() -> int:
    """
    The CPUs this process may run on (its affinity, e.g. under C{taskset}),
    or all of them where that is not known.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parseWorkers(text: str, cpuCount: Callable[[], int] = _cpuCount) -> int:
    """
    The number of processes C{--workers} asks for: a whole number from 1,
    or C{auto} for one per CPU this process may use.

    @raise usage.UsageError: For anything else.
    """
    if text.strip().lower() == "auto":
        return max(1, cpuCount())
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise usage.UsageError(f"--workers must be a whole number from 1, or auto, not {text!r}")
    return count


def _sharedListens(config: LoadBalancerConfig) -> list[ListenSpec]:
    """
    Every listener the workers share: C{--listen} in order, then
    C{--redirect-http}.
    """
    return list(config.listens) + ([config.redirectHTTP] if config.redirectHTTP is not None else [])


class WorkersError(ValueError):
    """
    What C{--workers} asks for cannot be done with the configuration; the
    message is one line for the operator.
    """


def reusePortChoice(reusePort: bool, noReusePort: bool, available: bool = REUSE_PORT) -> bool:
    """
    Whether workers get sockets of their own (C{SO_REUSEPORT}), from
    C{--reuse-port} and C{--no-reuse-port}: yes where it is C{available}
    unless C{--no-reuse-port} says no.

    @raise WorkersError: For both flags, or C{--reuse-port} where it is not
        available.
    """
    if reusePort and noReusePort:
        raise WorkersError("give --reuse-port or --no-reuse-port, not both")
    if reusePort and not available:
        raise WorkersError(
            "--reuse-port needs SO_REUSEPORT as Linux has it (the kernel spreading "
            "connections over the sockets); use --no-reuse-port here"
        )
    return available and not noReusePort


def checkWorkers(count: int, config: LoadBalancerConfig) -> None:
    """
    Refuse what C{count} workers cannot do with C{config}: C{--demo} (its
    backends live in one process) and listeners whose socket lbproxy does
    not bind itself (C{systemd:}, plugins).

    @raise WorkersError: With one line saying which.
    """
    if count == 1:
        return
    if config.demo:
        raise WorkersError(
            "--demo runs its backends inside the one lbproxy process; use it without --workers"
        )
    for spec in _sharedListens(config):
        try:
            socketDescription(spec)
        except ListenError as e:
            raise WorkersError(str(e)) from None


@attrs.frozen
class RestartPolicy:
    """
    When a worker that exited unexpectedly is started again.

    A worker that ran at least C{stableAfter} seconds is restarted at once.
    One that exits sooner is in a crash loop: it is restarted C{interval}
    seconds after it last started, then twice that after the next quick
    exit, and so on up to C{maxDelay}; so a slot never restarts more than
    once per C{interval}, and a worker that cannot start costs little.
    """

    interval: float = 1.0
    maxDelay: float = 30.0
    stableAfter: float = 10.0

    def after(self, ranFor: float, quickExits: int) -> tuple[float, int]:
        """
        The delay before restarting a worker that ran C{ranFor} seconds,
        after C{quickExits} quick exits in a row before this one; and the
        count of quick exits in a row including this one.
        """
        if ranFor >= self.stableAfter:
            return 0.0, 0
        quickExits += 1
        wait = min(self.maxDelay, self.interval * 2 ** (quickExits - 1))
        return max(0.0, wait - ranFor), quickExits


@attrs.define(eq=False)
class _Listener:
    """
    The supervisor's sockets for one listener: one that every worker
    shares (C{port}), or one per worker slot (C{sockets}, bound with
    C{SO_REUSEPORT}).  The supervisor never accepts on them.
    """

    description: str
    port: IListeningPort | None = None
    sockets: list[socket.socket] = attrs.Factory(list)

    def fileno(self, slot: int) -> int:
        """
        The file descriptor of the socket for the worker in slot C{slot}
        (from 1).
        """
        if self.port is not None:
            fd: int = self.port.fileno()  # type: ignore[attr-defined]
            return fd
        return self.sockets[slot - 1].fileno()

    @property
    def shared(self) -> bool:
        """
        Whether every worker accepts from the same socket.
        """
        return self.port is not None

    def close(self) -> Deferred[Any]:
        """
        Close the supervisor's copy of the sockets (each stays open while a
        worker holds it).
        """
        for s in self.sockets:
            s.close()
        self.sockets = []
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return succeed(None)


@attrs.define(eq=False)
class _Slot:
    """
    One worker's place: the process in it now, and its restart history.
    """

    number: int
    process: IProcessTransport | None = None
    pid: int | None = None
    startedAt: float = 0.0
    quickExits: int = 0
    restart: IDelayedCall | None = None
    waiting: list[Deferred[None]] = attrs.Factory(list)
    control: ControlClient | None = None
    starts: int = 0

    @property
    def label(self) -> str:
        """
        C{worker 2 (pid 1234)}, or C{worker 2} while none runs in it.
        """
        if self.process is None:
            return f"worker {self.number}"
        return f"worker {self.number} (pid {self.pid})"

    @property
    def running(self) -> bool:
        """
        Whether a worker process is in this slot now.
        """
        return self.process is not None

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Send a control request to the worker in this slot (see
        L{lbproxy.control.ControlClient.call}).
        """
        if self.process is None or self.control is None:
            return fail(ControlError("not running"))
        return self.control.call(kind, fields)

    def whenEnded(self) -> Deferred[None]:
        """
        Fires when the process now in this slot has ended.
        """
        d: Deferred[None] = Deferred()
        if self.process is None:
            d.callback(None)
        else:
            self.waiting.append(d)
        return d


def _describeExit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = str(value.signal)
            return f"signal {name}"
        return f"exit status {value.exitCode}"
    return reason.getErrorMessage()


class _WorkerProtocol(ProcessProtocol):
    """
    The supervisor's end of one worker's pipes: each line the worker writes
    is logged, except the answers to control requests on its standard
    output, which go to C{control}; its end is reported to the supervisor.
    """

    def __init__(self, supervisor: WorkerSupervisor, slot: _Slot) -> None:
        self._supervisor = supervisor
        self._slot = slot
        self.pid: int | None = None
        self.control: ControlClient | None = None
        self._lines = {1: LineBuffer(_MAX_LINE), 2: LineBuffer(_MAX_LINE, _MAX_LINE)}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            for line in lines.feed(data):
                self._lineReceived(childFD, line)

    def _lineReceived(self, childFD: int, line: bytes) -> None:
        if childFD == 1 and isReply(line):
            if self.control is not None:
                self.control.lineReceived(line)
            return
        self._supervisor._relay(self._slot, self.pid, childFD, line)

    def processEnded(self, reason: Failure) -> None:
        for childFD, lines in sorted(self._lines.items()):
            rest = lines.flush()
            if rest:
                self._lineReceived(childFD, rest)
        if self.control is not None:
            self.control.lost(f"exited ({_describeExit(reason)}) before answering")
        self._supervisor._ended(self._slot, reason)


class WorkerSupervisor(Service):
    """
    Binds the shared sockets and keeps C{count} workers running on them;
    see the module docstring.

    @ivar ports: The supervisor's listening ports (never read from), in the
        order of the sockets given, once bound.
    @ivar adminPort: The admin API's listening port, when it serves one.
    @ivar slots: One per worker.
    """

    _log = Logger()

    def __init__(
        self,
        count: int,
        sockets: Sequence[str],
        argv: Callable[[Sequence[int]], list[str]],
        reactor: Any,
        clock: IReactorTime,
        drainTimeout: float,
        policy: RestartPolicy = RestartPolicy(),
        environment: dict[str, str] | None = None,
        check: Callable[[], str | None] | None = None,
        admin: str | None = None,
        adminToken: bytes | None = None,
        answerTimeout: float = ANSWER_TIMEOUT,
        metrics: str | None = None,
        reusePort: bool = False,
        health: SharedHealth | None = None,
    ) -> None:
        """
        @param count: How many workers.
        @param sockets: The endpoint descriptions of the sockets to bind and
            share (L{lbproxy.listen.socketDescription}).
        @param argv: Given the workers' file descriptor numbers for the
            sockets, in order, the command that starts a worker.
        @param reactor: Provides L{IReactorProcess} to start workers, and
            what C{sockets} need to be bound (L{IReactorTCP}...).
        @param clock: Times restarts and the kill after a drain.
        @param drainTimeout: Seconds a worker may take to drain on SIGTERM.
        @param policy: When to restart a worker that exited.
        @param environment: The workers' environment; the supervisor's if
            L{None}.
        @param check: Before a reload, checks the configuration the workers
            would load: why it cannot be used, or L{None}.
        @param admin: The admin API's endpoint, served by the supervisor
            for all the workers (L{lbproxy.control.WorkersAdmin}), if any.
        @param adminToken: The bearer token the admin API requires, if any.
        @param answerTimeout: Seconds a worker has to answer a control
            request (a reload, an admin call).
        @param metrics: The C{--metrics} endpoint, served by the supervisor
            with every worker's metrics summed, if any.
        @param reusePort: Bind each TCP socket once per worker slot, with
            C{SO_REUSEPORT}, each slot's worker getting its own (see
            L{lbproxy.reuseport}); else once, for every worker.
        @param health: The active health checks the supervisor runs for
            the workers (which run none), if it does.
        """
        self._sockets = list(sockets)
        self._check = check
        self._admin = admin
        self._adminToken = adminToken
        self._answerTimeout = answerTimeout
        self.adminPort: IListeningPort | None = None
        self._metrics = metrics
        self.metricsPort: IListeningPort | None = None
        self._argv = argv
        self._reactor = reactor
        self._clock = clock
        self._drainTimeout = drainTimeout
        self._policy = policy
        self._environment = environment
        self._reusePort = reusePort
        self._health = health
        self.listeners: list[_Listener] = []
        self.slots = [_Slot(number) for number in range(1, count + 1)]
        self._bound = False

    @property
    def ports(self) -> list[IListeningPort]:
        """
        The listening ports every worker shares, in order.
        """
        return [listener.port for listener in self.listeners if listener.port is not None]

    def privilegedStartService(self) -> None:
        """
        Bind every socket, and the admin API's, all or nothing: if one
        cannot be bound, those already bound are closed and L{StartupError}
        is raised.
        """
        if not self._bound:
            self._bound = True
            try:
                for description in self._sockets:
                    self.listeners.append(self._bind(description))
                if self._admin is not None:
                    self.adminPort = self._listen(self._admin, self._adminSite())
                if self._metrics is not None:
                    self.metricsPort = self._listen(self._metrics, self._metricsSite())
            except StartupError:
                for listener in self.listeners:
                    listener.close()
                if self.adminPort is not None:
                    self.adminPort.stopListening()
                self.listeners = []
                self.adminPort = None
                self._bound = False
                raise
        super().privilegedStartService()

    def _bind(self, description: str) -> _Listener:
        """
        Bind the sockets of one listener: one per slot for TCP with
        C{reusePort}, else one.

        @raise StartupError: If they cannot be bound.
        """
        try:
            address = tcpAddress(description) if self._reusePort else None
        except (ListenError, ValueError, KeyError) as e:
            raise StartupError(f"cannot listen on {description!r}: {e}") from None
        if address is None:
            port = self._listen(description, ServerFactory())
            # The workers accept; the supervisor only holds the socket open.
            port.stopReading()  # type: ignore[attr-defined]
            return _Listener(description, port=port)
        try:
            sockets = bindGroup(address, len(self.slots))
        except OSError as e:
            raise StartupError(f"cannot listen on {description!r}: {e}") from None
        return _Listener(description, sockets=sockets)

    def _listen(self, description: str, factory: Any) -> IListeningPort:
        factory.noisy = False
        results: list[Any] = []
        try:
            endpoint = serverFromString(self._reactor, description)
            endpoint.listen(factory).addBoth(results.append)
        except (ValueError, KeyError, TypeError) as e:
            raise StartupError(f"cannot listen on {description!r}: {e}") from None
        if not results or isinstance(results[0], Failure):
            reason = results[0].getErrorMessage() if results else "it did not complete"
            raise StartupError(f"cannot listen on {description!r}: {reason}")
        port: IListeningPort = results[0]
        return port

    def _adminSite(self) -> Any:
        """
        The admin API's site: every request answered by the workers.
        """
        admin = WorkersAdmin(lambda: self.slots, changed=self._changedByAdmin)
        return adminSite(admin, self._adminToken, self._clock)

    def _changedByAdmin(self) -> None:
        """
        The admin API has changed the workers (their backends, or their
        whole configuration): the shared health checks follow.
        """
        if self._health is not None:
            self._health.refresh()

    def _metricsSite(self) -> Any:
        """
        The C{--metrics} site: every worker's metrics, summed.
        """
        workers = WorkersAdmin(lambda: self.slots)

        def scrape() -> Deferred[bytes]:
            return workers.handle("GET", "/metrics", b"").addCallback(_metricsBody)

        return metricsSite(scrape, self._clock)

    def startService(self) -> None:
        if not self._bound:
            self.privilegedStartService()
        super().startService()
        self._log.info(
            "lbproxy starting {count} workers on {sockets}",
            count=len(self.slots),
            sockets=", ".join(
                listener.description
                + (" (shared)" if listener.shared else " (a socket each, SO_REUSEPORT)")
                for listener in self.listeners
            ),
        )
        if self._admin is not None:
            self._log.info(
                "admin API listening on {admin}, for all {count} workers",
                admin=self._admin,
                count=len(self.slots),
            )
        for slot in self.slots:
            self._start(slot)
        if self._health is not None:
            self._health.start(lambda: self.slots)

    def _start(self, slot: _Slot) -> None:
        slot.restart = None
        slot.starts += 1
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        numbers = []
        for index, listener in enumerate(self.listeners):
            childFDs[FIRST_FD + index] = listener.fileno(slot.number)
            numbers.append(FIRST_FD + index)
        argv = self._argv(numbers)
        protocol = _WorkerProtocol(self, slot)
        spawner: IReactorProcess = self._reactor
        process = spawner.spawnProcess(
            protocol, argv[0], argv, env=self._environment, childFDs=childFDs
        )
        slot.process = process
        slot.pid = protocol.pid = process.pid
        slot.control = protocol.control = ControlClient(
            process.write, self._clock, self._answerTimeout
        )
        slot.startedAt = self._clock.seconds()
        self._log.info("worker {slot} started: pid {pid}", slot=slot.number, pid=slot.pid)
        if self._health is not None:
            self._health.joined(slot)
        if slot.starts > 1 and self._admin is not None:
            self._resync(slot)

    def _resync(self, slot: _Slot) -> None:
        """
        Bring the backends of the worker just restarted in C{slot} up to
        date with a running worker's: the admin API may have changed them
        since the configuration it started from (L{lbproxy.control.resync}).
        """
        model = next((other for other in self.slots if other is not slot and other.running), None)
        if model is None:
            return
        worker, like = slot.label, model.label
        syncing = resync(model, slot)
        syncing.addCallbacks(
            self._resynced,
            self._notResynced,
            callbackArgs=(worker, like),
            errbackArgs=(worker, like),
        )
        if self._health is not None:
            # The backends resync added are told their health too.
            health = self._health
            syncing.addBoth(lambda _: health.joined(slot) if slot.process is not None else None)

    def _resynced(self, done: Resynced, worker: str, model: str) -> None:
        if done.done:
            self._log.info(
                "{worker} brought up to date with {model}: {changes}",
                worker=worker,
                model=model,
                changes="; ".join(done.done),
            )
        if done.failed:
            self._log.warn(
                "{worker} not brought fully up to date with {model}: {failures}",
                worker=worker,
                model=model,
                failures="; ".join(done.failed),
            )

    def _notResynced(self, failure: Failure, worker: str, model: str) -> None:
        if not failure.check(ControlError):
            self._log.failure("bringing {worker} up to date", failure, worker=worker)
            return
        self._log.warn(
            "{worker} not brought up to date with {model}: {why}",
            worker=worker,
            model=model,
            why=failure.getErrorMessage(),
        )

    def _relay(self, slot: _Slot, pid: int | None, childFD: int, line: bytes) -> None:
        """
        Log a line worker C{slot} wrote on C{childFD}.
        """
        self._log.emit(
            LogLevel.info if childFD == 1 else LogLevel.warn,
            "{line}",
            line=line.decode("utf-8", "replace").rstrip("\r"),
            log_system=f"worker {slot.number} pid {pid}",
        )

    def _ended(self, slot: _Slot, reason: Failure) -> None:
        pid, slot.process, slot.control = slot.pid, None, None
        waiting, slot.waiting = slot.waiting, []
        how = _describeExit(reason)
        if not self.running:
            self._log.info(
                "worker {slot} (pid {pid}) exited: {how}", slot=slot.number, pid=pid, how=how
            )
        else:
            ranFor = self._clock.seconds() - slot.startedAt
            delay, slot.quickExits = self._policy.after(ranFor, slot.quickExits)
            self._log.warn(
                "worker {slot} (pid {pid}) exited unexpectedly ({how}) after "
                "{ranFor:.1f} s; starting another in {delay:.1f} s",
                slot=slot.number,
                pid=pid,
                how=how,
                ranFor=ranFor,
                delay=delay,
            )
            slot.restart = self._clock.callLater(delay, self._start, slot)
        for d in waiting:
            d.callback(None)

    def signalWorkers(self, name: str) -> int:
        """
        Send signal C{name} (e.g. C{"HUP"}) to every running worker.

        @return: How many were sent.
        """
        sent = 0
        for slot in self.slots:
            if slot.process is not None:
                try:
                    slot.process.signalProcess(name)
                    sent += 1
                except (ProcessExitedAlready, OSError):
                    pass
        return sent

    def reload(self) -> Deferred[bool]:
        """
        SIGHUP: check the configuration the workers would load; if it is
        invalid, log why and leave the workers alone; else have every worker
        reload (its config file and TLS certificates) and log one line
        saying whether all of them applied it, or which did not and why.

        @return: Fires with whether every worker applied it; never fails.
        """
        try:
            why = self._check() if self._check is not None else None
        except Exception:  # noqa: BLE001 - logged; the workers are left alone
            self._log.failure("checking the configuration before a reload")
            why = "the check failed unexpectedly (see the traceback above)"
        if why is not None:
            self._log.error(
                "configuration reload rejected, the running configuration is kept: {why}",
                why=why,
            )
            return succeed(False)
        asking = askAll(self.slots, "reload", {})
        return asking.addCallback(lambda answers: self._reported(ReloadReport.of(answers)))

    def _reported(self, report: ReloadReport) -> bool:
        if self._health is not None:
            self._health.refresh()
        return self._logReport(report)

    def _logReport(self, report: ReloadReport) -> bool:
        if report.ok:
            self._log.info(
                "reload: all {count} workers applied the configuration", count=report.count
            )
        else:
            self._log.error(
                "reload: {failed} of {count} workers failed: {failures}",
                failed=len(report.failures),
                count=report.count,
                failures="; ".join(report.failures),
            )
        return report.ok

    def reloadCertificates(self) -> Deferred[bool]:
        """
        What L{lbproxy.cli.options.makeService} calls on SIGHUP: L{reload}.
        """
        return self.reload()

    def stopService(self) -> Deferred[Any]:
        """
        Close the supervisor's copy of the sockets, send SIGTERM to every
        worker and fire once all have exited; cancel pending restarts. A
        worker still there L{KILL_GRACE} seconds after the drain timeout is
        killed.
        """
        super().stopService()
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        extra = [p for p in (self.adminPort, self.metricsPort) if p is not None]
        closed: list[Deferred[Any]] = [listener.close() for listener in self.listeners]
        closed += [maybeDeferred(port.stopListening) for port in extra]
        if self._health is not None:
            closed.append(self._health.stop())
        self.listeners = []
        self.adminPort = self.metricsPort = None
        self._bound = False
        ended: list[Deferred[Any]] = [slot.whenEnded() for slot in self.slots]
        sent = self.signalWorkers("TERM")
        self._log.info("sent SIGTERM to {count} workers; waiting for them to drain", count=sent)
        killer = self._clock.callLater(self._drainTimeout + KILL_GRACE, self._killAll)
        done = DeferredList(closed + ended, consumeErrors=True)

        def finished(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        return done.addBoth(finished)

    def _killAll(self) -> None:
        sent = self.signalWorkers("KILL")
        if sent:
            self._log.warn("killed {count} workers still running after the drain", count=sent)


def workerArgv(arguments: Sequence[str]) -> Callable[[Sequence[int]], list[str]]:
    """
    The command that starts a worker with lbproxy C{arguments}, given its
    socket file descriptors (for L{WorkerSupervisor}).
    """

    def argv(fds: Sequence[int]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lbproxy.workers",
            "--fds",
            ",".join(str(fd) for fd in fds),
            *arguments,
        ]

    return argv


def workerEnvironment() -> dict[str, str]:
    """
    The supervisor's environment, with the directory lbproxy was imported
    from first on C{PYTHONPATH}, so that workers run the same code.
    """
    import lbproxy

    environment = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = here if not path else here + os.pathsep + path
    return environment


def _metricsBody(response: AdminResponse) -> bytes:
    """
    The exposition in a combined C{GET /metrics} answer.

    @raise ValueError: If the workers could not give one.
    """
    if response.status != 200:
        raise ValueError(response.body.decode("utf-8", "replace").strip())
    return response.body


def makeSupervisor(
    count: int,
    config: LoadBalancerConfig,
    arguments: Sequence[str],
    reactor: Any,
    reusePort: bool = REUSE_PORT,
) -> WorkerSupervisor:
    """
    The supervisor of C{count} workers for C{config}, each started with the
    same lbproxy C{arguments}.  The supervisor serves no requests, so it
    never opens the access log file (each worker opens its own when it
    starts); it serves the admin API (C{config.admin}) for all of them,
    and runs the active health checks for all of them
    (L{lbproxy.control.health}).

    @param reusePort: Give each worker sockets of its own (C{SO_REUSEPORT}).
    """
    backendTLS = BackendTLS(config.backendTLS)

    def probeUpstream(settings: UpstreamSettings) -> Upstream:
        return Upstream(reactor, reactor, settings, tlsFor=backendTLS.creatorFor)

    return WorkerSupervisor(
        count,
        [socketDescription(spec) for spec in _sharedListens(config)],
        workerArgv(arguments),
        reactor,
        reactor,
        config.drainTimeout,
        environment=workerEnvironment(),
        check=configurationCheck(arguments, config),
        admin=config.admin,
        adminToken=config.adminToken,
        metrics=config.metrics,
        reusePort=reusePort,
        health=SharedHealth(reactor, probeUpstream),
    )


def configurationCheck(
    arguments: Sequence[str], config: LoadBalancerConfig
) -> Callable[[], str | None]:
    """
    What the supervisor checks before a reload: the configuration lbproxy
    C{arguments} give now (their config file read again) must be valid,
    and keep the listeners of C{config}, the running one (the supervisor
    holds their sockets).

    @return: Says why the configuration cannot be used, or L{None}.
    """
    listens = [spec.description for spec in config.listens]

    def check() -> str | None:
        from lbproxy.cli.options import Options

        options = Options()
        try:
            options.parseArguments(list(arguments))
        except usage.UsageError as e:
            return str(e)
        new = options.config
        if new is not None and [spec.description for spec in new.listens] != listens:
            return (
                "listeners cannot change while running with --workers (the supervisor "
                "holds their sockets); restart lbproxy to change them"
            )
        return None

    return check


class _SupervisorPipe(FileDescriptor):
    """
    A worker's standard input, a pipe from the supervisor: each line read
    is given to C{lineReceived} (a control request); C{lost} is called when
    it closes, i.e. the supervisor has exited.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        lineReceived: Callable[[bytes], object],
        lost: Callable[[], object],
    ) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._lineReceived = lineReceived
        self._lost = lost
        self._lines = LineBuffer(MAX_MESSAGE)
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, self._dataReceived)

    def _dataReceived(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            self._lineReceived(line)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._lost()


def _textObserver(stream: TextIO) -> ILogObserver:
    """
    Writes each event as one line of text (and any traceback), with no
    time or system: the supervisor adds those when it logs the line.  No
    line written starts like a control answer (see
    L{lbproxy.control.escapeLogText}).
    """

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        stream.write(escapeLogText(text) + "\n")
        stream.flush()

    return cast(ILogObserver, observe)


def _adopted(reactor: Any, fd: int) -> AdoptedStreamServerEndpoint:
    with socket.socket(fileno=fd) as s:
        family = s.family
        s.detach()
    return AdoptedStreamServerEndpoint(batchingSends(reactor), fd, family)


def _answerWriter(stream: TextIO) -> Callable[[bytes], None]:
    """
    Writes control answers on C{stream}, the standard output the worker's
    log lines share (both are written whole, in the reactor thread).
    """

    def write(line: bytes) -> None:
        stream.write(line.decode("ascii"))
        stream.flush()

    return write


def workerMain(argv: Sequence[str] | None = None) -> int:
    """
    Run one worker: C{--fds 3,4,... ARGS}, ARGS being C{twistd lbproxy}'s
    arguments.  It serves on the given sockets until SIGTERM, SIGINT or the
    end of its standard input, then drains and returns 0.  It serves no
    admin API of its own: the supervisor's sends it each admin request (and
    each reload) on its standard input (L{lbproxy.control}).
    """
    from lbproxy.cli.options import Options
    from lbproxy.cli.reload import Reloader
    from lbproxy.runtime import ProcessRoot

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--fds":
        sys.stderr.write("usage: python -m lbproxy.workers --fds FD,... LBPROXY-ARGUMENTS\n")
        return 2
    fds = [int(fd) for fd in args[1].split(",") if fd]
    options = Options()
    # (This installs lbproxy's reactor, as under twistd.)
    options.parseOptions(args[2:])
    from twisted.internet import reactor
    config = options.config
    assert config is not None
    globalLogBeginner.beginLoggingTo(
        [_textObserver(sys.stdout)], discardBuffer=True, redirectStandardIO=False
    )
    service = makeLoadBalancer(
        attrs.evolve(config, admin=None, metrics=None),
        reactor,
        reactor,
        [_adopted(reactor, fd) for fd in fds],
    )
    # The supervisor probes the backends for every worker, and says what
    # it finds (lbproxy.control.health).
    service.balancer.activeChecks = False
    reloader = Reloader(options, service, Options)
    service.configHooks = reloader
    control = ControlServer(
        {
            **healthHandlers(service.balancer, reactor),
            "reload": ReportedReload(reloader.reload, globalLogPublisher),
            "admin": adminHandler(
                AdminAPI(service.balancer, reloader, service.renderMetrics, service.dashboard)
            ),
        },
        _answerWriter(sys.stdout),
    )
    root = ProcessRoot(service, reactor, reloader.reload)
    root.privilegedStartService()
    _SupervisorPipe(
        reactor, 0, control.lineReceived, lambda: os.kill(os.getpid(), signal.SIGTERM)
    ).startReading()
    root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(workerMain())
