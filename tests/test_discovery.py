"""
Backends from DNS end to end: the installed C{twistd lbproxy} with
C{--backends dns:...} or C{srv:...} and C{--resolver} pointing at a
C{twisted.names} server in this process (L{tests.dnssupport}), whose
records the tests change while lbproxy runs; backends on 127.0.0.2,
127.0.0.3 and 127.0.0.4.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.names import dns
from twisted.trial.unittest import TestCase

from tests.configsupport import Answer, KeepAlive, get
from tests.dnssupport import DNSServer, NamedBackend, namedBackends
from tests.support import Twistd, freePort, startTwistd, until

_NAME = "web.test"


def _A(address: str, ttl: int = 1) -> dns.Record_A:
    return dns.Record_A(address, ttl=ttl)


class DiscoveryCase(TestCase):
    """
    A DNS server, and twistd lbproxy asking it.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.dns = DNSServer(self)
        self.port = freePort()

    async def start(self, backends: str, *extra: str) -> Twistd:
        """
        Start twistd lbproxy balancing over C{backends}, looked up on the
        test's server, re-resolved at least every second.
        """
        self.process = await startTwistd(
            self,
            [
                "--backends",
                backends,
                "--resolver",
                self.dns.address,
                "--dns-min-ttl",
                "1",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--health-interval",
                "0",
                "--access-log",
                "none",
                *extra,
            ],
            self.directory,
        )
        return self.process

    async def logged(self, text: str, what: str) -> None:
        """
        Wait until twistd has logged C{text}.
        """
        await until(lambda: text in self.process.out, what)

    async def answers(self, count: int) -> list[Answer]:
        """
        C{count} GETs in a row, each on a connection of its own.
        """
        return [await get(self.port) for _ in range(count)]

    async def backendsOf(self, count: int) -> list[str | None]:
        """
        Which backend answered each of C{count} GETs.
        """
        return [answer.backend for answer in await self.answers(count)]


