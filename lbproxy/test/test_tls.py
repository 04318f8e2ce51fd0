"""
Tests for L{lbproxy.tls}: the policy, certificates, SNI and reload, and the
server endpoint.

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
from typing import cast

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
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy import certs
from lbproxy.tls.certificates import CertificateFiles as PEMFiles
from lbproxy.tls.certificates import TLSConfigError, adhocCertificate, parseCertOption
from lbproxy.tls.policy import TLS12_CIPHERS, TLS13_CIPHERSUITES, serverContext
from lbproxy.tls.server import TLSServerEndpoint
from lbproxy.tls.sni import ServerTLS, ServerTLSSettings, serverOptionsFromFiles

reactor: IReactorTCP = _globalReactor

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
    directory: str,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    rsa: bool = False,
) -> CertificateFiles:
    """
    Write a new CA and a server certificate signed by it into C{directory}
    (created), as C{ca.crt}, C{loadbalancer.key} and C{loadbalancer.crt}.

    @param rsa: make an RSA server key rather than an ECDSA one.
    """
    os.makedirs(directory, exist_ok=True)
    caKey, caCert = certs.makeCertificateAuthority()
    key, cert = certs.makeServerCertificate(
        caKey, caCert, hostnames, key=certs.newRSAKey() if rsa else None
    )
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


def _served(options: ServerTLS) -> x509.Certificate:
    """
    The default certificate that C{options} serve.
    """
    return options.certificate


def adhocServerOptions(hostnames: Sequence[str]) -> tuple[ServerTLS, str]:
    """
    Server TLS serving a new ad-hoc certificate for C{hostnames}, and its
    fingerprint.
    """
    source, fingerprint = adhocCertificate(hostnames)
    return ServerTLS(source), fingerprint


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
        self.assertIsInstance(options, ServerTLS)
        self.assertEqual(
            _served(options),
            x509.load_pem_x509_certificate(_read(self.files.serverCert)),
        )
        self.assertEqual(options.chain, ())

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
        self.assertEqual(options.chain, (ca,))
        options = serverOptionsFromFiles(self.files.serverKey, fullChain, self.files.caCert)
        self.assertEqual(options.chain, (ca, ca))

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
    Tests for L{adhocCertificate}.
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


class LoopbackTLSTestCase(TestCase):
    """
    A test case that serves TLS echo servers on loopback ports.
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

    async def serve(
        self, options: ServerTLS | None = None, closeNotifyTimeout: float | None = 5.0
    ) -> int:
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
        factory.buildProtocol = self.buildEcho  # type: ignore[method-assign]
        endpoint = TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            options,
            closeNotifyTimeout=closeNotifyTimeout,
        )
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


class _MemoryClient:
    """
    A blocking TLS client (Python's C{ssl} over memory BIOs, so that the
    test decides how the records go on the wire), for a thread.
    """

    def __init__(self, port: int, caPEM: bytes, timeout: float = 30) -> None:
        context = ssl.create_default_context(cadata=caPEM.decode("ascii"))
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname="localhost")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self._outgoing.read())
                self._receive()
        self.sock.sendall(self._outgoing.read())

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self._incoming.write(data)

    def __enter__(self) -> _MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def ping(self) -> bytes:
        """
        Send L{_PING} and read its echo.
        """
        self.sock.sendall(self.records(_PING))
        return self.read(len(_PING))

    def closeNotify(self) -> None:
        """
        Send a close_notify (and nothing else).
        """
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # (the server's answer is read raw, by readToEnd)
        self.sock.sendall(self._outgoing.read())

    def records(self, data: bytes) -> bytes:
        """
        The TLS records that carry C{data}.
        """
        self.tls.write(data)
        return self._outgoing.read()

    def read(self, size: int) -> bytes:
        """
        Read C{size} bytes of application data.
        """
        received = b""
        while len(received) < size:
            try:
                received += self.tls.read(size - len(received))
            except ssl.SSLWantReadError:
                self._receive()
        return received

    def readToEnd(self) -> bytes:
        """
        Whatever the server still sends, raw, until it closes.
        """
        received = b""
        while chunk := self.sock.recv(65536):
            received += chunk
        return received


