"""
Tests for L{lbproxy.http.requestid}, and for the edge giving each request
its ID (L{lbproxy.http.edge.ProxyRequest.process}) and the command line
that sets it up.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from lbproxy.cli.options import Options
from lbproxy.cli.reload import APPLIED_BY_RELOAD
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import ProxySite
from lbproxy.http.headers import ClientInfo, requestHeaderLines
from lbproxy.http.requestid import (
    RequestIdSettings,
    assignRequestId,
    keptRequestId,
    newRequestId,
)
from lbproxy.service import LoadBalancerService

_HEX32 = re.compile(rb"[0-9a-f]{32}\Z")
_PROXY = ipaddress.ip_network("10.0.0.0/8")
_TRUSTING = RequestIdSettings(trustedProxies=(_PROXY, ipaddress.ip_network("2001:db8::/32")))


class NewRequestIdTests(SynchronousTestCase):
    """
    L{newRequestId} makes IDs.
    """

    def test_shape(self) -> None:
        """
        An ID is 32 lower-case hex digits (128 bits), different every time.
        """
        ids = {newRequestId() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for requestId in ids:
            self.assertRegex(requestId, _HEX32)


class KeptRequestIdTests(SynchronousTestCase):
    """
    L{keptRequestId} decides whether a request keeps the ID it brought.
    """

    def test_table(self) -> None:
        """
        Only a trusted peer's ID is kept: its first non-empty value, without
        surrounding spaces.
        """
        cases: list[tuple[list[bytes] | None, bool, bytes | None]] = [
            (None, True, None),
            ([], True, None),
            ([b"abc"], False, None),
            ([b"abc"], True, b"abc"),
            ([b" abc "], True, b"abc"),
            ([b"", b"  ", b"second"], True, b"second"),
            ([b"first", b"second"], True, b"first"),
            ([b""], True, None),
        ]
        for offered, trusted, kept in cases:
            self.assertEqual(keptRequestId(offered, trusted), kept, (offered, trusted))


class SettingsTests(SynchronousTestCase):
    """
    L{RequestIdSettings} knows its trusted proxies.
    """

    def test_isTrusted(self) -> None:
        """
        An address in a trusted network is trusted; others, addresses that
        are not IP addresses and no address at all are not.
        """
        cases = [
            ("10.1.2.3", True),
            ("11.1.2.3", False),
            ("2001:db8::1", True),
            ("2001:db9::1", False),
            ("not an address", False),
            (None, False),
        ]
        for address, trusted in cases:
            self.assertEqual(_TRUSTING.isTrusted(address), trusted, address)
        self.assertFalse(RequestIdSettings().isTrusted("10.1.2.3"))

    def test_defaults(self) -> None:
        """
        By default IDs are on, in C{X-Request-ID}, trusted from nobody.
        """
        settings = RequestIdSettings()
        self.assertEqual(
            (settings.enabled, settings.header, settings.trustedProxies),
            (True, b"X-Request-ID", ()),
        )


def _assigned(
    lines: list[tuple[bytes, bytes]], peer: str | None, settings: RequestIdSettings = _TRUSTING
) -> tuple[bytes, Headers, Headers]:
    """
    Assign an ID to a request with header C{lines} from C{peer}.

    @return: The ID, the request's headers and the response's.
    """
    requestHeaders = Headers()
    for name, value in lines:
        requestHeaders.addRawHeader(name, value)
    responseHeaders = Headers()
    requestId = assignRequestId(requestHeaders, responseHeaders, peer, settings)
    return requestId, requestHeaders, responseHeaders


class AssignTests(SynchronousTestCase):
    """
    L{assignRequestId} gives a request its one ID, both ways.
    """

    def test_generated(self) -> None:
        """
        A request without the header gets a new ID, in its headers and in
        the response's.
        """
        requestId, requestHeaders, responseHeaders = _assigned([(b"Host", b"a")], "192.0.2.1")
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(requestHeaders.getRawHeaders(b"x-request-id"), [requestId])
        self.assertEqual(responseHeaders.getRawHeaders(b"x-request-id"), [requestId])

    def test_untrustedReplaced(self) -> None:
        """
        An ID from a peer that is not a trusted proxy is replaced by a new
        one (every value of it).
        """
        offered = [(b"X-Request-ID", b"chosen-by-client"), (b"x-request-id", b"another")]
        for peer in ("192.0.2.1", None):
            requestId, requestHeaders, responseHeaders = _assigned(offered, peer)
            self.assertRegex(requestId, _HEX32)
            self.assertEqual(requestHeaders.getRawHeaders(b"x-request-id"), [requestId])
            self.assertEqual(responseHeaders.getRawHeaders(b"x-request-id"), [requestId])

    def test_trustedKept(self) -> None:
        """
        A trusted proxy's ID is kept, and only its first value goes on.
        """
        offered = [(b"X-Request-ID", b"from-the-proxy"), (b"X-Request-ID", b"extra")]
        requestId, requestHeaders, responseHeaders = _assigned(offered, "10.9.9.9")
        self.assertEqual(requestId, b"from-the-proxy")
        self.assertEqual(requestHeaders.getRawHeaders(b"x-request-id"), [b"from-the-proxy"])
        self.assertEqual(responseHeaders.getRawHeaders(b"x-request-id"), [b"from-the-proxy"])

    def test_trustedEmptyReplaced(self) -> None:
        """
        A trusted proxy's empty ID is no ID: a new one is made.
        """
        requestId, requestHeaders, _ = _assigned([(b"X-Request-ID", b"")], "10.9.9.9")
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(requestHeaders.getRawHeaders(b"x-request-id"), [requestId])

    def test_otherHeader(self) -> None:
        """
        With another header name, that header carries the ID and
        C{X-Request-ID} is left as it came.
        """
        settings = RequestIdSettings(header=b"X-Correlation-ID", trustedProxies=(_PROXY,))
        lines = [(b"X-Request-ID", b"untouched"), (b"X-Correlation-ID", b"kept")]
        requestId, requestHeaders, responseHeaders = _assigned(lines, "10.0.0.1", settings)
        self.assertEqual(requestId, b"kept")
        self.assertEqual(requestHeaders.getRawHeaders(b"x-request-id"), [b"untouched"])
        self.assertEqual(responseHeaders.getRawHeaders(b"x-correlation-id"), [b"kept"])
        self.assertFalse(responseHeaders.hasHeader(b"x-request-id"))

    def test_notHopByHop(self) -> None:
        """
        A client cannot keep the ID from the backend by naming its header
        in C{Connection}: the name is taken out, other tokens stay, and an
        emptied C{Connection} goes.
        """
        cases = [
            ([b"X-Request-ID"], None),
            ([b"close, x-request-id"], [b"close"]),
            ([b"keep-alive", b"X-Request-Id, X-Other"], [b"keep-alive, X-Other"]),
            ([b"upgrade"], [b"upgrade"]),
        ]
        for connection, left in cases:
            lines = [(b"Host", b"a"), *((b"Connection", value) for value in connection)]
            requestId, requestHeaders, _ = _assigned(lines, "192.0.2.1")
            self.assertEqual(requestHeaders.getRawHeaders(b"connection"), left, connection)
            sent = requestHeaderLines(requestHeaders, ClientInfo("192.0.2.1", False, b"a"))
            self.assertEqual(
                [value for name, value in sent if name.lower() == b"x-request-id"],
                [requestId],
                connection,
            )


class _Answer(Resource):
    """
    Answers every request with C{ok}, keeping the requests it answered.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> bytes:
        self.requests.append(request)
        return b"ok"


