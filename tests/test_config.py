"""
The config file and its reload, end to end: the installed
C{twistd lbproxy --config lbproxy.toml} on real loopback sockets, with
backends in the test process that say who they are and what they got
(L{tests.configsupport.EchoBackend}), C{http.client}, C{websockets} and
Twisted's own HTTP client as clients, and SIGHUP sent to twistd by its
process id.

An invalid file stops twistd before anything listens, with one line
naming the file, the line and the key; routes send requests to pools by
Host and path, editing paths and headers; a flag beats the file; a reload
opens and closes listeners and swaps pools and routes for new requests
while connections, tunnels and requests in flight carry on, and an
invalid one changes nothing; 10 000 keep-alive requests see 20 reloads
without one failing.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from collections.abc import Mapping, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.sync.client import ClientConnection, connect

from tests.configsupport import (
    REJECTED,
    RELOADED,
    Answer,
    EchoBackend,
    KeepAlive,
    LoadClient,
    Outcome,
    get,
    refused,
    reload,
    startConfigured,
    writeConfig,
)
from tests.servers import WebSocketServer
from tests.support import READY_LINE, ExitResult, Twistd, freePort, logProblems, runTwistd, until

REQUESTS = 10_000
"""
Requests in the load that reloads must not disturb.
"""

CONNECTIONS = 64
"""
Keep-alive connections the load is sent over.
"""

RELOADS = 20
"""
Reloads during the load.
"""

LOAD_DEADLINE = 120.0
"""
Seconds the load may take in all.
"""

WS_TIMEOUT = 10.0
"""
Seconds the WebSocket client waits for the handshake, a message or a close.
"""


def _listen(*ports: int) -> str:
    """
    A C{listen} line for plain HTTP on C{ports} of 127.0.0.1.
    """
    return "listen = [" + ", ".join(f'"tcp:{port}:interface=127.0.0.1"' for port in ports) + "]"


def _backends(*backends: EchoBackend | WebSocketServer) -> str:
    """
    A pool's C{backends} line.
    """
    return "backends = [" + ", ".join(f'"{b.authority}"' for b in backends) + "]"


def _file(text: str) -> str:
    """
    C{text} (a triple-quoted part of a file) without its indentation.
    """
    return textwrap.dedent(text).lstrip("\n")


def _pools(
    ports: Sequence[int],
    pools: Mapping[str, Sequence[EchoBackend | WebSocketServer]],
    routes: str = "",
    top: str = "",
) -> str:
    """
    A config file: listeners on C{ports}, health checks off, round-robin
    and C{top} (more top-level keys), then one C{[pools.NAME]} table per
    pool, then C{routes}.
    """
    lines = [_listen(*ports), "health-interval = 0", 'chooser = "round-robin"', top, ""]
    for name, backends in pools.items():
        lines += [f"[pools.{name}]", _backends(*backends), ""]
    return "\n".join(lines) + _file(routes)


class _ConfigCase(TestCase):
    """
    A directory for the config file and twistd's working directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def log(self, process: Twistd) -> str:
        """
        The end of twistd's log, for failure messages.
        """
        return "\n--- twistd log (end) ---\n" + "\n".join(process.out.splitlines()[-15:])

    def assertCleanLog(self, process: Twistd) -> None:
        """
        Fail if twistd logged an unhandled error or a traceback.
        """
        problem = logProblems(process)
        self.assertIsNone(problem, f"twistd logged an error:\n{problem}")

    async def backendsOf(self, port: int, count: int, target: str = "/") -> list[str | None]:
        """
        Make C{count} requests for C{target} one after the other, each on
        a new connection; check each is a 200 and return who answered.
        """
        answered = []
        for _ in range(count):
            answer = await get(port, target)
            self.assertEqual(answer.status, 200, answer.body)
            answered.append(answer.backend)
        return answered


