# -*- test-case-name: lbproxy.test.test_metrics -*-
"""
The metric families of one lbproxy process, built at each scrape from the
counters the balancer, the edge and the TLS listeners keep.

Labels are bounded: C{pool}, C{backend} (C{host:port}, or the URL of an
C{https} backend), C{listener} (the C{--listen} description without its
file names), C{class} (C{1xx}..C{5xx}), C{kind} and C{status} from small
fixed sets. Never a path or a client address.

The counters of those fixed sets are there from the start, at 0 (connect
failures of every kind, rejections of every status the edge answers), as
Prometheus's instrumentation guide asks: a series that first appears at 1
hides that first event from C{increase()} and C{rate()}, and from alerts
built on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from lbproxy.balancer import Balancer
from lbproxy.http.edge import ProxySite, listenerKey

_BACKEND = ["pool", "backend"]
_LISTENER = ["listener"]
_FILE_PARAMETERS = ("privateKey", "certKey", "extraCertChain", "dhParameters")

CONNECT_FAILURE_KINDS = ("refused", "timeout", "dns", "tls", "unreachable")
"""
The kinds of connect failure (L{lbproxy.upstream.retry.connectFailureKind}),
each exported from the start.
"""

EDGE_REJECTIONS = (400, 408, 413, 414, 421, 431, 501, 503, 505)
"""
The statuses the edge refuses requests (and connections) with, each
exported from the start for every listener.
"""


class MetricsSource(Protocol):
    """
    What the collector reads (a L{lbproxy.service.LoadBalancerService}).
    """

    balancer: Balancer
    site: ProxySite

    def listeningPorts(self) -> Mapping[str, Any]:
        """
        The proxy's listening ports by C{--listen} description.
        """


def listenerLabel(description: str) -> str:
    """
    A listener's label: its description without file parameters (which
    are long, and say nothing about the traffic). Fields are split as
    Twisted splits them: at each C{:} not escaped by a backslash.
    """
    fields: list[str] = [""]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            fields[-1] += character + next(characters, "")
        elif character == ":":
            fields.append("")
        else:
            fields[-1] += character
    kept = [f for f in fields if not ("=" in f and f.partition("=")[0] in _FILE_PARAMETERS)]
    return ":".join(kept)


class LoadBalancerCollector(Collector):
    """
    Collects lbproxy's own metrics from C{source} at each scrape.
    """

    def __init__(self, source: MetricsSource, version: str) -> None:
        self._source = source
        self._version = version

    def collect(self) -> Iterator[Metric]:
        yield from self._backends()
        yield from self._listeners()
        info = GaugeMetricFamily("lbproxy_info", "lbproxy's version.", labels=["version"])
        info.add_metric([self._version], 1)
        yield info

    def _backends(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "lbproxy_backend_requests", "Requests sent to the backend.", labels=_BACKEND
        )
        responses = CounterMetricFamily(
            "lbproxy_backend_responses",
            "Responses from the backend, by status class.",
            labels=[*_BACKEND, "class"],
        )
        failures = CounterMetricFamily(
            "lbproxy_backend_failures",
            "Requests to the backend that failed: no connection, no response in time, or a "
            "response cut short (each attempt, whether or not it was then retried elsewhere).",
            labels=_BACKEND,
        )
        retries = CounterMetricFamily(
            "lbproxy_backend_retries",
            "Requests retried on another backend after failing on this one.",
            labels=_BACKEND,
        )
        ejections = CounterMetricFamily(
            "lbproxy_backend_ejections",
            "Times passive checks ejected the backend.",
            labels=_BACKEND,
        )
        connectFailures = CounterMetricFamily(
            "lbproxy_backend_connect_failures",
            "Connections to the backend that failed, by kind.",
            labels=[*_BACKEND, "kind"],
        )
        sent = CounterMetricFamily(
            "lbproxy_backend_sent_bytes",
            "Request body (and tunnel) bytes sent to the backend.",
            labels=_BACKEND,
        )
        received = CounterMetricFamily(
            "lbproxy_backend_received_bytes",
            "Response body (and tunnel) bytes received from the backend.",
            labels=_BACKEND,
        )
        latency = HistogramMetricFamily(
            "lbproxy_backend_latency_seconds",
            "Time from sending a request to the backend until its response headers arrived.",
            labels=_BACKEND,
        )
        inFlight = GaugeMetricFamily(
            "lbproxy_backend_in_flight", "Requests at the backend now.", labels=_BACKEND
        )
        up = GaugeMetricFamily(
            "lbproxy_backend_up",
            "1 if the backend takes new requests (healthy, not ejected, not draining).",
            labels=_BACKEND,
        )
        healthy = GaugeMetricFamily(
            "lbproxy_backend_healthy", "1 if active health checks pass.", labels=_BACKEND
        )
        ejected = GaugeMetricFamily(
            "lbproxy_backend_ejected", "1 if passive checks have ejected it.", labels=_BACKEND
        )
        draining = GaugeMetricFamily(
            "lbproxy_backend_draining", "1 if it is draining.", labels=_BACKEND
        )
        weight = GaugeMetricFamily("lbproxy_backend_weight", "Configured weight.", labels=_BACKEND)
        openConnections = GaugeMetricFamily(
            "lbproxy_backend_connections_open",
            "Connections to the backend, busy or idle.",
            labels=_BACKEND,
        )
        idleConnections = GaugeMetricFamily(
            "lbproxy_backend_connections_idle",
            "Idle keep-alive connections kept to the backend.",
            labels=_BACKEND,
        )
        for pool in self._source.balancer.pools.values():
            for backend in pool.backends.backends:
                labels = [
                    pool.name,
                    backend.url if backend.scheme != "http" else backend.authority,
                ]
                requests.add_metric(labels, backend.requests)
                for index, count in enumerate(backend.responses[1:], 1):
                    responses.add_metric([*labels, f"{index}xx"], count)
                failures.add_metric(labels, backend.failures)
                retries.add_metric(labels, backend.retries)
                ejections.add_metric(labels, backend.ejections)
                counts = backend.connectFailures
                for kind in (*CONNECT_FAILURE_KINDS, *sorted(counts.keys() - _KINDS)):
                    connectFailures.add_metric([*labels, kind], counts.get(kind, 0))
                sent.add_metric(labels, backend.bytesToBackend)
                received.add_metric(labels, backend.bytesFromBackend)
                histogram = backend.latency
                latency.add_metric(
                    labels,
                    [(_bound(bound), count) for bound, count in histogram.cumulative()],
                    histogram.total,
                )
                inFlight.add_metric(labels, backend.inFlight)
                up.add_metric(labels, 1 if backend.available else 0)
                healthy.add_metric(labels, 1 if backend.healthy else 0)
                ejected.add_metric(labels, 1 if backend.ejected else 0)
                draining.add_metric(labels, 1 if backend.draining else 0)
                weight.add_metric(labels, backend.weight)
                openConnections.add_metric(labels, pool.upstream.connectionsTo(backend))
                idleConnections.add_metric(labels, pool.upstream.idleTo(backend))
        yield from (requests, responses, failures, retries, ejections, connectFailures)
        yield from (sent, received, latency, inFlight, up, healthy, ejected, draining, weight)
        yield from (openConnections, idleConnections)

    def _listeners(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "lbproxy_listener_connections", "Client connections open.", labels=_LISTENER
        )
        handshakes = CounterMetricFamily(
            "lbproxy_listener_tls_handshakes", "TLS handshakes completed.", labels=_LISTENER
        )
        handshakeFailures = CounterMetricFamily(
            "lbproxy_listener_tls_handshake_failures",
            "Client connections closed before their TLS handshake completed.",
            labels=_LISTENER,
        )
        rejections = CounterMetricFamily(
            "lbproxy_listener_rejections",
            "Requests (and connections) refused at the edge, by status.",
            labels=[*_LISTENER, "status"],
        )
        site = self._source.site
        ports = self._source.listeningPorts()
        owner = _ListenerOf({description: listenerKey(port) for description, port in ports.items()})
        open: dict[str | None, int] = {}
        for channel in list(site.channels):
            transport = channel.transport
            if transport is not None:
                listener = owner(listenerKey(transport))
                open[listener] = open.get(listener, 0) + 1
        rejected: dict[str | None, dict[int, int]] = {}
        for (key, status), count in site.rejections.items():
            counts = rejected.setdefault(owner(key), {})
            counts[status] = counts.get(status, 0) + count
        for description, port in ports.items():
            label = [listenerLabel(description)]
            key = description
            connections.add_metric(label, open.get(key, 0))
            factory = getattr(port, "factory", None)
            done = getattr(factory, "handshakes", None)
            if done is not None:
                handshakes.add_metric(label, done)
                handshakeFailures.add_metric(label, getattr(factory, "handshakeFailures", 0))
            counts = rejected.get(key, {})
            for status in sorted(counts.keys() | _STATUSES):
                rejections.add_metric([*label, str(status)], counts.get(status, 0))
        yield from (connections, handshakes, handshakeFailures, rejections)


_KINDS = frozenset(CONNECT_FAILURE_KINDS)
_STATUSES = frozenset(EDGE_REJECTIONS)


_ANY = ("", "0.0.0.0", "::", "::0")


class _ListenerOf:
    """
    Which listener (by description) a connection's L{listenerKey} belongs
    to: the one bound to its address and port, else one bound to every
    address on its port.
    """

    def __init__(self, keys: Mapping[str, object]) -> None:
        self._exact = {key: description for description, key in keys.items()}
        self._wildcard = {
            key[1]: description
            for description, key in keys.items()
            if isinstance(key, tuple) and key[0] in _ANY
        }

    def __call__(self, key: object) -> str | None:
        found = self._exact.get(key)
        if found is None and isinstance(key, tuple):
            found = self._wildcard.get(key[1])
        return found


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def metricsRegistry(source: MetricsSource, version: str) -> CollectorRegistry:
    """
    A registry of its own (never the global one, so that two load
    balancers can run in one process) with lbproxy's metrics and the
    process and platform metrics of C{prometheus_client}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoadBalancerCollector(source, version))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


__all__ = [
    "CONNECT_FAILURE_KINDS",
    "EDGE_REJECTIONS",
    "LoadBalancerCollector",
    "MetricsSource",
    "listenerLabel",
    "metricsRegistry",
]
