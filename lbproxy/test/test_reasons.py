"""
Tests for L{lbproxy.http.reasons}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.reasons import reasonPhrase


class ReasonPhraseTests(SynchronousTestCase):
    """
    Every status lbproxy sends has its RFC 9110 phrase.
    """

    def test_rfc9110(self) -> None:
        """
        The phrases are RFC 9110's, including those twisted.web lacks or
        words differently.
        """
        self.assertEqual(reasonPhrase(421), b"Misdirected Request")
        self.assertEqual(reasonPhrase(431), b"Request Header Fields Too Large")
        self.assertEqual(reasonPhrase(413), b"Content Too Large")
        self.assertEqual(reasonPhrase(504), b"Gateway Timeout")

    def test_unknown(self) -> None:
        """
        A status without a phrase of its own gets its class's.
        """
        self.assertEqual(reasonPhrase(499), b"Client Error")
        self.assertEqual(reasonPhrase(599), b"Server Error")
