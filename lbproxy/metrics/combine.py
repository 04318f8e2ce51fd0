# -*- test-case-name: lbproxy.test.test_metrics -*-
"""
One scrape for several workers: the supervisor asks every worker for its
metrics and sums them here, so that Prometheus sees one lbproxy.

Counters and histograms are summed. Gauges are summed too (requests in
flight, connections, memory and open files add up across processes), but
for those that say what a backend or the process I{is}: a backend is
C{up} and C{healthy} only if every worker finds it so (the minimum), it is
C{ejected} or C{draining} if any worker has it so (the maximum), its
C{weight} is the same everywhere (the maximum), and the process started
when the first worker did (the minimum). C{lbproxy_workers_reporting}
says how many workers answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from lbproxy.metrics.render import render

_COMBINE: dict[str, Callable[[Iterable[float]], float]] = {
    "lbproxy_backend_up": min,
    "lbproxy_backend_healthy": min,
    "lbproxy_backend_ejected": max,
    "lbproxy_backend_draining": max,
    "lbproxy_backend_weight": max,
    "lbproxy_info": max,
    "python_info": max,
    "process_start_time_seconds": min,
    "process_max_fds": max,
}


def combineExpositions(texts: Sequence[str]) -> bytes:
    """
    The workers' expositions C{texts} (Prometheus text format) as one.

    @raise ValueError: If one does not parse.
    """
    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            known = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                key = (known.name, sample.name, tuple(sorted(sample.labels.items())))
                values.setdefault(key, []).append(sample.value)
    for (familyName, sampleName, labels), numbers in values.items():
        combine = _COMBINE.get(familyName, sum)
        families[familyName].add_sample(sampleName, dict(labels), combine(numbers))
    reporting = Metric(
        "lbproxy_workers_reporting", "Workers whose metrics are summed here.", "gauge"
    )
    reporting.add_sample("lbproxy_workers_reporting", {}, len(texts))
    families[reporting.name] = reporting
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return render(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


__all__ = ["combineExpositions"]
