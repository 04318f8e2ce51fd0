"""
Tests for L{lbproxy.cli.reload} and L{LoadBalancerService.applyConfig}: a
running L{LoadBalancerService} on a L{MemoryReactorClock} (nothing is
bound: listening ports are in-memory records), reloaded from its config
file (SIGHUP) or sent a configuration (the admin API's C{POST /config}),
and its running state written back as a config file.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionAborted
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.admin.api import ConfigRejected
from lbproxy.cli.options import Options
from lbproxy.cli.reload import Reloader
from lbproxy.routing import RouteRule
from lbproxy.service import LoadBalancerService, ReloadError
from lbproxy.upstream.backends import Backend


@implementer(IListeningPort)
class _Port:
    """
    A listening port of L{_Network}: it records whether it was stopped.
    """

    def __init__(self, network: _Network, port: int, interface: str) -> None:
        self._network = network
        self.port = port
        self.interface = interface
        self.stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port)


class _Network(MemoryReactorClock):
    """
    A memory reactor whose ports behave as bound sockets do: a port
    number in L{taken} (held by another process), or held by one of its
    ports not stopped yet, cannot be listened on again.

    @ivar ports: Every port listened on, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_Port] = []
        self.taken: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        held = {p.port for p in self.ports if not p.stopped} | self.taken
        if port != 0 and port in held:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "Address already in use")
            )
        super().listenTCP(port, factory, backlog, interface)
        listening = _Port(self, port, interface)
        self.ports.append(listening)
        return listening

    def listening(self) -> list[str]:
        """
        C{interface:port} of every port not stopped.
        """
        return [f"{p.interface}:{p.port}" for p in self.ports if not p.stopped]


_COMMON = 'access-log = "none"\nhealth-interval = 0\n'
"""
What every test file says: no access log, no health checks.
"""


class ReloadTestCase(SynchronousTestCase):
    """
    Start a service from a config file, with its L{Reloader}.
    """

    def setUp(self) -> None:
        self.network = _Network()
        self.path = os.path.abspath(self.mktemp()) + ".toml"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.events: list[LogEvent] = []

    def write(self, text: str) -> None:
        """
        Replace the config file with C{text} (and the lines every test
        file has).
        """
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(_COMMON + text)

    def start(self, text: str, *arguments: str) -> tuple[LoadBalancerService, Reloader]:
        """
        Write the config file, start a service from C{--config FILE} and
        C{arguments}, and return it with its reloader (whose log is
        L{events}).
        """
        self.write(text)
        options = Options()
        options.parseArguments(["--config", self.path, *arguments])
        return self.startFrom(options)

    def startFrom(self, options: Options) -> tuple[LoadBalancerService, Reloader]:
        assert options.config is not None
        service = LoadBalancerService(options.config, self.network, self.network)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(self.stop, service)
        reloader = Reloader(options, service, Options)
        reloader._log = Logger(observer=cast(ILogObserver, self.events.append))
        return service, reloader

    def stop(self, service: LoadBalancerService) -> None:
        stopped = service.stopService()
        self.network.advance(120)
        self.successResultOf(stopped)

    def logged(self, level: LogLevel) -> list[str]:
        """
        The reloader's messages at C{level}.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def pools(self, service: LoadBalancerService) -> dict[str, list[tuple[str, int, bool]]]:
        """
        Every pool's backends: address, weight, whether draining.
        """
        return {
            name: [(b.authority, b.weight, b.draining) for b in pool.backends.backends]
            for name, pool in service.balancer.pools.items()
        }


_TWO_POOLS = """\
listen = ["tcp:0:interface=127.0.0.1"]
retries = 1

[pools.web]
backends = ["127.0.0.2", "127.0.0.3:8080=3"]
chooser = "round-robin"

[pools.api]
backends = ["127.0.0.4"]
timeout = 5

[[routes]]
host = "api.example.com"
path = "/v1"
strip-prefix = true
pool = "api"
[routes.request-headers]
set = { X-Env = "test" }

