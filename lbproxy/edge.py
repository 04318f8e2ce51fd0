"""
The client-facing HTTP server: a twisted.web L{Site} whose channel enforces
the request body limit and whose log is lbproxy's access log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from lbproxy.accesslog import AccessLog

DEFAULT_MAX_BODY = 100 * 1024 * 1024


class ProxyRequest(Request):
    """
    A request that stops buffering a chunked body once it passes the
    site's body limit, answering 413 and closing.
    """

    _received = 0
    rejected = False

    def handleContentChunk(self, data: bytes) -> None:
        if self.rejected:
            return
        self._received += len(data)
        channel: ProxyChannel = self.channel  # type: ignore[assignment]
        if self._received > channel.site.maxBodySize:
            self.rejected = True
            channel.rejectRequest(
                self,
                413,
                "Content Too Large",
                "The request body is larger than this proxy accepts.",
            )
            return
        super().handleContentChunk(data)


class ProxyChannel(http.HTTPChannel):
    """
    An HTTP channel that refuses oversized bodies before reading them: a
    declared C{Content-Length} above the limit gets 413 (and no
    C{100 Continue}) and the connection is closed.
    """

    site: ProxySite
    _log = Logger()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channelOpened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.channelClosed(self)

    def drain(self) -> None:
        """
        Close this connection as soon as it has no request in progress:
        now if it is idle, otherwise after the current responses (which say
        C{Connection: close}); nothing further is read from it.
        """
        self.persistent = False
        if not self.requests:
            self.loseConnection()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not self.persistent:
            headers.setRawHeaders(b"Connection", [b"close"])
        super().writeHeaders(version, code, reason, headers)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        if self.length is not None and self.length > self.site.maxBodySize:
            request.rejected = True
            self.rejectRequest(
                request,
                413,
                "Content Too Large",
                "The request body is larger than this proxy accepts.",
            )
            return
        super().allHeadersReceived()

    def rejectRequest(self, request: ProxyRequest, code: int, reason: str, message: str) -> None:
        """
        Answer C{request} with a short error of the proxy's own before its
        body has been read, log it and close the connection; nothing more
        of this connection is parsed.
        """
        body = f"{code} {reason}: {message}\n".encode()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (code, reason.encode("ascii"), len(body), body)
        )
        self.site.accessLog.logRejected(
            request.getClientAddress(),
            self._command,
            self._path,
            self._version,
            code,
            len(body),
            message,
        )
        # Ignore whatever else the client sends on this connection.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.loseConnection()


class ProxySite(Site):
    """
    The proxy's site: L{ProxyChannel}s making L{ProxyRequest}s, an access
    log of lbproxy's own, no sessions.

    @ivar maxBodySize: The largest request body accepted, in bytes.
    @ivar accessLog: Where access log lines go.
    """

    _log = Logger()
    protocol = ProxyChannel  # type: ignore[assignment]
    requestFactory = ProxyRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: IResource,
        accessLog: AccessLog,
        maxBodySize: int = DEFAULT_MAX_BODY,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.accessLog = accessLog
        self.maxBodySize = maxBodySize
        self.channels: set[ProxyChannel] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def channelOpened(self, channel: ProxyChannel) -> None:
        """
        Track an open client connection; while draining, close it at once.
        """
        self.channels.add(channel)
        if self.draining:
            channel.drain()

    def channelClosed(self, channel: ProxyChannel) -> None:
        """
        Forget a closed client connection.
        """
        self.channels.discard(channel)
        if self.draining and not self.channels:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Close idle client connections now and busy ones when their current
        responses are done; after C{timeout} seconds abort what is left.

        @return: Fires when every client connection is closed.
        """
        self.draining = True
        done: Deferred[None] = Deferred()
        if not self.channels:
            done.callback(None)
            return done
        self._drained.append(done)
        for channel in list(self.channels):
            channel.drain()
        if not self.channels:
            return done
        self._log.info(
            "draining {count} client connections (up to {timeout:g}s)",
            count=len(self.channels),
            timeout=timeout,
        )

        def abortRest() -> None:
            if self.channels:
                self._log.warn(
                    "drain timeout: aborting {count} client connections",
                    count=len(self.channels),
                )
            for channel in list(self.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()  # type: ignore[attr-defined]

        timer = self.reactor.callLater(timeout, abortRest)
        done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return done

    def log(self, request: Request) -> None:  # type: ignore[override]
        """
        Write the access log line for a finished request.
        """
        self.accessLog.logRequest(request)

    def startFactory(self) -> None:
        """
        Nothing to open: the access log is opened by its owner.
        """

    def stopFactory(self) -> None:
        """
        Nothing to close: the access log is closed by its owner.
        """
