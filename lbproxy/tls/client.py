# -*- test-case-name: lbproxy.test.test_backendtls -*-
"""
Client TLS for C{https://} backends.

L{BackendTLS} gives each backend host name its client TLS configuration,
made once per name: the backend's certificate verified against the
platform's trust roots or a CA file (C{--backend-ca}) and against the host
name (DNS name or IP address, through C{service_identity}), SNI carrying
the name, ALPN offering C{http/1.1}, TLS 1.2 or later.  With
C{--backend-insecure} nothing is verified, for backends with self-signed
certificates on a network the operator trusts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from lbproxy.tls.certificates import readCertificates

__all__ = ["BackendTLS", "BackendTLSSettings", "ClientTLSForHost"]


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
        @raise lbproxy.tls.certificates.TLSConfigError: if the CA file cannot
            be used.
        """
        self.settings = settings
        self._trustRoot = None
        if settings.caFile is not None:
            certificates = readCertificates(settings.caFile, "backend CA")
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
