"""
Tests for L{lbproxy.discovery} (backends from DNS), and for what it needs
of the balancer (L{Balancer.setDiscovered}), the command line, the config
file, reloads and C{GET /config}.

Names are looked up in an in-memory zone (L{Zone}, a C{twisted.names}
authority whose records the tests change), except in L{RealResolverTests}
where C{twisted.names}' DNS client asks a C{twisted.names} server on
loopback UDP. Requests go through the balancer to in-memory backends
(L{lbproxy.test.memorynet}), every timer on one clock.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.names import authority, client, dns, resolve, server
from twisted.names.error import DNSServerError
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.balancer import DRAIN_POLL, Balancer, BalancerConfig, BalancerError, PoolConfig
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.cli.discoveryoptions import discoverySettings
from lbproxy.cli.options import Options
from lbproxy.cli.reload import Reloader
from lbproxy.discovery import Source, isSourceItem, parseSource, splitBackends
from lbproxy.discovery.lookup import LookupFailed, Resolved, lookup
from lbproxy.discovery.resolver import (
    DiscoverySettings,
    ResolverSpecError,
    makeResolver,
    parseServer,
)
from lbproxy.discovery.sources import DNS, SRV
from lbproxy.discovery.watcher import Discovery, SourceWatcher
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.service import LoadBalancerService
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.memorynet import Answer, MemoryNetwork
from lbproxy.test.test_reload import ReloadTestCase
from lbproxy.upstream.backends import Backend, BackendSpecError
from lbproxy.upstream.health import HealthSettings

URL = b"http://example.com/"


class Zone(authority.FileAuthority):
    """
    An authority for C{test.} held in memory, whose records a test sets;
    it counts the queries it answers, and fails them while L{failing} is
    set.

    @ivar queries: Every query, as C{(name, type)}.
    @ivar failing: An exception to fail every query with, or L{None}.
    @ivar held: While a list, every query is left unanswered, its
        L{Deferred} appended there.
    """

    soa: Any
    records: Any

    def __init__(self) -> None:
        self.queries: list[tuple[str, int]] = []
        self.failing: Exception | None = None
        self.held: list[Deferred[Any]] | None = None
        super().__init__("test")

    def loadFile(self, filename: Any) -> None:
        self.soa = (
            b"test",
            dns.Record_SOA(mname=b"ns.test", rname=b"root.test", minimum=60, expire=60, ttl=60),
        )
        self.records = {}

    def set(self, name: str, *records: Any) -> None:
        """
        Make C{records} the records of C{name}.
        """
        self.records[name.lower().encode("ascii")] = list(records)

    def forget(self, name: str) -> None:
        """
        Remove C{name}: queries for it are answered NXDOMAIN.
        """
        self.records.pop(name.lower().encode("ascii"), None)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Deferred[Any]:
        self.queries.append((name.decode("ascii"), type))
        if self.held is not None:
            self.held.append(Deferred())
            return self.held[-1]
        if self.failing is not None:
            return fail(self.failing)
        result: Deferred[Any] = super()._lookup(name, cls, type, timeout)
        return result

    def count(self, name: str, type: int = dns.A) -> int:
        """
        How many queries for C{name}'s records of C{type} it answered.
        """
        return self.queries.count((name, type))


def A(address: str, ttl: int = 30) -> dns.Record_A:
    return dns.Record_A(address, ttl=ttl)


def AAAA(address: str, ttl: int = 30) -> dns.Record_AAAA:
    return dns.Record_AAAA(address, ttl=ttl)


def SRVRecord(target: str, port: int, weight: int = 1, ttl: int = 30) -> dns.Record_SRV:
    return dns.Record_SRV(priority=10, weight=weight, port=port, target=target, ttl=ttl)


def _hosts(backends: Sequence[Backend]) -> list[str]:
    return [b.authority + (f"={b.weight}" if b.weight != 1 else "") for b in backends]


class SourceParsingTests(SynchronousTestCase):
    """
    L{parseSource} and L{splitBackends} read the C{dns:} and C{srv:} items
    of C{--backends}.
    """

    def test_dns(self) -> None:
        """
        C{dns:NAME:PORT} is every address of NAME on PORT, weight 1;
        C{=WEIGHT} gives every one that weight.
        """
        self.assertEqual(
            parseSource("dns:backend.svc:8080"), Source(kind=DNS, name="backend.svc", port=8080)
        )
        self.assertEqual(
            parseSource(" DNS:backend.svc:8080=3 "),
            Source(kind=DNS, name="backend.svc", port=8080, weight=3),
        )

    def test_srv(self) -> None:
        """
        C{srv:_service._proto.NAME} takes ports and weights from the records.
        """
        self.assertEqual(
            parseSource("srv:_http._tcp.backend.svc"),
            Source(kind=SRV, name="_http._tcp.backend.svc"),
        )

    def test_text(self) -> None:
        """
        A source is written back as C{--backends} takes it.
        """
        for text in ("dns:backend.svc:8080", "dns:b.svc:80=3", "srv:_http._tcp.backend.svc"):
            self.assertEqual(str(parseSource(text)), text)

    def test_key(self) -> None:
        """
        Sources with the same kind, name (in any case, with or without the
        final dot) and port are the same source, whatever their weights.
        """
        self.assertEqual(
            parseSource("dns:Backend.SVC.:80=2").key, parseSource("dns:backend.svc:80").key
        )
        self.assertNotEqual(
            parseSource("dns:backend.svc:81").key, parseSource("dns:backend.svc:80").key
        )

    def test_isSourceItem(self) -> None:
        """
        Items starting with C{dns:} or C{srv:} are sources; others are
        backends.
        """
        self.assertTrue(isSourceItem(" dns:a:80"))
        self.assertTrue(isSourceItem("SRV:_a._tcp.b"))
        self.assertFalse(isSourceItem("dnsserver:80"))
        self.assertFalse(isSourceItem("10.0.0.1:80"))

    def test_errors(self) -> None:
        """
        An item that is not a source is refused with a message naming it
        and saying what to give instead.
        """
        cases = {
            "dns:backend.svc": "give dns:NAME:PORT",
            "dns:80": "give dns:NAME:PORT",
            "dns:backend.svc:0": "port must be a number from 1 to 65535",
            "dns:backend.svc:http": "port must be a number",
            "dns:backend.svc:80=0": "weight after '=' must be a whole number from 1 to 1000",
            "dns:10.0.0.1:80": "is an address, not a name",
            "dns:bad name:80": "is not a DNS name",
            "dns:a..b:80": "is not a DNS name",
            "srv:backend.svc": "give srv:_service._proto.NAME",
            "srv:_http._tcp.backend.svc:80": "takes each target's port",
            "srv:_http._tcp.backend.svc=2": "takes each target's weight",
        }
        for item, message in cases.items():
            with self.assertRaises(BackendSpecError, msg=item) as caught:
                parseSource(item)
            self.assertIn(message, str(caught.exception))
            self.assertIn(repr(item), str(caught.exception))

    def test_split(self) -> None:
        """
        A C{--backends} list may mix backends and sources; each comes back
        in the order given.
        """
        backends, sources = splitBackends("10.0.0.1:80,dns:a.svc:8080,srv:_h._tcp.b.svc,10.0.0.2=2")
        self.assertEqual(_hosts(backends), ["10.0.0.1:80", "10.0.0.2:80=2"])
        self.assertEqual([str(s) for s in sources], ["dns:a.svc:8080", "srv:_h._tcp.b.svc"])
        self.assertEqual(splitBackends("dns:a.svc:80"), ((), (parseSource("dns:a.svc:80"),)))

    def test_splitDuplicates(self) -> None:
        """
        The same source twice is refused, as the same backend twice is.
        """
        with self.assertRaises(BackendSpecError) as caught:
            splitBackends("dns:a.svc:80,dns:A.svc.:80=2")
        self.assertIn("duplicate backend 'dns:A.svc.:80=2'", str(caught.exception))
        with self.assertRaises(BackendSpecError):
            splitBackends("dns:a.svc:80,10.0.0.1,10.0.0.1:80")
        with self.assertRaises(BackendSpecError):
            splitBackends("dns:a.svc:80,,10.0.0.1")


class LookupTests(SynchronousTestCase):
    """
    L{lookup} turns a source's records into backends and a TTL.
    """

    def setUp(self) -> None:
        self.zone = Zone()

    def resolved(self, item: str) -> Resolved:
        result: Resolved = self.successResultOf(lookup(self.zone, parseSource(item)))
        return result

    def test_addresses(self) -> None:
        """
        Every A and AAAA record is a backend on the source's port with its
        weight, IPv4 first, each sorted; the TTL is the smallest.
        """
        self.zone.set("web.test", A("10.0.0.9", 60), A("10.0.0.10", 20), AAAA("2001:db8::1", 40))
        resolved = self.resolved("dns:web.test:8080=2")
        self.assertEqual(
            _hosts(resolved.backends),
            ["10.0.0.9:8080=2", "10.0.0.10:8080=2", "[2001:db8::1]:8080=2"],
        )
        self.assertEqual(resolved.ttl, 20)

    def test_cname(self) -> None:
        """
        Addresses reached through a CNAME record count.
        """
        self.zone.set("alias.test", dns.Record_CNAME(b"web.test", ttl=50))
        self.zone.set("web.test", A("10.0.0.1", 70))
        resolved = self.resolved("dns:alias.test:80")
        self.assertEqual(_hosts(resolved.backends), ["10.0.0.1:80"])
        self.assertEqual(resolved.ttl, 50)

    def test_noSuchName(self) -> None:
        """
        A name that does not exist has no backends.
        """
        self.assertEqual(self.resolved("dns:missing.test:80"), Resolved((), None))

    def test_noAddresses(self) -> None:
        """
        A name without address records has no backends.
        """
        self.zone.set("text.test", dns.Record_TXT(b"hello", ttl=30))
        self.assertEqual(self.resolved("dns:text.test:80"), Resolved((), None))

    def test_onlyIPv6(self) -> None:
        """
        A name with AAAA records only has those backends.
        """
        self.zone.set("six.test", AAAA("::1"))
        self.assertEqual(_hosts(self.resolved("dns:six.test:80").backends), ["[::1]:80"])

    def test_failure(self) -> None:
        """
        A server failure fails the lookup, saying so.
        """
        self.zone.set("web.test", A("10.0.0.1"))
        self.zone.failing = DNSServerError()
        failure = self.failureResultOf(lookup(self.zone, parseSource("dns:web.test:80")))
        failure.trap(LookupFailed)
        self.assertEqual(failure.getErrorMessage(), "server failure")

    def test_timeout(self) -> None:
        """
        A query that times out fails the lookup, saying so.
        """
        self.zone.failing = dns.DNSQueryTimeoutError(1)
        failure = self.failureResultOf(lookup(self.zone, parseSource("dns:web.test:80")))
        failure.trap(LookupFailed)
        self.assertEqual(failure.getErrorMessage(), "timed out")

    def test_srv(self) -> None:
        """
        Every SRV target's addresses are backends on the record's port
        with its weight; the TTL is the smallest of the SRV and address
        records.
        """
        self.zone.set(
            "_http._tcp.web.test",
            SRVRecord("a.test", 8080, weight=3, ttl=40),
            SRVRecord("b.test", 9090, weight=1, ttl=50),
        )
        self.zone.set("a.test", A("10.0.0.1", 30), A("10.0.0.2", 30))
        self.zone.set("b.test", A("10.0.0.3", 10))
        resolved = self.resolved("srv:_http._tcp.web.test")
        self.assertEqual(
            _hosts(resolved.backends), ["10.0.0.1:8080=3", "10.0.0.2:8080=3", "10.0.0.3:9090"]
        )
        self.assertEqual(resolved.ttl, 10)

    def test_srvAdditional(self) -> None:
        """
        A target's addresses in the answer's additional section are used
        without another query.
        """
        resolver = _Answers(
            {
                dns.SRV: (
                    [
                        dns.RRHeader(
                            b"_http._tcp.web.test", dns.SRV, ttl=20, payload=SRVRecord("a.test", 81)
                        )
                    ],
                    [],
                    [dns.RRHeader(b"a.test", dns.A, ttl=25, payload=A("10.0.0.7"))],
                )
            }
        )
        resolved = self.successResultOf(
            lookup(resolver, parseSource("srv:_http._tcp.web.test"))  # type: ignore[arg-type]
        )
        self.assertEqual(_hosts(resolved.backends), ["10.0.0.7:81"])
        self.assertEqual(resolved.ttl, 20)
        self.assertEqual(resolver.asked, [dns.SRV])

    def test_srvWeightsScaled(self) -> None:
        """
        SRV weights above 1000 are scaled so that the largest is 1000; 0
        is weight 1.
        """
        self.zone.set(
            "_http._tcp.web.test",
            SRVRecord("a.test", 80, weight=65535),
            SRVRecord("b.test", 80, weight=6553),
            SRVRecord("c.test", 80, weight=0),
        )
        for name, address in (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")):
            self.zone.set(f"{name}.test", A(address))
        self.assertEqual(
            _hosts(self.resolved("srv:_http._tcp.web.test").backends),
            ["10.0.0.1:80=1000", "10.0.0.2:80=100", "10.0.0.3:80"],
        )

    def test_srvNotOffered(self) -> None:
        """
        A lone SRV record whose target is "." (the service is not offered)
        gives no backends; so does a name without SRV records.
        """
        self.zone.set("_http._tcp.none.test", SRVRecord("", 80))
        self.assertEqual(self.resolved("srv:_http._tcp.none.test").backends, ())
        self.assertEqual(self.resolved("srv:_http._tcp.missing.test"), Resolved((), None))

    def test_srvTargetFails(self) -> None:
        """
        If a target's addresses cannot be looked up, the lookup fails
        (rather than giving the other targets alone).
        """
        resolver = _Answers(
            {
                dns.SRV: (
                    [
                        dns.RRHeader(
                            b"_http._tcp.web.test", dns.SRV, ttl=20, payload=SRVRecord("a.test", 81)
                        )
                    ],
                    [],
                    [],
                )
            }
        )
        failure = self.failureResultOf(
            lookup(resolver, parseSource("srv:_http._tcp.web.test"))  # type: ignore[arg-type]
        )
        failure.trap(LookupFailed)


class _Answers:
    """
    A resolver that gives set answers by record type, and fails with a
    server failure for any other.
    """

    def __init__(self, answers: dict[int, Any]) -> None:
        self.answers = answers
        self.asked: list[int] = []

    def _answer(self, type: int) -> Deferred[Any]:
        self.asked.append(type)
        if type in self.answers:
            return Deferred.fromCoroutine(_value(self.answers[type]))
        return fail(DNSServerError())

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(dns.SRV)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(dns.A)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(dns.AAAA)


async def _value(value: Any) -> Any:
    return value


class ResolverTests(SynchronousTestCase):
    """
    L{parseServer}, L{makeResolver} and L{DiscoverySettings.delay}.
    """

    def test_parseServer(self) -> None:
        """
        C{--resolver} is an address, with a port or 53.
        """
        self.assertEqual(parseServer("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parseServer("10.0.0.1"), ("10.0.0.1", 53))
        self.assertEqual(parseServer("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parseServer("[::1]"), ("::1", 53))
        self.assertEqual(parseServer("::1"), ("::1", 53))

    def test_parseServerErrors(self) -> None:
        """
        A name, a bad port or a missing bracket is refused, naming the
        value.
        """
        for text in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x", ""):
            with self.assertRaises(ResolverSpecError, msg=text) as caught:
                parseServer(text)
            self.assertIn(repr(text), str(caught.exception))

    def test_delay(self) -> None:
        """
        The next lookup is due at the TTL, within the bounds; without
        records, after the shortest wait.
        """
        settings = DiscoverySettings(minTTL=5, maxTTL=300)
        self.assertEqual(settings.delay(30), 30)
        self.assertEqual(settings.delay(1), 5)
        self.assertEqual(settings.delay(0), 5)
        self.assertEqual(settings.delay(86400), 300)
        self.assertEqual(settings.delay(None), 5)

    def test_server(self) -> None:
        """
        With a server, the resolver is the DNS client asking that server
        alone.
        """
        resolver = makeResolver(DiscoverySettings(server=("127.0.0.1", 5353)), MemoryReactorClock())
        self.assertIsInstance(resolver, client.Resolver)
        self.assertEqual(cast(client.Resolver, resolver).servers, [("127.0.0.1", 5353)])

    def test_system(self) -> None:
        """
        Without a server, names are looked up in the hosts file first, then
        with the DNS client on the name servers of resolv.conf; no cache.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        hostsFile = os.path.join(directory, "hosts")
        resolvConf = os.path.join(directory, "resolv.conf")
        with open(hostsFile, "w") as f:
            f.write("10.0.0.42 web.local\nfd00::42 web.local\n")
        with open(resolvConf, "w") as f:
            f.write("nameserver 192.0.2.53\n")
        reactor = MemoryReactorClock()
        resolver = makeResolver(
            DiscoverySettings(resolvConf=resolvConf, hostsFile=hostsFile), reactor
        )
        assert isinstance(resolver, resolve.ResolverChain)
        dnsClient = resolver.resolvers[1]
        self.assertIsInstance(dnsClient, client.Resolver)
        self.assertEqual(dnsClient.dynServers, [("192.0.2.53", 53)])
        resolved = self.successResultOf(lookup(resolver, parseSource("dns:web.local:80")))
        self.assertEqual(_hosts(resolved.backends), ["10.0.0.42:80", "[fd00::42]:80"])
        # resolv.conf is read again from time to time.
        for call in reactor.getDelayedCalls():
            call.cancel()


