"""
Tests for L{lbproxy.control}: the control channel between the C{--workers}
supervisor and its workers, in memory: its lines, both of its ends, the
reload report, and the supervisor's admin API combining its workers'
answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    capturedLogs,
    formatEvent,
)
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lbproxy.admin.api import AdminAPI
from lbproxy.admin.response import JSON, AdminResponse, errorResponse, jsonResponse
from lbproxy.balancer import Balancer, BalancerConfig, PoolConfig
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.control import (
    MARKER,
    MAX_MESSAGE,
    AdminHandler,
    Answer,
    ControlClient,
    ControlError,
    ControlServer,
    LineBuffer,
    ReloadReport,
    ReportedReload,
    Resynced,
    Worker,
    WorkersAdmin,
    adminHandler,
    askAll,
    combineAnswers,
    combineViews,
    escapeLogText,
    isReply,
    resync,
)
from lbproxy.control.health import (
    BackendHealth,
    PoolToCheck,
    SharedHealth,
    applyHealth,
    describePools,
    healthHandlers,
    readPools,
    readStates,
)
from lbproxy.control.resync import changesFor
from lbproxy.control.wire import (
    adminRequest,
    decodeReply,
    decodeRequest,
    encodeReply,
    encodeRequest,
    readAdminRequest,
    readResponse,
    responseFields,
)
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.test.memorynet import MemoryBackend, MemoryNetwork
from lbproxy.test.test_admin import Hooks, makeBalancer
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.health import HealthSettings


class WireTests(SynchronousTestCase):
    """
    Requests and answers are single lines of JSON; answers carry the
    marker.
    """

    def test_request(self) -> None:
        """
        A request is one ASCII line of JSON, read back as it was written.
        """
        line = encodeRequest(7, "admin", {"path": "/caf\u00e9\n"})
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n") and line.isascii())
        request = decodeRequest(line[:-1])
        self.assertEqual(
            (request.id, request.kind, dict(request.fields)), (7, "admin", {"path": "/caf\u00e9\n"})
        )

    def test_badRequests(self) -> None:
        """
        A line that is no request is refused with a reason, and with its id
        when it has one (so that the error can be answered).
        """
        for line, id in [
            (b"not json", None),
            (b"[1]", None),
            (b'{"kind": "reload"}', None),
            (b'{"id": true, "kind": "reload"}', None),
            (b'{"id": 4}', 4),
        ]:
            with self.assertRaises(ControlError) as raised:
                decodeRequest(line)
            self.assertEqual(raised.exception.id, id, line)

    def test_reply(self) -> None:
        """
        An answer is the marker and one line of JSON, read back as it was
        written.
        """
        line = encodeReply(3, {"ok": False, "why": "a\nb"})
        self.assertTrue(line.startswith(MARKER) and isReply(line))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(decodeReply(line[:-1]), (3, {"ok": False, "why": "a\nb"}))
        self.assertRaises(ControlError, decodeReply, MARKER + b'{"ok": true}')
        self.assertFalse(isReply(b"an ordinary log line"))

    def test_adminFields(self) -> None:
        """
        An admin call and its answer go through the channel unchanged,
        bodies of any bytes included.
        """
        body = bytes(range(256))
        fields = json.loads(json.dumps(adminRequest("PATCH", "/pools/a%2Fb", body, None)))
        self.assertEqual(readAdminRequest(fields), ("PATCH", "/pools/a%2Fb", body, None))
        response = AdminResponse(405, JSON, body, (("Allow", "GET"),))
        self.assertEqual(readResponse(json.loads(json.dumps(responseFields(response)))), response)

    def test_badAdminFields(self) -> None:
        """
        Admin fields of the wrong shapes are refused.
        """
        for fields in [{"path": "/"}, {"method": "GET", "path": "/", "body": "!!"}]:
            self.assertRaises(ControlError, readAdminRequest, fields)
        for answer in [
            {"contentType": JSON},
            {"status": 200, "contentType": JSON, "headers": [["a"]]},
            {"status": 200, "contentType": JSON, "body": 5},
        ]:
            self.assertRaises(ControlError, readResponse, answer)

    def test_escapeLogText(self) -> None:
        """
        Log text loses the marker's first character to an escape; nothing
        else changes.
        """
        self.assertEqual(escapeLogText("\x1elbproxy-control {}"), "\\x1elbproxy-control {}")
        self.assertEqual(escapeLogText("caf\u00e9 \\x1e"), "caf\u00e9 \\x1e")


class LineBufferTests(SynchronousTestCase):
    """
    L{LineBuffer} splits a stream into lines, memory bounded.
    """

    def test_split(self) -> None:
        """
        Lines split across reads are joined; the unfinished one waits for
        its end, or is given by C{flush}.
        """
        lines = LineBuffer(100)
        self.assertEqual(lines.feed(b"one\ntw"), [b"one"])
        self.assertEqual(lines.feed(b"o"), [])
        self.assertEqual(lines.feed(b"\n\nthree"), [b"two", b""])
        self.assertEqual(lines.flush(), b"three")
        self.assertEqual(lines.flush(), b"")

    def test_longLineCut(self) -> None:
        """
        An unfinished line longer than the limit is given out as it is.
        """
        lines = LineBuffer(10)
        self.assertEqual(lines.feed(b"x" * 8), [])
        self.assertEqual(lines.feed(b"x" * 8), [b"x" * 16])
        self.assertEqual(lines.feed(b"y\n"), [b"y"])

    def test_answersMayBeLonger(self) -> None:
        """
        An answer (the marker first, even split across reads) may be as
        long as the answer limit.
        """
        lines = LineBuffer(10, answerLimit=100)
        self.assertEqual(lines.feed(MARKER[:3]), [])
        self.assertEqual(lines.feed(MARKER[3:] + b"z" * 50), [])
        self.assertEqual(lines.feed(b"z\n"), [MARKER + b"z" * 51])
        self.assertEqual(lines.feed(MARKER + b"z" * 100), [MARKER + b"z" * 100])

    def test_defaultLimit(self) -> None:
        """
        By default an answer may be L{MAX_MESSAGE} bytes long.
        """
        lines = LineBuffer(10)
        self.assertEqual(lines.feed(MARKER + b"z" * (MAX_MESSAGE - len(MARKER))), [])


class ControlClientTests(SynchronousTestCase):
    """
    L{ControlClient} matches answers to requests, and fails those that
    get none.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.written: list[bytes] = []
        self.client = ControlClient(self.written.append, self.clock, timeout=10)

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.written]

    def test_answered(self) -> None:
        """
        A request is written as a line with a fresh id; the answer with
        that id fires it, whatever the order of answers.
        """
        first = self.client.call("reload", {})
        second = self.client.call("admin", {"path": "/"})
        self.assertEqual(
            self.sent(), [{"id": 1, "kind": "reload"}, {"id": 2, "kind": "admin", "path": "/"}]
        )
        self.client.lineReceived(encodeReply(2, {"status": 200}))
        self.assertNoResult(first)
        self.client.lineReceived(encodeReply(1, {"ok": True}))
        self.assertEqual(self.successResultOf(first), {"ok": True})
        self.assertEqual(self.successResultOf(second), {"status": 200})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_errorAnswer(self) -> None:
        """
        An answer with C{error} fails the request with that message.
        """
        asked = self.client.call("what", {})
        self.client.lineReceived(encodeReply(1, {"error": "unknown request 'what'"}))
        failure = self.failureResultOf(asked, ControlError)
        self.assertEqual(failure.getErrorMessage(), "unknown request 'what'")

    def test_timeout(self) -> None:
        """
        A request not answered in time fails saying so; its late answer is
        dropped.
        """
        asked = self.client.call("reload", {})
        self.clock.advance(9.9)
        self.assertNoResult(asked)
        self.clock.advance(0.1)
        failure = self.failureResultOf(asked, ControlError)
        self.assertEqual(failure.getErrorMessage(), "no answer within 10 s")
        self.client.lineReceived(encodeReply(1, {"ok": True}))

    def test_lost(self) -> None:
        """
        When the worker goes, every waiting request fails with the reason,
        and so does any sent after.
        """
        asked = self.client.call("reload", {})
        self.client.lost("exited (signal SIGKILL) before answering")
        self.assertEqual(
            self.failureResultOf(asked, ControlError).getErrorMessage(),
            "exited (signal SIGKILL) before answering",
        )
        self.failureResultOf(self.client.call("reload", {}), ControlError)
        self.assertEqual(len(self.written), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unreadableAnswer(self) -> None:
        """
        An unreadable answer is logged and changes nothing.
        """
        asked = self.client.call("reload", {})
        with capturedLogs() as events:
            self.client.lineReceived(MARKER + b"{oops")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertNoResult(asked)


@attrs.define
class _Worker:
    """
    A worker for the supervisor's side: answers each call with what
    C{answer} gives, and records the calls.
    """

    number: int
    answer: Any = None
    isRunning: bool = True
    calls: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)

    @property
    def label(self) -> str:
        return f"worker {self.number} (pid {100 + self.number})"

    @property
    def running(self) -> bool:
        return self.isRunning

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        self.calls.append((kind, dict(fields)))
        if not self.isRunning:
            return fail(ControlError("not running"))
        answer = self.answer(kind, fields) if callable(self.answer) else self.answer
        if isinstance(answer, Exception):
            return fail(answer)
        if isinstance(answer, Deferred):
            return answer
        return succeed(answer)


