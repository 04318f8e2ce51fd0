"""
Server-side TLS for lbproxy: TLS options from PEM files or from an ad-hoc
in-memory certificate, and an endpoint that speaks TLS over another
endpoint.

Every server context is built by one private helper, L{_serverOptions}, so
that the protocol versions, ALPN and cipher policy change in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from lbproxy.certs import fingerprintSHA256, makeSelfSigned

__all__ = [
    "ALPN_PROTOCOLS",
    "TLSConfigError",
    "TLSServerEndpoint",
    "adhocServerOptions",
    "serverOptionsFromFiles",
]

# The application protocols offered by ALPN, most preferred first.
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)

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


def _serverOptions(
    privateKey: crypto.PKey,
    certificate: crypto.X509,
    extraCertChain: Sequence[crypto.X509] = (),
) -> CertificateOptions:
    """
    The one place lbproxy's server TLS policy is set: TLS 1.2 at least,
    ALPN offering only C{http/1.1}, Twisted's default ciphers.

    @param privateKey: the server's private key.
    @param certificate: the server's certificate, matching C{privateKey}.
    @param extraCertChain: intermediate certificates sent after the leaf.
    """
    return CertificateOptions(
        privateKey=privateKey,
        certificate=certificate,
        extraCertChain=list(extraCertChain) or None,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableProtocols=list(ALPN_PROTOCOLS),
    )


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


def serverOptionsFromFiles(
    privateKeyPath: str,
    certPath: str | None = None,
    extraCertChainPath: str | None = None,
) -> CertificateOptions:
    """
    Server TLS options from PEM files, as named by C{--listen
    ssl:...:privateKey=K:certKey=C:extraCertChain=E}.

    @param privateKeyPath: a file holding the unencrypted private key.
    @param certPath: a file holding the server certificate, optionally
        followed by its intermediate certificates (a "full chain" file); if
        L{None}, the certificate is read from C{privateKeyPath}, as Twisted's
        C{ssl:} endpoint does when C{certKey} is omitted.
    @param extraCertChainPath: a file holding more intermediate certificates
        to send after those of C{certPath}.

    @raise TLSConfigError: if a file is missing, unreadable or holds no
        usable PEM key or certificate, or if the key does not match the
        certificate.
    """
    keyPEM = _readFile(privateKeyPath, "private key")
    key = _loadPrivateKey(privateKeyPath, keyPEM)
    if certPath is None:
        certPath = privateKeyPath
        certPEM = keyPEM
    else:
        certPEM = _readFile(certPath, "certificate")
    leaf, *chain = _loadCertificates(certPath, certPEM, "certificate")
    if extraCertChainPath is not None:
        chainPEM = _readFile(extraCertChainPath, "certificate chain")
        chain += _loadCertificates(extraCertChainPath, chainPEM, "certificate chain")
    if _publicKeyBytes(key) != _publicKeyBytes(leaf):
        raise TLSConfigError(
            f"the private key in {privateKeyPath!r} does not match the "
            f"certificate in {certPath!r} (subject {leaf.subject.rfc4514_string()})"
        )
    return _serverOptions(
        crypto.PKey.from_cryptography_key(key),
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in chain],
    )


def adhocServerOptions(hostnames: Sequence[str]) -> tuple[CertificateOptions, str]:
    """
    Server TLS options with a new self-signed certificate made in memory,
    for C{--adhoc}: nothing is read or written.

    @param hostnames: the DNS names and IP addresses the certificate covers.

    @return: the options and the certificate's SHA-256 fingerprint (colon
        separated upper-case hex), for the operator to pin or compare.
    """
    key, certificate = makeSelfSigned(hostnames)
    options = _serverOptions(
        crypto.PKey.from_cryptography_key(key),
        crypto.X509.from_cryptography(certificate),
    )
    return options, fingerprintSHA256(certificate)


@implementer(IStreamServerEndpoint)
@attrs.frozen
class TLSServerEndpoint:
    """
    A server endpoint that speaks TLS over the connections of another.

    @ivar wrapped: the endpoint that accepts the plain connections, e.g. a
        TCP endpoint.
    @ivar contextFactory: the server TLS configuration, e.g. the result of
        L{serverOptionsFromFiles}.
    """

    wrapped: IStreamServerEndpoint
    contextFactory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on the wrapped endpoint; every connection does a TLS server
        handshake and then carries the protocols of C{protocolFactory}.
        """
        return self.wrapped.listen(TLSMemoryBIOFactory(self.contextFactory, False, protocolFactory))
