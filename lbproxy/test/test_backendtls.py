"""
Tests for C{https://} backends: parsing, and L{lbproxy.tls.client.BackendTLS}
through the real proxy against real TLS backends on loopback, with
certificates from a local CA.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lbproxy import certs
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import ProxySite
from lbproxy.proxy import ReverseProxyResource
from lbproxy.test.fakes import reactor
from lbproxy.tls.certificates import CertificateFiles, TLSConfigError
from lbproxy.tls.client import BackendTLS, BackendTLSSettings
from lbproxy.tls.server import TLSServerEndpoint
from lbproxy.tls.sni import ServerTLS, ServerTLSSettings
from lbproxy.upstream.backends import Backend, BackendPool, parseBackend, parseBackends
from lbproxy.upstream.pool import Upstream

Gen = Generator[Any, Any, None]


class HTTPSBackendParsingTests(SynchronousTestCase):
    """
    C{https://} items in C{--backends}.
    """

    def test_defaultPort(self) -> None:
        """
        An C{https://} backend without a port uses port 443.
        """
        for item, host in [
            ("https://backend.example", "backend.example"),
            ("HTTPS://backend.example/", "backend.example"),
            ("https://[::1]", "::1"),
        ]:
            backend = parseBackend(item)
            self.assertEqual((backend.scheme, backend.host, backend.port), ("https", host, 443))

    def test_explicitPort(self) -> None:
        """
        An C{https://} backend keeps the port it names, and its URL says
        C{https}.
        """
        backend = parseBackend("https://127.0.0.2:8443=3")
        self.assertEqual((backend.scheme, backend.port, backend.weight), ("https", 8443, 3))
        self.assertEqual(backend.url, "https://127.0.0.2:8443")

    def test_plainStaysHTTP(self) -> None:
        """
        Backends without a scheme, or with C{http://}, are plain HTTP on
        port 80 by default.
        """
        for item in ["127.0.0.2", "http://127.0.0.2"]:
            backend = parseBackend(item)
            self.assertEqual((backend.scheme, backend.port), ("http", 80))

    def test_sameAddressOtherScheme(self) -> None:
        """
        The same host and port over HTTP and over HTTPS are two backends.
        """
        backends = parseBackends("http://127.0.0.2:8443,https://127.0.0.2:8443")
        self.assertEqual([b.scheme for b in backends], ["http", "https"])


@attrs.frozen
class _PKI:
    """
    A local CA and, signed by it, certificates for C{backend.test} (with
    C{127.0.0.1}) and C{default.test}, written to files.
    """

    caFile: str
    backend: CertificateFiles
    default: CertificateFiles


def _writePKI(directory: str) -> _PKI:
    """
    Make and write a L{_PKI} into C{directory}.
    """
    os.makedirs(directory)
    caKey, caCert = certs.makeCertificateAuthority()

    def write(name: str, content: bytes) -> str:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    caFile = write("ca.crt", certs.certificatePEM(caCert))
    pairs = {}
    for name, hostnames in [
        ("backend", ["backend.test", "127.0.0.1"]),
        ("default", ["default.test"]),
    ]:
        key, cert = certs.makeServerCertificate(caKey, caCert, hostnames)
        pairs[name] = CertificateFiles(
            write(f"{name}.key", certs.privateKeyPEM(key)),
            write(f"{name}.crt", certs.certificatePEM(cert)),
        )
    return _PKI(caFile, pairs["backend"], pairs["default"])


class _WhoAmI(Resource):
    """
    Answers every request with C{secure} or C{plain}, as the backend saw
    the connection.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"secure" if request.isSecure() else b"plain"


class HTTPSBackendTests(TestCase):
    """
    The proxy in front of a real TLS backend on loopback.  The backend
    serves C{default.test}'s certificate unless the client asks for
    C{backend.test} by SNI; every host name reaches 127.0.0.1.
    """

    def setUp(self) -> None:
        self.pki = _writePKI(self.mktemp())

    @inlineCallbacks
    def startBackend(self) -> Generator[Any, Any, int]:
        """
        Start the TLS backend; return its port number.
        """
        serverTLS = ServerTLS(self.pki.default, ServerTLSSettings(certificates=(self.pki.backend,)))
        site = Site(_WhoAmI())
        site.log = lambda request: None  # type: ignore[method-assign]
        tcp = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        endpoint = TLSServerEndpoint(tcp, serverTLS)
        port: IListeningPort = yield endpoint.listen(site)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port  # type: ignore[attr-defined]
        return number

    @inlineCallbacks
    def fetch(
        self, host: str, settings: BackendTLSSettings
    ) -> Generator[Any, Any, tuple[int, bytes, list[str]]]:
        """
        Start the backend, put a proxy in front of it that reaches it as
        C{https://host:port} with C{settings}, and GET C{/} through the
        proxy.

        @return: the status, the body and the access log lines.
        """
        portNumber = yield self.startBackend()

        def loopback(host: str, port: int) -> IStreamClientEndpoint:
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        upstream = Upstream(
            reactor,
            reactor,
            endpointFor=loopback,
            tlsFor=BackendTLS(settings).creatorFor,
        )
        self.addCleanup(upstream.close)
        backend = Backend(host=host, port=portNumber, scheme="https")
        lines: list[str] = []
        resource = ReverseProxyResource(
            BackendPool([backend]),
            RoundRobinChooser(),
            upstream,
            reactor,
        )
        site = ProxySite(resource, AccessLog(lines.append), reactor=reactor)
        proxyPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(proxyPort.stopListening)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        url = b"http://127.0.0.1:%d/" % (proxyPort.getHost().port,)
        response = yield agent.request(b"GET", url)
        body = yield readBody(response)
        return response.code, body, lines

    @inlineCallbacks
    def test_verified(self) -> Gen:
        """
        A backend whose certificate names it and is signed by the
        C{--backend-ca} is reached over TLS; the certificate is the one for
        its name, so the name went by SNI.
        """
        code, body, _ = yield self.fetch("backend.test", BackendTLSSettings(caFile=self.pki.caFile))
        self.assertEqual((code, body), (200, b"secure"))

    @inlineCallbacks
    def test_ipAddress(self) -> Gen:
        """
        A backend given by IP address is verified against the certificate's
        IP addresses.  No SNI is sent for an address, so the backend's
        default certificate is served; this one covers 127.0.0.1.
        """
        self.pki = attrs.evolve(self.pki, default=self.pki.backend)
        code, body, _ = yield self.fetch("127.0.0.1", BackendTLSSettings(caFile=self.pki.caFile))
        self.assertEqual((code, body), (200, b"secure"))

    @inlineCallbacks
    def test_wrongHostname(self) -> Gen:
        """
        A backend whose certificate does not name it gets 503 (the handshake
        failed: no backend could be reached), even though the CA is trusted.
        """
        code, body, lines = yield self.fetch(
            "other.test", BackendTLSSettings(caFile=self.pki.caFile)
        )
        self.assertEqual(code, 503)
        self.assertNotIn(b"secure", body)
        self.assertIn(b"certificate does not match its name", body)
        self.assertIn("other.test", lines[0])

    @inlineCallbacks
    def test_untrustedCA(self) -> Gen:
        """
        A backend whose certificate is signed by a CA other than the
        C{--backend-ca} gets 503.
        """
        other = _writePKI(self.mktemp())
        code, body, _ = yield self.fetch("backend.test", BackendTLSSettings(caFile=other.caFile))
        self.assertEqual(code, 503)
        self.assertNotIn(b"secure", body)
        self.assertIn(b"certificate verify failed", body)

    @inlineCallbacks
    def test_platformTrustByDefault(self) -> Gen:
        """
        Without C{--backend-ca}, the platform's trust store decides: a
        private CA's certificate gets 503.
        """
        code, _, _ = yield self.fetch("backend.test", BackendTLSSettings())
        self.assertEqual(code, 503)

    @inlineCallbacks
    def test_insecure(self) -> Gen:
        """
        With C{--backend-insecure}, neither the CA nor the name is checked.
        """
        code, body, _ = yield self.fetch("other.test", BackendTLSSettings(insecure=True))
        self.assertEqual((code, body), (200, b"secure"))


class BackendTLSTests(SynchronousTestCase):
    """
    Building L{BackendTLS}.
    """

    def test_badCAFile(self) -> None:
        """
        A missing C{--backend-ca} file, or one without certificates, is a
        one-line L{TLSConfigError} naming it.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        garbage = os.path.join(directory, "garbage.pem")
        with open(garbage, "wb") as f:
            f.write(b"not PEM\n")
        for path in [os.path.join(directory, "missing.pem"), garbage]:
            error = self.assertRaises(TLSConfigError, BackendTLS, BackendTLSSettings(caFile=path))
            self.assertIn(repr(path), str(error))
            self.assertEqual(len(str(error).splitlines()), 1)

    def test_oneCreatorPerHost(self) -> None:
        """
        The client TLS configuration is made once per host name and sends
        the host name by SNI.
        """
        backendTLS = BackendTLS(BackendTLSSettings(insecure=True))
        self.assertIs(backendTLS.creatorFor("a.test"), backendTLS.creatorFor("a.test"))
        self.assertIsNot(backendTLS.creatorFor("a.test"), backendTLS.creatorFor("b.test"))
        connection = backendTLS.creatorFor("a.test").clientConnectionForTLS(None)  # type: ignore[arg-type]
        self.assertIsInstance(connection, SSL.Connection)
        self.assertEqual(connection.get_servername(), b"a.test")
