# -*- test-case-name: lbproxy.test.test_requestid -*-
"""
Request IDs: every request gets one, in a header (C{X-Request-ID} by
default) that goes to the backend, comes back to the client and is logged.

A request without the header gets a new ID; a request that brings its own
keeps it only when it comes from a C{--trusted-proxy} (which vouches for
it, as for X-Forwarded-For), from anyone else it is replaced: a client
could otherwise choose the ID under which its requests are logged, or
collide with another's.

A new ID is 128 random bits from C{os.urandom}, as 32 hex digits: as
unique as a version 4 UUID (122 random bits) and about five times cheaper
to make (0.37 µs against 1.75 µs for C{uuid.uuid4().hex}).
"""

from __future__ import annotations

import binascii
import ipaddress
import os
from collections.abc import Sequence

import attrs
from twisted.web.http_headers import Headers

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_HEADER = "X-Request-ID"
"""
The header that carries the ID unless C{--request-id-header} names
another.
"""


@attrs.frozen
class RequestIdSettings:
    """
    Whether and how requests get IDs.

    @ivar enabled: False (C{--request-id off}) leaves requests as they
        came: no ID is made, none added or removed.
    @ivar header: The header that carries the ID, both ways.
    @ivar trustedProxies: Peers whose own ID is passed through.
    """

    enabled: bool = True
    header: bytes = DEFAULT_HEADER.encode("ascii")
    trustedProxies: tuple[IPNetwork, ...] = ()

    def isTrusted(self, address: str | None) -> bool:
        """
        Whether C{address} (a peer's IP address as text) is in one of the
        trusted networks.
        """
        if address is None or not self.trustedProxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trustedProxies)


def newRequestId() -> bytes:
    """
    A new request ID: 128 random bits as 32 lower-case hex digits.
    """
    return binascii.hexlify(os.urandom(16))


def keptRequestId(offered: Sequence[bytes] | None, trusted: bool) -> bytes | None:
    """
    The ID a request brought that it keeps: the first non-empty value of
    the header, when its peer is trusted; L{None} (make a new one)
    otherwise.
    """
    if not offered or not trusted:
        return None
    for value in offered:
        value = value.strip()
        if value:
            return value
    return None


def assignRequestId(
    requestHeaders: Headers,
    responseHeaders: Headers | None,
    peer: str | None,
    settings: RequestIdSettings,
) -> bytes:
    """
    Give a request its ID: the header in C{requestHeaders} (sent on to the
    backend) and in C{responseHeaders} (the client's answer; L{None} when
    the caller sets it) holds exactly that one value.

    @param peer: The address of the connection's peer, to decide whether
        an ID the request brought is kept (see L{keptRequestId}).
    @return: The ID.
    """
    name = settings.header
    offered = requestHeaders.getRawHeaders(name)
    kept = None if offered is None else keptRequestId(offered, settings.isTrusted(peer))
    requestId = newRequestId() if kept is None else kept
    requestHeaders.setRawHeaders(name, [requestId])
    if responseHeaders is not None:
        responseHeaders.setRawHeaders(name, [requestId])
    if requestHeaders.hasHeader(b"connection"):
        _unlist(requestHeaders, name)
    return requestId


def _unlist(requestHeaders: Headers, name: bytes) -> None:
    """
    Take C{name} out of the request's C{Connection} header, so that a
    client cannot make the ID a hop-by-hop header that the backend never
    gets.
    """
    lower = name.lower()
    values = requestHeaders.getRawHeaders(b"connection", [])
    if not any(lower in value.lower() for value in values):
        return
    tokens = [
        token.strip()
        for value in values
        for token in value.split(b",")
        if token.strip() and token.strip().lower() != lower
    ]
    if tokens:
        requestHeaders.setRawHeaders(b"connection", [b", ".join(tokens)])
    else:
        requestHeaders.removeHeader(b"connection")


__all__ = [
    "DEFAULT_HEADER",
    "RequestIdSettings",
    "assignRequestId",
    "keptRequestId",
    "newRequestId",
]
