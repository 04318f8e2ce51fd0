"""
TLS for lbproxy: the server policy (Mozilla's "intermediate" profile, or
"modern" with C{--tls-min 1.3}), certificates chosen by server name (SNI)
and reloaded in place, and client connections to C{https://} backends.

Every server context is built by one private helper, L{_serverContext}, so
that the protocol versions, ciphers, options and ALPN change in one place:

    - TLS 1.2 and 1.3 only (1.3 only with C{minimumVersion="1.3"});
    - for TLS 1.2, ECDHE key exchange with AES-GCM or ChaCha20-Poly1305
      only (forward secrecy and AEAD; ECDSA and RSA certificates); TLS 1.3's
      three suites are all both;
    - key exchange over X25519, P-256 or P-384 (and X25519MLKEM768 where
      OpenSSL has it);
    - no compression, no renegotiation, the server's cipher order;
    - session tickets and a server-side session cache (resumption);
    - ALPN offering only L{ALPN_PROTOCOLS}, whatever the site could speak.

A L{ServerTLS} holds the current contexts: one for its default certificate
and one per certificate given for SNI.  L{ServerTLS.reload} re-reads every
file and swaps the contexts for new handshakes; connections already open
keep the context they were made with.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet import protocol as twistedProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from lbproxy.certs import fingerprintSHA256, makeSelfSigned

__all__ = [
    "ALPN_PROTOCOLS",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "TLS_VERSIONS",
    "BackendTLS",
    "BackendTLSSettings",
    "CertificateFiles",
    "CertificateSource",
    "ClientTLSForHost",
    "ServerCertificate",
    "ServerTLS",
    "ServerTLSSettings",
    "TLSConfigError",
    "TLSServerEndpoint",
    "adhocCertificate",
    "certificateDirectory",
    "loadSNICertificates",
    "parseCertOption",
    "serverOptionsFromFiles",
]

# The application protocols offered by ALPN, most preferred first.
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)

# The TLS versions C{--tls-min} accepts: 1.2 is Mozilla's "intermediate"
# profile, 1.3 its "modern" one.
TLS_VERSIONS: dict[str, int] = {
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}

# Mozilla's "intermediate" TLS 1.2 suites, in its order, without the DHE
# ones (lbproxy does elliptic-curve key exchange only): ECDHE, AEAD.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# TLS 1.3's suites; every one is AEAD and every TLS 1.3 key exchange is
# ephemeral.
TLS13_CIPHERSUITES = ":".join(
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)

# Key exchange groups, most preferred first: Mozilla's X25519, P-256 and
# P-384, after the post-quantum hybrid where OpenSSL has it.  Not X448 or
# P-521, which OpenSSL would otherwise also accept.
_GROUPS = (b"X25519MLKEM768:X25519:P-256:P-384", b"X25519:P-256:P-384")

_SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
)

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

_log = Logger()


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


@attrs.frozen
class ServerTLSSettings:
    """
    The server TLS configuration shared by every C{ssl:} listener.

    @ivar minimumVersion: C{"1.2"} (Mozilla intermediate) or C{"1.3"}
        (Mozilla modern).
    @ivar certificates: certificates chosen by server name (C{--cert}).
    @ivar directories: directories whose C{*.pem} files each hold a key and
        its certificate chain, chosen by server name (C{--cert-dir}); read
        again on every reload.
    @ivar handshakeTimeout: seconds a client has to complete its handshake
        before the connection is dropped.
    """

    minimumVersion: str = "1.2"
    handshakeTimeout: float = 10.0
    certificates: tuple[CertificateFiles, ...] = ()
    directories: tuple[str, ...] = ()


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


def loadSNICertificates(settings: ServerTLSSettings) -> dict[str, ServerCertificate]:
    """
    Load every certificate of C{settings} (C{--cert}, then the C{--cert-dir}
    files) and index it by its server names.

    @raise TLSConfigError: if a file cannot be used, or if two certificates
        claim the same server name.
    """
    sources = list(settings.certificates)
    for directory in settings.directories:
        sources += certificateDirectory(directory)
    byName: dict[str, ServerCertificate] = {}
    for source in sources:
        certificate = source.load()
        for name in certificate.serverNames:
            other = byName.get(name)
            if other is not None:
                raise TLSConfigError(
                    f"server name {name!r} is in two certificates: "
                    f"{other.origin!r} and {certificate.origin!r}"
                )
            byName[name] = certificate
    return byName


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


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """
    The ALPN protocol for a connection: the first of L{ALPN_PROTOCOLS} the
    client offers, or none (the handshake goes on without ALPN).
    """
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def _setGroups(context: SSL.Context) -> None:
    """
    Limit C{context}'s key exchange to L{_GROUPS}.  pyOpenSSL has no API for
    this, so it calls OpenSSL through pyOpenSSL's bindings; the first list
    this OpenSSL accepts is used.
    """
    from OpenSSL._util import lib

    for groups in _GROUPS:
        if lib.SSL_CTX_set1_curves_list(context._context, groups) == 1:
            return
        lib.ERR_clear_error()
    raise TLSConfigError("this OpenSSL supports none of X25519, P-256 and P-384")


def _serverContext(minimumVersion: str, certificate: ServerCertificate) -> SSL.Context:
    """
    The one place lbproxy's server TLS policy is set: see the module
    docstring.

    @param minimumVersion: a key of L{TLS_VERSIONS}.
    @param certificate: what the context serves.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(TLS_VERSIONS[minimumVersion])
    context.set_options(_SERVER_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _setGroups(context)
    context.use_privatekey(crypto.PKey.from_cryptography_key(certificate.key))
    context.use_certificate(crypto.X509.from_cryptography(certificate.certificate))
    for intermediate in certificate.chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_NONE)
    context.set_session_id(b"lbproxy")
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_alpn_select_callback(_selectALPN)
    return context


