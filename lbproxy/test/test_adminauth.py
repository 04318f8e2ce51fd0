"""
Tests for L{lbproxy.admin.auth}: the bearer token check, the token file and
the check of where the admin API listens.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.admin.auth import (
    MAX_TOKEN,
    AdminConfigError,
    authorize,
    checkAdminEndpoint,
    readTokenFile,
)
from lbproxy.admin.response import JSON, AdminResponse

TOKEN = b"s3cret-token"


class AuthorizeTests(SynchronousTestCase):
    """
    With a token configured, only requests that carry it are let through.
    """

    def assertUnauthorized(self, response: AdminResponse | None) -> str:
        """
        Check that C{response} is the 401 answer: JSON error and
        C{WWW-Authenticate: Bearer}; return the error.
        """
        assert response is not None
        self.assertEqual(response.status, 401)
        self.assertEqual(response.contentType, JSON)
        self.assertEqual(response.header("WWW-Authenticate"), "Bearer")
        self.assertTrue(response.body.endswith(b"\n"))
        error: str = json.loads(response.body)["error"]
        return error

    def test_noTokenConfigured(self) -> None:
        """
        Without a configured token every request is let through.
        """
        self.assertIsNone(authorize(None, None))
        self.assertIsNone(authorize([b"Bearer anything"], None))

    def test_noHeader(self) -> None:
        """
        A request without C{Authorization} is refused, saying what to send.
        """
        self.assertIn("Authorization: Bearer", self.assertUnauthorized(authorize(None, TOKEN)))
        self.assertUnauthorized(authorize([], TOKEN))

    def test_wrongToken(self) -> None:
        """
        A request with another token, or part of the token, is refused.
        """
        for value in (b"Bearer nope", b"Bearer " + TOKEN[:-1], b"Bearer " + TOKEN + b"x"):
            self.assertEqual(
                self.assertUnauthorized(authorize([value], TOKEN)), "wrong admin token"
            )

    def test_otherScheme(self) -> None:
        """
        The token must come as a bearer token, not in another scheme.
        """
        for value in (TOKEN, b"Basic " + TOKEN, b"Bearer", b""):
            self.assertUnauthorized(authorize([value], TOKEN))

    def test_twoHeaders(self) -> None:
        """
        Two C{Authorization} headers are refused, even if one is right.
        """
        self.assertUnauthorized(authorize([b"Bearer " + TOKEN, b"Bearer nope"], TOKEN))

    def test_rightToken(self) -> None:
        """
        The right token is let through; the scheme's case and surrounding
        spaces do not matter.
        """
        for value in (b"Bearer " + TOKEN, b"bearer " + TOKEN, b"BEARER  " + TOKEN + b" "):
            self.assertIsNone(authorize([value], TOKEN))


class ReadTokenFileTests(SynchronousTestCase):
    """
    The token is read from a file.
    """

    def write(self, content: bytes) -> str:
        """
        A new file holding C{content}.
        """
        path: str = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_read(self) -> None:
        """
        The token is the file's content without surrounding whitespace.
        """
        self.assertEqual(readTokenFile(self.write(b"  " + TOKEN + b"\n\n")), TOKEN)

    def test_missing(self) -> None:
        """
        A file that cannot be read is an error naming it and why.
        """
        path = self.mktemp()
        error = self.assertRaises(AdminConfigError, readTokenFile, path)
        self.assertIn(repr(path), str(error))
        self.assertIn(os.strerror(2), str(error))

    def test_invalid(self) -> None:
        """
        An empty file, one holding more than one word, characters other
        than printable ASCII, or more than L{MAX_TOKEN} bytes, is an error
        naming the file, on one line.
        """
        for content in (b"", b" \n\t\n", b"two words", b"caf\xc3\xa9", b"x" * (MAX_TOKEN + 1)):
            path = self.write(content)
            error = str(self.assertRaises(AdminConfigError, readTokenFile, path))
            self.assertIn(repr(path), error)
            self.assertNotIn("\n", error)


ALLOWED_WITHOUT_TOKEN = [
    "tcp:8081:interface=127.0.0.1",
    "tcp:8081:interface=127.8.9.10",
    "tcp:0:interface=127.0.0.1",
    "tcp:8081:127.0.0.1",
    "tcp:port=8081:interface=127.0.0.1:backlog=10",
    "tcp:8081:interface=\\:\\:1",
    "tcp6:8081:interface=\\:\\:1",
    "tcp6:8081:50:\\:\\:1",
    "tcp6:8081:interface=\\:\\:ffff\\:127.0.0.1",
    "unix:/run/lbproxy/admin.sock",
    "unix:address=/run/lbproxy/admin.sock:mode=600:lockfile=1",
]
"""
Endpoints the admin API may listen on without a token: loopback and unix
sockets.
"""

NEED_TOKEN = [
    "tcp:8081",
    "tcp:8081:interface=",
    "tcp:8081:interface=0.0.0.0",
    "tcp:8081:interface=192.0.2.1",
    "tcp:8081:interface=localhost",
    "tcp:8081:backlog=5",
    "tcp6:8081",
    "tcp6:8081:interface=\\:\\:",
    "tcp6:8081:interface=2001\\:db8\\:\\:1",
    "tcp6:8081:interface=\\:\\:ffff\\:192.0.2.1",
]
"""
Endpoints that listen beyond loopback: only with a token.
"""

INVALID = [
    "",
    "8081",
    "ssl:8443",
    "systemd:domain=INET:index=0",
    "TCP:8081",
    "port=8081",
    "tcp",
    "tcp:",
    "tcp:http",
    "tcp:-1",
    "tcp:65536",
    "tcp:8081:interface=::1",
    "tcp:8081:interface=127.0.0.1:color=red",
    "tcp:8081:interface=127.0.0.1:interface=127.0.0.2",
    "tcp:8081:127.0.0.1:50:extra",
    "tcp:8081:backlog=many",
    "tcp:8081:interface=127.0.0.1\\",
    "unix:",
    "unix:address=",
    "unix:/run/admin.sock:mode=999",
    "unix:/run/admin.sock:lockfile=yes",
]
"""
Endpoint strings that cannot be parsed, or have a type other than tcp,
tcp6 or unix: refused with a token or without.
"""


class CheckAdminEndpointTests(SynchronousTestCase):
    """
    Without a token, the admin API listens only on loopback or a unix
    socket; its endpoint string is read as Twisted reads it.
    """

    def test_allowedWithoutToken(self) -> None:
        """
        Loopback addresses (127.0.0.0/8, ::1, IPv4-mapped 127.x) and unix
        sockets need no token.
        """
        for description in ALLOWED_WITHOUT_TOKEN:
            for hasToken in (False, True):
                checkAdminEndpoint(description, hasToken)

    def test_needToken(self) -> None:
        """
        An endpoint that listens on every address, another address or a
        name needs a token; the error says so, and what to do.
        """
        for description in NEED_TOKEN:
            error = str(self.assertRaises(AdminConfigError, checkAdminEndpoint, description, False))
            self.assertIn(f"--admin {description!r} listens beyond loopback", error)
            self.assertIn("--admin-token-file", error)
            self.assertNotIn("\n", error)
            checkAdminEndpoint(description, True)

    def test_invalid(self) -> None:
        """
        An endpoint string that cannot be parsed, or of another type, is
        refused with one line quoting it, token or not.
        """
        for description in INVALID:
            for hasToken in (False, True):
                error = str(
                    self.assertRaises(AdminConfigError, checkAdminEndpoint, description, hasToken)
                )
                self.assertIn(f"--admin {description!r}", error)
                self.assertNotIn("\n", error)

    def test_messages(self) -> None:
        """
        The error says what is wrong with the endpoint string.
        """
        for description, expected in (
            ("ssl:8443", "tcp:, tcp6: or unix:"),
            ("tcp", "tcp needs a port"),
            ("unix:", "unix needs an address"),
            ("tcp:http", "port must be a number from 0 to 65535, not 'http'"),
            ("tcp:8081:color=red", "unknown tcp option 'color'"),
            ("tcp:8081:port=8082", "port is given twice"),
            ("tcp:1:\\", "lone backslash"),
        ):
            error = str(self.assertRaises(AdminConfigError, checkAdminEndpoint, description, True))
            self.assertIn(expected, error)
