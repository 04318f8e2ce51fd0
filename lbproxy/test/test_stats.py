"""
Tests for L{lbproxy.balancing.ewma}.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.ewma import PeakEWMA
from lbproxy.upstream.backends import Backend


class PeakEWMATests(SynchronousTestCase):
    """
    Tests for L{PeakEWMA}.
    """

    def test_firstSample(self) -> None:
        """
        The first sample is the estimate.
        """
        ewma = PeakEWMA()
        self.assertIsNone(ewma.value)
        ewma.observe(0.25, 3.0)
        self.assertEqual((ewma.value, ewma.lastTime), (0.25, 3.0))

    def test_peak(self) -> None:
        """
        A sample above the estimate replaces it at once.
        """
        ewma = PeakEWMA(value=0.01, lastTime=0.0)
        ewma.observe(0.5, 0.001)
        self.assertEqual(ewma.value, 0.5)

    def test_decayByTime(self) -> None:
        """
        A lower sample is averaged in with the weight of the time since the
        last one: after one decay constant, C{1 - 1/e} of the new sample.
        """
        ewma = PeakEWMA(decay=10.0, grace=100.0, value=1.0, lastTime=0.0)
        ewma.observe(0.0, 10.0)
        assert ewma.value is not None
        self.assertAlmostEqual(ewma.value, math.exp(-1))
        ewma.observe(0.0, 10.0)
        self.assertAlmostEqual(ewma.value, math.exp(-1))

    def test_staleSampleRestores(self) -> None:
        """
        Once the old estimate has gone stale, a new lower sample all but
        replaces it instead of being averaged in over the decay time.
        """
        ewma = PeakEWMA(grace=1.0, staleDecay=0.5, value=2.0, lastTime=0.0)
        ewma.observe(0.01, 6.0)
        assert ewma.value is not None
        self.assertLess(ewma.value, 0.01 + 2.0 * math.exp(-10))

    def test_noTime(self) -> None:
        """
        Without a time, no time passes: a lower sample does not move the
        estimate, a higher one still replaces it.
        """
        ewma = PeakEWMA()
        ewma.observe(0.2)
        ewma.observe(0.1)
        self.assertEqual(ewma.value, 0.2)
        ewma.observe(0.3)
        self.assertEqual(ewma.value, 0.3)

    def test_estimateTable(self) -> None:
        """
        The estimate is the value while fresh (within the grace period),
        then pulled toward the typical latency with the stale time
        constant, and typical before any sample.
        """
        ewma = PeakEWMA(grace=1.0, staleDecay=0.5, value=1.0, lastTime=10.0)
        cases = [
            (10.0, 1.0),
            (11.0, 1.0),
            (11.5, 0.1 + 0.9 * math.exp(-1)),
            (12.0, 0.1 + 0.9 * math.exp(-2)),
            (100.0, 0.1),
        ]
        for now, expected in cases:
            self.assertAlmostEqual(ewma.estimate(now, 0.1), expected, msg=str(now))
        self.assertEqual(PeakEWMA().estimate(3.0, 0.2), 0.2)

    def test_backendUpdates(self) -> None:
        """
        L{Backend.requestFinished} feeds the latency of a request and the
        proxy clock's time into the backend's estimator; failures without a
        latency do not.
        """
        backend = Backend("127.0.0.2")
        backend.requestStarted()
        backend.requestFinished(latency=0.3, now=7.0)
        self.assertEqual((backend.latencyEWMA.value, backend.latencyEWMA.lastTime), (0.3, 7.0))
        backend.requestStarted()
        backend.requestFinished(failed=True, now=8.0)
        self.assertEqual(backend.latencyEWMA.lastTime, 7.0)