class BalancerDiscoveryCase(SynchronousTestCase):
    """
    A balancer whose pool C{web} has the static backend C{10.0.0.1:80} and
    the source C{dns:web.test:80}, in front of in-memory backends on
    10.0.0.1 to 10.0.0.5.
    """

    source = parseSource("dns:web.test:80")

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.clock = self.network.clock
        self.servers = {
            f"10.0.0.{n}": self.network.backend(f"b{n}".encode(), f"10.0.0.{n}")
            for n in range(1, 6)
        }

    def pool(
        self, *sources: Source, static: Sequence[str] = ("10.0.0.1",), **kw: Any
    ) -> PoolConfig:
        """
        The pool C{web}: round-robin over C{static} and what C{sources}
        give; no health checks unless C{kw} says otherwise.
        """
        kw.setdefault("health", HealthSettings(interval=0))
        return PoolConfig(
            name="web",
            backends=tuple(Backend(host) for host in static),
            chooser=RoundRobinChooser(),
            sources=sources,
            **kw,
        )

    def config(self, *pools: PoolConfig) -> BalancerConfig:
        return BalancerConfig(
            pools=pools, routes=RouteTable((RouteRule(pool=pools[0].name),)), drainTimeout=30
        )

    def build(self, *pools: PoolConfig) -> Balancer:
        self.balancer = Balancer(self.config(*pools), self.clock, self.clock, self.network.upstream)
        self.site = self.network.proxySite(self.balancer.router)
        self.balancer.start()
        self.addCleanup(self.balancer.stop)
        return self.balancer

    def live(self, pool: str = "web") -> list[str]:
        return [b.authority for b in self.balancer.pools[pool].backends.backends]

    def send(self) -> Deferred[Answer]:
        d = self.network.request(self.site, b"GET", URL)
        self.network.flush()
        return d

    def bodies(self, count: int) -> list[bytes]:
        return [self.successResultOf(self.send()).body for _ in range(count)]


