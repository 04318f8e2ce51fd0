# -*- test-case-name: lbproxy.test.test_dashboard -*-
"""
What the admin dashboard shows, kept while lbproxy runs: the backends'
history (L{lbproxy.observe.history}) and the sampled routing decisions
(L{lbproxy.observe.decisions}) of one balancer.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from lbproxy.balancer import Balancer
from lbproxy.observe.decisions import DEFAULT_SAMPLE, DecisionSampler
from lbproxy.observe.history import HistorySampler


class Dashboard:
    """
    The history and the decisions of one L{Balancer}: decisions are
    sampled from the moment it is made (in every pool, those of later
    reloads too); the history from L{start} to L{stop}.

    @ivar history: The backends' last minutes.
    @ivar decisions: The sampled decisions.
    """

    def __init__(
        self, balancer: Balancer, clock: IReactorTime, decisionSample: int = DEFAULT_SAMPLE
    ) -> None:
        """
        @param decisionSample: One choice in this many is recorded, per
            pool; 0 records none.
        """
        self.history = HistorySampler(balancer, clock)
        self.decisions = DecisionSampler(decisionSample, clock)
        balancer.watchPools(self.decisions.attach)

    def start(self) -> None:
        """
        Start keeping the history.
        """
        self.history.start()

    def stop(self) -> None:
        """
        Stop keeping the history (what was kept stays readable).
        """
        self.history.stop()


__all__ = ["Dashboard"]
