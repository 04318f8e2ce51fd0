"""
Tests for L{lbproxy.cli.configfile} and the config-file parts of
L{lbproxy.cli.options}: a TOML file read into options, pools and routes;
flags given on the command line winning over it; and every kind of
invalid file refused with one line naming the file, the line and the key.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.random import RandomChooser
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.cli.configfile import ConfigFileError, ConfigSource, parseConfigText
from lbproxy.cli.options import Options, givenOptions
from lbproxy.http.headers import HeaderEdits
from lbproxy.routing import RouteRule
from lbproxy.service import DEFAULT_POOL, LoadBalancerConfig


class ConfigFileTestCase(SynchronousTestCase):
    """
    Write config files and parse command lines that name them.
    """

    def writeConfig(self, text: str) -> str:
        """
        Write C{text} to a new file; return its path.
        """
        path: str = self.mktemp() + ".toml"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def parse(self, text: str, *arguments: str) -> Options:
        """
        Parse C{--config FILE} (a file holding C{text}) and C{arguments}.
        """
        options = Options()
        options.parseArguments(["--config", self.writeConfig(text), *arguments])
        return options

    def config(self, text: str, *arguments: str) -> LoadBalancerConfig:
        """
        The configuration that L{parse} builds.
        """
        config = self.parse(text, *arguments).config
        assert config is not None
        return config

    def refused(self, text: str, *arguments: str) -> tuple[str, str]:
        """
        Parse a file holding C{text}, which must be refused; return the
        file's path and the error's one line.
        """
        path = self.writeConfig(text)
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseArguments(["--config", path, *arguments])
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        return path, message


_LISTEN = ("--listen", "tcp:0")
"""
Flags the tests give with a file: a listener that needs no certificate.
"""


class InvalidFileTests(ConfigFileTestCase):
    """
    An invalid file is one line: C{FILE, line N: KEY: message}.
    """

    def assertRefused(self, cases: Sequence[tuple[str, int, str, str]], *arguments: str) -> None:
        """
        Each file in C{cases} (its text, the line and key the error names,
        and its message) is refused with exactly that line.
        """
        for text, line, key, message in cases:
            path, error = self.refused(text, *arguments)
            self.assertEqual(error, f"{path}, line {line}: {key}: {message}", text)

    def test_unknownKeys(self) -> None:
        """
        An unknown key is an error, never ignored, with a suggestion when
        a known one is close: at the top level, in a pool (where an option
        of the edge, TLS or process is told to go to the top level), in a
        route and in its header edits. Options that make no sense in a
        file (C{config}, C{version}, C{help}) are refused as such.
        """
        self.assertRefused(
            [
                (
                    'backends = ["127.0.0.2"]\n\nretires = 2\n',
                    3,
                    "retires",
                    "unknown option (did you mean 'retries'?)",
                ),
                ("zzz = 1\n", 1, "zzz", "unknown option"),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nchoser = "random"\n',
                    3,
                    "pools.web.choser",
                    "unknown pool option (did you mean 'chooser'?)",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nmax-body = "1M"\n',
                    3,
                    "pools.web.max-body",
                    "unknown pool option (it is not a pool option: give it at the top level)",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\ntrusted-proxy = ["10.0.0.0/8"]\n',
                    3,
                    "pools.web.trusted-proxy",
                    "unknown pool option (it is not a pool option: give it at the top level)",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\nprefix = "/a"\n',
                    6,
                    "routes[0].prefix",
                    "unknown route option (did you mean 'strip-prefix'?)",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\n'
                    '[routes.request-headers]\nadd = { X-A = "1" }\n',
                    7,
                    "routes[0].request-headers.add",
                    "unknown key (set or remove)",
                ),
                (
                    'config = "other.toml"\nbackends = ["127.0.0.2"]\n',
                    1,
                    "config",
                    "cannot be given in a config file",
                ),
            ],
            *_LISTEN,
        )

    def test_badTypes(self) -> None:
        """
        A value of the wrong type is refused at its line, saying what it
        must be.
        """
        self.assertRefused(
            [
                (
                    'backends = ["127.0.0.2"]\nretries = [2]\n',
                    2,
                    "retries",
                    "must be a number or a string",
                ),
                ('backends = ["127.0.0.2"]\nadhoc = "yes"\n', 2, "adhoc", "must be true or false"),
                (
                    'backends = ["127.0.0.2"]\ntimeout = true\n',
                    2,
                    "timeout",
                    "must be a number or a string",
                ),
                (
                    'backends = ["127.0.0.2"]\nallow-host = [1]\n',
                    2,
                    "allow-host",
                    "must be a string or a list of strings",
                ),
                (
                    "backends = [1, 2]\n",
                    1,
                    "backends",
                    "must be a list of strings like '10.0.0.1:80'",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\neject-on-5xx = "yes"\n',
                    3,
                    "pools.web.eject-on-5xx",
                    "must be true or false",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\ndraining = "127.0.0.2"\n',
                    3,
                    "pools.web.draining",
                    "must be a list of backends",
                ),
                ("pools = 3\n", 1, "pools", "must be tables like [pools.web]"),
                ("[pools]\nweb = 3\n", 2, "pools.web", "must be a table"),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\nhost = 3\n',
                    6,
                    "routes[0].host",
                    "must be a host name or a list of them",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\npath = 3\n',
                    6,
                    "routes[0].path",
                    "must be a path like '/api'",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\n'
                    'strip-prefix = "yes"\n',
                    6,
                    "routes[0].strip-prefix",
                    "must be true or false",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\n'
                    "[routes.response-headers]\nset = { X-A = 1 }\n",
                    7,
                    "routes[0].response-headers.set",
                    "must be a table of header names to string values",
                ),
                (
                    '[pools.web]\nbackends = []\n\n[[routes]]\npool = "web"\n'
                    '[routes.response-headers]\nremove = "Server"\n',
                    7,
                    "routes[0].response-headers.remove",
                    "must be a list of header names",
                ),
                (
                    "[pools.web]\nbackends = []\nroutes = 1\n",
                    3,
                    "pools.web.routes",
                    "unknown pool option (did you mean 'retries'?)",
                ),
            ],
            *_LISTEN,
        )

    def test_badValuesAtTheirLine(self) -> None:
        """
        A value of the right type that the flag's own check refuses is
        reported at the file's line, with the key's path: in a pool, at
        the top level as every pool's default, and for options of the edge
        and the process.
        """
        self.assertRefused(
            [
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\n\ntimeout = "soon"\n',
                    4,
                    "pools.web.timeout",
                    "must be a number of seconds, not 'soon'",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nretries = -1\n',
                    3,
                    "pools.web.retries",
                    "must be at least 0, not '-1'",
                ),
                (
                    'retries = "two"\n[pools.web]\nbackends = ["127.0.0.2"]\n',
                    1,
                    "retries",
                    "must be a whole number, not 'two'",
                ),
                (
                    'backends = ["127.0.0.2"]\nretries = 2.5\n',
                    2,
                    "retries",
                    "must be a whole number, not '2.5'",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2:99999"]\n',
                    2,
                    "pools.web.backends",
                    "backend '127.0.0.2:99999': port must be a number from 1 to 65535",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nhealth-path = "healthz"\n',
                    3,
                    "pools.web.health-path",
                    "must be a path starting with '/', not 'healthz'",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nmax-ejection-percent = 101\n',
                    3,
                    "pools.web.max-ejection-percent",
                    "must be at most 100",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nmax-idle-per-backend = -1\n',
                    3,
                    "pools.web.max-idle-per-backend",
                    "must be a whole number >= 0",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nhash-key = "bogus"\n',
                    3,
                    "pools.web.hash-key",
                    "must be client-ip, header:NAME, cookie:NAME or path, not 'bogus'",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\nchooser = "nope"\n',
                    3,
                    "pools.web.chooser",
                    "unknown chooser 'nope'; known choosers: hash, least-conn, p2c, "
                    "peak-ewma, random, round-robin, sticky, or the dotted name of a "
                    "class providing lbproxy.interfaces.IChooser",
                ),
                (
                    'backends = ["127.0.0.2"]\ntrusted-proxy = ["10.0.0.0/8", "x"]\n',
                    2,
                    "trusted-proxy",
                    "must be an address or network like 10.0.0.0/8, not 'x'",
                ),
                (
                    'backends = ["127.0.0.2"]\n\nmax-body = "lots"\n',
                    3,
                    "max-body",
                    "must be a size like 1048576 or 100M, not 'lots'",
                ),
                (
                    'backends = ["127.0.0.2"]\ntls-resumption = "no"\n',
                    2,
                    "tls-resumption",
                    "must be on or off, not 'no'",
                ),
                (
                    'backends = ["127.0.0.2"]\nsend-timeout = 0\n',
                    2,
                    "send-timeout",
                    "must be greater than 0, not '0'",
                ),
                (
                    'backends = ["127.0.0.2"]\nadmin = "tcp:9901"\n',
                    2,
                    "admin",
                    "'tcp:9901' listens beyond loopback; give --admin-token-file (a file "
                    "holding the token clients must send as Authorization: Bearer TOKEN), "
                    "or listen on loopback (e.g. tcp:8081:interface=127.0.0.1) or a unix: "
                    "socket",
                ),
                (
                    '[pools.web]\nbackends = ["127.0.0.2"]\ndraining = ["127.0.0.3"]\n',
                    3,
                    "pools.web.draining",
                    "'127.0.0.3' is not one of the pool's backends",
                ),
                (
                    '[pools.web]\nchooser = "random"\n',
                    1,
                    "pools.web",
                    "a pool needs backends (an empty list for none yet)",
                ),
                (
                    '[pools."we b"]\nbackends = []\n',
                    1,
                    "pools.we b",
                    "a pool name is letters, digits, '_', '-' and '.'",
                ),
                (
                    'backends = ["127.0.0.2"]\n[pools.web]\nbackends = []\n',
                    1,
                    "backends",
                    "give backends inside [pools.NAME] tables when the file defines pools",
                ),
            ],
            *_LISTEN,
        )

    def test_listenAtItsLine(self) -> None:
        """
        A listener the file gives that cannot be used is reported at its
        line.
        """
        path, error = self.refused('backends = ["127.0.0.2"]\nlisten = ["tcp:0", "nope:1"]\n')
        self.assertEqual(
            error,
            f"{path}, line 2: listen: cannot use --listen 'nope:1': Unknown endpoint type: 'nope'",
        )

    def test_commandLineErrorNotBlamedOnFile(self) -> None:
        """
        A bad value given on the command line for an option the file also
        sets is the flag's error, not the file's: the file's value was not
        used.
        """
        _, error = self.refused(
            'backends = ["127.0.0.2"]\nretries = 2\n', *_LISTEN, "--retries", "two"
        )
        self.assertEqual(error, "--retries must be a whole number, not 'two'")
        _, error = self.refused(
            'backends = ["127.0.0.2"]\nmax-body = "1M"\n', *_LISTEN, "--max-body", "lots"
        )
        self.assertEqual(error, "--max-body must be a size like 1048576 or 100M, not 'lots'")

    def test_routes(self) -> None:
        """
        A route naming no pool, or an unknown one (the known ones are
        listed), a bad host pattern or path, and a header edit of a header
        lbproxy owns or with a value holding control characters are each
        refused at their line.
        """
        pools = "[pools.web]\nbackends = []\n[pools.api]\nbackends = []\n\n"
        self.assertRefused(
            [
                (
                    pools + '[[routes]]\npool = "web"\n\n[[routes]]\npool = "ap"\n',
                    10,
                    "routes[1].pool",
                    "no pool named 'ap' (pools: web, api)",
                ),
                (
                    '[[routes]]\npool = "web"\n',
                    2,
                    "routes[0].pool",
                    "no pool named 'web' (pools: default)",
                ),
                (pools + '[[routes]]\npath = "/a"\n', 6, "routes[0]", "a route needs pool = NAME"),
                (
                    pools + '[[routes]]\nhost = ["ok.example", "a b"]\npool = "web"\n',
                    7,
                    "routes[0].host",
                    "host 'a b' must be a host name like example.com or *.example.com",
                ),
                (
                    pools + '[[routes]]\nhost = "*"\npool = "web"\n',
                    7,
                    "routes[0].host",
                    "host '*' must be a host name like example.com or *.example.com",
                ),
                (
                    pools + '[[routes]]\npath = "api"\npool = "web"\n',
                    7,
                    "routes[0].path",
                    "path 'api' must start with '/'",
                ),
                (
                    pools + '[[routes]]\npath = "/a?b"\npool = "web"\n',
                    7,
                    "routes[0].path",
                    "path '/a?b' must be a plain path, without spaces, '?' or '#'",
                ),
                (
                    pools + '[[routes]]\npool = "web"\n[routes.request-headers]\n'
                    'set = { Content-Length = "5" }\n',
                    8,
                    "routes[0].request-headers",
                    "header 'Content-Length' is lbproxy's own and cannot be edited",
                ),
                (
                    pools + '[[routes]]\npool = "web"\n\n[[routes]]\npool = "api"\n'
                    '[routes.response-headers]\nremove = ["Server", "Connection"]\n',
                    11,
                    "routes[1].response-headers",
                    "header 'Connection' is lbproxy's own and cannot be edited",
                ),
                (
                    pools + '[[routes]]\npool = "web"\n'
                    'request-headers = { remove = ["Transfer-Encoding"] }\n',
                    8,
                    "routes[0].request-headers",
                    "header 'Transfer-Encoding' is lbproxy's own and cannot be edited",
                ),
                (
                    pools + '[[routes]]\npool = "web"\n[routes.request-headers]\n'
                    'set = { X-A = "a\\nb" }\n',
                    8,
                    "routes[0].request-headers",
                    "the value of header 'X-A' has control characters or surrounding spaces",
                ),
                (
                    pools + '[[routes]]\npool = "web"\n[routes.request-headers]\n'
                    'set = { "X A" = "1" }\n',
                    8,
                    "routes[0].request-headers",
                    "'X A' is not a valid header name",
                ),
                ("routes = []\n" + pools, 1, "routes", "must be [[routes]] tables"),
                ("routes = [1]\n" + pools, 1, "routes[0]", "must be a table"),
            ],
            *_LISTEN,
        )

    def test_severalPoolsWithoutRoutes(self) -> None:
        """
        With more than one pool, routes are required: the error is at the
        first pool.
        """
        path, error = self.refused(
            "retries = 1\n\n[pools.web]\nbackends = []\n[pools.api]\nbackends = []\n", *_LISTEN
        )
        self.assertEqual(
            error,
            f"{path}, line 3: pools: with more than one pool, "
            "[[routes]] must say which requests go where",
        )

    def test_noRouteStatus(self) -> None:
        """
        C{no-route-status} is 404 or 421, a whole number, and only given
        with routes.
        """
        routes = '[pools.web]\nbackends = []\n[[routes]]\npool = "web"\n'
        self.assertRefused(
            [
                ("no-route-status = 403\n" + routes, 1, "no-route-status", "must be 404 or 421"),
                ("no-route-status = 421.0\n" + routes, 1, "no-route-status", "must be 404 or 421"),
                ('no-route-status = "421"\n' + routes, 1, "no-route-status", "must be 404 or 421"),
                ("no-route-status = true\n" + routes, 1, "no-route-status", "must be 404 or 421"),
                (
                    'backends = ["127.0.0.2"]\nno-route-status = 421\n',
                    2,
                    "no-route-status",
                    "only means something with [[routes]]",
                ),
            ],
            *_LISTEN,
        )

    def test_syntaxError(self) -> None:
        """
        A file that is not TOML is refused at the line of the mistake.
        """
        path, error = self.refused('backends = ["127.0.0.2"]\n\nretries 2\n', *_LISTEN)
        prefix = f"{path}, line 3: invalid TOML: "
        self.assertTrue(error.startswith(prefix), error)
        self.assertIn("(column ", error)

    def test_duplicateKey(self) -> None:
        """
        A key given twice is a TOML error at the second.
        """
        path, error = self.refused('backends = ["127.0.0.2"]\nretries = 1\nretries = 2\n', *_LISTEN)
        self.assertTrue(error.startswith(f"{path}, line 3: invalid TOML: "), error)

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is named, with the reason.
        """
        path = self.mktemp()
        with self.assertRaises(ConfigFileError) as raised:
            Options().parseArguments(["--config", path, *_LISTEN])
        self.assertEqual(
            str(raised.exception), f"cannot read --config {path!r}: No such file or directory"
        )

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 text is refused, naming it.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'backends = ["\xff"]\n')
        with self.assertRaises(ConfigFileError) as raised:
            Options().parseArguments(["--config", path, *_LISTEN])
        self.assertEqual(str(raised.exception), f"{path}: not UTF-8 text")

    def test_exitStatus(self) -> None:
        """
        From C{twistd lbproxy}, an invalid file is one line on standard
        error, C{lbproxy: error: } and the message, and exit status 2.
        """
        path = self.writeConfig('backends = ["127.0.0.2"]\nretires = 2\n')
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as raised:
            Options().parseOptions(["--config", path, *_LISTEN])
        self.assertEqual(raised.exception.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            f"lbproxy: error: {path}, line 2: retires: unknown option (did you mean 'retries'?)\n",
        )


