# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
HTTP/2 or HTTP/1.1, per connection: on TLS by what ALPN chose once the
handshake is done, on a plain listener with C{--h2c} by whether the
client starts with the HTTP/2 connection preface.

L{NegotiatingFactory} stands in front of the proxy's site: the protocol it
makes waits for the choice and then connects the site's own HTTP/1.1
channel (C{site.buildProtocol}, with its connection limit) or an
L{lbproxy.http2.connection.H2EdgeConnection}, and passes everything on to
it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.http.edge import ProxyChannel, ProxySite
from lbproxy.http2.connection import H2EdgeConnection
from lbproxy.http2.settings import H2_PREFACE, HTTP2Settings


class NegotiatingFactory(Factory):
    """
    Makes, for each connection, a protocol that becomes the site's HTTP/1.1
    channel or an HTTP/2 connection (see the module docstring).

    @ivar site: The proxy's site.
    @ivar settings: HTTP/2's settings.
    @ivar clock: Times the wait for a plain connection's first bytes.
    """

    noisy = False

    def __init__(self, site: ProxySite, settings: HTTP2Settings, clock: IReactorTime) -> None:
        self.site = site
        self.settings = settings
        self.clock = clock

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Negotiating(self, addr)

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class _Negotiating(Protocol):
    """
    One connection until its protocol is chosen, then a pass-through to
    the chosen protocol.
    """

    _chosen: Any = None
    _timer: IDelayedCall | None = None

    def __init__(self, factory: NegotiatingFactory, addr: Any) -> None:
        self._factory = factory
        self._addr = addr
        self._buffer = b""

    def connectionMade(self) -> None:
        if INegotiated.providedBy(self.transport):
            return  # TLS: the handshake decides (handshakeCompleted).
        if not self._factory.settings.h2c:
            self._choose(http2=False)
            return
        # Plain, with h2c: the first bytes decide; the HTTP/1.1 channel's
        # own timers start only once it is chosen, so wait no longer than
        # it would for a request head.
        self._timer = self._factory.clock.callLater(
            self._factory.site.limits.headerTimeout, self._waitedTooLong
        )

    def handshakeCompleted(self) -> None:
        if self._chosen is None:
            protocol = getattr(self.transport, "negotiatedProtocol", None)
            self._choose(http2=protocol == b"h2")

    def dataReceived(self, data: bytes) -> None:
        if self._chosen is not None:
            self._chosen.dataReceived(data)
            return
        self._buffer += data
        size = min(len(self._buffer), len(H2_PREFACE))
        if self._buffer[:size] != H2_PREFACE[:size]:
            self._choose(http2=False)
        elif size == len(H2_PREFACE):
            self._choose(http2=True)

    def _choose(self, http2: bool) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        site = self._factory.site
        protocol = site.buildProtocol(self._addr)
        if http2 and isinstance(protocol, ProxyChannel):
            protocol = H2EdgeConnection(site, self._factory.settings, self._factory.clock)
        self._chosen = protocol
        protocol.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, b""
        if buffered:
            protocol.dataReceived(buffered)

    def _waitedTooLong(self) -> None:
        self._timer = None
        if self._chosen is None and self.transport is not None:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        half = getattr(self._chosen, "readConnectionLost", None)
        if half is not None:
            half()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = getattr(self._chosen, "writeConnectionLost", None)
        if half is not None:
            half()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._chosen is not None:
            self._chosen.connectionLost(reason)


__all__ = ["NegotiatingFactory"]