def _track(protocol: _Echo, closed: list[Deferred[None]]) -> _Echo:
    closed.append(protocol.closed)
    return protocol


class DataPathTests(LoopbackTLSTestCase):
    """
    The edge's TLS data path (L{lbproxy._twisted.tls.EdgeTLSProtocol}, which
    calls OpenSSL directly once the handshake is done) on real sockets:
    records split across reads, writes above a record, a clean close and a
    bad record.
    """

    timeout = 30  # (clients give up after 10 s of silence: a hang fails)

    async def test_recordsByteByByte(self) -> None:
        """
        Records sent a byte at a time (each read ends mid-record) are
        decrypted whole: the echo comes back complete.
        """
        port = await self.serve()
        payload = bytes(range(256)) * 20

        def run() -> bytes:
            with _MemoryClient(port, self.files.caPEM) as client:
                records = client.records(payload)
                for index in range(len(records)):
                    client.sock.send(records[index : index + 1])
                return client.read(len(payload))

        self.assertEqual(await deferToThread(run), payload)

    async def test_largeWrites(self) -> None:
        """
        Writes larger than a TLS record (1 MiB at once) arrive intact, and
        many small ones in a row too.
        """
        port = await self.serve()
        big = os.urandom(1024 * 1024)

        def run() -> tuple[bytes, bytes]:
            with _MemoryClient(port, self.files.caPEM) as client:
                client.sock.sendall(client.records(big))
                echoedBig = client.read(len(big))
                small = b"".join(b"%05d" % (n,) for n in range(2000))
                for n in range(0, len(small), 5):
                    client.sock.sendall(client.records(small[n : n + 5]))
                return echoedBig, client.read(len(small))

        echoedBig, echoedSmall = await deferToThread(run)
        self.assertEqual(echoedBig, big)
        self.assertEqual(echoedSmall, b"".join(b"%05d" % (n,) for n in range(2000)))

    async def test_writesOfOtherBuffers(self) -> None:
        """
        A write of a C{bytearray} or a C{memoryview} (which OpenSSL's call
        cannot take as it is) is sent as pyOpenSSL sends it.
        """
        closed: list[Deferred[None]] = self.serverClosed

        class _Buffers(_Echo):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(bytearray(data[:3]))  # type: ignore[arg-type]
                self.transport.write(memoryview(data)[3:])  # type: ignore[arg-type]

        self.buildEcho = lambda addr: _track(_Buffers(), closed)  # type: ignore[method-assign]
        port = await self.serve()

        def run() -> bytes:
            with _MemoryClient(port, self.files.caPEM) as client:
                return client.ping()

        self.assertEqual(await deferToThread(run), _PING)

    async def test_closeNotifyUnanswered(self) -> None:
        """
        A client that neither answers the server's close_notify nor closes
        does not hold the connection: the server closes it once the wait
        for the client's close_notify is over (TCP end of stream).
        """
        closed: list[Deferred[None]] = self.serverClosed

        class _AnswerAndClose(_Echo):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data)
                self.transport.loseConnection()

        self.buildEcho = lambda addr: _track(_AnswerAndClose(), closed)  # type: ignore[method-assign]
        port = await self.serve(closeNotifyTimeout=0.05)

        def run() -> bytes:
            with _MemoryClient(port, self.files.caPEM, timeout=10) as client:
                client.sock.sendall(client.records(_PING))
                # Read raw to the end, never answering the close_notify in
                # it (a socket timeout here is the failure).
                return client.readToEnd()

        raw = await deferToThread(run)
        self.assertTrue(raw)
        await closed[0]

    async def test_closeNotify(self) -> None:
        """
        A client's close_notify ends the connection cleanly: the server
        answers with its own and closes.
        """
        port = await self.serve()

        def run() -> bytes:
            with _MemoryClient(port, self.files.caPEM, timeout=10) as client:
                client.ping()
                client.closeNotify()
                return client.readToEnd()

        rest = await deferToThread(run)
        self.assertTrue(rest, "no close_notify from the server")
        await self.serverClosed[0]

    async def test_badRecord(self) -> None:
        """
        A record that does not decrypt ends the connection (an alert, then
        the close), and the server's protocol is told: nothing hangs.
        """
        port = await self.serve()

        def run() -> bytes:
            with _MemoryClient(port, self.files.caPEM, timeout=10) as client:
                client.ping()
                record = bytearray(client.records(_PING))
                record[-1] ^= 0xFF  # the authentication tag no longer matches
                client.sock.sendall(bytes(record))
                return client.readToEnd()

        await deferToThread(run)
        await self.serverClosed[0]