class SetDiscoveredTests(BalancerDiscoveryCase):
    """
    L{Balancer.setDiscovered} makes a source's backends what its records
    say: new ones added, gone ones drained, kept ones kept.
    """

    def test_added(self) -> None:
        """
        Addresses a source gives join the pool after its static backends,
        and take requests.
        """
        balancer = self.build(self.pool(self.source))
        change = balancer.setDiscovered(
            "web", self.source, [Backend("10.0.0.2"), Backend("10.0.0.3")]
        )
        self.assertEqual(_hosts(change.now), ["10.0.0.2:80", "10.0.0.3:80"])
        self.assertEqual(_hosts(change.added), ["10.0.0.2:80", "10.0.0.3:80"])
        self.assertEqual(change.removed, [])
        self.assertEqual(self.live(), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
        self.assertEqual(sorted(self.bodies(3)), [b"b1", b"b2", b"b3"])

    def test_slowStartAndHealth(self) -> None:
        """
        An added address goes through slow start when the pool has it, and
        is health-checked.
        """
        balancer = self.build(
            self.pool(self.source, slowStart=10, health=HealthSettings(interval=2, path=b"/"))
        )
        [added] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).added
        self.assertEqual(added.state, "slow-start")
        self.network.flush()
        probes = len(self.servers["10.0.0.2"].resource.received)
        self.assertEqual(probes, 1)
        self.clock.advance(2)
        self.network.flush()
        self.assertEqual(len(self.servers["10.0.0.2"].resource.received), probes + 1)

    def test_kept(self) -> None:
        """
        An address in both answers is the same backend, counters, ejection
        and all.
        """
        balancer = self.build(self.pool(self.source, static=()))
        [first] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).now
        self.bodies(2)
        first.ejected = True
        change = balancer.setDiscovered(
            "web", self.source, [Backend("10.0.0.2"), Backend("10.0.0.3")]
        )
        self.assertIs(change.now[0], first)
        self.assertEqual(first.requests, 2)
        self.assertTrue(first.ejected)
        self.assertEqual(_hosts(change.added), ["10.0.0.3:80"])

    def test_removedDrains(self) -> None:
        """
        An address that disappears takes no new requests; its request in
        flight finishes, then it leaves the pool.
        """
        balancer = self.build(self.pool(self.source, static=()))
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.2"), Backend("10.0.0.3")])
        self.servers["10.0.0.2"].hold()
        self.servers["10.0.0.3"].hold()
        inFlight = [self.send(), self.send()]
        change = balancer.setDiscovered("web", self.source, [Backend("10.0.0.3")])
        self.assertEqual(_hosts(change.removed), ["10.0.0.2:80"])
        [gone] = change.removed
        self.assertTrue(balancer.removing(gone))
        self.servers["10.0.0.3"].release()
        self.assertEqual(self.bodies(3), [b"b3"] * 3)
        self.assertIn("10.0.0.2:80", self.live())
        for held in self.servers["10.0.0.2"].held + self.servers["10.0.0.3"].held:
            held.write(b"late")
            held.finish()
        self.network.flush()
        self.assertEqual(sorted(self.successResultOf(d).body for d in inFlight), [b"late", b"late"])
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.live(), ["10.0.0.3:80"])

    def test_back(self) -> None:
        """
        An address that comes back while it drains is back in service, the
        same backend.
        """
        balancer = self.build(self.pool(self.source, static=()))
        [backend] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).now
        self.servers["10.0.0.2"].hold()
        self.send()
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.3")])
        self.assertTrue(backend.draining)
        change = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")])
        self.assertIs(change.now[0], backend)
        self.assertFalse(backend.draining)
        self.assertFalse(balancer.removing(backend))
        self.clock.advance(60)
        self.assertIn("10.0.0.2:80", self.live())

    def test_static(self) -> None:
        """
        An address the pool lists too is the listed backend, with the
        listed weight; when the source drops it, it stays.
        """
        balancer = self.build(self.pool(self.source))
        listed = balancer.pools["web"].backends.backends[0]
        change = balancer.setDiscovered("web", self.source, [Backend("10.0.0.1", weight=5)])
        self.assertIs(change.now[0], listed)
        self.assertEqual(listed.weight, 1)
        self.assertEqual(self.live(), ["10.0.0.1:80"])
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")])
        self.assertFalse(balancer.removing(listed))
        self.assertEqual(self.live(), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(_hosts(balancer.discovered("web")), ["10.0.0.2:80"])

    def test_twoSources(self) -> None:
        """
        An address two sources give stays while either gives it.
        """
        other = parseSource("dns:other.test:80")
        balancer = self.build(self.pool(self.source, other, static=()))
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")])
        balancer.setDiscovered("web", other, [Backend("10.0.0.2"), Backend("10.0.0.3")])
        self.assertEqual(self.live(), ["10.0.0.2:80", "10.0.0.3:80"])
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.4")])
        self.assertFalse(any(balancer.removing(b) for b in balancer.pools["web"].backends.backends))

    def test_weights(self) -> None:
        """
        A kept address takes the weight its records give now.
        """
        balancer = self.build(self.pool(self.source, static=()))
        [backend] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2", weight=2)]).now
        self.assertEqual(backend.weight, 2)
        change = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2", weight=7)])
        self.assertEqual(change.reweighted, [backend])
        self.assertEqual(backend.weight, 7)
        self.assertTrue(change)
        self.assertFalse(
            balancer.setDiscovered("web", self.source, [Backend("10.0.0.2", weight=7)])
        )

    def test_unknown(self) -> None:
        """
        A source the pool does not have, or a pool that does not exist, is
        refused.
        """
        balancer = self.build(self.pool(self.source))
        with self.assertRaises(BalancerError):
            balancer.setDiscovered("web", parseSource("dns:x.test:80"), [])
        with self.assertRaises(BalancerError):
            balancer.setDiscovered("api", self.source, [])

    def test_removedByAdmin(self) -> None:
        """
        A discovered backend removed through the admin API is added again
        by the source's next answer that gives it.
        """
        balancer = self.build(self.pool(self.source, static=()))
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")])
        balancer.removeBackend("web", "10.0.0.2:80")
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.live(), [])
        change = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")])
        self.assertEqual(_hosts(change.added), ["10.0.0.2:80"])
        self.assertEqual(self.live(), ["10.0.0.2:80"])


