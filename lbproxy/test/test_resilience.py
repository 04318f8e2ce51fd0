"""
Fault injection through the proxy: real loopback backends that refuse,
reset, answer garbage or die, and the retries and ejections that hide them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from lbproxy.test.fakes import (
    FirstAvailable,
    RunningBackend,
    Scripted,
    answer,
    get,
    rawConnect,
    reactor,
    reset,
    startBackend,
    startProxy,
    startScripted,
)
from lbproxy.upstream.backends import Backend, BackendPool
from lbproxy.upstream.health import EjectionSettings, OutlierDetector
from lbproxy.upstream.retry import RetryBudget

Gen = Generator[Any, Any, None]


def _resetAfterHeaders(protocol: Scripted) -> None:
    transport: Any = protocol.transport
    transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    # Linger 0: once the data is flushed, closing sends RST, not FIN.
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.loseConnection()


class ResilienceTestCase(TestCase):
    """
    Helpers: dead backends.
    """

    @inlineCallbacks
    def dead(self) -> Generator[Any, Any, Backend]:
        """
        A backend whose port refuses connections.
        """
        running = yield startBackend(self, b"")
        yield running.port.stopListening()
        backend: Backend = running.backend
        return backend


class RetryTests(ResilienceTestCase):
    """
    Which failures are retried on another backend.
    """

    @inlineCallbacks
    def test_postRetriedWhenConnectionFailed(self) -> Gen:
        """
        A POST whose connection could not be made is sent to another
        backend, body intact.
        """
        dead = yield self.dead()
        alive = yield startBackend(self, b"stored")
        proxy = yield startProxy(self, [dead, alive.backend], chooser=FirstAvailable())
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(
            b"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
        )
        data = yield client.until(b"stored")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertEqual([r.body for r in alive.resource.received], [b"hello world"])
        self.assertEqual(dead.retries, 1)

    @inlineCallbacks
    def test_postNotRetriedAfterBackendGotIt(self) -> Gen:
        """
        A POST whose backend reset the connection after receiving it is not
        retried: the client gets 502 and the other backend nothing.
        """
        scripted = yield startScripted(self, reset)
        resets = scripted.backend
        alive = yield startBackend(self, b"stored")
        proxy = yield startProxy(self, [resets, alive.backend], chooser=FirstAvailable())
        response, _ = yield get(self, proxy.url(), method=b"POST")
        self.assertEqual(response.code, 502)
        self.assertEqual(alive.resource.received, [])
        self.assertEqual(len(scripted.connections), 1)

    @inlineCallbacks
    def test_getRetriedAfterReset(self) -> Gen:
        """
        A GET whose backend reset before answering is retried elsewhere.
        """
        resets = (yield startScripted(self, reset)).backend
        alive = yield startBackend(self, b"fine")
        proxy = yield startProxy(self, [resets, alive.backend], chooser=FirstAvailable())
        response, body = yield get(self, proxy.url())
        self.assertEqual((response.code, body), (200, b"fine"))
        self.assertIn("retries=1", proxy.lines[-1])

    @inlineCallbacks
    def test_garbageStatusLine(self) -> Gen:
        """
        A garbage status line is retried for a GET, and is a 502 for a POST.
        """
        garbage = (yield startScripted(self, answer(b"HTTP/1.1 OK-ish\r\n\r\n"))).backend
        alive = yield startBackend(self, b"fine")
        proxy = yield startProxy(self, [garbage, alive.backend], chooser=FirstAvailable())
        response, body = yield get(self, proxy.url())
        self.assertEqual((response.code, body), (200, b"fine"))
        response, _ = yield get(self, proxy.url(), method=b"POST")
        self.assertEqual(response.code, 502)
        self.assertEqual([r.method for r in alive.resource.received], [b"GET"])

    @inlineCallbacks
    def test_notRetriedOnceTheAnswerStarted(self) -> Gen:
        """
        A backend that resets after sending headers is not retried: the
        client sees a truncated response and the connection closes.
        """
        breaks = (yield startScripted(self, _resetAfterHeaders)).backend
        alive = yield startBackend(self, b"fine")
        proxy = yield startProxy(self, [breaks, alive.backend], chooser=FirstAvailable())
        client = yield rawConnect(self, proxy.portNumber)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield client.closed
        self.assertIn(b"Content-Length: 1000", client.data)
        self.assertTrue(client.data.endswith(b"partial"), client.data)
        self.assertEqual(alive.resource.received, [])

    @inlineCallbacks
    def test_retriesBounded(self) -> Gen:
        """
        A request is tried on at most 1 + retries backends; when none of
        them could be reached the answer is 503.
        """
        deads = []
        for _ in range(4):
            deads.append((yield self.dead()))
        proxy = yield startProxy(self, deads)
        response, _ = yield get(self, proxy.url())
        self.assertEqual(response.code, 503)
        self.assertEqual(sum(d.requests for d in deads), 3)

    @inlineCallbacks
    def test_budgetExhausted(self) -> Gen:
        """
        With the retry budget spent, a request whose backend could not be
        reached is answered 503 instead of being retried.
        """
        dead = yield self.dead()
        alive = yield startBackend(self, b"fine")
        budget = RetryBudget(Clock(), ratio=0, minPerSecond=0.1, window=10)
        proxy = yield startProxy(
            self, [dead, alive.backend], chooser=FirstAvailable(), budget=budget
        )
        codes = []
        for _ in range(3):
            response, _ = yield get(self, proxy.url())
            codes.append(response.code)
        self.assertEqual(codes, [200, 503, 503])


class EjectionTests(ResilienceTestCase):
    """
    Passive health checks through the proxy.
    """

    @inlineCallbacks
    def test_deadBackendEjectedAndReadmitted(self) -> Gen:
        """
        A backend killed during a run of GETs costs no failed request; after
        three failures it gets no more traffic; when it is back and its
        ejection ends, it takes traffic again.
        """
        victim: RunningBackend = yield startBackend(self, b"victim")
        other = yield startBackend(self, b"other")
        clock = Clock()
        pool = [victim.backend, other.backend]
        outliers = OutlierDetector(
            BackendPool(list(pool)), clock, EjectionSettings(maxFails=3, baseTime=10)
        )
        self.addCleanup(outliers.stop)
        proxy = yield startProxy(self, pool, outcomes=outliers)
        pooled = Headers({b"Connection": [b"close"]})
        for _ in range(4):
            response, _ = yield get(self, proxy.url(), headers=pooled)
            self.assertEqual(response.code, 200)
        portNumber = victim.backend.port
        yield victim.port.stopListening()
        victim.site.dropConnections()
        codes = []
        for _ in range(10):
            response, _ = yield get(self, proxy.url(), headers=pooled)
            codes.append(response.code)
        self.assertEqual(codes, [200] * 10)
        self.assertTrue(victim.backend.ejected)
        self.assertEqual(victim.backend.failures, 3)
        before = victim.backend.requests
        for _ in range(4):
            yield get(self, proxy.url())
        self.assertEqual(victim.backend.requests, before)
        restarted = yield TCP4ServerEndpoint(reactor, portNumber, interface="127.0.0.1").listen(
            victim.site
        )
        self.addCleanup(restarted.stopListening)
        clock.advance(10)
        self.assertFalse(victim.backend.ejected)
        bodies = set()
        for _ in range(4):
            _, body = yield get(self, proxy.url())
            bodies.add(body)
        self.assertEqual(bodies, {b"victim", b"other"})


class NoBackendTests(ResilienceTestCase):
    """
    When no backend can take traffic.
    """

    @inlineCallbacks
    def test_allDown503AtOnce(self) -> Gen:
        """
        With every backend down (health checks) or ejected, the proxy
        answers 503 with Retry-After at once, without trying any of them.
        """
        one = yield startBackend(self, b"one")
        two = yield startBackend(self, b"two")
        one.backend.healthy = False
        two.backend.ejected = True
        proxy = yield startProxy(self, [one.backend, two.backend])
        response, _ = yield get(self, proxy.url())
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(one.resource.received + two.resource.received, [])
