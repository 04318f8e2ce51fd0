# -*- test-case-name: lbproxy.test.test_certs -*-
"""
Certificates for running lbproxy over HTTPS without a public CA.

Run C{python -m lbproxy.certs [DIR] [--force]} to write a development
certificate authority (C{ca.crt}, C{ca.key}) and a server certificate signed
by it (C{loadbalancer.crt}, C{loadbalancer.key}) into C{DIR} (default
C{certs}).  Clients then trust C{ca.crt}, e.g.
C{curl --cacert certs/ca.crt https://localhost/} (lbproxy's default
listener is port 443).

Everything except L{main} is pure: the functions build keys and
certificates in memory and do no I/O, so L{lbproxy.tls.certificates} can make an ad-hoc
certificate without touching the disk.

Keys are ECDSA on the NIST P-256 curve rather than RSA 2048: a P-256 key is
generated in about a millisecond where RSA takes tens to hundreds (this
matters for C{--adhoc} start-up and for the test suite, which makes many),
it gives stronger security than RSA 2048 with smaller handshakes, and every
client that speaks TLS 1.2 (lbproxy's minimum) supports ECDSA certificates.
Signatures are ECDSA with SHA-256.

The extensions are the ones that OpenSSL 3 with C{X509_V_FLAG_X509_STRICT}
(the default for Python's C{ssl.create_default_context()} from Python 3.13)
and browsers require: the CA has a critical C{BasicConstraints(ca=True)},
C{KeyUsage} keyCertSign and cRLSign, and a subject key identifier; the
server certificate has C{BasicConstraints(ca=False)}, C{KeyUsage}
digitalSignature, C{ExtendedKeyUsage} serverAuth, the host names as
C{subjectAltName} (IP literals as IP addresses), and subject and authority
key identifiers.  Server certificates are valid for 825 days, the most that
Apple platforms accept; the CA for ten years.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import socket
import sys
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERTIFICATE",
    "CA_KEY",
    "SERVER_CERTIFICATE",
    "SERVER_KEY",
    "certificatePEM",
    "defaultHostnames",
    "fingerprintSHA256",
    "main",
    "makeCertificateAuthority",
    "makeSelfSigned",
    "makeServerCertificate",
    "newRSAKey",
    "privateKeyPEM",
]

CA_CERTIFICATE = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERTIFICATE = "loadbalancer.crt"
SERVER_KEY = "loadbalancer.key"

SERVER_VALIDITY = datetime.timedelta(days=825)
CA_VALIDITY = datetime.timedelta(days=3652)

# Certificates start to be valid a little before they are made, so that a
# client whose clock is slightly behind ours still accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

# RFC 5280's upper bound on a commonName.
_COMMON_NAME_MAX = 64

_SAN = x509.DNSName | x509.IPAddress

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""
The kinds of key these functions make certificates for.
"""


def defaultHostnames() -> list[str]:
    """
    The names a development server certificate should cover: C{localhost},
    the IPv4 and IPv6 loopback addresses and this machine's host name.

    @return: the names, without duplicates, in that order.
    """
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    return list(dict.fromkeys(name for name in names if name))


