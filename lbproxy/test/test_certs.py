"""
Tests for L{lbproxy.certs}.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import os
import socket
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import certs

_NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
_HasPublicKey = x509.Certificate | PrivateKeyTypes
_FILES = ("ca.crt", "ca.key", "loadbalancer.crt", "loadbalancer.key")


def _runMain(argv: list[str]) -> tuple[int, str, str]:
    """
    Run L{certs.main} with C{argv}, capturing what it prints.

    @return: the exit status, the standard output and the standard error.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = certs.main(argv)
    return status, out.getvalue(), err.getvalue()


def _spki(keyOrCertificate: _HasPublicKey) -> bytes:
    """
    The DER SubjectPublicKeyInfo of a private key or a certificate.
    """
    return keyOrCertificate.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _mode(path: str) -> int:
    """
    The permission bits of C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


class DefaultHostnamesTests(SynchronousTestCase):
    """
    Tests for L{certs.defaultHostnames}.
    """

    def test_loopbackAndHostName(self) -> None:
        """
        The default names are localhost, both loopback addresses and this
        machine's host name, each once.
        """
        names = certs.defaultHostnames()
        self.assertEqual(names[:3], ["localhost", "127.0.0.1", "::1"])
        self.assertIn(socket.gethostname(), names)
        self.assertEqual(len(names), len(set(names)))


class CertificateAuthorityTests(SynchronousTestCase):
    """
    Tests for L{certs.makeCertificateAuthority}.
    """

    def test_caExtensions(self) -> None:
        """
        The CA certificate is self-signed, has a critical
        C{BasicConstraints(ca=True)} and may sign certificates and CRLs.
        """
        key, cert = certs.makeCertificateAuthority("Test CA")
        self.assertEqual(cert.subject, cert.issuer)
        cert.verify_directly_issued_by(cert)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertTrue(usage.crl_sign)
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(
            cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value,
            "Test CA",
        )
        self.assertEqual(_spki(key), _spki(cert))

    def test_validForTenYears(self) -> None:
        """
        The CA is valid from a few minutes before it is made for about ten
        years.
        """
        _, cert = certs.makeCertificateAuthority(now=_NOW)
        self.assertEqual(cert.not_valid_before_utc, _NOW - datetime.timedelta(minutes=5))
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(lifetime.days // 365, 10)


class ServerCertificateTests(SynchronousTestCase):
    """
    Tests for L{certs.makeServerCertificate} and L{certs.makeSelfSigned}.
    """

    def setUp(self) -> None:
        self.caKey, self.caCert = certs.makeCertificateAuthority()

    def test_alternativeNames(self) -> None:
        """
        Host names become DNS names and IP literals become IP addresses in
        the subjectAltName, each once.
        """
        _, cert = certs.makeServerCertificate(
            self.caKey, self.caCert, ["localhost", "127.0.0.1", "::1", "localhost"]
        )
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            names.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )

    def test_internationalName(self) -> None:
        """
        A non-ASCII host name is IDNA-encoded.
        """
        _, cert = certs.makeServerCertificate(self.caKey, self.caCert, ["bücher.test"])
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["xn--bcher-kva.test"])

    def test_noHostnames(self) -> None:
        """
        A server certificate needs at least one non-empty name.
        """
        self.assertRaises(ValueError, certs.makeServerCertificate, self.caKey, self.caCert, [])
        self.assertRaises(ValueError, certs.makeServerCertificate, self.caKey, self.caCert, [" "])
        self.assertRaises(ValueError, certs.makeSelfSigned, [])

    def test_serverExtensions(self) -> None:
        """
        The server certificate is signed by the CA, is not a CA, is for
        server authentication and identifies its key and the CA's.
        """
        _, cert = certs.makeServerCertificate(self.caKey, self.caCert, ["localhost"])
        cert.verify_directly_issued_by(self.caCert)
        extensions = cert.extensions
        constraints = extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
        self.assertEqual(
            list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
            [ExtendedKeyUsageOID.SERVER_AUTH],
        )
        caKeyId = self.caCert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
        authority = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        self.assertEqual(authority.value.key_identifier, caKeyId)
        extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    def test_validity(self) -> None:
        """
        A server certificate is valid for 825 days from a few minutes before
        it is made.
        """
        _, cert = certs.makeServerCertificate(self.caKey, self.caCert, ["localhost"], now=_NOW)
        self.assertEqual(cert.not_valid_before_utc, _NOW - datetime.timedelta(minutes=5))
        self.assertEqual(
            cert.not_valid_after_utc - cert.not_valid_before_utc,
            datetime.timedelta(days=825),
        )

    def test_verifiesStrictly(self) -> None:
        """
        cryptography's RFC 5280 web PKI verifier accepts the server
        certificate for its DNS name and its IP address, given the CA.
        """
        _, cert = certs.makeServerCertificate(self.caKey, self.caCert, ["localhost", "127.0.0.1"])
        subjects: list[x509.DNSName | x509.IPAddress] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        for subject in subjects:
            verifier = PolicyBuilder().store(Store([self.caCert])).build_server_verifier(subject)
            chain = verifier.verify(cert, [])
            self.assertEqual(chain[-1], self.caCert)

    def test_selfSigned(self) -> None:
        """
        A self-signed server certificate is its own issuer and covers the
        names it is made for.
        """
        _, cert = certs.makeSelfSigned(["localhost", "127.0.0.1"])
        self.assertEqual(cert.subject, cert.issuer)
        cert.verify_directly_issued_by(cert)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])


class FingerprintTests(SynchronousTestCase):
    """
    Tests for L{certs.fingerprintSHA256}.
    """

    def test_format(self) -> None:
        """
        The fingerprint is the SHA-256 of the DER certificate as 32
        colon-separated upper-case hex bytes, as openssl prints it, whether
        the certificate is given as an object, PEM bytes or PEM text.
        """
        _, cert = certs.makeSelfSigned(["localhost"])
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER))
        expected = ":".join(f"{b:02X}" for b in digest.digest())
        pem = certs.certificatePEM(cert)
        self.assertEqual(certs.fingerprintSHA256(cert), expected)
        self.assertEqual(certs.fingerprintSHA256(pem), expected)
        self.assertEqual(certs.fingerprintSHA256(pem.decode("ascii")), expected)
        self.assertRegex(expected, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


class MainTests(SynchronousTestCase):
    """
    Tests for L{certs.main}, the command line.
    """

    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "certs")

    def paths(self) -> list[str]:
        """
        The four files C{main} writes into C{self.directory}.
        """
        return [os.path.join(self.directory, name) for name in _FILES]

    def test_writesFourFiles(self) -> None:
        """
        C{main} creates the directory and writes the CA and server
        certificates and keys as PEM, the server certificate signed by the
        CA, and prints what it wrote and how to try it with curl.
        """
        status, out, err = _runMain([self.directory])
        self.assertEqual((status, err), (0, ""))
        caCrt, caKey, serverCrt, serverKey = self.paths()
        for path in self.paths():
            self.assertIn(f"wrote {path}", out)
        self.assertIn(f"curl --cacert {caCrt} https://localhost/", out)
        with open(caCrt, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(serverCrt, "rb") as f:
            server = x509.load_pem_x509_certificate(f.read())
        server.verify_directly_issued_by(ca)
        for path, cert in [(caKey, ca), (serverKey, server)]:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
            self.assertEqual(_spki(key), _spki(cert))
        self.assertIn(certs.fingerprintSHA256(server), out)

    def test_keyFilesPrivate(self) -> None:
        """
        The key files are readable and writable by their owner only.
        """
        _runMain([self.directory])
        caCrt, caKey, _, serverKey = self.paths()
        self.assertEqual(_mode(caKey), 0o600)
        self.assertEqual(_mode(serverKey), 0o600)
        self.assertTrue(_mode(caCrt) & stat.S_IRUSR)

    def test_hostnameOption(self) -> None:
        """
        C{--hostname} adds names to the server certificate.
        """
        _runMain([self.directory, "--hostname", "lb.example", "--hostname", "10.0.0.1"])
        with open(self.paths()[2], "rb") as f:
            server = x509.load_pem_x509_certificate(f.read())
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("lb.example", names.get_values_for_type(x509.DNSName))
        self.assertIn(ipaddress.ip_address("10.0.0.1"), names.get_values_for_type(x509.IPAddress))
        self.assertIn("localhost", names.get_values_for_type(x509.DNSName))

    def test_refusesToOverwrite(self) -> None:
        """
        If one of the files exists, C{main} prints one line naming it and
        C{--force}, exits 1, and writes nothing.
        """
        os.makedirs(self.directory)
        existing = self.paths()[3]
        with open(existing, "wb") as f:
            f.write(b"mine")
        status, out, err = _runMain([self.directory])
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(existing, err)
        self.assertIn("--force", err)
        self.assertEqual(os.listdir(self.directory), ["loadbalancer.key"])
        with open(existing, "rb") as f:
            self.assertEqual(f.read(), b"mine")

    def test_forceOverwrites(self) -> None:
        """
        With C{--force}, C{main} replaces existing files with new ones, and
        a replaced key file is private even if the old one was not.
        """
        _runMain([self.directory])
        _, _, serverCrt, serverKey = self.paths()
        with open(serverCrt, "rb") as f:
            before = f.read()
        os.chmod(serverKey, 0o644)
        status, _, err = _runMain([self.directory, "--force"])
        self.assertEqual((status, err), (0, ""))
        with open(serverCrt, "rb") as f:
            self.assertNotEqual(f.read(), before)
        self.assertEqual(_mode(serverKey), 0o600)

    def test_defaultDirectory(self) -> None:
        """
        Without a directory argument, C{main} writes into C{certs} in the
        current directory.
        """
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(workdir)
        status, out, _ = _runMain([])
        self.assertEqual(status, 0)
        self.assertEqual(sorted(os.listdir("certs")), sorted(_FILES))
        self.assertIn("curl --cacert certs/ca.crt https://localhost/", out)

    def test_runAsModule(self) -> None:
        """
        C{python -m lbproxy.certs DIR} writes the files and exits 0; run
        again it exits 1.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(certs.__file__)))
        environ = dict(os.environ, PYTHONPATH=root)
        command = [sys.executable, "-m", "lbproxy.certs", self.directory]
        first = subprocess.run(command, env=environ, capture_output=True, check=False)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(_FILES))
        second = subprocess.run(command, env=environ, capture_output=True, check=False)
        self.assertEqual(second.returncode, 1)
        self.assertIn(b"--force", second.stderr)