class LocateTests(SynchronousTestCase):
    """
    L{ConfigSource.locate} finds the line of a key, however the TOML
    states it.
    """

    def source(self, text: str) -> ConfigSource:
        return parseConfigText(text, "lb.toml")

    def test_plainTables(self) -> None:
        """
        Top-level keys, table headers and the keys in a table are found at
        their lines, with spaces, comments and quoted names allowed.
        """
        source = self.source(
            "# comment\n"
            'listen = ["tcp:0"]\n'
            "\n"
            "[pools.web]   # the web pool\n"
            'backends = ["127.0.0.2"]\n'
            '  chooser   =   "random"\n'
            '[ pools . "api.v1" ]\n'
            "backends = []\n"
            "'timeout' = 5\n"
        )
        self.assertEqual(source.locate(("listen",)), 2)
        self.assertEqual(source.locate(("pools", "web")), 4)
        self.assertEqual(source.locate(("pools", "web", "backends")), 5)
        self.assertEqual(source.locate(("pools", "web", "chooser")), 6)
        self.assertEqual(source.locate(("pools", "api.v1")), 7)
        self.assertEqual(source.locate(("pools", "api.v1", "backends")), 8)
        self.assertEqual(source.locate(("pools", "api.v1", "timeout")), 9)

    def test_absentKey(self) -> None:
        """
        A key the file does not give has no line, unless a table around it
        does: then the table's line is the nearest.
        """
        source = self.source('listen = ["tcp:0"]\n[pools.web]\nbackends = []\n')
        self.assertIsNone(source.locate(("retries",)))
        self.assertEqual(source.locate(("pools", "web", "retries")), 2)

    def test_tableOfSubTables(self) -> None:
        """
        A table given only through its sub-tables (C{pools}, by
        C{[pools.web]}) is at the first of them.
        """
        source = self.source("retries = 1\n\n[pools.web]\nbackends = []\n[pools.api]\n")
        self.assertEqual(source.locate(("pools",)), 3)

    def test_dottedKeys(self) -> None:
        """
        Dotted keys, at the top level or in a table, are found by their
        whole path.
        """
        source = self.source(
            "pools.web.backends = []\n"
            "pools . web . retries = 2\n"
            "[routes]\n"
            "api.pool = 'api'\n"
            'api."path" = "/api"\n'
        )
        self.assertEqual(source.locate(("pools", "web", "backends")), 1)
        self.assertEqual(source.locate(("pools", "web", "retries")), 2)
        self.assertEqual(source.locate(("routes", "api", "pool")), 4)
        self.assertEqual(source.locate(("routes", "api", "path")), 5)

    def test_arrayOfTables(self) -> None:
        """
        Each C{[[routes]]} element is found by its index, and so are its
        keys and sub-tables (C{[routes.request-headers]} belongs to the
        element above it).
        """
        source = self.source(
            "[[routes]]\n"  # 1
            'pool = "api"\n'
            "[routes.request-headers]\n"  # 3
            'set = { X-Env = "production" }\n'
            "[routes.response-headers]\n"  # 5
            'remove = ["Server"]\n'
            "\n"
            "[[routes]]\n"  # 8
            'host = "example.com"\n'
            "[routes.request-headers]\n"  # 10
            'remove = ["X-Debug"]\n'
            "[[ routes ]]  # last\n"  # 12
            'pool = "web"\n'
        )
        self.assertEqual(source.locate(("routes", 0)), 1)
        self.assertEqual(source.locate(("routes", 0, "pool")), 2)
        self.assertEqual(source.locate(("routes", 0, "request-headers")), 3)
        self.assertEqual(source.locate(("routes", 0, "request-headers", "set")), 4)
        self.assertEqual(source.locate(("routes", 0, "response-headers", "remove")), 6)
        self.assertEqual(source.locate(("routes", 1)), 8)
        self.assertEqual(source.locate(("routes", 1, "host")), 9)
        self.assertEqual(source.locate(("routes", 1, "request-headers")), 10)
        self.assertEqual(source.locate(("routes", 1, "request-headers", "remove")), 11)
        self.assertEqual(source.locate(("routes", 2)), 12)
        self.assertEqual(source.locate(("routes", 2, "pool")), 13)
        self.assertEqual(source.locate(("routes",)), 1)

    def test_inlineTables(self) -> None:
        """
        A key inside an inline table or an inline array of tables is at the
        line of the key that holds it.
        """
        source = self.source(
            'listen = ["tcp:0"]\n'
            "pools = { web = { backends = [], retries = 2 } }\n"
            "routes = [\n"
            '  { pool = "web" },\n'
            "]\n"
            "[x]\n"
            'set = { X-Env = "production" }\n'
        )
        self.assertEqual(source.locate(("pools", "web", "retries")), 2)
        self.assertEqual(source.locate(("routes", 0, "pool")), 3)
        self.assertEqual(source.locate(("x", "set", "X-Env")), 7)

    def test_multiLineArrays(self) -> None:
        """
        The items of an array over several lines are not taken for keys or
        tables.
        """
        source = self.source('listen = [\n  "tcp:0",\n  "tcp:1",\n]\nretries = 2\n')
        self.assertEqual(source.locate(("listen",)), 1)
        self.assertEqual(source.locate(("retries",)), 5)

    def test_errorNamesKeyPath(self) -> None:
        """
        L{ConfigSource.error} writes the key's path with dots, array
        indexes in brackets, after the file and line; without a line, the
        file alone.
        """
        source = self.source('[[routes]]\npool = "web"\n')
        self.assertEqual(
            str(source.error(("routes", 0, "pool"), "no such pool")),
            "lb.toml, line 2: routes[0].pool: no such pool",
        )
        self.assertEqual(
            str(source.error(("retries",), "bad")),
            "lb.toml: retries: bad",
        )
        self.assertEqual(str(source.error((), "empty")), "lb.toml: empty")