class ReloadDiscoveredTests(BalancerDiscoveryCase):
    """
    L{Balancer.apply} keeps the backends of the sources a reload keeps,
    and drains those of the sources it drops.
    """

    def test_sameSource(self) -> None:
        """
        A reload with the same source keeps its backends, the same
        objects.
        """
        balancer = self.build(self.pool(self.source))
        found = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).now
        balancer.apply(self.config(self.pool(self.source, static=("10.0.0.3",))))
        self.assertEqual(self.live(), ["10.0.0.3:80", "10.0.0.2:80"])
        self.assertIs(balancer.pools["web"].backends.backends[1], found[0])
        self.assertEqual(balancer.discoveredBy("web", self.source), found)
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.live(), ["10.0.0.3:80", "10.0.0.2:80"])

    def test_newWeight(self) -> None:
        """
        A reload that changes a C{dns:} source's weight gives its backends
        that weight.
        """
        balancer = self.build(self.pool(self.source, static=()))
        [backend] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).now
        heavier = parseSource("dns:web.test:80=4")
        balancer.apply(self.config(self.pool(heavier, static=())))
        self.assertEqual(backend.weight, 4)
        self.assertEqual(balancer.discoveredBy("web", heavier), [backend])

    def test_droppedSource(self) -> None:
        """
        A reload without the source drains its backends, except those the
        new configuration lists.
        """
        balancer = self.build(self.pool(self.source, static=()))
        balancer.setDiscovered("web", self.source, [Backend("10.0.0.2"), Backend("10.0.0.3")])
        balancer.apply(self.config(self.pool(static=("10.0.0.3",))))
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.live(), ["10.0.0.3:80"])
        self.assertEqual(balancer.discoveredBy("web", self.source), [])

    def test_droppedPool(self) -> None:
        """
        A reload without the pool drains the backends of its sources.
        """
        balancer = self.build(self.pool(self.source, static=()))
        [backend] = balancer.setDiscovered("web", self.source, [Backend("10.0.0.2")]).now
        other = PoolConfig(name="api", backends=(Backend("10.0.0.5"),), chooser=FirstAvailable())
        balancer.apply(self.config(other))
        self.assertTrue(backend.draining)
        self.assertNotIn("web", balancer.pools)