_CLIENT = IPv4Address("TCP", "192.0.2.7", 50000)


def _served(
    data: bytes,
    settings: RequestIdSettings | None,
    peer: IAddress = _CLIENT,
) -> tuple[_Answer, bytes, list[str]]:
    """
    Send C{data} to a L{ProxySite} giving IDs by C{settings} from C{peer}.

    @return: The resource (and the requests it got), what was written
        back, and the access log.
    """
    clock = Clock()
    clock.advance(1_700_000_000)
    resource = _Answer()
    lines: list[str] = []
    site = ProxySite(resource, AccessLog(lines.append), reactor=clock)
    site.requestIds = settings
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return resource, transport.value(), lines


_GET = b"GET /p HTTP/1.1\r\nHost: example.com\r\n"


class EdgeTests(SynchronousTestCase):
    """
    The edge gives every request its ID before the resource sees it.
    """

    def test_given(self) -> None:
        """
        The resource sees the request with its ID in the header (as the
        backend will), the client gets it back, and the log line ends with
        it.
        """
        resource, written, log = _served(_GET + b"\r\n", RequestIdSettings())
        [request] = resource.requests
        requestId = getattr(request, "requestId", None)
        assert requestId is not None
        self.assertRegex(requestId, _HEX32)
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-request-id"), [requestId])
        self.assertIn(b"\r\nX-Request-Id: " + requestId + b"\r\n", written)
        self.assertEqual(
            log,
            [f'192.0.2.7 "GET /p HTTP/1.1" 200 2 backend=- upstream=- rid={requestId.decode()}\n'],
        )

    def test_peers(self) -> None:
        """
        A trusted proxy's ID is kept; one from another peer (IPv6, or a
        UNIX socket, which has no address) is replaced.
        """
        settings = RequestIdSettings(trustedProxies=(ipaddress.ip_network("192.0.2.0/24"),))
        data = _GET + b"X-Request-ID: theirs\r\n\r\n"
        resource, written, _ = _served(data, settings)
        self.assertEqual(getattr(resource.requests[0], "requestId", None), b"theirs")
        self.assertIn(b"\r\nX-Request-Id: theirs\r\n", written)
        for peer in (IPv6Address("TCP", "2001:db8::1", 5), UNIXAddress(b"/tmp/s")):
            resource, written, _ = _served(data, settings, peer)
            [request] = resource.requests
            requestId = getattr(request, "requestId", b"")
            self.assertRegex(requestId, _HEX32)
            self.assertEqual(request.requestHeaders.getRawHeaders(b"x-request-id"), [requestId])
            self.assertNotIn(b"theirs", written)

    def test_off(self) -> None:
        """
        Off (or without settings), a request gets no ID: what it brought is
        left as it came, nothing is added to the answer or the log.
        """
        for settings in (RequestIdSettings(enabled=False), None):
            resource, written, log = _served(_GET + b"X-Request-ID: theirs\r\n\r\n", settings)
            [request] = resource.requests
            self.assertIsNone(getattr(request, "requestId", None))
            self.assertEqual(request.requestHeaders.getRawHeaders(b"x-request-id"), [b"theirs"])
            self.assertNotIn(b"X-Request-Id", written)
            self.assertNotIn("rid=", log[0])

    def test_refused(self) -> None:
        """
        A request refused at the edge is answered and logged with a new ID;
        with IDs off, with none.
        """
        _, written, log = _served(b"GET / HTTP/1.1\r\n\r\n", RequestIdSettings())
        found = re.search(rb"\r\nX-Request-ID: ([0-9a-f]{32})\r\n", written)
        assert found is not None
        self.assertTrue(written.startswith(b"HTTP/1.1 400 "))
        self.assertTrue(log[0].endswith(f" rid={found.group(1).decode()}\n"), log)
        _, written, log = _served(b"GET / HTTP/1.1\r\n\r\n", RequestIdSettings(enabled=False))
        self.assertNotIn(b"X-Request-ID", written)
        self.assertNotIn("rid=", log[0])

    def test_received(self) -> None:
        """
        The request notes when it was handed over, by the site's reactor.
        """
        resource, _, _ = _served(_GET + b"\r\n", None)
        self.assertEqual(getattr(resource.requests[0], "receivedAt", None), 1_700_000_000)


