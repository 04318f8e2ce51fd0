# -*- test-case-name: lbproxy.test.test_headers,lbproxy.test.test_forwarding,lbproxy.test.test_headeredits -*-  # noqa: E501
"""
Header rules for relaying a request to a backend and its answer back:
hop-by-hop removal and the X-Forwarded-* / Forwarded / X-Real-IP headers.

Pure functions over L{twisted.web.http_headers.Headers}; no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Union

import attrs
from twisted.web.http_headers import Headers

if TYPE_CHECKING:
    from lbproxy.upstream.connection import HeaderLines

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        # HTTP/2's upgrade parameters belong to the client's connection
        # (RFC 7540 3.2.1); the backend connection is HTTP/1.1.
        b"http2-settings",
    }
)
"""
Headers that describe one connection, not the message (RFC 9110 7.6.1),
plus the proxy credentials, which are meant for us alone.
"""

NEVER_CONNECTION_OPTIONS: frozenset[bytes] = frozenset(
    {
        # Routing and framing: a sender cannot make them hop-by-hop.
        b"host",
        b"content-length",
        b"transfer-encoding",
        # Set by lbproxy itself.
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
    }
)
"""
Headers that naming in C{Connection} does not remove: otherwise
C{Connection: host} would strip the Host a request is routed on, or a
client could take away the headers that tell the backend who it is.
"""

_REQUEST_ONLY_DROPPED: frozenset[bytes] = frozenset(
    {
        # lbproxy writes its own framing to the backend.
        b"content-length",
        # The 100-continue exchange already happened between client and us.
        b"expect",
        # Replaced by our own values, never trusted from the client.
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
    }
)


@attrs.frozen
class ClientInfo:
    """
    What the proxy knows about the client side of a request.

    @ivar address: The client's IP address as text, or C{None} if the
        connection has none (a UNIX socket).
    @ivar secure: Whether the client connection is TLS.
    @ivar host: The Host the client asked for, or C{None}.
    @ivar trusted: Whether the peer is a trusted proxy, whose forwarding
        headers are kept and extended instead of replaced.
    @ivar original: The original client behind trusted proxies, as
        L{originalClient} finds it, for C{X-Real-IP}; L{None} when not
        worked out, in which case a trusted peer's last
        C{X-Forwarded-For} address is used.
    """

    address: str | None
    secure: bool
    host: bytes | None
    trusted: bool = False
    original: str | None = None


RawHeaders = Union[Headers, "HeaderLines"]
"""
Headers to read: twisted.web's, or the lean client's response lines.
"""


@functools.lru_cache(maxsize=64)
def canonicalName(name: bytes) -> bytes:
    """
    C{name} as twisted.web's L{Headers} writes it (C{x-request-id} as
    C{X-Request-Id}), for header lines of the proxy's own that bypass it.
    """
    for canonical, _ in Headers({name: [b""]}).getAllRawHeaders():
        return canonical
    return name


_NO_TOKENS: frozenset[bytes] = frozenset()


def connectionTokens(headers: RawHeaders) -> frozenset[bytes]:
    """
    The lower-cased header names listed in C{Connection}, which are
    hop-by-hop for this message.
    """
    values = headers.getRawHeaders(b"connection")
    if not values:
        return _NO_TOKENS
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def _connectionOptions(headers: RawHeaders) -> frozenset[bytes]:
    """
    The header names that C{Connection} makes hop-by-hop, but for those it
    cannot (L{NEVER_CONNECTION_OPTIONS}).
    """
    tokens = connectionTokens(headers)
    return tokens - NEVER_CONNECTION_OPTIONS if tokens else tokens


def _endToEnd(
    headers: RawHeaders, alsoDrop: Iterable[bytes]
) -> Iterator[tuple[bytes, list[bytes]]]:
    drop = HOP_BY_HOP | _connectionOptions(headers) | frozenset(alsoDrop)
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            yield name, list(values)


def requestHeadersForBackend(incoming: Headers, client: ClientInfo) -> Headers:
    """
    The headers to send to the backend for a client request, as a
    L{Headers}; see L{requestHeaderLines}.
    """
    outgoing = Headers()
    for name, value in requestHeaderLines(incoming, client):
        outgoing.addRawHeader(name, value)
    return outgoing


_DROPPED_TOWARD_BACKEND = HOP_BY_HOP | _REQUEST_ONLY_DROPPED


def requestHeaderLines(incoming: Headers, client: ClientInfo) -> list[tuple[bytes, bytes]]:
    """
    The header lines to send to the backend for a client request.

    Repeated headers keep their values in order. Hop-by-hop headers (those
    named in C{Connection} too, but for L{NEVER_CONNECTION_OPTIONS}),
    framing headers and any client-supplied forwarding headers are
    removed; the client's C{Host} is kept; C{X-Forwarded-For},
    C{X-Forwarded-Proto}, C{X-Forwarded-Host} and RFC 7239 C{Forwarded}
    are set from C{client} (extended, not replaced, when the client is a
    trusted proxy); C{X-Real-IP} is replaced by the client's address, or
    behind trusted proxies by the original client's (as nginx's
    C{proxy_set_header X-Real-IP $remote_addr} with C{real_ip_header} does).

    The values were checked by twisted.web when the request was parsed, so
    they are copied as they are (no new L{Headers}, which would check every
    value again).
    """
    drop = _DROPPED_TOWARD_BACKEND
    if incoming.hasHeader(b"connection"):
        drop = drop | _connectionOptions(incoming)
    lines = [
        (name, value)
        for name, values in incoming.getAllRawHeaders()
        if name.lower() not in drop
        for value in values
    ]
    if client.trusted:
        lines += _forwardingLines(incoming, client)
    else:
        # Nothing of the client's is kept: the lines depend on the client
        # alone, and the same few clients ask again and again.
        lines += _untrustedForwarding(client.address, client.secure, client.host)
    return lines


def _forwardingLines(incoming: Headers, client: ClientInfo) -> list[tuple[bytes, bytes]]:
    """
    The forwarding header lines (C{X-Forwarded-*}, C{Forwarded},
    C{X-Real-IP}) to send for a request from C{client}.
    """
    lines = []
    proto = b"https" if client.secure else b"http"
    chain: list[bytes] = []
    forwarded: list[bytes] = []
    if client.trusted:
        chain = _forwardedFor(incoming)
        forwarded = list(incoming.getRawHeaders(b"forwarded", []))
        proto = _last(incoming, b"x-forwarded-proto") or proto
    if client.address is not None:
        chain.append(client.address.encode("ascii"))
    if chain:
        lines.append((b"X-Forwarded-For", b", ".join(chain)))
    lines.append((b"X-Forwarded-Proto", proto))
    host = (_last(incoming, b"x-forwarded-host") if client.trusted else None) or client.host
    if host is not None:
        lines.append((b"X-Forwarded-Host", host))
    lines.append((b"Forwarded", b", ".join([*forwarded, forwardedValue(client)])))
    realIP = _realIP(incoming, client)
    if realIP is not None:
        lines.append((b"X-Real-IP", realIP))
    return lines


@functools.lru_cache(maxsize=1024)
def _untrustedForwarding(
    address: str | None, secure: bool, host: bytes | None
) -> tuple[tuple[bytes, bytes], ...]:
    """
    L{_forwardingLines} for a client that is not a trusted proxy (they do
    not depend on the request's headers), made once per address, scheme
    and Host.
    """
    client = ClientInfo(address=address, secure=secure, host=host)
    return tuple(_forwardingLines(Headers(), client))


def _realIP(incoming: Headers, client: ClientInfo) -> bytes | None:
    """
    The C{X-Real-IP} value for a request from C{client}: its address; from
    a trusted proxy, the original client it vouches for.
    """
    address = client.address
    if client.trusted:
        if client.original is not None:
            address = client.original
        else:
            chain = _forwardedFor(incoming)
            if chain:
                return chain[-1]
    return None if address is None else address.encode("ascii")


def _forwardedFor(headers: Headers) -> list[bytes]:
    """
    The addresses in every C{X-Forwarded-For} header, in order.
    """
    joined = b",".join(headers.getRawHeaders(b"x-forwarded-for", []))
    return [part.strip() for part in joined.split(b",") if part.strip()]


def _last(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[-1].strip() if values else None


def originalClient(
    incoming: Headers, peer: str | None, isTrusted: Callable[[str], bool]
) -> str | None:
    """
    The address of the client that started a request: the peer itself,
    unless it is a trusted proxy, in which case the right-most address of
    C{X-Forwarded-For} that is not a trusted proxy (the left-most if all
    are). Addresses a trusted proxy vouches for can be believed; anything
    further left was written by the client and could be spoofed.
    """
    if peer is None or not isTrusted(peer):
        return peer
    chain = [
        v.strip().decode("ascii", "replace")
        for v in b",".join(incoming.getRawHeaders(b"x-forwarded-for", [])).split(b",")
        if v.strip()
    ]
    for address in reversed(chain):
        if not isTrusted(address):
            return address
    return chain[0] if chain else peer


def responseHeadersForClient(
    incoming: RawHeaders, connection: RawHeaders | None = None
) -> Iterator[tuple[bytes, list[bytes]]]:
    """
    The backend's response headers that are relayed to the client: all but
    the hop-by-hop ones, repeats (C{Set-Cookie}) intact. C{Content-Length}
    is kept; the server side chooses the client's framing.

    @param connection: The response's connection-control headers, when the
        HTTP client keeps them apart from C{incoming} (twisted.web does);
        headers named by its C{Connection} are dropped too (but for
        L{NEVER_CONNECTION_OPTIONS}, as for C{incoming}'s own).
    """
    named = _connectionOptions(connection) if connection is not None else frozenset()
    return _endToEnd(incoming, named)


def responseLinesForClient(
    lines: Iterable[tuple[bytes, bytes]],
    connection: RawHeaders | None = None,
    names: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """
    L{responseHeadersForClient} for a response whose header lines are kept
    as received, apart from its connection-control ones (C{connection}):
    the lines relayed to the client, in order, without grouping them.

    @param names: The lower-cased names of C{lines}, if known: when none
        is to be dropped, the lines are taken as they are.
    """
    drop = HOP_BY_HOP
    if connection is not None:
        named = _connectionOptions(connection)
        if named:
            drop = drop | named
    if names is not None and names.isdisjoint(drop):
        return list(lines)
    return [(name, value) for name, value in lines if name.lower() not in drop]


def forwardedValue(client: ClientInfo) -> bytes:
    """
    An RFC 7239 C{Forwarded} element for C{client}, e.g.
    C{for=192.0.2.1;host=example.com;proto=https}; an IPv6 address is
    quoted and bracketed (C{for="[2001:db8::1]"}).
    """
    if client.address is None:
        forAddress = "unknown"
    elif ":" in client.address:
        forAddress = f'"[{client.address}]"'
    else:
        forAddress = client.address
    parts = [b"for=" + forAddress.encode("ascii")]
    if client.host is not None:
        parts.append(b"host=" + _token(client.host))
    parts.append(b"proto=" + (b"https" if client.secure else b"http"))
    return b";".join(parts)


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def _token(value: bytes) -> bytes:
    """
    C{value} as an RFC 7230 token if it is one, otherwise a quoted-string.
    """
    if _TOKEN.match(value):
        return value
    escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + escaped + b'"'


UNEDITABLE: frozenset[bytes] = HOP_BY_HOP | frozenset({b"content-length", b"expect"})
"""
Headers a route may not set or remove: framing and connection control are
lbproxy's own to write.
"""

_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")


class HeaderEditError(ValueError):
    """
    A header edit names a header that may not be edited, or is not a valid
    header; the message says which.
    """


@attrs.frozen
class HeaderEdits:
    """
    Header changes a route makes to what it relays: C{remove} drops every
    header of those (lower-case) names, then C{set} replaces each named
    header with one value (or adds it).

    @ivar set: C{(name, value)} pairs, names as given.
    @ivar remove: Lower-case names.
    """

    set: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = frozenset()

    @classmethod
    def fromText(cls, set: Iterable[tuple[str, str]], remove: Iterable[str]) -> HeaderEdits:
        """
        Check and encode edits given as text (a config file's).

        @raise HeaderEditError: For a name that is not a token, a value
            with control characters, a header in L{UNEDITABLE}, or a header
            set twice (names differing only in case are the same header).
        """
        pairs = tuple((_editable(name), _fieldValue(name, value)) for name, value in set)
        names = [name.lower() for name, _ in pairs]
        for name in names:
            if names.count(name) > 1:
                raise HeaderEditError(f"header {name.decode('ascii')!r} is set more than once")
        return cls(set=pairs, remove=frozenset(_editable(name).lower() for name in remove))

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)

    @property
    def _touched(self) -> frozenset[bytes]:
        return self.remove | frozenset(name.lower() for name, _ in self.set)

    def applyToLines(self, lines: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """
        The header lines C{lines} with these edits made.
        """
        touched = self._touched
        kept = [(name, value) for name, value in lines if name.lower() not in touched]
        kept.extend(self.set)
        return kept

    def applyToHeaders(self, headers: Headers) -> None:
        """
        Make these edits to C{headers} in place.
        """
        for name in self.remove:
            headers.removeHeader(name)
        for name, value in self.set:
            headers.setRawHeaders(name, [value])

    def asText(self) -> dict[str, object]:
        """
        These edits as a config file states them (empty parts left out).
        """
        text: dict[str, object] = {}
        if self.set:
            text["set"] = {
                name.decode("ascii"): value.decode("latin-1") for name, value in self.set
            }
        if self.remove:
            text["remove"] = sorted(name.decode("ascii") for name in self.remove)
        return text


def _editable(name: str) -> bytes:
    encoded = name.encode("latin-1", "replace")
    if not _TOKEN.match(encoded):
        raise HeaderEditError(f"{name!r} is not a valid header name")
    if encoded.lower() in UNEDITABLE:
        raise HeaderEditError(f"header {name!r} is lbproxy's own and cannot be edited")
    return encoded


def _fieldValue(name: str, value: str) -> bytes:
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        raise HeaderEditError(f"the value of header {name!r} is not Latin-1 text") from None
    if not _FIELD_VALUE.match(encoded) or encoded != encoded.strip():
        raise HeaderEditError(
            f"the value of header {name!r} has control characters or surrounding spaces"
        )
    return encoded
