# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
What a listener needs for HTTP/2: the ALPN protocols its TLS offers and
the factory its connections are built by.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IProtocolFactory, IReactorTime

from lbproxy.http.edge import ProxySite
from lbproxy.http2.negotiate import NegotiatingFactory
from lbproxy.http2.settings import HTTP2Settings
from lbproxy.tls.sni import ServerTLSSettings

ALPN_WITH_H2 = (b"h2", b"http/1.1")


def tlsWithHTTP2(tls: ServerTLSSettings, http2: HTTP2Settings) -> ServerTLSSettings:
    """
    C{tls}, offering C{h2} before C{http/1.1} when HTTP/2 is on.
    """
    return attrs.evolve(tls, alpnProtocols=ALPN_WITH_H2) if http2.enabled else tls


def listenerFactory(
    site: ProxySite, http2: HTTP2Settings, isTLS: bool, clock: IReactorTime
) -> IProtocolFactory:
    """
    The factory for a listener's connections: the site itself, or with
    HTTP/2 on (on TLS, or plain with h2c) a L{NegotiatingFactory} before
    it.
    """
    if http2.enabled and (isTLS or http2.h2c):
        return NegotiatingFactory(site, http2, clock)
    return site


__all__ = ["ALPN_WITH_H2", "listenerFactory", "tlsWithHTTP2"]
