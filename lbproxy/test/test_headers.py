"""
Tests for L{lbproxy.http.headers}.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy.http.headers import (
    HOP_BY_HOP,
    ClientInfo,
    connectionTokens,
    forwardedValue,
    requestHeadersForBackend,
    responseHeadersForClient,
)

_HOP_BY_HOP_NAMES = [
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
    b"HTTP2-Settings",
]

_CLIENT = ClientInfo(address="192.0.2.7", secure=True, host=b"example.com")

_FORWARDING = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
]


def _headers(*pairs: tuple[bytes, bytes]) -> Headers:
    """
    L{Headers} holding C{pairs}, in order, repeats kept.
    """
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def _table(headers: Headers | Iterable[tuple[bytes, list[bytes]]]) -> dict[bytes, list[bytes]]:
    """
    The lower-cased header names of C{headers} mapped to their values.
    """
    pairs = headers.getAllRawHeaders() if isinstance(headers, Headers) else headers
    table: dict[bytes, list[bytes]] = {}
    for name, values in pairs:
        table.setdefault(name.lower(), []).extend(values)
    return table


def _toBackend(*pairs: tuple[bytes, bytes]) -> dict[bytes, list[bytes]]:
    """
    The headers sent to the backend for a request with C{pairs}, from
    L{_CLIENT}, without the forwarding headers lbproxy adds.
    """
    table = _table(requestHeadersForBackend(_headers(*pairs), _CLIENT))
    for name in _FORWARDING:
        table.pop(name, None)
    return table


def _toClient(
    *pairs: tuple[bytes, bytes], connection: Headers | None = None
) -> dict[bytes, list[bytes]]:
    """
    The headers relayed to the client for a response with C{pairs}.
    """
    return _table(responseHeadersForClient(_headers(*pairs), connection))


class HopByHopTests(SynchronousTestCase):
    """
    Hop-by-hop headers go no further than the connection they came on, in
    either direction.
    """

    def test_set(self) -> None:
        """
        L{HOP_BY_HOP} holds the lower-cased hop-by-hop names.
        """
        self.assertEqual(HOP_BY_HOP, frozenset(name.lower() for name in _HOP_BY_HOP_NAMES))

    def test_eachRemoved(self) -> None:
        """
        Each hop-by-hop header, in any case, is removed toward the backend
        and toward the client; the end-to-end headers beside it stay.
        """
        for name in _HOP_BY_HOP_NAMES:
            for spelling in [name, name.lower(), name.upper()]:
                pairs = [(b"Accept", b"*/*"), (spelling, b"value"), (b"X-After", b"1")]
                expected = {b"accept": [b"*/*"], b"x-after": [b"1"]}
                request = _toBackend(*pairs)
                request.pop(b"host", None)
                self.assertEqual(request, expected, spelling)
                self.assertEqual(_toClient(*pairs), expected, spelling)

    def test_connectionNamed(self) -> None:
        """
        The headers named in C{Connection} are removed, whatever the
        spacing, case or number of C{Connection} headers.
        """
        both = {b"x-kept": [b"k"]}
        cases: list[tuple[list[bytes], dict[bytes, list[bytes]]]] = [
            ([b"X-Secret"], {b"x-other": [b"o"], b"x-kept": [b"k"]}),
            ([b"x-secret, x-other"], both),
            ([b"  X-SECRET ,\tX-Other  "], both),
            ([b"close,,x-secret,x-other,"], both),
            ([b"keep-alive, X-Secret", b"x-other"], both),
            ([b"close", b"X-Secret", b"X-OTHER"], both),
        ]
        for connection, kept in cases:
            pairs = [(b"Connection", value) for value in connection]
            pairs += [(b"X-Secret", b"s"), (b"X-Other", b"o"), (b"X-Kept", b"k")]
            self.assertEqual(_toBackend(*pairs), kept, connection)
            self.assertEqual(_toClient(*pairs), kept, connection)

    def test_http2SettingsRemoved(self) -> None:
        """
        C{HTTP2-Settings}, the parameters of an HTTP/2 upgrade of the
        client's connection, is not sent to the backend, nor relayed to the
        client.
        """
        pairs = [(b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"), (b"X-Kept", b"k")]
        self.assertEqual(_toBackend(*pairs), {b"x-kept": [b"k"]})
        self.assertEqual(_toClient(*pairs), {b"x-kept": [b"k"]})

    def test_connectionCannotRemoveHost(self) -> None:
        """
        C{Connection: host} leaves the request's C{Host} in place, whatever
        the case; the other headers it names are still removed.
        """
        host = {b"host": [b"example.com"]}
        withSecret = {**host, b"x-secret": [b"s"]}
        cases = [
            (b"host", withSecret),
            (b"HOST", withSecret),
            (b"close, Host", withSecret),
            (b"Host, X-Secret", host),
            (b"x-secret,host", host),
        ]
        for connection, expected in cases:
            relayed = _toBackend(
                (b"Host", b"example.com"), (b"Connection", connection), (b"X-Secret", b"s")
            )
            self.assertEqual(relayed, expected, connection)

    def test_connectionCannotRemoveProtected(self) -> None:
        """
        Naming C{Content-Length}, C{Transfer-Encoding} or the forwarding
        headers in C{Connection} does not remove them: the proxy still
        sets its forwarding headers toward the backend, and a response's
        C{Content-Length} still reaches the client.
        """
        named = (
            b"Content-Length, Transfer-Encoding, X-Forwarded-For, X-Forwarded-Proto, "
            b"X-Forwarded-Host, Forwarded, X-Real-IP, X-Secret"
        )
        incoming = _headers((b"Connection", named), (b"X-Secret", b"s"))
        self.assertEqual(
            _table(requestHeadersForBackend(incoming, _CLIENT)),
            {
                b"x-forwarded-for": [b"192.0.2.7"],
                b"x-forwarded-proto": [b"https"],
                b"x-forwarded-host": [b"example.com"],
                b"forwarded": [b"for=192.0.2.7;host=example.com;proto=https"],
                b"x-real-ip": [b"192.0.2.7"],
            },
        )
        self.assertEqual(
            _toClient(
                (b"Connection", named),
                (b"Content-Length", b"12"),
                (b"X-Real-IP", b"r"),
                (b"X-Secret", b"s"),
            ),
            {b"content-length": [b"12"], b"x-real-ip": [b"r"]},
        )
        self.assertEqual(
            _toClient(
                (b"Content-Length", b"12"), connection=_headers((b"Connection", b"content-length"))
            ),
            {b"content-length": [b"12"]},
        )

    def test_connectionTokens(self) -> None:
        """
        L{connectionTokens} gives the lower-cased names in every
        C{Connection} header, ignoring empty items.
        """
        headers = _headers(
            (b"Connection", b" Close ,X-A,,"), (b"connection", b"x-b"), (b"X-A", b"1")
        )
        self.assertEqual(connectionTokens(headers), {b"close", b"x-a", b"x-b"})
        self.assertEqual(connectionTokens(Headers()), frozenset())

    def test_responseConnectionArgument(self) -> None:
        """
        Headers named by the separate C{connection} headers of a response
        are removed as well as those named in the response's own.
        """
        connection = _headers((b"Connection", b"X-Backend-Internal"), (b"Connection", b"x-two"))
        relayed = _toClient(
            (b"X-Backend-Internal", b"secret"),
            (b"X-Two", b"2"),
            (b"X-Public", b"p"),
            connection=connection,
        )
        self.assertEqual(relayed, {b"x-public": [b"p"]})
        self.assertEqual(
            _toClient((b"Connection", b"x-three"), (b"X-Three", b"3"), connection=connection),
            {},
        )

    def test_responseConnectionWithoutNames(self) -> None:
        """
        C{connection} headers that name nothing remove nothing.
        """
        relayed = _toClient((b"X-Public", b"p"), connection=Headers())
        self.assertEqual(relayed, {b"x-public": [b"p"]})


class RequestHeadersTests(SynchronousTestCase):
    """
    Tests for L{requestHeadersForBackend}.
    """

    def test_repeatsInOrder(self) -> None:
        """
        Repeated headers keep all their values in order.
        """
        self.assertEqual(
            _toBackend((b"Accept", b"a"), (b"X-Many", b"1"), (b"Accept", b"b"), (b"X-Many", b"2")),
            {b"accept": [b"a", b"b"], b"x-many": [b"1", b"2"]},
        )

    def test_hostKept(self) -> None:
        """
        The client's C{Host} is sent to the backend.
        """
        self.assertEqual(
            _toBackend((b"Host", b"example.com:8443")), {b"host": [b"example.com:8443"]}
        )

    def test_framingDropped(self) -> None:
        """
        C{Content-Length} and C{Expect} are not sent to the backend.
        """
        self.assertEqual(
            _toBackend(
                (b"Content-Length", b"5"), (b"Expect", b"100-continue"), (b"Content-Type", b"t")
            ),
            {b"content-type": [b"t"]},
        )

    def test_forwardingSet(self) -> None:
        """
        The forwarding headers say who the client is, how it connected and
        which Host it asked for.
        """
        outgoing = _table(requestHeadersForBackend(Headers(), _CLIENT))
        self.assertEqual(
            outgoing,
            {
                b"x-forwarded-for": [b"192.0.2.7"],
                b"x-forwarded-proto": [b"https"],
                b"x-forwarded-host": [b"example.com"],
                b"forwarded": [b"for=192.0.2.7;host=example.com;proto=https"],
                b"x-real-ip": [b"192.0.2.7"],
            },
        )

    def test_realIPReplaced(self) -> None:
        """
        A client's C{X-Real-IP}, however many and in any case, is replaced
        by the client's address; without an address none is sent.
        """
        spoofed = _headers((b"X-Real-IP", b"10.6.6.6"), (b"x-real-ip", b"127.0.0.1"))
        self.assertEqual(
            requestHeadersForBackend(spoofed, _CLIENT).getRawHeaders(b"x-real-ip"),
            [b"192.0.2.7"],
        )
        unknown = ClientInfo(address=None, secure=False, host=None)
        self.assertIsNone(requestHeadersForBackend(spoofed, unknown).getRawHeaders(b"x-real-ip"))

    def test_spoofedReplaced(self) -> None:
        """
        Forwarding headers sent by the client, in any case and however
        many, are replaced by lbproxy's own, also when the client names
        them in C{Connection}.
        """
        spoofed = _headers(
            (b"X-Forwarded-For", b"10.6.6.6"),
            (b"x-forwarded-for", b"10.6.6.7"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-FORWARDED-HOST", b"evil.example"),
            (b"Forwarded", b"for=10.6.6.6"),
            (b"X-Real-IP", b"10.6.6.6"),
            (b"Connection", b"X-Forwarded-For, Forwarded"),
        )
        client = ClientInfo(address="::1", secure=False, host=b"example.com")
        self.assertEqual(
            _table(requestHeadersForBackend(spoofed, client)),
            {
                b"x-forwarded-for": [b"::1"],
                b"x-forwarded-proto": [b"http"],
                b"x-forwarded-host": [b"example.com"],
                b"forwarded": [b'for="[::1]";host=example.com;proto=http'],
                b"x-real-ip": [b"::1"],
            },
        )

    def test_unknownClient(self) -> None:
        """
        Without a client address or Host, spoofed C{X-Forwarded-For} and
        C{X-Forwarded-Host} are removed and none are set.
        """
        spoofed = _headers((b"X-Forwarded-For", b"10.6.6.6"), (b"X-Forwarded-Host", b"evil"))
        client = ClientInfo(address=None, secure=False, host=None)
        self.assertEqual(
            _table(requestHeadersForBackend(spoofed, client)),
            {b"x-forwarded-proto": [b"http"], b"forwarded": [b"for=unknown;proto=http"]},
        )

    def test_incomingUntouched(self) -> None:
        """
        The client's headers are left as they were.
        """
        incoming = _headers((b"Connection", b"x-a"), (b"X-A", b"1"), (b"Content-Length", b"0"))
        before = list(incoming.getAllRawHeaders())
        requestHeadersForBackend(incoming, _CLIENT)
        self.assertEqual(list(incoming.getAllRawHeaders()), before)


class ResponseHeadersTests(SynchronousTestCase):
    """
    Tests for L{responseHeadersForClient}.
    """

    def test_repeatsInOrder(self) -> None:
        """
        Repeated headers, C{Set-Cookie} above all, keep every value in
        order.
        """
        self.assertEqual(
            _toClient((b"Set-Cookie", b"a=1"), (b"Vary", b"x"), (b"Set-Cookie", b"b=2")),
            {b"set-cookie": [b"a=1", b"b=2"], b"vary": [b"x"]},
        )

    def test_contentLengthKept(self) -> None:
        """
        C{Content-Length}, and the forwarding headers, pass through to the
        client.
        """
        pairs = [(b"Content-Length", b"12"), (b"Forwarded", b"for=x"), (b"Expect", b"e")]
        self.assertEqual(
            _toClient(*pairs),
            {b"content-length": [b"12"], b"forwarded": [b"for=x"], b"expect": [b"e"]},
        )


class ForwardedValueTests(SynchronousTestCase):
    """
    Tests for L{forwardedValue}.
    """

    def test_cases(self) -> None:
        """
        The element names the client address (bracketed and quoted for
        IPv6, C{unknown} without one), the Host (quoted unless it is a
        token) and the protocol.
        """
        cases = [
            (
                ClientInfo("192.0.2.7", False, b"example.com"),
                b"for=192.0.2.7;host=example.com;proto=http",
            ),
            (ClientInfo("192.0.2.7", True, None), b"for=192.0.2.7;proto=https"),
            (ClientInfo("::1", True, None), b'for="[::1]";proto=https'),
            (
                ClientInfo("2001:db8::1", False, b"example.com"),
                b'for="[2001:db8::1]";host=example.com;proto=http',
            ),
            (ClientInfo(None, False, None), b"for=unknown;proto=http"),
            (ClientInfo(None, True, b"example.com"), b"for=unknown;host=example.com;proto=https"),
            (
                ClientInfo("192.0.2.7", True, b"example.com:8443"),
                b'for=192.0.2.7;host="example.com:8443";proto=https',
            ),
            (
                ClientInfo("192.0.2.7", True, b"[::1]:8443"),
                b'for=192.0.2.7;host="[::1]:8443";proto=https',
            ),
            (
                ClientInfo("192.0.2.7", True, b'a"b\\c'),
                b'for=192.0.2.7;host="a\\"b\\\\c";proto=https',
            ),
            (ClientInfo("192.0.2.7", True, b""), b'for=192.0.2.7;host="";proto=https'),
        ]
        for client, expected in cases:
            self.assertEqual(forwardedValue(client), expected, client)
