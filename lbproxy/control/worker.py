# -*- test-case-name: lbproxy.test.test_control -*-
"""
A worker's side of the control channel (see L{lbproxy.control}):
L{ControlServer} reads the supervisor's requests and writes the answers;
L{ReportedReload} and L{adminHandler} answer them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.control.admin import AdminHandler
from lbproxy.control.wire import (
    ControlError,
    ControlRequest,
    decodeRequest,
    encodeReply,
    readAdminRequest,
    responseFields,
)

Handler = Callable[[Mapping[str, Any]], Deferred[Mapping[str, Any]]]
"""
Answers one kind of request: its fields in, the answer's fields out (or a
failure, answered as an error).
"""


class ControlServer:
    """
    A worker's end of the control channel: each request line is handed to
    the handler of its kind, and the answer written as a line.
    """

    _log = Logger()

    def __init__(self, handlers: Mapping[str, Handler], write: Callable[[bytes], object]) -> None:
        """
        @param handlers: By kind (C{reload}, C{admin}).
        @param write: Writes to the worker's standard output.
        """
        self._handlers = handlers
        self._write = write

    def lineReceived(self, line: bytes) -> None:
        """
        One request line from the supervisor (without its newline).
        """
        if not line.strip():
            return
        try:
            request = decodeRequest(line)
        except ControlError as e:
            self._log.warn("control channel: {why}", why=str(e))
            if e.id is not None:
                self._write(encodeReply(e.id, {"error": str(e)}))
            return
        handler = self._handlers.get(request.kind)
        if handler is None:
            self._write(encodeReply(request.id, {"error": f"unknown request {request.kind!r}"}))
            return
        handling = maybeDeferred(handler, request.fields)
        handling.addErrback(self._failed, request)
        handling.addCallback(lambda fields: self._write(encodeReply(request.id, fields)))
        handling.addErrback(lambda f: self._log.failure("answering the supervisor", f))

    def _failed(self, failure: Failure, request: ControlRequest) -> dict[str, Any]:
        if not failure.check(ControlError):
            self._log.failure("control request {kind} failed", failure, kind=request.kind)
        return {"error": failure.getErrorMessage()}


class ReportedReload:
    """
    The handler of C{reload}: runs the worker's reload (SIGHUP's), and
    answers C{{"ok": true}}, or C{{"ok": false, "why": ...}} with the error
    lines the reload logged (a rejection's reason, a certificate that could
    not be read), read from the log events it emits while it runs.
    """

    def __init__(self, reload: Callable[[], bool], publisher: LogPublisher) -> None:
        """
        @param reload: Reloads; says whether everything was applied.
        @param publisher: Where the reload logs (the global publisher).
        """
        self._reload = reload
        self._publisher = publisher

    def __call__(self, fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        errors: list[str] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") in (LogLevel.error, LogLevel.critical):
                why = event.get("why")
                errors.append(str(why) if why is not None else formatEvent(event))

        self._publisher.addObserver(observe)
        try:
            ok = self._reload()
        finally:
            self._publisher.removeObserver(observe)
        if ok:
            return succeed({"ok": True, "why": None})
        why = "; ".join(errors) or "the reload failed (see the log)"
        return succeed({"ok": False, "why": why})


def adminHandler(api: AdminHandler) -> Handler:
    """
    The handler of C{admin}: the worker's own admin API answers.
    """

    def handle(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        method, path, body, accept = readAdminRequest(fields)
        answering = api.handle(method, path, body, accept)
        return answering.addCallback(responseFields)

    return handle


__all__ = ["ControlServer", "Handler", "ReportedReload", "adminHandler"]
