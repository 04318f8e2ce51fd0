"""
The admin API of the installed C{twistd lbproxy}, end to end: real
clients over real sockets change the pools while real requests flow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.adminsupport import (
    AdminClient,
    AdminProxy,
    CountingBackend,
    Load,
    eventually,
    startAdminProxy,
    startCountingBackend,
)
from tests.support import fetch, freePort, logProblems, runTwistd, startTwistd, until

CONNECTIONS = 16
"""
Keep-alive client connections of the load.
"""

LOAD_LIMIT = 6000
"""
At most this many requests in a load; the test stops it well before.
"""

LOAD_DEADLINE = 30.0
"""
At most this many seconds of load.
"""


def _directory(testCase: TestCase) -> str:
    directory = os.path.abspath(str(testCase.mktemp()))
    os.makedirs(directory)
    return directory


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _summary(backends: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int, bool]]:
    """
    What a configuration decides of each backend: its state, weight and
    whether it is being removed.
    """
    return {a: (b["state"], b["weight"], b["removing"]) for a, b in backends.items()}


def _heldOrAnswered(answer: Deferred[Any], backend: CountingBackend) -> Callable[[], bool]:
    """
    Whether C{answer} has come or C{backend} holds a request.
    """
    return lambda: answer.called or backend.held > 0


class _AdminTestCase(TestCase):
    """
    Checks shared by the tests that run C{twistd lbproxy --admin}.
    """

    def assertQuiet(self, proxy: AdminProxy) -> None:
        """
        C{proxy} has logged no traceback.
        """
        self.assertIsNone(logProblems(proxy.process))

    async def answers(self, proxy: AdminProxy, count: int) -> list[bytes]:
        """
        Make C{count} requests through C{proxy}, one after the other, each
        on a new connection; check each is a 200; return the bodies.
        """
        bodies = []
        for _ in range(count):
            status, body = await fetch(proxy.url + "/")
            self.assertEqual(status, 200, body)
            bodies.append(body)
        return bodies


class StateTests(_AdminTestCase):
    """
    C{GET /pools} and C{GET /pools/NAME/backends} show the running state.
    """

    async def test_countersFollowRequests(self) -> None:
        """
        C{GET /pools} lists the pool called C{default} with its backends, all
        available; C{GET /pools/default/backends} shows each one up, and
        after requests through the proxy each backend's C{requests} counter
        is exactly the number of requests it received, with nothing in
        flight and no failures or retries.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        proxy = await startAdminProxy(
            self, _directory(self), ["--backends", f"{a.authority},{b.authority}=2"]
        )
        pools = await proxy.admin.get("/pools")
        self.assertEqual(len(pools["pools"]), 1)
        (pool,) = pools["pools"]
        self.assertEqual((pool["name"], pool["backends"], pool["available"]), ("default", 2, 2))
        before = await proxy.admin.backends()
        self.assertEqual(set(before), {a.authority, b.authority})
        for address, weight in ((a.authority, 1), (b.authority, 2)):
            view = before[address]
            self.assertEqual(
                (view["state"], view["weight"], view["requests"], view["in_flight"]),
                ("up", weight, 0, 0),
            )
            self.assertEqual(view["url"], f"http://{address}")
        bodies = await self.answers(proxy, 12)
        self.assertEqual(len(bodies), 12)
        self.assertEqual(a.count + b.count, 12)
        after = await proxy.admin.backends()
        for backend in (a, b):
            view = after[backend.authority]
            self.assertEqual(
                (
                    view["requests"],
                    view["in_flight"],
                    view["failures"],
                    view["retries"],
                    view["ejections"],
                ),
                (backend.count, 0, 0, 0, 0),
                view,
            )
            self.assertEqual(bodies.count(backend.name), backend.count)
            if backend.count:
                self.assertIsInstance(view["last_latency_ms"], float)
        one = await proxy.admin.get(f"/pools/default/backends/{a.authority}")
        self.assertEqual(one, after[a.authority])
        self.assertQuiet(proxy)


