"""
Tests for L{lbproxy.admin.http}: the admin API over real loopback sockets
with twisted.web's client, and in memory where timing matters.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from lbproxy.admin.api import MAX_BODY, AdminAPI
from lbproxy.admin.http import adminSite
from lbproxy.test.fakes import reactor
from lbproxy.test.test_admin import Hooks, makeBalancer

TOKEN = b"0123456789abcdef"

Gen = Generator[Any, Any, None]


class _Answer:
    """
    A response and its whole body.
    """

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.status = response.code
        self.headers = response.headers
        self.length = response.length
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[0]

    def json(self) -> Any:
        return json.loads(self.body)


class OverHTTPTests(TestCase):
    """
    The admin site on a loopback port, used with twisted.web's client.
    """

    def setUp(self) -> None:
        self.balancer, _ = makeBalancer()
        self.hooks = Hooks()
        self.api = AdminAPI(self.balancer, self.hooks)

    @inlineCallbacks
    def listen(self, token: bytes | None = TOKEN) -> Gen:
        """
        Serve the admin API on a loopback port; stopped at cleanup.
        """
        site = adminSite(self.api, token, reactor)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.base = b"http://127.0.0.1:%d" % (port.getHost().port,)

    @inlineCallbacks
    def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes | None = None,
        token: bytes | None = TOKEN,
        chunked: bool = False,
        contentType: bytes | None = None,
    ) -> Generator[Any, Any, _Answer]:
        """
        Send one request with the bearer C{token} (none if L{None}).
        """
        headers = Headers()
        if contentType is not None:
            headers.addRawHeader(b"Content-Type", contentType)
        if token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + token)
        producer = None
        if body is not None:
            producer = FileBodyProducer(BytesIO(body))
            if chunked:
                producer.length = UNKNOWN_LENGTH
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(method, self.base + path, headers, producer)
        received = yield readBody(response)
        return _Answer(response, received)

    @inlineCallbacks
    def test_json(self) -> Gen:
        """
        An answer carries the API's status and JSON body, with its length,
        C{Cache-Control: no-store} and no C{Server} header.
        """
        yield self.listen()
        answer = yield self.request(b"GET", b"/pools")
        self.assertEqual(answer.status, 200)
        self.assertEqual([p["name"] for p in answer.json()["pools"]], ["web", "api"])
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.length, len(answer.body))
        self.assertEqual(answer.header(b"cache-control"), b"no-store")
        self.assertIsNone(answer.header(b"server"))

    @inlineCallbacks
    def test_changes(self) -> Gen:
        """
        Backends are added, changed and removed over HTTP; the address in
        the path is percent-decoded.
        """
        yield self.listen()
        added = yield self.request(
            b"POST", b"/pools/web/backends", b'{"address": "127.0.0.9:81", "weight": 2}'
        )
        self.assertEqual(added.status, 201)
        self.assertEqual(
            added.header(b"location"), b"/pools/web/backends/http%3A%2F%2F127.0.0.9%3A81"
        )
        changed = yield self.request(
            b"PATCH", b"/pools/web/backends/127.0.0.9%3A81", b'{"drain": true}'
        )
        self.assertEqual((changed.status, changed.json()["state"]), (200, "draining"))
        removed = yield self.request(b"DELETE", added.header(b"location") or b"")
        self.assertEqual(removed.status, 202)
        self.assertEqual(
            [b.authority for b in self.balancer.pool("web").backends.backends],
            ["127.0.0.2:80", "127.0.0.3:80"],
        )

    @inlineCallbacks
    def test_formContentType(self) -> Gen:
        """
        The body is read as JSON whatever its content type says (C{curl
        -d} sends JSON as a form).
        """
        yield self.listen()
        added = yield self.request(
            b"POST",
            b"/pools/web/backends",
            b'{"address": "127.0.0.9:81"}',
            contentType=b"application/x-www-form-urlencoded",
        )
        self.assertEqual(added.status, 201)

    @inlineCallbacks
    def test_errors(self) -> Gen:
        """
        The API's errors pass through: 404, and 405 with C{Allow}.
        """
        yield self.listen()
        missing = yield self.request(b"GET", b"/nope")
        self.assertEqual(missing.status, 404)
        self.assertIn("error", missing.json())
        wrong = yield self.request(b"DELETE", b"/pools")
        self.assertEqual((wrong.status, wrong.header(b"allow")), (405, b"GET"))

    @inlineCallbacks
    def test_config(self) -> Gen:
        """
        GET /config is TOML, or JSON when the client accepts it; POST
        /config applies.
        """
        yield self.listen()
        toml = yield self.request(b"GET", b"/config")
        self.assertEqual(toml.header(b"content-type"), b"application/toml; charset=utf-8")
        self.assertTrue(toml.body.startswith(b"[[pools]]"))
        asJSON = yield self.request(b"GET", b"/config?format=json")
        self.assertEqual(asJSON.json(), self.hooks.describe())
        applied = yield self.request(b"POST", b"/config", b'name = "x"\n')
        self.assertEqual((applied.status, applied.json()), (200, {"applied": True}))
        self.assertEqual(self.hooks.applied, [('name = "x"\n', "toml")])

    @inlineCallbacks
    def test_noToken(self) -> Gen:
        """
        With a token configured, a request without it is answered with 401,
        C{WWW-Authenticate: Bearer} and a JSON error, and changes nothing.
        """
        yield self.listen()
        answer = yield self.request(
            b"POST", b"/pools/web/backends", b'{"address": "127.0.0.9:81"}', token=None
        )
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header(b"www-authenticate"), b"Bearer")
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertIn("error", answer.json())
        self.assertEqual(len(self.balancer.pool("web").backends.backends), 2)

    @inlineCallbacks
    def test_wrongToken(self) -> Gen:
        """
        A request with another token is answered with 401 and changes
        nothing.
        """
        yield self.listen()
        answer = yield self.request(b"DELETE", b"/pools/web/backends/127.0.0.2:80", token=b"guess")
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header(b"www-authenticate"), b"Bearer")
        self.assertEqual(len(self.balancer.pool("web").backends.backends), 2)

    @inlineCallbacks
    def test_unauthenticatedNotFound(self) -> Gen:
        """
        Without the token even an unknown path is answered with 401: the
        API shows nothing of itself.
        """
        yield self.listen()
        answer = yield self.request(b"GET", b"/nope", token=None)
        self.assertEqual(answer.status, 401)

    @inlineCallbacks
    def test_noTokenConfigured(self) -> Gen:
        """
        Without a configured token, requests need no C{Authorization}.
        """
        yield self.listen(token=None)
        answer = yield self.request(b"GET", b"/pools", token=None)
        self.assertEqual(answer.status, 200)

    @inlineCallbacks
    def test_tooLarge(self) -> Gen:
        """
        A body larger than L{MAX_BODY}, with a length or chunked, is
        answered with 413 and changes nothing.
        """
        yield self.listen()
        body = b'{"address": "127.0.0.9:81"}'.ljust(MAX_BODY + 1)
        for chunked in (False, True):
            answer = yield self.request(b"POST", b"/pools/web/backends", body, chunked=chunked)
            self.assertEqual(answer.status, 413)
            self.assertIn("error", answer.json())
        self.assertEqual(len(self.balancer.pool("web").backends.backends), 2)
        fits = yield self.request(b"POST", b"/pools/web/backends", body[:MAX_BODY], chunked=True)
        self.assertEqual(fits.status, 201)

    @inlineCallbacks
    def test_quiet(self) -> Gen:
        """
        The site logs no line per request and no factory start or stop:
        only its port logs where it listens.
        """
        with capturedLogs() as events:
            yield self.listen()
            yield self.request(b"GET", b"/pools/web")
        texts = [formatEvent(event) or "" for event in events]
        self.assertEqual([t for t in texts if "/pools/web" in t or "AdminSite" in t], [])
        self.assertEqual(len([t for t in texts if t.startswith("lbproxy admin API ")]), 1)


class InMemoryTests(SynchronousTestCase):
    """
    The admin site over an in-memory transport.
    """

    def setUp(self) -> None:
        self.balancer, self.clock = makeBalancer()
        self.hooks = Hooks()
        site = adminSite(AdminAPI(self.balancer, self.hooks), TOKEN, self.clock)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, method: bytes, path: bytes, body: bytes = b"") -> None:
        self.channel.dataReceived(
            b"%s %s HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (method, path, TOKEN, len(body), body)
        )

    def test_answerWhenReady(self) -> None:
        """
        The answer is written when the API has it: a configuration is
        answered once it is applied.
        """
        gate: Deferred[None] = Deferred()
        self.hooks.gate = gate
        self.send(b"POST", b"/config", b"x = 1\n")
        self.assertEqual(self.transport.value(), b"")
        gate.callback(None)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(self.transport.value().endswith(b'{\n  "applied": true\n}\n'))

    def test_clientLeaves(self) -> None:
        """
        A client that leaves before its answer is ready leaves no error
        behind; the change it asked for is still made.
        """
        gate: Deferred[None] = Deferred()
        self.hooks.gate = gate
        self.send(b"POST", b"/config", b"x = 1\n")
        self.channel.connectionLost(Failure(ConnectionDone()))
        gate.callback(None)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.hooks.applied, [("x = 1\n", "toml")])

    def test_idleTimeout(self) -> None:
        """
        An idle connection is closed after a while, on the given clock.
        """
        self.clock.advance(3600)
        self.assertTrue(self.transport.disconnecting)
