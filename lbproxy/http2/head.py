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

from collections.abc import Sequence

import attrs
from twisted.web.http_headers import Headers

from lbproxy.http.checks import Rejection, badRequest, checkFraming, checkRequestLine, validHost

# RFC 9113 8.2.2; h2's checks reset such a stream first, this says so
# again for anyone who turns them off.
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"]
)


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
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
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


__all__ = ["H2Head", "checkHead"]
