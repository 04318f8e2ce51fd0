# -*- test-case-name: lbproxy.test.test_target -*-
"""
Reading where a request is going: its request-target and Host.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs
from twisted.web.iweb import IRequest

from lbproxy.http.checks import validHost


class TargetError(ValueError):
    """
    The request's target or Host is unusable; the message says why and the
    client gets a 400.
    """


@attrs.frozen
class Route:
    """
    Where a request goes.

    @ivar target: The origin-form target (path and query) to relay.
    @ivar host: The Host to forward and route on, or C{None} for an
        HTTP/1.0 request without one.
    """

    target: bytes
    host: bytes | None


def routeTarget(request: IRequest) -> Route:
    """
    Work out the target and Host of C{request}.

    An origin-form target (C{/path?query}) is relayed as is with the
    request's single Host header. For an absolute-form target
    (C{http://authority/path}) the authority wins and becomes the Host
    (RFC 9112 3.2.2), so it must pass the checks a Host header passes
    (L{lbproxy.http.checks.validHost}: name or address, numeric port);
    routing and C{--allow-host} then see it as they would a Host.
    Anything else is refused.

    @raise TargetError: For a target that is neither, an absolute-form
        target whose authority is not a valid Host, a missing Host on
        HTTP/1.1 or more than one Host header.
    """
    uri: bytes = request.uri
    version: bytes = getattr(request, "clientproto", b"HTTP/1.1")
    hosts = request.requestHeaders.getRawHeaders(b"host", [])
    if len(hosts) > 1:
        raise TargetError("more than one Host header")
    host = hosts[0] if hosts else None
    if uri.startswith(b"/"):
        if host is None and version == b"HTTP/1.1":
            raise TargetError("HTTP/1.1 request without Host")
        return Route(target=uri, host=host)
    if uri == b"*" and request.method == b"OPTIONS":
        return Route(target=uri, host=host)
    lowered = uri[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        if host is None and version == b"HTTP/1.1":
            raise TargetError("HTTP/1.1 request without Host")
        try:
            parts = urlsplit(uri)
        except ValueError:
            raise TargetError("absolute-form target with an invalid authority") from None
        if not parts.netloc or b"@" in parts.netloc:
            raise TargetError("absolute-form target without a usable authority")
        if not validHost(parts.netloc):
            # E.g. http://localhost:1,evil.com/: read as a Host, only
            # "localhost" would be checked against --allow-host.
            raise TargetError("absolute-form target with an invalid authority")
        target = parts.path or b"/"
        if parts.query:
            target += b"?" + parts.query
        request.requestHeaders.setRawHeaders(b"host", [parts.netloc])
        return Route(target=target, host=parts.netloc)
    raise TargetError("request target must start with '/'")


def hostName(host: bytes | None) -> str:
    """
    The lower-case host name of a Host value, without port or IPv6 brackets.
    """
    if host is None:
        return ""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if ":" in text else text