class WatcherCase(BalancerDiscoveryCase):
    """
    A zone, and a balancer whose discovery looks names up in it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.zone = Zone()
        self.events: list[LogEvent] = []
        self.patch(SourceWatcher, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def discover(self, *pools: PoolConfig, minTTL: float = 5, maxTTL: float = 300) -> Discovery:
        balancer = self.build(*pools)
        self.discovery = Discovery(
            balancer, self.clock, DiscoverySettings(minTTL=minTTL, maxTTL=maxTTL), lambda: self.zone
        )
        self.discovery.start()
        self.addCleanup(self.discovery.stop)
        return self.discovery

    def logged(self, level: LogLevel | None = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e["log_level"] == level]


class WatcherTests(WatcherCase):
    """
    L{Discovery} looks every source up at start, and again at its TTL,
    and keeps the pool's backends what the records say.
    """

    def test_start(self) -> None:
        """
        Sources are looked up at start; the answer's addresses take
        requests, and one line says what the source gives.
        """
        self.zone.set("web.test", A("10.0.0.2"), A("10.0.0.3"))
        self.discover(self.pool(self.source, static=()))
        self.assertEqual(self.live(), ["10.0.0.2:80", "10.0.0.3:80"])
        self.assertEqual(sorted(self.bodies(2)), [b"b2", b"b3"])
        self.assertEqual(
            self.logged(),
            ["pool web: dns:web.test:80 now 10.0.0.2:80, 10.0.0.3:80 (+10.0.0.2:80, +10.0.0.3:80)"],
        )

    def test_ttl(self) -> None:
        """
        A source is looked up again when its answer's TTL runs out, not
        before.
        """
        self.zone.set("web.test", A("10.0.0.2", ttl=30))
        self.discover(self.pool(self.source, static=()))
        self.assertEqual(self.zone.count("web.test"), 1)
        self.clock.advance(29.9)
        self.assertEqual(self.zone.count("web.test"), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.zone.count("web.test"), 2)
        self.assertEqual(self.zone.count("web.test", dns.AAAA), 2)

    def test_ttlBounds(self) -> None:
        """
        A TTL below the minimum waits the minimum; one above the maximum
        waits the maximum.
        """
        self.zone.set("web.test", A("10.0.0.2", ttl=1))
        self.zone.set("long.test", A("10.0.0.3", ttl=86400))
        long = parseSource("dns:long.test:80")
        self.discover(self.pool(self.source, long, static=()), minTTL=5, maxTTL=60)
        self.clock.advance(4.9)
        self.assertEqual(self.zone.count("web.test"), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.zone.count("web.test"), 2)
        self.clock.advance(54.9)
        self.assertEqual(self.zone.count("long.test"), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.zone.count("long.test"), 2)

    def test_changes(self) -> None:
        """
        Addresses that appear are added, those that disappear drain, and
        one line says so.
        """
        self.zone.set("web.test", A("10.0.0.2"), A("10.0.0.4"))
        self.discover(self.pool(self.source, static=()))
        self.zone.set("web.test", A("10.0.0.2"), A("10.0.0.3"))
        self.clock.advance(30)
        self.assertEqual(self.bodies(4).count(b"b4"), 0)
        self.clock.advance(DRAIN_POLL)
        self.assertEqual(self.live(), ["10.0.0.2:80", "10.0.0.3:80"])
        self.assertIn(
            "pool web: dns:web.test:80 now 10.0.0.2:80, 10.0.0.3:80 (+10.0.0.3:80, -10.0.0.4:80)",
            self.logged(LogLevel.info),
        )

    def test_sameAnswer(self) -> None:
        """
        An answer like the last changes nothing and logs nothing.
        """
        self.zone.set("web.test", A("10.0.0.2"))
        self.discover(self.pool(self.source, static=()))
        [backend] = self.balancer.pools["web"].backends.backends
        self.clock.advance(30)
        self.assertEqual(len(self.logged()), 1)
        self.assertEqual(self.balancer.pools["web"].backends.backends, [backend])

    def test_failureKeeps(self) -> None:
        """
        A failed lookup keeps the last good set and says so once; lookups
        go on at the shortest wait, and a good answer applies again.
        """
        self.zone.set("web.test", A("10.0.0.2"), A("10.0.0.3"))
        self.discover(self.pool(self.source, static=()))
        self.zone.failing = DNSServerError()
        self.clock.advance(30)
        self.assertEqual(self.live(), ["10.0.0.2:80", "10.0.0.3:80"])
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.zone.count("web.test"), 4)
        self.assertEqual(
            self.logged(LogLevel.warn),
            [
                "pool web: dns:web.test:80 lookup failed (server failure); keeping "
                "10.0.0.2:80, 10.0.0.3:80; trying again every 5 s"
            ],
        )
        self.zone.failing = None
        self.zone.set("web.test", A("10.0.0.3"))
        self.clock.advance(5)
        self.assertEqual(self.live(), ["10.0.0.3:80"])

    def test_emptyKeeps(self) -> None:
        """
        An answer without addresses (the name gone, or no records) keeps
        the last good set and says so once.
        """
        self.zone.set("web.test", A("10.0.0.2"))
        self.discover(self.pool(self.source, static=()))
        self.zone.forget("web.test")
        self.clock.advance(30)
        self.clock.advance(5)
        self.assertEqual(self.live(), ["10.0.0.2:80"])
        self.assertEqual(self.bodies(1), [b"b2"])
        self.assertEqual(
            self.logged(LogLevel.warn),
            [
                "pool web: dns:web.test:80 resolved to no addresses; keeping 10.0.0.2:80; "
                "trying again every 5 s"
            ],
        )
        self.zone.set("web.test", A("10.0.0.2"))
        self.clock.advance(5)
        self.assertEqual(
            self.logged(LogLevel.info)[-1],
            "pool web: dns:web.test:80 resolves again, unchanged: 10.0.0.2:80",
        )

    def test_notYet(self) -> None:
        """
        A name that does not resolve at start-up gives the pool no
        backends (503, with Retry-After) and is looked up again at the
        shortest wait until it does.
        """
        self.discover(self.pool(self.source, static=()))
        answer = self.successResultOf(self.send())
        self.assertEqual(answer.code, 503)
        self.assertEqual(answer.header(b"Retry-After"), [b"1"])
        self.assertEqual(
            self.logged(LogLevel.warn),
            [
                "pool web: dns:web.test:80 resolved to no addresses; no backends from it "
                "yet; trying again every 5 s"
            ],
        )
        self.zone.set("web.test", A("10.0.0.2"))
        self.clock.advance(5)
        self.assertEqual(self.bodies(1), [b"b2"])

    def test_srvWeights(self) -> None:
        """
        SRV targets are backends with their records' weights, which a
        weighted chooser follows.
        """
        source = parseSource("srv:_http._tcp.web.test")
        self.zone.set(
            "_http._tcp.web.test", SRVRecord("a.test", 80, weight=3), SRVRecord("b.test", 80)
        )
        self.zone.set("a.test", A("10.0.0.2"))
        self.zone.set("b.test", A("10.0.0.3"))
        self.discover(self.pool(source, static=()))
        bodies = self.bodies(40)
        self.assertEqual((bodies.count(b"b2"), bodies.count(b"b3")), (30, 10))
        self.assertIn(
            "pool web: srv:_http._tcp.web.test now 10.0.0.2:80=3, 10.0.0.3:80 "
            "(+10.0.0.2:80, +10.0.0.3:80)",
            self.logged(),
        )

    def test_reload(self) -> None:
        """
        After a reload, a kept source keeps its watcher, a dropped one is
        no longer looked up, a new one is looked up at once.
        """
        other = parseSource("dns:other.test:80")
        self.zone.set("web.test", A("10.0.0.2"))
        self.zone.set("other.test", A("10.0.0.3"))
        discovery = self.discover(self.pool(self.source, static=()))
        watcher = discovery.watchers["web", self.source.key]
        self.balancer.apply(self.config(self.pool(self.source, other, static=())))
        discovery.update()
        self.assertIs(discovery.watchers["web", self.source.key], watcher)
        self.assertEqual(self.zone.count("web.test"), 1)
        self.assertEqual(self.zone.count("other.test"), 1)
        self.assertEqual(self.live(), ["10.0.0.2:80", "10.0.0.3:80"])
        self.balancer.apply(self.config(self.pool(other, static=())))
        discovery.update()
        self.clock.advance(30)
        self.assertEqual(self.zone.count("web.test"), 1)
        self.assertEqual(self.zone.count("other.test"), 2)
        self.assertEqual(self.live(), ["10.0.0.3:80"])

    def test_stop(self) -> None:
        """
        Once stopped, nothing is looked up; an answer still on its way is
        ignored.
        """
        self.zone.set("web.test", A("10.0.0.2"))
        discovery = self.discover(self.pool(self.source, static=()))
        slow = self.zone.held = []
        self.clock.advance(30)
        self.assertEqual(len(slow), 2)
        discovery.stop()
        self.zone.set("web.test", A("10.0.0.3"))
        for d in slow:
            d.callback(([], [], []))
        self.assertEqual(self.live(), ["10.0.0.2:80"])
        self.clock.advance(600)
        self.assertEqual(len(slow), 2)


class OptionsTests(SynchronousTestCase):
    """
    The command line and the config file take C{dns:} and C{srv:} items
    and the discovery options.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseArguments(["--listen", "tcp:0", *arguments])
        return options

    def test_backends(self) -> None:
        """
        C{--backends} may mix sources with backends; the pool has both.
        """
        options = self.parse("--backends", "10.0.0.1,dns:web.test:8080=2,srv:_h._tcp.web.test")
        assert options.config is not None
        [pool] = options.config.pools
        self.assertEqual(_hosts(pool.backends), ["10.0.0.1:80"])
        self.assertEqual(
            [str(s) for s in pool.sources], ["dns:web.test:8080=2", "srv:_h._tcp.web.test"]
        )

    def test_onlySources(self) -> None:
        """
        A pool may have sources alone.
        """
        options = self.parse("--backends", "dns:web.test:8080")
        assert options.config is not None
        self.assertEqual(options.config.pools[0].backends, ())

    def test_defaults(self) -> None:
        """
        By default names are looked up on the system's name servers, again
        after 5 to 300 seconds.
        """
        options = self.parse("--backends", "dns:web.test:8080")
        assert options.config is not None
        self.assertEqual(options.config.discovery, DiscoverySettings())
        self.assertEqual((DiscoverySettings().minTTL, DiscoverySettings().maxTTL), (5, 300))

    def test_settings(self) -> None:
        """
        C{--resolver}, C{--dns-min-ttl} and C{--dns-max-ttl} set the
        discovery settings.
        """
        options = self.parse(
            "--backends",
            "dns:web.test:8080",
            "--resolver",
            "127.0.0.1:5353",
            "--dns-min-ttl",
            "0.5",
            "--dns-max-ttl",
            "60",
        )
        assert options.config is not None
        self.assertEqual(
            options.config.discovery,
            DiscoverySettings(server=("127.0.0.1", 5353), minTTL=0.5, maxTTL=60),
        )

    def test_errors(self) -> None:
        """
        Bad values are usage errors naming the option.
        """
        cases = [
            ({"resolver": "ns.example"}, "--resolver 'ns.example'"),
            ({"dns-min-ttl": "0"}, "--dns-min-ttl must be greater than 0"),
            ({"dns-max-ttl": "soon"}, "--dns-max-ttl must be a number of seconds"),
            ({"dns-min-ttl": "60", "dns-max-ttl": "30"}, "--dns-max-ttl (30) must be at least"),
        ]
        for given, message in cases:
            values = {"resolver": None, "dns-min-ttl": "5", "dns-max-ttl": "300", **given}
            with self.assertRaises(usage.UsageError, msg=str(given)) as caught:
                discoverySettings(values)
            self.assertIn(message, str(caught.exception))

    def test_badItem(self) -> None:
        """
        A bad source in C{--backends} is a usage error naming it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--backends", "dns:web.test")
        self.assertIn(
            "--backends: backend 'dns:web.test': give dns:NAME:PORT", str(caught.exception)
        )

    def test_configFile(self) -> None:
        """
        A config file pool's C{backends} may hold sources; a bad one is
        reported at its line.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'resolver = "127.0.0.1:5353"\n'
                "dns-min-ttl = 1\n"
                "[pools.web]\n"
                'backends = ["10.0.0.1", "dns:web.test:8080"]\n'
            )
        options = self.parse("--config", path)
        assert options.config is not None
        self.assertEqual([str(s) for s in options.config.pools[0].sources], ["dns:web.test:8080"])
        self.assertEqual(options.config.discovery.server, ("127.0.0.1", 5353))
        self.assertEqual(options.config.discovery.minTTL, 1)
        with open(path, "w") as f:
            f.write('[pools.web]\nbackends = ["dns:web.test"]\n')
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", path)
        self.assertIn(
            f"{path}, line 2: pools.web.backends: backend 'dns:web.test'", str(caught.exception)
        )

    def test_help(self) -> None:
        """
        C{--help} shows the discovery options in a group of their own.
        """
        text = Options().getUsage(width=100)
        self.assertIn("Backends from DNS:\n", text)
        group = text.split("Backends from DNS:\n", 1)[1].split("\n\n", 1)[0]
        for name in ("--resolver", "--dns-min-ttl", "--dns-max-ttl"):
            self.assertIn(name, group)


