"""
Tests for L{lbproxy.listen}.
"""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvidedBy

from lbproxy.listen import (
    DEFAULT_LISTEN,
    ListenError,
    ListenSpec,
    missingCertificateFiles,
    parseListen,
    serverEndpointForListen,
)
from lbproxy.test.test_tls import writeCertificates
from lbproxy.tls.certificates import adhocCertificate
from lbproxy.tls.server import TLSServerEndpoint
from lbproxy.tls.sni import ServerTLS


class ParseListenTests(SynchronousTestCase):
    """
    Tests for L{parseListen}.
    """

    def assertListenError(self, description: str, *fragments: str) -> str:
        """
        L{parseListen} rejects C{description} with a one-line message that
        holds each of C{fragments}; return the message.
        """
        error = self.assertRaises(ListenError, parseListen, description)
        message = str(error)
        self.assertEqual(len(message.splitlines()), 1, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_default(self) -> None:
        """
        The default listens with TLS on port 443 with the files that
        C{python -m lbproxy.certs} writes.
        """
        self.assertEqual(
            parseListen(DEFAULT_LISTEN),
            ListenSpec(
                description=DEFAULT_LISTEN,
                isTLS=True,
                port=443,
                privateKey="certs/loadbalancer.key",
                certKey="certs/loadbalancer.crt",
            ),
        )

    def test_sslOptions(self) -> None:
        """
        All C{ssl:} options are parsed, the port also by name.
        """
        spec = parseListen(
            "ssl:port=8443:interface=127.0.0.1:backlog=10:privateKey=k.pem"
            ":certKey=c.pem:extraCertChain=chain.pem"
        )
        self.assertEqual(
            (spec.port, spec.interface, spec.backlog),
            (8443, "127.0.0.1", 10),
        )
        self.assertEqual(
            (spec.privateKey, spec.certKey, spec.extraCertChain),
            ("k.pem", "c.pem", "chain.pem"),
        )
        self.assertFalse(spec.isAdhoc)

    def test_escapedColons(self) -> None:
        """
        A backslash escapes a colon inside a value, as in every Twisted
        endpoint string.
        """
        spec = parseListen(r"ssl:8443:interface=\:\:1:privateKey=C\:/keys/k.pem:certKey=a\\b=c.pem")
        self.assertEqual(spec.interface, "::1")
        self.assertEqual(spec.privateKey, "C:/keys/k.pem")
        self.assertEqual(spec.certKey, "a\\b=c.pem")

    def test_sslWithoutKey(self) -> None:
        """
        An C{ssl:} description without C{privateKey} is ad hoc.
        """
        spec = parseListen("ssl:8443")
        self.assertTrue(spec.isTLS)
        self.assertTrue(spec.isAdhoc)
        self.assertEqual((spec.port, spec.interface, spec.backlog), (8443, "", 50))

    def test_otherTypes(self) -> None:
        """
        Other endpoint types are not TLS and are left whole for Twisted.
        """
        for description in ["tcp:8080", "tcp6:8080:interface=\\:\\:1", "unix:/s"]:
            spec = parseListen(description)
            self.assertEqual(spec, ListenSpec(description=description, isTLS=False))
            self.assertFalse(spec.isAdhoc)

    def test_empty(self) -> None:
        """
        An empty or blank description is refused.
        """
        self.assertListenError("", "empty")
        self.assertListenError("  ", "empty")

    def test_noType(self) -> None:
        """
        A description without an endpoint type is refused, suggesting one
        for a bare port number.
        """
        self.assertListenError(":443", "no endpoint type")
        self.assertListenError("443", "ssl:443", "tcp:443")

    def test_badSSL(self) -> None:
        """
        C{ssl:} descriptions with a bad or missing port or backlog, unknown,
        refused, repeated or positional options, a file but no
        C{privateKey}, an empty file name, or a trailing backslash are refused, quoting the
        description.
        """
        cases = [
            ("ssl", "needs a port"),
            ("ssl:", "port"),
            ("ssl:https", "port"),
            ("ssl:70000", "port"),
            ("ssl:443:backlog=many", "backlog"),
            ("ssl:443:colour=blue", "unknown ssl option 'colour'"),
            ("ssl:443:sslmethod=TLSv1_2_METHOD", "sslmethod is not supported"),
            ("ssl:443:dhParameters=dh.pem", "dhParameters is not supported"),
            ("ssl:443:privateKey=a:privateKey=b", "given twice"),
            ("ssl:443:server.pem", "name=value"),
            ("ssl:443:port=443", "name=value"),
            ("ssl:443:certKey=c.pem", "certKey needs privateKey"),
            ("ssl:443:extraCertChain=e.pem", "extraCertChain needs privateKey"),
            ("ssl:443:privateKey=k\\", "backslash"),
            ("ssl:443:privateKey=", "privateKey names no file"),
            ("ssl:443:privateKey=k:certKey=", "certKey names no file"),
        ]
        for description, fragment in cases:
            message = self.assertListenError(description, fragment)
            self.assertIn(repr(description), message)


class ServerEndpointForListenTests(SynchronousTestCase):
    """
    Tests for L{serverEndpointForListen}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.files = writeCertificates(self.mktemp())

    def assertEndpointError(self, description: str, *fragments: str) -> None:
        """
        L{serverEndpointForListen} without ad-hoc options refuses
        C{description} with a one-line L{ListenError} that quotes it and
        holds each of C{fragments}.
        """
        error = self.assertRaises(
            ListenError,
            serverEndpointForListen,
            self.reactor,
            parseListen(description),
            None,
        )
        message = str(error)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn(f"cannot use --listen {description!r}", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def listen(self, endpoint: object) -> tuple[int, object, int, str]:
        """
        Listen on C{endpoint} with the memory reactor; return the port,
        factory, backlog and interface it asked for.
        """
        assert isinstance(endpoint, TLSServerEndpoint)
        self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        [server] = self.reactor.tcpServers
        port, factory, backlog, interface = server
        return port, factory, backlog, interface

    def test_handshakeTimeout(self) -> None:
        """
        A client that connects to an C{ssl:} listener and never completes
        its handshake is dropped after the handshake timeout (10 s by
        default), not kept until the HTTP idle timeout.
        """
        spec = parseListen(
            f"ssl:8443:privateKey={self.files.serverKey}:certKey={self.files.serverCert}"
        )
        endpoint = serverEndpointForListen(self.reactor, spec, None)
        _port, factory, _backlog, _interface = self.listen(endpoint)
        assert isinstance(factory, TLSMemoryBIOFactory)
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        connection.makeConnection(transport)
        self.reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_sslWithFiles(self) -> None:
        """
        An C{ssl:} description with key and certificate files listens with
        TLS on the given TCP port, interface and backlog.
        """
        spec = parseListen(
            f"ssl:8443:interface=127.0.0.1:backlog=7:privateKey={self.files.serverKey}"
            f":certKey={self.files.serverCert}"
        )
        endpoint = serverEndpointForListen(self.reactor, spec, None)
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        assert isinstance(endpoint, TLSServerEndpoint)
        self.assertIsInstance(endpoint.wrapped, TCP4ServerEndpoint)
        port, factory, backlog, interface = self.listen(endpoint)
        self.assertEqual((port, backlog, interface), (8443, 7, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        # Each write is encrypted and sent at once, not held for a timer
        # (Twisted's default BufferingTLSTransport): no timer per response.
        assert isinstance(factory, TLSMemoryBIOFactory)
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.assertNotIsInstance(connection, BufferingTLSTransport)
        # Its cheaper start leaves the protocol declaring what Twisted's
        # makeConnection leaves it declaring, for two connections in a row.
        twistedFactory = TLSMemoryBIOFactory(
            endpoint.contextFactory,
            False,
            Factory.forProtocol(Protocol),
        )
        twistedFactory.protocol = TLSMemoryBIOProtocol
        for _ in range(2):
            ours = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
            theirs = twistedFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
            ours.makeConnection(StringTransport())
            theirs.makeConnection(StringTransport())
            self.assertEqual(list(directlyProvidedBy(ours)), list(directlyProvidedBy(theirs)))
            self.assertTrue(list(directlyProvidedBy(ours)))

    def test_sslIPv6Interface(self) -> None:
        """
        An escaped IPv6 interface reaches the TCP endpoint intact.
        """
        spec = parseListen(r"ssl:0:interface=\:\:1")
        source, _ = adhocCertificate(["localhost"])
        endpoint = serverEndpointForListen(self.reactor, spec, source)
        port, _, _, interface = self.listen(endpoint)
        self.assertEqual((port, interface), (0, "::1"))

    def test_sslAdhoc(self) -> None:
        """
        An C{ssl:} description without C{privateKey} uses the ad-hoc
        options.
        """
        source, _ = adhocCertificate(["localhost"])
        endpoint = serverEndpointForListen(self.reactor, parseListen("ssl:0"), source)
        assert isinstance(endpoint, TLSServerEndpoint)
        assert isinstance(endpoint.contextFactory, ServerTLS)
        self.assertIs(endpoint.contextFactory.default, source)

    def test_sslWithoutKeyOrAdhoc(self) -> None:
        """
        An C{ssl:} description without C{privateKey} and without ad-hoc
        options is refused, suggesting C{--adhoc} or C{privateKey}.
        """
        self.assertEndpointError("ssl:0", "privateKey", "--adhoc")

    def test_sslBadFiles(self) -> None:
        """
        A missing certificate file or one that does not match the key is a
        one-line L{ListenError} quoting the description and naming the file.
        """
        other = writeCertificates(self.mktemp())
        missing = os.path.join(self.mktemp(), "missing.crt")
        for certKey in [missing, other.serverCert]:
            description = f"ssl:0:privateKey={self.files.serverKey}:certKey={certKey}"
            self.assertEndpointError(description, certKey)

    def test_otherTypesByTwisted(self) -> None:
        """
        Other endpoint types are made by Twisted's C{serverFromString}.
        """
        cases = [
            ("tcp:8080", TCP4ServerEndpoint),
            ("tcp6:8080:interface=\\:\\:1", TCP6ServerEndpoint),
            ("unix:/tmp/lbproxy.sock", UNIXServerEndpoint),
        ]
        for description, endpointType in cases:
            endpoint = serverEndpointForListen(self.reactor, parseListen(description), None)
            self.assertIsInstance(endpoint, endpointType)

    def test_twistedErrors(self) -> None:
        """
        Descriptions Twisted cannot parse become one-line L{ListenError}s
        quoting the description.
        """
        for description in ["tcp:http", "tcp:80:colour=blue", "nosuchtype:1"]:
            self.assertEndpointError(description)


class MissingCertificateFilesTests(SynchronousTestCase):
    """
    Tests for L{missingCertificateFiles}.
    """

    def test_missing(self) -> None:
        """
        The key, certificate and chain files that do not exist are listed,
        each once.
        """
        files = writeCertificates(self.mktemp())
        directory = self.mktemp()
        key = os.path.join(directory, "k.pem")
        chain = os.path.join(directory, "chain.pem")
        spec = parseListen(
            f"ssl:443:privateKey={key}:certKey={files.serverCert}:extraCertChain={chain}"
        )
        self.assertEqual(missingCertificateFiles(spec), [key, chain])
        self.assertEqual(missingCertificateFiles(parseListen(f"ssl:443:privateKey={key}")), [key])

    def test_noneMissing(self) -> None:
        """
        Nothing is missing when the files exist, for ad-hoc TLS, or for
        other endpoint types.
        """
        files = writeCertificates(self.mktemp())
        spec = parseListen(f"ssl:443:privateKey={files.serverKey}:certKey={files.serverCert}")
        self.assertEqual(missingCertificateFiles(spec), [])
        self.assertEqual(missingCertificateFiles(parseListen("ssl:443")), [])
        self.assertEqual(missingCertificateFiles(parseListen("tcp:80")), [])