@attrs.frozen
class _Contexts:
    """
    One generation of a L{ServerTLS}'s contexts.
    """

    default: SSL.Context
    defaultCertificate: ServerCertificate
    byName: dict[str, SSL.Context]

    def forName(self, name: str) -> SSL.Context | None:
        """
        The context for server name C{name}: an exact match, else a
        wildcard for its parent domain, else L{None}.
        """
        name = name.lower().rstrip(".")
        context = self.byName.get(name)
        if context is None and "." in name:
            context = self.byName.get("*." + name.split(".", 1)[1])
        return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Server TLS for one listener: its own (default) certificate, the
    certificates chosen by SNI, and the policy; reloadable.

    @ivar default: where the default certificate comes from.
    @ivar settings: the policy and the SNI certificates.
    """

    _log = Logger()

    def __init__(
        self,
        default: CertificateSource,
        settings: ServerTLSSettings = ServerTLSSettings(),
    ) -> None:
        """
        Load every certificate.

        @raise TLSConfigError: if one cannot be used.
        """
        self.default = default
        self.settings = settings
        self._contexts = self._load()

    def _load(self) -> _Contexts:
        """
        A new generation of contexts from freshly loaded certificates.

        @raise TLSConfigError: if one cannot be used.
        """
        version = self.settings.minimumVersion
        defaultCertificate = self.default.load()
        default = _serverContext(version, defaultCertificate)
        byName = {
            name: _serverContext(version, certificate)
            for name, certificate in loadSNICertificates(self.settings).items()
        }
        if byName:
            # Only with certificates to choose from: the callback is Python
            # code run inside every handshake.
            default.set_tlsext_servername_callback(self._chooseByName)
        return _Contexts(default, defaultCertificate, byName)

    @property
    def certificate(self) -> x509.Certificate:
        """
        The default certificate served now.
        """
        return self._contexts.defaultCertificate.certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """
        The intermediates sent after the default certificate now.
        """
        return self._contexts.defaultCertificate.chain

    @property
    def serverNames(self) -> list[str]:
        """
        The server names that select a certificate other than the default.
        """
        return sorted(self._contexts.byName)

    def reload(self) -> bool:
        """
        Re-read every certificate file and use the result for new
        handshakes; connections already open are not touched.  If a file
        cannot be used, log one line and keep everything as it was.

        @return: whether the new certificates are in use.
        """
        try:
            contexts = self._load()
        except TLSConfigError as e:
            self._log.error("TLS certificates not reloaded, keeping the old ones: {error}", error=e)
            return False
        self._contexts = contexts
        return True

    def _chooseByName(self, connection: SSL.Connection) -> None:
        """
        The SNI callback: switch C{connection} to the context for the server
        name the client sent, if there is one.
        """
        name = connection.get_servername()
        if name:
            context = self._contexts.forName(name.decode("ascii", "replace"))
            if context is not None:
                connection.set_context(context)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A new server connection on the current default context.
        """
        return SSL.Connection(self._contexts.default, None)