def _worker(worker: Worker) -> Worker:
    """
    C{worker}, checked by mypy to be a L{Worker}.
    """
    return worker


class AskAllTests(SynchronousTestCase):
    """
    L{askAll} gathers every worker's answer, failures included.
    """

    def test_answers(self) -> None:
        """
        Each worker's answer or failure, in order, labelled.
        """
        waiting: Deferred[dict[str, Any]] = Deferred()
        workers = [
            _Worker(1, {"ok": True}),
            _Worker(2, ControlError("no answer within 10 s")),
            _Worker(3, waiting),
            _Worker(4, isRunning=False),
        ]
        asked = askAll([_worker(w) for w in workers], "reload", {})
        self.assertNoResult(asked)
        waiting.callback({"ok": False, "why": "bad"})
        self.assertEqual(
            self.successResultOf(asked),
            [
                Answer("worker 1 (pid 101)", reply={"ok": True}),
                Answer("worker 2 (pid 102)", error="no answer within 10 s"),
                Answer("worker 3 (pid 103)", reply={"ok": False, "why": "bad"}),
                Answer("worker 4 (pid 104)", error="not running"),
            ],
        )

    def test_unexpectedFailure(self) -> None:
        """
        A failure that is no L{ControlError} is an answer too, and logged
        with its traceback.
        """
        with capturedLogs() as events:
            asked = askAll([_Worker(1, ZeroDivisionError("x"))], "reload", {})
        self.assertEqual(self.successResultOf(asked)[0].error, "x")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ReloadReportTests(SynchronousTestCase):
    """
    L{ReloadReport} says which workers did not apply a reload, and why.
    """

    def test_allApplied(self) -> None:
        """
        Every worker answered C{ok}: no failures.
        """
        report = ReloadReport.of([Answer("w1", {"ok": True}), Answer("w2", {"ok": True})])
        self.assertEqual((report.ok, report.count, report.failures), (True, 2, ()))

    def test_failures(self) -> None:
        """
        A worker that answered not C{ok} (with or without a reason), or did
        not answer, failed.
        """
        report = ReloadReport.of(
            [
                Answer("w1", {"ok": True}),
                Answer("w2", {"ok": False, "why": "pool 'web': empty"}),
                Answer("w3", {"ok": False}),
                Answer("w4", error="no answer within 10 s"),
            ]
        )
        self.assertFalse(report.ok)
        self.assertEqual(
            report.failures,
            ("w2: pool 'web': empty", "w3: the reload failed", "w4: no answer within 10 s"),
        )


class _API:
    """
    An admin API that records its calls and answers with C{response}.
    """

    def __init__(self, response: AdminResponse) -> None:
        self.response = response
        self.calls: list[tuple[str, str, bytes, str | None]] = []

    def handle(
        self, method: str, path: str, body: bytes, accept: str | None = None
    ) -> Deferred[AdminResponse]:
        self.calls.append((method, path, body, accept))
        return succeed(self.response)


def _handler(api: AdminHandler) -> AdminHandler:
    """
    C{api}, checked by mypy to be an L{AdminHandler}.
    """
    return api


