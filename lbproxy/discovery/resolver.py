# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
The resolver discovery asks: C{twisted.names}' DNS client, on the name
servers of C{/etc/resolv.conf} (with C{/etc/hosts} first, as the system
resolver reads it), or on the one server C{--resolver HOST:PORT} names;
and the settings of discovery (the resolver, and the bounds on how long
an answer is kept).

Not C{twisted.names.client.createResolver}: its cache would answer a
re-resolution from memory until the record's TTL runs out, so that a
C{--dns-max-ttl} below a record's TTL would re-read the cache rather than
ask the server; and it runs on the global reactor, not the one given.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.internet.interfaces import IResolver
from twisted.names import client, hosts, resolve

DEFAULT_MIN_TTL = 5.0
"""
The fewest seconds between two lookups of one source (C{--dns-min-ttl}).
"""

DEFAULT_MAX_TTL = 300.0
"""
The most seconds between two lookups of one source (C{--dns-max-ttl}).
"""

DNS_PORT = 53


class ResolverSpecError(ValueError):
    """
    A C{--resolver} value is not an address and port; the message says why.
    """


@attrs.frozen
class DiscoverySettings:
    """
    How discovery sources are looked up.

    @ivar server: The one name server to ask (C{--resolver}), as address
        and port; L{None} for those of C{resolvConf}.
    @ivar minTTL: A source is looked up again no sooner than this many
        seconds after an answer, whatever its TTL; also the wait before a
        retry after a failed or empty lookup.
    @ivar maxTTL: ... and no later than this.
    @ivar resolvConf: The C{resolv.conf} file naming the name servers
        (re-read when it changes) when no C{server} is given.
    @ivar hostsFile: The hosts file read first when no C{server} is given.
    """

    server: tuple[str, int] | None = None
    minTTL: float = DEFAULT_MIN_TTL
    maxTTL: float = DEFAULT_MAX_TTL
    resolvConf: str = "/etc/resolv.conf"
    hostsFile: str = "/etc/hosts"

    def delay(self, ttl: float | None) -> float:
        """
        Seconds until the next lookup after an answer whose smallest TTL
        is C{ttl} (L{None}: no records), bounded by L{minTTL} and
        L{maxTTL}.
        """
        if ttl is None:
            return self.minTTL
        return min(max(ttl, self.minTTL), self.maxTTL)


def parseServer(text: str) -> tuple[str, int]:
    """
    Parse C{--resolver}: C{ADDRESS}, C{ADDRESS:PORT}, C{[V6ADDRESS]} or
    C{[V6ADDRESS]:PORT}; port 53 by default.

    @raise ResolverSpecError: For anything else, a host name included (a
        name server is reached by address).
    """
    value = text.strip()
    host, port = value, str(DNS_PORT)
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ResolverSpecError(f"--resolver {text!r}: give ADDRESS:PORT, e.g. 127.0.0.1:53")
        if rest:
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ResolverSpecError(
            f"--resolver {text!r}: give the name server's address (and port), "
            "e.g. 127.0.0.1:53 or [::1]:53"
        ) from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ResolverSpecError(f"--resolver {text!r}: port must be a number from 1 to 65535")
    return str(address), int(port)


def makeResolver(settings: DiscoverySettings, reactor: Any) -> IResolver:
    """
    The resolver C{settings} ask for, without a cache, sending its queries
    over C{reactor} (an L{twisted.internet.interfaces.IReactorUDP} and
    L{twisted.internet.interfaces.IReactorTime}).
    """
    if settings.server is not None:
        dnsClient: IResolver = client.Resolver(servers=[settings.server], reactor=reactor)
        return dnsClient
    chain: IResolver = resolve.ResolverChain(
        [
            hosts.Resolver(file=settings.hostsFile.encode()),
            client.Resolver(resolv=settings.resolvConf, reactor=reactor),
        ]
    )
    return chain


__all__ = [
    "DEFAULT_MAX_TTL",
    "DEFAULT_MIN_TTL",
    "DiscoverySettings",
    "ResolverSpecError",
    "makeResolver",
    "parseServer",
]
