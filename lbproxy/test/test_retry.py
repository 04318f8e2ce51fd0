"""
Tests for L{lbproxy.upstream.retry}: which failures may be retried, and the budget.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from OpenSSL import SSL
from service_identity.exceptions import DNSMismatch, VerificationError
from service_identity.hazmat import DNS_ID
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived
from zope.interface import implementer

from lbproxy import certs
from lbproxy.test.fakes import reactor
from lbproxy.tls.certificates import CertificateFiles
from lbproxy.tls.client import BackendTLS, BackendTLSSettings
from lbproxy.tls.server import TLSServerEndpoint
from lbproxy.tls.sni import ServerTLS, ServerTLSSettings
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.pool import Upstream, UpstreamSettings, _TimeoutEndpoint
from lbproxy.upstream.retry import (
    ConnectTimeoutError,
    RetryBudget,
    failedToConnect,
    mayRetry,
    nothingWasSent,
)

Gen = Generator[Any, Any, None]


def _failure(error: Exception) -> Failure:
    try:
        raise error
    except Exception:
        return Failure()


class MayRetryTests(SynchronousTestCase):
    """
    Retrying is safe when nothing reached the backend, or the method is
    idempotent and no answer started.
    """

    def test_table(self) -> None:
        """
        Connection failures are retried for every method; a close, reset or
        unparseable answer before the response headers only for idempotent
        methods; a cancellation (response timeout) never.
        """
        lost = [Failure(ConnectionLost())]
        cases = [
            (b"POST", ConnectionRefusedError(), True),
            (b"POST", TCPTimedOutError(), True),
            (b"POST", TimeoutError(), True),
            (b"GET", ConnectionRefusedError(), True),
            (b"GET", ResponseNeverReceived(lost), True),
            (b"HEAD", ResponseNeverReceived(lost), True),
            (b"PUT", ResponseNeverReceived(lost), True),
            (b"DELETE", RequestTransmissionFailed(lost), True),
            (b"POST", ResponseNeverReceived(lost), False),
            (b"PATCH", ResponseNeverReceived(lost), False),
            (b"GET", ResponseFailed(lost), True),
            (b"POST", ResponseFailed(lost), False),
            (b"GET", CancelledError(), False),
        ]
        for method, error, expected in cases:
            self.assertEqual(mayRetry(method, _failure(error)), expected, (method, error))

    def test_everyFailureToConnect(self) -> None:
        """
        A DNS failure or a failed TLS handshake, like any other failure to
        connect, is retried for every method.
        """
        tls = [Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]
        for error in [
            DNSLookupError("no results for hostname lookup: gone.invalid"),
            ConnectTimeoutError(5),
            ResponseNeverReceived(tls),
        ]:
            self.assertTrue(mayRetry(b"POST", _failure(error)), error)


class FailedToConnectTests(SynchronousTestCase):
    """
    L{failedToConnect} and L{nothingWasSent} tell the failures in which no
    connection was made, so nothing reached the backend.
    """

    def test_table(self) -> None:
        """
        Refused, timed out, unreachable, unresolvable and a failed TLS
        handshake are failures to connect; a connection lost or an answer
        cut short, a TLS error after something was received, a response
        timeout or an attempt cancelled by the proxy are not.
        """
        ssl = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        mismatch = Failure(VerificationError([DNSMismatch(DNS_ID("backend.test"))]))
        lost = Failure(ConnectionLost())
        cases: list[tuple[Exception, bool]] = [
            (ConnectionRefusedError(), True),
            (TCPTimedOutError(), True),
            (NoRouteError(), True),
            (TimeoutError(), True),
            (ConnectTimeoutError(5), True),
            (DNSLookupError("no results for hostname lookup: gone.invalid"), True),
            (ResponseNeverReceived([ssl]), True),
            (ResponseNeverReceived([mismatch]), True),
            (RequestTransmissionFailed([ssl]), True),
            (ResponseNeverReceived([lost]), False),
            (RequestTransmissionFailed([lost]), False),
            (ResponseFailed([ssl]), False),
            (ResponseFailed([lost]), False),
            (CancelledError(), False),
            (ConnectingCancelledError(None), False),
            (ValueError(), False),
        ]
        for error, expected in cases:
            self.assertEqual(failedToConnect(_failure(error)), expected, error)
            self.assertEqual(nothingWasSent(_failure(error)), expected, error)

    def test_connectTimeoutError(self) -> None:
        """
        L{ConnectTimeoutError} is both a Deferred timeout and a
        L{ConnectError}, and says how long was waited.
        """
        error = ConnectTimeoutError(2.5)
        self.assertIsInstance(error, TimeoutError)
        self.assertIsInstance(error, TCPTimedOutError)
        self.assertEqual(str(error), "no connection to the backend within 2.5s (--connect-timeout)")


class ConnectTimeoutTests(SynchronousTestCase):
    """
    A connection attempt that outlasts the connect timeout fails with
    L{ConnectTimeoutError}, however the endpoint reports its cancellation.
    """

    def test_tcpAttemptCancelled(self) -> None:
        """
        A TCP connection attempt that does not complete within the timeout
        is stopped and fails with L{ConnectTimeoutError} (Twisted reports
        the cancelled attempt as L{ConnectingCancelledError}), which
        L{failedToConnect} recognises; not before the timeout.
        """
        memory = MemoryReactorClock()
        endpoint = _TimeoutEndpoint(TCP4ClientEndpoint(memory, "127.0.0.1", 1), 5.0, memory)
        d = endpoint.connect(Factory.forProtocol(Protocol))
        memory.advance(4.9)
        self.assertNoResult(d)
        memory.advance(0.1)
        failure = self.failureResultOf(d, ConnectTimeoutError)
        self.assertTrue(failedToConnect(failure))
        [connector] = memory.connectors
        self.assertTrue(connector.stoppedConnecting)

    def test_endpointWithoutCanceller(self) -> None:
        """
        An endpoint that never connects and cannot be cancelled also fails
        with L{ConnectTimeoutError} when the time is up.
        """
        clock = Clock()
        endpoint = _TimeoutEndpoint(_NeverConnects(), 1.0, clock)
        d = endpoint.connect(Factory.forProtocol(Protocol))
        clock.advance(1)
        self.failureResultOf(d, ConnectTimeoutError)

    def test_otherFailuresUnchanged(self) -> None:
        """
        A connection failure before the timeout is passed on as it is, and
        no timer is left behind.
        """
        memory = MemoryReactorClock()
        endpoint = _TimeoutEndpoint(TCP4ClientEndpoint(memory, "127.0.0.1", 1), 5.0, memory)
        d = endpoint.connect(Factory.forProtocol(Protocol))
        [(_, _, factory, _, _)] = memory.tcpClients
        [connector] = memory.connectors
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(memory.getDelayedCalls(), [])

    def test_throughUpstream(self) -> None:
        """
        A request to a backend that does not accept the connection within
        the upstream's connect timeout fails with L{ConnectTimeoutError}.
        """
        memory = MemoryReactorClock()
        upstream = Upstream(
            memory,
            memory,
            UpstreamSettings(connectTimeout=3.0),
            endpointFor=lambda host, port: TCP4ClientEndpoint(memory, host, port),
        )
        d = upstream.request(Backend("127.0.0.1", 1), b"POST", b"/", [(b"Host", b"h")], None)
        memory.advance(3)
        self.assertTrue(failedToConnect(self.failureResultOf(d, ConnectTimeoutError)))


@implementer(IStreamClientEndpoint)
class _NeverConnects:
    """
    An endpoint whose connection attempts never end and have no canceller.
    """

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred()


class TLSHandshakeTests(TestCase):
    """
    How a failed TLS handshake with a real backend on loopback surfaces.
    """

    @inlineCallbacks
    def test_untrustedCertificate(self) -> Gen:
        """
        A request to an C{https://} backend whose certificate is not
        trusted fails in a way L{failedToConnect} recognises.
        """
        directory = self.mktemp()
        caKey, caCert = certs.makeCertificateAuthority()
        key, cert = certs.makeServerCertificate(caKey, caCert, ["backend.test"])
        os.makedirs(directory)
        keyFile = os.path.join(directory, "backend.key")
        certFile = os.path.join(directory, "backend.crt")
        with open(keyFile, "wb") as f:
            f.write(certs.privateKeyPEM(key))
        with open(certFile, "wb") as f:
            f.write(certs.certificatePEM(cert))
        serverTLS = ServerTLS(CertificateFiles(keyFile, certFile), ServerTLSSettings())
        tcp = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port: IListeningPort = yield TLSServerEndpoint(tcp, serverTLS).listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(port.stopListening)
        upstream = Upstream(
            reactor,
            reactor,
            endpointFor=lambda host, number: TCP4ClientEndpoint(reactor, "127.0.0.1", number),
            tlsFor=BackendTLS(BackendTLSSettings()).creatorFor,
        )
        self.addCleanup(upstream.close)
        backend = Backend("backend.test", port.getHost().port, scheme="https")  # type: ignore[attr-defined]
        d = upstream.request(backend, b"POST", b"/", [(b"Host", b"backend.test")], None)
        outcome: list[Failure] = []
        yield d.addCallbacks(lambda response: None, outcome.append)
        [failure] = outcome
        self.assertTrue(failedToConnect(failure), failure)


class RetryBudgetTests(SynchronousTestCase):
    """
    The retry budget.
    """

    def test_floor(self) -> None:
        """
        With no traffic, the floor allows C{minPerSecond} retries per second
        over the window, and no more.
        """
        budget = RetryBudget(Clock(), ratio=0.2, minPerSecond=1, window=10)
        self.assertEqual(sum(budget.tryRetry() for _ in range(15)), 10)

    def test_ratio(self) -> None:
        """
        With traffic, retries up to the ratio of recent requests are
        allowed on top of the floor.
        """
        budget = RetryBudget(Clock(), ratio=0.2, minPerSecond=0, window=10)
        for _ in range(100):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(50)), 20)

    def test_window(self) -> None:
        """
        Requests and retries older than the window no longer count.
        """
        clock = Clock()
        budget = RetryBudget(clock, ratio=0.5, minPerSecond=0, window=10)
        for _ in range(10):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(10)), 5)
        clock.advance(10)
        self.assertFalse(budget.tryRetry())
        for _ in range(4):
            budget.requestMade()
        self.assertEqual(sum(budget.tryRetry() for _ in range(10)), 2)
