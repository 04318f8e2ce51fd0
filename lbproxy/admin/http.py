# -*- test-case-name: lbproxy.test.test_adminhttp -*-
"""
The admin API over HTTP: a twisted.web site with one leaf resource that
checks the bearer token, reads the whole request body (at most
L{MAX_BODY} bytes are kept) and answers with what L{AdminAPI.handle}
gives. It writes no access log: the API logs the changes it makes.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lbproxy.admin.api import MAX_BODY, AdminHandler
from lbproxy.admin.auth import authorize
from lbproxy.admin.dashboard import isPageRequest
from lbproxy.admin.response import AdminResponse, errorResponse
from lbproxy.http.reasons import reasonPhrase

IDLE_TIMEOUT = 60.0
"""
Seconds an admin connection may stay idle before it is closed.
"""


class AdminRequest(Request):
    """
    A request whose body is kept in memory, up to L{MAX_BODY} bytes; past
    that it is read and dropped, and L{tooLarge} is set.

    @ivar tooLarge: Whether the body is (or is declared to be) larger
        than L{MAX_BODY}.
    """

    tooLarge = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        """
        Keep the body in memory, never in a temporary file; note a declared
        length that is too large.
        """
        self.content = BytesIO()
        if length is not None and length > MAX_BODY:
            self.tooLarge = True

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep C{data} unless the body has grown too large.
        """
        self._received += len(data)
        if self._received > MAX_BODY:
            self.tooLarge = True
        if not self.tooLarge:
            assert self.content is not None
            self.content.write(data)


class AdminResource(Resource):
    """
    Every admin request, whatever its path, goes to L{AdminAPI.handle}
    once its token is checked; but the dashboard page, which holds no
    data, is served to a browser without one (see
    L{lbproxy.admin.dashboard}).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, api: AdminHandler, token: bytes | None) -> None:
        super().__init__()
        self._api = api
        self._token = token

    def render(self, request: Request) -> int:
        """
        Answer C{request}; the answer is written when the API has it.
        """
        accepts = request.requestHeaders.getRawHeaders(b"accept")
        accept = None if accepts is None else b", ".join(accepts).decode("latin-1")
        method = request.method.decode("latin-1")
        path = request.uri.decode("latin-1")
        denied = authorize(request.requestHeaders.getRawHeaders(b"authorization"), self._token)
        if denied is not None and not isPageRequest(method, path, accept):
            _send(request, denied)
            return NOT_DONE_YET
        if isinstance(request, AdminRequest) and request.tooLarge:
            _send(request, errorResponse(413, f"the request body is larger than {MAX_BODY} bytes"))
            return NOT_DONE_YET
        assert request.content is not None
        body = request.content.read()
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(response: AdminResponse) -> None:
            if gone:
                self._log.info(
                    "admin client left before the answer to {method} {path} ({status})",
                    method=method,
                    path=path,
                    status=response.status,
                )
                return
            _send(request, response)

        handling = self._api.handle(method, path, body, accept)
        handling.addCallback(answer).addErrback(
            lambda failure: self._log.failure("answering an admin request", failure)
        )
        return NOT_DONE_YET


def _send(request: Request, response: AdminResponse) -> None:
    """
    Write C{response} as the answer to C{request}, and finish it.
    """
    request.setResponseCode(response.status, reasonPhrase(response.status))
    headers = request.responseHeaders
    headers.removeHeader(b"server")
    headers.setRawHeaders(b"content-type", [response.contentType.encode("latin-1")])
    headers.setRawHeaders(b"content-length", [b"%d" % len(response.body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    for name, value in response.headers:
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    request.write(response.body)
    request.finish()


class _AdminSite(Site):
    """
    A site that writes no access log and no per-connection lines.
    """

    noisy = False
    displayTracebacks = False
    requestFactory = AdminRequest

    def log(self, request: Any) -> None:
        """
        No access log.
        """

    def logPrefix(self) -> str:
        """
        How the listening port names this site in its log line.
        """
        return "lbproxy admin API"


def adminSite(api: AdminHandler, token: bytes | None, clock: IReactorTime) -> Site:
    """
    The admin API's site.

    @param token: The bearer token every request must carry, or L{None} for
        none (then listen only on loopback or a unix socket; see
        L{lbproxy.admin.auth.checkAdminEndpoint}).
    @param clock: Times idle connections out.
    """
    return _AdminSite(AdminResource(api, token), timeout=IDLE_TIMEOUT, reactor=clock)


__all__ = ["IDLE_TIMEOUT", "AdminRequest", "AdminResource", "adminSite"]