def _subjectAlternativeName(hostname: str) -> _SAN:
    """
    The C{subjectAltName} entry for one host name or IP address literal.

    @param hostname: a DNS name (non-ASCII names are IDNA-encoded) or an IPv4
        or IPv6 address literal.

    @raise ValueError: if C{hostname} is empty.
    """
    name = hostname.strip().rstrip(".")
    if not name:
        raise ValueError(f"empty host name {hostname!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return x509.DNSName(name.lower())


def _alternativeNames(hostnames: Sequence[str]) -> list[_SAN]:
    """
    The C{subjectAltName} entries for C{hostnames}, without duplicates.

    @raise ValueError: if C{hostnames} is empty or holds an empty name.
    """
    if not hostnames:
        raise ValueError("a server certificate needs at least one host name")
    return list(dict.fromkeys(_subjectAlternativeName(name) for name in hostnames))


def _commonName(hostnames: Sequence[str]) -> str:
    """
    A subject common name for a certificate for C{hostnames}: the first name,
    if it fits the 64 characters RFC 5280 allows.  Clients match host names
    against the C{subjectAltName}, never this.
    """
    first = hostnames[0].strip() if hostnames else ""
    if 0 < len(first) <= _COMMON_NAME_MAX:
        return first
    return "lbproxy"


def _name(commonName: str) -> x509.Name:
    """
    A distinguished name with the organization C{lbproxy}.
    """
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lbproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def _newKey() -> ec.EllipticCurvePrivateKey:
    """
    A new ECDSA P-256 private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def newRSAKey(bits: int = 2048) -> rsa.RSAPrivateKey:
    """
    A new RSA private key, for servers (or tests) that need an RSA
    certificate rather than the default ECDSA one.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _keyUsage(**allowed: bool) -> x509.KeyUsage:
    """
    A C{KeyUsage} extension allowing the usages named (by their
    L{x509.KeyUsage} argument names) and no others.
    """
    usages = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    usages.update(allowed)
    return x509.KeyUsage(**usages)


def _now(now: datetime.datetime | None) -> datetime.datetime:
    """
    C{now}, or the current UTC time if it is L{None}.
    """
    if now is None:
        # timezone.utc rather than datetime.UTC: setup.cfg still allows 3.10.
        return datetime.datetime.now(datetime.timezone.utc)
    return now


def _serverBuilder(
    key: PrivateKey,
    issuer: x509.Name,
    authorityKeyIdentifier: x509.AuthorityKeyIdentifier,
    hostnames: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta = SERVER_VALIDITY,
) -> x509.CertificateBuilder:
    """
    The parts common to every server certificate: subject, validity,
    C{subjectAltName} and the extensions a TLS server certificate needs.

    @param key: the server's private key.
    @param issuer: the signer's subject name.
    @param authorityKeyIdentifier: identifies the signer's key.
    @param hostnames: the names and addresses the certificate is for.
    @param now: when the certificate is made.
    @param validity: how long it is valid.
    """
    alternativeNames = _alternativeNames(hostnames)
    notBefore = now - _CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(_name(_commonName(hostnames)))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notBefore + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_keyUsage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternativeNames), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authorityKeyIdentifier, critical=False)
    )


def makeCertificateAuthority(
    commonName: str = "lbproxy development CA",
    now: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    Make a new self-signed certificate authority, valid for ten years, that
    can sign server certificates (but not other CAs).

    @param commonName: the CA's subject common name; at most 64 characters.
    @param now: when the certificate is made; the current time if L{None}.

    @return: the CA's private key and certificate.
    """
    key = _newKey()
    subject = _name(commonName)
    notBefore = _now(now) - _CLOCK_SKEW
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notBefore + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_keyUsage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def makeServerCertificate(
    caKey: ec.EllipticCurvePrivateKey,
    caCert: x509.Certificate,
    hostnames: Sequence[str],
    now: datetime.datetime | None = None,
    key: PrivateKey | None = None,
    validity: datetime.timedelta = SERVER_VALIDITY,
) -> tuple[PrivateKey, x509.Certificate]:
    """
    Make a new key and a TLS server certificate for it, signed by a CA.

    @param caKey: the CA's private key, which signs the certificate.
    @param caCert: the CA's certificate, which names the issuer.
    @param hostnames: the DNS names and IP address literals clients will use
        to reach the server; at least one.
    @param now: when the certificate is made; the current time if L{None}.
    @param key: the server's key, e.g. from L{newRSAKey}; a new ECDSA P-256
        key if L{None}.
    @param validity: how long the certificate is valid.

    @return: the server's private key and certificate.

    @raise ValueError: if C{hostnames} is empty or holds an empty name.
    """
    try:
        caKeyIdentifier = caCert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(caKeyIdentifier)
    except x509.ExtensionNotFound:
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key())
    if key is None:
        key = _newKey()
    builder = _serverBuilder(key, caCert.subject, authority, hostnames, _now(now), validity)
    return key, builder.sign(caKey, hashes.SHA256())


def makeSelfSigned(
    hostnames: Sequence[str],
    now: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    Make a new key and a self-signed TLS server certificate for it, as for
    C{--adhoc}: no CA; clients trust this certificate itself (or its
    fingerprint).

    @param hostnames: the DNS names and IP address literals clients will use
        to reach the server; at least one.
    @param now: when the certificate is made; the current time if L{None}.

    @return: the private key and the certificate.

    @raise ValueError: if C{hostnames} is empty or holds an empty name.
    """
    key = _newKey()
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    builder = _serverBuilder(key, _name(_commonName(hostnames)), authority, hostnames, _now(now))
    return key, builder.sign(key, hashes.SHA256())


def privateKeyPEM(key: PrivateKey) -> bytes:
    """
    C{key} as an unencrypted PKCS#8 PEM block (C{BEGIN PRIVATE KEY}).
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificatePEM(certificate: x509.Certificate) -> bytes:
    """
    C{certificate} as a PEM block (C{BEGIN CERTIFICATE}).
    """
    return certificate.public_bytes(serialization.Encoding.PEM)


def fingerprintSHA256(certificate: x509.Certificate | bytes | str) -> str:
    """
    The SHA-256 fingerprint of a certificate, formatted as
    C{openssl x509 -noout -fingerprint -sha256} does: upper-case hex bytes
    separated by colons.

    @param certificate: a certificate, or PEM text holding one (the first, if
        there are several).

    @raise ValueError: if C{certificate} is text that holds no certificate.
    """
    if isinstance(certificate, str):
        certificate = certificate.encode("ascii")
    if isinstance(certificate, bytes):
        certificate = x509.load_pem_x509_certificate(certificate)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest().hex(":").upper()


def _argumentParser() -> argparse.ArgumentParser:
    """
    The command line of C{python -m lbproxy.certs}.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lbproxy.certs",
        description=(
            "Write a development CA (ca.crt, ca.key) and a server certificate "
            "signed by it (loadbalancer.crt, loadbalancer.key) for lbproxy."
        ),
    )
    parser.add_argument(
        "directory",
        metavar="DIR",
        nargs="?",
        default="certs",
        help="where to write the files (created if missing; default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing files instead of refusing to run",
    )
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "also cover this DNS name or IP address (repeatable); localhost, "
            "127.0.0.1, ::1 and this machine's name are always covered"
        ),
    )
    return parser


