# -*- test-case-name: lbproxy.test.test_control -*-
"""
The supervisor's side of the control channel (see L{lbproxy.control}):
L{ControlClient} sends requests to one worker process and matches its
answers to them; L{askAll} asks several workers at once, and
L{ReloadReport} says what they answered to a reload.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.control.wire import ANSWER_TIMEOUT, ControlError, decodeReply, encodeRequest

_log = Logger()


class ControlClient:
    """
    The supervisor's end of one worker process's control channel: sends
    requests, matches answers to them.
    """

    _log = Logger()

    def __init__(
        self,
        write: Callable[[bytes], object],
        clock: IReactorTime,
        timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        """
        @param write: Writes to the worker's standard input.
        @param clock: Times the answers out.
        @param timeout: Seconds to wait for each answer.
        """
        self._write = write
        self._clock = clock
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Deferred[dict[str, Any]], IDelayedCall]] = {}
        self._lost: str | None = None

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Send a request.

        @return: Fires with the answer's fields; fails with L{ControlError}
            if the worker answers with an error, does not answer in time,
            or has gone.
        """
        if self._lost is not None:
            return fail(ControlError(self._lost))
        id = next(self._ids)
        answer: Deferred[dict[str, Any]] = Deferred()
        timer = self._clock.callLater(self._timeout, self._timedOut, id)
        self._pending[id] = (answer, timer)
        self._write(encodeRequest(id, kind, fields))
        return answer

    def lineReceived(self, line: bytes) -> None:
        """
        An answer line from the worker (see L{isReply}).
        """
        try:
            id, fields = decodeReply(line)
        except ControlError as e:
            self._log.warn("worker control channel: {why}", why=str(e))
            return
        entry = self._pending.pop(id, None)
        if entry is None:
            return  # answered after its time was up
        answer, timer = entry
        timer.cancel()
        if "error" in fields:
            answer.errback(ControlError(str(fields["error"])))
        else:
            answer.callback(fields)

    def lost(self, why: str) -> None:
        """
        The worker has gone: every request still waiting, and any sent
        from now on, fails saying C{why}.
        """
        self._lost = why
        pending, self._pending = self._pending, {}
        for answer, timer in pending.values():
            timer.cancel()
            answer.errback(ControlError(why))

    def _timedOut(self, id: int) -> None:
        answer, _ = self._pending.pop(id)
        answer.errback(ControlError(f"no answer within {self._timeout:g} s"))


class Worker(Protocol):
    """
    What the supervisor's side needs of one worker slot.
    """

    @property
    def label(self) -> str:
        """
        How answers name the worker, e.g. C{worker 2 (pid 1234)}.
        """

    @property
    def running(self) -> bool:
        """
        Whether a worker process is in the slot now.
        """

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Send a request to the worker (see L{ControlClient.call}); fails with
        L{ControlError} if none is running.
        """


@attrs.frozen
class Answer:
    """
    One worker's answer to a request sent to several.

    @ivar worker: The worker's label.
    @ivar reply: The answer's fields, or L{None} if it failed.
    @ivar error: Why it failed, or L{None}.
    """

    worker: str
    reply: Mapping[str, Any] | None = None
    error: str | None = None


def askAll(
    workers: Sequence[Worker], kind: str, fields: Mapping[str, Any]
) -> Deferred[list[Answer]]:
    """
    Send a request to each of C{workers}.

    @return: Fires with every worker's L{Answer}, in order, once all have
        answered, failed or timed out; never fails.
    """
    asked = []
    for worker in workers:
        label = worker.label
        call = maybeDeferred(worker.call, kind, fields)
        asked.append(
            call.addCallbacks(_answered, _failed, callbackArgs=(label,), errbackArgs=(label,))
        )
    return gatherResults(asked)


def _answered(reply: Mapping[str, Any], label: str) -> Answer:
    return Answer(label, reply=reply)


def _failed(failure: Failure, label: str) -> Answer:
    if not failure.check(ControlError):
        _log.failure("asking {worker}", failure, worker=label)
    return Answer(label, error=failure.getErrorMessage())


@attrs.frozen
class ReloadReport:
    """
    What the workers answered to a reload.

    @ivar count: How many were asked.
    @ivar failures: C{worker 2 (pid 1234): why} for each that failed.
    """

    count: int
    failures: tuple[str, ...]

    @classmethod
    def of(cls, answers: Sequence[Answer]) -> ReloadReport:
        """
        The report of C{answers} to C{reload} requests: a worker failed if
        it did not answer, or answered that it did not apply everything.
        """
        failures = []
        for answer in answers:
            if answer.reply is None:
                failures.append(f"{answer.worker}: {answer.error}")
            elif answer.reply.get("ok") is not True:
                why = answer.reply.get("why") or "the reload failed"
                failures.append(f"{answer.worker}: {why}")
        return cls(len(answers), tuple(failures))

    @property
    def ok(self) -> bool:
        """
        Whether every worker applied the configuration.
        """
        return not self.failures


__all__ = ["Answer", "ControlClient", "ReloadReport", "Worker", "askAll"]