class StartupErrorTests(_ConfigCase):
    """
    An invalid config file stops C{twistd lbproxy} before it listens: exit
    status 2 and one line on standard error naming the file, the line and
    the key.
    """

    async def _refused(self, text: str | None, name: str = "lbproxy.toml") -> str:
        """
        Run twistd with C{--config NAME} (holding C{text}, unless it is
        L{None}: no file), the file's C{listen} being on a free port; check
        that it exits 2 without becoming ready, with exactly one line on
        standard error, and that nothing listens on that port; return the
        line.
        """
        port = freePort()
        if text is not None:
            writeConfig(os.path.join(self.directory, name), text.replace("PORT", str(port)))
        result: ExitResult = await runTwistd(["--config", name], self.directory)
        self.assertEqual((result.code, result.signal), (2, None), result.combined)
        self.assertNotIn(READY_LINE.decode(), result.out)
        lines = result.err.splitlines()
        self.assertEqual(len(lines), 1, result.err)
        self.assertTrue(refused(port), f"something listens on port {port}")
        return lines[0]

    async def test_unknownKey(self) -> None:
        """
        An unknown top-level key is refused, naming its line.
        """
        line = await self._refused(
            _file(
                """
                listen = ["tcp:PORT:interface=127.0.0.1"]
                backends = ["127.0.0.2:8080"]
                colour = "blue"
                """
            )
        )
        self.assertTrue(
            line.startswith("lbproxy: error: lbproxy.toml, line 3: colour: unknown option"), line
        )

    async def test_badPoolValue(self) -> None:
        """
        A bad value in a pool's table is refused, naming the pool and the
        key: a whole number that is not one, and a backend that is not
        C{host:port}.
        """
        line = await self._refused(
            _file(
                """
                listen = ["tcp:PORT:interface=127.0.0.1"]

                [pools.web]
                backends = ["127.0.0.2:8080"]
                retries = "two"
                """
            )
        )
        self.assertTrue(
            line.startswith("lbproxy: error: lbproxy.toml, line 5: pools.web.retries: "), line
        )
        self.assertIn("two", line)
        line = await self._refused(
            _file(
                """
                listen = ["tcp:PORT:interface=127.0.0.1"]

                [pools.web]
                health-interval = 0
                backends = ["127.0.0.2:eighty"]
                """
            )
        )
        self.assertTrue(
            line.startswith("lbproxy: error: lbproxy.toml, line 5: pools.web.backends: "), line
        )

    async def test_routeToUnknownPool(self) -> None:
        """
        A route naming a pool the file does not define is refused, naming
        the route's C{pool} line and the pools there are.
        """
        line = await self._refused(
            _file(
                """
                listen = ["tcp:PORT:interface=127.0.0.1"]

                [pools.web]
                backends = ["127.0.0.2:8080"]

                [[routes]]
                path = "/api"
                pool = "api"

                [[routes]]
                pool = "web"
                """
            )
        )
        self.assertTrue(
            line.startswith("lbproxy: error: lbproxy.toml, line 8: routes[0].pool: "), line
        )
        self.assertIn("'api'", line)
        self.assertIn("web", line)

    async def test_syntaxError(self) -> None:
        """
        A file that is not TOML is refused, naming the line of the error.
        """
        line = await self._refused(
            _file(
                """
                listen = ["tcp:PORT:interface=127.0.0.1"]
                backends = ["127.0.0.2:8080"]
                timeout = = 3
                """
            )
        )
        self.assertTrue(line.startswith("lbproxy: error: lbproxy.toml, line 3: invalid TOML"), line)

    async def test_missingFile(self) -> None:
        """
        A config file that does not exist is refused, naming it and why.
        """
        line = await self._refused(None, "missing.toml")
        self.assertTrue(line.startswith("lbproxy: error: "), line)
        self.assertIn("missing.toml", line)
        self.assertIn("No such file", line)


ROUTES = """
[[routes]]
host = "api.example.com"
pool = "api"
[routes.request-headers]
set = { X-Env = "test" }
remove = ["X-Debug"]
[routes.response-headers]
set = { X-Served-By = "lbproxy" }
remove = ["X-Internal"]

[[routes]]
host = "*.apps.example.com"
pool = "web"

[[routes]]
host = "www.example.com"
path = "/v1"
strip-prefix = true
pool = "api"

[[routes]]
host = "www.example.com"
path = "/static"
pool = "api"

[[routes]]
host = "www.example.com"
pool = "web"
"""
"""
The routes of L{RoutingTests}: by exact Host with header edits, by
wildcard Host, by path prefix with and without stripping it, and a
fallback for one Host.
"""


