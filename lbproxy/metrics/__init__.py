# -*- test-case-name: lbproxy.test.test_metrics -*-
"""
Prometheus metrics: what the balancer already counts, read at scrape time.

Nothing here runs per request. Backends, the edge and the TLS listeners
keep plain integer counters as they work (L{lbproxy.upstream.backends.Backend},
L{lbproxy.http.edge.ProxySite.rejections}, the TLS factories' handshake
counts); L{collector.LoadBalancerCollector} turns them into metric families
when Prometheus scrapes, through C{prometheus_client} (its exposition
format, its process metrics). With C{--workers N}, L{combine} sums what
the workers report into one scrape.
"""

from lbproxy.metrics.collector import LoadBalancerCollector, MetricsSource, metricsRegistry
from lbproxy.metrics.combine import combineExpositions
from lbproxy.metrics.render import CONTENT_TYPE, render

__all__ = [
    "CONTENT_TYPE",
    "LoadBalancerCollector",
    "MetricsSource",
    "combineExpositions",
    "metricsRegistry",
    "render",
]
