"""
Tests for L{lbproxy.upstream.latency}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.upstream.latency import BUCKETS, LatencyHistogram


class LatencyHistogramTests(SynchronousTestCase):
    """
    The per-backend latency histogram.
    """

    def test_buckets(self) -> None:
        """
        Each latency is counted in the first bucket whose bound is at or
        above it; the cumulative counts are Prometheus's C{le} buckets,
        ending with C{+Inf} at the total.
        """
        histogram = LatencyHistogram()
        for seconds in (0.0005, 0.001, 0.0011, 0.2, 45.0):
            histogram.observe(seconds)
        cumulative = dict(histogram.cumulative())
        self.assertEqual(cumulative[0.001], 2)
        self.assertEqual(cumulative[0.0025], 3)
        self.assertEqual(cumulative[0.25], 4)
        self.assertEqual(cumulative[30.0], 4)
        self.assertEqual(cumulative[float("inf")], 5)
        self.assertEqual(len(cumulative), len(BUCKETS) + 1)
        self.assertEqual(histogram.count, 5)
        self.assertAlmostEqual(histogram.total, 45.2026)

    def test_quantile(self) -> None:
        """
        Quantiles are interpolated within their bucket, as Prometheus's
        C{histogram_quantile} does; none before any observation.
        """
        histogram = LatencyHistogram()
        self.assertIsNone(histogram.quantile(0.5))
        for _ in range(100):
            histogram.observe(0.02)  # the (0.01, 0.025] bucket
        self.assertAlmostEqual(histogram.quantile(0.5) or 0, 0.0175)
        self.assertAlmostEqual(histogram.quantile(0.99) or 0, 0.01 + 0.015 * 0.99)
        histogram.observe(100.0)
        self.assertEqual(histogram.quantile(0.999), 30.0)
