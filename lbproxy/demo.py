# -*- test-case-name: lbproxy.test.test_service -*-
"""
The built-in demo: two tiny backends answering like the original
write-up's containers (C{<p>HTTP Server-N</p>}).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class DemoBackendResource(Resource):
    """
    Answers every request with C{<p>HTTP Server-N</p>}.
    """

    isLeaf = True

    def __init__(self, number: int) -> None:
        super().__init__()
        self._body = f"<p>HTTP Server-{number}</p>\n".encode("ascii")

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._body


def demoBackendSite(number: int) -> Site:
    """
    A site for demo backend C{number}, without request logging.
    """
    site = Site(DemoBackendResource(number))
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


DEMO_LISTEN = ("ssl:8443", "tcp:8080")
"""
Where the demo proxy listens: HTTPS with an ad-hoc certificate, and HTTP.
"""
