"""
Latency statistics kept on each backend for latency-aware choosers.

L{PeakEWMA} is the estimator of Finagle's and Linkerd's "peak EWMA" load
balancers: an exponentially weighted moving average of response times whose
weight depends on the time between samples (not their number), and which
jumps straight up to any sample above it. It reacts to a slow backend at
once and forgets slowly.

It is updated by L{lbproxy.backends.Backend.requestFinished}, with the
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

DEFAULT_FORGET_AFTER = 5.0
"""
Seconds without a sample after which an estimate is forgotten.
"""


@attrs.define
class PeakEWMA:
    """
    A peak-sensitive, time-decayed moving average of latencies in seconds.

    @ivar decay: Time constant in seconds: a sample C{t} seconds old
        weighs C{exp(-t / decay)} relative to a new one.
    @ivar forgetAfter: Seconds without a sample after which the estimate is
        too old to trust: the next sample starts afresh, and meanwhile
        L{estimate} gives the pool's typical latency.
    @ivar value: The current estimate, or L{None} before the first sample.
    @ivar lastTime: The clock time of the last sample, or L{None}.
    """

    decay: float = DEFAULT_DECAY
    forgetAfter: float = DEFAULT_FORGET_AFTER
    value: float | None = None
    lastTime: float | None = None

    def observe(self, sample: float, now: float | None = None) -> None:
        """
        Add one latency C{sample} taken at clock time C{now}.

        A sample above the estimate replaces it (the "peak"); one below is
        averaged in with weight C{1 - exp(-elapsed / decay)}; the first
        sample after C{forgetAfter} seconds without one replaces the old
        estimate. Without a time (C{now} is L{None}) no time is taken to
        have passed.
        """
        if now is None:
            now = self.lastTime if self.lastTime is not None else 0.0
        if (
            self.value is None
            or self.lastTime is None
            or sample > self.value
            or now - self.lastTime >= self.forgetAfter
        ):
            self.value = sample
        else:
            elapsed = max(0.0, now - self.lastTime)
            keep = math.exp(-elapsed / self.decay)
            self.value = self.value * keep + sample * (1.0 - keep)
        self.lastTime = now

    def estimate(self, now: float, typical: float, staleDecay: float) -> float:
        """
        The estimate at clock time C{now}, pulled toward C{typical} the
        longer it has gone without a sample: after C{t} seconds without
        one, only C{exp(-t / staleDecay)} of its distance from C{typical}
        is left. A backend that gets no traffic therefore looks ordinary
        again after a while and is tried again, instead of being starved by
        one old slow answer. Before the first sample, and C{forgetAfter}
        seconds after the last, it is exactly C{typical}.
        """
        if self.value is None or self.lastTime is None:
            return typical
        elapsed = max(0.0, now - self.lastTime)
        if elapsed >= self.forgetAfter:
            return typical
        keep = math.exp(-elapsed / staleDecay)
        return typical + (self.value - typical) * keep


__all__ = ["DEFAULT_DECAY", "DEFAULT_FORGET_AFTER", "PeakEWMA"]
