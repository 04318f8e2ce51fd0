"""
Tests for L{lbproxy.tls}.

The handshake tests listen on a real loopback port (port 0, so any free
one) and connect with real TLS clients: Twisted's, and Python's C{ssl}
module in a thread with the strict verification that Python 3.13 makes the
default.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy import certs
from lbproxy.tls import (
    TLSConfigError,
    TLSServerEndpoint,
    adhocServerOptions,
    serverOptionsFromFiles,
)

reactor: IReactorTCP = _globalReactor  # type: ignore[assignment]

_PING = b"ping over TLS"


@attrs.frozen
class CertificateFiles:
    """
    Paths of a CA and a server certificate written by L{writeCertificates}.
    """

    caCert: str
    serverKey: str
    serverCert: str
    caPEM: bytes


def writeCertificates(
    directory: str, hostnames: Sequence[str] = ("localhost", "127.0.0.1")
) -> CertificateFiles:
    """
    Write a new CA and a server certificate signed by it into C{directory}
    (created), as C{ca.crt}, C{loadbalancer.key} and C{loadbalancer.crt}.
    """
    os.makedirs(directory, exist_ok=True)
    caKey, caCert = certs.makeCertificateAuthority()
    key, cert = certs.makeServerCertificate(caKey, caCert, hostnames)
    files = CertificateFiles(
        caCert=os.path.join(directory, "ca.crt"),
        serverKey=os.path.join(directory, "loadbalancer.key"),
        serverCert=os.path.join(directory, "loadbalancer.crt"),
        caPEM=certs.certificatePEM(caCert),
    )
    for path, content in [
        (files.caCert, files.caPEM),
        (files.serverKey, certs.privateKeyPEM(key)),
        (files.serverCert, certs.certificatePEM(cert)),
    ]:
        with open(path, "wb") as f:
            f.write(content)
    return files


def _read(path: str) -> bytes:
    """
    The contents of C{path}.
    """
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, content: bytes) -> str:
    """
    Write C{content} to C{path}; return C{path}.
    """
    with open(path, "wb") as f:
        f.write(content)
    return path


def _served(options: CertificateOptions) -> x509.Certificate:
    """
    The certificate that C{options} serve.
    """
    assert options.certificate is not None
    return options.certificate.to_cryptography()


class ServerOptionsFromFilesTests(SynchronousTestCase):
    """
    Tests for L{serverOptionsFromFiles}.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.files = writeCertificates(self.directory)

    def assertOneLineError(self, *args: str | None) -> str:
        """
        L{serverOptionsFromFiles} called with C{args} raises
        L{TLSConfigError} with a one-line message, which is returned.
        """
        error = self.assertRaises(TLSConfigError, serverOptionsFromFiles, *args)
        message = str(error)
        self.assertEqual(len(message.splitlines()), 1, message)
        return message

    def test_keyAndCertificate(self) -> None:
        """
        A key file and a matching certificate file make options that serve
        that certificate.
        """
        options = serverOptionsFromFiles(self.files.serverKey, self.files.serverCert)
        self.assertIsInstance(options, CertificateOptions)
        self.assertEqual(
            _served(options),
            x509.load_pem_x509_certificate(_read(self.files.serverCert)),
        )
        self.assertEqual(options.extraCertChain, [])
        options.getContext()

    def test_combinedFile(self) -> None:
        """
        Without a certificate path, the certificate is read from the key
        file, as Twisted's C{ssl:} endpoint does.
        """
        combined = _write(
            os.path.join(self.directory, "combined.pem"),
            _read(self.files.serverKey) + _read(self.files.serverCert),
        )
        options = serverOptionsFromFiles(combined)
        self.assertEqual(
            _served(options),
            x509.load_pem_x509_certificate(_read(self.files.serverCert)),
        )

    def test_fullChainFile(self) -> None:
        """
        Certificates after the first in the certificate file are sent as the
        chain, followed by those of the extra chain file.
        """
        fullChain = _write(
            os.path.join(self.directory, "fullchain.pem"),
            _read(self.files.serverCert) + self.files.caPEM,
        )
        options = serverOptionsFromFiles(self.files.serverKey, fullChain)
        ca = x509.load_pem_x509_certificate(self.files.caPEM)
        self.assertEqual([c.to_cryptography() for c in options.extraCertChain], [ca])
        options = serverOptionsFromFiles(self.files.serverKey, fullChain, self.files.caCert)
        self.assertEqual([c.to_cryptography() for c in options.extraCertChain], [ca, ca])

    def test_missingFile(self) -> None:
        """
        A missing key, certificate or chain file is a one-line error naming
        it.
        """
        missing = os.path.join(self.directory, "nope.pem")
        for args in [
            (missing, self.files.serverCert),
            (self.files.serverKey, missing),
            (self.files.serverKey, self.files.serverCert, missing),
        ]:
            message = self.assertOneLineError(*args)
            self.assertIn(repr(missing), message)
            self.assertIn("No such file", message)

    def test_mismatchedKey(self) -> None:
        """
        A key that does not belong to the certificate is a one-line error
        naming both files.
        """
        other = writeCertificates(os.path.join(self.directory, "other"))
        message = self.assertOneLineError(other.serverKey, self.files.serverCert)
        self.assertIn("does not match", message)
        self.assertIn(repr(other.serverKey), message)
        self.assertIn(repr(self.files.serverCert), message)

    def test_notPEM(self) -> None:
        """
        A key file without a key, or a certificate file without a
        certificate, is a one-line error naming it.
        """
        garbage = _write(os.path.join(self.directory, "garbage"), b"not PEM\n")
        self.assertIn(repr(garbage), self.assertOneLineError(garbage, self.files.serverCert))
        self.assertIn(repr(garbage), self.assertOneLineError(self.files.serverKey, garbage))
        self.assertIn(
            repr(self.files.serverCert),
            self.assertOneLineError(self.files.serverCert, self.files.serverCert),
        )

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is a one-line error saying so.
        """
        key = serialization.load_pem_private_key(_read(self.files.serverKey), None)
        encrypted = _write(
            os.path.join(self.directory, "encrypted.key"),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        message = self.assertOneLineError(encrypted, self.files.serverCert)
        self.assertIn("encrypted", message)


class AdhocServerOptionsTests(SynchronousTestCase):
    """
    Tests for L{adhocServerOptions}.
    """

    def test_selfSigned(self) -> None:
        """
        The ad-hoc options serve a new self-signed certificate for the given
        names, whose fingerprint is returned with them.
        """
        options, fingerprint = adhocServerOptions(["localhost"])
        cert = _served(options)
        self.assertEqual(cert.subject, cert.issuer)
        self.assertEqual(certs.fingerprintSHA256(cert), fingerprint)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])

    def test_newEachTime(self) -> None:
        """
        Each call makes a new certificate.
        """
        _, first = adhocServerOptions(["localhost"])
        _, second = adhocServerOptions(["localhost"])
        self.assertNotEqual(first, second)


class TLSServerEndpointUnitTests(SynchronousTestCase):
    """
    Tests for L{TLSServerEndpoint} that need no network.
    """

    def test_interface(self) -> None:
        """
        L{TLSServerEndpoint} provides L{IStreamServerEndpoint}.
        """
        memory = MemoryReactor()
        endpoint = TLSServerEndpoint(
            TCP4ServerEndpoint(memory, 0), adhocServerOptions(["localhost"])[0]
        )
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))

    def test_wrapsFactory(self) -> None:
        """
        Listening listens on the wrapped endpoint with a server-side TLS
        factory around the given factory.
        """
        memory = MemoryReactor()
        options, _ = adhocServerOptions(["localhost"])
        factory = Factory.forProtocol(Protocol)
        endpoint = TLSServerEndpoint(
            TCP4ServerEndpoint(memory, 4433, interface="127.0.0.1"), options
        )
        self.successResultOf(endpoint.listen(factory))
        [(port, tlsFactory, _, interface)] = memory.tcpServers
        self.assertEqual((port, interface), (4433, "127.0.0.1"))
        assert isinstance(tlsFactory, TLSMemoryBIOFactory)
        self.assertIs(tlsFactory.wrappedFactory, factory)


class _Echo(Protocol):
    """
    Sends back what it receives; fires C{closed} when the connection ends.
    """

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


@attrs.define
class _Result:
    """
    What a client saw of a TLS connection.
    """

    received: bytes = b""
    negotiatedProtocol: bytes | None = None
    peerCertificate: x509.Certificate | None = None


@implementer(IHandshakeListener)
class _PingClient(Protocol):
    """
    Once the TLS handshake is done, sends L{_PING} and closes when it has
    come back; C{done} fires with what it saw when the connection is lost,
    or fails with the reason if the handshake never completed.
    """

    def __init__(self) -> None:
        self.done: Deferred[_Result] = Deferred()
        self.result = _Result()
        self.handshakeDone = False

    def handshakeCompleted(self) -> None:
        transport = self.transport
        assert transport is not None
        self.handshakeDone = True
        self.result.negotiatedProtocol = transport.negotiatedProtocol  # type: ignore[attr-defined]
        peer = transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.result.peerCertificate = peer.to_cryptography()
        transport.write(_PING)

    def dataReceived(self, data: bytes) -> None:
        self.result.received += data
        if len(self.result.received) >= len(_PING):
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.handshakeDone:
            self.done.callback(self.result)
        else:
            self.done.errback(reason)


def _pythonClient(
    port: int,
    serverHostname: str,
    caPEM: bytes,
    configure: Callable[[ssl.SSLContext], None] = lambda context: None,
) -> bytes:
    """
    Connect to C{port} on 127.0.0.1 with Python's C{ssl} module and its
    default client context, strict as Python 3.13 makes it, trusting only
    C{caPEM}; send L{_PING} and return what comes back.  Blocking: run it in
    a thread.

    @param configure: changes the context before connecting.
    """
    context = ssl.create_default_context(cadata=caPEM.decode("ascii"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols(["h2", "http/1.1"])
    configure(context)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=serverHostname) as tls,
    ):
        if tls.selected_alpn_protocol() != "http/1.1":
            raise AssertionError(tls.selected_alpn_protocol())
        tls.sendall(_PING)
        received = b""
        while len(received) < len(_PING):
            chunk = tls.recv(len(_PING) - len(received))
            if not chunk:
                break
            received += chunk
        return received


class HandshakeTests(TestCase):
    """
    Real TLS handshakes with a L{TLSServerEndpoint} on a loopback port.
    """

    def setUp(self) -> None:
        self.files = writeCertificates(self.mktemp())
        self.serverClosed: list[Deferred[None]] = []
        self.addCleanup(lambda: gatherResults(self.serverClosed))

    def buildEcho(self, addr: object) -> _Echo:
        """
        A new echo protocol whose end the test waits for at clean-up.
        """
        protocol = _Echo()
        self.serverClosed.append(protocol.closed)
        return protocol

    async def serve(self, options: CertificateOptions | None = None) -> int:
        """
        Listen with TLS on a free loopback port, echoing, until the test
        ends.

        @param options: the TLS options; those of the test's certificate
            files if L{None}.

        @return: the port number.
        """
        if options is None:
            options = serverOptionsFromFiles(self.files.serverKey, self.files.serverCert)
        factory = Factory()
        factory.buildProtocol = self.buildEcho  # type: ignore[method-assign,assignment]
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), options)
        port: IListeningPort = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port  # type: ignore[attr-defined]
        return number

    async def connect(
        self,
        port: int,
        hostname: str,
        trustRoot: bytes,
        acceptableProtocols: list[bytes] | None = None,
    ) -> _Result:
        """
        Connect with Twisted's TLS client, verifying C{hostname} against the
        CA C{trustRoot}, and ping.
        """
        options = optionsForClientTLS(
            hostname,
            trustRoot=Certificate.loadPEM(trustRoot),
            acceptableProtocols=acceptableProtocols,
        )
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        client: _PingClient = await connectProtocol(endpoint, _PingClient())
        return await client.done

    async def test_localhost(self) -> None:
        """
        A client that trusts the CA completes the handshake for C{localhost}
        and bytes flow both ways.
        """
        port = await self.serve()
        result = await self.connect(port, "localhost", self.files.caPEM)
        self.assertEqual(result.received, _PING)

    async def test_ipAddress(self) -> None:
        """
        A client that trusts the CA completes the handshake for
        C{127.0.0.1}, matched against the certificate's IP addresses.
        """
        port = await self.serve()
        result = await self.connect(port, "127.0.0.1", self.files.caPEM)
        self.assertEqual(result.received, _PING)

    async def test_pythonDefaultContext(self) -> None:
        """
        Python's C{ssl} default context, with strict X.509 checks, accepts
        the certificate for C{localhost} and for C{127.0.0.1}.
        """
        port = await self.serve()
        for hostname in ["localhost", "127.0.0.1"]:
            received = await deferToThread(_pythonClient, port, hostname, self.files.caPEM)
            self.assertEqual(received, _PING)

    async def test_untrustedCA(self) -> None:
        """
        A client that trusts another CA fails the handshake.
        """
        port = await self.serve()
        other = writeCertificates(self.mktemp())
        with self.assertRaises(SSL.Error):
            await self.connect(port, "localhost", other.caPEM)

    async def test_wrongHostname(self) -> None:
        """
        A client that expects another host name fails the handshake.
        """
        port = await self.serve()
        with self.assertRaises(ssl.SSLCertVerificationError):
            await deferToThread(_pythonClient, port, "elsewhere.test", self.files.caPEM)

    async def test_alpn(self) -> None:
        """
        A client that offers C{h2} and C{http/1.1} by ALPN gets
        C{http/1.1}.
        """
        port = await self.serve()
        result = await self.connect(port, "localhost", self.files.caPEM, [b"h2", b"http/1.1"])
        self.assertEqual(result.negotiatedProtocol, b"http/1.1")

    async def test_adhocFingerprint(self) -> None:
        """
        The fingerprint returned with ad-hoc options is that of the
        certificate a client receives, which it can trust directly.
        """
        options, fingerprint = adhocServerOptions(["localhost", "127.0.0.1"])
        port = await self.serve(options)
        served = certs.certificatePEM(_served(options))
        result = await self.connect(port, "localhost", served)
        assert result.peerCertificate is not None
        self.assertEqual(certs.fingerprintSHA256(result.peerCertificate), fingerprint)
        received = await deferToThread(_pythonClient, port, "127.0.0.1", served)
        self.assertEqual(received, _PING)

    async def test_tls11Refused(self) -> None:
        """
        A client limited to TLS 1.1 cannot connect.
        """

        def tls11Only(context: ssl.SSLContext) -> None:
            try:
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
                context.minimum_version = ssl.TLSVersion.TLSv1_1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ValueError, ssl.SSLError) as e:
                raise _CannotConfigure(str(e)) from e

        port = await self.serve()
        try:
            await deferToThread(_pythonClient, port, "localhost", self.files.caPEM, tls11Only)
        except _CannotConfigure as e:
            self.skipTest(f"this ssl module cannot make a TLS 1.1 client: {e}")
        except ssl.SSLError as e:
            self.assertNotIsInstance(e, ssl.SSLCertVerificationError)
        else:
            self.fail("a TLS 1.1 client completed the handshake")


class _CannotConfigure(Exception):
    """
    The local C{ssl} module cannot set up the client a test needs.
    """
