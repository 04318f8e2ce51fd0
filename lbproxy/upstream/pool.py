# -*- test-case-name: lbproxy.test.test_pool,lbproxy.test.test_retry,lbproxy.test.test_h2client -*-
"""
The client side of the proxy: HTTP/1.1 to backends over persistent,
pooled connections (the protocol itself is in L{lbproxy.upstream.connection}),
and HTTP/2 to C{h2c://} and C{h2://} backends, multiplexed
(L{lbproxy.upstream.h2client}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from zope.interface import implementer

from lbproxy.tls.client import BackendTLS, ClientTLSForHost
from lbproxy.upstream.backends import Backend, isIPLiteral
from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.connection import BackendConnection, BackendResponse
from lbproxy.upstream.connection import HeaderLines as ResponseHeaderLines
from lbproxy.upstream.h2client import H2_SCHEMES, ALPNh2, H2Upstream, UpgradeNotRelayed
from lbproxy.upstream.reply import Reply
from lbproxy.upstream.retry import IDEMPOTENT_METHODS, ConnectTimeoutError

EndpointForBackend = Callable[[str, int], IStreamClientEndpoint]
"""
Makes the endpoint used to connect to a backend's C{(host, port)}.
"""


@attrs.frozen
class UpstreamSettings:
    """
    Tunables of the upstream connection pool.

    @ivar connectTimeout: Seconds allowed to establish a connection.
    @ivar maxIdlePerBackend: Idle persistent connections kept per backend.
    @ivar idleTimeout: Seconds an idle connection is kept before closing.
    """

    connectTimeout: float = 5.0
    maxIdlePerBackend: int = 256
    idleTimeout: float = 30.0


@implementer(IStreamClientEndpoint)
@attrs.define
class _TimeoutEndpoint:
    """
    An endpoint whose connection attempt is cancelled after C{timeout}
    seconds on C{clock}, failing with L{ConnectTimeoutError}.

    Cancelling a connection attempt fails it with Twisted's
    L{twisted.internet.error.ConnectingCancelledError} (or
    L{twisted.internet.defer.CancelledError}), which C{addTimeout} would
    pass on as it is; whatever the attempt fails with once the time is
    up, it is reported as the connect timeout, so the proxy's status
    mapping and retry rules (L{lbproxy.upstream.retry.failedToConnect}) see one.
    """

    _wrapped: IStreamClientEndpoint
    _timeout: float
    _clock: IReactorTime

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._wrapped.connect(protocolFactory)
        timeout = self._timeout

        def timedOut(result: IProtocol | Failure, seconds: float) -> IProtocol:
            if isinstance(result, Failure):
                raise ConnectTimeoutError(timeout)
            return result

        d.addTimeout(timeout, self._clock, onTimeoutCancel=timedOut)
        return d


def directEndpointFactory(reactor: IReactorTCP) -> EndpointForBackend:
    """
    The production way to reach a backend: plain TCP to an IP literal
    (no resolver round trip), or a L{HostnameEndpoint} for a name.
    """

    def endpointFor(host: str, port: int) -> IStreamClientEndpoint:
        if isIPLiteral(host):
            if ":" in host:
                return TCP6ClientEndpoint(reactor, host, port)
            return TCP4ClientEndpoint(reactor, host, port)
        return HostnameEndpoint(reactor, host, port)

    return endpointFor


def _endpointForBackend(
    backend: Backend,
    endpointFor: EndpointForBackend,
    tlsFor: ClientTLSForHost,
    connectTimeout: float,
    clock: IReactorTime,
) -> IStreamClientEndpoint:
    """
    The endpoint for a new connection to C{backend}: TCP (or what
    C{endpointFor} makes), TLS for an C{https} backend (and, offering
    only C{h2} in ALPN, for an C{h2} one), and the connect timeout.
    """
    endpoint = endpointFor(backend.host, backend.port)
    if backend.scheme == "https":
        endpoint = wrapClientTLS(tlsFor(backend.host), endpoint)
    elif backend.scheme == "h2":
        endpoint = wrapClientTLS(ALPNh2(tlsFor(backend.host)), endpoint)
    return _TimeoutEndpoint(endpoint, connectTimeout, clock)


Interim = Callable[[int, bytes, ResponseHeaderLines], None]
"""
Called with each interim (1xx) response: code, reason phrase, header lines.
"""

HeaderLines = Sequence[tuple[bytes, bytes]]


class _Outgoing:
    """
    One request on its way to a backend, as L{Upstream.request} was given
    it (kept whole for a resend on a new connection).
    """

    __slots__ = ("backend", "body", "headers", "interim", "method", "target", "upgrade")

    def __init__(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: HeaderLines,
        body: StreamedBody | None,
        interim: Interim | None,
        upgrade: bool,
    ) -> None:
        self.backend = backend
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.interim = interim
        self.upgrade = upgrade


class _Idle:
    """
    The idle connections of one backend, most recently used last.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[BackendConnection, float]] = []

    def take(self) -> BackendConnection | None:
        while self.connections:
            connection, _ = self.connections.pop()
            if connection.reusable:
                return connection
        return None

    def discard(self, connection: BackendConnection) -> None:
        self.connections = [(c, t) for c, t in self.connections if c is not connection]