def serverOptionsFromFiles(
    privateKeyPath: str,
    certPath: str | None = None,
    extraCertChainPath: str | None = None,
    settings: ServerTLSSettings = ServerTLSSettings(),
) -> ServerTLS:
    """
    Server TLS from PEM files, as named by C{--listen
    ssl:...:privateKey=K:certKey=C:extraCertChain=E}.

    @param privateKeyPath: a file holding the unencrypted private key.
    @param certPath: a file holding the server certificate, optionally
        followed by its intermediate certificates (a "full chain" file); if
        L{None}, the certificate is read from C{privateKeyPath}, as Twisted's
        C{ssl:} endpoint does when C{certKey} is omitted.
    @param extraCertChainPath: a file holding more intermediate certificates
        to send after those of C{certPath}.
    @param settings: the policy and the SNI certificates.

    @raise TLSConfigError: if a file is missing, unreadable or holds no
        usable PEM key or certificate, or if the key does not match the
        certificate.
    """
    return ServerTLS(CertificateFiles(privateKeyPath, certPath, extraCertChainPath), settings)


def adhocCertificate(hostnames: Sequence[str]) -> tuple[CertificateSource, str]:
    """
    A new self-signed certificate made in memory, for C{--adhoc}: nothing is
    read or written, and reloading keeps it.

    @param hostnames: the DNS names and IP addresses the certificate covers.

    @return: the certificate, for L{ServerTLS}, and its SHA-256 fingerprint
        (colon separated upper-case hex), for the operator to pin or compare.
    """
    key, certificate = makeSelfSigned(hostnames)
    return _Fixed(ServerCertificate(key, certificate)), fingerprintSHA256(certificate)


