# -*- test-case-name: lbproxy.test.test_tls,lbproxy.test.test_backendtls -*-
"""
Server certificates: where they come from, reading them and checking them.

A L{CertificateSource} loads a L{ServerCertificate} (a private key, its
certificate and the intermediates sent after it) and can be asked again on
every reload: L{CertificateFiles} re-reads PEM files (C{--cert},
C{--cert-dir}, an C{ssl:} listener's C{privateKey}/C{certKey}/
C{extraCertChain}), and L{adhocCertificate} makes one in memory for
C{--adhoc} that reloading keeps.

Every problem with a file is a L{TLSConfigError} whose message is one line
naming the file and what is wrong with it (missing, unreadable, no PEM
key or certificate, an encrypted key, a key of a kind that cannot sign,
a key that does not match its certificate), so that it can be shown to
an operator as it is, at start-up or on a reload.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from lbproxy.certs import fingerprintSHA256, makeSelfSigned

__all__ = [
    "CertificateFiles",
    "CertificateSource",
    "ServerCertificate",
    "TLSConfigError",
    "adhocCertificate",
    "certificateDirectory",
    "parseCertOption",
    "readCertificates",
]

# The kinds of private key that can sign a TLS handshake (and that pyOpenSSL
# can use).
_SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_SIGNING_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class TLSConfigError(Exception):
    """
    A TLS key, certificate or chain file cannot be used; the message is one
    line that names the file and says what is wrong with it.
    """


@attrs.frozen
class ServerCertificate:
    """
    A server's private key and certificate chain, loaded and checked.

    @ivar key: the private key.
    @ivar certificate: the leaf certificate, matching C{key}.
    @ivar chain: intermediate certificates sent after the leaf.
    @ivar origin: where it came from, for messages (a file name).
    """

    key: _SigningKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    origin: str = "memory"

    @property
    def serverNames(self) -> list[str]:
        """
        The DNS names (wildcards included, lower case) of the certificate's
        C{subjectAltName}, or its common name if it has none: the server
        names it is chosen for by SNI.
        """
        try:
            san = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            names = [
                str(attribute.value)
                for attribute in self.certificate.subject.get_attributes_for_oid(
                    x509.NameOID.COMMON_NAME
                )
            ]
        else:
            names = san.get_values_for_type(x509.DNSName)
        return list(dict.fromkeys(name.lower().rstrip(".") for name in names))


class CertificateSource(Protocol):
    """
    Something that can (re-)load a L{ServerCertificate}.
    """

    def load(self) -> ServerCertificate:
        """
        Load the certificate now.

        @raise TLSConfigError: if it cannot be used.
        """


@attrs.frozen
class CertificateFiles:
    """
    PEM files holding a server's key and certificate chain.

    @ivar privateKey: the file holding the unencrypted private key.
    @ivar certificate: the file holding the certificate, optionally followed
        by intermediates; L{None} if it is in C{privateKey}.
    @ivar chain: a file of more intermediate certificates, or L{None}.
    """

    privateKey: str
    certificate: str | None = None
    chain: str | None = None

    def load(self) -> ServerCertificate:
        """
        Read and check the files.

        @raise TLSConfigError: if a file is missing, unreadable or holds no
            usable PEM key or certificate, or if the key does not match the
            certificate.
        """
        keyPEM = _readFile(self.privateKey, "private key")
        key = _loadPrivateKey(self.privateKey, keyPEM)
        certPath = self.certificate
        if certPath is None:
            certPath = self.privateKey
            certPEM = keyPEM
        else:
            certPEM = _readFile(certPath, "certificate")
        leaf, *chain = _loadCertificates(certPath, certPEM, "certificate")
        if self.chain is not None:
            chainPEM = _readFile(self.chain, "certificate chain")
            chain += _loadCertificates(self.chain, chainPEM, "certificate chain")
        if _publicKeyBytes(key) != _publicKeyBytes(leaf):
            raise TLSConfigError(
                f"the private key in {self.privateKey!r} does not match the "
                f"certificate in {certPath!r} (subject {leaf.subject.rfc4514_string()})"
            )
        return ServerCertificate(key, leaf, tuple(chain), origin=certPath)


@attrs.frozen
class _Fixed:
    """
    A certificate made in memory: loading it gives it back unchanged.
    """

    certificate: ServerCertificate

    def load(self) -> ServerCertificate:
        return self.certificate


def parseCertOption(value: str) -> CertificateFiles:
    """
    Parse a C{--cert} value: C{PEM} (one file holding the key and the
    certificate chain) or C{KEY:CERT}.  A backslash escapes the next
    character, so C{\\:} is a colon inside a path.

    @raise TLSConfigError: if it is empty or has more than two parts.
    """
    parts = [""]
    characters = iter(value)
    for character in characters:
        if character == "\\":
            parts[-1] += next(characters, "\\")
        elif character == ":":
            parts.append("")
        else:
            parts[-1] += character
    if len(parts) > 2 or not all(parts):
        raise TLSConfigError(
            f"--cert {value!r} must be KEY:CERT or one PEM file holding both (\\: escapes a colon)"
        )
    if len(parts) == 1:
        return CertificateFiles(parts[0])
    return CertificateFiles(parts[0], parts[1])


def certificateDirectory(path: str) -> list[CertificateFiles]:
    """
    The C{*.pem} files in directory C{path}, in name order, each to hold a
    private key and its certificate chain; other files are ignored.

    @raise TLSConfigError: if the directory cannot be listed.
    """
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise TLSConfigError(
            f"cannot read certificate directory {path!r}: {e.strerror or e}"
        ) from e
    return [
        CertificateFiles(os.path.join(path, name))
        for name in names
        if name.endswith(".pem") and os.path.isfile(os.path.join(path, name))
    ]


def readCertificates(path: str, what: str) -> list[x509.Certificate]:
    """
    All certificates in PEM file C{path}, in file order (a CA bundle, a
    chain); other PEM blocks (keys) in it are ignored.

    @param what: what the file should hold, for the error message.

    @raise TLSConfigError: if it cannot be read, holds no certificate or one
        is malformed.
    """
    return _loadCertificates(path, _readFile(path, what), what)


def _readFile(path: str, what: str) -> bytes:
    """
    The contents of C{path}.

    @param what: what the file should hold, for the error message.

    @raise TLSConfigError: if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read TLS {what} file {path!r}: {e.strerror or e}") from e


