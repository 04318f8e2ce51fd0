# -*- test-case-name: lbproxy.test.test_dashboard -*-
"""
Watching the balancer work, for the admin dashboard: sampled routing
decisions with each candidate's scores (L{decisions}), the backends' last
minutes and their state changes (L{history}), both kept by a
L{dashboard.Dashboard}; and how the views of several workers make one
(L{combine}). Nothing here serves HTTP: the admin API does
(L{lbproxy.admin.dashboard}).
"""

from lbproxy.observe.dashboard import Dashboard
from lbproxy.observe.decisions import DEFAULT_SAMPLE, DecisionRing, DecisionSampler
from lbproxy.observe.history import HistorySampler

__all__ = ["DEFAULT_SAMPLE", "Dashboard", "DecisionRing", "DecisionSampler", "HistorySampler"]
