"""
Tests for L{lbproxy.balancer}: live pools built from a configuration,
reloads (L{Balancer.apply}) that keep what a backend has learned and
drain what is gone, the runtime changes of the admin API, and
L{Balancer.snapshot}. Whole requests go through the balancer's router to
twisted.web backends in memory (L{lbproxy.test.memorynet}); every timer
(health checks, ejections, slow start, drains) is on its clock.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lbproxy.balancer import (
    DRAIN_POLL,
    BackendState,
    Balancer,
    BalancerConfig,
    BalancerError,
    PoolConfig,
    PoolState,
)
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.balancing.sticky import StickyChooser
from lbproxy.http.edge import ProxySite
from lbproxy.interfaces import IChooser
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.memorynet import Answer, MemoryBackend, MemoryNetwork
from lbproxy.upstream.backends import MAX_WEIGHT, Backend
from lbproxy.upstream.health import EjectionSettings, HealthSettings
from lbproxy.upstream.pool import UpstreamSettings

URL = b"http://example.com/"


def _pool(
    name: str, servers: list[MemoryBackend], chooser: IChooser | None = None, **kw: Any
) -> PoolConfig:
    """
    A pool of C{servers}; C{FirstAvailable} unless told otherwise, so that
    where each request goes is plain.
    """
    return PoolConfig(
        name=name,
        backends=tuple(server.backend for server in servers),
        chooser=chooser if chooser is not None else FirstAvailable(),
        **kw,
    )


def _config(
    *pools: PoolConfig, routes: RouteTable | None = None, drainTimeout: float = 30.0
) -> BalancerConfig:
    """
    C{pools}, with every request routed to the first unless C{routes} say
    otherwise.
    """
    return BalancerConfig(
        pools=pools,
        routes=routes if routes is not None else RouteTable((RouteRule(pool=pools[0].name),)),
        drainTimeout=drainTimeout,
    )


def _failing(request: Request) -> bytes:
    request.setResponseCode(500)
    return b"failed"


class BalancerCase(SynchronousTestCase):
    """
    Three in-memory backends, C{a}, C{b} and C{c}, answering with their
    names, and a balancer in front of them once L{build} is called.
    """

    balancer: Balancer
    site: ProxySite

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.clock = self.network.clock
        self.a = self.network.backend(b"a", "10.0.0.1")
        self.b = self.network.backend(b"b", "10.0.0.2")
        self.c = self.network.backend(b"c", "10.0.0.3")

    def build(self, config: BalancerConfig) -> Balancer:
        self.balancer = Balancer(config, self.clock, self.clock, self.network.upstream)
        self.site = self.network.proxySite(self.balancer.router)
        return self.balancer

    def send(
        self,
        url: bytes = URL,
        method: bytes = b"GET",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Any:
        """
        Send a request; fires once the network is flushed and the answer
        is whole.
        """
        d = self.network.request(self.site, method, url, headers)
        self.network.flush()
        return d

    def get(self, url: bytes = URL, headers: dict[bytes, list[bytes]] | None = None) -> Answer:
        """
        The answer to a GET of C{url}.
        """
        answer: Answer = self.successResultOf(self.send(url, headers=headers))
        return answer

    def bodies(self, count: int, url: bytes = URL) -> list[bytes]:
        """
        The bodies of C{count} GETs in a row: who answered each.
        """
        return [self.get(url).body for _ in range(count)]

    def live(self, server: MemoryBackend, pool: str = "web") -> Backend:
        """
        The pool's live backend for C{server}.
        """
        return self.balancer.pool(pool).find(server.backend.authority)

    def addresses(self, pool: str = "web") -> list[str]:
        """
        The addresses of the pool's backends, in order.
        """
        return [b.authority for b in self.balancer.pool(pool).backends.backends]

    def states(self, pool: str = "web") -> dict[str, tuple[str, bool]]:
        """
        Each backend's state and whether it is being removed, by address,
        as the snapshot tells them.
        """
        [state] = [p for p in self.balancer.snapshot() if p.name == pool]
        return {b.address: (b.state, b.removing) for b in state.backends}

    def answerHeld(self, server: MemoryBackend, body: bytes) -> Request:
        """
        Answer the oldest request C{server} holds with C{body}.
        """
        request = server.held.pop(0)
        request.write(body)
        request.finish()
        self.network.flush()
        return request


class PoolTests(BalancerCase):
    """
    Pools as configured.
    """

    def test_routesPickPools(self) -> None:
        """
        Each pool serves the requests its routes take, spread over its own
        backends by its own chooser.
        """
        self.build(
            _config(
                _pool("web", [self.b, self.c], RoundRobinChooser()),
                _pool("api", [self.a]),
                routes=RouteTable(
                    (RouteRule(pool="api", pathPrefix=b"/api"), RouteRule(pool="web"))
                ),
            )
        )
        self.assertEqual(
            [self.get(URL + path).body for path in [b"api/1", b"", b"x", b"api", b"y"]],
            [b"a", b"b", b"c", b"a", b"b"],
        )

    def test_liveBackendsAreTheirOwn(self) -> None:
        """
        A live pool's backends are its own: the configuration's backends
        are templates, left as they were by the traffic (counters and
        latency history alike).
        """
        self.build(_config(_pool("web", [self.a])))
        self.a.hold()
        d = self.send()
        self.clock.advance(0.5)
        self.answerHeld(self.a, b"slow")
        self.assertEqual(self.successResultOf(d).body, b"slow")
        live = self.live(self.a)
        self.assertIsNot(live, self.a.backend)
        self.assertEqual((live.requests, live.lastLatency, live.latencyEWMA.value), (1, 0.5, 0.5))
        template = self.a.backend
        self.assertEqual(
            (template.requests, template.lastLatency, template.latencyEWMA.value), (0, None, None)
        )

    def test_backendFreshAfterComingBack(self) -> None:
        """
        A backend that left the pool and is configured again starts afresh
        (no latency history of its earlier time), even when the reload
        reuses the same configuration.
        """
        first = _config(_pool("web", [self.a, self.b]))
        self.build(first)
        self.a.hold()
        d = self.send()
        self.clock.advance(2)
        self.answerHeld(self.a, b"slow")
        self.successResultOf(d)
        self.balancer.apply(_config(_pool("web", [self.b])))
        self.balancer.apply(first)
        self.assertEqual(self.live(self.a).latencyEWMA.value, None)
        self.assertEqual(self.live(self.a).requests, 0)


class ReloadTests(BalancerCase):
    """
    C{apply}: the new configuration takes over at once, and what the
    backends it keeps have learned stays.
    """

    def test_newRoutesAtOnce(self) -> None:
        """
        Requests after a reload are routed by the new routes and pools.
        """
        self.build(_config(_pool("web", [self.a])))
        self.assertEqual(self.get().body, b"a")
        self.balancer.apply(
            _config(
                _pool("web", [self.a]),
                _pool("other", [self.b]),
                routes=RouteTable((RouteRule(pool="other"),)),
            )
        )
        self.assertEqual(self.bodies(2), [b"b", b"b"])
        self.assertEqual(list(self.balancer.pools), ["web", "other"])

    def test_keptBackendIsTheSame(self) -> None:
        """
        A backend in both configurations (same scheme, host and port) is
        the same live backend after the reload, its counters carrying on;
        its weight is the new configuration's.
        """
        self.build(_config(_pool("web", [self.a, self.b])))
        before = self.live(self.a)
        self.bodies(2)
        heavier = Backend("10.0.0.1", 80, weight=5)
        self.balancer.apply(
            _config(
                PoolConfig(
                    name="web",
                    backends=(self.c.backend, heavier, self.b.backend),
                    chooser=FirstAvailable(),
                )
            )
        )
        self.assertIs(self.live(self.a), before)
        self.assertEqual(self.addresses(), ["10.0.0.3:80", "10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(self.bodies(1), [b"c"])
        [web] = self.balancer.snapshot()
        self.assertEqual(
            [(b.address, b.requests, b.weight) for b in web.backends],
            [("10.0.0.3:80", 1, 1), ("10.0.0.1:80", 2, 5), ("10.0.0.2:80", 0, 1)],
        )

    def test_ejectedStaysEjected(self) -> None:
        """
        A backend ejected for failing stays ejected through a reload, gets
        no requests meanwhile, and comes back when its ejection time is up,
        not before.
        """
        a = self.network.backend(b"a", "10.0.0.1", respond=_failing)
        ejection = EjectionSettings(maxFails=2, baseTime=10.0, on5xx=True)
        self.build(_config(_pool("web", [a, self.b], ejection=ejection)))
        self.assertEqual([self.get().code for _ in range(2)], [500, 500])
        self.assertEqual(self.bodies(1), [b"b"])
        self.clock.advance(4)
        self.balancer.apply(_config(_pool("web", [a, self.b, self.c], ejection=ejection)))
        self.assertEqual(self.states()["10.0.0.1:80"], ("ejected", False))
        self.assertEqual(self.bodies(2), [b"b", b"b"])
        self.clock.advance(5.9)
        self.assertEqual(self.bodies(1), [b"b"])
        self.clock.advance(0.1)
        self.assertEqual(self.states()["10.0.0.1:80"], ("up", False))
        self.assertEqual(self.get().body, b"failed")
        self.assertEqual(self.live(a).ejections, 1)

    def test_downStaysDown(self) -> None:
        """
        A backend its health checks took down is still down after a
        reload and gets no requests; its rise/fall count carries on, so one
        passing check before the reload and one after bring it back up
        (rise 2).
        """
        health: dict[str, bool] = {"ok": False}

        def respond(request: Request) -> bytes:
            if request.path == b"/health" and not health["ok"]:
                request.setResponseCode(503)
            return b"a"

        a = self.network.backend(b"a", "10.0.0.1", respond=respond)
        settings = HealthSettings(interval=5.0, path=b"/health", timeout=1.0, fall=1, rise=2)
        config = _config(_pool("web", [a, self.b], health=settings))
        self.build(config).start()
        self.network.flush()
        self.assertEqual(self.states()["10.0.0.1:80"], ("down", False))
        self.balancer.apply(config)
        self.network.flush()
        self.assertEqual(self.states()["10.0.0.1:80"], ("down", False))
        self.assertEqual(self.bodies(2), [b"b", b"b"])
        health["ok"] = True
        self.clock.advance(5)
        self.network.flush()
        self.assertEqual(self.states()["10.0.0.1:80"], ("down", False))
        self.balancer.apply(_config(_pool("web", [a, self.b, self.c], health=settings)))
        self.network.flush()
        self.assertEqual(self.states()["10.0.0.1:80"], ("up", False))
        self.assertEqual(self.get().body, b"a")

    def test_slowStartRampCarriesOn(self) -> None:
        """
        A backend ramping up after joining keeps its ramp through a reload:
        a third of the way in, it has a third of its weight, and full
        weight at the end, as if there had been no reload.
        """
        self.build(_config(_pool("web", [self.a], slowStart=30.0)))
        self.balancer.addBackend("web", Backend("10.0.0.2", 80, weight=3))
        self.clock.advance(10)
        self.balancer.apply(
            _config(
                PoolConfig(
                    name="web",
                    backends=(self.a.backend, Backend("10.0.0.2", 80, weight=3)),
                    chooser=FirstAvailable(),
                    slowStart=30.0,
                )
            )
        )
        self.assertEqual(self.states()["10.0.0.2:80"], ("slow-start", False))
        self.assertAlmostEqual(self.live(self.b).effectiveWeight, 1.0)
        self.clock.advance(20)
        self.assertEqual(self.states()["10.0.0.2:80"], ("up", False))
        self.assertEqual(self.live(self.b).effectiveWeight, 3.0)

    def sticky(self, key: object) -> PoolConfig:
        """
        A pool of C{a} and C{b} with a new sticky chooser (a key of its
        own) built for C{key}.
        """
        chooser = StickyChooser(RoundRobinChooser(), secret=repr(key).encode() * 16)
        return _pool(
            "web",
            [self.a, self.b],
            chooser,
            chooserKey=key,
            options={"chooser": "sticky"},
        )

    def cookieFor(self, body: bytes) -> dict[bytes, list[bytes]]:
        """
        The affinity cookie the first answer from the backend C{body}
        sets, as request headers.
        """
        for _ in range(4):
            answer = self.get()
            if answer.body == body:
                [cookie] = answer.header(b"set-cookie")
                return {b"Cookie": [cookie.split(b";")[0]]}
        raise AssertionError(f"no answer from {body!r}")

    def test_stickyCookiesStayValid(self) -> None:
        """
        A reload whose chooser is configured as before keeps the running
        chooser: cookies handed out before it still send their clients to
        the same backend (no new cookie needed).
        """
        self.build(_config(self.sticky(("sticky", 1))))
        chooser = self.balancer.pool("web").chooser
        cookie = self.cookieFor(b"b")
        self.balancer.apply(_config(self.sticky(("sticky", 1))))
        self.assertIs(self.balancer.pool("web").chooser, chooser)
        for _ in range(3):
            answer = self.get(headers=cookie)
            self.assertEqual((answer.body, answer.header(b"set-cookie")), (b"b", []))

    def test_newChooserForNewOptions(self) -> None:
        """
        A reload whose chooser is configured differently uses the new one:
        old cookies no longer count.
        """
        self.build(_config(self.sticky(("sticky", 1))))
        cookie = self.cookieFor(b"b")
        new = self.sticky(("sticky", 2))
        self.balancer.apply(_config(new))
        self.assertIs(self.balancer.pool("web").chooser, new.chooser)
        answer = self.get(headers=cookie)
        self.assertEqual(answer.body, b"a")
        self.assertEqual(len(answer.header(b"set-cookie")), 1)

    def test_connectionsKept(self) -> None:
        """
        A reload that leaves the connection settings alone keeps the
        pool's idle backend connections: the next request goes on the
        same one.
        """
        self.build(_config(_pool("web", [self.a])))
        self.get()
        self.balancer.apply(_config(_pool("web", [self.a, self.b])))
        self.get()
        self.assertEqual(len(self.a.connections), 1)
        self.assertEqual(len(self.a.open()), 1)

    def test_connectionsRenewed(self) -> None:
        """
        A reload that changes the connection settings closes the old idle
        connections; the next request opens a new one.
        """
        self.build(_config(_pool("web", [self.a])))
        self.get()
        self.balancer.apply(
            _config(_pool("web", [self.a], upstream=UpstreamSettings(idleTimeout=5)))
        )
        self.network.flush()
        self.assertEqual(self.a.open(), [])
        self.assertEqual(self.get().body, b"a")
        self.assertEqual(len(self.a.connections), 2)
        self.assertIsNot(self.a.connections[1], self.a.connections[0])


class DrainTests(BalancerCase):
    """
    A backend a reload leaves out drains: its requests in flight finish,
    it gets no new ones, then it leaves the pool and its connections are
    closed; what is still in flight at the drain timeout is cut off.
    """

    def test_removedBackendDrains(self) -> None:
        """
        A removed backend's request in flight is answered by it; meanwhile
        new requests go elsewhere and the snapshot shows it draining on its
        way out; once its request is done it leaves the pool and its idle
        connection is closed (not cut off).
        """
        self.build(_config(_pool("web", [self.a, self.b])))
        self.a.hold()
        first = self.send()
        self.balancer.apply(_config(_pool("web", [self.b])))
        self.assertEqual(
            self.states(), {"10.0.0.1:80": ("draining", True), "10.0.0.2:80": ("up", False)}
        )
        self.assertEqual(self.bodies(2), [b"b", b"b"])
        self.assertNoResult(first)
        self.clock.advance(10)
        self.answerHeld(self.a, b"finished")
        self.assertEqual(self.successResultOf(first).body, b"finished")
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.addresses(), ["10.0.0.2:80"])
        self.network.flush()
        [connection] = self.a.connections
        self.assertTrue(connection.disconnected)
        self.assertFalse(connection.abortedByPeer)
        self.assertEqual(len(self.a.resource.received), 1)

    def test_idleBackendLeavesAtOnce(self) -> None:
        """
        A removed backend with nothing in flight leaves the pool at once
        and its idle connections are closed.
        """
        self.build(_config(_pool("web", [self.a, self.b])))
        self.get()
        self.assertEqual(len(self.a.open()), 1)
        self.balancer.apply(_config(_pool("web", [self.b])))
        self.assertEqual(self.addresses(), ["10.0.0.2:80"])
        self.network.flush()
        self.assertEqual(self.a.open(), [])

    def test_drainTimeoutCutsOff(self) -> None:
        """
        A request still in flight on a removed backend when the drain
        timeout passes is cut off (its connection aborted: the client gets
        a 502) and the backend leaves the pool; not a moment before.
        """
        self.build(_config(_pool("web", [self.a, self.b]), drainTimeout=5.0))
        self.a.hold()
        stuck = self.send(method=b"POST")
        self.balancer.apply(_config(_pool("web", [self.b]), drainTimeout=5.0))
        self.clock.advance(4.9)
        self.network.flush()
        self.assertNoResult(stuck)
        self.assertEqual(self.states()["10.0.0.1:80"], ("draining", True))
        [request] = self.a.held
        lost = request.notifyFinish()
        self.clock.advance(0.1)
        self.assertEqual(self.addresses(), ["10.0.0.2:80"])
        self.network.flush()
        [connection] = self.a.connections
        self.assertTrue(connection.abortedByPeer)
        self.assertEqual(self.successResultOf(stuck).code, 502)
        self.failureResultOf(lost)
        self.assertEqual(self.live(self.b).requests, 0)

    def test_removedPoolDrains(self) -> None:
        """
        A pool a reload leaves out finishes its requests in flight; its
        connections are closed after.
        """
        api = RouteTable((RouteRule(pool="api", pathPrefix=b"/api"), RouteRule(pool="web")))
        self.build(_config(_pool("web", [self.b]), _pool("api", [self.a]), routes=api))
        self.a.hold()
        first = self.send(URL + b"api/slow")
        self.balancer.apply(_config(_pool("web", [self.b])))
        self.assertEqual(self.get(URL + b"api/slow").body, b"b")
        self.answerHeld(self.a, b"finished")
        self.assertEqual(self.successResultOf(first).body, b"finished")
        self.clock.advance(DRAIN_POLL)
        self.network.flush()
        self.assertEqual(self.a.open(), [])
        self.assertEqual(list(self.balancer.pools), ["web"])

    def test_reloadBringsBackARemovedBackend(self) -> None:
        """
        A backend being removed that a reload names again stays in the
        pool, in service: its drain is called off, and the connections to
        it are not cut at the old drain timeout.
        """
        self.build(_config(_pool("web", [self.a, self.b]), drainTimeout=5.0))
        self.a.hold()
        first = self.send(method=b"POST")
        self.balancer.apply(_config(_pool("web", [self.b]), drainTimeout=5.0))
        self.balancer.apply(_config(_pool("web", [self.a, self.b]), drainTimeout=5.0))
        self.assertEqual(
            self.states(), {"10.0.0.1:80": ("up", False), "10.0.0.2:80": ("up", False)}
        )
        self.clock.advance(5)
        self.network.flush()
        self.assertEqual(self.addresses(), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertNoResult(first)
        self.a.release()
        self.answerHeld(self.a, b"finished")
        self.assertEqual(self.successResultOf(first).body, b"finished")
        self.assertEqual(self.bodies(1), [b"a"])

    def test_reloadKeepsABackendRemovedByTheAdmin(self) -> None:
        """
        A backend the admin API is removing, that a reload names, stays in
        the pool once its requests in flight are done.
        """
        self.build(_config(_pool("web", [self.a, self.b])))
        self.a.hold()
        first = self.send()
        self.balancer.removeBackend("web", "10.0.0.1:80")
        self.balancer.apply(_config(_pool("web", [self.a, self.b])))
        self.a.release()
        self.answerHeld(self.a, b"finished")
        self.successResultOf(first)
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.addresses(), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertFalse(self.balancer.removing(self.live(self.a)))
        self.assertEqual(self.bodies(1), [b"a"])


class AdminTests(BalancerCase):
    """
    Runtime changes: add, remove, drain, weigh; a change that cannot be
    made raises L{BalancerError} and changes nothing.
    """

    def setUp(self) -> None:
        super().setUp()
        self.build(_config(_pool("web", [self.a, self.b], RoundRobinChooser())))

    def test_addBackend(self) -> None:
        """
        An added backend takes its share of the requests at once; the
        balancer keeps a backend of its own, not the one given.
        """
        given = Backend("10.0.0.3", 80)
        added = self.balancer.addBackend("web", given)
        self.assertIsNot(added, given)
        self.assertIs(self.live(self.c), added)
        self.assertEqual(sorted(self.bodies(3)), [b"a", b"b", b"c"])
        self.assertEqual(given.requests, 0)

    def test_addBackendSlowStart(self) -> None:
        """
        In a pool with slow start, an added backend ramps up from its
        floor over the slow-start time.
        """
        self.build(_config(_pool("web", [self.a], slowStart=20.0)))
        added = self.balancer.addBackend("web", Backend("10.0.0.3", 80, weight=4))
        self.assertEqual(self.states()["10.0.0.3:80"], ("slow-start", False))
        self.assertAlmostEqual(added.effectiveWeight, 4 * 0.05)
        self.clock.advance(10)
        self.assertAlmostEqual(added.effectiveWeight, 2.0)
        self.clock.advance(10)
        self.assertEqual(self.states()["10.0.0.3:80"], ("up", False))

    def test_addBackendHealthChecked(self) -> None:
        """
        A backend added to a running balancer is health-checked: its first
        probe goes out at once, and failing it takes it out.
        """
        settings = HealthSettings(interval=5.0, path=b"/health", fall=1)
        self.build(_config(_pool("web", [self.a], health=settings)))
        self.balancer.start()
        self.addCleanup(self.balancer.stop)
        self.network.flush()

        def respond(request: Request) -> bytes:
            request.setResponseCode(503)
            return b"down"

        down = self.network.backend(b"d", "10.0.0.4", respond=respond)
        self.balancer.addBackend("web", down.backend)
        self.network.flush()
        self.assertEqual([seen.uri for seen in down.resource.received], [b"/health"])
        self.assertEqual(self.states()["10.0.0.4:80"], ("down", False))
        self.assertEqual(self.bodies(2), [b"a", b"a"])

    def test_activeChecksElsewhere(self) -> None:
        """
        A balancer whose active checks run elsewhere sends no probe: not at
        start, not after a reload, not to a backend added while running.
        """
        settings = HealthSettings(interval=5.0, path=b"/health", fall=1)
        config = _config(_pool("web", [self.a], health=settings))
        self.balancer = Balancer(
            config, self.clock, self.clock, self.network.upstream, activeChecks=False
        )
        self.balancer.start()
        self.addCleanup(self.balancer.stop)
        self.balancer.apply(_config(_pool("web", [self.a, self.b], health=settings)))
        self.balancer.addBackend("web", self.c.backend)
        self.network.flush()
        self.clock.advance(60)
        self.network.flush()
        self.assertEqual(
            [seen.uri for server in (self.a, self.b, self.c) for seen in server.resource.received],
            [],
        )

    def test_addBackendRefused(self) -> None:
        """
        Adding a backend the pool has (same address, in any case) or to a
        pool that does not exist is refused; the pool is unchanged.
        """
        for pool, backend, message in [
            ("web", Backend("10.0.0.1", 80), "pool 'web' already has backend 10.0.0.1:80"),
            ("nope", Backend("10.0.0.3", 80), "no pool named 'nope'"),
        ]:
            with self.assertRaises(BalancerError) as raised:
                self.balancer.addBackend(pool, backend)
            self.assertEqual(str(raised.exception), message)
        self.build(_config(_pool("web", [self.network.backend(b"n", "Backend.Example")])))
        with self.assertRaises(BalancerError):
            self.balancer.addBackend("web", Backend("backend.example", 80))
        self.assertEqual(self.addresses(), ["Backend.Example:80"])

    def test_removeBackend(self) -> None:
        """
        A removed backend finishes its request in flight, gets no new ones,
        and leaves the pool after; the one returned is the live backend.
        """
        self.a.hold()
        first = self.send()
        removed = self.balancer.removeBackend("web", "10.0.0.1:80")
        self.assertIs(removed, self.live(self.a))
        self.assertTrue(self.balancer.removing(removed))
        self.assertEqual(self.bodies(3), [b"b", b"b", b"b"])
        self.answerHeld(self.a, b"finished")
        self.assertEqual(self.successResultOf(first).body, b"finished")
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.addresses(), ["10.0.0.2:80"])
        self.assertFalse(self.balancer.removing(removed))
        self.network.flush()
        self.assertEqual(self.a.open(), [])

    def test_removedNotProbed(self) -> None:
        """
        A backend that has left the pool is no longer health-checked.
        """
        settings = HealthSettings(interval=5.0, path=b"/health")
        self.build(_config(_pool("web", [self.a, self.b], health=settings)))
        self.balancer.start()
        self.addCleanup(self.balancer.stop)
        self.network.flush()
        self.balancer.removeBackend("web", "10.0.0.2:80")
        for _ in range(2):
            self.clock.advance(5)
            self.network.flush()
        self.assertEqual([seen.uri for seen in self.a.resource.received], [b"/health"] * 3)
        self.assertEqual([seen.uri for seen in self.b.resource.received], [b"/health"])

    def test_removeBackendByURL(self) -> None:
        """
        A backend may be named by its URL as well as by C{host:port}.
        """
        self.balancer.removeBackend("web", "http://10.0.0.2:80")
        self.assertEqual(self.addresses(), ["10.0.0.1:80"])

    def test_unknownRefused(self) -> None:
        """
        Removing, draining or weighing a backend of a pool that does not
        exist, or one a pool does not have, is refused with a message
        naming it; nothing changes.
        """
        before = self.balancer.snapshot()
        operations = [
            lambda pool, backend: self.balancer.removeBackend(pool, backend),
            lambda pool, backend: self.balancer.setDraining(pool, backend, True),
            lambda pool, backend: self.balancer.setWeight(pool, backend, 2),
        ]
        for operation in operations:
            with self.assertRaises(BalancerError) as noPool:
                operation("api", "10.0.0.1:80")
            self.assertEqual(str(noPool.exception), "no pool named 'api'")
            for name in ["10.0.0.3:80", "10.0.0.1", "10.0.0.1:8080", "https://10.0.0.1:80"]:
                with self.assertRaises(BalancerError) as noBackend:
                    operation("web", name)
                self.assertEqual(str(noBackend.exception), f"pool 'web' has no backend {name!r}")
        self.assertEqual(self.balancer.snapshot(), before)

    def test_drain(self) -> None:
        """
        A drained backend gets no new requests but stays in the pool;
        put back into service, it gets its share again.
        """
        drained = self.balancer.setDraining("web", "10.0.0.1:80", True)
        self.assertIs(drained, self.live(self.a))
        self.assertEqual(self.bodies(3), [b"b", b"b", b"b"])
        self.assertEqual(self.states()["10.0.0.1:80"], ("draining", False))
        self.clock.advance(3600)
        self.assertEqual(self.addresses(), ["10.0.0.1:80", "10.0.0.2:80"])
        self.balancer.setDraining("web", "10.0.0.1:80", False)
        self.assertEqual(sorted(self.bodies(2)), [b"a", b"b"])
        self.assertEqual(self.states()["10.0.0.1:80"], ("up", False))

    def test_drainRemovingRefused(self) -> None:
        """
        A backend being removed cannot be drained or put back into service:
        it stays on its way out.
        """
        self.a.hold()
        self.send()
        self.balancer.removeBackend("web", "10.0.0.1:80")
        for draining in (False, True):
            with self.assertRaises(BalancerError) as raised:
                self.balancer.setDraining("web", "10.0.0.1:80", draining)
            self.assertEqual(str(raised.exception), "backend 10.0.0.1:80 is being removed")
        self.assertEqual(self.states()["10.0.0.1:80"], ("draining", True))

    def test_setWeight(self) -> None:
        """
        A new weight changes the backend's share of the requests.
        """
        changed = self.balancer.setWeight("web", "10.0.0.1:80", 3)
        self.assertIs(changed, self.live(self.a))
        self.assertEqual(sorted(self.bodies(8)), [b"a"] * 6 + [b"b"] * 2)
        self.assertEqual(
            self.balancer.setWeight("web", "10.0.0.1:80", MAX_WEIGHT).weight, MAX_WEIGHT
        )

    def test_badWeightRefused(self) -> None:
        """
        A weight that is not a whole number from 1 to the maximum is
        refused; the weight stays as it was.
        """
        for weight in [0, -1, MAX_WEIGHT + 1, True, 2.5, "3", None]:
            with self.assertRaises(BalancerError, msg=repr(weight)) as raised:
                self.balancer.setWeight("web", "10.0.0.1:80", weight)  # type: ignore[arg-type]
            self.assertIn(f"from 1 to {MAX_WEIGHT}", str(raised.exception))
        self.assertEqual(self.live(self.a).weight, 1)


class SnapshotTests(BalancerCase):
    """
    The state of every pool and backend, as the admin API and metrics
    read it.
    """

    def test_contents(self) -> None:
        """
        The snapshot lists the pools in configured order, each with its
        chooser's name (as configured, else its class) and its backends'
        state, counters, latency and connections.
        """
        self.build(
            _config(
                _pool("web", [self.a, self.b], options={"chooser": "first"}),
                _pool("api", [self.c]),
            )
        )
        self.a.hold()
        d = self.send()
        self.clock.advance(0.25)
        self.answerHeld(self.a, b"slow")
        self.successResultOf(d)
        self.a.hold()
        self.send()
        self.balancer.setWeight("web", "10.0.0.2:80", 7)
        self.balancer.setDraining("web", "10.0.0.2:80", True)

        def state(backend: Backend, **changes: Any) -> BackendState:
            values: dict[str, Any] = {
                "address": backend.authority,
                "url": backend.url,
                "state": "up",
                "weight": 1,
                "inFlight": 0,
                "requests": 0,
                "failures": 0,
                "retries": 0,
                "ejections": 0,
                "removing": False,
                "latencyEWMA": None,
                "lastLatency": None,
                "latencyP50": None,
                "latencyP99": None,
                "openConnections": 0,
                "idleConnections": 0,
            }
            values.update(changes)
            return BackendState(**values)

        self.assertEqual(
            self.balancer.snapshot(),
            [
                PoolState(
                    name="web",
                    chooser="first",
                    backends=[
                        state(
                            self.a.backend,
                            inFlight=1,
                            requests=2,
                            latencyEWMA=0.25,
                            lastLatency=0.25,
                            latencyP50=0.175,
                            latencyP99=0.2485,
                            openConnections=1,
                        ),
                        state(self.b.backend, state="draining", weight=7),
                    ],
                ),
                PoolState(name="api", chooser="FirstAvailable", backends=[state(self.c.backend)]),
            ],
        )
        self.answerHeld(self.a, b"done")
        [web, _] = self.balancer.snapshot()
        self.assertEqual(
            (
                web.backends[0].inFlight,
                web.backends[0].openConnections,
                web.backends[0].idleConnections,
            ),
            (0, 1, 1),
        )

    def test_failuresAndRetries(self) -> None:
        """
        A request that fails on one backend and is retried on another
        counts as a failure and a retry of the first, a request of each.
        """
        self.build(_config(_pool("web", [self.network.backend(b"x", "10.0.0.9"), self.b])))
        del self.network.backends[("10.0.0.9", 80)]
        self.assertEqual(self.get().body, b"b")
        [web] = self.balancer.snapshot()
        self.assertEqual(
            [(b.address, b.requests, b.failures, b.retries) for b in web.backends],
            [("10.0.0.9:80", 1, 1, 1), ("10.0.0.2:80", 1, 0, 0)],
        )


class StopTests(BalancerCase):
    """
    Stopping the balancer.
    """

    def test_stopClosesEverything(self) -> None:
        """
        C{stop} closes the idle backend connections, cuts off those in
        flight (drains included) and fires once all are closed; no drain
        or health check runs after.
        """
        settings = HealthSettings(interval=5.0, path=b"/health")
        self.build(_config(_pool("web", [self.a, self.b], health=settings)))
        self.balancer.start()
        self.network.flush()
        self.get()
        self.b.hold()
        self.balancer.setDraining("web", "10.0.0.1:80", True)
        self.send()
        self.balancer.removeBackend("web", "10.0.0.2:80")
        stopped = self.balancer.stop()
        self.network.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.a.open() + self.b.open(), [])
        probes = len(self.a.resource.received)
        self.clock.advance(60)
        self.network.flush()
        self.assertEqual(len(self.a.resource.received), probes)
        self.assertEqual(self.addresses(), ["10.0.0.1:80", "10.0.0.2:80"])

    def test_stopLeavesNoTimer(self) -> None:
        """
        Once stopped, and its connections closed, the balancer has nothing
        scheduled: not even the wait for the connections a reload replaced
        to finish their requests.
        """
        self.build(_config(_pool("web", [self.a])))
        self.get()
        self.a.hold()
        self.send(method=b"POST")
        self.balancer.apply(
            _config(_pool("web", [self.a], upstream=UpstreamSettings(idleTimeout=5)))
        )
        stopped = self.balancer.stop()
        self.network.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