class ControlServerTests(SynchronousTestCase):
    """
    L{ControlServer} answers each request line with one answer line.
    """

    def setUp(self) -> None:
        self.written: list[bytes] = []

    def answers(self) -> list[tuple[int, dict[str, Any]]]:
        return [decodeReply(line.rstrip(b"\n")) for line in self.written]

    def test_dispatch(self) -> None:
        """
        A request goes to the handler of its kind, with its fields; the
        answer carries the request's id.
        """
        seen: list[Mapping[str, Any]] = []

        def handler(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
            seen.append(fields)
            return succeed({"ok": True})

        server = ControlServer({"reload": handler}, self.written.append)
        server.lineReceived(encodeRequest(5, "reload", {"x": 1}).rstrip(b"\n"))
        self.assertEqual(seen, [{"x": 1}])
        self.assertEqual(self.answers(), [(5, {"ok": True})])
        self.assertTrue(all(isReply(line) for line in self.written))

    def test_later(self) -> None:
        """
        A handler may answer later; the answer is written then.
        """
        later: Deferred[Mapping[str, Any]] = Deferred()
        server = ControlServer({"slow": lambda fields: later}, self.written.append)
        server.lineReceived(encodeRequest(1, "slow", {}))
        self.assertEqual(self.written, [])
        later.callback({"done": True})
        self.assertEqual(self.answers(), [(1, {"done": True})])

    def test_errors(self) -> None:
        """
        An unknown kind, a handler's L{ControlError} and a request without
        a kind are answered with an error; a line without an id is only
        logged; an unexpected exception is answered and logged.
        """

        def broken(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
            raise ZeroDivisionError("boom")

        def refusing(fields: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
            return fail(ControlError("an admin request needs a method and a path"))

        server = ControlServer({"broken": broken, "refusing": refusing}, self.written.append)
        with capturedLogs() as events:
            server.lineReceived(encodeRequest(1, "what", {}))
            server.lineReceived(encodeRequest(2, "refusing", {}))
            server.lineReceived(b'{"id": 3}')
            server.lineReceived(b"garbage")
            server.lineReceived(encodeRequest(4, "broken", {}))
            server.lineReceived(b"")
        self.assertEqual(
            self.answers(),
            [
                (1, {"error": "unknown request 'what'"}),
                (2, {"error": "an admin request needs a method and a path"}),
                (3, {"error": "a control request without a kind"}),
                (4, {"error": "boom"}),
            ],
        )
        self.assertEqual(
            [e["log_level"] for e in events], [LogLevel.warn, LogLevel.warn, LogLevel.critical]
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_admin(self) -> None:
        """
        L{adminHandler} hands an admin call to the worker's API and answers
        with its response.
        """
        api = _API(AdminResponse(201, JSON, b"{}", (("Location", "/x"),)))
        server = ControlServer({"admin": adminHandler(_handler(api))}, self.written.append)
        server.lineReceived(
            encodeRequest(9, "admin", adminRequest("POST", "/pools/web/backends", b"{}", "*/*"))
        )
        self.assertEqual(api.calls, [("POST", "/pools/web/backends", b"{}", "*/*")])
        ((id, fields),) = self.answers()
        self.assertEqual((id, readResponse(fields)), (9, api.response))


class ReportedReloadTests(SynchronousTestCase):
    """
    L{ReportedReload} says whether a reload applied, and why not, from the
    error lines it logged.
    """

    def setUp(self) -> None:
        self.publisher = LogPublisher()
        self.log = Logger(observer=self.publisher)

    def test_ok(self) -> None:
        """
        A reload that applied is C{ok}.
        """
        reload = ReportedReload(lambda: True, self.publisher)
        self.assertEqual(self.successResultOf(reload({})), {"ok": True, "why": None})

    def test_why(self) -> None:
        """
        A reload that did not apply answers with the error lines it logged
        while it ran: the rejection's reason, other errors' text; warnings
        and what is logged after are not part of it.
        """

        def failing() -> bool:
            self.log.warn("changed options that take effect at the next restart: x")
            self.log.error(
                "configuration reload rejected, the running configuration is kept: {why}",
                why="bad key",
            )
            self.log.error(
                "TLS certificates not reloaded, keeping the old ones: {error}", error="gone"
            )
            return False

        reload = ReportedReload(failing, self.publisher)
        self.assertEqual(
            self.successResultOf(reload({})),
            {
                "ok": False,
                "why": "bad key; TLS certificates not reloaded, keeping the old ones: gone",
            },
        )
        seen: list[Any] = []
        self.publisher.addObserver(cast(ILogObserver, seen.append))
        self.log.error("later")
        self.assertEqual(len(seen), 1)

    def test_noReason(self) -> None:
        """
        A reload that did not apply and logged no error says to see the
        log.
        """
        reload = ReportedReload(lambda: False, self.publisher)
        self.assertEqual(
            self.successResultOf(reload({})),
            {"ok": False, "why": "the reload failed (see the log)"},
        )


def _answer(status: int, value: object, headers: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """
    A worker's answer to an admin call: C{value} as JSON.
    """
    return responseFields(jsonResponse(status, value, tuple(headers)))


def _backend(url: str, **fields: Any) -> dict[str, Any]:
    """
    A backend as the admin API shows it, with C{fields} changed.
    """
    view = {
        "address": url.split("//")[1],
        "url": url,
        "state": "up",
        "weight": 1,
        "in_flight": 0,
        "requests": 0,
        "failures": 0,
        "retries": 0,
        "ejections": 0,
        "removing": False,
        "latency_ewma_ms": None,
        "last_latency_ms": None,
        "open_connections": 0,
        "idle_connections": 0,
    }
    view.update(fields)
    return view


def _body(response: AdminResponse) -> Any:
    return json.loads(response.body)


class CombineViewsTests(SynchronousTestCase):
    """
    L{combineViews} makes one view of the workers' views.
    """

    def test_backendCounters(self) -> None:
        """
        A backend's counters are summed, its latencies the highest known,
        its address, URL and weight the first worker's.
        """
        one = _backend(
            "http://b:80",
            requests=3,
            failures=1,
            retries=2,
            ejections=1,
            in_flight=1,
            open_connections=2,
            idle_connections=1,
            latency_ewma_ms=5.0,
            last_latency_ms=None,
            weight=3,
        )
        two = _backend(
            "http://b:80",
            requests=4,
            failures=0,
            retries=1,
            ejections=0,
            in_flight=2,
            open_connections=3,
            idle_connections=3,
            latency_ewma_ms=7.5,
            last_latency_ms=None,
            weight=3,
        )
        self.assertEqual(
            combineViews([one, two]),
            _backend(
                "http://b:80",
                requests=7,
                failures=1,
                retries=3,
                ejections=1,
                in_flight=3,
                open_connections=5,
                idle_connections=4,
                latency_ewma_ms=7.5,
                last_latency_ms=None,
                weight=3,
            ),
        )

    def test_states(self) -> None:
        """
        The state is the common one, or else the most severe: down, then
        ejected, draining, slow-start, up; an unknown state beats them all.
        C{removing} holds if any worker is removing it.
        """
        table = [
            (["up", "up"], "up"),
            (["up", "slow-start"], "slow-start"),
            (["draining", "slow-start", "up"], "draining"),
            (["up", "ejected", "draining"], "ejected"),
            (["ejected", "down", "up"], "down"),
            (["down", "mystery"], "mystery"),
        ]
        for states, expected in table:
            views = [_backend("http://b:80", state=state) for state in states]
            self.assertEqual(combineViews(views)["state"], expected, states)
        views = [_backend("http://b:80"), _backend("http://b:80", removing=True)]
        self.assertTrue(combineViews(views)["removing"])

    def test_backendsMatchedByURL(self) -> None:
        """
        A pool's backends are matched by URL whatever their order in each
        worker, in the order they first appear; one only some workers have
        is listed with what those say.
        """
        one = {
            "pool": "web",
            "backends": [_backend("http://a:80", requests=1), _backend("http://b:80", requests=2)],
        }
        two = {
            "pool": "web",
            "backends": [_backend("http://b:80", requests=20), _backend("http://c:80", requests=5)],
        }
        combined = combineViews([one, two])
        self.assertEqual(combined["pool"], "web")
        self.assertEqual(
            [(b["url"], b["requests"]) for b in combined["backends"]],
            [("http://a:80", 1), ("http://b:80", 22), ("http://c:80", 5)],
        )

    def test_poolSummaries(self) -> None:
        """
        In the list of pools (matched by name), C{backends} is the most any
        worker has and C{available} the fewest any worker can use.
        """
        one = {
            "pools": [
                {"name": "web", "chooser": "RoundRobinChooser", "backends": 2, "available": 2}
            ]
        }
        two = {
            "pools": [
                {"name": "web", "chooser": "RoundRobinChooser", "backends": 2, "available": 1}
            ]
        }
        self.assertEqual(
            combineViews([one, two]),
            {
                "pools": [
                    {"name": "web", "chooser": "RoundRobinChooser", "backends": 2, "available": 1}
                ]
            },
        )

    def test_otherValues(self) -> None:
        """
        Values of no known meaning are the first worker's.
        """
        self.assertEqual(
            combineViews([{"a": [1, 2], "b": "x"}, {"a": [3], "b": "y"}]), {"a": [1, 2], "b": "x"}
        )
        self.assertEqual(combineViews([1, 2]), 1)


class CombineAnswersTests(SynchronousTestCase):
    """
    L{combineAnswers} makes one admin answer of the workers' answers.
    """

    def test_poolsCombined(self) -> None:
        """
        A successful C{GET} under C{/pools} is the workers' views combined,
        with the number of workers combined.
        """
        answers = [
            Answer(
                "worker 1 (pid 11)",
                _answer(200, {"pool": "web", "backends": [_backend("http://b:80", requests=2)]}),
            ),
            Answer(
                "worker 2 (pid 12)",
                _answer(200, {"pool": "web", "backends": [_backend("http://b:80", requests=3)]}),
            ),
        ]
        response = combineAnswers("GET", "/pools/web?x=1", answers)
        self.assertEqual((response.status, response.contentType), (200, JSON))
        body = _body(response)
        self.assertEqual((body["backends"][0]["requests"], body["workers"]), (5, 2))
        self.assertNotIn("unanswered", body)

    def test_poolsPartly(self) -> None:
        """
        A C{GET} under C{/pools} that some workers did not answer combines
        those that did, and names the others.
        """
        answers = [
            Answer("worker 1 (pid 11)", _answer(200, {"pools": []})),
            Answer("worker 2", error="not running"),
        ]
        body = _body(combineAnswers("GET", "/pools", answers))
        self.assertEqual(body, {"pools": [], "workers": 1, "unanswered": ["worker 2: not running"]})

    def test_agreedErrorAsIs(self) -> None:
        """
        An error every worker answered (a pool none has) is answered as the
        first worker answered it.
        """
        missing = errorResponse(404, "no such pool: 'x'")
        answers = [Answer(f"worker {n}", responseFields(missing)) for n in (1, 2)]
        self.assertEqual(combineAnswers("GET", "/pools/x", answers), missing)

    def test_changeAgreed(self) -> None:
        """
        A change every worker made is answered as the first worker answered
        it, headers and all.
        """
        answers = [
            Answer("worker 1 (pid 11)", _answer(201, {"n": 1}, [("Location", "/p/b")])),
            Answer("worker 2 (pid 12)", _answer(201, {"n": 2}, [("Location", "/p/b")])),
        ]
        response = combineAnswers("POST", "/pools/web/backends", answers)
        self.assertEqual(
            (response.status, _body(response), response.header("location")), (201, {"n": 1}, "/p/b")
        )

    def test_changeDiffers(self) -> None:
        """
        A change the workers answered differently, or that one did not
        answer, is a 500 that lists what each answered and warns that some
        may have made it.
        """
        answers = [
            Answer("worker 1 (pid 11)", _answer(200, {"ok": 1})),
            Answer(
                "worker 2 (pid 12)",
                responseFields(errorResponse(400, "backend b:80 is being removed")),
            ),
            Answer("worker 3 (pid 13)", error="no answer within 10 s"),
        ]
        response = combineAnswers("PATCH", "/pools/web/backends/b:80", answers)
        self.assertEqual(response.status, 500)
        body = _body(response)
        self.assertEqual(
            body["error"],
            "the workers answered differently (the change may have been made in some of them "
            "only): worker 1 (pid 11): 200; worker 2 (pid 12): 400 (backend b:80 is being "
            "removed); worker 3 (pid 13): no answer within 10 s",
        )
        self.assertEqual(
            body["workers"],
            [
                {"worker": "worker 1 (pid 11)", "status": 200, "error": None},
                {
                    "worker": "worker 2 (pid 12)",
                    "status": 400,
                    "error": "backend b:80 is being removed",
                },
                {"worker": "worker 3 (pid 13)", "status": None, "error": "no answer within 10 s"},
            ],
        )
        one = [Answer("worker 1", _answer(200, {})), Answer("worker 2", error="not running")]
        self.assertEqual(combineAnswers("DELETE", "/pools/web/backends/b", one).status, 500)

    def test_readsDiffer(self) -> None:
        """
        A C{GET} the workers answered with different statuses is a 500
        listing them, with no warning about changes.
        """
        answers = [
            Answer("worker 1", _answer(200, {"pool": "web", "backends": []})),
            Answer("worker 2", responseFields(errorResponse(404, "no such pool"))),
        ]
        body = _body(combineAnswers("GET", "/pools/web", answers))
        self.assertEqual(
            body["error"],
            "the workers answered differently: worker 1: 200; worker 2: 404 (no such pool)",
        )

    def test_noneAnswered(self) -> None:
        """
        When no worker answered: 503, naming each and why.
        """
        answers = [
            Answer("worker 1", error="not running"),
            Answer("worker 2 (pid 3)", reply={"status": "?"}),
        ]
        response = combineAnswers("GET", "/config", answers)
        self.assertEqual(response.status, 503)
        self.assertEqual(
            _body(response)["error"],
            "no worker answered: worker 1: not running; worker 2 (pid 3): an admin answer "
            "needs a status and a content type",
        )


class WorkersAdminTests(SynchronousTestCase):
    """
    L{WorkersAdmin} sends each admin request to the workers that answer
    it.
    """

    def test_routing(self) -> None:
        """
        A C{GET} under C{/pools} and every change go to every worker; any
        other C{GET} to the first running worker only.
        """
        workers = [
            _Worker(1, _answer(200, {}), isRunning=False),
            _Worker(2, _answer(200, {})),
            _Worker(3, _answer(200, {})),
        ]
        api = WorkersAdmin(lambda: [_worker(w) for w in workers])
        for method, path, asked in [
            ("GET", "/pools", [1, 2, 3]),
            ("GET", "/pools/web/backends/b%3A80", [1, 2, 3]),
            ("GET", "/config?format=json", [2]),
            ("GET", "/", [2]),
            ("POST", "/config", [1, 2, 3]),
            ("DELETE", "/pools/web/backends/b", [1, 2, 3]),
        ]:
            for worker in workers:
                worker.calls.clear()
            api.handle(method, path, b"body", "application/json")
            self.assertEqual([w.number for w in workers if w.calls], asked, (method, path))
        self.assertEqual(
            workers[1].calls,
            [
                (
                    "admin",
                    adminRequest("DELETE", "/pools/web/backends/b", b"body", "application/json"),
                )
            ],
        )

    def test_changedCalled(self) -> None:
        """
        C{changed} is called once the workers have answered a change, even
        a refused one, and not for a C{GET}.
        """
        answers: list[Deferred[dict[str, Any]]] = []

        def answer(kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
            answers.append(Deferred())
            return answers[-1]

        workers = [_Worker(1, answer)]
        called: list[None] = []
        api = WorkersAdmin(lambda: [_worker(w) for w in workers], lambda: called.append(None))
        reading = api.handle("GET", "/pools", b"")
        answers[0].callback(_answer(200, {"pools": []}))
        self.assertEqual(self.successResultOf(reading).status, 200)
        changing = api.handle("DELETE", "/pools/web/backends/b", b"")
        self.assertEqual(called, [])
        answers[1].callback(responseFields(errorResponse(404, "no such backend")))
        self.assertEqual(self.successResultOf(changing).status, 404)
        self.assertEqual(called, [None])

    def test_changesAudited(self) -> None:
        """
        A change is logged once, with its answer and the number of workers.
        """
        workers = [_Worker(1, _answer(202, {})), _Worker(2, _answer(202, {}))]
        api = WorkersAdmin(lambda: [_worker(w) for w in workers])
        with capturedLogs() as events:
            self.successResultOf(api.handle("DELETE", "/pools/web/backends/b", b""))
            self.successResultOf(api.handle("GET", "/pools", b""))
        self.assertEqual(
            [(e["method"], e["status"], e["count"]) for e in events], [("DELETE", 202, 2)]
        )


@attrs.define
class _InMemoryWorker:
    """
    A worker slot whose worker is in memory: a L{ControlClient} and a
    L{ControlServer} joined by lists of lines, the server answering from a
    real L{AdminAPI} over a real balancer.
    """

    number: int
    api: AdminAPI
    clock: Clock = attrs.Factory(Clock)
    client: ControlClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        server = ControlServer({"admin": adminHandler(self.api)}, self._toSupervisor)
        self.client = ControlClient(
            lambda line: server.lineReceived(line.rstrip(b"\n")), self.clock
        )

    def _toSupervisor(self, line: bytes) -> None:
        self.client.lineReceived(line.rstrip(b"\n"))

    @property
    def label(self) -> str:
        return f"worker {self.number}"

    @property
    def running(self) -> bool:
        return True

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        return self.client.call(kind, fields)


class ThroughTheChannelTests(SynchronousTestCase):
    """
    The supervisor's admin API over in-memory workers, each with its own
    balancer: the whole path but the pipes.
    """

    def setUp(self) -> None:
        self.balancers = []
        self.workers = []
        for number in (1, 2):
            balancer, _ = makeBalancer(("web", (Backend("127.0.0.2", 80),)))
            self.balancers.append(balancer)
            self.workers.append(_InMemoryWorker(number, AdminAPI(balancer, Hooks())))
        self.api = WorkersAdmin(lambda: [_worker(w) for w in self.workers])

    def request(self, method: str, path: str, body: object = None) -> AdminResponse:
        data = b"" if body is None else json.dumps(body).encode()
        return self.successResultOf(self.api.handle(method, path, data))

    def test_addedEverywhere(self) -> None:
        """
        A backend added through the supervisor is in every worker's pool,
        and the combined view sums what each worker counted for it.
        """
        response = self.request(
            "POST", "/pools/web/backends", {"address": "127.0.0.9:80", "weight": 2}
        )
        self.assertEqual(response.status, 201, response.body)
        self.assertEqual(
            response.header("location"), "/pools/web/backends/http%3A%2F%2F127.0.0.9%3A80"
        )
        for balancer, requests in zip(self.balancers, (4, 6), strict=True):
            (added,) = [
                b
                for b in balancer.pool("web").backends.backends
                if b.port == 80 and b.host == "127.0.0.9"
            ]
            self.assertEqual(added.weight, 2)
            added.requests = requests
        body = _body(self.request("GET", "/pools/web/backends"))
        self.assertEqual(body["workers"], 2)
        self.assertEqual(
            [(b["address"], b["weight"], b["requests"]) for b in body["backends"]],
            [("127.0.0.2:80", 1, 0), ("127.0.0.9:80", 2, 10)],
        )

    def test_drainedEverywhere(self) -> None:
        """
        A backend drained through the supervisor is draining in every
        worker.
        """
        response = self.request("PATCH", "/pools/web/backends/127.0.0.2:80", {"drain": True})
        self.assertEqual(response.status, 200, response.body)
        for balancer in self.balancers:
            self.assertTrue(balancer.pool("web").backends.backends[0].draining)
        self.assertEqual(_body(response)["state"], "draining")

    def test_refusedEverywhere(self) -> None:
        """
        A request every worker refuses is answered with their refusal.
        """
        response = self.request("POST", "/pools/nope/backends", {"address": "127.0.0.9:80"})
        self.assertEqual(response.status, 400, response.body)
        self.assertNotIn("workers", _body(response))


class ChangesForTests(SynchronousTestCase):
    """
    L{changesFor} lists the admin requests that make one worker's backends
    another's.
    """

    def test_same(self) -> None:
        """
        The same backends, weights and draining need nothing; counters,
        health and order do not matter.
        """
        wanted = [_backend("http://a:80", requests=5), _backend("http://b:80", state="down")]
        have = [_backend("http://b:80"), _backend("http://a:80", state="ejected")]
        self.assertEqual(changesFor("web", wanted, have), [])

    def test_changes(self) -> None:
        """
        A missing backend is added with its weight (and drained if it is
        draining), one too many removed, and weight or draining set where
        they differ; backends being removed count as gone.
        """
        wanted = [
            _backend("http://a:80", weight=3),
            _backend("http://b:80", state="draining"),
            _backend("https://c:443", weight=2, state="draining"),
            _backend("http://d:80", removing=True),
            _backend("http://f:80"),
        ]
        have = [
            _backend("http://a:80"),
            _backend("http://b:80"),
            _backend("http://d:80"),
            _backend("http://e:80", removing=True),
            _backend("http://f:80", state="draining"),
        ]
        self.assertEqual(
            [(c.method, c.path, c.body, c.what) for c in changesFor("my pool", wanted, have)],
            [
                (
                    "DELETE",
                    "/pools/my%20pool/backends/http%3A%2F%2Fd%3A80",
                    None,
                    "remove http://d:80 from my pool",
                ),
                (
                    "PATCH",
                    "/pools/my%20pool/backends/http%3A%2F%2Fa%3A80",
                    {"weight": 3},
                    "set weight 3 for http://a:80 in my pool",
                ),
                (
                    "PATCH",
                    "/pools/my%20pool/backends/http%3A%2F%2Fb%3A80",
                    {"drain": True},
                    "set drain true for http://b:80 in my pool",
                ),
                (
                    "POST",
                    "/pools/my%20pool/backends",
                    {"address": "https://c:443", "weight": 2},
                    "add https://c:443 to my pool",
                ),
                (
                    "PATCH",
                    "/pools/my%20pool/backends/https%3A%2F%2Fc%3A443",
                    {"drain": True},
                    "drain https://c:443 in my pool",
                ),
                (
                    "PATCH",
                    "/pools/my%20pool/backends/http%3A%2F%2Ff%3A80",
                    {"drain": False},
                    "set drain false for http://f:80 in my pool",
                ),
            ],
        )


class ResyncTests(SynchronousTestCase):
    """
    L{resync} brings a worker's backends up to date with another's, over
    in-memory workers with real balancers.
    """

    def setUp(self) -> None:
        self.balancers = []
        self.workers = []
        for number in (1, 2):
            balancer, _ = makeBalancer(
                ("web", (Backend("127.0.0.2", 80), Backend("127.0.0.3", 80))),
                ("api", (Backend("127.0.0.4", 80),)),
            )
            self.balancers.append(balancer)
            self.workers.append(_InMemoryWorker(number, AdminAPI(balancer, Hooks())))

    def change(self, method: str, path: str, body: object = None) -> None:
        """
        Make a change in worker 1 only, through its own admin API.
        """
        data = b"" if body is None else json.dumps(body).encode()
        response = self.successResultOf(self.workers[0].api.handle(method, path, data))
        self.assertLess(response.status, 300, response.body)

    def backends(self, index: int) -> dict[str, list[tuple[str, int, bool]]]:
        balancer = self.balancers[index]
        return {
            name: sorted(
                (b.authority, b.weight, b.draining)
                for b in pool.backends.backends
                if not balancer.removing(b)
            )
            for name, pool in balancer.pools.items()
        }

    def test_upToDate(self) -> None:
        """
        After resync, the worker has the other's backends, weights and
        draining in every pool, and says what it changed.
        """
        self.change("POST", "/pools/web/backends", {"address": "127.0.0.9:80", "weight": 4})
        self.change("PATCH", "/pools/web/backends/127.0.0.2:80", {"drain": True})
        self.change("DELETE", "/pools/api/backends/127.0.0.4:80")
        self.change("POST", "/pools/api/backends", {"address": "127.0.0.5:80"})
        self.assertNotEqual(self.backends(0), self.backends(1))
        done = self.successResultOf(resync(_worker(self.workers[0]), _worker(self.workers[1])))
        self.assertEqual(self.backends(0), self.backends(1))
        self.assertEqual(
            done,
            Resynced(
                (
                    "set drain true for http://127.0.0.2:80 in web",
                    "add http://127.0.0.9:80 to web",
                    "remove http://127.0.0.4:80 from api",
                    "add http://127.0.0.5:80 to api",
                ),
                (),
            ),
        )
        again = self.successResultOf(resync(_worker(self.workers[0]), _worker(self.workers[1])))
        self.assertEqual(again, Resynced((), ()))

    def test_refusedChange(self) -> None:
        """
        A change the worker refuses is reported with its reason, and the
        others are still made.
        """

        def views(*backends: dict[str, Any]) -> dict[str, Any]:
            return {
                "/pools": {"pools": [{"name": "web"}]},
                "/pools/web/backends": {"pool": "web", "backends": list(backends)},
            }

        wanted = views(_backend("http://a:80"), _backend("http://b:80", weight=2))
        have = views(_backend("http://b:80"))

        def refusingAdds(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
            if fields["method"] == "GET":
                return _answer(200, have[fields["path"]])
            if fields["method"] == "POST":
                return responseFields(errorResponse(400, "no"))
            return _answer(200, {})

        model = _Worker(1, lambda kind, fields: _answer(200, wanted[fields["path"]]))
        refusing = _Worker(2, refusingAdds)
        done = self.successResultOf(resync(_worker(model), _worker(refusing)))
        self.assertEqual(
            done,
            Resynced(
                ("set weight 2 for http://b:80 in web",), ("add http://a:80 to web: 400 (no)",)
            ),
        )

    def test_modelSilent(self) -> None:
        """
        If a worker cannot show its pools, resync fails saying so.
        """
        silent = _Worker(1, ControlError("no answer within 10 s"))
        failure = self.failureResultOf(
            resync(_worker(silent), _worker(self.workers[1])), ControlError
        )
        self.assertEqual(failure.getErrorMessage(), "no answer within 10 s")
        broken = _Worker(1, responseFields(errorResponse(500, "internal error")))
        failure = self.failureResultOf(
            resync(_worker(broken), _worker(self.workers[1])), ControlError
        )
        self.assertEqual(
            failure.getErrorMessage(), "worker 1 (pid 101) answered GET /pools with 500"
        )


HEALTH = HealthSettings(interval=2.0, path=b"/health", timeout=1.0, fall=2, rise=1)


def _down(request: Request) -> bytes:
    request.setResponseCode(503)
    return b"down"


@attrs.define
class _HealthWorker:
    """
    A worker slot whose worker is in memory: its own balancer (no active
    checks of its own) behind a real L{ControlServer} with the health
    handlers and the admin API, joined to a L{ControlClient} by lists of
    lines.
    """

    number: int
    balancer: Balancer
    clock: Clock = attrs.Factory(Clock)
    isRunning: bool = True
    kinds: list[str] = attrs.Factory(list)
    client: ControlClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        handlers = {
            **healthHandlers(self.balancer, self.clock),
            "admin": adminHandler(AdminAPI(self.balancer, Hooks())),
        }
        server = ControlServer(handlers, self._toSupervisor)
        self.client = ControlClient(
            lambda line: server.lineReceived(line.rstrip(b"\n")), self.clock
        )

    def _toSupervisor(self, line: bytes) -> None:
        self.client.lineReceived(line.rstrip(b"\n"))

    @property
    def label(self) -> str:
        return f"worker {self.number}"

    @property
    def running(self) -> bool:
        return self.isRunning

    def call(self, kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        self.kinds.append(kind)
        if not self.isRunning:
            return fail(ControlError("not running"))
        return self.client.call(kind, fields)

    def health(self, pool: str = "web") -> dict[str, bool]:
        """
        Whether each backend of C{pool} is healthy, by address.
        """
        return {b.authority: b.healthy for b in self.balancer.pool(pool).backends.backends}


class SharedHealthTests(SynchronousTestCase):
    """
    L{SharedHealth}: the supervisor checks the workers' backends once per
    interval for all of them and tells them what it finds; the probes and
    the backends are in memory, the workers are real balancers behind real
    control channels.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.clock = self.network.clock
        self.a = self.network.backend(b"a", "10.0.0.1")
        self.b = self.network.backend(b"b", "10.0.0.2", respond=_down)
        self.c = self.network.backend(b"c", "10.0.0.3")
        self.workers = [self.worker(number) for number in (1, 2, 3)]
        self.health = SharedHealth(self.clock, self.network.upstream, refresh=5.0)
        self.addCleanup(self.health.stop)

    def config(
        self, *servers: MemoryBackend, health: HealthSettings = HEALTH, slowStart: float = 0.0
    ) -> BalancerConfig:
        servers = servers or (self.a, self.b)
        pool = PoolConfig(
            name="web",
            backends=tuple(server.backend for server in servers),
            chooser=RoundRobinChooser(),
            health=health,
            slowStart=slowStart,
        )
        return BalancerConfig(pools=(pool,), routes=RouteTable((RouteRule(pool="web"),)))

    def worker(self, number: int, config: BalancerConfig | None = None) -> _HealthWorker:
        balancer = Balancer(
            config or self.config(),
            self.clock,
            self.clock,
            self.network.upstream,
            activeChecks=False,
        )
        balancer.start()
        self.addCleanup(balancer.stop)
        return _HealthWorker(number, balancer)

    def start(self) -> None:
        self.health.start(lambda: [_worker(w) for w in self.workers])
        self.network.flush()

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, a second at a time, the network flushed after
        each.
        """
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.network.flush()

    def probes(self, *servers: MemoryBackend) -> list[int]:
        """
        How many probes each of C{servers} has received.
        """
        return [
            sum(1 for r in server.resource.received if r.uri == b"/health") for server in servers
        ]

    def test_oneProbePerInterval(self) -> None:
        """
        Each backend gets one probe at once and one per interval after,
        however many workers there are; the pools are asked of the first
        worker only.
        """
        self.start()
        self.assertEqual(self.probes(self.a, self.b), [1, 1])
        self.advance(10)
        self.assertEqual(self.probes(self.a, self.b), [6, 6])
        self.assertEqual([w.kinds.count("health-pools") for w in self.workers], [3, 0, 0])

    def test_everyWorkerTold(self) -> None:
        """
        A backend that fails C{fall} checks is down in every worker; one
        that passes C{rise} checks again is back up in every worker, and
        the supervisor logs each change once.
        """
        with capturedLogs() as events:
            self.start()
            self.assertEqual([w.health() for w in self.workers], [HEALTHY_AB] * 3)
            self.advance(2)
            self.assertEqual(
                [w.health() for w in self.workers],
                [{"10.0.0.1:80": True, "10.0.0.2:80": False}] * 3,
            )
            self.b.resource.handler = None
            self.advance(2)
        self.assertEqual([w.health() for w in self.workers], [HEALTHY_AB] * 3)
        self.assertEqual(
            [formatEvent(e) for e in events if "backend" in e],
            [
                "backend 10.0.0.2:80 is DOWN (2 health checks failed)",
                "backend 10.0.0.2:80 is UP (health checks pass)",
            ],
        )

    def test_backUpWithSlowStart(self) -> None:
        """
        A backend that comes back up starts the worker's pool's slow start.
        """
        self.workers = [self.worker(1, self.config(slowStart=30))]
        self.start()
        self.advance(2)
        self.b.resource.handler = None
        self.advance(2)
        (_, b) = self.workers[0].balancer.pool("web").backends.backends
        self.assertEqual((b.healthy, b.state), (True, "slow-start"))

    def test_workerThatJoinsIsTold(self) -> None:
        """
        A worker that starts (or starts again) is told the state of every
        backend: a backend down elsewhere is down in it at once.
        """
        self.start()
        self.advance(2)
        joining = self.worker(4)
        self.assertEqual(joining.health(), HEALTHY_AB)
        self.health.joined(_worker(joining))
        self.assertEqual(joining.health(), {"10.0.0.1:80": True, "10.0.0.2:80": False})

    def test_notRunningNotTold(self) -> None:
        """
        A change is sent to the running workers only; one that is not
        running learns it when it joins.
        """
        self.workers[2].isRunning = False
        self.start()
        self.advance(2)
        self.assertEqual([w.health()["10.0.0.2:80"] for w in self.workers], [False, False, True])
        self.assertNotIn("health", self.workers[2].kinds)

    def test_followsTheWorkersPools(self) -> None:
        """
        After a refresh the supervisor checks the pools a worker has now: a
        backend added is probed at once, a backend removed no more, new
        settings are used and the backends it kept keep their state.
        """
        self.start()
        self.advance(2)
        slower = attrs.evolve(HEALTH, interval=4.0)
        for worker in self.workers:
            worker.balancer.apply(self.config(self.b, self.c, health=slower))
        self.health.refresh()
        self.network.flush()
        self.assertEqual(self.probes(self.a, self.b, self.c), [2, 3, 1])
        self.advance(8)
        self.assertEqual(self.probes(self.a, self.b, self.c), [2, 5, 3])
        self.assertEqual(self.workers[0].health(), {"10.0.0.2:80": False, "10.0.0.3:80": True})

    def test_addedThroughTheAdminAPI(self) -> None:
        """
        A backend the admin API adds to the workers is checked once the
        supervisor refreshes, and its failures reach every worker.
        """
        self.start()
        down = self.network.backend(b"d", "10.0.0.4", respond=_down)
        for worker in self.workers:
            worker.balancer.addBackend("web", down.backend)
        self.health.refresh()
        self.network.flush()
        self.assertEqual(self.probes(down), [1])
        self.advance(2)
        self.assertEqual({w.health()["10.0.0.4:80"] for w in self.workers}, {False})

    def test_poolGone(self) -> None:
        """
        A pool the workers no longer have is no longer checked.
        """
        self.start()
        other = PoolConfig(
            name="other", backends=(self.c.backend,), chooser=RoundRobinChooser(), health=HEALTH
        )
        config = BalancerConfig(pools=(other,), routes=RouteTable((RouteRule(pool="other"),)))
        for worker in self.workers:
            worker.balancer.apply(config)
        self.health.refresh()
        self.network.flush()
        self.advance(10)
        self.assertEqual(self.probes(self.a, self.b, self.c), [1, 1, 6])

    def test_refreshWhileAsking(self) -> None:
        """
        A refresh asked for while the first worker has not yet answered is
        made once that answer is in (the pools may have changed since).
        """
        answers: list[Deferred[dict[str, Any]]] = []

        def slow(kind: str, fields: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
            answers.append(Deferred())
            return answers[-1]

        worker = _Worker(1, slow)
        self.health.start(lambda: [_worker(worker)])
        self.health.refresh()
        self.health.refresh()
        self.assertEqual(len(answers), 1)
        answers[0].callback({"pools": []})
        self.assertEqual(len(answers), 2)

    def test_silentWorkerWarnedOnce(self) -> None:
        """
        A worker that cannot say what its pools are is warned about once
        until one does; checks go on with what was known.
        """
        worker = _Worker(1, ControlError("no answer within 10 s"))
        with capturedLogs() as events:
            self.health.start(lambda: [_worker(worker)])
            self.clock.advance(5)
            self.clock.advance(5)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "shared health checks: worker 1 (pid 101) did not say what its pools "
                "are: no answer within 10 s"
            ],
        )

    def test_notToldWarned(self) -> None:
        """
        A worker that does not take a change is warned about, naming it
        and why.
        """
        described = describePools(self.workers[0].balancer)

        def answer(kind: str, fields: Mapping[str, Any]) -> object:
            if kind == "health-pools":
                return described
            return ControlError("exited (signal SIGKILL) before answering")

        deaf = _Worker(1, answer)
        with capturedLogs() as events:
            self.health.start(lambda: [_worker(deaf)])
            self.network.flush()
            self.advance(2)
        self.assertEqual(
            [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn][-1:],
            [
                "worker 1 (pid 101) was not told the backends' health: "
                "exited (signal SIGKILL) before answering"
            ],
        )

    def test_noneRunning(self) -> None:
        """
        With no worker running, nobody is asked.
        """
        for worker in self.workers:
            worker.isRunning = False
        self.start()
        self.assertEqual([w.kinds for w in self.workers], [[], [], []])

    def test_stop(self) -> None:
        """
        Once stopped, nothing is probed or asked any more.
        """
        self.start()
        stopped = self.health.stop()
        self.network.flush()
        self.successResultOf(stopped)
        self.advance(10)
        self.assertEqual(self.probes(self.a, self.b), [1, 1])
        self.assertEqual(self.workers[0].kinds, ["health-pools"])


HEALTHY_AB = {"10.0.0.1:80": True, "10.0.0.2:80": True}


class HealthMessagesTests(SynchronousTestCase):
    """
    The workers' side of the shared health checks: what they describe and
    what they apply.
    """

    def test_describedAndRead(self) -> None:
        """
        A worker describes each pool's health settings and backends (those
        on their way out left out), and the supervisor reads them back.
        """
        balancer, _ = makeBalancer(
            ("web", (Backend("127.0.0.2", 80), Backend("::1", 8080, scheme="https")))
        )
        balancer.removeBackend("web", "127.0.0.2:80")
        balancer.pool("web").backends.backends[0].inFlight = 1
        described = json.loads(json.dumps(describePools(balancer)))
        self.assertEqual(
            readPools(described),
            [PoolToCheck("web", HealthSettings(), (("https", "::1", 8080),))],
        )

    def test_appliedByAddress(self) -> None:
        """
        A state is applied to the backend of that pool with that scheme,
        host and port, however its address is written; others are passed
        over.
        """
        balancer, clock = makeBalancer()
        states = [
            BackendHealth("web", ("http", "127.0.0.2", 80), False),
            BackendHealth("web", ("https", "127.0.0.3", 80), False),
            BackendHealth("api", ("http", "127.000.0.4", 80), False),
            BackendHealth("nope", ("http", "127.0.0.2", 80), False),
        ]
        fields = {"backends": [state.fields() for state in states]}
        self.assertEqual(applyHealth(balancer, clock, readStates(fields)), 1)
        self.assertEqual(
            [(b.authority, b.healthy) for b in balancer.pool("web").backends.backends],
            [("127.0.0.2:80", False), ("127.0.0.3:80", True)],
        )

    def test_refused(self) -> None:
        """
        Messages of the wrong shape are refused with a reason.
        """
        for fields in (
            {},
            {"pools": [{"name": "web"}]},
            {"pools": [{"name": "web", "backends": [["http", "h"]]}]},
            {
                "pools": [
                    {
                        "name": "web",
                        "interval": "2",
                        "path": "/",
                        "timeout": 1,
                        "fall": 1,
                        "rise": 1,
                        "backends": [],
                    }
                ]
            },
        ):
            self.assertRaises(ControlError, readPools, fields)
        for fields in (
            {},
            {"backends": [{"pool": "web", "scheme": "http", "host": "h", "port": 80}]},
            {"backends": [{"pool": "web", "host": "h", "port": "80", "healthy": True}]},
        ):
            self.assertRaises(ControlError, readStates, fields)
