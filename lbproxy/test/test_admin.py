"""
Tests for L{lbproxy.admin.api}: the admin API's core, driven through
L{AdminAPI.handle} against a real L{Balancer} on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.admin.api import MAX_BODY, TOML, AdminAPI, ConfigHooks, ConfigRejected
from lbproxy.admin.response import JSON, AdminResponse
from lbproxy.balancer import DRAIN_POLL, Balancer, BalancerConfig, PoolConfig
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.upstream.backends import MAX_WEIGHT, Backend
from lbproxy.upstream.pool import Upstream, UpstreamSettings


class Hooks:
    """
    A configuration owner for tests: it describes a fixed configuration,
    rejects any text that holds C{invalid}, fails unexpectedly on text that
    holds C{explode}, and records what it applied. With C{gate} set, an
    apply waits for it to fire.
    """

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.started: list[str] = []
        self.gate: Deferred[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"pools": [{"name": "web", "backends": ["127.0.0.2:80"]}]}

    def describeTOML(self) -> str:
        return '[[pools]]\nname = "web"\nbackends = ["127.0.0.2:80"]'

    def apply(self, text: str, format: str) -> Deferred[None]:
        self.started.append(text)
        if "invalid" in text:
            return fail(ConfigRejected("pool 'web': backends must not be empty"))
        if "explode" in text:
            return fail(RuntimeError("unexpected"))
        gate = self.gate
        self.gate = None
        done = succeed(None) if gate is None else gate
        return done.addCallback(lambda _: self.applied.append((text, format)))


def makeBalancer(*pools: tuple[str, tuple[Backend, ...]]) -> tuple[Balancer, MemoryReactorClock]:
    """
    A balancer with C{pools} (name, backends), by default one pool C{web}
    of 127.0.0.2:80 and 127.0.0.3:80 and one pool C{api} of 127.0.0.4:80,
    on a memory reactor that is also its clock.
    """
    if not pools:
        pools = (
            ("web", (Backend("127.0.0.2", 80), Backend("127.0.0.3", 80))),
            ("api", (Backend("127.0.0.4", 80),)),
        )
    reactor = MemoryReactorClock()

    def makeUpstream(settings: UpstreamSettings) -> Upstream:
        return Upstream(reactor, reactor, settings)

    config = BalancerConfig(
        pools=tuple(
            PoolConfig(name=name, backends=backends, chooser=RoundRobinChooser())
            for name, backends in pools
        ),
        routes=RouteTable((RouteRule(pool=pools[0][0]),)),
    )
    return Balancer(config, reactor, reactor, makeUpstream), reactor


def _hooks(hooks: ConfigHooks) -> ConfigHooks:
    """
    C{hooks}, checked by mypy to be a L{ConfigHooks}.
    """
    return hooks


BACKEND_KEYS = {
    "address",
    "url",
    "state",
    "weight",
    "in_flight",
    "requests",
    "failures",
    "retries",
    "ejections",
    "removing",
    "latency_ewma_ms",
    "last_latency_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "open_connections",
    "idle_connections",
}


class _APITestCase(SynchronousTestCase):
    """
    Set-up and helpers: an L{AdminAPI} over L{makeBalancer}'s balancer.
    """

    def setUp(self) -> None:
        self.balancer, self.clock = makeBalancer()
        self.hooks = Hooks()
        self.api = AdminAPI(self.balancer, _hooks(self.hooks))

    def call(
        self, method: str, path: str, body: bytes | object = b"", accept: str | None = None
    ) -> AdminResponse:
        """
        The API's answer, which is there at once; a body that is not bytes
        is sent as JSON.
        """
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.successResultOf(self.api.handle(method, path, raw, accept))

    def json(self, response: AdminResponse, status: int) -> Any:
        """
        The JSON value of C{response}, checked to have C{status}, the JSON
        content type and a final newline.
        """
        self.assertEqual(response.contentType, JSON)
        self.assertTrue(response.body.endswith(b"\n"))
        self.assertEqual(response.status, status, response.body)
        return json.loads(response.body)

    def refused(
        self,
        method: str,
        path: str,
        body: bytes | object = b"",
        status: int = 400,
        what: str = "",
    ) -> str:
        """
        Check that the request (described by C{what}) is refused with
        C{status} and a one-line error, and that no pool or backend
        changed; return the error.
        """
        before = self.balancer.snapshot()
        response = self.call(method, path, body)
        self.assertEqual(response.status, status, f"{what}: {response.body!r}")
        error = self.json(response, status)
        self.assertEqual(list(error), ["error"])
        self.assertIsInstance(error["error"], str)
        self.assertNotIn("\n", error["error"])
        self.assertEqual(self.balancer.snapshot(), before, what)
        self.assertEqual(self.hooks.applied, [])
        message: str = error["error"]
        return message

    def backend(self, pool: str, address: str) -> Backend:
        """
        The live backend C{address} of C{pool}.
        """
        return self.balancer.pool(pool).find(address)


class ReadTests(_APITestCase):
    """
    GET answers describe the pools and backends.
    """

    def test_index(self) -> None:
        """
        GET /?format=json lists the endpoints (a browser gets the
        dashboard, see L{lbproxy.test.test_dashboard}).
        """
        index = self.json(self.call("GET", "/?format=json"), 200)
        self.assertIn("GET /pools", index["endpoints"])
        self.assertIn("DELETE /pools/{pool}/backends/{address...}", index["endpoints"])
        self.assertIn("POST /config", index["endpoints"])

    def test_pools(self) -> None:
        """
        GET /pools lists every pool in configured order with its chooser,
        its number of backends and how many of them take traffic.
        """
        self.backend("web", "127.0.0.3:80").healthy = False
        answer = self.json(self.call("GET", "/pools"), 200)
        self.assertEqual(
            answer,
            {
                "pools": [
                    {
                        "name": "web",
                        "chooser": "RoundRobinChooser",
                        "backends": 2,
                        "available": 1,
                    },
                    {
                        "name": "api",
                        "chooser": "RoundRobinChooser",
                        "backends": 1,
                        "available": 1,
                    },
                ]
            },
        )

    def test_pool(self) -> None:
        """
        GET /pools/NAME and GET /pools/NAME/backends give the pool, its
        chooser and each backend with its counters.
        """
        for path in ("/pools/web", "/pools/web/backends", "/pools/web/backends/"):
            answer = self.json(self.call("GET", path), 200)
            self.assertEqual(answer["pool"], "web")
            self.assertEqual(answer["chooser"], "RoundRobinChooser")
            self.assertEqual(
                [b["address"] for b in answer["backends"]], ["127.0.0.2:80", "127.0.0.3:80"]
            )
            self.assertEqual(set(answer["backends"][0]), BACKEND_KEYS)

    def test_backendView(self) -> None:
        """
        A backend's view has snake_case keys, its counters, and latencies
        in milliseconds (null before the first).
        """
        first = self.json(self.call("GET", "/pools/web/backends/127.0.0.2:80"), 200)
        self.assertEqual(
            first,
            {
                "address": "127.0.0.2:80",
                "url": "http://127.0.0.2:80",
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
                "latency_p50_ms": None,
                "latency_p99_ms": None,
                "open_connections": 0,
                "idle_connections": 0,
            },
        )
        backend = self.backend("web", "127.0.0.2:80")
        backend.requestStarted()
        backend.requestStarted()
        backend.requestFinished(failed=True, latency=0.25, now=self.clock.seconds())
        after = self.json(self.call("GET", "/pools/web/backends/127.0.0.2:80"), 200)
        self.assertEqual(after["in_flight"], 1)
        self.assertEqual(after["requests"], 2)
        self.assertEqual(after["failures"], 1)
        self.assertEqual(after["last_latency_ms"], 250.0)
        self.assertEqual(after["latency_ewma_ms"], 250.0)
        # One observation in the (0.1, 0.25] bucket: interpolated within it.
        self.assertEqual(after["latency_p50_ms"], 175.0)
        self.assertEqual(after["latency_p99_ms"], 248.5)

    def test_addressForms(self) -> None:
        """
        A backend is named by its C{host:port}, its URL (percent-encoded
        or not), or any address that means it (no port for port 80).
        """
        for address in (
            "127.0.0.2:80",
            "http://127.0.0.2:80",
            "http%3A%2F%2F127.0.0.2%3A80",
            "127.0.0.2%3A80",
            "127.0.0.2",
        ):
            answer = self.json(self.call("GET", f"/pools/web/backends/{address}"), 200)
            self.assertEqual(answer["address"], "127.0.0.2:80", address)

    def test_unknownPool(self) -> None:
        """
        Asking for a pool that does not exist is refused, naming it.
        """
        self.assertIn("'nope'", self.refused("GET", "/pools/nope"))
        self.assertIn("'nope'", self.refused("GET", "/pools/nope/backends"))

    def test_unknownBackend(self) -> None:
        """
        Asking for a backend the pool does not have is refused, naming it.
        """
        self.assertIn("127.0.0.9:80", self.refused("GET", "/pools/web/backends/127.0.0.9:80"))
        self.assertIn("127.0.0.4:80", self.refused("GET", "/pools/web/backends/127.0.0.4:80"))


class AddTests(_APITestCase):
    """
    POST /pools/NAME/backends adds a backend.
    """

    def test_add(self) -> None:
        """
        The new backend is in the pool at once, with weight 1 unless one is
        given; the answer is 201 with its view and its location.
        """
        response = self.call("POST", "/pools/web/backends", {"address": "127.0.0.9:8080"})
        added = self.json(response, 201)
        self.assertEqual(added["address"], "127.0.0.9:8080")
        self.assertEqual(added["weight"], 1)
        self.assertEqual(added["state"], "up")
        self.assertEqual(set(added), BACKEND_KEYS)
        self.assertEqual(
            response.header("Location"), "/pools/web/backends/http%3A%2F%2F127.0.0.9%3A8080"
        )
        self.assertEqual(self.backend("web", "127.0.0.9:8080").weight, 1)
        self.assertIn(
            self.backend("web", "127.0.0.9:8080"),
            self.balancer.pool("web").backends.available(),
        )
        self.assertEqual(self.json(self.call("GET", "/pools"), 200)["pools"][0]["backends"], 3)

    def test_addWithWeight(self) -> None:
        """
        A weight given is the new backend's weight.
        """
        added = self.json(
            self.call("POST", "/pools/api/backends", {"address": "127.0.0.9:81", "weight": 3}),
            201,
        )
        self.assertEqual(added["weight"], 3)
        self.assertEqual(self.backend("api", "127.0.0.9:81").weight, 3)

    def test_addressSyntax(self) -> None:
        """
        The address is given as in C{--backends}: C{host:port}, a bracketed
        IPv6 address, an http:// or https:// URL (443 by default).
        """
        for address, url in (
            ("[::1]:8080", "http://[::1]:8080"),
            ("https://example.com", "https://example.com:443"),
            ("http://127.0.0.9:81", "http://127.0.0.9:81"),
            ("backend.internal", "http://backend.internal:80"),
        ):
            added = self.json(self.call("POST", "/pools/web/backends", {"address": address}), 201)
            self.assertEqual(added["url"], url)
        self.assertEqual(len(self.balancer.pool("web").backends.backends), 6)

    def test_badInput(self) -> None:
        """
        A body that is not a JSON object with a valid address and weight,
        a backend the pool already has, or an unknown pool is refused with
        400, and nothing changes.
        """
        cases: list[tuple[str, bytes | object]] = [
            ("malformed JSON", b'{"address": '),
            ("empty body", b""),
            ("not UTF-8", b'{"address": "\xff"}'),
            ("a list", ["127.0.0.9:80"]),
            ("a string", "127.0.0.9:80"),
            ("no address", {"weight": 2}),
            ("address not a string", {"address": 80}),
            ("empty address", {"address": " "}),
            ("bad port", {"address": "127.0.0.9:99999"}),
            ("bad scheme", {"address": "ftp://127.0.0.9"}),
            ("with a path", {"address": "http://127.0.0.9/app"}),
            ("weight in address", {"address": "127.0.0.9:80=3"}),
            ("weight zero", {"address": "127.0.0.9:80", "weight": 0}),
            ("weight too large", {"address": "127.0.0.9:80", "weight": MAX_WEIGHT + 1}),
            ("weight a string", {"address": "127.0.0.9:80", "weight": "3"}),
            ("weight a float", {"address": "127.0.0.9:80", "weight": 2.5}),
            ("weight a bool", {"address": "127.0.0.9:80", "weight": True}),
            ("weight null", {"address": "127.0.0.9:80", "weight": None}),
            ("unknown field", {"address": "127.0.0.9:80", "color": "red"}),
            ("duplicate", {"address": "127.0.0.2:80"}),
            ("duplicate by URL", {"address": "http://127.0.0.2"}),
        ]
        for what, body in cases:
            self.refused("POST", "/pools/web/backends", body, what=what)
        self.assertIn("'nope'", self.refused("POST", "/pools/nope/backends", {"address": "h:1"}))

    def test_messages(self) -> None:
        """
        Refusals say what was wrong.
        """
        self.assertIn(
            f"from 1 to {MAX_WEIGHT}",
            self.refused("POST", "/pools/web/backends", {"address": "h:1", "weight": 0}),
        )
        self.assertIn(
            "already has backend 127.0.0.2:80",
            self.refused("POST", "/pools/web/backends", {"address": "127.0.0.2:80"}),
        )
        self.assertIn(
            "'color'",
            self.refused("POST", "/pools/web/backends", {"address": "h:1", "color": 1}),
        )
        self.assertIn("not valid JSON", self.refused("POST", "/pools/web/backends", b"{"))
        self.assertIn("JSON object", self.refused("POST", "/pools/web/backends", [1]))

    def test_tooLarge(self) -> None:
        """
        A body larger than L{MAX_BODY} is refused with 413 and nothing
        changes; one of exactly L{MAX_BODY} bytes is read.
        """
        padded = b'{"address": "127.0.0.9:80"}'.ljust(MAX_BODY + 1)
        self.refused("POST", "/pools/web/backends", padded, status=413)
        self.json(self.call("POST", "/pools/web/backends", padded[:MAX_BODY]), 201)


class RemoveTests(_APITestCase):
    """
    DELETE /pools/NAME/backends/ADDRESS drains a backend, then removes it.
    """

    def test_idleLeavesAtOnce(self) -> None:
        """
        A backend with no requests in flight leaves the pool at once; the
        answer is 202 with its view, marked as being removed.
        """
        answer = self.json(self.call("DELETE", "/pools/web/backends/127.0.0.3:80"), 202)
        self.assertEqual(answer["removing"], True)
        self.assertEqual(answer["backend"]["address"], "127.0.0.3:80")
        self.assertEqual(answer["backend"]["removing"], True)
        self.assertEqual(
            [b.authority for b in self.balancer.pool("web").backends.backends], ["127.0.0.2:80"]
        )

    def test_busyDrainsFirst(self) -> None:
        """
        A backend with requests in flight gets no new ones and stays in
        the pool, shown as draining and being removed, until they finish.
        """
        backend = self.backend("web", "127.0.0.2:80")
        backend.requestStarted()
        self.json(self.call("DELETE", "/pools/web/backends/127.0.0.2:80"), 202)
        shown = self.json(self.call("GET", "/pools/web/backends/127.0.0.2:80"), 200)
        self.assertEqual((shown["state"], shown["removing"]), ("draining", True))
        self.assertNotIn(backend, self.balancer.pool("web").backends.available())
        backend.requestFinished()
        self.clock.advance(DRAIN_POLL)
        self.assertNotIn(backend, self.balancer.pool("web").backends.backends)

    def test_byURL(self) -> None:
        """
        A backend can be named by its URL, percent-encoded or not.
        """
        self.json(self.call("DELETE", "/pools/web/backends/http://127.0.0.2:80"), 202)
        self.json(self.call("DELETE", "/pools/web/backends/http%3A%2F%2F127.0.0.3%3A80"), 202)
        self.assertEqual(self.balancer.pool("web").backends.backends, [])

    def test_unknown(self) -> None:
        """
        Removing a backend or from a pool that does not exist is refused.
        """
        self.refused("DELETE", "/pools/web/backends/127.0.0.9:80")
        self.refused("DELETE", "/pools/web/backends/127.0.0.4:80")
        self.refused("DELETE", "/pools/nope/backends/127.0.0.2:80")
        self.refused("DELETE", "/pools/web/backends/%FF")

    def test_ambiguous(self) -> None:
        """
        C{host:port} of both an http and an https backend is refused: the
        URL says which.
        """
        self.balancer, self.clock = makeBalancer(
            ("web", (Backend("h", 8443), Backend("h", 8443, scheme="https")))
        )
        self.api = AdminAPI(self.balancer, self.hooks)
        self.assertIn("give the URL", self.refused("DELETE", "/pools/web/backends/h:8443"))
        self.json(self.call("DELETE", "/pools/web/backends/https://h:8443"), 202)
        self.assertEqual(
            [b.url for b in self.balancer.pool("web").backends.backends], ["http://h:8443"]
        )


class ChangeTests(_APITestCase):
    """
    PATCH /pools/NAME/backends/ADDRESS changes a backend's weight or drains
    it.
    """

    def test_weight(self) -> None:
        """
        C{weight} sets the backend's weight; the answer is its view.
        """
        answer = self.json(
            self.call("PATCH", "/pools/web/backends/127.0.0.2:80", {"weight": 5}), 200
        )
        self.assertEqual(answer["weight"], 5)
        self.assertEqual(self.backend("web", "127.0.0.2:80").weight, 5)

    def test_drain(self) -> None:
        """
        C{drain: true} takes the backend out of service without removing
        it; C{drain: false} puts it back.
        """
        backend = self.backend("web", "127.0.0.2:80")
        path = "/pools/web/backends/127.0.0.2:80"
        self.assertEqual(
            self.json(self.call("PATCH", path, {"drain": True}), 200)["state"], "draining"
        )
        self.assertNotIn(backend, self.balancer.pool("web").backends.available())
        self.assertIn(backend, self.balancer.pool("web").backends.backends)
        self.assertEqual(self.json(self.call("PATCH", path, {"drain": False}), 200)["state"], "up")
        self.assertIn(backend, self.balancer.pool("web").backends.available())

    def test_both(self) -> None:
        """
        C{weight} and C{drain} may be given together.
        """
        answer = self.json(
            self.call("PATCH", "/pools/web/backends/127.0.0.3:80", {"weight": 7, "drain": True}),
            200,
        )
        self.assertEqual((answer["weight"], answer["state"]), (7, "draining"))

    def test_badInput(self) -> None:
        """
        Unknown or invalid fields, an empty object, anything but an object,
        an unknown pool or backend are refused with 400, and neither field
        is applied.
        """
        path = "/pools/web/backends/127.0.0.2:80"
        cases: list[tuple[str, str, bytes | object]] = [
            ("empty object", path, {}),
            ("malformed", path, b"{weight: 2}"),
            ("not an object", path, [{"weight": 2}]),
            ("unknown field", path, {"weight": 2, "colour": "red"}),
            ("weight zero", path, {"weight": 0}),
            ("weight a string", path, {"weight": "2"}),
            ("good weight, bad drain", path, {"weight": 2, "drain": "yes"}),
            ("good drain, bad weight", path, {"drain": True, "weight": MAX_WEIGHT + 1}),
            ("drain null", path, {"drain": None}),
            ("unknown backend", "/pools/web/backends/127.0.0.9:80", {"weight": 2}),
            ("unknown pool", "/pools/nope/backends/127.0.0.2:80", {"drain": True}),
        ]
        for what, target, body in cases:
            self.refused("PATCH", target, body, what=what)

    def test_removing(self) -> None:
        """
        A backend being removed cannot be drained or put back in service.
        """
        self.backend("web", "127.0.0.2:80").requestStarted()
        self.call("DELETE", "/pools/web/backends/127.0.0.2:80")
        for drain in (True, False):
            message = self.refused(
                "PATCH", "/pools/web/backends/127.0.0.2:80", {"drain": drain, "weight": 9}
            )
            self.assertIn("being removed", message)


class ConfigTests(_APITestCase):
    """
    GET /config shows the running configuration; POST /config applies a
    new one.
    """

    def test_showTOML(self) -> None:
        """
        By default the configuration is TOML, ending with a newline.
        """
        response = self.call("GET", "/config")
        self.assertEqual((response.status, response.contentType), (200, TOML))
        self.assertEqual(response.body, b'[[pools]]\nname = "web"\nbackends = ["127.0.0.2:80"]\n')

    def test_showJSON(self) -> None:
        """
        The configuration is JSON when the client accepts JSON or asks for
        C{?format=json}; C{?format=toml} wins over C{Accept}.
        """
        for path, accept in (
            ("/config", "application/json"),
            ("/config", "text/html, Application/JSON;q=0.9"),
            ("/config?format=json", None),
        ):
            self.assertEqual(
                self.json(self.call("GET", path, accept=accept), 200), self.hooks.describe()
            )
        toml = self.call("GET", "/config?format=toml", accept="application/json")
        self.assertEqual(toml.contentType, TOML)

    def test_unknownFormat(self) -> None:
        """
        A format other than json or toml is refused.
        """
        self.assertIn("'yaml'", self.refused("GET", "/config?format=yaml"))

    def test_applyTOML(self) -> None:
        """
        A posted configuration is applied as TOML unless it starts with
        C{{}, as JSON; the answer is C{{"applied": true}}.
        """
        self.assertEqual(
            self.json(self.call("POST", "/config", b"[[pools]]\n"), 200), {"applied": True}
        )
        self.assertEqual(
            self.json(self.call("POST", "/config", b'  {"pools": []}'), 200), {"applied": True}
        )
        self.assertEqual(self.hooks.applied, [("[[pools]]\n", "toml"), ('  {"pools": []}', "json")])

    def test_rejected(self) -> None:
        """
        An invalid configuration is answered with 400 and the reason.
        """
        message = self.refused("POST", "/config", b"invalid = true\n")
        self.assertEqual(message, "pool 'web': backends must not be empty")
        self.refused("POST", "/config", b"\xff\xfe")

    def test_unexpectedError(self) -> None:
        """
        An unexpected failure to apply is logged and answered with 500.
        """
        self.json(self.call("POST", "/config", b"explode"), 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_oneAtATime(self) -> None:
        """
        A configuration posted while another is being applied waits for
        it.
        """
        self.hooks.gate = Deferred()
        gate = self.hooks.gate
        first = self.api.handle("POST", "/config", b"first", None)
        second = self.api.handle("POST", "/config", b"second", None)
        self.assertEqual(self.hooks.started, ["first"])
        self.assertNoResult(first)
        gate.callback(None)
        self.assertEqual(self.successResultOf(first).status, 200)
        self.assertEqual(self.successResultOf(second).status, 200)
        self.assertEqual([text for text, _ in self.hooks.applied], ["first", "second"])


class RoutingTests(_APITestCase):
    """
    Unknown paths are 404, known paths with other methods 405.
    """

    def test_notFound(self) -> None:
        """
        A path the API does not have is answered with 404.
        """
        for path in ("/nope", "/pools/web/members", "/config/x", "pools", ""):
            self.refused("GET", path, status=404, what=path)

    def test_methodNotAllowed(self) -> None:
        """
        A method a path does not take is answered with 405 and the methods
        it does take, in C{Allow}.
        """
        for method, path, allow in (
            ("DELETE", "/pools", "GET"),
            ("PUT", "/pools/web/backends", "GET, POST"),
            ("POST", "/pools/web/backends/127.0.0.2:80", "GET, PATCH, DELETE"),
            ("get", "/config", "GET, POST"),
        ):
            self.refused(method, path, status=405, what=f"{method} {path}")
            self.assertEqual(self.call(method, path).header("Allow"), allow)

    def test_queryIgnored(self) -> None:
        """
        A query string does not change which endpoint answers.
        """
        self.assertEqual(len(self.json(self.call("GET", "/pools?x=1"), 200)["pools"]), 2)
