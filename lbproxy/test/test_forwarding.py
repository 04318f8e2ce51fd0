"""
Tests for trusting proxies in front of lbproxy: C{--trusted-proxy} and the
PROXY protocol (C{haproxy:} listeners).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.headers import (
    ClientInfo,
    originalClient,
    requestHeaderLines,
    requestHeadersForBackend,
)
from lbproxy.listen import parseListen
from lbproxy.proxy import ProxySettings
from lbproxy.service import LoadBalancerConfig, LoadBalancerService
from lbproxy.test.fakes import rawConnect, reactor, startBackend, startProxy
from lbproxy.upstream.health import HealthSettings

Gen = Generator[Any, Any, None]
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def _trusted(address: str) -> bool:
    return address.startswith("10.")


class ForwardingHeadersTests(SynchronousTestCase):
    """
    Forwarding headers from trusted and untrusted peers.
    """

    def test_trustedChainExtended(self) -> None:
        """
        From a trusted peer, X-Forwarded-For and Forwarded are kept and the
        peer appended; its X-Forwarded-Proto and -Host are kept.
        """
        incoming = Headers(
            {
                b"X-Forwarded-For": [b"203.0.113.7, 10.0.0.9"],
                b"X-Forwarded-Proto": [b"https"],
                b"X-Forwarded-Host": [b"shop.example"],
                b"Forwarded": [b"for=203.0.113.7;proto=https"],
            }
        )
        out = requestHeadersForBackend(
            incoming, ClientInfo("10.0.0.2", False, b"internal", trusted=True)
        )
        self.assertEqual(
            out.getRawHeaders(b"x-forwarded-for"), [b"203.0.113.7, 10.0.0.9, 10.0.0.2"]
        )
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"shop.example"])
        self.assertEqual(
            out.getRawHeaders(b"forwarded"),
            [b"for=203.0.113.7;proto=https, for=10.0.0.2;host=internal;proto=http"],
        )

    def test_untrustedReplaced(self) -> None:
        """
        From any other peer, client-supplied forwarding headers are replaced.
        """
        incoming = Headers({b"X-Forwarded-For": [b"1.2.3.4"], b"X-Forwarded-Proto": [b"https"]})
        out = requestHeadersForBackend(incoming, ClientInfo("198.51.100.1", False, b"h"))
        self.assertEqual(out.getRawHeaders(b"x-forwarded-for"), [b"198.51.100.1"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"http"])

    def test_untrustedLines(self) -> None:
        """
        The lines sent for an untrusted client depend on its address,
        scheme and Host alone, and each client gets its own (they are made
        once per client and kept): IPv4, IPv6, no address, a Host that is
        not a token.
        """
        incoming = Headers({b"Forwarded": [b"for=6.6.6.6"], b"X-Real-IP": [b"6.6.6.6"]})
        table = [
            (
                ClientInfo("198.51.100.1", False, b"h"),
                [
                    (b"X-Forwarded-For", b"198.51.100.1"),
                    (b"X-Forwarded-Proto", b"http"),
                    (b"X-Forwarded-Host", b"h"),
                    (b"Forwarded", b"for=198.51.100.1;host=h;proto=http"),
                    (b"X-Real-IP", b"198.51.100.1"),
                ],
            ),
            (
                ClientInfo("2001:db8::1", True, b"h"),
                [
                    (b"X-Forwarded-For", b"2001:db8::1"),
                    (b"X-Forwarded-Proto", b"https"),
                    (b"X-Forwarded-Host", b"h"),
                    (b"Forwarded", b'for="[2001:db8::1]";host=h;proto=https'),
                    (b"X-Real-IP", b"2001:db8::1"),
                ],
            ),
            (
                ClientInfo(None, True, b"a b"),
                [
                    (b"X-Forwarded-Proto", b"https"),
                    (b"X-Forwarded-Host", b"a b"),
                    (b"Forwarded", b'for=unknown;host="a b";proto=https'),
                ],
            ),
            (
                ClientInfo("198.51.100.1", True, None),
                [
                    (b"X-Forwarded-For", b"198.51.100.1"),
                    (b"X-Forwarded-Proto", b"https"),
                    (b"Forwarded", b"for=198.51.100.1;proto=https"),
                    (b"X-Real-IP", b"198.51.100.1"),
                ],
            ),
        ]
        for _ in range(2):
            for client, expected in table:
                self.assertEqual(requestHeaderLines(incoming, client), expected, client)

    def test_realIPOfTrustedPeer(self) -> None:
        """
        From a trusted peer, C{X-Real-IP} is replaced by the original
        client it vouches for (C{ClientInfo.original}, as
        L{originalClient} finds it), or without one by the last
        C{X-Forwarded-For} address, or without that by the peer; from an
        untrusted peer it is the peer, whatever the headers say.
        """
        incoming = Headers(
            {b"X-Forwarded-For": [b"6.6.6.6, 203.0.113.7, 10.0.0.9"], b"X-Real-IP": [b"6.6.6.6"]}
        )

        def realIP(client: ClientInfo, headers: Headers = incoming) -> Sequence[bytes] | None:
            return requestHeadersForBackend(headers, client).getRawHeaders(b"x-real-ip")

        original = originalClient(incoming, "10.0.0.2", _trusted)
        self.assertEqual(
            realIP(ClientInfo("10.0.0.2", False, b"h", trusted=True, original=original)),
            [b"203.0.113.7"],
        )
        self.assertEqual(realIP(ClientInfo("10.0.0.2", False, b"h", trusted=True)), [b"10.0.0.9"])
        self.assertEqual(
            realIP(ClientInfo("10.0.0.2", False, b"h", trusted=True), Headers()), [b"10.0.0.2"]
        )
        self.assertEqual(realIP(ClientInfo("198.51.100.1", False, b"h")), [b"198.51.100.1"])

    def test_originalClient(self) -> None:
        """
        The original client is the right-most untrusted address of the
        chain a trusted peer vouches for; an untrusted peer is the client.
        """
        chain = Headers({b"X-Forwarded-For": [b"6.6.6.6, 203.0.113.7", b"10.0.0.9"]})
        self.assertEqual(originalClient(chain, "10.0.0.2", _trusted), "203.0.113.7")
        self.assertEqual(originalClient(chain, "198.51.100.1", _trusted), "198.51.100.1")
        allTrusted = Headers({b"X-Forwarded-For": [b"10.0.0.1, 10.0.0.9"]})
        self.assertEqual(originalClient(allTrusted, "10.0.0.2", _trusted), "10.0.0.1")
        self.assertEqual(originalClient(Headers(), "10.0.0.2", _trusted), "10.0.0.2")


class TrustedProxyTests(TestCase):
    """
    Through the proxy.
    """

    @inlineCallbacks
    def test_trustedPeer(self) -> Gen:
        """
        A trusted peer's X-Forwarded-For reaches the backend extended, and
        the access log names the original client.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(
            self, [backend.backend], settings=ProxySettings(trustedProxies=LOOPBACK)
        )
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"203.0.113.7, 127.0.0.1"])
        self.assertTrue(proxy.lines[-1].startswith("203.0.113.7 "), proxy.lines[-1])


class ProxyProtocolTests(TestCase):
    """
    C{haproxy:} listeners read the PROXY protocol header.
    """

    @inlineCallbacks
    def test_realClientForwarded(self) -> Gen:
        """
        Behind an L4 balancer speaking PROXY protocol v1, the backend is
        told the real client's address, and so is the access log.
        """
        backend = yield startBackend(self, b"ok")
        lines: list[str] = []
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen("haproxy:tcp:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(lines.append),
                health=HealthSettings(interval=0),
            ),
            reactor,
            reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        port = service.ports[0].getHost().port  # type: ignore[attr-defined]
        client = yield rawConnect(self, port)
        client.transport.write(
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        yield client.until(b"\r\n\r\nok")
        [seen] = backend.resource.received
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"203.0.113.7"])
        self.assertTrue(lines[-1].startswith("203.0.113.7 "), lines[-1])
