# -*- test-case-name: lbproxy.test.test_admin -*-
"""
The JSON shapes of the admin API's pools and backends, built from the
balancer's snapshot values (L{lbproxy.balancer.PoolState},
L{lbproxy.balancer.BackendState}): snake_case keys, latencies in
milliseconds (C{null} when unknown).
"""

from __future__ import annotations

from typing import Any

from lbproxy.balancer import BackendState, PoolState

AVAILABLE_STATES = frozenset({"up", "slow-start"})
"""
The backend states that take traffic, counted as C{available}.
"""


def backendView(state: BackendState) -> dict[str, Any]:
    """
    One backend as the admin API shows it.
    """
    return {
        "address": state.address,
        "url": state.url,
        "state": state.state,
        "weight": state.weight,
        "in_flight": state.inFlight,
        "requests": state.requests,
        "failures": state.failures,
        "retries": state.retries,
        "ejections": state.ejections,
        "removing": state.removing,
        "latency_ewma_ms": _milliseconds(state.latencyEWMA),
        "last_latency_ms": _milliseconds(state.lastLatency),
        "latency_p50_ms": _milliseconds(state.latencyP50),
        "latency_p99_ms": _milliseconds(state.latencyP99),
        "open_connections": state.openConnections,
        "idle_connections": state.idleConnections,
    }


def poolSummary(pool: PoolState) -> dict[str, Any]:
    """
    One pool in the list of pools: its name, chooser, how many backends it
    has and how many of them take traffic.
    """
    return {
        "name": pool.name,
        "chooser": pool.chooser,
        "backends": len(pool.backends),
        "available": sum(1 for b in pool.backends if b.state in AVAILABLE_STATES),
    }


def poolView(pool: PoolState) -> dict[str, Any]:
    """
    One pool with each of its backends.
    """
    return {
        "pool": pool.name,
        "chooser": pool.chooser,
        "backends": [backendView(b) for b in pool.backends],
    }


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


__all__ = ["AVAILABLE_STATES", "backendView", "poolSummary", "poolView"]
