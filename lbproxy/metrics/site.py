# -*- test-case-name: lbproxy.test.test_metrics -*-
"""
C{--metrics ENDPOINT}: a listener that answers C{GET /metrics} and nothing
else, for a Prometheus scrape without the admin API's powers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lbproxy.http.reasons import reasonPhrase
from lbproxy.metrics.render import CONTENT_TYPE

IDLE_TIMEOUT = 60.0
"""
Seconds an idle scrape connection is kept open.
"""


class MetricsResource(Resource):
    """
    Answers C{GET /metrics} (and C{HEAD}) with C{render()}'s exposition;
    404 for any other path, 405 for any other method.
    """

    isLeaf = True

    def __init__(self, render: Callable[[], bytes | Deferred[bytes]]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"Cache-Control", b"no-store")
        if request.path.rstrip(b"/") != b"/metrics":
            return _plain(request, 404, b"only /metrics is served here\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _plain(request, 405, b"only GET /metrics is served here\n")

        def done(text: bytes) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
            request.setHeader(b"Content-Length", b"%d" % (len(text),))
            if request.method != b"HEAD":
                request.write(text)
            request.finish()

        def failed(reason: Failure) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(503, reasonPhrase(503))
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                request.write(f"metrics unavailable: {reason.getErrorMessage()}\n".encode())
                request.finish()

        maybeDeferred(self._render).addCallbacks(done, failed)
        return NOT_DONE_YET


def _plain(request: Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code, reasonPhrase(code))
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return body


class _QuietSite(Site):
    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """
        No access log.
        """

    def logPrefix(self) -> str:
        return "lbproxy metrics"


def metricsSite(render: Callable[[], bytes | Deferred[bytes]], clock: IReactorTime) -> Site:
    """
    The site of C{--metrics}: C{GET /metrics} answered with C{render()}.
    """
    return _QuietSite(MetricsResource(render), timeout=IDLE_TIMEOUT, reactor=clock)


__all__ = ["IDLE_TIMEOUT", "MetricsResource", "metricsSite"]