class ValidFileTests(ConfigFileTestCase):
    """
    What a valid file configures.
    """

    def test_singlePoolWithoutPools(self) -> None:
        """
        A file without C{[pools.*]} describes one pool called C{default},
        as the flags do, and every request goes to it.
        """
        config = self.config(
            'listen = ["tcp:0"]\nbackends = ["127.0.0.2", "127.0.0.3:8080=3"]\n'
            'chooser = "round-robin"\ntimeout = 2.5\n'
        )
        balancer = config.balancerConfig()
        [pool] = balancer.pools
        self.assertEqual(pool.name, DEFAULT_POOL)
        self.assertEqual(
            [(b.authority, b.weight) for b in pool.backends],
            [("127.0.0.2:80", 1), ("127.0.0.3:8080", 3)],
        )
        self.assertIsInstance(pool.chooser, RoundRobinChooser)
        self.assertEqual(pool.proxy.responseTimeout, 2.5)
        self.assertEqual(balancer.routes.rules, (RouteRule(pool=DEFAULT_POOL),))

    def test_singlePoolWithoutRoutes(self) -> None:
        """
        One C{[pools.NAME]} table without routes takes every request.
        """
        config = self.config('[pools.web]\nbackends = ["127.0.0.2"]\n', *_LISTEN)
        self.assertEqual([p.name for p in config.pools], ["web"])
        self.assertIsNone(config.routes)
        self.assertEqual(config.balancerConfig().routes.rules, (RouteRule(pool="web"),))

    def test_topLevelPoolOptionsAreDefaults(self) -> None:
        """
        Pool options at the top level are every pool's; a pool's own
        override them for that pool only.
        """
        config = self.config(
            "retries = 5\n"
            "timeout = 7\n"
            'health-path = "/up"\n'
            "eject-on-5xx = true\n"
            "\n"
            "[pools.web]\n"
            'backends = ["127.0.0.2"]\n'
            "\n"
            "[pools.api]\n"
            'backends = ["127.0.0.3"]\n'
            "retries = 0\n"
            'chooser = "round-robin"\n'
            'health-path = "/healthz"\n'
            "eject-on-5xx = false\n"
            "connect-timeout = 1\n"
            "\n"
            "[[routes]]\n"
            'path = "/api"\n'
            'pool = "api"\n'
            "[[routes]]\n"
            'pool = "web"\n',
            *_LISTEN,
        )
        web, api = config.pools
        self.assertEqual((web.name, api.name), ("web", "api"))
        self.assertEqual(web.proxy.retries, 5)
        self.assertEqual(api.proxy.retries, 0)
        self.assertEqual(web.proxy.responseTimeout, 7)
        self.assertEqual(api.proxy.responseTimeout, 7)
        self.assertEqual(web.health.path, b"/up")
        self.assertEqual(api.health.path, b"/healthz")
        self.assertTrue(web.ejection.on5xx)
        self.assertFalse(api.ejection.on5xx)
        self.assertEqual(web.upstream.connectTimeout, 5)
        self.assertEqual(api.upstream.connectTimeout, 1)
        self.assertIsInstance(web.chooser, RandomChooser)
        self.assertIsInstance(api.chooser, RoundRobinChooser)

    def test_flagsWin(self) -> None:
        """
        A flag given on the command line wins over the file at the top
        level and in every pool; the file still sets what the flags do not.
        """
        config = self.config(
            'listen = ["tcp:1", "tcp:2"]\n'
            "retries = 5\n"
            'max-body = "1M"\n'
            "timeout = 9\n"
            "[pools.web]\n"
            'backends = ["127.0.0.2"]\n'
            "[pools.api]\n"
            'backends = ["127.0.0.3"]\n'
            "retries = 3\n"
            "[[routes]]\n"
            'pool = "web"\n',
            "--retries",
            "1",
            "--max-body",
            "2K",
            "--listen",
            "tcp:0",
        )
        self.assertEqual([p.proxy.retries for p in config.pools], [1, 1])
        self.assertEqual([p.proxy.responseTimeout for p in config.pools], [9, 9])
        self.assertEqual(config.limits.maxBodySize, 2048)
        self.assertEqual([s.description for s in config.listens], ["tcp:0"])

    def test_flagBackendsWin(self) -> None:
        """
        C{--backends} on the command line gives the backends of every pool,
        and a pool may then leave them out.
        """
        config = self.config(
            "[pools.web]\n"
            'backends = ["127.0.0.2"]\n'
            "[pools.api]\n"
            'chooser = "round-robin"\n'
            "[[routes]]\n"
            'pool = "web"\n',
            *_LISTEN,
            "-b",
            "127.0.0.9",
        )
        self.assertEqual(
            [[b.authority for b in p.backends] for p in config.pools],
            [["127.0.0.9:80"], ["127.0.0.9:80"]],
        )

    def test_draining(self) -> None:
        """
        The backends a pool lists in C{draining} start drained, named by
        C{host:port}, by URL or as the pool's C{backends} names them.
        """
        config = self.config(
            "[pools.web]\n"
            'backends = ["127.0.0.2", "127.0.0.3:8080=2", "https://example.com", "127.0.0.5"]\n'
            'draining = ["127.0.0.3:8080", "https://example.com:443", "127.0.0.5"]\n',
            *_LISTEN,
        )
        [pool] = config.pools
        self.assertEqual(
            [(b.authority, b.draining) for b in pool.backends],
            [
                ("127.0.0.2:80", False),
                ("127.0.0.3:8080", True),
                ("example.com:443", True),
                ("127.0.0.5:80", True),
            ],
        )

    def test_emptyBackends(self) -> None:
        """
        A pool may start with no backends (they are added through the admin
        API).
        """
        config = self.config(
            '[pools.web]\nbackends = ["127.0.0.2"]\n[pools.api]\nbackends = []\n'
            '[[routes]]\npath = "/api"\npool = "api"\n[[routes]]\npool = "web"\n',
            *_LISTEN,
        )
        self.assertEqual([len(p.backends) for p in config.pools], [1, 0])

    def test_lists(self) -> None:
        """
        Repeatable flags are lists in the file (one string is a list of
        one), checked and converted as the flags are.
        """
        config = self.config(
            'listen = ["tcp:0", "tcp:0:interface=127.0.0.1"]\n'
            'trusted-proxy = ["10.0.0.0/8", "192.0.2.1"]\n'
            'allow-host = ["LocalHost", "example.com"]\n'
            'backends = ["127.0.0.2"]\n'
        )
        self.assertEqual(
            [s.description for s in config.listens], ["tcp:0", "tcp:0:interface=127.0.0.1"]
        )
        self.assertEqual(
            [str(n) for n in config.proxy.trustedProxies], ["10.0.0.0/8", "192.0.2.1/32"]
        )
        self.assertEqual(config.proxy.allowedHosts, frozenset({"localhost", "example.com"}))
        config = self.config('listen = "tcp:0"\nallow-host = "example.com"\nbackends = ["h"]\n')
        self.assertEqual([s.description for s in config.listens], ["tcp:0"])
        self.assertEqual(config.proxy.allowedHosts, frozenset({"example.com"}))

    def test_listFlagsWin(self) -> None:
        """
        A repeatable flag given on the command line replaces the file's
        whole list.
        """
        config = self.config(
            'listen = ["tcp:0"]\nallow-host = ["a.example", "b.example"]\nbackends = ["h"]\n',
            "--allow-host",
            "c.example",
        )
        self.assertEqual(config.proxy.allowedHosts, frozenset({"c.example"}))

    def test_tlsResumption(self) -> None:
        """
        C{tls-resumption} is the file's key for C{--tls-resumption}; the
        flag wins over it.
        """
        file = 'listen = ["tcp:0"]\nbackends = ["h"]\ntls-resumption = "off"\n'
        self.assertFalse(self.config(file).tls.resumption)
        self.assertTrue(self.config(file, "--tls-resumption", "on").tls.resumption)
        self.assertTrue(self.config('listen = ["tcp:0"]\nbackends = ["h"]\n').tls.resumption)

    def test_admin(self) -> None:
        """
        The file may give the admin API's endpoint and token file; with a
        token, the endpoint may listen beyond loopback.
        """
        token = self.mktemp()
        with open(token, "w") as f:
            f.write("s3cret\n")
        config = self.config(
            f'backends = ["h"]\nadmin = "tcp:9901"\nadmin-token-file = {token!r}\n', *_LISTEN
        )
        self.assertEqual((config.admin, config.adminToken), ("tcp:9901", b"s3cret"))

    def test_valuesAsTheFlagsGiveThem(self) -> None:
        """
        Numbers, sizes as strings, and on/off flags as booleans reach the
        configuration as their flags would.
        """
        config = self.config(
            'listen = ["tcp:0"]\nbackends = ["h"]\nmax-body = "1K"\nmax-header-fields = 20\n'
            "header-timeout = 2.5\nadhoc = true\nslow-start = 10\n"
        )
        self.assertEqual(config.limits.maxBodySize, 1024)
        self.assertEqual(config.limits.maxFields, 20)
        self.assertEqual(config.limits.headerTimeout, 2.5)
        self.assertTrue(config.adhoc)
        self.assertEqual(config.slowStart, 10)
        config = self.config('listen = ["tcp:0"]\nbackends = ["h"]\nadhoc = false\n')
        self.assertFalse(config.adhoc)

    def test_routes(self) -> None:
        """
        Routes are read in file order with their hosts (lower-cased), path
        prefix, prefix stripping and header edits; C{no-route-status}
        gives the answer for requests no route takes.
        """
        config = self.config(
            "no-route-status = 421\n"
            "[pools.web]\nbackends = []\n[pools.api]\nbackends = []\n"
            "[[routes]]\n"
            'host = ["API.example.com", "*.api.example.com"]\n'
            'path = "/v1/"\n'
            "strip-prefix = true\n"
            'pool = "api"\n'
            "[routes.request-headers]\n"
            'set = { X-Env = "production" }\n'
            'remove = ["X-Debug"]\n'
            "[routes.response-headers]\n"
            'remove = ["Server"]\n'
            "[[routes]]\n"
            'host = "example.com"\n'
            'pool = "web"\n',
            *_LISTEN,
        )
        assert config.routes is not None
        self.assertEqual(config.routes.noRouteStatus, 421)
        self.assertEqual(
            config.routes.rules,
            (
                RouteRule(
                    pool="api",
                    hosts=("api.example.com", "*.api.example.com"),
                    pathPrefix=b"/v1",
                    stripPrefix=True,
                    requestHeaders=HeaderEdits(
                        set=((b"X-Env", b"production"),), remove=frozenset({b"x-debug"})
                    ),
                    responseHeaders=HeaderEdits(remove=frozenset({b"server"})),
                ),
                RouteRule(pool="web", hosts=("example.com",)),
            ),
        )

    def test_routesToTheDefaultPool(self) -> None:
        """
        Without pools, routes may send requests to the one pool, called
        C{default}; the rest get C{no-route-status}, 404 unless given.
        """
        config = self.config(
            'backends = ["h"]\n[[routes]]\nhost = "localhost"\npool = "default"\n', *_LISTEN
        )
        assert config.routes is not None
        self.assertEqual(config.routes.noRouteStatus, 404)
        self.assertEqual(config.routes.rules, (RouteRule(pool="default", hosts=("localhost",)),))

    def test_json(self) -> None:
        """
        A configuration given as JSON (as the admin API may be sent) is
        read as a TOML file would be.
        """
        source = parseConfigText(
            '{"pools": {"web": {"backends": ["127.0.0.2"], "retries": 0}},'
            ' "routes": [{"pool": "web", "path": "/x"}]}',
            "posted",
            "json",
        )
        options = Options()
        options.parseArguments(list(_LISTEN), source)
        assert options.config is not None
        [pool] = options.config.pools
        self.assertEqual((pool.name, pool.proxy.retries), ("web", 0))
        assert options.config.routes is not None
        self.assertEqual(options.config.routes.rules, (RouteRule(pool="web", pathPrefix=b"/x"),))

    def test_jsonRefused(self) -> None:
        """
        Text that is not a JSON object is refused.
        """
        for text, message in [
            ("{", "posted: not valid JSON ("),
            ("[1]", "posted: a configuration is a JSON object"),
        ]:
            with self.assertRaises(ConfigFileError) as raised:
                parseConfigText(text, "posted", "json")
            self.assertTrue(str(raised.exception).startswith(message), str(raised.exception))

    def test_exampleFile(self) -> None:
        """
        docs/examples/lbproxy.toml, when the repository is at hand, is a
        valid file (its listener and admin endpoint replaced).
        """
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "docs", "examples", "lbproxy.toml")
        if not os.path.exists(path):
            raise self.skipTest("docs/examples/lbproxy.toml is not installed")
        options = Options()
        options.parseArguments(["--config", path, *_LISTEN, "--admin", "tcp:0:interface=127.0.0.1"])
        assert options.config is not None
        self.assertEqual([p.name for p in options.config.pools], ["web"])


class GivenOptionsTests(SynchronousTestCase):
    """
    L{givenOptions} names the options a command line gives, which the file
    does not override.
    """

    def test_names(self) -> None:
        """
        Long and short flags, C{--name=value}, on/off flags and
        abbreviations are named by their long names.
        """
        self.assertEqual(
            givenOptions(
                Options(),
                [
                    "-b",
                    "h",
                    "--trusted-proxy",
                    "10.0.0.1",
                    "--listen=tcp:0",
                    "--adhoc",
                    "--max-bo",
                    "1K",
                    "--config",
                    "lb.toml",
                ],
            ),
            frozenset({"backends", "trusted-proxy", "listen", "adhoc", "max-body", "config"}),
        )

    def test_unparsable(self) -> None:
        """
        A command line that does not parse names nothing (parsing it
        reports the error).
        """
        self.assertEqual(givenOptions(Options(), ["--no-such-flag"]), frozenset())