[[routes]]
pool = "web"
"""


class SIGHUPTests(ReloadTestCase):
    """
    L{Reloader.reload} re-reads the config file and applies it whole, or
    logs one line and changes nothing.
    """

    def test_addListener(self) -> None:
        """
        A listener the file adds is opened; the one it kept is untouched.
        """
        service, reloader = self.start(_TWO_POOLS)
        [first] = service.ports
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])
        self.write(
            _TWO_POOLS.replace(
                '["tcp:0:interface=127.0.0.1"]',
                '["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]',
            )
        )
        self.assertTrue(reloader.reload())
        self.assertEqual(self.network.listening(), ["127.0.0.1:0", "127.0.0.2:0"])
        self.assertEqual(len(self.network.tcpServers), 2)
        self.assertIs(self.network.tcpServers[1][1], service.site)
        self.assertEqual(service.ports[0], first)
        self.assertEqual(len(service.ports), 2)
        self.assertEqual(self.logged(LogLevel.error), [])
        self.assertEqual(self.logged(LogLevel.info), [f"configuration reloaded from {self.path}"])

    def test_removeListener(self) -> None:
        """
        A listener the file drops is stopped (its connections finish as
        usual); the others are untouched.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace(
                '["tcp:0:interface=127.0.0.1"]',
                '["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]',
            )
        )
        kept, _ = service.ports
        self.write(_TWO_POOLS)
        self.assertTrue(reloader.reload())
        self.assertTrue(self.network.ports[1].stopped)
        self.assertFalse(self.network.ports[0].stopped)
        self.assertEqual(service.ports, [kept])
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])

    def test_listenerMovesToAFreedPort(self) -> None:
        """
        A new listener on the port of one the file drops is opened once
        that one is closed.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace('"tcp:0:interface=127.0.0.1"', '"tcp:8081:interface=127.0.0.1"')
        )
        self.write(_TWO_POOLS.replace('"tcp:0:interface=127.0.0.1"', '"tcp:8081"'))
        self.assertTrue(reloader.reload())
        self.assertEqual(self.network.listening(), [":8081"])
        self.assertEqual(len(service.ports), 1)

    def test_listenerCannotBeBound(self) -> None:
        """
        If a new listener cannot be bound, the reload is rejected: the
        listeners it opened before are closed again, and the pools and
        routes stay as they were.
        """
        service, reloader = self.start(_TWO_POOLS)
        before = dict(service.balancer.pools)
        routes = service.balancer.config.routes
        self.network.taken.add(9443)
        self.write(
            _TWO_POOLS.replace(
                '["tcp:0:interface=127.0.0.1"]',
                '["tcp:0:interface=127.0.0.2", "tcp:9443"]',
            ).replace("timeout = 5", "timeout = 6")
        )
        self.assertFalse(reloader.reload())
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])
        self.assertEqual(service.balancer.pools, before)
        self.assertIs(service.balancer.config.routes, routes)
        [error] = self.logged(LogLevel.error)
        self.assertEqual(
            error,
            "configuration reload rejected, the running configuration is kept: "
            "cannot listen on 'tcp:9443': Couldn't listen on any:9443: "
            "[Errno 98] Address already in use.",
        )
        # The next reload starts from the configuration that runs.
        self.write(_TWO_POOLS.replace("timeout = 5", "timeout = 6"))
        self.assertTrue(reloader.reload())
        self.assertEqual(service.balancer.pools["api"].config.proxy.responseTimeout, 6)
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])

    def test_poolsChange(self) -> None:
        """
        Pools the file adds are built, those it drops are gone, and the
        routes are the file's.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.write(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[pools.web]\nbackends = ["127.0.0.2"]\n'
            '[pools.static]\nbackends = ["127.0.0.9"]\nretries = 0\n'
            '[[routes]]\npath = "/static"\npool = "static"\n'
            '[[routes]]\npool = "web"\n'
        )
        self.assertTrue(reloader.reload())
        self.assertEqual(list(service.balancer.pools), ["web", "static"])
        self.assertEqual(service.balancer.pools["static"].config.proxy.retries, 0)
        self.assertEqual(service.balancer.pools["web"].config.proxy.retries, 2)
        self.assertEqual(
            service.balancer.config.routes.rules,
            (RouteRule(pool="static", pathPrefix=b"/static"), RouteRule(pool="web")),
        )

    def test_backendsInBothAreKept(self) -> None:
        """
        A backend in both the old and the new pool is the same object, its
        counters kept and its weight the new file's. A backend the file
        adds joins; one that is gone drains, listed, until its requests in
        flight are done, then leaves.
        """
        service, reloader = self.start(_TWO_POOLS)
        web = service.balancer.pools["web"]
        two, three = web.backends.backends
        two.requests = 7
        two.failures = 2
        three.inFlight = 1
        self.write(
            _TWO_POOLS.replace(
                'backends = ["127.0.0.2", "127.0.0.3:8080=3"]',
                'backends = ["127.0.0.2=5", "127.0.0.5"]\ndraining = ["127.0.0.5"]',
            )
        )
        self.assertTrue(reloader.reload())
        pool = service.balancer.pools["web"]
        self.assertIs(pool.backends.backends[0], two)
        self.assertEqual((two.requests, two.failures), (7, 2))
        self.assertTrue(service.balancer.removing(three))
        self.assertEqual(
            self.pools(service)["web"],
            [("127.0.0.2:80", 5, False), ("127.0.0.5:80", 1, True), ("127.0.0.3:8080", 3, True)],
        )
        three.inFlight = 0
        self.network.advance(1)
        self.assertFalse(service.balancer.removing(three))
        self.assertEqual(
            self.pools(service)["web"], [("127.0.0.2:80", 5, False), ("127.0.0.5:80", 1, True)]
        )

    def test_drainStateFromFile(self) -> None:
        """
        The drain state of a backend in both the old and the new pool is
        the new file's: listed in C{draining}, it drains; no longer listed,
        it is back in service.
        """
        service, reloader = self.start(_TWO_POOLS)
        two = service.balancer.pools["web"].backends.backends[0]
        self.write(_TWO_POOLS.replace('chooser = "round-robin"', 'draining = ["127.0.0.2"]'))
        self.assertTrue(reloader.reload())
        self.assertIs(service.balancer.pools["web"].backends.backends[0], two)
        self.assertTrue(two.draining)
        self.write(_TWO_POOLS)
        self.assertTrue(reloader.reload())
        self.assertFalse(two.draining)

    def test_invalidFileRejected(self) -> None:
        """
        An invalid file is one logged error line, the file's own error,
        and nothing changes: listeners, pools, backends and routes.
        """
        service, reloader = self.start(_TWO_POOLS)
        pools = dict(service.balancer.pools)
        backends = list(service.backends)
        routes = service.balancer.config.routes
        ports = list(service.ports)
        self.write(
            _TWO_POOLS.replace(
                '["tcp:0:interface=127.0.0.1"]', '["tcp:0:interface=127.0.0.2"]'
            ).replace("timeout = 5", 'timeout = "soon"')
        )
        self.assertFalse(reloader.reload())
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(service.backends, backends)
        self.assertIs(service.balancer.config.routes, routes)
        self.assertEqual(service.ports, ports)
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])
        self.assertEqual(
            self.logged(LogLevel.error),
            [
                "configuration reload rejected, the running configuration is kept: "
                f"{self.path}, line 12: pools.api.timeout: must be a number of seconds, "
                "not 'soon'"
            ],
        )
        self.assertEqual(self.logged(LogLevel.info), [])

    def test_missingFileRejected(self) -> None:
        """
        A config file that has gone is rejected the same way.
        """
        service, reloader = self.start(_TWO_POOLS)
        pools = dict(service.balancer.pools)
        os.remove(self.path)
        self.assertFalse(reloader.reload())
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(
            self.logged(LogLevel.error),
            [
                "configuration reload rejected, the running configuration is kept: "
                f"cannot read --config {self.path!r}: No such file or directory"
            ],
        )

    def test_flagsStillWin(self) -> None:
        """
        The command line the service started with still wins over the
        file it re-reads.
        """
        service, reloader = self.start(_TWO_POOLS, "--retries", "0")
        self.write(_TWO_POOLS.replace("retries = 1", "retries = 3"))
        self.assertTrue(reloader.reload())
        self.assertEqual([p.config.proxy.retries for p in service.balancer.pools.values()], [0, 0])

    def test_restartOnlyOptionsWarned(self) -> None:
        """
        A reload that changes options that wait for a restart (edge limits,
        TLS settings) applies the rest and warns, naming them.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.write(
            'max-body = "1K"\nheader-timeout = 3\ntls-resumption = "off"\n'
            + _TWO_POOLS.replace("=3", "=4")
        )
        self.assertTrue(reloader.reload())
        self.assertEqual(service.balancer.pools["web"].backends.backends[1].weight, 4)
        self.assertEqual(service.site.limits.maxBodySize, 100 * 1024 * 1024)
        self.assertEqual(
            self.logged(LogLevel.warn),
            [
                "changed options that take effect at the next restart: "
                "header-timeout, max-body, tls-resumption"
            ],
        )

    def test_reloadableOptionsNotWarned(self) -> None:
        """
        A reload that changes only what it applies (pool options, listeners,
        allowed hosts, trusted proxies, drain timeout) warns of nothing.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.write(
            'allow-host = ["example.com"]\ntrusted-proxy = ["10.0.0.0/8"]\n'
            "send-timeout = 5\ndrain-timeout = 3\n"
            + _TWO_POOLS.replace("retries = 1", "retries = 0").replace(
                '["tcp:0:interface=127.0.0.1"]', '["tcp:0:interface=127.0.0.2"]'
            )
        )
        self.assertTrue(reloader.reload())
        self.assertEqual(self.logged(LogLevel.warn), [])
        self.assertEqual(service.balancer.config.allowedHosts, frozenset({"example.com"}))
        self.assertEqual(service.balancer.config.drainTimeout, 3)
        web = service.balancer.pools["web"].config.proxy
        self.assertEqual((web.sendTimeout, web.retries), (5, 0))
        self.assertEqual([str(n) for n in web.trustedProxies], ["10.0.0.0/8"])

    def test_drainTimeoutAtStop(self) -> None:
        """
        A reloaded C{drain-timeout} is the one that stopping waits for
        requests in progress.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.write("drain-timeout = 3\n" + _TWO_POOLS)
        self.assertTrue(reloader.reload())
        # A request in progress: its backend connection never completes.
        factory = self.network.tcpServers[0][1]
        client = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50000))
        assert client is not None
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "192.0.2.7", 50000),
        )
        client.makeConnection(transport)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertTrue(self.network.tcpClients)
        stopped = service.stopService()
        self.network.advance(2.9)
        self.assertFalse(transport.disconnected)
        self.network.advance(0.2)
        self.assertTrue(transport.disconnected)
        client.connectionLost(Failure(ConnectionAborted()))
        self.network.advance(1)
        self.successResultOf(stopped)

    def test_withoutConfigFile(self) -> None:
        """
        Started without C{--config}, SIGHUP reloads the TLS certificates
        only: nothing else changes and nothing is logged.
        """
        options = Options()
        options.parseArguments(["--listen", "tcp:0", "--backends", "127.0.0.2"])
        service, reloader = self.startFrom(options)
        pools = dict(service.balancer.pools)
        self.assertTrue(reloader.reload())
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(self.events, [])


class WorkerTests(ReloadTestCase):
    """
    A worker listens on sockets the supervisor bound.
    """

    def test_listenersCannotChange(self) -> None:
        """
        A worker refuses a configuration whose listeners differ (the
        supervisor holds the sockets), and changes nothing; one with the
        same listeners is applied.
        """
        self.write(_TWO_POOLS)
        options = Options()
        options.parseArguments(["--config", self.path])
        assert options.config is not None
        bound = TCP4ServerEndpoint(self.network, 0, interface="127.0.0.1")
        service = LoadBalancerService(options.config, self.network, self.network, [bound])
        service.startService()
        self.addCleanup(self.stop, service)
        pools = dict(service.balancer.pools)
        self.write(_TWO_POOLS.replace("127.0.0.1", "127.0.0.2"))
        changed = Options()
        changed.parseArguments(["--config", self.path])
        assert changed.config is not None
        with self.assertRaises(ReloadError) as raised:
            service.applyConfig(changed.config)
        self.assertIn("--workers", str(raised.exception))
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])
        self.write(_TWO_POOLS.replace("retries = 1", "retries = 0"))
        same = Options()
        same.parseArguments(["--config", self.path])
        assert same.config is not None
        service.applyConfig(same.config)
        self.assertEqual(service.balancer.pools["web"].config.proxy.retries, 0)


class ApplyTests(ReloadTestCase):
    """
    L{Reloader.apply}: the admin API's C{POST /config}.
    """

    def test_toml(self) -> None:
        """
        A TOML configuration is applied; the command line still wins.
        """
        service, reloader = self.start(_TWO_POOLS, "--timeout", "9")
        applied = reloader.apply(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[pools.only]\nbackends = ["127.0.0.7"]\ntimeout = 1\n',
            "toml",
        )
        self.assertIsNone(self.successResultOf(applied))
        self.assertEqual(self.pools(service), {"only": [("127.0.0.7:80", 1, False)]})
        self.assertEqual(service.balancer.pools["only"].config.proxy.responseTimeout, 9)
        self.assertEqual(self.logged(LogLevel.info), ["configuration applied from the admin API"])

    def test_json(self) -> None:
        """
        A JSON configuration is applied as the same TOML would be.
        """
        service, reloader = self.start(_TWO_POOLS)
        applied = reloader.apply(
            '{"listen": ["tcp:0:interface=127.0.0.1"],'
            ' "pools": {"web": {"backends": ["127.0.0.2", "127.0.0.8"],'
            ' "draining": ["127.0.0.8"]}},'
            ' "routes": [{"host": "example.com", "pool": "web"}], "no-route-status": 421}',
            "json",
        )
        self.successResultOf(applied)
        self.assertEqual(
            self.pools(service)["web"][:2], [("127.0.0.2:80", 1, False), ("127.0.0.8:80", 1, True)]
        )
        routes = service.balancer.config.routes
        self.assertEqual(routes.rules, (RouteRule(pool="web", hosts=("example.com",)),))
        self.assertEqual(routes.noRouteStatus, 421)

    def test_rejected(self) -> None:
        """
        An invalid configuration fails with L{ConfigRejected} saying why
        (at its line), is logged, and changes nothing.
        """
        service, reloader = self.start(_TWO_POOLS)
        pools = dict(service.balancer.pools)
        cases = [
            ("[pools.web]\nbackends = []\nchoser = 1\n", "toml"),
            ("retries = \n", "toml"),
            ('{"pools": 1}', "json"),
            ("{", "json"),
        ]
        messages = []
        for text, format in cases:
            failure = self.failureResultOf(reloader.apply(text, format), ConfigRejected)
            messages.append(str(failure.value))
        self.assertEqual(
            messages[0],
            "posted configuration, line 3: pools.web.choser: unknown pool option "
            "(did you mean 'chooser'?)",
        )
        self.assertTrue(
            messages[1].startswith("posted configuration, line 1: invalid TOML: "), messages[1]
        )
        self.assertEqual(
            messages[2], "posted configuration: pools: must be tables like [pools.web]"
        )
        self.assertTrue(messages[3].startswith("posted configuration: not valid JSON"))
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(
            self.logged(LogLevel.error),
            [
                f"configuration reload rejected, the running configuration is kept: {m}"
                for m in messages
            ],
        )

    def test_listenerCannotBeBound(self) -> None:
        """
        A configuration whose new listener cannot be bound fails with
        L{ConfigRejected}, and nothing changes.
        """
        service, reloader = self.start(_TWO_POOLS)
        pools = dict(service.balancer.pools)
        self.network.taken.add(9443)
        failure = self.failureResultOf(
            reloader.apply(_TWO_POOLS.replace('"tcp:0:interface=127.0.0.1"', '"tcp:9443"'), "toml"),
            ConfigRejected,
        )
        self.assertIn("cannot listen on 'tcp:9443'", str(failure.value))
        self.assertEqual(service.balancer.pools, pools)
        self.assertEqual(self.network.listening(), ["127.0.0.1:0"])

    def test_reloadReturnsToTheFile(self) -> None:
        """
        After a configuration was applied through the admin API, SIGHUP
        reads the file again.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.successResultOf(
            reloader.apply(
                'listen = ["tcp:0:interface=127.0.0.1"]\n[pools.x]\nbackends = ["127.0.0.7"]\n',
                "toml",
            )
        )
        self.assertEqual(list(service.balancer.pools), ["x"])
        self.assertTrue(reloader.reload())
        self.assertEqual(list(service.balancer.pools), ["web", "api"])