def _options(*arguments: str) -> Options:
    options = Options()
    options.parseArguments(["--backends", "127.0.0.1:8080", "--listen", "tcp:0", *arguments])
    return options


class OptionsTests(SynchronousTestCase):
    """
    C{--request-id}, C{--request-id-header} and C{--trusted-proxy} make the
    configuration's L{RequestIdSettings}.
    """

    def test_default(self) -> None:
        """
        By default every request gets an ID in C{X-Request-ID}.
        """
        config = _options().config
        assert config is not None
        self.assertEqual(config.requestIds, RequestIdSettings())

    def test_given(self) -> None:
        """
        The options set the switch and the header; the trusted proxies are
        C{--trusted-proxy}'s.
        """
        config = _options(
            "--request-id",
            "OFF",
            "--request-id-header",
            "X-Correlation-ID",
            "--trusted-proxy",
            "10.0.0.0/8",
        ).config
        assert config is not None
        self.assertEqual(
            config.requestIds,
            RequestIdSettings(enabled=False, header=b"X-Correlation-ID", trustedProxies=(_PROXY,)),
        )

    def test_bad(self) -> None:
        """
        A switch other than on or off, and a header name that is not a token
        or is one lbproxy sets itself, are usage errors naming the option.
        """
        cases = [
            (["--request-id", "yes"], "--request-id must be on or off, not 'yes'"),
            (["--request-id-header", "X Request"], "--request-id-header must be"),
            (["--request-id-header", "X-Forwarded-For"], "--request-id-header must be"),
            (["--request-id-header", "Connection"], "--request-id-header must be"),
            (["--request-id-header", "content-length"], "--request-id-header must be"),
        ]
        for arguments, message in cases:
            error = self.assertRaises(usage.UsageError, _options, *arguments)
            self.assertIn(message, str(error))


class ServiceTests(SynchronousTestCase):
    """
    The service gives its site the configuration's request ID settings,
    and a reload replaces them.
    """

    def test_reload(self) -> None:
        """
        The site gives IDs by the configuration it was built with, then by
        the one a reload applies (its trusted proxies and header).
        """
        reactor = MemoryReactorClock()
        first = _options().config
        assert first is not None
        service = LoadBalancerService(first, reactor, reactor)
        self.assertEqual(service.site.requestIds, RequestIdSettings())
        second = _options("--trusted-proxy", "10.0.0.0/8", "--request-id-header", "X-Trace").config
        assert second is not None
        service.applyConfig(second)
        self.assertEqual(
            service.site.requestIds,
            RequestIdSettings(header=b"X-Trace", trustedProxies=(_PROXY,)),
        )

    def test_appliedByReload(self) -> None:
        """
        A reload does not call the request ID options ones that wait for a
        restart.
        """
        self.assertLessEqual({"request-id", "request-id-header"}, APPLIED_BY_RELOAD)
