"""
Tests for L{lbproxy.cli.options}: the command line, checked before anything starts.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import sys

from twisted.application.service import Service
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import certs
from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.cli.options import Options, parseSize
from lbproxy.http.edge import EdgeLimits
from lbproxy.listen import DEFAULT_LISTEN
from lbproxy.proxy import ProxySettings
from lbproxy.runtime import YOUNG_COLLECTION, ProcessRoot
from lbproxy.service import LoadBalancerConfig
from lbproxy.tls.sni import ServerTLSSettings
from lbproxy.upstream.health import EjectionSettings, HealthSettings
from lbproxy.upstream.pool import UpstreamSettings


class OptionsTestCase(SynchronousTestCase):
    """
    Helpers to parse a command line in a temporary working directory.
    """

    def setUp(self) -> None:
        self.cwd = self.mktemp()
        os.makedirs(self.cwd)
        previous = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, previous)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv: str) -> str:
        """
        Parse C{argv}, which must be refused; return the one line printed.
        """
        with self.assertRaises(SystemExit) as raised:
            self.parse(*argv)
        self.assertEqual(raised.exception.code, 2)
        output = self.stderr.getvalue()
        self.assertEqual(output.count("\n"), 1, output)
        self.assertTrue(output.startswith("lbproxy: error: "), output)
        self.assertNotIn("Traceback", output)
        return output

    def makeCertificates(self) -> None:
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(certs.main(["certs"]), 0)


class DefaultsTests(OptionsTestCase):
    """
    What an operator gets without options.
    """

    def test_defaults(self) -> None:
        """
        With only --backends, lbproxy listens on ssl:443 with the files in
        certs/, uses the random chooser, a 30 s response timeout, a 5 s
        connect timeout, a 100 MiB body limit and serves every Host.
        """
        self.makeCertificates()
        config = self.parse("--backends", "127.0.0.2,127.0.0.3").config
        assert config is not None
        self.assertEqual([s.description for s in config.listens], [DEFAULT_LISTEN])
        self.assertEqual([b.authority for b in config.backends], ["127.0.0.2:80", "127.0.0.3:80"])
        self.assertIsInstance(config.chooser, RandomChooser)
        self.assertEqual(config.proxy.responseTimeout, 30)
        self.assertIsNone(config.proxy.allowedHosts)
        self.assertEqual(config.upstream.connectTimeout, 5)
        self.assertEqual(config.limits.maxBodySize, 100 * 1024 * 1024)
        self.assertFalse(config.adhoc)

    def test_settingsDefaultsAgree(self) -> None:
        """
        A default is written once in effect: what the command line gives
        without options equals what each settings class gives when built
        with no arguments (so code that makes settings directly, tests and
        Twisted users, gets what operators get).
        """
        self.makeCertificates()
        config = self.parse("--backends", "127.0.0.2").config
        assert config is not None
        self.assertEqual(config.limits, EdgeLimits())
        self.assertEqual(config.proxy, ProxySettings())
        self.assertEqual(config.upstream, UpstreamSettings())
        self.assertEqual(config.health, HealthSettings())
        self.assertEqual(config.ejection, EjectionSettings())
        self.assertEqual(config.tls.handshakeTimeout, ServerTLSSettings().handshakeTimeout)
        drain = LoadBalancerConfig.__attrs_attrs__.drainTimeout.default
        self.assertEqual(config.drainTimeout, drain)

    def test_everyOptionSet(self) -> None:
        """
        Every option reaches the configuration.
        """
        config = self.parse(
            "--backends",
            "http://127.0.0.2:8080,[::1]:81",
            "--listen",
            "tcp:8080",
            "--listen",
            "ssl:8443",
            "--adhoc",
            "--chooser",
            "round-robin",
            "--allow-host",
            "LocalHost",
            "--allow-host",
            "example.com",
            "--timeout",
            "2.5",
            "--connect-timeout",
            "1",
            "--max-body",
            "1K",
            "--max-idle-per-backend",
            "8",
            "--backend-idle-timeout",
            "10",
            "--access-log",
            "none",
        ).config
        assert config is not None
        self.assertEqual([s.description for s in config.listens], ["tcp:8080", "ssl:8443"])
        self.assertEqual([b.authority for b in config.backends], ["127.0.0.2:8080", "[::1]:81"])
        self.assertIsInstance(config.chooser, RoundRobinChooser)
        self.assertEqual(config.proxy.allowedHosts, frozenset({"localhost", "example.com"}))
        self.assertEqual(config.proxy.responseTimeout, 2.5)
        self.assertEqual(config.upstream.connectTimeout, 1)
        self.assertEqual(config.upstream.maxIdlePerBackend, 8)
        self.assertEqual(config.upstream.idleTimeout, 10)
        self.assertEqual(config.limits.maxBodySize, 1024)
        self.assertTrue(config.adhoc)

    def test_adhocAloneListensOn443(self) -> None:
        """
        --adhoc without --listen serves the generated certificate on ssl:443,
        needing no files.
        """
        config = self.parse("--backends", "127.0.0.2", "--adhoc").config
        assert config is not None
        self.assertEqual([s.description for s in config.listens], ["ssl:443"])

    def test_demo(self) -> None:
        """
        --demo needs no backends and listens on ssl:8443 and tcp:8080.
        """
        config = self.parse("--demo").config
        assert config is not None
        self.assertTrue(config.demo)
        self.assertEqual([s.description for s in config.listens], ["ssl:8443", "tcp:8080"])

    def test_helpDocumentsEveryOption(self) -> None:
        """
        The help text names every option, with its default where it has one.
        """
        text = str(Options())
        for option in (
            "--backends",
            "--listen",
            "--adhoc",
            "--chooser",
            "--allow-host",
            "--timeout",
            "--connect-timeout",
            "--max-body",
            "--access-log",
            "--demo",
        ):
            self.assertIn(option, text)
        for default in ("[default: 30]", "[default: 5]", "[default: 100M]", "[default: random]"):
            self.assertIn(default, text)
        self.assertIn("round-robin", text)
        self.assertIn(
            "[default: ssl:443 with certs/loadbalancer.key and certs/loadbalancer.crt]",
            " ".join(text.split()),
        )

    def test_helpGroupsOptions(self) -> None:
        """
        The help lists the basics first (--backends, then --listen), then
        the other groups under their headings, each option once.
        """
        text = str(Options())
        headings = [line for line in text.splitlines() if line.endswith(":") and " " not in line]
        self.assertEqual(headings[0], "Basics:")
        self.assertIn("TLS:", headings)
        self.assertLess(text.index("--backends="), text.index("--listen="))
        self.assertLess(text.index("--listen="), text.index("Timeouts"))
        self.assertEqual(text.count("--max-body="), 1)


class ErrorTests(OptionsTestCase):
    """
    Every bad option is one clear line on stderr and exit status 2.
    """

    def test_missingDefaultCertificates(self) -> None:
        """
        Without certs/, the error names both fixes.
        """
        line = self.refused("--backends", "127.0.0.2")
        self.assertIn("python -m lbproxy.certs", line)
        self.assertIn("--adhoc", line)

    def test_table(self) -> None:
        """
        Each bad command line is refused with a line naming the problem.
        """
        cases = [
            ([], "--backends is required"),
            (["--backends", ""], "empty backend"),
            (["--backends", "a,,b"], "empty backend"),
            (["--backends", "127.0.0.2,127.0.0.2:80"], "duplicate backend"),
            (["--backends", "h:99999"], "port must be"),
            (["--backends", "h", "--chooser", "fastest"], "known choosers: hash, least-conn, p2c"),
            (["--backends", "h", "--chooser", "no.such.Thing"], "cannot import chooser"),
            (["--backends", "h", "--timeout", "soon"], "--timeout must be a number"),
            (["--backends", "h", "--timeout", "0"], "--timeout must be greater than 0"),
            (["--backends", "h", "--connect-timeout", "-1"], "--connect-timeout must be"),
            (["--backends", "h", "--max-body", "lots"], "--max-body must be a size"),
            (["--backends", "h", "--listen", "ssl:8443"], "names no privateKey"),
            (["--backends", "h", "--listen", "bogus:1"], "bogus:1"),
            (["--backends", "h", "--access-log", "/nonexistent/dir/log"], "cannot open"),
            (["--demo", "--backends", "h"], "--demo starts its own backends"),
            (["--backends", "h", "--frobnicate"], "frobnicate"),
        ]
        for argv, expected in cases:
            self.stderr.seek(0)
            self.stderr.truncate()
            if "--listen" not in argv and "--demo" not in argv:
                argv = [*argv, "--listen", "tcp:0"]
            line = self.refused(*argv)
            self.assertIn(expected, line, argv)

    def test_badCertificateFile(self) -> None:
        """
        A certificate file that is not a certificate is refused at start-up,
        naming the file.
        """
        self.makeCertificates()
        with open("certs/loadbalancer.crt", "w") as f:
            f.write("not a certificate\n")
        line = self.refused("--backends", "127.0.0.2")
        self.assertIn("loadbalancer.crt", line)


class SizeTests(SynchronousTestCase):
    """
    Byte sizes on the command line.
    """

    def test_sizes(self) -> None:
        """
        Sizes are whole bytes with optional binary K, M, G suffixes.
        """
        for text, size in [
            ("0", 0),
            ("1024", 1024),
            ("1K", 1024),
            ("1k", 1024),
            ("100M", 100 * 1024**2),
            ("100MiB", 100 * 1024**2),
            ("2G", 2 * 1024**3),
        ]:
            self.assertEqual(parseSize(text), size, text)
        for text in ("", "M", "1.5M", "-1", "1T", "ten"):
            self.assertRaises(ValueError, parseSize, text)


class HeapTests(SynchronousTestCase):
    """
    Once the reactor runs, the twistd root hides the start-up heap from the
    cyclic garbage collector and makes young collections rarer.
    """

    def test_startUpObjectsFrozen(self) -> None:
        """
        Objects that exist when the reactor starts are frozen (out of every
        collection); objects made later are not.
        """
        gc.unfreeze()
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        for number in [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]:
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        reactor = MemoryReactor()
        root = ProcessRoot(Service(), reactor)
        before = object.__new__(_Node)
        root.startService()
        self.assertEqual(gc.get_freeze_count(), 0)
        reactor.run()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(gc.get_threshold()[0], YOUNG_COLLECTION)
        self.assertNotIn(before, gc.get_objects())
        after = object.__new__(_Node)
        self.assertIn(after, gc.get_objects())


class _Node:
    """
    A container object the collector tracks.
    """


class VersionTests(SynchronousTestCase):
    """
    C{--version} says which lbproxy this is.
    """

    def test_version(self) -> None:
        """
        C{--version} prints lbproxy's version (the package's one
        C{__version__}, which setup.cfg also reads) with Twisted's, and
        exits 0.
        """
        import io
        import sys

        import twisted
        from lbproxy import __version__

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        exit = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual(exit.code, 0)
        self.assertTrue(
            out.getvalue().startswith(f"lbproxy {__version__} (Twisted {twisted.__version__}, "),
            out.getvalue(),
        )
