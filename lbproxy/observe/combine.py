# -*- test-case-name: lbproxy.test.test_dashboard -*-
"""
The dashboard's views of several workers made one, for the supervisor's
admin API under C{--workers}: each worker keeps its own history and
decisions (L{lbproxy.observe.history}, L{lbproxy.observe.decisions}); the
supervisor asks them all and combines their JSON here.

History samples are matched by the whole second they were taken in (the
workers look at their backends once a second, each on its own beat):
rates and requests in flight are summed, latency percentiles are the
highest any worker saw (percentiles cannot be added). Events and
decisions are merged, newest first, each marked with its worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lbproxy.observe.decisions import RING_SIZE
from lbproxy.observe.history import MAX_EVENTS

Views = Sequence[tuple[str, dict[str, Any]]]
"""
Each worker's label and its view, in worker order.
"""

_SUMMED = ("rate", "error_rate", "in_flight")
_HIGHEST = ("p50_ms", "p99_ms")


def combineHistories(views: Views) -> dict[str, Any]:
    """
    One C{GET /dashboard/history} answer from the workers' (see the
    module's docstring); the first worker's C{interval}, C{window} and
    C{now}, and C{workers}, how many it combines.
    """
    first = views[0][1]
    window = int(first.get("window", 300))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, view in views:
        for backend in view.get("backends", []):
            groups.setdefault((backend["pool"], backend["url"]), []).append(backend)
    backends = [_combineSeries(series, window) for series in groups.values()]
    events = [
        {**event, "worker": worker} for worker, view in views for event in view.get("events", [])
    ]
    events.sort(key=lambda event: event["time"], reverse=True)
    return {
        "interval": first.get("interval"),
        "window": window,
        "now": first.get("now"),
        "workers": len(views),
        "backends": backends,
        "events": events[:MAX_EVENTS],
    }


def _combineSeries(series: list[dict[str, Any]], window: int) -> dict[str, Any]:
    """
    One backend's samples from each worker that has it, matched by second.
    """
    seconds: dict[int, dict[str, Any]] = {}
    for one in series:
        for index, time in enumerate(one["time"]):
            slot = seconds.setdefault(
                round(time), {"time": time, **{k: None for k in _SUMMED + _HIGHEST}}
            )
            for key in _SUMMED:
                value = one[key][index]
                slot[key] = value if slot[key] is None else slot[key] + value
            for key in _HIGHEST:
                value = one[key][index]
                if value is not None and (slot[key] is None or value > slot[key]):
                    slot[key] = value
    ordered = [seconds[second] for second in sorted(seconds)][-window:]
    first = series[0]
    combined: dict[str, Any] = {
        "pool": first["pool"],
        "url": first["url"],
        "address": first["address"],
        "state": first.get("state"),
        "time": [slot["time"] for slot in ordered],
    }
    for key in _SUMMED:
        combined[key] = [None if slot[key] is None else round(slot[key], 3) for slot in ordered]
    for key in _HIGHEST:
        combined[key] = [slot[key] for slot in ordered]
    return combined


def combineDecisions(views: Views) -> dict[str, Any]:
    """
    One C{GET /dashboard/decisions} answer from the workers': every
    worker's decisions, each marked with its worker, the newest
    L{RING_SIZE} first; C{recorded} summed.
    """
    decisions = [
        {**decision, "worker": worker}
        for worker, view in views
        for decision in view.get("decisions", [])
    ]
    decisions.sort(key=lambda decision: decision["time"], reverse=True)
    return {
        "sample": views[0][1].get("sample"),
        "recorded": sum(int(view.get("recorded", 0)) for _, view in views),
        "workers": len(views),
        "decisions": decisions[:RING_SIZE],
    }


__all__ = ["Views", "combineDecisions", "combineHistories"]
