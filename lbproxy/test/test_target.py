"""
Tests for L{lbproxy.http.target}, over requests parsed by twisted.web from the
bytes a client sends.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lbproxy.http.checks import validHost
from lbproxy.http.target import Route, TargetError, hostName, routeTarget


class _HeldRequest(Request):
    """
    A request that is parsed but never processed, so a test can look at it.
    """

    def process(self) -> None:
        pass


def parsedRequest(head: bytes, transport: StringTransport | None = None) -> Request:
    """
    The request twisted.web parses from C{head}, a request line and header
    lines without the final empty line, received on C{transport}.
    """
    requests: list[Request] = []

    def factory(channel: HTTPChannel, queued: object = None) -> Request:
        request = _HeldRequest(channel)
        requests.append(request)
        return request

    channel = HTTPChannel()
    channel.site = Site(Resource())  # type: ignore[attr-defined]
    channel.requestFactory = factory  # type: ignore[assignment]
    if transport is None:
        transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(head + b"\r\n\r\n")
    if len(requests) != 1 or transport.value():
        raise AssertionError(f"twisted.web did not hold {head!r}: {transport.value()!r}")
    return requests[0]


# (request head, target, Host) for origin-form targets, relayed as they are.
_ORIGIN_FORM: list[tuple[bytes, bytes, bytes]] = [
    (b"GET / HTTP/1.1\r\nHost: example.com", b"/", b"example.com"),
    (b"GET /p?q=1&r HTTP/1.1\r\nHost: example.com:8443", b"/p?q=1&r", b"example.com:8443"),
    (b"GET //double/slash HTTP/1.1\r\nHost: h", b"//double/slash", b"h"),
    (b"GET /%2e%2e/x HTTP/1.1\r\nHost: h", b"/%2e%2e/x", b"h"),
    (b"POST /p HTTP/1.0\r\nHost: h", b"/p", b"h"),
]

# (request head, target, Host) for absolute-form targets, whose authority wins.
_ABSOLUTE_FORM: list[tuple[bytes, bytes, bytes | None]] = [
    (b"GET http://other/p?q HTTP/1.1\r\nHost: example.com", b"/p?q", b"other"),
    (b"GET http://other:8080/p HTTP/1.1\r\nHost: example.com", b"/p", b"other:8080"),
    (b"GET https://other/p HTTP/1.1\r\nHost: example.com", b"/p", b"other"),
    (b"GET HTTP://Other/p HTTP/1.1\r\nHost: example.com", b"/p", b"Other"),
    (b"GET http://other HTTP/1.1\r\nHost: other", b"/", b"other"),
    (b"GET https://other?q HTTP/1.1\r\nHost: other", b"/?q", b"other"),
    (b"GET http://[::1]:8080/p HTTP/1.1\r\nHost: [::1]:8080", b"/p", b"[::1]:8080"),
    (b"GET http://other/p HTTP/1.0", b"/p", b"other"),
]


class RouteTargetTests(SynchronousTestCase):
    """
    Tests for L{routeTarget}.
    """

    def assertRoutes(self, cases: Sequence[tuple[bytes, bytes, bytes | None]]) -> None:
        """
        For each C{(head, target, host)} of C{cases}, the request parsed
        from C{head} goes to C{target} with C{host}, and its Host header is
        C{host}.
        """
        for head, target, host in cases:
            request = parsedRequest(head)
            self.assertEqual(routeTarget(request), Route(target=target, host=host), head)
            expected = None if host is None else [host]
            self.assertEqual(request.requestHeaders.getRawHeaders(b"host"), expected, head)

    def assertTargetError(self, head: bytes, fragment: str) -> None:
        """
        The request parsed from C{head} is refused with a message holding
        C{fragment}.
        """
        error = self.assertRaises(TargetError, routeTarget, parsedRequest(head))
        self.assertIn(fragment, str(error), head)

    def test_originForm(self) -> None:
        """
        An origin-form target is relayed as is, with the request's Host.
        """
        self.assertRoutes(_ORIGIN_FORM)

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target is relayed in origin form, and its
        authority becomes the Host, replacing the one the client sent.
        """
        self.assertRoutes(_ABSOLUTE_FORM)

    def test_absoluteFormWithoutHost(self) -> None:
        """
        An HTTP/1.1 absolute-form request without a Host header is refused
        (RFC 9112 3.2: every HTTP/1.1 request carries Host); an HTTP/1.0
        one is routed on the target's authority.
        """
        self.assertRoutes([(b"GET http://other/p HTTP/1.0", b"/p", b"other")])
        self.assertRaises(TargetError, routeTarget, parsedRequest(b"GET http://other/p HTTP/1.1"))

    def test_http10WithoutHost(self) -> None:
        """
        An HTTP/1.0 request without Host is routed with no Host.
        """
        self.assertRoutes([(b"GET /p HTTP/1.0", b"/p", None)])

    def test_refused(self) -> None:
        """
        Userinfo or no authority in an absolute-form target, a target in
        neither origin nor absolute form, two Host headers, and HTTP/1.1
        without Host are refused.
        """
        cases = [
            (b"GET http://a@b/ HTTP/1.1\r\nHost: b", "authority"),
            (b"GET http://user:pw@b/p HTTP/1.1\r\nHost: b", "authority"),
            (b"GET http:///p HTTP/1.1\r\nHost: b", "authority"),
            (b"GET admin HTTP/1.1\r\nHost: b", "'/'"),
            (b"GET * HTTP/1.1\r\nHost: b", "'/'"),
            (b"GET ftp://b/p HTTP/1.1\r\nHost: b", "'/'"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", "more than one Host"),
            (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a", "more than one Host"),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b", "more than one Host"),
            (b"GET / HTTP/1.1", "without Host"),
        ]
        for head, fragment in cases:
            self.assertTargetError(head, fragment)

    def test_badAuthority(self) -> None:
        """
        An absolute-form target whose authority cannot be parsed is refused
        with L{TargetError}, so the client gets a 400.
        """
        for head in [
            b"GET http://[::1/p HTTP/1.1\r\nHost: h",
            b"GET http://[nonsense]/p HTTP/1.1\r\nHost: h",
        ]:
            self.assertTargetError(head, "authority")

    def test_authorityCheckedAsHost(self) -> None:
        """
        The authority of an absolute-form target must be a valid Host (a
        name or address and a numeric port, as L{validHost} checks a Host
        header), or the request is refused; so
        C{http://localhost:1,evil.com/} cannot pass an allow-list of
        C{localhost} with C{Host: localhost:1,evil.com}.
        """
        for authority in [
            b"localhost:1,evil.com",
            b"localhost:80x",
            b"localhost:80:80",
            b"a:b",
            b":80",
            b"[::1]x",
            b"[::1]:1,evil.com",
            b"localhost:%38%30",
        ]:
            head = b"GET http://" + authority + b"/p HTTP/1.1\r\nHost: localhost"
            self.assertFalse(validHost(authority), authority)
            self.assertTargetError(head, "authority")
        for authority in [b"localhost", b"localhost:8080", b"localhost:", b"[::1]:1", b"a-b.c"]:
            head = b"GET http://" + authority + b"/p HTTP/1.1\r\nHost: localhost"
            self.assertTrue(validHost(authority), authority)
            self.assertEqual(routeTarget(parsedRequest(head)), Route(b"/p", authority), authority)


class HostNameTests(SynchronousTestCase):
    """
    Tests for L{hostName}.
    """

    def test_cases(self) -> None:
        """
        The host name is lower-cased, without port or IPv6 brackets, and
        empty when there is no Host.
        """
        cases: list[tuple[bytes | None, str]] = [
            (b"example.com", "example.com"),
            (b"Example.COM", "example.com"),
            (b"example.com:8443", "example.com"),
            (b" Example.com:80 ", "example.com"),
            (b"127.0.0.1:80", "127.0.0.1"),
            (b"[::1]", "::1"),
            (b"[::1]:443", "::1"),
            (b"[2001:DB8::1]:8443", "2001:db8::1"),
            (b"", ""),
            (None, ""),
        ]
        for host, expected in cases:
            self.assertEqual(hostName(host), expected, host)
