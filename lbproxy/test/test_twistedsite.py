"""
Tests for L{lbproxy.proxy.ReverseProxyResource} mounted in a plain
twisted.web L{Site}, as docs/twisted-users.md shows: the resource serves
twisted.web's own requests (bodies received into C{content}, answers
through twisted.web's C{Request.write}) over real loopback sockets, while
lbproxy's edge uses its own whole-response path for the same answers.
"""

from __future__ import annotations

from collections.abc import Generator
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.proxy import ReverseProxyResource, proxyRecordOf
from lbproxy.test.fakes import startBackend
from lbproxy.upstream.backends import BackendPool
from lbproxy.upstream.pool import Upstream, UpstreamSettings

Gen = Generator[Any, Any, None]


def _echoLength(request: Request) -> bytes:
    """
    A backend answer that says how much body it received.
    """
    assert request.content is not None
    request.content.seek(0)
    return b"got %d bytes" % (len(request.content.read()),)


class TwistedSiteTests(TestCase):
    """
    A twisted.web L{Site} of a Twisted user's own, with the proxy resource
    mounted in it, relays requests to the backends, round robin.
    """

    @inlineCallbacks
    def setUp(self) -> Gen:  # type: ignore[override]
        self.first = yield startBackend(self, b"one", _echoLength)
        self.second = yield startBackend(self, b"two", _echoLength)
        upstream = Upstream(reactor, reactor, UpstreamSettings())
        self.addCleanup(upstream.close)
        self.resource = ReverseProxyResource(
            BackendPool([self.first.backend, self.second.backend]),
            RoundRobinChooser(),
            upstream,
            reactor,
        )
        self.site = Site(self.resource)
        self.seen: list[Request] = []
        self.site.log = self.seen.append  # type: ignore[method-assign,assignment]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.addCleanup(port.stopListening)
        self.url = b"http://127.0.0.1:%d/path?q=1" % (port.getHost().port,)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)

    @inlineCallbacks
    def request(self, method: bytes, body: bytes | None = None) -> Generator[Any, Any, Any]:
        agent = Agent(reactor, pool=self.pool)
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response = yield agent.request(method, self.url, Headers({b"Host": [b"h"]}), producer)
        content = yield readBody(response)
        return response, content

    @inlineCallbacks
    def test_getAndPost(self) -> Gen:
        """
        GETs and a POST with a 100 KiB body (received whole by twisted.web
        first) are relayed, alternating between the backends, with the
        target as it came.
        """
        answers = []
        for method, body in [(b"GET", None), (b"POST", b"x" * 100_000), (b"GET", None)]:
            response, content = yield self.request(method, body)
            self.assertEqual(response.code, 200)
            answers.append(content)
        self.assertEqual(answers, [b"got 0 bytes", b"got 100000 bytes", b"got 0 bytes"])
        self.assertEqual(len(self.first.resource.received), 2)
        self.assertEqual(len(self.second.resource.received), 1)
        self.assertEqual(self.second.resource.received[0].body, b"x" * 100_000)
        self.assertEqual(self.first.resource.received[0].uri, b"/path?q=1")

    @inlineCallbacks
    def test_recordForTheSitesLog(self) -> Gen:
        """
        The site's own log sees each request finished, with the proxy's
        record of the backend it went to.
        """
        yield self.request(b"GET")
        self.assertEqual(len(self.seen), 1)
        record = proxyRecordOf(self.seen[0])
        assert record is not None
        self.assertEqual(record.backend, self.first.backend)
        self.assertEqual(self.seen[0].code, 200)

    @inlineCallbacks
    def test_noBackend(self) -> Gen:
        """
        With no backend available, the Twisted user's site answers 503.
        """
        for backend in (self.first.backend, self.second.backend):
            backend.healthy = False
        response, content = yield self.request(b"GET")
        self.assertEqual(response.code, 503)
        self.assertIn(b"No backend is available", content)