class HandshakeTests(LoopbackTLSTestCase):
    """
    Real TLS handshakes with a L{TLSServerEndpoint} on a loopback port.
    """

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


@attrs.frozen
class _Negotiated:
    """
    What Python's C{ssl} client saw of a handshake.
    """

    version: str | None
    cipher: str
    compression: str | None
    alpn: str | None
    resumed: bool


def _clientContext(
    caPEM: bytes,
    configure: Callable[[ssl.SSLContext], None] = lambda context: None,
    alpn: Sequence[str] = ("h2", "http/1.1"),
) -> ssl.SSLContext:
    """
    A Python C{ssl} client context trusting C{caPEM}, offering C{alpn},
    changed by C{configure}.
    """
    context = ssl.create_default_context(cadata=caPEM.decode("ascii"))
    context.set_alpn_protocols(list(alpn))
    configure(context)
    return context


def _handshake(
    port: int,
    caPEM: bytes,
    configure: Callable[[ssl.SSLContext], None] = lambda context: None,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    session: ssl.SSLSession | None = None,
    context: ssl.SSLContext | None = None,
    serverHostname: str = "localhost",
) -> tuple[_Negotiated, ssl.SSLSession | None]:
    """
    Connect to C{port} on 127.0.0.1 as C{serverHostname} with Python's
    C{ssl} module, trusting C{caPEM} (or with C{context}), ping the echo
    server and report what was negotiated, with the session to resume.
    Blocking: run it in a thread.
    """
    if context is None:
        context = _clientContext(caPEM, configure, alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=serverHostname, session=session) as tls,
    ):
        tls.sendall(_PING)
        received = b""
        while len(received) < len(_PING):
            chunk = tls.recv(len(_PING))
            if not chunk:
                break
            received += chunk
        cipher = tls.cipher()
        assert cipher is not None
        negotiated = _Negotiated(
            version=tls.version(),
            cipher=cipher[0],
            compression=tls.compression(),
            alpn=tls.selected_alpn_protocol(),
            resumed=bool(tls.session_reused),
        )
        return negotiated, tls.session