class ServiceTests(ReloadTestCase):
    """
    A running L{LoadBalancerService} looks its pools' sources up, follows
    reloads, writes sources back in C{GET /config}, and stops looking
    when it stops.
    """

    def setUp(self) -> None:
        super().setUp()
        self.zone = Zone()
        self.zone.set("web.test", A("10.0.0.2"), A("10.0.0.3"))

    def startWith(self, text: str) -> tuple[LoadBalancerService, Reloader]:
        self.write(text)
        options = Options()
        options.parseArguments(["--config", self.path])
        assert options.config is not None
        service = LoadBalancerService(
            options.config, self.network, self.network, resolver=self.zone
        )
        service.privilegedStartService()
        service.startService()
        self.addCleanup(self.stop, service)
        return service, Reloader(options, service, Options)

    _FILE = 'listen = ["tcp:0"]\n[pools.web]\nbackends = ["10.0.0.1", "dns:web.test:8080"]\n'

    def test_started(self) -> None:
        """
        At start, the pool has its listed backends and its source's.
        """
        service, _ = self.startWith(self._FILE)
        self.assertEqual(
            self.pools(service)["web"],
            [("10.0.0.1:80", 1, False), ("10.0.0.2:8080", 1, False), ("10.0.0.3:8080", 1, False)],
        )

    def test_describe(self) -> None:
        """
        C{GET /config} writes the source, not the addresses it gives.
        """
        _, reloader = self.startWith(self._FILE)
        self.assertEqual(
            reloader.describe()["pools"]["web"]["backends"], ["10.0.0.1:80", "dns:web.test:8080"]
        )

    def test_reloadKeeps(self) -> None:
        """
        A reload that keeps the source keeps its backends and its
        watcher; one that drops it drains them and stops looking.
        """
        service, reloader = self.startWith(self._FILE)
        watcher = service.discovery.watchers["web", parseSource("dns:web.test:8080").key]
        found = service.balancer.pools["web"].backends.backends[1:]
        self.write(self._FILE.replace('"10.0.0.1", ', ""))
        self.assertTrue(reloader.reload())
        self.assertEqual(service.balancer.pools["web"].backends.backends, found)
        self.assertIs(
            service.discovery.watchers["web", parseSource("dns:web.test:8080").key], watcher
        )
        self.write(self._FILE.replace(', "dns:web.test:8080"', ""))
        self.assertTrue(reloader.reload())
        self.network.advance(DRAIN_POLL)
        self.assertEqual(self.pools(service)["web"], [("10.0.0.1:80", 1, False)])
        self.assertEqual(service.discovery.watchers, {})

    def test_stop(self) -> None:
        """
        A stopped service looks nothing up any more.
        """
        service, _ = self.startWith(self._FILE)
        self.successResultOf(service.stopService())
        queries = len(self.zone.queries)
        self.network.advance(600)
        self.assertEqual(len(self.zone.queries), queries)