class _ResendIfStale:
    """
    Stands for a L{Reply} on a kept-alive connection: a failure that means
    the backend had closed the connection first is not the reply's, but
    the same request's on a new connection (see L{Upstream.resendIfStale}).
    """

    __slots__ = ("_outgoing", "_reply", "_upstream", "called")

    def __init__(self, upstream: Upstream, outgoing: _Outgoing, reply: Reply) -> None:
        self._upstream = upstream
        self._outgoing = outgoing
        self._reply = reply
        self.called = False

    def callback(self, response: BackendResponse) -> None:
        self.called = True
        if not self._reply.called:
            self._reply.callback(response)

    def errback(self, failure: Any = None) -> None:
        self.called = True
        if self._reply.called:
            return  # (cancelled: the connection's loss is no news)
        resent = self._upstream.resendIfStale(failure, self._outgoing)
        if resent is None:
            self._reply.errback(failure)
        else:
            self._reply.follow(resent)


class Upstream:
    """
    Sends requests to backends over persistent connections (one bounded
    idle pool per backend) with lbproxy's lean HTTP/1.1 client
    (L{lbproxy.upstream.connection}), and hands back the response as soon as its head
    arrives; the body streams through C{response.deliverBody}.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        settings: UpstreamSettings = UpstreamSettings(),
        endpointFor: EndpointForBackend | None = None,
        tlsFor: ClientTLSForHost | None = None,
    ) -> None:
        """
        @param reactor: Used for connections.
        @param clock: Used for every timer (connect timeout, idle timeout).
        @param endpointFor: How to reach a backend; defaults to
            L{directEndpointFactory}.
        @param tlsFor: The client TLS for an C{https} backend's host name;
            defaults to verifying against the platform's trust store.
        """
        self._clock = clock
        self._settings = settings
        self._endpointFor = endpointFor or directEndpointFactory(reactor)
        self._tlsFor = tlsFor or BackendTLS().creatorFor
        self._idle: dict[str, _Idle] = {}
        # Every open connection, with its backend's URL.
        self._open: dict[BackendConnection, str] = {}
        self._sweep: IDelayedCall | None = None
        self._closing: list[Deferred[None]] = []
        self._h2 = H2Upstream(
            clock,
            lambda backend, factory: self._endpoint(backend).connect(factory),
            settings.idleTimeout,
        )

    def _endpoint(self, backend: Backend) -> IStreamClientEndpoint:
        return _endpointForBackend(
            backend,
            self._endpointFor,
            self._tlsFor,
            self._settings.connectTimeout,
            self._clock,
        )

    def request(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: HeaderLines,
        body: StreamedBody | None,
        interim: Interim | None = None,
        upgrade: bool = False,
    ) -> Deferred[BackendResponse]:
        """
        Send one request to C{backend} (L{sendInto}, answered through a
        L{Deferred}; cancelling it cancels the request).

        @param target: The origin-form request target (path and query),
            relayed unchanged.
        @param headers: The header lines to send, including C{Host} and
            excluding framing headers (this writes its own).
        @param body: The request body, streamed to the backend as it
            arrives.
        @param interim: Called with each interim (1xx) response.
        @param upgrade: Whether the request asks for a protocol upgrade (a
            C{101} answer then makes the connection a tunnel).
        @return: Fires with the response when its head has arrived, or
            fails with the connection or protocol error.
        """
        reply: Reply
        d: Deferred[BackendResponse] = Deferred(lambda _: reply.cancel())
        reply = Reply(d.callback, d.errback)
        self.sendInto(reply, backend, method, target, headers, body, interim, upgrade)
        return d

    def sendInto(
        self,
        reply: Reply,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: HeaderLines,
        body: StreamedBody | None,
        interim: Interim | None = None,
        upgrade: bool = False,
    ) -> None:
        """
        L{request}, answered to C{reply} instead of a L{Deferred} (the
        proxy's way): on a kept-alive HTTP/1.1 connection the connection
        calls it directly; a new connection and an HTTP/2 backend answer
        through a L{Deferred} that it follows.
        """
        idle = self._idle.get(backend.url)
        connection = idle.take() if idle is not None else None
        if connection is None:
            # (An HTTP/2 backend's pool has no idle HTTP/1.1 connections.)
            outgoing = _Outgoing(backend, method, target, headers, body, interim, upgrade)
            reply.follow(self._sendOnNew(outgoing))
            return
        reply.cancelWith(connection.abort)
        pending: Reply | _ResendIfStale = reply
        if method in IDEMPOTENT_METHODS:
            outgoing = _Outgoing(backend, method, target, headers, body, interim, upgrade)
            pending = _ResendIfStale(self, outgoing, reply)
        connection.requestInto(pending, method, target, headers, body, interim, upgrade)

    def _sendOnNew(self, outgoing: _Outgoing) -> Deferred[BackendResponse]:
        """
        Send C{outgoing} on a new connection: an HTTP/2 backend's, or a new
        HTTP/1.1 one.
        """
        backend = outgoing.backend
        if backend.scheme in H2_SCHEMES:
            if outgoing.upgrade:
                return fail(UpgradeNotRelayed())
            return self._h2.request(  # type: ignore[return-value]
                backend,
                outgoing.method,
                outgoing.target,
                outgoing.headers,
                outgoing.body,
                outgoing.interim,
            )

        def send(connection: BackendConnection) -> Deferred[BackendResponse]:
            return connection.request(
                outgoing.method,
                outgoing.target,
                outgoing.headers,
                outgoing.body,
                outgoing.interim,
                outgoing.upgrade,
            )

        return self._connect(backend).addCallback(send)

    def resendIfStale(
        self, failure: Failure, outgoing: _Outgoing
    ) -> Deferred[BackendResponse] | None:
        """
        The request on a kept-alive connection failed with C{failure}: if
        the backend had closed it first (nothing was processed), the same
        request on a new connection; otherwise L{None}.
        """
        body = outgoing.body
        if failure.check(ResponseNeverReceived) and (body is None or body.replayable()):
            return self._sendOnNew(outgoing)
        return None

    def _connect(self, backend: Backend) -> Deferred[BackendConnection]:
        endpoint = self._endpoint(backend)

        def build() -> BackendConnection:
            connection = BackendConnection()
            connection.clock = self._clock
            connection.onIdle = lambda c: self._becameIdle(backend, c)
            connection.onClosed = lambda c: self._closed(backend, c)
            self._open[connection] = backend.url
            return connection

        factory = Factory.forProtocol(build)
        factory.noisy = False
        return endpoint.connect(factory)  # type: ignore[return-value]

    def _becameIdle(self, backend: Backend, connection: BackendConnection) -> None:
        url = backend.url
        idle = self._idle.get(url)
        if idle is None:
            idle = self._idle[url] = _Idle()
        idle.connections.append((connection, self._clock.seconds()))
        while len(idle.connections) > self._settings.maxIdlePerBackend:
            oldest, _ = idle.connections.pop(0)
            oldest.close()
        if self._sweep is None:
            self._sweep = self._clock.callLater(self._settings.idleTimeout, self._sweepIdle)

    def _sweepIdle(self) -> None:
        self._sweep = None
        deadline = self._clock.seconds() - self._settings.idleTimeout
        remaining = False
        for idle in self._idle.values():
            for connection, since in list(idle.connections):
                if since <= deadline:
                    idle.discard(connection)
                    connection.close()
                else:
                    remaining = True
        if remaining:
            self._sweep = self._clock.callLater(self._settings.idleTimeout / 2, self._sweepIdle)

    def _closed(self, backend: Backend, connection: BackendConnection) -> None:
        self._open.pop(connection, None)
        idle = self._idle.get(backend.url)
        if idle is not None:
            idle.discard(connection)
        if not self._open:
            waiting, self._closing = self._closing, []
            for d in waiting:
                d.callback(None)

    @property
    def settings(self) -> UpstreamSettings:
        """
        How this upstream connects and keeps connections.
        """
        return self._settings

    def connectionsTo(self, backend: Backend) -> int:
        """
        How many connections to C{backend} are open, busy or idle.
        """
        url = backend.url
        return sum(1 for target in self._open.values() if target == url) + self._h2.connectionsTo(
            backend
        )

    def idleTo(self, backend: Backend) -> int:
        """
        How many idle connections to C{backend} are kept.
        """
        idle = self._idle.get(backend.url)
        return (0 if idle is None else len(idle.connections)) + self._h2.idleTo(backend)

    def busy(self) -> bool:
        """
        Whether any connection is carrying a request.
        """
        idle = sum(len(pool.connections) for pool in self._idle.values())
        return len(self._open) > idle or self._h2.busy()

    def closeIdle(self, backend: Backend) -> None:
        """
        Close the idle connections kept to C{backend} (one leaving the
        pool); busy ones finish their request.
        """
        self._h2.closeIdle(backend)
        idle = self._idle.pop(backend.url, None)
        if idle is not None:
            for connection, _ in idle.connections:
                connection.close()

    def abortTo(self, backend: Backend) -> None:
        """
        Abort every connection to C{backend}, busy or idle (it left the
        pool and its drain time is up).
        """
        self.closeIdle(backend)
        self._h2.abortTo(backend)
        url = backend.url
        for connection, target in list(self._open.items()):
            if target == url:
                connection.abort()

    def close(self) -> Deferred[None]:
        """
        Close every idle connection (and abort any still busy); fires when
        they are all closed.
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        h2 = self._h2.close()
        done: Deferred[None] = Deferred()
        if not self._open:
            done.callback(None)
        else:
            self._closing.append(done)
            for connection in list(self._open):
                connection.abort()
        both: Deferred[None] = gatherResults([h2, done]).addCallback(lambda _: None)
        return both


__all__ = [
    "EndpointForBackend",
    "Interim",
    "Upstream",
    "UpstreamSettings",
    "directEndpointFactory",
]
