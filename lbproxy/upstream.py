"""
The client side of the proxy: HTTP/1.1 to backends over persistent,
pooled connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from lbproxy.backends import Backend, isIPLiteral
from lbproxy.tls import BackendTLS, ClientTLSForHost

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
    maxIdlePerBackend: int = 64
    idleTimeout: float = 30.0


@implementer(IStreamClientEndpoint)
@attrs.define
class _TimeoutEndpoint:
    """
    An endpoint whose connection attempt is cancelled after C{timeout}
    seconds on C{clock}, failing with L{twisted.internet.defer.TimeoutError}.
    """

    _wrapped: IStreamClientEndpoint
    _timeout: float
    _clock: IReactorTime

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._wrapped.connect(protocolFactory)
        d.addTimeout(self._timeout, self._clock)
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


@implementer(IAgentEndpointFactory)
@attrs.define
class _AgentEndpoints:
    """
    Adapts an L{EndpointForBackend} to what L{Agent} asks for, adding the
    connect timeout, and TLS for C{https} backends.
    """

    _endpointFor: EndpointForBackend
    _connectTimeout: float
    _clock: IReactorTime
    _tlsFor: ClientTLSForHost

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        if host.startswith("["):
            host = host[1:-1]
        endpoint = self._endpointFor(host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tlsFor(host), endpoint)
        return _TimeoutEndpoint(endpoint, self._connectTimeout, self._clock)


class InvalidResponse(Exception):
    """
    A backend's response head cannot be relayed safely (ambiguous framing,
    a header line over the limit); its connection was dropped.
    """


MAX_RESPONSE_HEADER_LINE = 64 * 1024


class _ClientProtocol(HTTP11ClientProtocol):
    """
    twisted.web's HTTP/1.1 client protocol, stricter about response
    framing, and exposing the response's connection-control headers as
    C{response.connectionHeaders}.

    twisted.web keeps C{Connection}, C{Content-Length} and friends out of
    C{response.headers}; a proxy needs C{Connection} to know which other
    headers are hop-by-hop. twisted.web also accepts a response with both
    Content-Length and Transfer-Encoding (a smuggling shape) and mishandles
    an over-long header line; both make the connection unusable, so it is
    aborted (never reused) and the request fails. This reads the parser's
    private C{connHeaders}; a lean client of our own will make it
    unnecessary.
    """

    _log = Logger()

    def request(self, request: Any) -> Deferred[IResponse]:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        connHeaders = getattr(parser, "connHeaders", None)
        if parser is not None:
            parser.MAX_LENGTH = MAX_RESPONSE_HEADER_LINE
            parser.lineLengthExceeded = lambda line: self._invalid("header line too long")

        def check(response: IResponse) -> IResponse:
            headers = connHeaders or Headers()
            if headers.hasHeader(b"content-length") and headers.hasHeader(b"transfer-encoding"):
                self._invalid("both Content-Length and Transfer-Encoding")
                raise InvalidResponse("both Content-Length and Transfer-Encoding")
            response.connectionHeaders = headers  # type: ignore[attr-defined]
            return response

        return d.addCallback(check)

    def _invalid(self, reason: str) -> None:
        self._log.warn("dropping a backend connection: invalid response ({reason})", reason=reason)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per connection.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


class Upstream:
    """
    Sends requests to backends over persistent connections, one bounded
    idle pool per backend, and hands back the response as soon as its
    headers arrive; the body streams through L{IResponse.deliverBody}.
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
        @param clock: Used for every timer (connect timeout, idle timeout,
            body production).
        @param endpointFor: How to reach a backend; defaults to
            L{directEndpointFactory}.
        @param tlsFor: The client TLS for an C{https} backend's host name;
            defaults to verifying against the platform's trust store.
        """
        self._pool = _QuietPool(clock, persistent=True)
        self._pool.maxPersistentPerHost = settings.maxIdlePerBackend
        self._pool.cachedConnectionTimeout = settings.idleTimeout  # type: ignore[assignment]
        # A stale pooled connection is retried once for idempotent requests
        # without a body, transparently; that is what we want.
        self._pool.retryAutomatically = True
        endpoints = _AgentEndpoints(
            endpointFor or directEndpointFactory(reactor),
            settings.connectTimeout,
            clock,
            tlsFor or BackendTLS().creatorFor,
        )
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
        self._cooperator = Cooperator(
            scheduler=lambda work: clock.callLater(0, work),  # type: ignore[arg-type,return-value]
            started=True,
        )

    def request(
        self,
        backend: Backend,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        """
        Send one request to C{backend}.

        @param target: The origin-form request target (path and query),
            relayed unchanged.
        @return: Fires with the response when its headers have arrived, or
            fails with the connection or protocol error.
        """
        url = backend.url.encode("ascii") + target
        return self._agent.request(method, url, headers, body)

    def bodyFromFile(self, content: IO[bytes], length: int) -> IBodyProducer:
        """
        A producer for a request body already received into C{content}.
        """
        return FileBodyProducer(content, cooperator=self._cooperator)

    def close(self) -> Deferred[None]:
        """
        Close every idle connection; fires when they are closed.
        """
        self._cooperator.stop()
        return self._pool.closeCachedConnections()
