# -*- test-case-name: lbproxy.test.test_stats -*-
"""
Latency statistics kept on each backend for latency-aware choosers.

L{PeakEWMA} is the estimator of Finagle's and Linkerd's "peak EWMA" load
balancers: an exponentially weighted moving average of response times whose
weight depends on the time between samples (not their number), and which
jumps straight up to any sample above it. It reacts to a slow backend at
once and forgets slowly.

To that it adds staleness: an estimate that has not been refreshed for a
while counts for less and less, both against the pool's typical latency
(L{PeakEWMA.estimate}) and against the next sample (L{PeakEWMA.observe}),
so a backend that answered slowly once and then got no traffic is tried
again, and one fast answer then restores it.

It is updated by L{lbproxy.upstream.backends.Backend.requestFinished}, with the
proxy clock's time, and only read by choosers.
"""

from __future__ import annotations

import math

import attrs

DEFAULT_DECAY = 10.0
"""
Seconds over which old samples lose weight (Finagle's and Linkerd's
default).
"""

DEFAULT_GRACE = 1.0
"""
Seconds without a sample before an estimate starts to go stale.
"""

DEFAULT_STALE_DECAY = 0.5
"""
Time constant, in seconds, of a stale estimate's loss of weight.
"""


@attrs.define
class PeakEWMA:
    """
    A peak-sensitive, time-decayed moving average of latencies in seconds.

    @ivar decay: Time constant in seconds: a sample C{t} seconds old
        weighs C{exp(-t / decay)} relative to a new one.
    @ivar grace: Seconds without a sample after which the estimate starts
        to go stale.
    @ivar staleDecay: Time constant of staleness: C{t} seconds after the
        grace period the estimate keeps C{exp(-t / staleDecay)} of its
        weight.
    @ivar value: The current estimate, or L{None} before the first sample.
    @ivar lastTime: The clock time of the last sample, or L{None}.
    """

    decay: float = DEFAULT_DECAY
    grace: float = DEFAULT_GRACE
    staleDecay: float = DEFAULT_STALE_DECAY
    value: float | None = None
    lastTime: float | None = None

    def freshness(self, now: float) -> float:
        """
        How much the estimate still counts at clock time C{now}: 1 within
        the grace period after the last sample, then decaying to 0.
        """
        if self.lastTime is None:
            return 0.0
        stale = max(0.0, now - self.lastTime - self.grace)
        return math.exp(-stale / self.staleDecay)

    def observe(self, sample: float, now: float | None = None) -> None:
        """
        Add one latency C{sample} taken at clock time C{now}.

        The old estimate is first pulled toward C{sample} as far as it has
        gone stale. Then a sample above it replaces it (the "peak"); one
        below is averaged in with weight C{1 - exp(-elapsed / decay)}.
        Without a time (C{now} is L{None}) no time is taken to have passed.
        """
        if self.value is None or self.lastTime is None:
            self.value, self.lastTime = sample, now if now is not None else 0.0
            return
        if now is None:
            now = self.lastTime
        old = sample + (self.value - sample) * self.freshness(now)
        if sample > old:
            self.value = sample
        else:
            keep = math.exp(-max(0.0, now - self.lastTime) / self.decay)
            self.value = old * keep + sample * (1.0 - keep)
        self.lastTime = now

    def estimate(self, now: float, typical: float) -> float:
        """
        The estimate at clock time C{now}, pulled toward C{typical} as far
        as it has gone stale (see L{freshness}); C{typical} before the
        first sample.
        """
        if self.value is None:
            return typical
        return typical + (self.value - typical) * self.freshness(now)


__all__ = ["DEFAULT_DECAY", "DEFAULT_GRACE", "DEFAULT_STALE_DECAY", "PeakEWMA"]
