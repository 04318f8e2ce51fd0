# -*- test-case-name: lbproxy.test.test_control -*-
"""
The control channel between the C{--workers} supervisor and its workers
(L{lbproxy.workers}): a reload, or an admin API call, is sent to every
worker, and their answers are combined into one; the supervisor's active
health checks tell every worker what they find (L{health}).

It runs over the pipes the supervisor has to each worker anyway
(L{wire}):

  - the supervisor writes each request on the worker's standard input as
    one line of JSON: C{{"id": 7, "kind": "reload"}}, or C{{"id": 8, "kind":
    "admin", "method": "POST", "path": "/pools/web/backends", "body":
    BASE64, "accept": null}};
  - the worker answers on its standard output with one line that starts
    with L{MARKER} followed by JSON with the same C{id}: C{{"id": 7, "ok":
    false, "why": "..."}} for a reload, C{{"id": 8, "status": 201,
    "contentType": "...", "body": BASE64, "headers": [[NAME, VALUE]]}} for
    an admin call, or C{{"id": 9, "error": "..."}} when it could not handle
    the request at all.  The supervisor takes those lines out of the
    worker's output instead of logging them; no log line a worker writes
    starts with the marker (L{escapeLogText}).

A line is at most L{MAX_MESSAGE} bytes; a worker that has not answered
after L{ANSWER_TIMEOUT} seconds, or exits first, has failed that request.

The supervisor's side is L{ControlClient} (one per worker process),
L{askAll} and L{ReloadReport} (L{client}), and L{WorkersAdmin}, the admin
API the supervisor serves, answering from every worker (L{admin}), and
L{resync}, which brings a restarted worker's backends up to date with a
running worker's, and L{SharedHealth}, the health checks it runs for the
workers; the worker's side is L{ControlServer} with the handlers
L{ReportedReload}, L{adminHandler} (L{worker}) and L{healthHandlers}
(C{health-pools} and C{health}).
"""

from lbproxy.admin.api import AdminHandler
from lbproxy.control.admin import WorkersAdmin, combineAnswers, combineViews
from lbproxy.control.client import Answer, ControlClient, ReloadReport, Worker, askAll
from lbproxy.control.health import SharedHealth, healthHandlers
from lbproxy.control.resync import Resynced, resync
from lbproxy.control.wire import (
    ANSWER_TIMEOUT,
    MARKER,
    MAX_MESSAGE,
    ControlError,
    LineBuffer,
    escapeLogText,
    isReply,
)
from lbproxy.control.worker import ControlServer, Handler, ReportedReload, adminHandler

__all__ = [
    "ANSWER_TIMEOUT",
    "MARKER",
    "MAX_MESSAGE",
    "AdminHandler",
    "Answer",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "Handler",
    "LineBuffer",
    "ReloadReport",
    "ReportedReload",
    "Resynced",
    "SharedHealth",
    "Worker",
    "WorkersAdmin",
    "adminHandler",
    "askAll",
    "combineAnswers",
    "combineViews",
    "escapeLogText",
    "healthHandlers",
    "isReply",
    "resync",
]
