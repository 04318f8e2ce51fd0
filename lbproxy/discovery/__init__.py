# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
Backends from DNS: a pool's C{dns:NAME:PORT} and C{srv:_service._proto.NAME}
items (L{lbproxy.discovery.sources}), looked up with C{twisted.names}
(L{lbproxy.discovery.resolver}, L{lbproxy.discovery.lookup}) again and
again at their TTL, each answer applied to the live pool
(L{lbproxy.discovery.watcher}).

Only the sources are exported here: the watchers sit above the balancer,
the sources below it.
"""

from lbproxy.discovery.sources import Source, isSourceItem, parseSource, splitBackends

__all__ = ["Source", "isSourceItem", "parseSource", "splitBackends"]