class LoadTests(_AdminTestCase):
    """
    Changes made through the admin API while requests flow lose none of
    them, and take effect for the requests that follow.
    """

    async def _holdAt(self, proxy: AdminProxy, backend: CountingBackend) -> Deferred[Any]:
        """
        Send requests for C{/hold} through C{proxy} until one is held by
        C{backend} (the others are answered by other backends); return the
        held request's answer to come.
        """
        for _ in range(50):
            answer = fetch(proxy.url + "/hold")
            await until(_heldOrAnswered(answer, backend), "a /hold answer")
            if backend.held:
                return answer
            status, body = await answer
            self.assertEqual(status, 200, body)
        raise AssertionError(f"no /hold request reached {backend.authority} in 50")

    async def _whileLoading(self, load: Load, predicate: Callable[[], bool], what: str) -> None:
        """
        Wait until C{predicate()}, failing if the load ends first.
        """
        await until(lambda: predicate() or load.finished, what, deadline=LOAD_DEADLINE)
        if not predicate():
            raise AssertionError(
                f"the load ended ({load.completed} requests) before {what}; "
                f"errors: {load.errors[:3]}"
            )

    async def test_changesUnderLoad(self) -> None:
        """
        While requests flow over 16 keep-alive connections, none fails
        (every answer is a 200, every connection stays open) as backends are
        changed: a backend added with C{POST} starts receiving requests; one
        drained with C{PATCH} receives none after its requests in flight
        (one held over the drain is answered in full); one removed with
        C{DELETE} drains, then is no longer listed and receives nothing
        more; a weight raised with C{PATCH} gives that backend the larger
        share. Each listed backend's C{requests} counter equals what it
        received.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B", holdPath=b"/hold")
        c = startCountingBackend(self, "127.0.0.4", b"C")
        d = startCountingBackend(self, "127.0.0.5", b"D")
        proxy = await startAdminProxy(
            self,
            _directory(self),
            ["--backends", ",".join(x.authority for x in (a, b, c))],
        )
        self.addCleanup(b.release)
        admin = proxy.admin
        base = "/pools/default/backends"
        held = await self._holdAt(proxy, b)
        sentBefore = a.count + b.count + c.count

        load = Load(proxy.port, CONNECTIONS, LOAD_LIMIT, LOAD_DEADLINE)
        self.addCleanup(load.stop)
        load.start()
        await self._whileLoading(load, lambda: load.completed >= 200, "200 answers")

        added = await admin.request("POST", base, {"address": d.authority})
        self.assertEqual(added.status, 201, added.body)
        self.assertEqual(added.json()["state"], "up")
        self.assertEqual(added.header("Location"), f"{base}/http%3A%2F%2F127.0.0.5%3A{d.port}")
        await self._whileLoading(load, lambda: d.count >= 50, "50 requests at the new backend")

        drained = await admin.request("PATCH", f"{base}/{b.authority}", {"drain": True})
        self.assertEqual(drained.status, 200, drained.body)
        bAtDrain = b.count
        view = drained.json()
        self.assertEqual((view["state"], view["removing"]), ("draining", False))
        self.assertGreaterEqual(view["in_flight"], 1)
        b.release()
        self.assertEqual(await held, (200, b"B held"))

        async def bIdle() -> bool:
            return bool((await admin.backends())[b.authority]["in_flight"] == 0)

        await eventually(bIdle, "the drained backend's requests in flight to finish")
        bDrained = b.count
        self.assertLessEqual(bDrained - bAtDrain, CONNECTIONS)
        mark = load.completed
        await self._whileLoading(
            load, lambda: load.completed >= mark + 300, "300 answers with B drained"
        )

        cAtDelete = c.count
        removed = await admin.request("DELETE", f"{base}/{c.authority}")
        self.assertEqual(removed.status, 202, removed.body)
        self.assertEqual(removed.json()["removing"], True)

        async def cGone() -> bool:
            return c.authority not in await admin.backends()

        await eventually(cGone, "the removed backend to leave the list")
        cRemoved = c.count
        self.assertLessEqual(cRemoved - cAtDelete, CONNECTIONS)

        weighted = await admin.request("PATCH", f"{base}/{d.authority}", {"weight": 5})
        self.assertEqual(weighted.status, 200, weighted.body)
        self.assertEqual(weighted.json()["weight"], 5)
        a0, d0 = a.count, d.count
        await self._whileLoading(
            load,
            lambda: (a.count - a0) + (d.count - d0) >= 600,
            "600 answers after the weight change",
        )
        await load.stop()

        self.assertFalse(load.bounded, "the load ran out before the test ended it")
        self.assertEqual(load.errors, [])
        self.assertEqual(load.reconnects, 0)
        self.assertEqual(load.statuses, {200: load.completed})
        self.assertEqual(set(load.answers), {b"A", b"B", b"C", b"D"})
        self.assertEqual(a.count + b.count + c.count + d.count, sentBefore + load.completed)
        self.assertEqual((b.count, c.count), (bDrained, cRemoved))
        self.assertGreater(d.count - d0, 2 * (a.count - a0), (a.count - a0, d.count - d0))

        async def countersSettled() -> bool:
            views = await admin.backends()
            return all(v["in_flight"] == 0 for v in views.values())

        await eventually(countersSettled, "nothing in flight")
        final = await admin.backends()
        self.assertEqual(
            _summary(final),
            {
                a.authority: ("up", 1, False),
                b.authority: ("draining", 1, False),
                d.authority: ("up", 5, False),
            },
        )
        for backend in (a, b, d):
            view = final[backend.authority]
            self.assertEqual((view["requests"], view["failures"]), (backend.count, 0), view)
        self.assertQuiet(proxy)


class TokenTests(_AdminTestCase):
    """
    Who may use the admin API, and where it may listen.
    """

    async def test_beyondLoopbackRefused(self) -> None:
        """
        C{--admin tcp:PORT} (every interface) without C{--admin-token-file}
        is refused at start-up: exit status 2, one line on standard error
        naming C{--admin-token-file}, and nothing listens.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        adminPort, port = freePort(), freePort()
        result = await runTwistd(
            [
                "--backends",
                a.authority,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--admin",
                f"tcp:{adminPort}",
            ],
            _directory(self),
        )
        self.assertEqual((result.code, result.signal), (2, None), result.combined)
        lines = result.err.splitlines()
        self.assertEqual(len(lines), 1, result.err)
        self.assertIn("--admin-token-file", lines[0])
        self.assertNotIn("balancing over", result.out)
        self.assertTrue(_refused(adminPort))
        self.assertTrue(_refused(port))
        self.assertEqual(a.count, 0)

    async def test_bearerToken(self) -> None:
        """
        With C{--admin-token-file}, an endpoint beyond loopback (for the
        check, C{interface=localhost} is: a name is not known to be
        loopback) is accepted, and every request needs the token: without
        C{Authorization} the answer is 401 with C{WWW-Authenticate: Bearer},
        with a wrong token or another scheme it is 401, and a change sent
        with a wrong token is not made; with the right token it is 200.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        directory = _directory(self)
        tokenFile = os.path.join(directory, "admin.token")
        with open(tokenFile, "w") as f:
            f.write("s3cret-T0ken\n")
        adminPort = freePort()
        proxy = await startAdminProxy(
            self,
            directory,
            ["--backends", a.authority, "--admin-token-file", tokenFile],
            admin=f"tcp:{adminPort}:interface=localhost",
            client=AdminClient(port=adminPort, token="s3cret-T0ken"),
        )
        anonymous = AdminClient(port=adminPort)
        answer = await anonymous.request("GET", "/pools")
        self.assertEqual(answer.status, 401, answer.body)
        self.assertEqual(answer.header("WWW-Authenticate"), "Bearer")
        self.assertIsInstance(answer.json()["error"], str)
        for authorization in ("Bearer s3cret-T0ke", "Bearer s3cret-T0ken2", "Basic czNjcmV0"):
            answer = await anonymous.request(
                "GET", "/pools", headers={"Authorization": authorization}
            )
            self.assertEqual(answer.status, 401, (authorization, answer.body))
            self.assertEqual(answer.header("WWW-Authenticate"), "Bearer")
        wrong = AdminClient(port=adminPort, token="wrong")
        answer = await wrong.request(
            "POST", "/pools/default/backends", {"address": "127.0.0.9:8080"}
        )
        self.assertEqual(answer.status, 401, answer.body)
        answer = await proxy.admin.request("GET", "/pools")
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(set(await proxy.admin.backends()), {a.authority})
        self.assertQuiet(proxy)

    async def test_unixSocketNeedsNoToken(self) -> None:
        """
        C{--admin unix:PATH} starts without a token file and answers
        requests that carry no C{Authorization}.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        # A short path: a unix socket's path is limited to about 100 bytes.
        sockets = tempfile.mkdtemp(prefix="lbadmin")
        self.addCleanup(shutil.rmtree, sockets, True)
        path = os.path.join(sockets, "admin.sock")
        proxy = await startAdminProxy(
            self,
            _directory(self),
            ["--backends", a.authority],
            admin=f"unix:{path}",
            client=AdminClient(unixPath=path),
        )
        pools = await proxy.admin.get("/pools")
        self.assertEqual([p["name"] for p in pools["pools"]], ["default"])
        added = await proxy.admin.request(
            "POST", "/pools/default/backends", {"address": "127.0.0.9:8080", "weight": 2}
        )
        self.assertEqual(added.status, 201, added.body)
        self.assertQuiet(proxy)