class _EdgeTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol for the edge, with a cheaper start.

    Twisted's C{makeConnection} declares the interfaces of the transport on
    the protocol one C{directlyProvides} call at a time (nine for a TCP
    connection, 11 µs per connection); each call replaces the one before,
    so what is left is the last interface alone. This does the same in one
    call, with the last interface remembered per transport class by the
    factory. Otherwise it is Twisted 26's C{makeConnection} as it stands.
    """

    factory: _EdgeTLSFactory
    _handshakeTimer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        last = self.factory.lastInterface(transport)
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        if last is not None:
            directlyProvides(self, last)
        twistedProtocol.Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()
        timeout = self.factory.handshakeTimeout
        if timeout is not None and not self._handshakeDone:
            self._handshakeTimer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()
        if self._handshakeDone and self._handshakeTimer is not None:
            self._stopHandshakeTimer()

    def _stopHandshakeTimer(self) -> None:
        timer, self._handshakeTimer = self._handshakeTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        if not self._handshakeDone and self.transport is not None:
            _log.info(
                "TLS handshake from {peer} not done in {timeout:g}s; closing",
                peer=self.transport.getPeer(),
                timeout=self.factory.handshakeTimeout,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = twistedProtocol.connectionDone) -> None:
        self._stopHandshakeTimer()
        super().connectionLost(reason)


class _EdgeTLSFactory(TLSMemoryBIOFactory):
    """
    Makes L{_EdgeTLSProtocol}s: encrypting each write at once (not at the
    next reactor turn, as Twisted's default C{BufferingTLSTransport} does
    with a timer per connection; lbproxy's edge writes a response head with
    its first data, and lbproxy's TCP transports batch a turn's sends, see
    L{lbproxy._twisted.transport}), and starting cheaper.
    """

    protocol = _EdgeTLSProtocol
    handshakeTimeout: float | None = None
    clock: IReactorTime

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lastInterfaces: dict[type, Any] = {}

    def lastInterface(self, transport: Any) -> Any:
        """
        The last interface C{transport} provides (what Twisted's
        C{makeConnection} leaves declared on the protocol), or L{None}.
        """
        kind = type(transport)
        if kind not in self._lastInterfaces:
            declared = list(providedBy(transport))
            self._lastInterfaces[kind] = declared[-1] if declared else None
        return self._lastInterfaces[kind]


@implementer(IStreamServerEndpoint)
@attrs.frozen
class TLSServerEndpoint:
    """
    A server endpoint that speaks TLS over the connections of another.

    @ivar wrapped: the endpoint that accepts the plain connections, e.g. a
        TCP endpoint.
    @ivar contextFactory: the server TLS configuration, e.g. a
        L{ServerTLS}.
    @ivar handshakeTimeout: seconds a client has to complete its handshake
        (L{None}: no limit of its own).
    @ivar clock: what times the handshake.
    """

    wrapped: IStreamServerEndpoint
    contextFactory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory
    handshakeTimeout: float | None = None
    clock: IReactorTime | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on the wrapped endpoint; every connection does a TLS server
        handshake and then carries the protocols of C{protocolFactory}.
        """
        # Benchmark A: 110 to 105 µs of CPU per request without Twisted's
        # write aggregation (see _EdgeTLSFactory).
        factory = _EdgeTLSFactory(self.contextFactory, False, protocolFactory)
        if self.handshakeTimeout is not None:
            factory.handshakeTimeout = self.handshakeTimeout
            if self.clock is None:
                from twisted.internet import reactor

                factory.clock = reactor  # type: ignore[assignment]
            else:
                factory.clock = self.clock
        return self.wrapped.listen(factory)


@attrs.frozen
class BackendTLSSettings:
    """
    How lbproxy checks the certificates of C{https://} backends.

    @ivar caFile: a PEM file of the CA certificates to trust instead of the
        platform's (C{--backend-ca}); L{None} for the platform's.
    @ivar insecure: verify nothing (C{--backend-insecure}).
    """

    caFile: str | None = None
    insecure: bool = False


def _isIPAddress(host: str) -> bool:
    """
    Whether C{host} is an IP address literal (no SNI is sent for those).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    Client TLS that accepts any certificate, for C{--backend-insecure};
    still TLS 1.2 or later, ALPN C{http/1.1}, SNI sent for host names.
    """

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        self._context.set_verify(SSL.VERIFY_NONE)
        self._context.set_alpn_protos([b"http/1.1"])

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not _isIPAddress(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


class BackendTLS:
    """
    Client TLS for C{https://} backends: the certificate is verified against
    the trust root and the backend's configured host name (DNS name or IP
    address, through C{service_identity}), SNI carries the name, ALPN offers
    C{http/1.1}; or, with C{insecure}, nothing is verified.
    """

    def __init__(self, settings: BackendTLSSettings = BackendTLSSettings()) -> None:
        """
        @raise TLSConfigError: if the CA file cannot be used.
        """
        self.settings = settings
        self._trustRoot = None
        if settings.caFile is not None:
            pem = _readFile(settings.caFile, "backend CA")
            certificates = _loadCertificates(settings.caFile, pem, "backend CA")
            self._trustRoot = trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(c)) for c in certificates]
            )
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def creatorFor(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """
        The client TLS configuration for connections to backend
        C{hostname}, made once per host name.
        """
        creator = self._creators.get(hostname)
        if creator is None:
            if self.settings.insecure:
                creator = _UnverifiedClientTLS(hostname)
            else:
                creator = optionsForClientTLS(
                    hostname,
                    trustRoot=self._trustRoot or platformTrust(),
                    acceptableProtocols=[b"http/1.1"],
                    extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
                )
            self._creators[hostname] = creator
        return creator


ClientTLSForHost = Callable[[str], IOpenSSLClientConnectionCreator]
"""
Gives the client TLS configuration for a backend host name.
"""
