# -*- test-case-name: lbproxy.test.test_latency -*-
"""
A latency histogram cheap enough to fill on every request: fixed buckets
from 1 ms to 30 s, one bisection and one increment per observation. It is
read at a metrics scrape (Prometheus buckets) and for the admin API's
percentiles.
"""

from __future__ import annotations

from bisect import bisect_left

BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""
Upper bounds, in seconds, of the buckets (Prometheus's C{le}); one more
bucket, C{+Inf}, takes the rest.
"""


class LatencyHistogram:
    """
    Counts of latencies by bucket (not cumulative), their sum and count.
    """

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """
        Count one latency of C{seconds}.
        """
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """
        C{(upper bound, observations at or below it)} for every bucket, the
        last bound C{inf}: Prometheus's histogram buckets.
        """
        result = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result

    def quantile(self, q: float) -> float | None:
        """
        An estimate of the C{q} quantile (0 < q < 1) in seconds, linear
        within its bucket as Prometheus's C{histogram_quantile} does;
        L{None} before any observation. Past the last bound it is that
        bound (30 s).
        """
        if self.count == 0:
            return None
        rank = q * self.count
        lower = 0.0
        running = 0
        for bound, count in zip(BUCKETS, self.counts, strict=False):
            if count and running + count >= rank:
                return lower + (bound - lower) * (rank - running) / count
            running += count
            lower = bound
        return BUCKETS[-1]


__all__ = ["BUCKETS", "LatencyHistogram"]
