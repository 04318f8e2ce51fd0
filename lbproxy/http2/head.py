# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
The checks of an HTTP/2 request head, as the HTTP/1.1 edge checks a request
line and its headers (L{lbproxy.http.checks}), with the same limits.

What makes a header block malformed as HTTP/2 sees it (unknown, repeated,
misplaced or missing pseudo-headers, upper-case or illegal names, CR, LF or
NUL in values, connection-specific fields: RFC 9113 8.1.1, 8.2) has already
reset the stream, by C{h2}'s own checks
(L{lbproxy.http2.connection.H2EdgeConnection}). What is left is what
HTTP/1.1 checks too, answered on the stream alone: the method, the target
and its length, the authority as a Host, the framing, the size of the
header section.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
from twisted.web.http_headers import Headers

from lbproxy.http.checks import Rejection, badRequest, checkFraming, checkRequestLine, validHost

CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"]
)
"""
The connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2; C{te}
too, but for C{trailers}).
"""


@attrs.frozen
class H2Head:
    """
    A checked HTTP/2 request head, in the terms of an HTTP/1.1 one.

    @ivar method: C{:method}.
    @ivar path: C{:path}, the origin-form target (or C{*}).
    @ivar scheme: C{:scheme}.
    @ivar headers: The regular fields, with C{Host} from C{:authority}
        and the cookie fields joined into one (RFC 9113 8.2.3).
    @ivar contentLength: The declared body length, if any.
    """

    method: bytes
    path: bytes
    scheme: bytes
    headers: Headers
    contentLength: int | None


def checkHead(
    fields: Sequence[tuple[bytes, bytes]], maxTarget: int, maxHeaderBytes: int, maxFields: int
) -> H2Head | Rejection:
    """
    Check an HTTP/2 request's header list (names lower-case, pseudo-headers
    first, as C{h2} hands them over) against the HTTP/1.1 edge's limits.

    @return: The head, or the L{Rejection} to answer the stream with.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    size = 0
    for name, value in fields:
        if name.startswith(b":"):
            pseudo[name] = value
            continue
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            return badRequest(f"connection-specific header field {name.decode('latin-1')!r}")
        regular.append((name, value))
        # As the same field would count on an HTTP/1.1 line: name, ": ",
        # value, CRLF.
        size += len(name) + len(value) + 4
    if len(regular) > maxFields or size > maxHeaderBytes:
        return Rejection(
            431,
            "Request Header Fields Too Large",
            f"more than {maxFields} header fields or {maxHeaderBytes} bytes of headers",
        )
    method = pseudo.get(b":method", b"")
    path = pseudo.get(b":path", b"")
    scheme = pseudo.get(b":scheme", b"")
    if method == b"CONNECT":
        return badRequest("CONNECT is not supported")
    rejection = checkRequestLine(b"%s %s HTTP/1.1" % (method, path), maxTarget)
    if rejection is not None:
        return rejection
    if not (path.startswith(b"/") or path == b"*"):
        return badRequest(":path must be origin-form or '*'")
    if scheme not in (b"http", b"https"):
        return badRequest(":scheme must be http or https")
    headers = Headers()
    hosts: list[bytes] = []
    cookies: list[bytes] = []
    contentLengths: list[bytes] = []
    for name, value in regular:
        if name == b"host":
            hosts.append(value)
        elif name == b"cookie":
            cookies.append(value)
        else:
            if name == b"content-length":
                contentLengths.append(value)
            headers.addRawHeader(name, value)
    authority = pseudo.get(b":authority")
    if len(hosts) > 1:
        return badRequest("more than one Host header")
    if authority is None:
        if not hosts:
            return badRequest("request without :authority or Host")
        authority = hosts[0]
    elif hosts and hosts[0].lower() != authority.lower():
        return badRequest("Host differs from :authority")
    if not validHost(authority):
        return badRequest("invalid :authority")
    headers.setRawHeaders(b"host", [authority])
    if cookies:
        headers.setRawHeaders(b"cookie", [b"; ".join(cookies)])
    rejection = checkFraming(contentLengths, [])
    if rejection is not None:
        return rejection
    if len(set(contentLengths)) > 1:
        return badRequest("conflicting Content-Length values")
    length = int(contentLengths[0]) if contentLengths else None
    return H2Head(method, path, scheme, headers, length)


_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_VALUE = re.compile(rb"(?:[^\x00\r\n\t ](?:[^\x00\r\n]*[^\x00\r\n\t ])?)?\Z")
_REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":path", b":authority"])


def plainlyWellFormed(fields: Sequence[tuple[bytes, bytes]], trailers: bool) -> bool:
    """
    Whether a header block is well formed by RFC 9113 8.1.1-8.3 for the
    ordinary case, checked in one pass: lower-case token names,
    C{:method}, C{:scheme}, C{:path} (not empty) and at most
    C{:authority} first and once each (no CONNECT), or no pseudo-header at
    all in C{trailers}; values without NUL, CR, LF or surrounding
    whitespace; no connection-specific field, C{te} only C{trailers}; a
    request's C{:authority} or C{Host}, equal when both are there, and one
    C{Host} at most.

    C{True} only for blocks that C{h2}'s own checks
    (L{h2.utilities.validate_headers}) accept too; C{False} means "ask
    them", which they answer for everything this does not take (a name
    with other characters, CONNECT), at several times the cost.
    """
    seen: set[bytes] = set()
    regular = False
    authority = host = None
    method = path = None
    nameOK = _NAME.match
    valueOK = _VALUE.match
    for name, value in fields:
        if name[:1] == b":":
            if regular or trailers or name in seen or name not in _REQUEST_PSEUDO:
                return False
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        else:
            regular = True
            if nameOK(name) is None or name in CONNECTION_SPECIFIC:
                return False
            if name == b"te" and value.lower() != b"trailers":
                return False
            if name == b"host" and not trailers:
                if host is not None:
                    return False
                host = value
        if valueOK(value) is None:
            return False
    if trailers:
        return True
    if method is None or method == b"CONNECT" or not path or b":scheme" not in seen:
        return False
    if authority is None and host is None:
        return False
    return authority is None or host is None or authority == host


__all__ = ["CONNECTION_SPECIFIC", "H2Head", "checkHead", "plainlyWellFormed"]