class DescribeTests(ReloadTestCase):
    """
    L{Reloader.describe} writes the running state back as a config file,
    which applied again leaves everything as it was.
    """

    def roundTrip(self, service: LoadBalancerService, reloader: Reloader) -> None:
        """
        Apply L{Reloader.describeTOML} and check that pools, backends (the
        same objects), weights, drain states, pool options and routes are
        as they were, and that nothing waits for a restart.
        """
        balancer = service.balancer
        backends = {name: list(pool.backends.backends) for name, pool in balancer.pools.items()}
        choosers = {name: pool.chooser for name, pool in balancer.pools.items()}
        settings = {
            name: (p.config.proxy, p.config.upstream, p.config.health, p.config.ejection)
            for name, p in balancer.pools.items()
        }
        state = self.pools(service)
        routes = balancer.config.routes
        text = reloader.describeTOML()
        self.successResultOf(reloader.apply(text, "toml"))
        self.assertEqual(self.pools(service), state, text)
        self.assertEqual(
            {name: list(pool.backends.backends) for name, pool in balancer.pools.items()},
            backends,
        )
        self.assertEqual({name: pool.chooser for name, pool in balancer.pools.items()}, choosers)
        self.assertEqual(
            {
                name: (p.config.proxy, p.config.upstream, p.config.health, p.config.ejection)
                for name, p in balancer.pools.items()
            },
            settings,
        )
        self.assertEqual(balancer.config.routes, routes)
        self.assertEqual(self.logged(LogLevel.warn), [])
        self.assertEqual(reloader.describe(), reloader.describe())

    def test_describe(self) -> None:
        """
        The description holds the options that differ from their defaults,
        every pool with its own options and backends, and the routes.
        """
        _, reloader = self.start(_TWO_POOLS.replace("retries = 1", "no-route-status = 421"))
        self.assertEqual(
            reloader.describe(),
            {
                "access-log": "none",
                "listen": ["tcp:0:interface=127.0.0.1"],
                "pools": {
                    "web": {
                        "backends": ["127.0.0.2:80", "127.0.0.3:8080=3"],
                        "chooser": "round-robin",
                        "health-interval": 0,
                    },
                    "api": {
                        "backends": ["127.0.0.4:80"],
                        "health-interval": 0,
                        "timeout": 5,
                    },
                },
                "routes": [
                    {
                        "pool": "api",
                        "host": "api.example.com",
                        "path": "/v1",
                        "strip-prefix": True,
                        "request-headers": {"set": {"X-Env": "test"}},
                    },
                    {"pool": "web"},
                ],
                "no-route-status": 421,
            },
        )

    def test_roundTrip(self) -> None:
        """
        Applying the description changes nothing.
        """
        service, reloader = self.start(_TWO_POOLS)
        self.roundTrip(service, reloader)

    def test_roundTripAfterAdminChanges(self) -> None:
        """
        Backends added and re-weighted at run time are in the description,
        so applying it keeps them; one being removed is left out.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace('backends = ["127.0.0.4"]', 'backends = ["https://api.internal"]')
        )
        balancer = service.balancer
        balancer.addBackend("web", Backend(host="127.0.0.6", port=81, weight=2))
        balancer.setWeight("web", "127.0.0.2:80", 7)
        balancer.addBackend("api", Backend(host="::1", port=8000))
        balancer.removeBackend("api", "[::1]:8000")
        description = reloader.describe()
        self.assertEqual(
            description["pools"]["web"]["backends"],
            ["127.0.0.2:80=7", "127.0.0.3:8080=3", "127.0.0.6:81=2"],
        )
        self.assertEqual(description["pools"]["api"]["backends"], ["https://api.internal:443"])
        self.assertNotIn("draining", description["pools"]["web"])
        self.roundTrip(service, reloader)

    def test_http2BackendsDescribed(self) -> None:
        """
        HTTP/2 backends (C{h2c://}, C{h2://}) are described with their
        scheme, so that applying the description keeps them HTTP/2.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace(
                'backends = ["127.0.0.4"]',
                'backends = ["h2c://127.0.0.4:50051", "h2://api.internal"]',
            )
        )
        description = reloader.describe()
        self.assertEqual(
            description["pools"]["api"]["backends"],
            ["h2c://127.0.0.4:50051", "h2://api.internal:443"],
        )
        self.roundTrip(service, reloader)

    def test_drainsDescribed(self) -> None:
        """
        Backends drained at run time are listed in C{draining} (an https
        one by its C{host:port}).
        """
        service, reloader = self.start(
            _TWO_POOLS.replace('backends = ["127.0.0.4"]', 'backends = ["https://api.internal"]')
        )
        service.balancer.setDraining("web", "127.0.0.3:8080", True)
        service.balancer.setDraining("api", "api.internal:443", True)
        description = reloader.describe()
        self.assertEqual(description["pools"]["web"]["draining"], ["127.0.0.3:8080"])
        self.assertEqual(description["pools"]["api"]["draining"], ["api.internal:443"])

    def test_roundTripKeepsDrains(self) -> None:
        """
        Applying the description of a pool with drained backends (drained
        by its file or at run time) keeps them drained.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace('chooser = "round-robin"', 'draining = ["127.0.0.2"]')
        )
        service.balancer.setDraining("web", "127.0.0.3:8080", True)
        self.roundTrip(service, reloader)

    def test_roundTripWithFileOptions(self) -> None:
        """
        Top-level options of the edge, list options and on/off options
        are described so that applying them changes nothing.
        """
        service, reloader = self.start(
            'trusted-proxy = ["10.0.0.0/8", "192.0.2.1"]\nallow-host = ["example.com"]\n'
            "send-timeout = 2.5\neject-on-5xx = true\nhash-balance-factor = 1.5\n"
            'max-body = "1K"\n' + _TWO_POOLS
        )
        description = reloader.describe()
        self.assertEqual(description["trusted-proxy"], ["10.0.0.0/8", "192.0.2.1/32"])
        self.assertEqual(description["send-timeout"], 2.5)
        self.assertEqual(description["max-body"], "1K")
        self.assertIs(description["pools"]["web"]["eject-on-5xx"], True)
        self.roundTrip(service, reloader)

    def test_roundTripWithoutConfigFile(self) -> None:
        """
        Started from the command line alone, the description still holds
        the pool's options, and applying it keeps its chooser.
        """
        options = Options()
        options.parseArguments(
            [
                "--listen",
                "tcp:0",
                "--backends",
                "127.0.0.2=3,127.0.0.3",
                "--chooser",
                "sticky",
                "--retries",
                "0",
                "--health-interval",
                "0",
                "--access-log",
                "none",
            ]
        )
        service, reloader = self.startFrom(options)
        description = reloader.describe()
        self.assertEqual(
            description["pools"],
            {
                "default": {
                    "backends": ["127.0.0.2:80=3", "127.0.0.3:80"],
                    "chooser": "sticky",
                    "retries": 0,
                    "health-interval": 0,
                }
            },
        )
        self.roundTrip(service, reloader)

    def test_roundTripAsJSON(self) -> None:
        """
        The description as JSON (C{GET /config?format=json}) applied back
        as JSON leaves everything as it was, and describes the same.
        """
        service, reloader = self.start(
            _TWO_POOLS.replace('chooser = "round-robin"', 'draining = ["127.0.0.2"]')
        )
        description = reloader.describe()
        backends = list(service.backends)
        state = self.pools(service)
        self.successResultOf(reloader.apply(json.dumps(description), "json"))
        self.assertEqual(service.backends, backends)
        self.assertEqual(self.pools(service), state)
        self.assertEqual(reloader.describe(), description)

    def test_describeWithoutPools(self) -> None:
        """
        A file without pools is described with its one pool, C{default};
        and a pool given with no routes is described without them.
        """
        service, reloader = self.start('listen = ["tcp:0"]\nbackends = ["127.0.0.2"]\n')
        description = reloader.describe()
        self.assertEqual(list(description["pools"]), ["default"])
        self.assertNotIn("routes", description)
        self.roundTrip(service, reloader)