class AddressTests(DiscoveryCase):
    """
    C{dns:NAME:PORT}: every A record's address is a backend, added and
    drained as the records change.
    """

    async def test_addedAndRemoved(self) -> None:
        """
        An address added to the name starts getting requests; one removed
        gets no new ones, while its request in flight finishes.
        """
        b2, b3 = namedBackends(self, ["127.0.0.2", "127.0.0.3"])
        self.dns.zone.set(_NAME, _A("127.0.0.2"))
        await self.start(f"dns:{_NAME}:{b2.port}", "--chooser", "round-robin")
        await self.logged(
            f"pool default: dns:{_NAME}:{b2.port} now 127.0.0.2:{b2.port} (+127.0.0.2:{b2.port})",
            "the first answer",
        )
        self.assertEqual(await self.backendsOf(3), ["127.0.0.2"] * 3)

        self.dns.zone.set(_NAME, _A("127.0.0.2"), _A("127.0.0.3"))
        await self.logged(f"(+127.0.0.3:{b3.port})", "the address added")
        self.assertEqual(sorted(await self.backendsOf(4)), ["127.0.0.2"] * 2 + ["127.0.0.3"] * 2)

        held = [get(self.port, "/slow?hold"), get(self.port, "/slow?hold")]
        await until(lambda: len(b2.held) == len(b3.held) == 1, "a held request on each")
        self.dns.zone.set(_NAME, _A("127.0.0.3"))
        await self.logged(f"now 127.0.0.3:{b3.port} (-127.0.0.2:{b2.port})", "the address removed")
        before = b2.requests
        self.assertEqual(await self.backendsOf(4), ["127.0.0.3"] * 4)
        self.assertEqual(b2.requests, before)
        b2.release()
        b3.release()
        finished = [await answer for answer in held]
        self.assertEqual(
            sorted((a.status, a.body) for a in finished),
            [
                (200, b"127.0.0.2"),
                (200, b"127.0.0.3"),
            ],
        )
        await self.logged(f"backend 127.0.0.2:{b2.port} leaves pool default", "the drain")

    async def test_ttl(self) -> None:
        """
        The name is not looked up again before its TTL runs out, and is
        soon after.
        """
        [b2] = namedBackends(self, ["127.0.0.2"])
        self.dns.zone.set(_NAME, _A("127.0.0.2", ttl=3))
        await self.start(f"dns:{_NAME}:{b2.port}")
        await until(lambda: len(self.dns.queries(_NAME)) >= 2, "the name to be looked up again")
        first, second = self.dns.queries(_NAME)[:2]
        self.assertGreaterEqual(second.at - first.at, 2.9)
        # "Soon after", with room for a busy machine: well before the
        # default max TTL (300 s) or the next lookup of a 3 s TTL plus one.
        self.assertLess(second.at - first.at, 10.0)
        self.assertEqual(len(self.dns.queries(_NAME, dns.AAAA)), 2)

    async def test_failureAndEmptyKeep(self) -> None:
        """
        While the server fails, and while the name is gone, the last
        addresses keep getting requests; each is said once; when the name
        is back the same addresses go on.
        """
        [b2] = namedBackends(self, ["127.0.0.2"])
        self.dns.zone.set(_NAME, _A("127.0.0.2"))
        await self.start(f"dns:{_NAME}:{b2.port}")
        await self.logged("(+127.0.0.2", "the first answer")

        self.dns.fail()
        await self.logged(
            f"dns:{_NAME}:{b2.port} lookup failed (server failure); keeping "
            f"127.0.0.2:{b2.port}; trying again every 1 s",
            "the failure",
        )
        failedAt = len(self.dns.queries(_NAME))
        await until(lambda: len(self.dns.queries(_NAME)) >= failedAt + 2, "more failed lookups")
        self.assertEqual(await self.backendsOf(2), ["127.0.0.2"] * 2)
        self.assertEqual(self.process.out.count("lookup failed"), 1)

        self.dns.fail(False)
        self.dns.zone.forget(_NAME)
        await self.logged(
            f"dns:{_NAME}:{b2.port} resolved to no addresses; keeping 127.0.0.2:{b2.port}",
            "the empty answer",
        )
        self.assertEqual(await self.backendsOf(2), ["127.0.0.2"] * 2)

        self.dns.zone.set(_NAME, _A("127.0.0.2"))
        await self.logged(
            f"dns:{_NAME}:{b2.port} resolves again, unchanged: 127.0.0.2:{b2.port}", "the name back"
        )
        self.assertNotIn("leaves pool", self.process.out)

    async def test_notThereYet(self) -> None:
        """
        Started before the name exists, lbproxy answers 503 with
        Retry-After; once the name appears, requests go to its address.
        """
        [b2] = namedBackends(self, ["127.0.0.2"])
        await self.start(f"dns:{_NAME}:{b2.port}")
        await self.logged("no backends from it yet", "the first lookup")
        [answer] = await self.answers(1)
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.headers.get("retry-after"), ["1"])

        self.dns.zone.set(_NAME, _A("127.0.0.2"))
        await self.logged("(+127.0.0.2", "the name to appear")
        [answer] = await self.answers(1)
        self.assertEqual((answer.status, answer.backend), (200, "127.0.0.2"))


class ServiceTests(DiscoveryCase):
    """
    C{srv:_service._proto.NAME}: every SRV target, on its port, with its
    weight.
    """

    def services(self) -> tuple[NamedBackend, NamedBackend]:
        """
        C{_http._tcp.web.test}: a.test (127.0.0.2) with weight 30 and b.test
        (127.0.0.3) with weight 10, each on a port of its own.
        """
        a = NamedBackend(self, "127.0.0.2", 0, "a")
        b = NamedBackend(self, "127.0.0.3", 0, "b")
        zone = self.dns.zone
        zone.set(
            f"_http._tcp.{_NAME}",
            dns.Record_SRV(10, 30, a.port, "a.test", ttl=30),
            dns.Record_SRV(10, 10, b.port, "b.test", ttl=30),
        )
        zone.set("a.test", _A("127.0.0.2", ttl=30))
        zone.set("b.test", _A("127.0.0.3", ttl=30))
        return a, b

    async def shares(self, chooser: str, count: int) -> Sequence[str | None]:
        a, b = self.services()
        await self.start(f"srv:_http._tcp.{_NAME}", "--chooser", chooser)
        await self.logged(f"now 127.0.0.2:{a.port}=30, 127.0.0.3:{b.port}=10", "the SRV answer")
        client = KeepAlive(self, self.port)
        return [(await client.get()).backend for _ in range(count)]

    async def test_roundRobin(self) -> None:
        """
        Smooth weighted round robin gives each target its weight's share.
        """
        backends = await self.shares("round-robin", 80)
        self.assertEqual((backends.count("a"), backends.count("b")), (60, 20))

    async def test_random(self) -> None:
        """
        Weighted random choice gives each target roughly its weight's
        share.
        """
        backends = await self.shares("random", 400)
        self.assertEqual(backends.count("a") + backends.count("b"), 400)
        self.assertTrue(250 <= backends.count("a") <= 350, backends.count("a"))
