# -*- test-case-name: lbproxy.test.test_decisions -*-
"""
Sampled routing decisions: one choice in every C{--decision-sample N} of
each pool is recorded with its candidates and their scores (see
L{lbproxy.balancing.explain}), in a ring of the last L{RING_SIZE}, for the
admin dashboard's "why this backend".

The cost of a request that is not sampled is one integer decrement in
L{lbproxy.proxy.ReverseProxyResource.relay} (C{sampleIn}): no random
draw, no allocation. With sampling off (0) it is one truth test.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from lbproxy.balancer import LivePool
from lbproxy.balancing.explain import CandidateScore, Figure, explainChoice
from lbproxy.proxy import ReverseProxyResource
from lbproxy.upstream.backends import Backend

DEFAULT_SAMPLE = 100
"""
One choice in this many is recorded, per pool, unless configured.
"""

RING_SIZE = 200
"""
Decisions kept: the most recent ones.
"""

MAX_PATH = 200
"""
Characters of a request's path kept in its decision.
"""


@attrs.frozen
class Decision:
    """
    One recorded choice.

    @ivar number: Its place among the decisions this process recorded,
        from 1.
    @ivar time: The clock's time when it was made.
    @ivar pool: The pool it was made for.
    @ivar chooser: The pool's chooser, by its C{--chooser} name.
    @ivar method: The request's method.
    @ivar path: The request's path, without the query, at most
        L{MAX_PATH} characters.
    @ivar reason: The chooser's one-line explanation.
    @ivar chosen: The chosen backend, or L{None} when none could be
        chosen (the client got 503).
    @ivar candidates: Every backend that could take traffic, with its
        scores, in configured order.

    What is recorded is kept raw (backends, unrounded numbers), to make
    recording cheap; L{view} formats it.
    """

    number: int
    time: float
    pool: str
    chooser: str
    method: str
    path: str
    reason: str
    chosen: Backend | None
    candidates: Sequence[CandidateScore]

    def view(self) -> dict[str, Any]:
        """
        The decision as the admin API shows it (JSON-ready).
        """
        return {
            "number": self.number,
            "time": self.time,
            "pool": self.pool,
            "chooser": self.chooser,
            "method": self.method,
            "path": self.path,
            "reason": self.reason,
            "chosen": None if self.chosen is None else self.chosen.authority,
            "candidates": [
                {
                    "address": c.address,
                    "url": c.url,
                    "chosen": c.chosen,
                    "in_flight": c.inFlight,
                    "ewma_ms": None if c.ewma is None else round(c.ewma * 1000, 3),
                    "weight": c.weight,
                    "effective_weight": round(c.effectiveWeight, 3),
                    "scores": {name: _plain(value) for name, value in c.figures.items()},
                }
                for c in self.candidates
            ],
        }


def _plain(value: Figure) -> Figure:
    """
    A score as the admin API shows it: a number to 6 significant digits.
    """
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


class DecisionRing:
    """
    The last C{size} decisions, oldest dropped first.
    """

    def __init__(self, size: int = RING_SIZE) -> None:
        self._decisions: deque[Decision] = deque(maxlen=size)
        self._count = 0

    @property
    def count(self) -> int:
        """
        How many decisions were ever added.
        """
        return self._count

    def add(self, **fields: Any) -> Decision:
        """
        Add a decision made of C{fields} (all of L{Decision}'s but
        C{number}), numbered next; the oldest goes if the ring is full.
        """
        self._count += 1
        decision = Decision(number=self._count, **fields)
        self._decisions.append(decision)
        return decision

    def recent(self) -> list[Decision]:
        """
        The decisions kept, the newest first.
        """
        return list(reversed(self._decisions))


def _text(value: bytes | None, limit: int) -> str:
    if value is None:
        return ""
    return value[:limit].decode("latin-1")


class DecisionSampler:
    """
    Records one choice in every L{every} of each pool's proxy in a
    L{DecisionRing}.

    Attach it to a balancer with C{balancer.watchPools(sampler.attach)}:
    each pool's proxy (and each one a reload builds) then counts down its
    own C{sampleIn} and calls back here when it reaches 0.

    @ivar every: One choice in this many is recorded; 0 records none.
    @ivar ring: The recorded decisions.
    """

    _log = Logger()

    def __init__(self, every: int, clock: IReactorTime, ring: DecisionRing | None = None) -> None:
        if every < 0:
            raise ValueError(f"the decision sample must be 0 or more, not {every}")
        self.every = every
        self.ring = ring if ring is not None else DecisionRing()
        self._clock = clock

    def attach(self, pool: LivePool) -> None:
        """
        Sample the choices of C{pool}'s proxy: its first choice is
        recorded, then one in every L{every}.
        """
        proxy = pool.proxy
        if not self.every:
            proxy.sampleIn = 0
            proxy.decisions = None
            return
        chooser = str(pool.config.options.get("chooser", type(pool.chooser).__name__))
        proxy.decisions = functools.partial(self._record, proxy, pool.name, chooser)
        proxy.sampleIn = 1

    def _record(
        self,
        proxy: ReverseProxyResource,
        pool: str,
        chooser: str,
        candidates: Sequence[Backend],
        chosen: Backend | None,
        request: IRequest,
    ) -> None:
        """
        Record the choice C{proxy}'s chooser has just made; never raises
        (a failure is logged: the request goes on).
        """
        proxy.sampleIn = self.every
        try:
            reason, scores = explainChoice(proxy.chooser, candidates, chosen, request)
            self.ring.add(
                time=self._clock.seconds(),
                pool=pool,
                chooser=chooser,
                method=_text(request.method, 16),
                path=_text(request.path, MAX_PATH),
                reason=reason,
                chosen=chosen,
                candidates=scores,
            )
        except Exception:  # noqa: BLE001 - observing must never fail a request
            self._log.failure("recording a decision of pool {pool}", pool=pool)

    def view(self) -> dict[str, Any]:
        """
        The decisions kept, newest first, and the sampling rate, as the
        admin API shows them.
        """
        return {
            "sample": self.every,
            "recorded": self.ring.count,
            "decisions": [decision.view() for decision in self.ring.recent()],
        }


__all__ = [
    "DEFAULT_SAMPLE",
    "MAX_PATH",
    "RING_SIZE",
    "Decision",
    "DecisionRing",
    "DecisionSampler",
]