class BadInputTests(_AdminTestCase):
    """
    A request the admin API refuses changes nothing.
    """

    async def _state(self, proxy: AdminProxy) -> tuple[Any, Any, str]:
        admin = proxy.admin
        return (
            await admin.get("/pools"),
            await admin.get("/pools/default/backends"),
            await admin.text("/config"),
        )

    async def test_badInputRefused(self) -> None:
        """
        Malformed JSON, a JSON array, an unknown pool or backend, an
        invalid address, a weight of 0, 1001, C{"x"}, C{true} or 2.5, an
        unknown field and a backend already in the pool are each answered
        with 400 and a JSON object holding one C{error} text, and GET shows
        exactly the state from before.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        proxy = await startAdminProxy(
            self, _directory(self), ["--backends", f"{a.authority},{b.authority}"]
        )
        before = await self._state(proxy)
        base = "/pools/default/backends"
        new = "127.0.0.9:8080"
        one = f"{base}/{a.authority}"
        refused: list[tuple[str, str, object]] = [
            ("POST", base, b'{"address": '),
            ("POST", base, b"not json"),
            ("POST", base, b"\xff\xfe"),
            ("POST", base, [{"address": new}]),
            ("POST", base, "null"),
            ("POST", "/pools/nope/backends", {"address": new}),
            ("GET", "/pools/nope", None),
            ("GET", f"{base}/127.0.0.9:1", None),
            ("PATCH", f"{base}/127.0.0.9:1", {"weight": 2}),
            ("PATCH", f"/pools/nope/backends/{a.authority}", {"drain": True}),
            ("DELETE", f"{base}/127.0.0.9:1", None),
            ("DELETE", f"/pools/nope/backends/{a.authority}", None),
            ("POST", base, {"address": "127.0.0.9:99999"}),
            ("POST", base, {"address": "127.0.0.9:http"}),
            ("POST", base, {"address": ""}),
            ("POST", base, {"address": 8080}),
            ("POST", base, {"address": "ftp://127.0.0.9:21"}),
            ("POST", base, {"address": "http://127.0.0.9:8080/path"}),
            ("POST", base, {"address": f"{new}=2"}),
            ("POST", base, {}),
            ("POST", base, {"address": new, "weight": 0}),
            ("POST", base, {"address": new, "weight": 1001}),
            ("POST", base, {"address": new, "weight": "x"}),
            ("POST", base, {"address": new, "weight": True}),
            ("POST", base, {"address": new, "weight": 2.5}),
            ("POST", base, {"address": new, "weight": None}),
            ("PATCH", one, {"weight": 0}),
            ("PATCH", one, {"weight": 1001}),
            ("PATCH", one, {"weight": "x"}),
            ("PATCH", one, {"weight": True}),
            ("PATCH", one, {"drain": "yes"}),
            ("PATCH", one, {"drain": 1}),
            ("PATCH", one, {"weight": 3, "colour": "red"}),
            ("PATCH", one, {"drain": True, "weight": 0}),
            ("PATCH", one, {}),
            ("PATCH", one, [{"weight": 3}]),
            ("POST", base, {"address": new, "port": 1}),
            ("POST", base, {"address": a.authority}),
            ("POST", base, {"address": f"http://{a.authority}"}),
            ("POST", base, {"address": f" {b.authority} "}),
        ]
        for method, path, body in refused:
            answer = await proxy.admin.request(method, path, body)
            what = f"{method} {path} {body!r}: {answer.status} {answer.body!r}"
            self.assertEqual(answer.status, 400, what)
            self.assertEqual(answer.header("Content-Type"), "application/json", what)
            value = answer.json()
            self.assertEqual(list(value), ["error"], what)
            self.assertIsInstance(value["error"], str, what)
            self.assertNotEqual(value["error"].strip(), "", what)
            self.assertNotIn("\n", value["error"], what)
        self.assertEqual(await self._state(proxy), before)
        self.assertQuiet(proxy)

    async def test_unknownPathAndMethod(self) -> None:
        """
        An unknown path is 404; a method the path does not take is 405 with
        C{Allow} listing the ones it does; a body over 1 MiB is 413. Each is
        JSON with an C{error}, and changes nothing.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        proxy = await startAdminProxy(self, _directory(self), ["--backends", a.authority])
        before = await self._state(proxy)
        base = "/pools/default/backends"
        for path in ("/nope", "/pools/default/nope", "/config/x", "/poolsx"):
            answer = await proxy.admin.request("GET", path)
            self.assertEqual(answer.status, 404, (path, answer.body))
            self.assertIsInstance(answer.json()["error"], str)
        for method, path, allowed in (
            ("PUT", "/config", "GET, POST"),
            ("DELETE", "/pools", "GET"),
            ("PATCH", base, "GET, POST"),
            ("POST", f"{base}/{a.authority}", "GET, PATCH, DELETE"),
            ("PUT", f"{base}/{a.authority}", "GET, PATCH, DELETE"),
        ):
            answer = await proxy.admin.request(method, path, {"weight": 2})
            self.assertEqual(answer.status, 405, (method, path, answer.body))
            self.assertEqual(answer.header("Allow"), allowed, (method, path))
            self.assertIsInstance(answer.json()["error"], str)
        huge = json.dumps({"address": "127.0.0.9:8080", "pad": "x" * (1024 * 1024)})
        answer = await proxy.admin.request("POST", base, huge)
        self.assertEqual(answer.status, 413, answer.body[:200])
        self.assertIsInstance(answer.json()["error"], str)
        self.assertEqual(await self._state(proxy), before)
        self.assertQuiet(proxy)


