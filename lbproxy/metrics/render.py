# -*- test-case-name: lbproxy.test.test_metrics -*-
"""
The Prometheus text exposition of a registry.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""
The content type of L{render}'s output (text format 0.0.4).
"""


def render(registry: CollectorRegistry) -> bytes:
    """
    Every metric of C{registry}, in Prometheus's text format.
    """
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "render"]