class RealResolverTests(TestCase):
    """
    L{makeResolver}'s DNS client asks a C{twisted.names} server on
    loopback UDP.
    """

    async def test_lookup(self) -> None:
        """
        Addresses and SRV targets come back from a real server, over UDP.
        """
        zone = Zone()
        zone.set("web.test", A("127.0.0.2", ttl=7))
        zone.set("_http._tcp.web.test", SRVRecord("web.test", 8080, weight=2))
        factory = server.DNSServerFactory(authorities=[zone])
        udp = cast(IReactorUDP, globalReactor)
        port = udp.listenUDP(0, dns.DNSDatagramProtocol(factory), "127.0.0.1", 8192)
        self.addCleanup(port.stopListening)
        address = cast(IPv4Address, port.getHost())
        resolver = makeResolver(
            DiscoverySettings(server=("127.0.0.1", address.port)), globalReactor
        )
        resolved = await lookup(resolver, parseSource("dns:web.test:80"))
        self.assertEqual(_hosts(resolved.backends), ["127.0.0.2:80"])
        self.assertEqual(resolved.ttl, 7)
        services = await lookup(resolver, parseSource("srv:_http._tcp.web.test"))
        self.assertEqual(_hosts(services.backends), ["127.0.0.2:8080=2"])
        missing = await lookup(resolver, parseSource("dns:missing.test:80"))
        self.assertEqual(missing.backends, ())
