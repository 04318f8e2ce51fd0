# -*- test-case-name: lbproxy.test.test_tls,lbproxy.test.test_tlsservice -*-
"""
Server TLS for a listener: its default certificate, the certificates chosen
by server name (SNI), and their reload.

A L{ServerTLS} holds the current contexts, each made by
L{lbproxy.tls.policy.serverContext}: one for its default certificate and
one per certificate given for SNI (C{--cert}, and the C{*.pem} files of
every C{--cert-dir}), chosen by the name the client sends, exactly or by a
wildcard for its parent domain.  L{ServerTLS.reload} re-reads every file
and swaps the contexts for new handshakes; connections already open keep
the context they were made with, and a file that cannot be used leaves
everything as it was.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from lbproxy.tls.certificates import (
    CertificateFiles,
    CertificateSource,
    ServerCertificate,
    TLSConfigError,
    certificateDirectory,
)
from lbproxy.tls.policy import ALPN_PROTOCOLS, serverContext

__all__ = [
    "ServerTLS",
    "ServerTLSSettings",
    "loadSNICertificates",
    "serverOptionsFromFiles",
]


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
    @ivar alpnProtocols: what ALPN may choose, most preferred first
        (C{h2} first with C{--http2 on}).
    @ivar resumption: whether clients may resume earlier sessions (session
        tickets and the session cache; C{--tls-resumption}).
    """

    minimumVersion: str = "1.2"
    handshakeTimeout: float = 10.0
    certificates: tuple[CertificateFiles, ...] = ()
    directories: tuple[str, ...] = ()
    alpnProtocols: tuple[bytes, ...] = ALPN_PROTOCOLS
    resumption: bool = True


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
        settings = self.settings
        defaultCertificate = self.default.load()

        def context(certificate: ServerCertificate) -> SSL.Context:
            return serverContext(
                settings.minimumVersion,
                certificate,
                settings.alpnProtocols,
                resumption=settings.resumption,
            )

        default = context(defaultCertificate)
        byName = {
            name: context(certificate)
            for name, certificate in loadSNICertificates(settings).items()
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