class RoutingTests(_ConfigCase):
    """
    Requests go to the pool of the first route that matches their Host and
    path, with the route's path and header edits; a request no route
    matches is answered 404 (or 421) by lbproxy itself.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.web = EchoBackend(self, "127.0.0.2", "web-1")
        self.api = EchoBackend(self, "127.0.0.3", "api-1")
        self.port = freePort()

    async def start(self, extra: str = "") -> Twistd:
        """
        Start twistd with pools C{web} and C{api} and L{ROUTES}, C{extra}
        at the top of the file.
        """
        text = _pools([self.port], {"web": [self.web], "api": [self.api]}, ROUTES, extra)
        process, _ = await startConfigured(self, self.directory, text)
        return process

    async def ask(self, host: str, target: str = "/", **headers: str) -> Answer:
        return await get(self.port, target, host=host, headers=headers)

    async def assertRouted(self, host: str, target: str, backend: str, seen: str) -> None:
        """
        A request for C{host} and C{target} is answered 200 by C{backend},
        which got the request-target C{seen}.
        """
        answer = await self.ask(host, target)
        where = f"Host {host!r}, target {target!r}"
        self.assertEqual((answer.status, answer.backend), (200, backend), f"{where}: {answer}")
        self.assertEqual(answer.echo()["target"], seen, where)

    async def assertNoRoute(self, host: str, target: str, status: int) -> None:
        """
        A request for C{host} and C{target} is answered C{status} by
        lbproxy, and no backend gets it.
        """
        before = self.web.count() + self.api.count()
        answer = await self.ask(host, target)
        where = f"Host {host!r}, target {target!r}"
        self.assertEqual((answer.status, answer.backend), (status, None), f"{where}: {answer}")
        self.assertEqual(self.web.count() + self.api.count(), before, where)

    async def test_exactHost(self) -> None:
        """
        A route's exact host takes requests for that Host, whatever its
        case and port, and no other.
        """
        process = await self.start()
        await self.assertRouted("api.example.com", "/users", "api-1", "/users")
        await self.assertRouted("API.Example.COM:8080", "/users", "api-1", "/users")
        await self.assertRouted("www.example.com", "/users", "web-1", "/users")
        await self.assertNoRoute("api.example.org", "/users", 404)
        self.assertCleanLog(process)

    async def test_wildcardHost(self) -> None:
        """
        C{*.apps.example.com} takes a Host with exactly one label before
        C{.apps.example.com}: not two, and not C{apps.example.com} itself.
        """
        process = await self.start()
        await self.assertRouted("shop.apps.example.com", "/", "web-1", "/")
        await self.assertRouted("x-1.APPS.example.com:443", "/a", "web-1", "/a")
        await self.assertNoRoute("a.b.apps.example.com", "/", 404)
        await self.assertNoRoute("apps.example.com", "/", 404)
        self.assertCleanLog(process)

    async def test_pathPrefix(self) -> None:
        """
        A route's path takes that path and those under it at a C{/}, with
        a query too, and not a longer segment (C{/staticx}); without
        C{strip-prefix} the backend gets the path as it came.
        """
        process = await self.start()
        await self.assertRouted("www.example.com", "/static", "api-1", "/static")
        await self.assertRouted("www.example.com", "/static/app.js", "api-1", "/static/app.js")
        await self.assertRouted("www.example.com", "/static?v=2", "api-1", "/static?v=2")
        await self.assertRouted("www.example.com", "/staticx", "web-1", "/staticx")
        await self.assertRouted("www.example.com", "/", "web-1", "/")
        self.assertCleanLog(process)

    async def test_stripPrefix(self) -> None:
        """
        With C{strip-prefix}, the backend gets the path without the route's
        prefix (and C{/} for the prefix itself), the query kept.
        """
        process = await self.start()
        await self.assertRouted("www.example.com", "/v1/users?id=1", "api-1", "/users?id=1")
        await self.assertRouted("www.example.com", "/v1/", "api-1", "/")
        await self.assertRouted("www.example.com", "/v1", "api-1", "/")
        await self.assertRouted("www.example.com", "/v1?x=1", "api-1", "/?x=1")
        await self.assertRouted("www.example.com", "/v10", "web-1", "/v10")
        self.assertCleanLog(process)

    async def test_requestHeaders(self) -> None:
        """
        A route's request-header edits are what its backend gets: the
        removed header is gone and the set one has the route's value only
        (whatever the case of the client's names),
        the others are as the client sent them; another route's requests
        are not edited.
        """
        process = await self.start()
        headers = {"X-DEBUG": "1", "x-env": "production", "X-Other": "kept"}
        answer = await self.ask("api.example.com", "/", **headers)
        self.assertEqual((answer.status, answer.backend), (200, "api-1"), answer)
        seen = answer.echo()["headers"]
        self.assertNotIn("x-debug", seen)
        self.assertEqual(seen.get("x-env"), ["test"])
        self.assertEqual(seen.get("x-other"), ["kept"])
        answer = await self.ask("www.example.com", "/", **headers)
        self.assertEqual((answer.status, answer.backend), (200, "web-1"), answer)
        seen = answer.echo()["headers"]
        self.assertEqual(
            (seen.get("x-debug"), seen.get("x-env"), seen.get("x-other")),
            (["1"], ["production"], ["kept"]),
        )
        self.assertCleanLog(process)

    async def test_responseHeaders(self) -> None:
        """
        A route's response-header edits are what the client gets: the
        backend's C{X-Internal} is removed and C{X-Served-By} is set;
        another route's responses are not edited.
        """
        process = await self.start()
        answer = await self.ask("api.example.com")
        self.assertEqual((answer.status, answer.backend), (200, "api-1"), answer)
        self.assertNotIn("x-internal", answer.headers)
        self.assertEqual(answer.headers.get("x-served-by"), ["lbproxy"])
        answer = await self.ask("www.example.com")
        self.assertEqual((answer.status, answer.backend), (200, "web-1"), answer)
        self.assertEqual(answer.headers.get("x-internal"), ["backend secret"])
        self.assertNotIn("x-served-by", answer.headers)
        self.assertCleanLog(process)

    async def test_noRoute404(self) -> None:
        """
        By default a request no route matches is answered 404 by lbproxy.
        """
        process = await self.start()
        await self.assertNoRoute("other.example.com", "/", 404)
        await self.assertNoRoute("127.0.0.1", "/v1/users", 404)
        self.assertCleanLog(process)

    async def test_noRoute421(self) -> None:
        """
        With C{no-route-status = 421}, a request no route matches is
        answered 421 Misdirected Request; routed ones are unaffected.
        """
        process = await self.start("no-route-status = 421")
        await self.assertNoRoute("other.example.com", "/", 421)
        await self.assertRouted("api.example.com", "/", "api-1", "/")
        self.assertCleanLog(process)


class FlagTests(_ConfigCase):
    """
    A flag given on the command line beats the file.
    """

    async def test_listenFlagWins(self) -> None:
        """
        C{--listen} on the command line replaces the file's C{listen}: only
        the flag's port accepts connections, also after a reload of a file
        that names another port.
        """
        backend = EchoBackend(self, "127.0.0.2", "web-1")
        filePort, flagPort, reloadPort = freePort(), freePort(), freePort()
        text = _pools([filePort], {"web": [backend]})
        process, path = await startConfigured(
            self, self.directory, text, ["--listen", f"tcp:{flagPort}:interface=127.0.0.1"]
        )
        self.assertEqual(await self.backendsOf(flagPort, 1), ["web-1"])
        self.assertTrue(refused(filePort), "the file's listener accepts a connection")
        line = await reload(process, path, _pools([reloadPort], {"web": [backend]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(flagPort, 1), ["web-1"])
        self.assertTrue(refused(reloadPort), "the reloaded file's listener accepts")
        self.assertTrue(refused(filePort), "the file's listener accepts a connection")
        self.assertCleanLog(process)


class ReloadTests(_ConfigCase):
    """
    SIGHUP re-reads the file: listeners open and close, pools and routes
    change for new requests, and an invalid file changes nothing.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.one = EchoBackend(self, "127.0.0.2", "web-1")
        self.two = EchoBackend(self, "127.0.0.3", "web-2")
        self.api = EchoBackend(self, "127.0.0.4", "api-1")
        self.port = freePort()

    async def test_sighupAsSoonAsReady(self) -> None:
        """
        A SIGHUP sent as soon as twistd has logged that it is ready (and
        before it has answered anything) reloads the file; it does not
        end the process.
        """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        line = await reload(process, path, _pools([self.port], {"web": [self.two]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(self.port, 2), ["web-2"] * 2)
        self.assertCleanLog(process)

    async def test_addBackend(self) -> None:
        """
        A backend added to a pool takes its share of the requests that
        follow the reload.
        """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 2), ["web-1", "web-1"])
        line = await reload(process, path, _pools([self.port], {"web": [self.one, self.two]}))
        self.assertIn(RELOADED, line, self.log(process))
        answered = await self.backendsOf(self.port, 6)
        self.assertEqual(sorted(answered), ["web-1"] * 3 + ["web-2"] * 3, answered)
        self.assertCleanLog(process)

    async def test_removeBackend(self) -> None:
        """
        A backend removed from a pool gets no request after the reload; the
        others take them all; lbproxy closes its idle connections to it.
        """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one, self.two]})
        )
        self.assertEqual(set(await self.backendsOf(self.port, 4)), {"web-1", "web-2"})
        line = await reload(process, path, _pools([self.port], {"web": [self.two]}))
        self.assertIn(RELOADED, line, self.log(process))
        before = self.one.count()
        self.assertEqual(await self.backendsOf(self.port, 6), ["web-2"] * 6)
        self.assertEqual(self.one.count(), before)
        await until(
            lambda: self.one.connections() == 0, "the removed backend's connections to close"
        )
        self.assertGreater(self.two.connections(), 0, "lbproxy keeps no connection to web-2")
        self.assertCleanLog(process)

    async def test_keptBackendKeepsState(self) -> None:
        """
        A backend in both the old and the new file is the same backend: its
        request count carries on across the reload, as the admin API shows,
        while the added one starts from none.
        """
        admin = freePort()
        top = f'admin = "tcp:{admin}:interface=127.0.0.1"'
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]}, top=top)
        )
        self.assertEqual(await self.backendsOf(self.port, 3), ["web-1"] * 3)
        text = _pools([self.port], {"web": [self.one, self.two]}, top=top)
        line = await reload(process, path, text)
        self.assertIn(RELOADED, line, self.log(process))
        answer = await get(admin, "/pools/web/backends")
        self.assertEqual(answer.status, 200, answer)
        counts = {b["address"]: b["requests"] for b in answer.echo()["backends"]}
        self.assertEqual(counts, {self.one.authority: 3, self.two.authority: 0})
        self.assertCleanLog(process)

    async def test_restartOnlyOptionNamed(self) -> None:
        """
        A reload that changes an option applied only at start-up (the
        client idle timeout) applies the rest of the file and logs which
        option waits for a restart.
        """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        text = _pools([self.port], {"web": [self.two]}, top="client-idle-timeout = 30")
        line = await reload(process, path, text)
        self.assertIn(RELOADED, line, self.log(process))
        self.assertIn(
            "changed options that take effect at the next restart: client-idle-timeout",
            process.out,
        )
        self.assertEqual(await self.backendsOf(self.port, 2), ["web-2"] * 2)
        self.assertCleanLog(process)

    async def test_changeRoute(self) -> None:
        """
        After a reload, requests are routed by the new routes: a path that
        went to one pool goes to another, a new route takes its requests,
        and the new no-route status is used.
        """
        pools = {"web": [self.one], "api": [self.api]}
        before = """
            [[routes]]
            path = "/api"
            pool = "api"

            [[routes]]
            host = "www.example.com"
            pool = "web"
            """
        after = """
            [[routes]]
            host = "api.example.com"
            strip-prefix = true
            path = "/v2"
            pool = "api"

            [[routes]]
            host = "www.example.com"
            pool = "web"
            """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], pools, before)
        )
        answer = await get(self.port, "/api/x", host="www.example.com")
        self.assertEqual((answer.status, answer.backend), (200, "api-1"), answer)
        answer = await get(self.port, "/", host="other.example.com")
        self.assertEqual(answer.status, 404, answer)
        text = _pools([self.port], pools, after, "no-route-status = 421")
        line = await reload(process, path, text)
        self.assertIn(RELOADED, line, self.log(process))
        answer = await get(self.port, "/api/x", host="www.example.com")
        self.assertEqual((answer.status, answer.backend), (200, "web-1"), answer)
        answer = await get(self.port, "/v2/users", host="api.example.com")
        self.assertEqual((answer.status, answer.backend), (200, "api-1"), answer)
        self.assertEqual(answer.echo()["target"], "/users")
        answer = await get(self.port, "/", host="other.example.com")
        self.assertEqual((answer.status, answer.backend), (421, None), answer)
        self.assertCleanLog(process)

    async def test_listeners(self) -> None:
        """
        A listener the reloaded file adds accepts connections; one it drops
        refuses them, and the one it keeps serves throughout.
        """
        second = freePort()
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        self.assertTrue(refused(second))
        line = await reload(process, path, _pools([self.port, second], {"web": [self.one]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(second, 1), ["web-1"])
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        line = await reload(process, path, _pools([second], {"web": [self.one]}))
        self.assertIn(RELOADED, line, self.log(process))
        # The port closes as the reload ends, at twistd's next turn.
        await until(lambda: refused(self.port), "the dropped listener to refuse connections")
        self.assertEqual(await self.backendsOf(second, 1), ["web-1"])
        self.assertCleanLog(process)

    async def test_listenerMovedOnItsPort(self) -> None:
        """
        A listener whose description changes but whose port stays (here it
        gains a backlog) is closed and bound again by the reload: the port
        accepts connections and serves after it, and nothing is logged as
        failed.
        """
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        old = f'"tcp:{self.port}:interface=127.0.0.1"'
        new = f'"tcp:{self.port}:interface=127.0.0.1:backlog=50"'
        text = _pools([self.port], {"web": [self.one]}).replace(old, new)
        self.assertIn(new, text)
        line = await reload(process, path, text)
        self.assertIn(RELOADED, line, self.log(process))
        await until(
            lambda: not refused(self.port), "the port to accept connections again", deadline=5.0
        )
        self.assertEqual(await self.backendsOf(self.port, 2), ["web-1"] * 2)
        self.assertNotIn("cannot listen", process.out)
        self.assertCleanLog(process)

    async def test_invalidFileKeepsConfiguration(self) -> None:
        """
        A reload of an invalid file (a bad value; then bad TOML) logs the
        rejection with the file, line and key, and changes nothing: not the
        listeners, not the backends, even those the bad file changes
        before its error. A valid file after that is applied.
        """
        second = freePort()
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        bad = _pools([self.port, second], {"web": [self.two]}) + 'retries = "lots"\n'
        badLine = bad.splitlines().index('retries = "lots"') + 1
        line = await reload(process, path, bad)
        self.assertIn(REJECTED, line, self.log(process))
        self.assertIn(f"lbproxy.toml, line {badLine}: pools.web.retries: ", line)
        self.assertTrue(refused(second), "the rejected file's listener was opened")
        self.assertEqual(await self.backendsOf(self.port, 3), ["web-1"] * 3)
        line = await reload(process, path, _pools([second], {"web": [self.two]}) + "[[routes\n")
        self.assertIn(REJECTED, line, self.log(process))
        self.assertIn("invalid TOML", line)
        self.assertTrue(refused(second), "the rejected file's listener was opened")
        self.assertEqual(await self.backendsOf(self.port, 3), ["web-1"] * 3)
        self.assertEqual(self.two.count(), 0)
        line = await reload(process, path, _pools([self.port], {"web": [self.two]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(self.port, 2), ["web-2"] * 2)
        self.assertCleanLog(process)

    async def test_unbindableListenerRejects(self) -> None:
        """
        A reload whose new listener cannot be bound (its port is taken) is
        rejected whole: the old listeners and pools keep serving.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        takenPort = taken.getsockname()[1]
        process, path = await startConfigured(
            self, self.directory, _pools([self.port], {"web": [self.one]})
        )
        self.assertEqual(await self.backendsOf(self.port, 1), ["web-1"])
        line = await reload(process, path, _pools([self.port, takenPort], {"web": [self.two]}))
        self.assertIn(REJECTED, line, self.log(process))
        self.assertIn(str(takenPort), line)
        self.assertEqual(await self.backendsOf(self.port, 3), ["web-1"] * 3)
        self.assertEqual(self.two.count(), 0)
        self.assertCleanLog(process)


def _openWebSocket(port: int) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/echo",
        open_timeout=WS_TIMEOUT,
        close_timeout=WS_TIMEOUT,
        compression=None,
        ping_interval=None,
    )


def _echo(ws: ClientConnection, message: str) -> str | bytes:
    ws.send(message)
    return ws.recv(timeout=WS_TIMEOUT)


def _close(ws: ClientConnection) -> int | None:
    ws.close(1000, "done")
    return ws.close_code


class ConnectionsSurviveTests(_ConfigCase):
    """
    A reload leaves connections on a listener it keeps alone: idle
    keep-alive connections, tunnels and requests in flight.
    """

    async def test_keepAliveAndWebSocket(self) -> None:
        """
        An idle keep-alive connection and an open WebSocket on a listener
        the reload keeps stay open: the WebSocket echoes again and the
        next request on the same connection is routed by the new file.
        """
        server = WebSocketServer(self, "127.0.0.5")
        one = EchoBackend(self, "127.0.0.2", "web-1")
        two = EchoBackend(self, "127.0.0.3", "web-2")
        port, added = freePort(), freePort()
        routes = """
            [[routes]]
            path = "/echo"
            pool = "ws"

            [[routes]]
            pool = "web"
            """

        def text(ports: list[int], web: EchoBackend) -> str:
            return _pools(ports, {"web": [web], "ws": [server]}, routes)

        process, path = await startConfigured(self, self.directory, text([port], one))
        client = KeepAlive(self, port)
        answer = await client.get("/")
        self.assertEqual((answer.status, answer.backend), (200, "web-1"), answer)
        local = client.local
        ws = await deferToThread(_openWebSocket, port)
        self.addCleanup(ws.close)
        self.assertEqual(await deferToThread(_echo, ws, "before"), "before")
        line = await reload(process, path, text([port, added], two))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await deferToThread(_echo, ws, "after"), "after")
        answer = await client.get("/")
        self.assertEqual((answer.status, answer.backend), (200, "web-2"), answer)
        self.assertEqual(client.local, local, "the keep-alive connection was replaced")
        self.assertEqual(await deferToThread(_close, ws), 1000)
        await until(lambda: "/echo" in server.closes, "the backend to see the close")
        self.assertEqual(server.closes["/echo"], (1000, "done"))
        self.assertCleanLog(process)

    async def test_requestInFlightToRemovedBackend(self) -> None:
        """
        A request in flight to a backend the reload removes is answered in
        full by that backend when it finishes; new requests go to the
        pool's new backend, none to the removed one.
        """
        slow = EchoBackend(self, "127.0.0.2", "slow")
        fast = EchoBackend(self, "127.0.0.3", "fast")
        port = freePort()
        process, path = await startConfigured(self, self.directory, _pools([port], {"web": [slow]}))
        answering = get(port, "/slow?hold")
        await until(lambda: slow.held, "the request to reach the slow backend")
        line = await reload(process, path, _pools([port], {"web": [fast]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(port, 4), ["fast"] * 4)
        self.assertEqual(slow.count(), 1)
        self.assertFalse(answering.called, "the request in flight ended before its answer")
        slow.release()
        answer = await answering
        self.assertEqual((answer.status, answer.backend), (200, "slow"), answer)
        self.assertEqual(answer.echo()["target"], "/slow?hold")
        self.assertEqual(await self.backendsOf(port, 2), ["fast"] * 2)
        self.assertEqual(slow.count(), 1)
        self.assertNotIn("cutting off", process.out)
        self.assertCleanLog(process)

    async def test_requestInFlightToRemovedPool(self) -> None:
        """
        A request in flight to a pool the reload deletes (with its route)
        is answered in full; new requests for its path go where the new
        routes say.
        """
        slow = EchoBackend(self, "127.0.0.2", "slow")
        web = EchoBackend(self, "127.0.0.3", "web-1")
        port = freePort()
        routes = """
            [[routes]]
            path = "/slow"
            pool = "old"

            [[routes]]
            pool = "web"
            """
        process, path = await startConfigured(
            self, self.directory, _pools([port], {"web": [web], "old": [slow]}, routes)
        )
        answering = get(port, "/slow?hold")
        await until(lambda: slow.held, "the request to reach the slow backend")
        line = await reload(process, path, _pools([port], {"web": [web]}))
        self.assertIn(RELOADED, line, self.log(process))
        self.assertEqual(await self.backendsOf(port, 2, "/slow/next"), ["web-1"] * 2)
        self.assertFalse(answering.called, "the request in flight ended before its answer")
        slow.release()
        answer = await answering
        self.assertEqual((answer.status, answer.backend), (200, "slow"), answer)
        self.assertEqual(slow.count(), 1)
        self.assertCleanLog(process)

    async def test_droppedListenerFinishesRequest(self) -> None:
        """
        A request in flight on a listener the reload drops is answered in
        full, while the listener refuses new connections.
        """
        slow = EchoBackend(self, "127.0.0.2", "slow")
        port, kept = freePort(), freePort()
        process, path = await startConfigured(
            self, self.directory, _pools([port, kept], {"web": [slow]})
        )
        answering = get(port, "/slow?hold")
        await until(lambda: slow.held, "the request to reach the backend")
        line = await reload(process, path, _pools([kept], {"web": [slow]}))
        self.assertIn(RELOADED, line, self.log(process))
        await until(lambda: refused(port), "the dropped listener to refuse connections")
        slow.release()
        answer = await answering
        self.assertEqual((answer.status, answer.backend), (200, "slow"), answer)
        self.assertEqual(await self.backendsOf(kept, 1), ["slow"])
        self.assertCleanLog(process)

    async def test_drainTimeoutCutsOff(self) -> None:
        """
        A request to a removed backend still running C{drain-timeout}
        seconds after the reload is cut off: its client gets a 5xx answer
        from lbproxy then, and twistd logs the cut-off.
        """
        slow = EchoBackend(self, "127.0.0.2", "slow")
        fast = EchoBackend(self, "127.0.0.3", "fast")
        port = freePort()
        top = "drain-timeout = 1"
        process, path = await startConfigured(
            self, self.directory, _pools([port], {"web": [slow]}, top=top)
        )
        answering = get(port, "/slow?hold")
        await until(lambda: slow.held, "the request to reach the slow backend")
        started = time.monotonic()
        line = await reload(process, path, _pools([port], {"web": [fast]}, top=top))
        self.assertIn(RELOADED, line, self.log(process))
        answer = await answering
        waited = time.monotonic() - started
        self.assertIn(answer.status, (502, 503, 504), answer)
        self.assertIsNone(answer.backend, answer)
        self.assertGreater(waited, 0.9, "cut off before the drain timeout")
        self.assertLess(waited, 5.0, "not cut off soon after the drain timeout")
        await until(lambda: "cutting off" in process.out, "the cut-off to be logged")
        self.assertCleanLog(process)


def _allowed(outcome: Outcome, epochs: list[tuple[float, float, dict[str, set[str]]]]) -> set[str]:
    """
    The backends that may have answered C{outcome}: those its path is
    routed to by any configuration that may have been running while it was
    in flight. Configuration I{k} may run from when its SIGHUP was sent
    (C{epochs[k][0]}) until the next one is seen applied
    (C{epochs[k + 1][1]}).
    """
    key = "/alt" if outcome.target.startswith("/alt") else "/"
    allowed: set[str] = set()
    for index, (sent, _, expected) in enumerate(epochs):
        ends = epochs[index + 1][1] if index + 1 < len(epochs) else float("inf")
        if sent <= outcome.answered and outcome.sent <= ends:
            allowed |= expected[key]
    return allowed


class HitlessReloadTests(_ConfigCase):
    """
    Reloads under load lose nothing.
    """

    timeout = LOAD_DEADLINE + 60

    async def test_reloadsUnderLoad(self) -> None:
        """
        10 000 requests over 64 keep-alive connections, while the file is
        reloaded 20 times (backends added and removed, C{/alt} routed to
        one pool then the other): every request is answered 200, no
        connection is reset or closed (the client opens 64 in all), every
        answer comes from a backend that the configuration running at that
        moment routes the request to, and lbproxy ends up with no
        connection to the backends the last file left out.
        """
        web = [EchoBackend(self, "127.0.0.2", f"web-{i}") for i in range(1, 5)]
        alt = [EchoBackend(self, "127.0.0.3", f"alt-{i}") for i in range(1, 3)]
        port = freePort()

        def layout(k: int) -> tuple[str, dict[str, set[str]]]:
            """
            Configuration I{k}: one to three of the web backends, one alt
            backend, and C{/alt} routed to pool C{alt} (C{alt-1} and
            C{alt-2} in turn) when I{k} is even, to C{web} when it is odd.
            """
            webNow = [web[(k + j) % len(web)] for j in range(1 + k % 3)]
            altNow = [alt[k // 2 % 2]]
            altPool = "alt" if k % 2 == 0 else "web"
            routes = f"""
                [[routes]]
                path = "/alt"
                pool = "{altPool}"

                [[routes]]
                pool = "web"
                """
            # No access log: twistd's output is searched at every reload.
            text = _pools([port], {"web": webNow, "alt": altNow}, routes, 'access-log = "none"')
            webNames = {b.name for b in webNow}
            altNames = {b.name for b in altNow} if altPool == "alt" else webNames
            return text, {"/": webNames, "/alt": altNames}

        text, expected = layout(0)
        process, path = await startConfigured(self, self.directory, text)
        self.assertIn((await get(port, "/")).backend, expected["/"], "the proxy does not answer")
        targets = ["/alt/item" if i % 2 else "/" for i in range(REQUESTS)]
        client = LoadClient(self, port, CONNECTIONS)
        loading = ensureDeferred(client.run(targets, LOAD_DEADLINE))
        epochs = [(float("-inf"), float("-inf"), expected)]
        for k in range(1, RELOADS + 1):
            due = k * REQUESTS // (RELOADS + 2)

            def reached(due: int = due) -> bool:
                return client.done >= due or loading.called

            await until(reached, f"{due} requests done", deadline=LOAD_DEADLINE)
            if loading.called:
                break
            text, expected = layout(k)
            sent = time.monotonic()
            line = await reload(process, path, text)
            self.assertIn(RELOADED, line, self.log(process))
            epochs.append((sent, time.monotonic(), expected))
        result = await loading
        outcomes = result.outcomes
        failed = [o for o in outcomes if o.status != 200]
        wrong = [(o, _allowed(o, epochs)) for o in outcomes if o.status == 200]
        wrong = [(o, allowed) for o, allowed in wrong if o.backend not in allowed]
        lastReload = epochs[-1][1]
        self.assertEqual(len(epochs) - 1, RELOADS, "reloads while the load ran")
        self.assertEqual(len(outcomes), REQUESTS, f"requests sent in {LOAD_DEADLINE} s")
        self.assertEqual((len(failed), failed[:5]), (0, []), f"failed requests{self.log(process)}")
        self.assertEqual((len(wrong), wrong[:5]), (0, []), "answers from the wrong backend")
        self.assertEqual(result.opened, CONNECTIONS, "connections the client opened")
        self.assertGreater(
            sum(1 for o in outcomes if o.sent > lastReload), 0, "requests after the last reload"
        )
        self.assertLess(result.seconds, LOAD_DEADLINE)
        final = set().union(*expected.values())
        gone = [b for b in web + alt if b.name not in final]
        await until(
            lambda: all(b.connections() == 0 for b in gone),
            f"lbproxy to close its connections to {', '.join(b.name for b in gone)}",
        )
        self.assertCleanLog(process)
