"""
Tests for L{lbproxy.http.headers.HeaderEdits}: a route's changes to the
headers it relays, as header lines (the request sent to the backend) and
as L{Headers} (the response relayed to the client), and their checks.
What a backend and a client see through a router is in
L{lbproxy.test.test_routing}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy.http.headers import UNEDITABLE, HeaderEditError, HeaderEdits

LINES = [
    (b"Host", b"example.com"),
    (b"X-Debug", b"1"),
    (b"Accept", b"a"),
    (b"x-debug", b"2"),
    (b"X-Version", b"old"),
    (b"Accept", b"b"),
]


class ApplyTests(SynchronousTestCase):
    """
    Removed headers go, set headers have exactly the one value given, and
    every other header is left as it was, repeats and order included.
    """

    def test_lines(self) -> None:
        """
        On header lines, every line of a removed or set name goes (whatever
        its case); the other lines keep their order; each set header is
        added once, at the end, with its name as given.
        """
        edits = HeaderEdits(
            set=((b"X-Version", b"new"), (b"X-Route", b"api")), remove=frozenset({b"x-debug"})
        )
        self.assertEqual(
            edits.applyToLines(LINES),
            [
                (b"Host", b"example.com"),
                (b"Accept", b"a"),
                (b"Accept", b"b"),
                (b"X-Version", b"new"),
                (b"X-Route", b"api"),
            ],
        )

    def test_linesUnchanged(self) -> None:
        """
        The lines given are not changed: a new list is returned.
        """
        lines = list(LINES)
        HeaderEdits(set=((b"Host", b"other"),), remove=frozenset({b"accept"})).applyToLines(lines)
        self.assertEqual(lines, LINES)

    def test_headers(self) -> None:
        """
        On L{Headers}, removed headers go with all their values, a set
        header has exactly the one value given (replacing several), and
        the others keep all their values (C{Set-Cookie} repeats intact).
        """
        headers = Headers(
            {
                b"Server": [b"backend/1.0"],
                b"X-Powered-By": [b"php"],
                b"Cache-Control": [b"no-cache", b"private"],
                b"Set-Cookie": [b"a=1", b"b=2"],
            }
        )
        HeaderEdits(
            set=((b"Cache-Control", b"max-age=60"), (b"X-Served-By", b"lbproxy")),
            remove=frozenset({b"server", b"x-powered-by"}),
        ).applyToHeaders(headers)
        self.assertEqual(
            sorted((name.lower(), list(values)) for name, values in headers.getAllRawHeaders()),
            [
                (b"cache-control", [b"max-age=60"]),
                (b"set-cookie", [b"a=1", b"b=2"]),
                (b"x-served-by", [b"lbproxy"]),
            ],
        )

    def test_removeAbsentHeader(self) -> None:
        """
        Removing a header that is not there changes nothing.
        """
        headers = Headers({b"Accept": [b"a"]})
        HeaderEdits(remove=frozenset({b"x-absent"})).applyToHeaders(headers)
        self.assertEqual(list(headers.getAllRawHeaders()), [(b"Accept", [b"a"])])
        self.assertEqual(HeaderEdits(remove=frozenset({b"x-absent"})).applyToLines(LINES), LINES)

    def test_setWinsOverRemove(self) -> None:
        """
        A header both removed and set ends with the set value: removing
        comes first.
        """
        edits = HeaderEdits(set=((b"X-Debug", b"0"),), remove=frozenset({b"x-debug"}))
        self.assertEqual(
            [line for line in edits.applyToLines(LINES) if line[0].lower() == b"x-debug"],
            [(b"X-Debug", b"0")],
        )
        headers = Headers({b"X-Debug": [b"1"]})
        edits.applyToHeaders(headers)
        self.assertEqual(headers.getRawHeaders(b"x-debug"), [b"0"])

    def test_truth(self) -> None:
        """
        Edits are true when they change something: no edits at all are
        false.
        """
        self.assertFalse(HeaderEdits())
        self.assertTrue(HeaderEdits(remove=frozenset({b"x-a"})))
        self.assertTrue(HeaderEdits(set=((b"X-A", b""),)))


class FromTextTests(SynchronousTestCase):
    """
    Edits as a config file gives them are checked and encoded.
    """

    def test_encoded(self) -> None:
        """
        Names keep their case for C{set} and are lower-cased for
        C{remove}; values are encoded as Latin-1.
        """
        edits = HeaderEdits.fromText(
            set=[("X-Route", "api"), ("X-Name", "caf\u00e9")], remove=["X-Powered-By", "Server"]
        )
        self.assertEqual(
            edits,
            HeaderEdits(
                set=((b"X-Route", b"api"), (b"X-Name", b"caf\xe9")),
                remove=frozenset({b"x-powered-by", b"server"}),
            ),
        )

    def test_emptyValue(self) -> None:
        """
        A header may be set to an empty value.
        """
        self.assertEqual(HeaderEdits.fromText([("X-Empty", "")], []).set, ((b"X-Empty", b""),))

    def test_lbproxysOwnHeadersRefused(self) -> None:
        """
        Framing and connection-control headers can be neither set nor
        removed, in any case; the message names the header.
        """
        for name in [*sorted(UNEDITABLE), b"Content-Length", b"TRANSFER-ENCODING"]:
            text = name.decode("ascii")
            with self.assertRaises(HeaderEditError, msg=text) as setting:
                HeaderEdits.fromText([(text, "x")], [])
            self.assertIn(repr(text), str(setting.exception))
            with self.assertRaises(HeaderEditError, msg=text) as removing:
                HeaderEdits.fromText([], [text])
            self.assertIn("cannot be edited", str(removing.exception))

    def test_badNamesRefused(self) -> None:
        """
        A name that is not an HTTP token is refused, for C{set} and for
        C{remove}.
        """
        for name in ["", "X Bad", "X:Colon", "X-\u00e9", "X-\u20ac", "X\r\nInjected: 1", "(x)"]:
            with self.assertRaises(HeaderEditError, msg=repr(name)) as setting:
                HeaderEdits.fromText([(name, "v")], [])
            self.assertIn("not a valid header name", str(setting.exception))
            with self.assertRaises(HeaderEditError, msg=repr(name)):
                HeaderEdits.fromText([], [name])

    def test_badValuesRefused(self) -> None:
        """
        A value with control characters (a CR or LF could start a header
        of its own), surrounding spaces, or characters outside Latin-1 is
        refused, naming the header.
        """
        for value in ["a\r\nX-Injected: 1", "a\nb", "a\x00b", "a\x7fb", " a", "a\t", "\u20ac"]:
            with self.assertRaises(HeaderEditError, msg=repr(value)) as raised:
                HeaderEdits.fromText([("X-Value", value)], [])
            self.assertIn("'X-Value'", str(raised.exception))

    def test_setTwiceRefused(self) -> None:
        """
        A header set twice (in any case) is refused: it could not have the
        one value C{set} promises.
        """
        with self.assertRaises(HeaderEditError) as raised:
            HeaderEdits.fromText([("X-Route", "a"), ("x-route", "b")], [])
        self.assertIn("x-route", str(raised.exception).lower())

    def test_asTextRoundTrip(self) -> None:
        """
        C{asText} states the edits as a config file would, and reading
        that back gives the same edits; empty parts are left out.
        """
        edits = HeaderEdits.fromText(
            set=[("X-Route", "api"), ("X-Name", "caf\u00e9")], remove=["Server", "X-Powered-By"]
        )
        text = edits.asText()
        self.assertEqual(
            text,
            {
                "set": {"X-Route": "api", "X-Name": "caf\u00e9"},
                "remove": ["server", "x-powered-by"],
            },
        )
        setText = text["set"]
        removeText = text["remove"]
        assert isinstance(setText, dict) and isinstance(removeText, list)
        self.assertEqual(HeaderEdits.fromText(setText.items(), removeText), edits)
        self.assertEqual(HeaderEdits().asText(), {})
        self.assertEqual(HeaderEdits.fromText([], ["Server"]).asText(), {"remove": ["server"]})