def _loadPrivateKey(path: str, pem: bytes) -> _SigningKey:
    """
    The unencrypted private key in PEM text C{pem} read from C{path}; other
    PEM blocks (certificates) around it are ignored.

    @raise TLSConfigError: if there is none, it is encrypted, or it is of a
        kind that cannot sign TLS handshakes.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:
        raise TLSConfigError(
            f"the private key in {path!r} is encrypted; lbproxy needs it "
            "unencrypted (for example: openssl pkey -in KEY -out KEY.unencrypted)"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(f"no usable PEM private key in {path!r} ({_firstLine(e)})") from e
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise TLSConfigError(
            f"the private key in {path!r} is a {type(key).__name__}, "
            "which cannot sign TLS handshakes"
        )
    return key


def _loadCertificates(path: str, pem: bytes, what: str) -> list[x509.Certificate]:
    """
    All certificates in PEM text C{pem} read from C{path}, in file order;
    other PEM blocks (keys) around them are ignored.

    @param what: what the file should hold, for the error message.

    @raise TLSConfigError: if there is no certificate or one is malformed.
    """
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TLSConfigError(
            f"no valid PEM certificate in TLS {what} file {path!r} ({_firstLine(e)})"
        ) from e


def _firstLine(error: Exception) -> str:
    """
    The first line of C{error}'s message, without cryptography's FAQ link.
    """
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].split(" See https://")[0]


def _publicKeyBytes(key: _SigningKey | x509.Certificate) -> bytes:
    """
    The DER SubjectPublicKeyInfo of a private key or a certificate, to
    compare the two.
    """
    return key.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def adhocCertificate(hostnames: Sequence[str]) -> tuple[CertificateSource, str]:
    """
    A new self-signed certificate made in memory, for C{--adhoc}: nothing is
    read or written, and reloading keeps it.

    @param hostnames: the DNS names and IP addresses the certificate covers.

    @return: the certificate, for L{lbproxy.tls.sni.ServerTLS}, and its
        SHA-256 fingerprint (colon separated upper-case hex), for the
        operator to pin or compare.
    """
    key, certificate = makeSelfSigned(hostnames)
    return _Fixed(ServerCertificate(key, certificate)), fingerprintSHA256(certificate)
