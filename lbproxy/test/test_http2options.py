"""
Tests for the HTTP/2 options (L{lbproxy.cli.http2options}): their defaults,
their checks, and the same names as config-file keys.
"""

from __future__ import annotations

import os

from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.cli.helptext import GROUPS
from lbproxy.cli.http2options import HTTP2Options
from lbproxy.cli.options import Options
from lbproxy.http2.settings import HTTP2Settings
from lbproxy.test.test_reload import ReloadTestCase

_LISTEN = ("--listen", "tcp:0", "--backends", "127.0.0.2")


class HTTP2OptionsTests(SynchronousTestCase):
    """
    The command line and config file of HTTP/2.
    """

    def settings(self, *arguments: str) -> HTTP2Settings:
        options = Options()
        options.parseArguments([*_LISTEN, *arguments])
        assert options.config is not None
        return options.config.http2

    def refused(self, *arguments: str) -> str:
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseArguments([*_LISTEN, *arguments])
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """
        Without HTTP/2 options, the settings are L{HTTP2Settings}' documented
        defaults: off, 100 streams, 64 KiB header lists, 65535-byte windows,
        16 KiB frames, 64 KiB per stream; the send timeout is
        C{--send-timeout}'s.
        """
        self.assertEqual(self.settings(), HTTP2Settings())
        self.assertFalse(self.settings().enabled)
        self.assertFalse(self.settings().h2c)
        self.assertTrue(self.settings("--http2", "on").enabled)
        self.assertEqual(self.settings("--send-timeout", "7").sendTimeout, 7.0)

    def test_limits(self) -> None:
        """
        Each limit option sets its setting; sizes take K and M.
        """
        settings = self.settings(
            "--http2",
            "on",
            "--http2-max-concurrent-streams",
            "50",
            "--http2-max-header-list-size",
            "16K",
            "--http2-initial-window-size",
            "1M",
            "--http2-max-frame-size",
            "16777215",
            "--http2-stream-buffer",
            "256K",
        )
        self.assertEqual(
            (
                settings.enabled,
                settings.maxConcurrentStreams,
                settings.maxHeaderListSize,
                settings.initialWindowSize,
                settings.maxFrameSize,
                settings.streamBuffer,
            ),
            (True, 50, 16 * 1024, 1024 * 1024, 16777215, 256 * 1024),
        )

    def test_connectionWindowCapped(self) -> None:
        """
        The connection's window is the stream window times the stream limit,
        capped at HTTP/2's largest window.
        """
        settings = self.settings(
            "--http2-max-concurrent-streams", "1000", "--http2-initial-window-size", "16M"
        )
        self.assertEqual(settings.connectionWindowSize, 2**31 - 1)

    def test_refused(self) -> None:
        """
        A bad value is refused in one line naming the option and the value.
        """
        cases = [
            (("--http2-max-frame-size", "16383"), "--http2-max-frame-size must be from 16384"),
            (("--http2-max-frame-size", "16M"), "to 16777215, not '16M'"),
            (("--http2-max-concurrent-streams", "0"), "--http2-max-concurrent-streams must be"),
            (("--http2-max-concurrent-streams", "1K"), "must be a whole number, not '1K'"),
            (("--http2-max-header-list-size", "100"), "from 1024"),
            (("--http2-initial-window-size", "2G"), "to 2147483647, not '2G'"),
            (("--http2-stream-buffer", "lots"), "must be a size like 65536 or 64K, not 'lots'"),
            (("--http2", "yes"), "--http2 must be on or off"),
            (("--h2c",), "--h2c needs --http2 on"),
        ]
        for arguments, expected in cases:
            self.assertIn(expected, self.refused(*arguments), arguments)

    def test_configFileKeys(self) -> None:
        """
        The options are config-file keys by the same names.
        """
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w") as f:
            f.write(
                'http2 = "on"\nhttp2-max-concurrent-streams = 50\n'
                'http2-max-frame-size = 32768\nhttp2-stream-buffer = "128K"\n'
            )
        settings = self.settings("--config", path)
        self.assertEqual(
            (
                settings.enabled,
                settings.maxConcurrentStreams,
                settings.maxFrameSize,
                settings.streamBuffer,
            ),
            (True, 50, 32768, 128 * 1024),
        )

    def test_configFileRefused(self) -> None:
        """
        A bad value in the config file is refused naming the file, line
        and key.
        """
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w") as f:
            f.write("http2-max-frame-size = 10\n")
        message = self.refused("--config", path)
        self.assertIn("line 1: http2-max-frame-size: must be from 16384", message)

    def test_inHelpGroup(self) -> None:
        """
        Every HTTP/2 option has its place in C{--help}'s HTTP/2 group.
        """
        names = {name for name, *_ in HTTP2Options.optParameters + HTTP2Options.optFlags}
        self.assertEqual(set(dict(GROUPS)["HTTP/2"]), names)


class ReloadTests(ReloadTestCase):
    """
    A reload that changes HTTP/2 options.
    """

    def test_restartNamed(self) -> None:
        """
        The HTTP/2 options wait for a restart (each connection takes them
        when it opens); a reload that changes them says so, naming them.
        """
        listen = 'listen = ["tcp:0:interface=127.0.0.1"]\nbackends = ["127.0.0.2"]\n'
        _, reloader = self.start(listen + 'http2 = "on"\n')
        self.write(
            listen + 'http2 = "on"\nhttp2-max-concurrent-streams = 50\n'
            "http2-max-frame-size = 32768\n"
        )
        self.assertTrue(reloader.reload())
        self.assertEqual(
            self.logged(LogLevel.warn),
            [
                "changed options that take effect at the next restart: "
                "http2-max-concurrent-streams, http2-max-frame-size"
            ],
        )
