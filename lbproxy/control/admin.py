# -*- test-case-name: lbproxy.test.test_control -*-
"""
The admin API of a supervisor (see L{lbproxy.control}): L{WorkersAdmin}
sends each request to the workers, and L{combineAnswers} makes their
answers one: a change made in every worker, the pools' counters summed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from lbproxy.admin.api import METRICS_CONTENT_TYPE, AdminHandler
from lbproxy.admin.response import JSON, AdminResponse, errorResponse, jsonResponse
from lbproxy.control.client import Answer, Worker, askAll
from lbproxy.control.wire import ControlError, adminRequest, errorMessage, readResponse
from lbproxy.metrics.combine import combineExpositions
from lbproxy.observe.combine import Views, combineDecisions, combineHistories


class WorkersAdmin:
    """
    The admin API the supervisor serves: each request goes to the workers
    over the control channel, and their answers become one (see
    L{combineAnswers}).  A C{GET} of C{/pools...}, C{/metrics} or
    C{/dashboard/...} asks every worker; any other C{GET} (C{/config},
    C{/}) asks the first running worker; every change (C{POST}, C{PATCH},
    C{DELETE}) is made in every worker.
    """

    _log = Logger()

    def __init__(
        self,
        workers: Callable[[], Sequence[Worker]],
        changed: Callable[[], object] | None = None,
    ) -> None:
        """
        @param workers: The worker slots, in order, at the time of a call.
        @param changed: Called once the workers have answered a change
            (whatever they answered: some may have made it).
        """
        self._workers = workers
        self._changed = changed

    def handle(
        self, method: str, path: str, body: bytes, accept: str | None = None
    ) -> Deferred[AdminResponse]:
        """
        Answer one admin request from the workers' answers (see
        L{lbproxy.admin.AdminAPI.handle}); never fails.
        """
        workers = list(self._workers())
        if method == "GET" and _isMetrics(path):
            return askAll(workers, "admin", adminRequest(method, path, body, accept)).addCallback(
                combineMetrics
            )
        dashboard = _dashboardPart(path)
        if method == "GET" and dashboard in _DASHBOARD_COMBINED:
            request = adminRequest(method, path, body, accept)
            return askAll(workers, "admin", request).addCallback(
                combineDashboard, _DASHBOARD_COMBINED[dashboard]
            )
        if method == "GET" and not _isPools(path):
            running = [worker for worker in workers if worker.running]
            workers = (running or workers)[:1]
        asking = askAll(workers, "admin", adminRequest(method, path, body, accept))
        answering = asking.addCallback(lambda answers: combineAnswers(method, path, answers))
        if method != "GET":
            answering.addCallback(self._audit, method, path, len(workers))
        return answering

    def _audit(self, response: AdminResponse, method: str, path: str, count: int) -> AdminResponse:
        self._log.info(
            "admin API: {method} {path} answered {status} (sent to {count} workers)",
            method=method,
            path=path,
            status=response.status,
            count=count,
        )
        if self._changed is not None:
            self._changed()
        return response


def _isMetrics(path: str) -> bool:
    """
    Whether C{path} is C{/metrics}, whose answers are summed.
    """
    return path.partition("?")[0].rstrip("/") == "/metrics"


def combineMetrics(answers: Sequence[Answer]) -> AdminResponse:
    """
    The workers' C{GET /metrics} answers as one exposition, summed by
    L{lbproxy.metrics.combineExpositions}; 503 if no worker answered.
    """
    texts = []
    for answer in answers:
        try:
            if answer.reply is None:
                raise ControlError(answer.error or "no answer")
            response = readResponse(answer.reply)
        except ControlError:
            continue
        if response.status == 200:
            texts.append(response.body.decode("utf-8"))
    if not texts:
        return errorResponse(503, "no worker answered with its metrics")
    try:
        combined = combineExpositions(texts)
    except ValueError as e:
        return errorResponse(500, f"a worker's metrics cannot be read: {e}")
    return AdminResponse(200, METRICS_CONTENT_TYPE, combined)


def _isPools(path: str) -> bool:
    """
    Whether C{path} is under C{/pools}, or is C{/dashboard/state} (every
    pool and backend), whose answers are combined by L{combineViews}.
    """
    segments = [s for s in path.partition("?")[0].split("/") if s]
    return (bool(segments) and segments[0] == "pools") or segments == ["dashboard", "state"]


def _dashboardPart(path: str) -> str | None:
    """
    C{history} for C{/dashboard/history} (and so on), L{None} for a path
    that is not the dashboard's.
    """
    segments = [s for s in path.partition("?")[0].split("/") if s]
    if len(segments) == 2 and segments[0] == "dashboard":
        return segments[1]
    return None


_DASHBOARD_COMBINED: dict[str, Callable[[Views], dict[str, Any]]] = {
    "history": combineHistories,
    "decisions": combineDecisions,
}
"""
The dashboard's views that every worker is asked for, and how their
answers make one.
"""


def combineDashboard(
    answers: Sequence[Answer], combine: Callable[[Views], dict[str, Any]]
) -> AdminResponse:
    """
    The workers' answers to a C{GET /dashboard/history} or
    C{/dashboard/decisions} as one, by C{combine} (see
    L{lbproxy.observe.combine}), from the workers that answered 200; the
    first other answer if none did; 503 if no worker answered.
    """
    views: list[tuple[str, dict[str, Any]]] = []
    other: AdminResponse | None = None
    reasons = []
    for answer in answers:
        try:
            if answer.reply is None:
                raise ControlError(answer.error or "no answer")
            response = readResponse(answer.reply)
        except ControlError as e:
            reasons.append(f"{answer.worker}: {e}")
            continue
        if response.status != 200 or response.contentType != JSON:
            other = other or response
            continue
        try:
            views.append((answer.worker, json.loads(response.body)))
        except ValueError:
            return errorResponse(500, f"{answer.worker} answered with JSON that cannot be read")
    if views:
        return jsonResponse(200, combine(views))
    if other is not None:
        return other
    return errorResponse(503, "no worker answered: " + "; ".join(reasons))


def combineAnswers(method: str, path: str, answers: Sequence[Answer]) -> AdminResponse:
    """
    One admin answer from the workers' C{answers} to C{method path}:

      - if no worker answered: 503, naming each and why;
      - if those that answered differ in status, or a change (not C{GET})
        was not answered by every worker: 500, listing each worker's status
        (the change may have been made in some workers only);
      - a successful C{GET} of C{/pools...}: the workers' JSON combined by
        L{combineViews}, with C{"workers"}, how many it combines, and
        C{"unanswered"} listing any that did not answer;
      - anything else: the first worker's answer.
    """
    answered: list[tuple[str, AdminResponse]] = []
    unanswered: list[tuple[str, str]] = []
    for answer in answers:
        try:
            if answer.reply is None:
                raise ControlError(answer.error or "no answer")
            answered.append((answer.worker, readResponse(answer.reply)))
        except ControlError as e:
            unanswered.append((answer.worker, str(e)))
    if not answered:
        return errorResponse(
            503, "no worker answered: " + "; ".join(f"{w}: {why}" for w, why in unanswered)
        )
    statuses = {response.status for _, response in answered}
    if len(statuses) > 1 or (method != "GET" and unanswered):
        return _differed(method, answered, unanswered)
    first = answered[0][1]
    if method != "GET" or not _isPools(path) or first.status != 200 or first.contentType != JSON:
        return first
    try:
        values = [json.loads(response.body) for _, response in answered]
    except ValueError:
        return errorResponse(500, "a worker answered with JSON that cannot be read")
    combined = combineViews(values)
    if isinstance(combined, dict):
        combined["workers"] = len(answered)
        if unanswered:
            combined["unanswered"] = [f"{w}: {why}" for w, why in unanswered]
    return jsonResponse(200, combined, first.headers)


def _differed(
    method: str,
    answered: Sequence[tuple[str, AdminResponse]],
    unanswered: Sequence[tuple[str, str]],
) -> AdminResponse:
    listed: list[dict[str, Any]] = []
    parts = []
    for worker, response in answered:
        error = errorMessage(response)
        listed.append({"worker": worker, "status": response.status, "error": error})
        parts.append(f"{worker}: {response.status}" + (f" ({error})" if error else ""))
    for worker, why in unanswered:
        listed.append({"worker": worker, "status": None, "error": why})
        parts.append(f"{worker}: {why}")
    caveat = " (the change may have been made in some of them only)" if method != "GET" else ""
    message = f"the workers answered differently{caveat}: " + "; ".join(parts)
    return jsonResponse(500, {"error": " ".join(message.split()), "workers": listed})


SUMMED = frozenset(
    {
        "requests",
        "failures",
        "retries",
        "ejections",
        "in_flight",
        "open_connections",
        "idle_connections",
    }
)
"""
Counters of a backend that each worker keeps for itself: combined, they
are the sum.
"""

LATENCIES = frozenset({"latency_ewma_ms", "last_latency_ms", "latency_p50_ms", "latency_p99_ms"})
"""
Latencies: combined, the highest (the slowest any worker sees).
"""

SEVERITY = ("up", "slow-start", "draining", "ejected", "down")
"""
Backend states, from the least to the most severe: when the workers
disagree, the combined state is the most severe (an unknown one counts as
more severe still).
"""

_IDENTITIES = ("url", "name")
"""
The keys that name an item in a list (a backend, a pool): lists of such
objects are combined item by item, matched by it.
"""


def combineViews(values: Sequence[Any]) -> Any:
    """
    One JSON value from each worker's view of the same thing (a pool, a
    list of pools, a backend), as L{lbproxy.admin.views} shapes them:
    counters summed (L{SUMMED}), latencies the highest (L{LATENCIES}), the
    state the most severe (L{SEVERITY}), C{removing} if any worker is
    removing it; in a pool summary, C{backends} is the most any worker has
    and C{available} the fewest any worker can send to.  Lists of backends
    or pools are matched by URL or name, in the order they first appear;
    everything else (addresses, weights, names) is the first worker's.
    """
    first = values[0]
    if all(isinstance(value, dict) for value in values):
        keys = list(dict.fromkeys(key for value in values for key in value))
        return {key: _combineField(key, [v[key] for v in values if key in v]) for key in keys}
    if all(isinstance(value, list) for value in values):
        return _combineLists(values)
    return first


def _combineField(key: str, items: list[Any]) -> Any:
    numbers = all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items)
    if key in SUMMED and numbers:
        return sum(items)
    if key in LATENCIES:
        known = [i for i in items if isinstance(i, (int, float))]
        return max(known) if known else None
    if key == "state" and all(isinstance(i, str) for i in items):
        return max(items, key=_severity)
    if key == "removing":
        return any(items)
    if key == "available" and numbers:
        return min(items)
    if key == "backends" and numbers:
        return max(items)
    return combineViews(items)


def _severity(state: str) -> int:
    return SEVERITY.index(state) if state in SEVERITY else len(SEVERITY)


def _combineLists(values: Sequence[list[Any]]) -> list[Any]:
    items = [item for value in values for item in value]
    for identity in _IDENTITIES:
        if items and all(isinstance(i, dict) and identity in i for i in items):
            groups: dict[Any, list[Any]] = {}
            for item in items:
                groups.setdefault(json.dumps(item[identity]), []).append(item)
            return [combineViews(group) for group in groups.values()]
    return list(values[0])


__all__ = [
    "LATENCIES",
    "SEVERITY",
    "SUMMED",
    "AdminHandler",
    "WorkersAdmin",
    "combineAnswers",
    "combineDashboard",
    "combineViews",
]