def _configFile(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class ConfigTests(_AdminTestCase):
    """
    C{GET /config} writes the running state as a config file; C{POST
    /config} applies one.
    """

    async def _pools(self, admin: AdminClient) -> dict[str, Any]:
        """
        Each pool's chooser and backends (state, weight, removing), by name.
        """
        pools = (await admin.get("/pools"))["pools"]
        return {p["name"]: (p["chooser"], _summary(await admin.backends(p["name"]))) for p in pools}

    async def _reproduces(self, proxy: AdminProxy, directory: str) -> None:
        """
        Save C{proxy}'s C{GET /config}, stop it, start a fresh C{twistd
        lbproxy --config} with the saved file alone (it names the same
        listener and admin endpoint), and check that the fresh one runs the
        same pools and gives the same C{GET /config}.
        """
        text = await proxy.admin.text("/config")
        pools = await self._pools(proxy.admin)
        self.assertQuiet(proxy)
        result = await proxy.process.stop()
        self.assertEqual(result.code, 0, result.combined)
        saved = _configFile(directory, "saved.toml", text)
        process = await startTwistd(self, ["--config", saved], directory)
        self.assertEqual(await self._pools(proxy.admin), pools)
        self.assertEqual(await proxy.admin.text("/config"), text)
        status, _ = await fetch(proxy.url + "/")
        self.assertEqual(status, 200)
        self.assertIsNone(logProblems(process))

    async def test_configReproducesState(self) -> None:
        """
        Started from a config file, then changed at run time (a backend
        added with a weight, one drained, one re-weighted, one removed),
        C{GET /config} is a file with which a fresh C{twistd lbproxy
        --config FILE} runs the same pools: the same chooser and backends,
        weights and drain states, and writes the same file back. The
        file keeps the pool options the original file gave.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        c = startCountingBackend(self, "127.0.0.4", b"C")
        d = startCountingBackend(self, "127.0.0.5", b"D")
        directory = _directory(self)
        config = _configFile(
            directory,
            "lb.toml",
            f"""\
health-interval = 0
retries = 1
timeout = 7.5

[pools.web]
backends = ["{a.authority}", "{b.authority}", "{c.authority}=4"]
chooser = "round-robin"
""",
        )
        proxy = await startAdminProxy(self, directory, ["--config", config])
        admin = proxy.admin
        base = "/pools/web/backends"
        for method, path, body, status in (
            ("POST", base, {"address": d.authority, "weight": 3}, 201),
            ("PATCH", f"{base}/{b.authority}", {"drain": True}, 200),
            ("PATCH", f"{base}/{a.authority}", {"weight": 2}, 200),
            ("DELETE", f"{base}/{c.authority}", None, 202),
        ):
            answer = await admin.request(method, path, body)
            self.assertEqual(answer.status, status, (method, path, answer.body))

        async def cGone() -> bool:
            return c.authority not in await admin.backends("web")

        await eventually(cGone, "the removed backend to leave the list")
        lines = (await admin.text("/config")).splitlines()
        self.assertIn("retries = 1", lines)
        self.assertIn("timeout = 7.5", lines)
        self.assertEqual(
            _summary(await admin.backends("web")),
            {
                a.authority: ("up", 2, False),
                b.authority: ("draining", 1, False),
                d.authority: ("up", 3, False),
            },
        )
        await self._reproduces(proxy, directory)

    async def test_flagsOnlyConfigReproducesState(self) -> None:
        """
        Started from flags alone (no config file), C{GET /config} is a file
        with which a fresh C{twistd lbproxy --config FILE} runs the same
        pool: the chooser the flags chose and the same backends, weights
        and drain states.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        directory = _directory(self)
        proxy = await startAdminProxy(
            self,
            directory,
            ["--backends", f"{a.authority},{b.authority}=3", "--chooser", "round-robin"],
        )
        drained = await proxy.admin.request(
            "PATCH", f"/pools/default/backends/{a.authority}", {"drain": True}
        )
        self.assertEqual(drained.status, 200, drained.body)
        await self._reproduces(proxy, directory)

    async def test_postConfig(self) -> None:
        """
        C{POST /config} with a valid TOML file applies it: a backend it adds
        takes requests. An invalid one (a TOML syntax error, an unknown
        option) is 400 with the error's line, and the running
        configuration keeps serving, unchanged.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        e = startCountingBackend(self, "127.0.0.6", b"E")
        directory = _directory(self)
        template = """\
health-interval = 0
[pools.web]
chooser = "round-robin"
backends = [{backends}]
"""
        config = _configFile(
            directory,
            "lb.toml",
            template.format(backends=f'"{a.authority}", "{b.authority}"'),
        )
        proxy = await startAdminProxy(self, directory, ["--config", config])
        admin = proxy.admin
        self.assertEqual(set(await self.answers(proxy, 4)), {b"A", b"B"})
        new = template.format(backends=f'"{a.authority}", "{b.authority}", "{e.authority}"')
        answer = await admin.request("POST", "/config", new)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.json(), {"applied": True})
        self.assertEqual(set(await admin.backends("web")), {a.authority, b.authority, e.authority})
        self.assertEqual(set(await self.answers(proxy, 6)), {b"A", b"B", b"E"})
        running = await admin.text("/config")
        for bad, expected in (
            (new.replace("[pools.web]", "[pools.web"), "line 2"),
            (new.replace("chooser", "choser"), "line 3"),
        ):
            answer = await admin.request("POST", "/config", bad)
            self.assertEqual(answer.status, 400, answer.body)
            error = answer.json()["error"]
            self.assertIn(f"posted configuration, {expected}: ", error)
            self.assertIn(f"the running configuration is kept: {error}", proxy.process.out)
        self.assertEqual(await admin.text("/config"), running)
        self.assertEqual(set(await self.answers(proxy, 6)), {b"A", b"B", b"E"})
        self.assertQuiet(proxy)

    async def test_postConfigBadValueNamesLine(self) -> None:
        """
        C{POST /config} with a file whose pool names an unknown chooser is
        400 with an error naming the line and the key, like every other
        error in a config file.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        directory = _directory(self)
        good = f'''\
health-interval = 0
[pools.web]
backends = ["{a.authority}"]
chooser = "round-robin"
'''
        proxy = await startAdminProxy(
            self, directory, ["--config", _configFile(directory, "lb.toml", good)]
        )
        bad = good.replace('"round-robin"', '"roundrobin"')
        answer = await proxy.admin.request("POST", "/config", bad)
        self.assertEqual(answer.status, 400, answer.body)
        self.assertIn("posted configuration, line 4: pools.web.chooser: ", answer.json()["error"])
        self.assertQuiet(proxy)


class ReloadTests(_AdminTestCase):
    """
    Runtime changes are not persisted: SIGHUP returns to the file.
    """

    async def _started(self, text: str) -> AdminProxy:
        directory = _directory(self)
        config = _configFile(directory, "lb.toml", text)
        return await startAdminProxy(self, directory, ["--config", config])

    async def _reloaded(self, proxy: AdminProxy) -> None:
        """
        Send SIGHUP to C{proxy} and wait until it logs that it reloaded.
        """
        done = proxy.process.out.count("configuration reloaded from")
        proxy.process.signal("HUP")
        await until(
            lambda: proxy.process.out.count("configuration reloaded from") > done,
            "the reload",
        )

    async def test_reloadUndoesRuntimeChanges(self) -> None:
        """
        A backend added with C{POST} takes requests until SIGHUP re-reads
        the config file; then it is removed (no longer listed, no more
        requests), and C{GET /config} gives what it gave before the change.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        c = startCountingBackend(self, "127.0.0.4", b"C")
        proxy = await self._started(
            f"""\
health-interval = 0
[pools.web]
chooser = "round-robin"
backends = ["{a.authority}", "{b.authority}"]
"""
        )
        admin = proxy.admin
        initial = await admin.text("/config")
        added = await admin.request("POST", "/pools/web/backends", {"address": c.authority})
        self.assertEqual(added.status, 201, added.body)
        self.assertIn(c.authority, await admin.text("/config"))
        self.assertEqual(set(await self.answers(proxy, 6)), {b"A", b"B", b"C"})
        await self._reloaded(proxy)

        async def cGone() -> bool:
            return c.authority not in await admin.backends("web")

        await eventually(cGone, "the added backend to leave the list")
        self.assertEqual(await admin.text("/config"), initial)
        served = c.count
        self.assertEqual(set(await self.answers(proxy, 6)), {b"A", b"B"})
        self.assertEqual(c.count, served)
        self.assertQuiet(proxy)

    async def test_reloadKeepsFileDrain(self) -> None:
        """
        A backend the config file drains stays draining across SIGHUP (the
        file gives the drain state of a backend in both configurations),
        and an undrain made at run time is undone by it.
        """
        a = startCountingBackend(self, "127.0.0.2", b"A")
        b = startCountingBackend(self, "127.0.0.3", b"B")
        proxy = await self._started(
            f"""\
health-interval = 0
[pools.web]
backends = ["{a.authority}", "{b.authority}"]
draining = ["{b.authority}"]
"""
        )
        admin = proxy.admin
        initial = await admin.text("/config")
        self.assertEqual((await admin.backends("web"))[b.authority]["state"], "draining")
        undrained = await admin.request(
            "PATCH", f"/pools/web/backends/{b.authority}", {"drain": False}
        )
        self.assertEqual(undrained.json()["state"], "up")
        await self._reloaded(proxy)
        self.assertEqual((await admin.backends("web"))[b.authority]["state"], "draining")
        self.assertEqual(await admin.text("/config"), initial)
        self.assertQuiet(proxy)
