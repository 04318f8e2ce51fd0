"""
Tests for the admin dashboard: the page and its JSON endpoints
(L{lbproxy.admin.dashboard} through L{lbproxy.admin.api.AdminAPI}), the
page served without a token (L{lbproxy.admin.http}), L{Dashboard}
started and stopped with the service, C{--decision-sample}, and the
workers' views combined (L{lbproxy.observe.combine}, through the
supervisor's L{lbproxy.control.admin.WorkersAdmin}).
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from lbproxy.admin.api import AdminAPI
from lbproxy.admin.dashboard import HTML, isPageRequest, page
from lbproxy.admin.http import AdminResource
from lbproxy.admin.response import JSON, AdminResponse
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.control.admin import WorkersAdmin
from lbproxy.http.accesslog import AccessLog
from lbproxy.listen import parseListen
from lbproxy.observe import DEFAULT_SAMPLE, Dashboard
from lbproxy.observe.combine import combineDecisions, combineHistories
from lbproxy.service import LoadBalancerConfig, LoadBalancerService
from lbproxy.test.test_admin import Hooks, makeBalancer
from lbproxy.test.test_control import _InMemoryWorker, _worker
from lbproxy.test.test_tap import OptionsTestCase
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.health import HealthSettings

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _json(response: AdminResponse) -> Any:
    return json.loads(response.body)


class PageTests(SynchronousTestCase):
    """
    C{GET /} answers a browser with the page and a script with the index.
    """

    def setUp(self) -> None:
        self.balancer, self.clock = makeBalancer()
        self.dashboard = Dashboard(self.balancer, self.clock, 1)
        self.api = AdminAPI(self.balancer, Hooks(), dashboard=self.dashboard)

    def get(self, path: str, accept: str | None = None) -> AdminResponse:
        return self.successResultOf(self.api.handle("GET", path, b"", accept))

    def test_page(self) -> None:
        """
        A browser, or a client without C{Accept}, gets the HTML page: its
        content security policy lets it load nothing from elsewhere and
        talk only to this API, and it names no other host.
        """
        for accept in (BROWSER, None, "*/*"):
            response = self.get("/", accept)
            self.assertEqual((response.status, response.contentType), (200, HTML))
            self.assertEqual(response.body, page())
        policy = response.header("content-security-policy") or ""
        self.assertIn("default-src 'none'", policy)
        self.assertIn("connect-src 'self'", policy)
        text = page().decode("utf-8")
        self.assertTrue(text.startswith("<!doctype html>"))
        # No CDN, font or image from elsewhere: the only URL is SVG's namespace.
        self.assertEqual(
            set(re.findall(r"https?://[^\s\"')]+", text)), {"http://www.w3.org/2000/svg"}
        )
        for path in ("dashboard/state", "dashboard/history", "dashboard/decisions"):
            self.assertIn(f'get("{path}")', text)

    def test_indexForScripts(self) -> None:
        """
        C{?format=json} or an C{Accept} of JSON (without HTML) gets the
        JSON index, which lists the dashboard's endpoints.
        """
        for path, accept in [
            ("/?format=json", BROWSER),
            ("/", "application/json"),
            ("/?format=json", None),
        ]:
            response = self.get(path, accept)
            self.assertEqual(response.contentType, JSON, (path, accept))
            self.assertIn("GET /dashboard/decisions", _json(response)["endpoints"])

    def test_pageRequest(self) -> None:
        """
        Only a C{GET} of C{/} that wants HTML is a request for the page.
        """
        self.assertTrue(isPageRequest("GET", "/", BROWSER))
        self.assertTrue(isPageRequest("GET", "/?refresh=1", None))
        self.assertFalse(isPageRequest("GET", "/?format=json", BROWSER))
        self.assertFalse(isPageRequest("GET", "/", "application/json"))
        self.assertFalse(isPageRequest("POST", "/", BROWSER))
        self.assertFalse(isPageRequest("GET", "/pools", BROWSER))
        self.assertFalse(isPageRequest("GET", "/dashboard/state", BROWSER))

    def test_state(self) -> None:
        """
        C{GET /dashboard/state} gives every pool with its chooser and its
        backends as the admin API shows them, and the sampling rate.
        """
        state = _json(self.get("/dashboard/state"))
        self.assertEqual(state["decision_sample"], 1)
        self.assertEqual([p["name"] for p in state["pools"]], ["web", "api"])
        self.assertEqual(
            [b["address"] for b in state["pools"][0]["backends"]],
            ["127.0.0.2:80", "127.0.0.3:80"],
        )
        self.assertEqual(state["pools"][0]["backends"][0]["state"], "up")

    def test_historyAndDecisions(self) -> None:
        """
        C{GET /dashboard/history} and C{/dashboard/decisions} give the
        dashboard's views.
        """
        self.dashboard.start()
        self.addCleanup(self.dashboard.stop)
        self.clock.advance(1)
        history = _json(self.get("/dashboard/history"))
        self.assertEqual(len(history["backends"]), 3)
        self.assertEqual(len(history["backends"][0]["rate"]), 1)
        self.assertEqual(_json(self.get("/dashboard/decisions")), self.dashboard.decisions.view())

    def test_withoutDashboard(self) -> None:
        """
        Without a dashboard, its history and decisions are 404s; the state
        is still there.
        """
        api = AdminAPI(self.balancer, Hooks())
        for path in ("/dashboard/history", "/dashboard/decisions"):
            response = self.successResultOf(api.handle("GET", path, b""))
            self.assertEqual(response.status, 404, path)
        state = self.successResultOf(api.handle("GET", "/dashboard/state", b""))
        self.assertIsNone(_json(state)["decision_sample"])


def _render(resource: AdminResource, path: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
    """
    Render a GET of C{path} with C{headers}; the status and the body.
    """
    channel = DummyChannel()
    channel.transport = StringTransport()  # type: ignore[assignment]
    request = Request(channel)
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.method = b"GET"
    request.uri = path
    request.path = path.split(b"?")[0]
    request.clientproto = b"HTTP/1.1"
    request.content = BytesIO()
    resource.render(request)
    written = channel.transport.value()  # type: ignore[attr-defined]
    return request.code, written.split(b"\r\n\r\n", 1)[1]


class TokenTests(SynchronousTestCase):
    """
    With a token, the page is served without it; its data is not.
    """

    def test_pageWithoutToken(self) -> None:
        """
        A browser gets the page without a token, but not the JSON index
        nor any dashboard endpoint; with the token it gets those.
        """
        balancer, clock = makeBalancer()
        api = AdminAPI(balancer, Hooks(), dashboard=Dashboard(balancer, clock))
        resource = AdminResource(api, b"s3cret-token-0123")
        accept = {b"accept": BROWSER.encode()}
        status, body = _render(resource, b"/", accept)
        self.assertEqual((status, body[:15]), (200, b"<!doctype html>"))
        for path in (b"/?format=json", b"/dashboard/state", b"/dashboard/decisions", b"/pools"):
            self.assertEqual(_render(resource, path, accept)[0], 401, path)
        authorized = {**accept, b"authorization": b"Bearer s3cret-token-0123"}
        self.assertEqual(_render(resource, b"/dashboard/state", authorized)[0], 200)


class ServiceTests(SynchronousTestCase):
    """
    The service keeps a dashboard when told to, started and stopped with
    it.
    """

    def service(self, **fields: Any) -> tuple[LoadBalancerService, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        config = LoadBalancerConfig(
            backends=[Backend("127.0.0.2", 80)],
            listens=[parseListen("tcp:0:interface=127.0.0.1")],
            chooser=RoundRobinChooser(),
            accessLog=AccessLog(None, enabled=False),
            health=HealthSettings(interval=0),
            **fields,
        )
        return LoadBalancerService(config, reactor, reactor), reactor

    def test_startedAndStopped(self) -> None:
        """
        With C{dashboard}, the history is sampled every second from the
        start of the service until its stop, and its proxies sample
        decisions at the rate given.
        """
        service, reactor = self.service(dashboard=True, decisionSample=7)
        dashboard = service.dashboard
        assert dashboard is not None
        self.assertEqual(dashboard.decisions.every, 7)
        self.assertEqual(service.balancer.pool("default").proxy.sampleIn, 1)
        service.startService()
        reactor.advance(1)
        reactor.advance(1)
        url = service.balancer.pool("default").backends.backends[0].url
        self.assertEqual(len(dashboard.history.samples("default", url)), 2)
        self.successResultOf(service.stopService())
        reactor.advance(5)
        self.assertEqual(len(dashboard.history.samples("default", url)), 2)

    def test_offByDefault(self) -> None:
        """
        By default there is no dashboard and the proxies sample nothing.
        """
        service, _ = self.service()
        self.assertIsNone(service.dashboard)
        self.assertEqual(service.balancer.pool("default").proxy.sampleIn, 0)


class DecisionSampleOptionTests(OptionsTestCase):
    """
    C{--decision-sample}.
    """

    def test_default(self) -> None:
        """
        One in 100 by default; the dashboard is kept when the admin API is
        served.
        """
        options = self.parse("--backends", "127.0.0.2", "--listen", "tcp:0")
        assert options.config is not None
        self.assertEqual((options.config.decisionSample, options.config.dashboard), (100, False))
        self.assertEqual(DEFAULT_SAMPLE, 100)
        options = self.parse(
            "--backends", "127.0.0.2", "--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1"
        )
        assert options.config is not None
        self.assertTrue(options.config.dashboard)

    def test_given(self) -> None:
        """
        A whole number of 0 or more is taken; 0 turns sampling off.
        """
        for text, value in (("1", 1), ("0", 0), ("2500", 2500)):
            options = self.parse(
                "--backends", "127.0.0.2", "--listen", "tcp:0", "--decision-sample", text
            )
            assert options.config is not None
            self.assertEqual(options.config.decisionSample, value)

    def test_refused(self) -> None:
        """
        Anything else is one line naming the option.
        """
        for text in ("-1", "0.5", "often"):
            self.stderr.seek(0)
            self.stderr.truncate()
            line = self.refused(
                "--backends", "127.0.0.2", "--listen", "tcp:0", "--decision-sample", text
            )
            self.assertIn("--decision-sample must be", line)


def _decision(number: int, time: float) -> dict[str, Any]:
    return {"number": number, "time": time, "pool": "web", "candidates": []}


class CombineTests(SynchronousTestCase):
    """
    The workers' history and decisions make one view.
    """

    def test_histories(self) -> None:
        """
        Samples of the same backend taken in the same second are one:
        rates and in-flight summed, percentiles the highest; events merged
        newest first, marked with their worker.
        """

        def series(times: list[float], rate: list[float], p99: list[float | None]) -> Any:
            return {
                "pool": "web",
                "url": "http://b:80",
                "address": "b:80",
                "state": "up",
                "time": times,
                "rate": rate,
                "error_rate": [0.0] * len(times),
                "p50_ms": [1.0] * len(times),
                "p99_ms": p99,
                "in_flight": [1] * len(times),
            }

        one = {
            "interval": 1.0,
            "window": 300,
            "now": 12.2,
            "backends": [series([10.2, 11.2, 12.2], [1.0, 2.0, 3.0], [5.0, None, 7.0])],
            "events": [{"time": 11.2, "note": "a"}],
        }
        two = {
            "interval": 1.0,
            "window": 300,
            "now": 12.6,
            "backends": [series([10.9, 11.6], [10.0, 20.0], [9.0, 2.0])],
            "events": [{"time": 10.9, "note": "b"}, {"time": 11.6, "note": "c"}],
        }
        combined = combineHistories([("worker 1", one), ("worker 2", two)])
        (backend,) = combined["backends"]
        self.assertEqual(backend["time"], [10.2, 11.2, 12.2])
        self.assertEqual(backend["rate"], [1.0, 12.0, 23.0])
        self.assertEqual(backend["p99_ms"], [5.0, 9.0, 7.0])
        self.assertEqual(backend["in_flight"], [1, 2, 2])
        self.assertEqual(
            [(e["note"], e["worker"]) for e in combined["events"]],
            [("c", "worker 2"), ("a", "worker 1"), ("b", "worker 2")],
        )
        self.assertEqual(combined["workers"], 2)

    def test_decisions(self) -> None:
        """
        Decisions are merged newest first, marked with their worker, at
        most 200; the counts are summed.
        """
        one = {"sample": 100, "recorded": 3, "decisions": [_decision(3, 5.0), _decision(2, 1.0)]}
        two = {"sample": 100, "recorded": 150, "decisions": [_decision(9, 3.0)]}
        combined = combineDecisions([("w1", one), ("w2", two)])
        self.assertEqual(
            [(d["number"], d["worker"]) for d in combined["decisions"]],
            [(3, "w1"), (9, "w2"), (2, "w1")],
        )
        self.assertEqual((combined["sample"], combined["recorded"]), (100, 153))
        many = {"sample": 1, "recorded": 300, "decisions": [_decision(n, n) for n in range(300)]}
        self.assertEqual(len(combineDecisions([("w", many)])["decisions"]), 200)


class WorkersTests(SynchronousTestCase):
    """
    Under C{--workers}, the supervisor's dashboard endpoints ask every
    worker and combine their answers.
    """

    def test_combined(self) -> None:
        """
        Each worker's decisions are in the supervisor's answer, marked
        with the worker; the history sums their rates; the state sums
        their counters; the page comes from the first worker.
        """
        dashboards = []
        workers = []
        for number in (1, 2):
            balancer, clock = makeBalancer(("web", (Backend("127.0.0.2", 80),)))
            clock.advance(100 + number / 10)
            dashboard = Dashboard(balancer, clock, 1)
            dashboard.start()
            self.addCleanup(dashboard.stop)
            (backend,) = balancer.pool("web").backends.backends
            backend.requests += 5 * number
            clock.advance(1)
            dashboard.decisions.ring.add(
                time=clock.seconds(),
                pool="web",
                chooser="random",
                method="GET",
                path=f"/{number}",
                reason="r",
                chosen=backend,
                candidates=[],
            )
            dashboards.append(dashboard)
            api = AdminAPI(balancer, Hooks(), dashboard=dashboard)
            workers.append(_InMemoryWorker(number, api))
        supervisor = WorkersAdmin(lambda: [_worker(w) for w in workers])

        def get(path: str, accept: str | None = "application/json") -> AdminResponse:
            return self.successResultOf(supervisor.handle("GET", path, b"", accept))

        decisions = _json(get("/dashboard/decisions"))
        self.assertEqual(
            [(d["path"], d["worker"]) for d in decisions["decisions"]],
            [("/2", "worker 2"), ("/1", "worker 1")],
        )
        history = _json(get("/dashboard/history"))
        self.assertEqual(history["backends"][0]["rate"], [15.0])
        self.assertEqual(history["workers"], 2)
        state = _json(get("/dashboard/state"))
        self.assertEqual(state["pools"][0]["backends"][0]["requests"], 15)
        self.assertEqual(state["workers"], 2)
        response = get("/", BROWSER)
        self.assertEqual(response.contentType, HTML)

    def test_noneAnswered(self) -> None:
        """
        When no worker answers, the supervisor says so with a 503.
        """
        from lbproxy.test.test_control import _Worker

        supervisor = WorkersAdmin(lambda: [_worker(_Worker(1, {}, isRunning=False))])
        response = self.successResultOf(supervisor.handle("GET", "/dashboard/history", b""))
        self.assertEqual(response.status, 503)
        self.assertIn("no worker answered", _json(response)["error"])