def _writeFile(path: str, content: bytes, mode: int, replace: bool) -> None:
    """
    Create C{path} with C{content}, its permissions set to C{mode} (less the
    umask) from the moment it exists.

    @param replace: remove an existing file first; if false, an existing file
        raises L{FileExistsError}.
    """
    if replace:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def main(argv: list[str] | None = None) -> int:
    """
    Write a development CA and a server certificate into a directory.

    @param argv: the arguments, without the program name; C{sys.argv[1:]} if
        L{None}.

    @return: the process exit status: 0 on success, 1 if a file to be written
        already exists and C{--force} was not given (nothing is written
        then), or if writing failed.
    """
    options = _argumentParser().parse_args(argv)
    directory: str = options.directory
    force: bool = options.force
    hostnames = list(dict.fromkeys(defaultHostnames() + options.hostname))

    paths = {
        name: os.path.join(directory, name)
        for name in (CA_CERTIFICATE, CA_KEY, SERVER_CERTIFICATE, SERVER_KEY)
    }
    if not force:
        for path in paths.values():
            if os.path.lexists(path):
                print(
                    f"{path} already exists; not overwriting it "
                    "(pass --force to replace the certificates)",
                    file=sys.stderr,
                )
                return 1

    caKey, caCert = makeCertificateAuthority()
    serverKey, serverCert = makeServerCertificate(caKey, caCert, hostnames)
    contents = [
        (CA_CERTIFICATE, certificatePEM(caCert), 0o644),
        (CA_KEY, privateKeyPEM(caKey), 0o600),
        (SERVER_CERTIFICATE, certificatePEM(serverCert), 0o644),
        (SERVER_KEY, privateKeyPEM(serverKey), 0o600),
    ]
    try:
        os.makedirs(directory, exist_ok=True)
        for name, content, mode in contents:
            _writeFile(paths[name], content, mode, replace=force)
    except OSError as e:
        print(f"cannot write certificates into {directory}: {e}", file=sys.stderr)
        return 1

    caPath = paths[CA_CERTIFICATE]
    print(f"wrote {caPath} (CA certificate: give this to clients to trust)")
    print(f"wrote {paths[CA_KEY]} (CA private key: keep it secret)")
    print(
        f"wrote {paths[SERVER_CERTIFICATE]} (server certificate for "
        f"{', '.join(hostnames)}; SHA-256 {fingerprintSHA256(serverCert)})"
    )
    print(f"wrote {paths[SERVER_KEY]} (server private key)")
    print("then: twistd -n lbproxy --backends HOST,...   (serves them on port 443)")
    print(f"try:  curl --cacert {caPath} https://localhost/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
