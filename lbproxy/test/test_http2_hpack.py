"""
Tests for L{lbproxy.http2.hpackplain}: the header blocks of lbproxy's
HTTP/2 responses, read back by the C{hpack} library's decoder (what C{h2}
clients use) as a client would.
"""

from __future__ import annotations

from hpack import Decoder, NeverIndexedHeaderTuple
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http2.hpackplain import _REPEATED_VALUE, PlainEncoder, _repeated

RESPONSE = [
    (b":status", b"200"),
    (b":status", b"502"),
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"0"),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    (b"x-empty", b""),
    (b"x-long", b"v" * 300),
    (b"x-" + b"n" * 200, b"a name longer than one octet's prefix"),
    (b"accept-encoding", b"gzip, deflate"),
]


class PlainEncoderTests(SynchronousTestCase):
    """
    L{PlainEncoder} writes blocks any HPACK decoder reads, with no
    dynamic table state.
    """

    def test_roundTrip(self) -> None:
        """
        Whole static entries, static names with other values, new names,
        empty values and lengths past an integer's prefix all decode to
        the fields given, block after block.
        """
        encoder, decoder = PlainEncoder(), Decoder()
        for _ in range(3):
            self.assertEqual(decoder.decode(encoder.encode(RESPONSE), raw=True), RESPONSE)

    def test_nothingIndexed(self) -> None:
        """
        No field is added to the client's dynamic table, so a client that
        allows none decodes every block.
        """
        encoder, decoder = PlainEncoder(), Decoder()
        decoder.header_table_size = 0
        encoder.header_table_size = 0
        decoder.decode(encoder.encode(RESPONSE), raw=True)
        self.assertEqual(len(decoder.header_table.dynamic_entries), 0)

    def test_wholeStaticEntryIsOneOctet(self) -> None:
        """
        C{:status 200}, in the static table whole, is one octet (after the
        first block's table size update).
        """
        encoder = PlainEncoder()
        encoder.encode([])
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x88")

    def test_tableSizeUpdates(self) -> None:
        """
        The first block, and the first after the client's table size
        changes, start with a dynamic table size update to 0; others do
        not, nor does setting the same size again.
        """
        encoder = PlainEncoder()
        self.assertEqual(encoder.encode([]), b"\x20")
        self.assertEqual(encoder.encode([]), b"")
        encoder.header_table_size = 4096
        self.assertEqual(encoder.encode([]), b"")
        encoder.header_table_size = 0
        self.assertEqual(encoder.encode([]), b"\x20")
        self.assertEqual(encoder.encode([]), b"")

    def test_credentialsNeverIndexed(self) -> None:
        """
        C{set-cookie}, C{cookie} and the authorization fields are literals
        never indexed (RFC 7541 7.1.3); other fields are not.
        """
        fields = [
            (b"set-cookie", b"session=secret"),
            (b"authorization", b"Bearer x"),
            (b"x-other", b"y"),
        ]
        decoded = Decoder().decode(PlainEncoder().encode(fields), raw=True)
        self.assertEqual(decoded, fields)
        self.assertEqual(
            [isinstance(field, NeverIndexedHeaderTuple) for field in decoded],
            [True, True, False],
        )

    def test_whatIsKept(self) -> None:
        """
        Short fields are encoded once and kept, and read the same from what
        was kept; credentials and long values are never kept (no secret
        lingers in memory, and what is kept stays small).
        """
        _repeated.cache_clear()
        short = [(b"server", b"nginx/1.22.1"), (b"content-type", b"text/html")]
        first = PlainEncoder().encode(short)
        self.assertEqual(_repeated.cache_info().currsize, 2)
        self.assertEqual(PlainEncoder().encode(short), first)
        self.assertEqual(_repeated.cache_info().hits, 2)
        PlainEncoder().encode(
            [(b"set-cookie", b"session=secret"), (b"x-long", b"v" * (_REPEATED_VALUE + 1))]
        )
        self.assertEqual(_repeated.cache_info().currsize, 2)
