# -*- test-case-name: lbproxy.test.test_simulate -*-
"""
A deterministic discrete-event simulator for lbproxy's choosers:
C{python -m lbproxy.simulate SCENARIO}.

It runs the same chooser classes the proxy runs, on a Twisted
L{twisted.internet.task.Clock}, over simulated backends with given latency
distributions, capacities and failure windows, under Poisson, closed-loop
or replayed arrivals, and reports throughput, latency percentiles and each
backend's share per chooser, with a plot.
"""

from lbproxy.simulate.engine import Result, SimulatedRequest, simulate
from lbproxy.simulate.scenario import Scenario, ScenarioError, builtinScenarios, loadScenario

__all__ = [
    "Result",
    "Scenario",
    "ScenarioError",
    "SimulatedRequest",
    "builtinScenarios",
    "loadScenario",
    "simulate",
]