def _tls12(ciphers: str | None = None) -> Callable[[ssl.SSLContext], None]:
    """
    Configure a client context for TLS 1.2 only, offering C{ciphers} (an
    OpenSSL cipher string) in that order if given.
    """

    def configure(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers is not None:
            context.set_ciphers(ciphers)

    return configure


class ProfileTests(LoopbackTLSTestCase):
    """
    The server TLS policy (Mozilla "intermediate", or "modern" with a
    minimum of TLS 1.3), checked by real handshakes on a loopback port.
    """

    async def negotiate(
        self,
        options: ServerTLS | None = None,
        configure: Callable[[ssl.SSLContext], None] = lambda context: None,
        caPEM: bytes | None = None,
        alpn: Sequence[str] = ("h2", "http/1.1"),
    ) -> _Negotiated:
        """
        Serve C{options} and handshake with Python's C{ssl} client.
        """
        port = await self.serve(options)
        negotiated, _ = await deferToThread(
            _handshake, port, caPEM or self.files.caPEM, configure, alpn
        )
        return negotiated

    async def test_tls13ByDefault(self) -> None:
        """
        A default client negotiates TLS 1.3 with an AEAD suite, no
        compression and ALPN C{http/1.1}.
        """
        negotiated = await self.negotiate()
        self.assertEqual(negotiated.version, "TLSv1.3")
        self.assertIn(negotiated.cipher, TLS13_CIPHERSUITES.split(":"))
        self.assertIsNone(negotiated.compression)
        self.assertEqual(negotiated.alpn, "http/1.1")

    async def test_tls12ForwardSecretAEAD(self) -> None:
        """
        A TLS 1.2 client gets an ECDHE AEAD suite.
        """
        negotiated = await self.negotiate(configure=_tls12())
        self.assertEqual(negotiated.version, "TLSv1.2")
        self.assertIn(negotiated.cipher, TLS12_CIPHERS.split(":"))
        self.assertTrue(negotiated.cipher.startswith("ECDHE-"), negotiated.cipher)

    async def test_weakSuitesRefused(self) -> None:
        """
        A TLS 1.2 client that offers only CBC suites, or only suites
        without forward secrecy, cannot connect.
        """
        port = await self.serve()
        for ciphers in [
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256",
            "AES128-GCM-SHA256:AES256-GCM-SHA384",
        ]:
            with self.assertRaises(ssl.SSLError):
                await deferToThread(_handshake, port, self.files.caPEM, _tls12(ciphers))

    async def test_serverCipherPreference(self) -> None:
        """
        The server's order decides: a TLS 1.2 client that prefers
        ChaCha20 and AES-256 still gets AES-128-GCM, the server's first.
        """
        negotiated = await self.negotiate(
            configure=_tls12(
                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384"
                ":ECDHE-ECDSA-AES128-GCM-SHA256"
            )
        )
        self.assertEqual(negotiated.cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")

    async def test_rsaCertificate(self) -> None:
        """
        An RSA certificate works too: TLS 1.2 clients get an ECDHE-RSA AEAD
        suite and TLS 1.3 clients TLS 1.3.
        """
        files = writeCertificates(self.mktemp(), rsa=True)
        options = serverOptionsFromFiles(files.serverKey, files.serverCert)
        port = await self.serve(options)
        negotiated, _ = await deferToThread(_handshake, port, files.caPEM, _tls12())
        self.assertEqual(negotiated.cipher, "ECDHE-RSA-AES128-GCM-SHA256")
        negotiated, _ = await deferToThread(_handshake, port, files.caPEM)
        self.assertEqual(negotiated.version, "TLSv1.3")

    async def test_alpnWithoutOverlap(self) -> None:
        """
        A client that offers only C{h2} by ALPN still connects, with no
        protocol selected: lbproxy offers only C{http/1.1}.
        """
        negotiated = await self.negotiate(alpn=["h2"])
        self.assertIsNone(negotiated.alpn)

    async def test_modern(self) -> None:
        """
        With a minimum of TLS 1.3, a TLS 1.2 client cannot connect and a
        default client gets TLS 1.3.
        """
        options = serverOptionsFromFiles(
            self.files.serverKey,
            self.files.serverCert,
            settings=ServerTLSSettings(minimumVersion="1.3"),
        )
        port = await self.serve(options)
        with self.assertRaises(ssl.SSLError):
            await deferToThread(_handshake, port, self.files.caPEM, _tls12())
        negotiated, _ = await deferToThread(_handshake, port, self.files.caPEM)
        self.assertEqual(negotiated.version, "TLSv1.3")

    async def comeBack(self, options: ServerTLS | None = None) -> list[tuple[bool, bool]]:
        """
        Serve C{options}; connect twice in TLS 1.2, then twice in TLS 1.3,
        each second time offering the first connection's session.

        @return: whether each connection resumed, per version.
        """
        port = await self.serve(options)
        resumed = []
        for configure in [_tls12(), lambda context: None]:
            context = _clientContext(self.files.caPEM, configure)
            first, session = await deferToThread(_handshake, port, b"", context=context)
            again, _ = await deferToThread(_handshake, port, b"", session=session, context=context)
            resumed.append((first.resumed, again.resumed))
        return resumed

    async def test_sessionResumption(self) -> None:
        """
        A client that comes back with its session resumes it, in TLS 1.2
        and in TLS 1.3 (session tickets).
        """
        self.assertEqual(await self.comeBack(), [(False, True), (False, True)])

    async def test_sessionResumptionOff(self) -> None:
        """
        With resumption off, a client that comes back with its session gets
        a full handshake, in TLS 1.2 and in TLS 1.3.
        """
        options = serverOptionsFromFiles(
            self.files.serverKey,
            self.files.serverCert,
            settings=ServerTLSSettings(resumption=False),
        )
        self.assertEqual(await self.comeBack(options), [(False, False), (False, False)])


def _pump(*connections: SSL.Connection) -> None:
    """
    Move bytes between two memory-BIO connections until neither has more
    to send.
    """
    client, server = connections
    moved = True
    while moved:
        moved = False
        for source, destination in [(client, server), (server, client)]:
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                destination.bio_write(data)
                moved = True


def _step(connection: SSL.Connection) -> None:
    """
    Advance C{connection}'s handshake as far as it can go without more
    input.
    """
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass


def _memoryHandshake(clientContext: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    """
    Handshake over memory BIOs between a client on C{clientContext} and a
    server with an ad-hoc certificate and lbproxy's policy.

    @return: the client and server connections, handshake complete.

    @raise SSL.Error: if the handshake fails.
    """
    options, _ = adhocServerOptions(["localhost"])
    server = options.serverConnectionForTLS(None)  # type: ignore[arg-type]
    server.set_accept_state()
    client = SSL.Connection(clientContext, None)
    client.set_connect_state()
    for _ in range(3):
        _step(client)
        _pump(client, server)
        _step(server)
        _pump(client, server)
    return client, server


class RenegotiationTests(SynchronousTestCase):
    """
    Client-initiated renegotiation, over memory BIOs.
    """

    def test_refused(self) -> None:
        """
        A TLS 1.2 client that asks to renegotiate gets a C{no_renegotiation}
        alert and the server does not renegotiate.
        """
        clientContext = SSL.Context(SSL.TLS_METHOD)
        clientContext.set_max_proto_version(SSL.TLS1_2_VERSION)
        client, server = _memoryHandshake(clientContext)
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        self.assertTrue(client.renegotiate())
        _step(client)
        _pump(client, server)
        self.assertRaises(SSL.WantReadError, server.recv, 100)
        _pump(client, server)
        error = self.assertRaises(SSL.Error, client.recv, 100)
        self.assertIn("no renegotiation", str(error))
        self.assertEqual(server.total_renegotiations(), 0)


def _servedTo(port: int, serverHostname: str | None) -> x509.Certificate:
    """
    The certificate the server on C{port} presents to a client that sends
    C{serverHostname} by SNI (none if L{None}), without verifying it.
    Blocking: run it in a thread.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=serverHostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _resumedByName(port: int, serverHostname: str, tls12: bool) -> tuple[bool, bool]:
    """
    Connect twice to the echo server on C{port}, sending C{serverHostname}
    by SNI, without verifying the certificate, the second time offering the
    first connection's session.  Blocking: run it in a thread.

    @param tls12: whether the client stops at TLS 1.2.

    @return: whether each connection resumed a session.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12:
        _tls12()(context)
    first, session = _handshake(port, b"", context=context, serverHostname=serverHostname)
    again, _ = _handshake(
        port, b"", session=session, context=context, serverHostname=serverHostname
    )
    return first.resumed, again.resumed


def _writeCombined(
    directory: str, name: str, hostnames: Sequence[str]
) -> tuple[str, x509.Certificate]:
    """
    Write a new self-signed key and certificate for C{hostnames} into one
    PEM file C{name} in C{directory} (created).

    @return: the path and the certificate.
    """
    os.makedirs(directory, exist_ok=True)
    key, cert = certs.makeSelfSigned(hostnames)
    path = _write(
        os.path.join(directory, name), certs.privateKeyPEM(key) + certs.certificatePEM(cert)
    )
    return path, cert


class SNITests(LoopbackTLSTestCase):
    """
    Certificates chosen by the server name a client sends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = self.mktemp()
        self.aPath, self.a = _writeCombined(self.directory, "a.pem", ["a.test"])
        self.wildPath, self.wild = _writeCombined(self.directory, "wild.pem", ["*.b.test"])
        _write(os.path.join(self.directory, "README"), b"not a certificate\n")
        self.default = x509.load_pem_x509_certificate(_read(self.files.serverCert))

    def serverTLS(self, settings: ServerTLSSettings) -> ServerTLS:
        """
        Server TLS with the test's files as the default certificate.
        """
        return serverOptionsFromFiles(
            self.files.serverKey, self.files.serverCert, settings=settings
        )

    async def test_byName(self) -> None:
        """
        A client naming a host of a C{--cert} certificate gets it; a
        wildcard covers one label; other names, and clients that send no
        name, get the listener's own certificate.
        """
        settings = ServerTLSSettings(certificates=(PEMFiles(self.aPath), PEMFiles(self.wildPath)))
        port = await self.serve(self.serverTLS(settings))
        for name, expected in [
            ("a.test", self.a),
            ("A.TEST", self.a),
            ("x.b.test", self.wild),
            ("x.y.b.test", self.default),
            ("b.test", self.default),
            ("other.test", self.default),
            (None, self.default),
        ]:
            served = await deferToThread(_servedTo, port, name)
            self.assertEqual(served, expected, name)

    async def test_directory(self) -> None:
        """
        Every C{*.pem} file of a C{--cert-dir} directory is chosen by its
        names; other files are ignored.
        """
        port = await self.serve(self.serverTLS(ServerTLSSettings(directories=(self.directory,))))
        self.assertEqual(await deferToThread(_servedTo, port, "a.test"), self.a)
        self.assertEqual(await deferToThread(_servedTo, port, "c.b.test"), self.wild)

    async def test_resumptionByName(self) -> None:
        """
        A client of a certificate chosen by name resumes its session, in
        TLS 1.2 and 1.3; with resumption off it cannot.
        """
        for resumption in [True, False]:
            settings = ServerTLSSettings(
                certificates=(PEMFiles(self.aPath),), resumption=resumption
            )
            port = await self.serve(self.serverTLS(settings))
            for tls12 in [True, False]:
                self.assertEqual(
                    await deferToThread(_resumedByName, port, "a.test", tls12),
                    (False, resumption),
                    (resumption, tls12),
                )

    def test_sameNameTwice(self) -> None:
        """
        Two certificates for the same server name are a one-line error
        naming both files.
        """
        other, _ = _writeCombined(self.mktemp(), "again.pem", ["a.test"])
        settings = ServerTLSSettings(certificates=(PEMFiles(self.aPath), PEMFiles(other)))
        error = self.assertRaises(TLSConfigError, self.serverTLS, settings)
        self.assertIn("'a.test'", str(error))
        self.assertIn(repr(other), str(error))
        self.assertIn(repr(self.aPath), str(error))

    def test_missingDirectory(self) -> None:
        """
        A C{--cert-dir} that cannot be read is a one-line error naming it.
        """
        missing = os.path.join(self.directory, "nope")
        error = self.assertRaises(
            TLSConfigError, self.serverTLS, ServerTLSSettings(directories=(missing,))
        )
        self.assertIn(repr(missing), str(error))


class ParseCertOptionTests(SynchronousTestCase):
    """
    Tests for L{parseCertOption}.
    """

    def test_forms(self) -> None:
        """
        C{--cert} takes one combined file or C{KEY:CERT}; a backslash
        escapes a colon.
        """
        self.assertEqual(parseCertOption("site.pem"), PEMFiles("site.pem"))
        self.assertEqual(parseCertOption("k.key:c.crt"), PEMFiles("k.key", "c.crt"))
        self.assertEqual(parseCertOption(r"C\:k.key:c.crt"), PEMFiles("C:k.key", "c.crt"))

    def test_bad(self) -> None:
        """
        An empty part or more than two parts is an error.
        """
        for value in ["", "k:", ":c", "a:b:c"]:
            self.assertRaises(TLSConfigError, parseCertOption, value)


class ReloadTests(LoopbackTLSTestCase):
    """
    L{ServerTLS.reload}: new handshakes get the files' new contents,
    connections already open keep theirs.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def replaceFiles(self) -> x509.Certificate:
        """
        Write a new key and certificate over the test's files; return the
        new certificate.
        """
        new = writeCertificates(self.mktemp())
        _write(self.files.serverKey, _read(new.serverKey))
        _write(self.files.serverCert, _read(new.serverCert))
        return x509.load_pem_x509_certificate(_read(new.serverCert))

    async def test_newHandshakes(self) -> None:
        """
        After a reload, new connections get the new certificate (default and
        SNI), while a connection made before keeps working.
        """
        directory = self.mktemp()
        _writeCombined(directory, "a.pem", ["a.test"])
        options = serverOptionsFromFiles(
            self.files.serverKey,
            self.files.serverCert,
            settings=ServerTLSSettings(directories=(directory,)),
        )
        port = await self.serve(options)
        old = x509.load_pem_x509_certificate(_read(self.files.serverCert))
        client = _PingClient()
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(self.files.caPEM)),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        handshook: Deferred[None] = Deferred()
        client.handshakeCompleted = lambda: handshook.callback(None)  # type: ignore[method-assign]
        await connectProtocol(endpoint, client)
        await handshook
        new = self.replaceFiles()
        _, newA = _writeCombined(directory, "a.pem", ["a.test"])
        _, b = _writeCombined(directory, "b.pem", ["b.test"])
        self.assertTrue(options.reload())
        self.assertEqual(await deferToThread(_servedTo, port, "localhost"), new)
        self.assertEqual(await deferToThread(_servedTo, port, "a.test"), newA)
        self.assertEqual(await deferToThread(_servedTo, port, "b.test"), b)
        self.assertEqual(options.certificate, new)
        assert client.transport is not None
        client.handshakeDone = True
        client.transport.write(_PING)
        result = await client.done
        self.assertEqual(result.received, _PING)
        peer = client.transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.assertEqual(peer.to_cryptography(), old)

    async def test_badFileKeepsOld(self) -> None:
        """
        If a file cannot be used at reload, one error line is logged, the
        old certificate is still served and L{ServerTLS.reload} says so.
        """
        options = serverOptionsFromFiles(self.files.serverKey, self.files.serverCert)
        port = await self.serve(options)
        old = options.certificate
        new = writeCertificates(self.mktemp())
        _write(self.files.serverCert, _read(new.serverCert))
        self.assertFalse(options.reload())
        self.assertEqual(await deferToThread(_servedTo, port, "localhost"), old)
        errors = [e for e in self.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1)
        message = formatEvent(errors[0])
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn("does not match", message)
        self.assertIn("keeping the old", message)


class KeyExchangeGroupTests(SynchronousTestCase):
    """
    The key exchange groups the server accepts, over memory BIOs.
    """

    def handshake(self, groups: bytes) -> SSL.Connection:
        """
        Handshake with a client limited to C{groups} (an OpenSSL groups
        list); return the client connection.
        """
        from OpenSSL._util import lib

        clientContext = SSL.Context(SSL.TLS_METHOD)
        self.assertEqual(lib.SSL_CTX_set1_curves_list(clientContext._context, groups), 1)
        client, _ = _memoryHandshake(clientContext)
        return client

    def test_mozillaGroups(self) -> None:
        """
        Clients offering only X25519, only P-256 or only P-384 connect.
        """
        for groups in [b"X25519", b"P-256", b"P-384"]:
            client = self.handshake(groups)
            self.assertEqual(client.get_protocol_version_name(), "TLSv1.3", groups)

    def test_otherGroupsRefused(self) -> None:
        """
        Clients offering only X448 or only P-521 cannot connect.
        """
        for groups in [b"X448", b"P-521"]:
            self.assertRaises(SSL.Error, self.handshake, groups)


class ResumptionSettingTests(SynchronousTestCase):
    """
    What L{serverContext} sets for resumption, beside the handshakes that
    show it (L{ProfileTests.test_sessionResumptionOff}).
    """

    def context(self, resumption: bool) -> SSL.Context:
        """
        A server context for a new ad-hoc certificate.
        """
        source, _ = adhocCertificate(["localhost"])
        return serverContext("1.2", source.load(), resumption=resumption)

    def test_on(self) -> None:
        """
        By default the server keeps a session cache and issues session
        tickets.
        """
        context = self.context(True)
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_SERVER)
        self.assertFalse(context.set_options(0) & SSL.OP_NO_TICKET)

    def test_off(self) -> None:
        """
        With resumption off, both are off: tickets alone would leave
        OpenSSL resuming sessions from its cache.
        """
        context = self.context(False)
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
