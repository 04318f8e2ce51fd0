"""
Tests for L{lbproxy.http2.head.plainlyWellFormed}, the one-pass check of
ordinary HTTP/2 header blocks, against C{h2}'s own checks on the same
blocks: it may send a block on to them, never take one they refuse.
"""

from __future__ import annotations

import random

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http2.head import plainlyWellFormed

_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILERS = HeaderValidationFlags(
    is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False
)

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/index.html?q=1"),
    (b"user-agent", b"curl/8.0"),
    (b"accept", b"*/*"),
    (b"cookie", b"a=1"),
    (b"te", b"trailers"),
    (b"x-empty", b""),
]

_NAMES = [
    b":method",
    b":scheme",
    b":path",
    b":authority",
    b":status",
    b":protocol",
    b":bogus",
    b"host",
    b"te",
    b"accept",
    b"Accept",
    b"x-a b",
    b"x:colon",
    b"",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"x-\x00",
    b"x-\x7f",
    b'x-"quoted"',
    b"x-(paren)",
]
_VALUES = [
    b"GET",
    b"CONNECT",
    b"https",
    b"/",
    b"",
    b"example.com",
    b"other.example",
    b"trailers",
    b"TRAILERS",
    b"gzip",
    b" lead",
    b"trail\t",
    b"a\rb",
    b"a\nb",
    b"a\x00b",
    b"mid dle",
    b"\x80\xff",
]


def _h2Accepts(fields: list[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> bool:
    try:
        for _ in validate_headers(fields, flags):
            pass
    except ProtocolError:
        return False
    return True


class PlainlyWellFormedTests(SynchronousTestCase):
    """
    L{plainlyWellFormed} takes ordinary requests and trailers in one pass
    and nothing C{h2} refuses.
    """

    def test_ordinaryRequest(self) -> None:
        """
        An ordinary request (pseudo-headers first, lower-case token names,
        an empty value, C{te: trailers}) is taken, as C{h2} takes it.
        """
        self.assertTrue(plainlyWellFormed(GET, trailers=False))
        self.assertTrue(_h2Accepts(GET, _REQUEST))

    def test_ordinaryTrailers(self) -> None:
        """
        Trailers of regular fields are taken; with a pseudo-header they
        are not.
        """
        trailers = [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
        self.assertTrue(plainlyWellFormed(trailers, trailers=True))
        self.assertFalse(plainlyWellFormed([(b":path", b"/"), *trailers], trailers=True))

    def test_refusedAsH2Does(self) -> None:
        """
        Each way a request head can be malformed is not taken by the one
        pass (and C{h2} refuses it too).
        """
        cases = {
            "upper-case name": [*GET, (b"X-Up", b"1")],
            "space in name": [*GET, (b"x a", b"1")],
            "colon in name": [*GET, (b"x:y", b"1")],
            "NUL in value": [*GET, (b"x", b"a\x00")],
            "CR in value": [*GET, (b"x", b"a\rb")],
            "LF in value": [*GET, (b"x", b"a\nb")],
            "leading space": [*GET, (b"x", b" a")],
            "trailing tab": [*GET, (b"x", b"a\t")],
            "connection": [*GET, (b"connection", b"keep-alive")],
            "te gzip": [*GET, (b"te", b"gzip")],
            "pseudo after regular": [*GET, (b":method", b"GET")],
            "duplicate pseudo": [(b":method", b"GET"), *GET],
            "unknown pseudo": [(b":bogus", b"1"), *GET],
            "no :path": [f for f in GET if f[0] != b":path"],
            "empty :path": [(b":path", b"") if f[0] == b":path" else f for f in GET],
            "no :method": [f for f in GET if f[0] != b":method"],
            "no :scheme": [f for f in GET if f[0] != b":scheme"],
            "no authority or host": [f for f in GET if f[0] != b":authority"],
            "host differs": [*GET, (b"host", b"other.example")],
            "two hosts": [f for f in GET if f[0] != b":authority"]
            + [(b"host", b"a"), (b"host", b"a")],
        }
        for why, fields in cases.items():
            self.assertFalse(plainlyWellFormed(fields, trailers=False), why)
            self.assertFalse(_h2Accepts(fields, _REQUEST), why)

    def test_neverTakesWhatH2Refuses(self) -> None:
        """
        Over 20 000 header blocks made at random from fields that are
        good, bad and odd, every block the one pass takes, C{h2}'s checks
        take too; and it takes some (the usual case stays fast).
        """
        rng = random.Random(15)
        taken = 0
        for _ in range(20000):
            fields = list(GET) if rng.random() < 0.5 else []
            for _ in range(rng.randrange(0, 4)):
                field = (rng.choice(_NAMES), rng.choice(_VALUES))
                fields.insert(rng.randrange(0, len(fields) + 1), field)
            if fields and rng.random() < 0.2:
                del fields[rng.randrange(len(fields))]
            for trailers, flags in ((False, _REQUEST), (True, _TRAILERS)):
                if plainlyWellFormed(fields, trailers):
                    taken += 1
                    self.assertTrue(_h2Accepts(fields, flags), (fields, trailers))
        self.assertGreater(taken, 1000)
