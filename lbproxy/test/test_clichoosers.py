"""
Tests for L{lbproxy.cli.choosers}: the chooser options of C{twistd lbproxy}.
"""

from __future__ import annotations

import io
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.hash import HashChooser
from lbproxy.balancing.leastconn import LeastConnChooser
from lbproxy.balancing.p2c import P2CChooser
from lbproxy.balancing.peakewma import PeakEWMAChooser
from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.registry import ChooserError, ChooserSettings
from lbproxy.balancing.sticky import StickyChooser
from lbproxy.cli.choosers import settingsFromOptions
from lbproxy.cli.options import Options
from lbproxy.interfaces import IChooser


class SettingsTests(SynchronousTestCase):
    """
    Tests for L{settingsFromOptions}: the options read, the secret file
    read, the settings checked.
    """

    def options(self, **overrides: str | None) -> dict[str, str | None]:
        options: dict[str, str | None] = {
            "hash-key": "client-ip",
            "hash-balance-factor": "1.25",
            "sticky-cookie": "lbproxy_backend",
            "sticky-fallback": "random",
            "sticky-secret-file": None,
        }
        options.update(overrides)
        return options

    def test_defaults(self) -> None:
        """
        The default options give the default settings.
        """
        self.assertEqual(settingsFromOptions(self.options()), ChooserSettings())

    def test_secretFile(self) -> None:
        """
        The sticky secret is read from the file, without surrounding
        whitespace.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"  0123456789abcdef0123\n")
        settings = settingsFromOptions(self.options(**{"sticky-secret-file": path.path}))
        self.assertEqual(settings.sticky.secret, b"0123456789abcdef0123")

    def test_refused(self) -> None:
        """
        Bad values are one-line L{ChooserError}s naming the option.
        """
        short = FilePath(self.mktemp())
        short.setContent(b"short")
        cases: list[tuple[dict[str, str | None], str]] = [
            ({"hash-key": "ip"}, "--hash-key"),
            ({"hash-balance-factor": "lots"}, "--hash-balance-factor"),
            ({"hash-balance-factor": "0.9"}, "--hash-balance-factor"),
            ({"hash-balance-factor": "nan"}, "--hash-balance-factor"),
            ({"sticky-cookie": "a b"}, "--sticky-cookie"),
            ({"sticky-fallback": "sticky"}, "--sticky-fallback"),
            ({"sticky-secret-file": "/nonexistent/secret"}, "--sticky-secret-file"),
            ({"sticky-secret-file": short.path}, "at least 16 bytes"),
        ]
        for overrides, fragment in cases:
            message = str(
                self.assertRaises(ChooserError, settingsFromOptions, self.options(**overrides))
            )
            self.assertIn(fragment, message)
            self.assertEqual(len(message.splitlines()), 1)


class CommandLineTests(SynchronousTestCase):
    """
    The chooser options of C{twistd lbproxy}.
    """

    def config(self, *argv: str) -> IChooser:
        """
        The chooser configured by C{argv} (with a backend and a plain TCP
        listener).
        """
        options = Options()
        options.parseOptions(["--backends", "127.0.0.2=3,127.0.0.3", "--listen", "tcp:0", *argv])
        assert options.config is not None
        return options.config.chooser

    def test_choosersByName(self) -> None:
        """
        Each built-in name on the command line builds its chooser.
        """
        cases: list[tuple[list[str], type]] = [
            ([], RandomChooser),
            (["--chooser", "least-conn"], LeastConnChooser),
            (["--chooser", "p2c"], P2CChooser),
            (["--chooser", "peak-ewma"], PeakEWMAChooser),
            (["--chooser", "hash", "--hash-key", "cookie:session"], HashChooser),
            (["--chooser", "sticky", "--sticky-fallback", "hash"], StickyChooser),
        ]
        for argv, kind in cases:
            self.assertIsInstance(self.config(*argv), kind)

    def test_badValuesRefused(self) -> None:
        """
        A bad chooser option stops start-up with one line and status 2,
        whichever chooser is in use.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        for argv in [
            ["--hash-key", "ip"],
            ["--chooser", "hash", "--hash-balance-factor", "0.5"],
            ["--sticky-cookie", "a;b"],
            ["--sticky-secret-file", "/nonexistent/secret"],
        ]:
            stderr.truncate(0)
            stderr.seek(0)
            raised = self.assertRaises(SystemExit, self.config, *argv)
            self.assertEqual(raised.code, 2)
            self.assertEqual(stderr.getvalue().count("\n"), 1, stderr.getvalue())
