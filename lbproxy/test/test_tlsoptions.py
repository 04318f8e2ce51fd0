"""
Tests for L{lbproxy.cli.tlsoptions}: the TLS command-line options and their
checking.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import certs
from lbproxy.cli.options import Options
from lbproxy.cli.tlsoptions import TLSOptions, parseHSTS, tlsConfig
from lbproxy.listen import ListenSpec, parseListen
from lbproxy.tls.certificates import CertificateFiles
from lbproxy.tls.client import BackendTLSSettings
from lbproxy.tls.sni import ServerTLSSettings

_TLS = [parseListen("ssl:0")]
_PLAIN = [parseListen("tcp:0")]


class TLSOptionsTests(SynchronousTestCase):
    """
    L{TLSOptions} parsed and turned into configuration by L{tlsConfig}.
    """

    def config(self, args: list[str], listens: list[ListenSpec] = _TLS) -> dict[str, Any]:
        """
        Parse C{args} and return the configuration values.
        """
        options = TLSOptions()
        options.parseOptions(args)
        return tlsConfig(options, listens)

    def assertUsageError(
        self, args: list[str], fragment: str, listens: list[ListenSpec] = _TLS
    ) -> None:
        """
        C{args} are refused with a one-line usage error holding
        C{fragment}.
        """
        error = self.assertRaises(usage.UsageError, self.config, args, listens)
        self.assertEqual(len(str(error).splitlines()), 1, str(error))
        self.assertIn(fragment, str(error))

    def writeCombined(self, name: str, hostnames: list[str]) -> str:
        """
        Write a key and a self-signed certificate into one PEM file.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert = certs.makeSelfSigned(hostnames)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(certs.privateKeyPEM(key) + certs.certificatePEM(cert))
        return path

    def test_defaults(self) -> None:
        """
        By default: TLS 1.2 minimum, no SNI certificates, no HSTS, no
        redirect, backends verified against the platform trust.
        """
        self.assertEqual(
            self.config([]),
            {
                "tls": ServerTLSSettings(),
                "backendTLS": BackendTLSSettings(),
                "hsts": None,
                "redirectHTTP": None,
            },
        )

    def test_tlsMin(self) -> None:
        """
        C{--tls-min} takes 1.2 or 1.3, nothing else.
        """
        self.assertEqual(self.config(["--tls-min", "1.3"])["tls"].minimumVersion, "1.3")
        for value in ["1.1", "1.0", "tls1.3", ""]:
            self.assertUsageError(["--tls-min", value], "--tls-min")

    def test_tlsResumption(self) -> None:
        """
        C{--tls-resumption} is on by default and takes on or off (in any
        case); anything else is a one-line usage error.
        """
        self.assertTrue(self.config([])["tls"].resumption)
        self.assertFalse(self.config(["--tls-resumption", "off"])["tls"].resumption)
        self.assertFalse(self.config(["--tls-resumption", "OFF"])["tls"].resumption)
        self.assertTrue(self.config(["--tls-resumption", "on"])["tls"].resumption)
        for value in ["no", "false", "0", ""]:
            self.assertUsageError(["--tls-resumption", value], "--tls-resumption must be on or off")

    def test_certificates(self) -> None:
        """
        C{--cert} and C{--cert-dir} repeat; each file is read at once.
        """
        a = self.writeCombined("a.pem", ["a.test"])
        b = self.writeCombined("b.pem", ["b.test"])
        c = os.path.dirname(self.writeCombined("c.pem", ["c.test"]))
        config = self.config(["--cert", a, "--cert", f"{b}:{b}", "--cert-dir", c])
        self.assertEqual(config["tls"].certificates, (CertificateFiles(a), CertificateFiles(b, b)))
        self.assertEqual(config["tls"].directories, (c,))

    def test_badCertificates(self) -> None:
        """
        A missing or duplicate certificate, a bad C{--cert} value, or SNI
        certificates without a TLS listener are usage errors.
        """
        a = self.writeCombined("a.pem", ["a.test"])
        again = self.writeCombined("again.pem", ["a.test"])
        self.assertUsageError(["--cert", a + ".missing"], "No such file")
        self.assertUsageError(["--cert", a, "--cert", again], "'a.test'")
        self.assertUsageError(["--cert", "a:b:c"], "KEY:CERT")
        self.assertUsageError(["--cert-dir", a + ".missing"], "certificate directory")
        self.assertUsageError(["--cert", a], "ssl: listener", listens=_PLAIN)

    def test_hsts(self) -> None:
        """
        C{--hsts} takes seconds or a whole header value; others are usage
        errors.
        """
        self.assertEqual(self.config(["--hsts", "31536000"])["hsts"], b"max-age=31536000")
        self.assertUsageError(["--hsts", "forever"], "--hsts")

    def test_parseHSTS(self) -> None:
        """
        A value must start with C{max-age} and may add
        C{includeSubDomains} and C{preload}, once each.
        """
        self.assertEqual(
            parseHSTS("max-age=63072000;includeSubDomains; preload"),
            b"max-age=63072000; includeSubDomains; preload",
        )
        for bad in [
            "",
            "-1",
            "includeSubDomains",
            "max-age=1; max-age=2",
            "max-age=1; includeSubDomains; includeSubDomains",
            "max-age=1; other",
            "max-age=1\r\nX-Evil: 1",
        ]:
            self.assertRaises(ValueError, parseHSTS, bad)

    def test_redirect(self) -> None:
        """
        C{--redirect-http} takes a plain endpoint and needs a TLS listener
        to send clients to.
        """
        spec = self.config(["--redirect-http", "tcp:8080"])["redirectHTTP"]
        self.assertEqual(spec, parseListen("tcp:8080"))
        self.assertUsageError(["--redirect-http", "ssl:80"], "plain listener")
        self.assertUsageError(["--redirect-http", "bogus:80"], "--redirect-http")
        self.assertUsageError(["--redirect-http", "tcp:80"], "ssl: listener", listens=_PLAIN)

    def test_backendVerification(self) -> None:
        """
        C{--backend-ca} must hold certificates; C{--backend-insecure}
        turns verification off and cannot be combined with it.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        _, ca = certs.makeCertificateAuthority()
        caFile = os.path.join(directory, "ca.crt")
        with open(caFile, "wb") as f:
            f.write(certs.certificatePEM(ca))
        self.assertEqual(
            self.config(["--backend-ca", caFile])["backendTLS"], BackendTLSSettings(caFile=caFile)
        )
        self.assertEqual(
            self.config(["--backend-insecure"])["backendTLS"], BackendTLSSettings(insecure=True)
        )
        self.assertUsageError(["--backend-ca", caFile, "--backend-insecure"], "contradict")
        self.assertUsageError(["--backend-ca", caFile + ".missing"], "--backend-ca")

    def test_inTapOptions(self) -> None:
        """
        C{twistd lbproxy} accepts the TLS options and puts them in its
        configuration.
        """
        options = Options()
        options.parseOptions(
            [
                *("--backends", "https://127.0.0.2", "--adhoc", "--tls-min", "1.3"),
                *("--tls-resumption", "off", "--hsts", "60"),
            ]
        )
        assert options.config is not None
        self.assertEqual(options.config.tls.minimumVersion, "1.3")
        self.assertFalse(options.config.tls.resumption)
        self.assertEqual(options.config.hsts, b"max-age=60")
        self.assertEqual(options.config.backends[0].scheme, "https")
