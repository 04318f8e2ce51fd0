"""
Tests for L{lbproxy._twisted.headers.QuickHeaders}: the same answers and
the same contents as twisted.web's L{Headers}, operation by operation.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy._twisted.headers import QuickHeaders
from lbproxy.http.checks import parsePlainHead

_NAMES: list[Any] = [
    b"host",
    b"Host",
    b"HOST",
    b"connection",
    b"x-request-id",
    b"X-Never-Seen-Before-1",
    b"content-md5",
    b"www-authenticate",
    "host",
    "Connection",
    "x-unicode-name",
]
_VALUES: list[Any] = [
    b"a",
    b"",
    b"two words",
    b"line\r\nbreak",
    b"bare\nLF",
    b"bare\rCR",
    "text",
    "caf\u00e9",
]


def _state(headers: Headers) -> list[tuple[bytes, list[bytes]]]:
    return [(name, list(values)) for name, values in headers.getAllRawHeaders()]


class QuickHeadersTests(SynchronousTestCase):
    """
    L{QuickHeaders} and L{Headers} given the same operations.
    """

    def test_sameOperations(self) -> None:
        """
        Random reads, tests, sets, adds and removals (names of bytes and
        text, seen before or not, in any case; values with line breaks and
        text) give the same results and leave the same contents.
        """
        rng = random.Random(20261129)
        for _ in range(300):
            plain, quick = Headers(), QuickHeaders()
            for _ in range(20):
                operation = rng.choice(["get", "getDefault", "has", "set", "add", "remove"])
                name = rng.choice(_NAMES)
                values = [rng.choice(_VALUES) for _ in range(rng.randint(0, 3))]
                value = rng.choice(_VALUES)
                results: list[object] = []
                for headers in (plain, quick):
                    if operation == "get":
                        results.append(headers.getRawHeaders(name))
                    elif operation == "getDefault":
                        results.append(headers.getRawHeaders(name, ["default"]))
                    elif operation == "has":
                        results.append(headers.hasHeader(name))
                    elif operation == "set":
                        headers.setRawHeaders(name, values)
                    elif operation == "add":
                        headers.addRawHeader(name, value)
                    else:
                        headers.removeHeader(name)
                if results:
                    self.assertEqual(results[0], results[1], (operation, name, values))
                self.assertEqual(_state(plain), _state(quick), (operation, name, values))

    def test_setCopiesValues(self) -> None:
        """
        As twisted.web's, C{setRawHeaders} keeps a copy of the list given:
        changing the list afterwards changes nothing.
        """
        headers = QuickHeaders()
        values = [b"a"]
        headers.setRawHeaders(b"host", values)
        values.append(b"b")
        self.assertEqual(headers.getRawHeaders(b"host"), [b"a"])

    def test_fromCheckedLines(self) -> None:
        """
        Headers made from checked field lines are those C{addRawHeader}
        makes of them one by one: canonical names, repeats in order.
        """
        lines = [
            (b"host", b"example"),
            (b"x-new-name-for-this-test", b"1"),
            (b"Accept", b"text/html"),
            (b"X-NEW-NAME-FOR-THIS-TEST", b"2"),
            (b"etag", b'"x"'),
        ]
        expected = Headers()
        for name, value in lines:
            expected.addRawHeader(name, value)
        self.assertEqual(_state(QuickHeaders.fromCheckedLines(lines)), _state(expected))

    def test_parsedHeadIsQuick(self) -> None:
        """
        The edge's one-pass parser gives L{QuickHeaders}, holding what
        twisted.web would.
        """
        head = parsePlainHead(
            b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\ncookie: b=2\r\nX-Y:  z \r\n",
            8192,
            65536,
            100,
        )
        assert head is not None
        self.assertIsInstance(head.headers, QuickHeaders)
        self.assertEqual(
            _state(head.headers),
            [(b"Host", [b"h"]), (b"Cookie", [b"a=1", b"b=2"]), (b"X-Y", [b"z"])],
        )
