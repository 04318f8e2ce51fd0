# -*- test-case-name: lbproxy.test.test_dashboard -*-
"""
The admin API's live dashboard: C{GET /} answers a browser with one
self-contained HTML page (C{dashboard.html} beside this module: inline
CSS, JavaScript and SVG, nothing fetched from elsewhere) that polls
C{GET /dashboard/state}, C{/dashboard/history} and C{/dashboard/decisions}
and draws them. Scripts still get the JSON index from C{GET /?format=json}
or with C{Accept: application/json}.

The page itself holds no data, so it is served without the admin token;
it asks for the token when the JSON endpoints answer 401, and sends it
with each of them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from lbproxy.admin.response import AdminResponse
from lbproxy.admin.views import backendView
from lbproxy.balancer import PoolState

HTML = "text/html; charset=utf-8"
"""
The content type of the page.
"""

PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)
"""
Headers of the page: it may load nothing from elsewhere and talk only to
this admin API, and no other site may frame it.
"""


@functools.cache
def page() -> bytes:
    """
    The dashboard page, as installed with lbproxy.
    """
    return files("lbproxy.admin").joinpath("dashboard.html").read_bytes()


def pageResponse() -> AdminResponse:
    """
    The answer to a browser's C{GET /}.
    """
    return AdminResponse(200, HTML, page(), PAGE_HEADERS)


def wantsJSON(query: Mapping[str, Sequence[str]], accept: str | None) -> bool:
    """
    Whether a C{GET /} asks for the JSON index rather than the page: its
    query says C{format=json}, or its C{Accept} names JSON and not HTML.
    """
    formats = query.get("format", [])
    if formats:
        return formats[-1] == "json"
    wanted = (accept or "").lower()
    return "application/json" in wanted and "text/html" not in wanted


def isPageRequest(method: str, path: str, accept: str | None) -> bool:
    """
    Whether C{method path} is a request for the page itself (C{GET /}
    wanting HTML), which needs no token.
    """
    target, _, query = path.partition("?")
    if method != "GET" or target != "/":
        return False
    return not wantsJSON(parse_qs(query, keep_blank_values=True), accept)


def stateView(pools: Sequence[PoolState], decisionSample: int | None) -> dict[str, Any]:
    """
    C{GET /dashboard/state}: every pool with its chooser and its backends
    as the admin API shows them, and the decision sampling rate.
    """
    return {
        "pools": [
            {
                "name": pool.name,
                "chooser": pool.chooser,
                "backends": [backendView(backend) for backend in pool.backends],
            }
            for pool in pools
        ],
        "decision_sample": decisionSample,
    }


__all__ = [
    "HTML",
    "PAGE_HEADERS",
    "isPageRequest",
    "page",
    "pageResponse",
    "stateView",
    "wantsJSON",
]
