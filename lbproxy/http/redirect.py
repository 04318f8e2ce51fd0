# -*- test-case-name: lbproxy.test.test_tlsservice -*-
"""
C{--redirect-http}: a plain-HTTP listener that answers every request with a
308 Permanent Redirect to the same host and path over HTTPS, so that a
browser typing C{example.com} ends up on C{https://example.com/}.

308 rather than 301 keeps the method and body of a non-GET request.
Nothing is proxied on this listener.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lbproxy.http.checks import validHost
from lbproxy.http.reasons import reasonPhrase

__all__ = ["RedirectToHTTPS", "redirectSite"]


class RedirectToHTTPS(Resource):
    """
    Answers every request with a 308 to C{https://HOST[:PORT]TARGET}: the
    request's Host without its port, the HTTPS port unless it is 443, and
    the request's path and query.  A request without a valid Host gets
    400.

    @ivar httpsPort: the port the HTTPS listener is on.
    """

    isLeaf = True

    def __init__(self, httpsPort: int) -> None:
        super().__init__()
        self.httpsPort = httpsPort

    def location(self, host: bytes, target: bytes) -> bytes | None:
        """
        The HTTPS URL for a request to C{host} (a Host header value) with
        request-target C{target}, or L{None} if C{host} is not a valid Host.
        """
        if not validHost(host):
            return None
        # Drop the port: a bracketed IPv6 address ends at its "]".
        end = host.index(b"]") + 1 if host.startswith(b"[") else len(host.partition(b":")[0])
        name = host[:end]
        port = b"" if self.httpsPort == 443 else b":%d" % (self.httpsPort,)
        if not target.startswith(b"/"):
            target = b"/"
        return b"https://" + name.lower() + port + target

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        host = request.getHeader(b"host")
        location = None if host is None else self.location(host, request.uri)
        if location is None:
            request.setResponseCode(400, reasonPhrase(400))
            return b"400 Bad Request: this address serves only HTTPS; send a valid Host.\n"
        request.setResponseCode(308, reasonPhrase(308))
        request.setHeader(b"Location", location)
        return b"This site is served over HTTPS: " + location + b"\n"


class _QuietSite(Site):
    """
    A site that writes no access log and no per-connection lines.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def redirectSite(httpsPort: int) -> Site:
    """
    The site for a C{--redirect-http} listener that sends clients to the
    HTTPS listener on C{httpsPort}.
    """
    return _QuietSite(RedirectToHTTPS(httpsPort))
