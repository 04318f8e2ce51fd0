"""
Tests for L{lbproxy.routing}: the checks of a route's host and path, how a
route matches and rewrites a request, the route table's first match, and
the L{Router} relaying whole requests through each pool's proxy to
in-memory backends (L{lbproxy.test.memorynet}), where what the backend
and the client see can be read.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lbproxy.http.headers import HeaderEdits
from lbproxy.proxy import ReverseProxyResource
from lbproxy.routing import (
    NO_ROUTE_STATUSES,
    RouteError,
    Router,
    RouteRule,
    RouteTable,
    Routing,
    checkRoutes,
    normalHostPattern,
    normalPathPrefix,
)
from lbproxy.test.fakes import FirstAvailable
from lbproxy.test.memorynet import Answer, MemoryBackend, MemoryNetwork
from lbproxy.upstream.backends import BackendPool
from lbproxy.upstream.pool import UpstreamSettings


class HostPatternTests(SynchronousTestCase):
    """
    A route's host is a host name or address, or C{*.} and a domain.
    """

    def test_accepted(self) -> None:
        """
        Names, wildcards and addresses are lower-cased and trimmed; an IPv6
        address loses its brackets, as the Host it is compared with does.
        """
        cases = [
            ("example.com", "example.com"),
            ("  API.Example.COM ", "api.example.com"),
            ("*.Example.com", "*.example.com"),
            ("localhost", "localhost"),
            ("my_host-1.internal", "my_host-1.internal"),
            ("10.0.0.1", "10.0.0.1"),
            ("[2001:DB8::1]", "2001:db8::1"),
            ("::1", "::1"),
        ]
        for pattern, expected in cases:
            self.assertEqual(normalHostPattern(pattern), expected, pattern)

    def test_refused(self) -> None:
        """
        Anything else is refused with a message that shows the form
        expected: an empty host, a bare or misplaced wildcard, empty
        labels (nginx's C{.example.com} included), other characters, a
        port (the Host's port is not compared, so such a route could never
        match), or brackets around something that is not an IPv6 address.
        """
        for pattern in [
            "",
            " ",
            "*",
            "*.",
            "*example.com",
            "a.*.example.com",
            "*.*.example.com",
            "a..b",
            ".example.com",
            "*..example.com",
            "exa mple.com",
            "example.com/",
            "user@example.com",
            "example.com:8080",
            "*.example.com:443",
            "[::1]:80",
            "[::1",
            "[example.com]",
            "caf\u00e9.example",
        ]:
            with self.assertRaises(RouteError, msg=repr(pattern)) as raised:
                normalHostPattern(pattern)
            self.assertIn("like example.com or *.example.com", str(raised.exception))


class PathPrefixTests(SynchronousTestCase):
    """
    A route's path is a plain path prefix.
    """

    def test_accepted(self) -> None:
        """
        A trailing C{/} is dropped, so C{/} is the empty prefix (every
        path).
        """
        cases = [
            ("/api", b"/api"),
            ("/api/", b"/api"),
            ("/api/v1//", b"/api/v1"),
            ("/", b""),
            ("/%7Euser", b"/%7Euser"),
        ]
        for prefix, expected in cases:
            self.assertEqual(normalPathPrefix(prefix), expected, prefix)

    def test_refused(self) -> None:
        """
        A prefix must start with C{/} and be plain ASCII without spaces, a
        query or a fragment.
        """
        for prefix in ["", "api", "*", "/a b", "/a?b=1", "/a#top", "/a\r\n", "/\u00e9t\u00e9"]:
            with self.assertRaises(RouteError, msg=repr(prefix)):
                normalPathPrefix(prefix)


class RouteRuleTests(SynchronousTestCase):
    """
    What one route matches, and the target it sends on.
    """

    def test_hosts(self) -> None:
        """
        A route matches a Host equal to one of its patterns; C{*.domain}
        matches exactly one label under the domain (not the domain itself,
        nor two labels); a route without hosts matches every Host,
        including none.
        """
        rule = RouteRule(pool="p", hosts=("example.com", "*.apps.example.com"))
        cases = [
            ("example.com", True),
            ("www.example.com", False),
            ("a.apps.example.com", True),
            ("my-app.apps.example.com", True),
            ("apps.example.com", False),
            (".apps.example.com", False),
            ("a.b.apps.example.com", False),
            ("xapps.example.com", False),
            ("example.com.evil", False),
            ("", False),
        ]
        for host, expected in cases:
            self.assertEqual(rule.matchesHost(host), expected, host)
        everyHost = RouteRule(pool="p")
        for host in ["example.com", "a.b.c", "", "10.0.0.1"]:
            self.assertTrue(everyHost.matchesHost(host), host)

    def test_paths(self) -> None:
        """
        A path prefix matches at C{/} boundaries: the prefix itself, with a
        query, or anything under it; not a longer name that begins with
        it. The empty prefix matches every target, C{*} included.
        """
        rule = RouteRule(pool="p", pathPrefix=b"/api")
        cases = [
            (b"/api", True),
            (b"/api/", True),
            (b"/api/users/7", True),
            (b"/api?x=1", True),
            (b"/apiary", False),
            (b"/ap", False),
            (b"/", False),
            (b"/v1/api", False),
            (b"/API", False),
            (b"*", False),
        ]
        for target, expected in cases:
            self.assertEqual(rule.matchesPath(target), expected, target)
        for target in [b"/", b"/anything?at=all", b"*"]:
            self.assertTrue(RouteRule(pool="p").matchesPath(target), target)

    def test_stripPrefix(self) -> None:
        """
        With C{stripPrefix}, the prefix is taken off the target and what is
        left always starts with C{/}; the query is kept.
        """
        rule = RouteRule(pool="p", pathPrefix=b"/api", stripPrefix=True)
        cases = [
            (b"/api/users?id=7", b"/users?id=7"),
            (b"/api/", b"/"),
            (b"/api", b"/"),
            (b"/api?x=1", b"/?x=1"),
            (b"/api//double", b"//double"),
        ]
        for target, expected in cases:
            self.assertEqual(rule.targetFor(target), expected, target)

    def test_targetUnchanged(self) -> None:
        """
        Without C{stripPrefix}, or without a prefix, the target is sent as
        it came.
        """
        self.assertEqual(RouteRule(pool="p", pathPrefix=b"/api").targetFor(b"/api/x"), b"/api/x")
        self.assertEqual(RouteRule(pool="p", stripPrefix=True).targetFor(b"/api/x"), b"/api/x")


class RouteTableTests(SynchronousTestCase):
    """
    Routes are tried in order.
    """

    def test_firstMatchWins(self) -> None:
        """
        The first route that matches both Host and path is the one: a
        catch-all placed first hides the routes after it.
        """
        api = RouteRule(pool="api", hosts=("example.com",), pathPrefix=b"/api")
        site = RouteRule(pool="site", hosts=("example.com",))
        other = RouteRule(pool="other")
        table = RouteTable((api, site, other))
        self.assertIs(table.match("example.com", b"/api/x"), api)
        self.assertIs(table.match("example.com", b"/apix"), site)
        self.assertIs(table.match("www.example.com", b"/api/x"), other)
        self.assertIs(RouteTable((other, api)).match("example.com", b"/api/x"), other)

    def test_noMatch(self) -> None:
        """
        A request no route matches has no route; a table answers it with
        404 unless told to use 421.
        """
        table = RouteTable((RouteRule(pool="api", hosts=("example.com",)),))
        self.assertIsNone(table.match("other.example", b"/"))
        self.assertIsNone(RouteTable(()).match("example.com", b"/"))
        self.assertEqual(table.noRouteStatus, 404)
        self.assertEqual(NO_ROUTE_STATUSES, (404, 421))


class CheckRoutesTests(SynchronousTestCase):
    """
    Every route must name a pool that exists.
    """

    def test_unknownPool(self) -> None:
        """
        The first route naming an unknown pool is reported by its number
        (from 1), with the pools there are.
        """
        rules = [RouteRule(pool="web"), RouteRule(pool="api"), RouteRule(pool="gone")]
        with self.assertRaises(RouteError) as raised:
            checkRoutes(rules, ["web"])
        self.assertEqual(
            str(raised.exception), "route 2 names pool 'api', which is not defined (pools: web)"
        )
        with self.assertRaises(RouteError) as none:
            checkRoutes(rules, [])
        self.assertIn("(pools: none)", str(none.exception))

    def test_known(self) -> None:
        """
        Routes that all name known pools pass.
        """
        checkRoutes([RouteRule(pool="web"), RouteRule(pool="api")], ["api", "web"])
        checkRoutes([], [])


def _respondWithHeaders(request: Request) -> bytes:
    request.setHeader(b"X-Powered-By", b"php/5")
    request.setHeader(b"X-Internal", b"secret")
    request.setHeader(b"Cache-Control", b"no-store")
    return b"with headers"


class RouterTests(SynchronousTestCase):
    """
    The router relays each request to its route's pool: one in-memory
    backend per pool, named after it, so the body says which pool served.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.servers: dict[str, MemoryBackend] = {}
        self.proxies: dict[str, ReverseProxyResource] = {}
        for number, name in enumerate(["api", "web", "apps", "edited"], start=1):
            respond = _respondWithHeaders if name == "edited" else None
            server = self.network.backend(name.encode(), f"10.0.0.{number}", respond=respond)
            self.servers[name] = server
            self.proxies[name] = ReverseProxyResource(
                BackendPool([server.backend]),
                FirstAvailable(),
                self.network.upstream(UpstreamSettings()),
                self.network.clock,
            )
        self.router = Router(self.routing(self.table()))
        self.site = self.network.proxySite(self.router)

    def table(self, noRouteStatus: int = 404) -> RouteTable:
        return RouteTable(
            (
                RouteRule(
                    pool="edited",
                    hosts=("edited.example.com",),
                    requestHeaders=HeaderEdits(
                        set=((b"X-Version", b"v2"), (b"X-Forwarded-Proto", b"https")),
                        remove=frozenset({b"x-debug", b"cookie"}),
                    ),
                    responseHeaders=HeaderEdits(
                        set=((b"Cache-Control", b"max-age=60"), (b"X-Frame-Options", b"DENY")),
                        remove=frozenset({b"x-powered-by", b"x-internal"}),
                    ),
                ),
                RouteRule(pool="api", hosts=("example.com",), pathPrefix=b"/api", stripPrefix=True),
                RouteRule(pool="apps", hosts=("*.apps.example.com",)),
                RouteRule(pool="web", hosts=("example.com", "www.example.com")),
            ),
            noRouteStatus,
        )

    def routing(self, table: RouteTable, allowedHosts: frozenset[str] | None = None) -> Routing:
        return Routing(table=table, pools=self.proxies, allowedHosts=allowedHosts)

    def get(self, url: bytes, headers: dict[bytes, list[bytes]] | None = None) -> Answer:
        """
        The answer to a GET of C{url} (its authority is the Host).
        """
        d = self.network.request(self.site, b"GET", url, headers)
        self.network.flush()
        return self.successResultOf(d)

    def received(self) -> dict[str, list[bytes]]:
        """
        The targets each backend received.
        """
        return {
            name: [seen.uri for seen in server.resource.received]
            for name, server in self.servers.items()
            if server.resource.received
        }

    def test_hostAndPathPickThePool(self) -> None:
        """
        Each request is served by the pool of the first route matching its
        Host and path.
        """
        cases = [
            (b"http://example.com/", b"web"),
            (b"http://www.example.com/api/x", b"web"),
            (b"http://example.com/api/x", b"api"),
            (b"http://example.com/apiary", b"web"),
            (b"http://shop.apps.example.com/", b"apps"),
        ]
        for url, pool in cases:
            answer = self.get(url)
            self.assertEqual((answer.code, answer.body), (200, pool), url)

    def test_hostCaseAndPortIgnored(self) -> None:
        """
        The Host is compared without its case or its port; the backend
        gets it as the client sent it.
        """
        answer = self.get(b"http://WWW.Example.COM:8080/")
        self.assertEqual(answer.body, b"web")
        [seen] = self.servers["web"].resource.received
        self.assertEqual(seen.header(b"host"), [b"WWW.Example.COM:8080"])

    def test_wildcardIsOneLabel(self) -> None:
        """
        C{*.apps.example.com} serves any one label under the domain; the
        domain itself and deeper names match no route: 404, and no backend
        sees them.
        """
        self.assertEqual(self.get(b"http://a.apps.example.com/").body, b"apps")
        for url in [b"http://apps.example.com/", b"http://a.b.apps.example.com/"]:
            answer = self.get(url)
            self.assertEqual(answer.code, 404, url)
        self.assertEqual(self.received(), {"apps": [b"/"]})

    def test_absoluteFormRoutedByItsAuthority(self) -> None:
        """
        An absolute-form target is routed by its authority, not by the
        Host header it came with.
        """
        client = self.network.raw(
            self.site,
            b"GET http://example.com/api/users HTTP/1.1\r\nHost: www.example.com\r\n"
            b"Connection: close\r\n\r\n",
        )
        self.network.flush()
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 "), client.data)
        self.assertTrue(client.data.endswith(b"\r\n\r\napi"), client.data)
        self.assertEqual(self.received(), {"api": [b"/users"]})

    def test_prefixStripped(self) -> None:
        """
        A route with C{stripPrefix} sends the backend the path below its
        prefix (C{/} for the prefix itself), query included.
        """
        for url in [b"/api/users?id=7", b"/api", b"/api/", b"/api?q=1"]:
            self.get(b"http://example.com" + url)
        self.assertEqual(self.received(), {"api": [b"/users?id=7", b"/", b"/", b"/?q=1"]})

    def test_prefixKeptWithoutStrip(self) -> None:
        """
        Without C{stripPrefix}, the backend gets the path as the client
        sent it.
        """
        self.router.install(self.routing(RouteTable((RouteRule(pool="api", pathPrefix=b"/api"),))))
        self.get(b"http://example.com/api/users?id=7")
        self.assertEqual(self.received(), {"api": [b"/api/users?id=7"]})

    def test_catchAll(self) -> None:
        """
        A table of one route without host or path serves every request,
        even one without a Host (HTTP/1.0), whose backend is then named as
        the Host; a table whose routes all name hosts has no route for it.
        """
        noHost = b"GET /x HTTP/1.0\r\n\r\n"
        client = self.network.raw(self.site, noHost)
        self.network.flush()
        self.assertTrue(client.data.startswith(b"HTTP/1.0 404 "), client.data)
        self.router.install(self.routing(RouteTable((RouteRule(pool="api"),))))
        for url in [b"http://any.example/x", b"http://example.com/"]:
            self.assertEqual(self.get(url).body, b"api", url)
        client = self.network.raw(self.site, noHost)
        self.network.flush()
        self.assertTrue(client.data.endswith(b"\r\n\r\napi"), client.data)
        self.assertEqual(
            self.servers["api"].resource.received[-1].header(b"host"), [b"10.0.0.1:80"]
        )

    def test_noRoute404(self) -> None:
        """
        A request no route matches is answered 404 by the proxy itself,
        naming the reason; no backend sees it.
        """
        answer = self.get(b"http://unknown.example/")
        self.assertEqual(
            (answer.code, answer.body), (404, b"404 Not Found: No route for this path.\n")
        )
        self.assertEqual(self.received(), {})
        self.assertIn('"GET / HTTP/1.1" 404', self.network.accessLog[-1])

    def test_noRoute421(self) -> None:
        """
        A table whose C{noRouteStatus} is 421 answers a request it has no
        route for with 421 Misdirected Request.
        """
        self.router.install(self.routing(self.table(noRouteStatus=421)))
        answer = self.get(b"http://unknown.example/")
        self.assertEqual(
            (answer.code, answer.body), (421, b"421 Misdirected Request: No route for this host.\n")
        )
        self.assertEqual(self.received(), {})

    def test_allowHost421(self) -> None:
        """
        With C{--allow-host}, a Host not in the list is answered 421 even
        when a route would take it; an allowed Host is routed as usual.
        """
        self.router.install(self.routing(self.table(), frozenset({"example.com"})))
        answer = self.get(b"http://www.example.com/")
        self.assertEqual(
            (answer.code, answer.body),
            (421, b"421 Misdirected Request: This proxy does not serve that host.\n"),
        )
        self.assertEqual(self.received(), {})
        self.assertEqual(self.get(b"http://example.com:8443/").body, b"web")

    def test_badRequest400(self) -> None:
        """
        A target that is neither origin- nor absolute-form, or two Host
        headers, get 400 before any route is looked at.
        """
        for head in [
            b"GET api HTTP/1.1\r\nHost: example.com\r\n",
            b"GET http://user@example.com/ HTTP/1.1\r\nHost: example.com\r\n",
        ]:
            client = self.network.raw(self.site, head + b"Connection: close\r\n\r\n")
            self.network.flush()
            self.assertTrue(client.data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), client.data)
        self.assertEqual(self.received(), {})

    def test_requestHeaderEdits(self) -> None:
        """
        The backend of a route with request edits gets the set headers with
        their one value (replacing the client's, and lbproxy's own
        forwarding headers too) and none of the removed ones; the rest as
        usual.
        """
        self.get(
            b"http://edited.example.com/",
            {
                b"X-Version": [b"v1"],
                b"X-Debug": [b"1", b"2"],
                b"Cookie": [b"session=1"],
                b"Accept": [b"text/html"],
            },
        )
        [seen] = self.servers["edited"].resource.received
        self.assertEqual(seen.header(b"x-version"), [b"v2"])
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(seen.header(b"x-debug"), [])
        self.assertEqual(seen.header(b"cookie"), [])
        self.assertEqual(seen.header(b"accept"), [b"text/html"])
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"192.0.2.7"])

    def test_responseHeaderEdits(self) -> None:
        """
        The client gets the response with the route's edits: set headers
        with their one value (replacing the backend's), removed ones gone,
        the body as sent.
        """
        answer = self.get(b"http://edited.example.com/")
        self.assertEqual(answer.body, b"with headers")
        self.assertEqual(answer.header(b"cache-control"), [b"max-age=60"])
        self.assertEqual(answer.header(b"x-frame-options"), [b"DENY"])
        self.assertEqual(answer.header(b"x-powered-by"), [])
        self.assertEqual(answer.header(b"x-internal"), [])

    def test_editsBelongToTheirRoute(self) -> None:
        """
        A route without edits relays headers both ways unchanged.
        """
        self.router.install(self.routing(RouteTable((RouteRule(pool="edited"),))))
        answer = self.get(b"http://example.com/", {b"X-Debug": [b"1"]})
        [seen] = self.servers["edited"].resource.received
        self.assertEqual(seen.header(b"x-debug"), [b"1"])
        self.assertEqual(answer.header(b"x-powered-by"), [b"php/5"])
        self.assertEqual(answer.header(b"cache-control"), [b"no-store"])

    def test_installSwapsTheWholeTable(self) -> None:
        """
        After C{install}, new requests are routed by the new table only;
        a request already routed finishes at the pool it went to.
        """
        web = self.servers["web"]
        web.hold()
        first = self.network.request(self.site, b"GET", b"http://example.com/slow")
        self.network.flush()
        self.assertEqual(len(web.held), 1)
        self.router.install(self.routing(RouteTable((RouteRule(pool="apps"),))))
        self.assertEqual(self.get(b"http://example.com/").body, b"apps")
        self.assertEqual(self.get(b"http://example.com/api/x").body, b"apps")
        self.assertNoResult(first)
        held = web.held.pop()
        held.write(b"old route")
        held.finish()
        self.network.flush()
        self.assertEqual(self.successResultOf(first).body, b"old route")
