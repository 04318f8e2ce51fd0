"""
TLS features of the assembled service: HSTS on HTTPS responses, the
C{--redirect-http} listener, and certificate reload (SIGHUP).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody

from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.redirect import RedirectToHTTPS
from lbproxy.listen import parseListen
from lbproxy.runtime import ProcessRoot
from lbproxy.service import LoadBalancerConfig, LoadBalancerService
from lbproxy.test.fakes import get, reactor, startBackend
from lbproxy.test.test_tls import _read, _servedTo, _write, writeCertificates
from lbproxy.upstream.health import HealthSettings

Gen = Generator[Any, Any, None]


class TLSServiceTests(TestCase):
    """
    A load balancer with an C{ssl:} and a C{tcp:} listener on loopback.
    """

    @inlineCallbacks
    def start(self, **fields: Any) -> Generator[Any, Any, LoadBalancerService]:
        """
        Start a load balancer over one backend answering C{ok}, listening
        with TLS (the test's certificate files) and plain HTTP.
        """
        self.files = writeCertificates(self.mktemp())
        backend = yield startBackend(self, b"ok")
        listen = (
            f"ssl:0:interface=127.0.0.1:privateKey={self.files.serverKey}"
            f":certKey={self.files.serverCert}"
        )
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen(listen), parseListen("tcp:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                health=HealthSettings(interval=0),
                **fields,
            ),
            reactor,
            reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def portOf(self, service: LoadBalancerService, index: int) -> int:
        return service.ports[index].getHost().port  # type: ignore[attr-defined,no-any-return]

    @inlineCallbacks
    def getHTTPS(self, port: int) -> Generator[Any, Any, Any]:
        """
        GET C{/} over HTTPS from C{localhost:port}, trusting the test's CA.
        """
        agent = Agent(
            reactor,
            BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(self.files.caPEM)),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        response = yield agent.request(b"GET", b"https://localhost:%d/" % (port,))
        yield readBody(response)
        return response

    @inlineCallbacks
    def test_hstsOverTLSOnly(self) -> Gen:
        """
        With C{--hsts}, responses over TLS carry C{Strict-Transport-Security};
        responses over plain HTTP do not.
        """
        service = yield self.start(hsts=b"max-age=60")
        response = yield self.getHTTPS(self.portOf(service, 0))
        self.assertEqual(
            response.headers.getRawHeaders(b"strict-transport-security"), [b"max-age=60"]
        )
        plain, body = yield get(self, b"http://127.0.0.1:%d/" % (self.portOf(service, 1),))
        self.assertEqual(body, b"ok")
        self.assertIsNone(plain.headers.getRawHeaders(b"strict-transport-security"))

    @inlineCallbacks
    def test_noHSTSByDefault(self) -> Gen:
        """
        Without C{--hsts}, no C{Strict-Transport-Security} is added.
        """
        service = yield self.start()
        response = yield self.getHTTPS(self.portOf(service, 0))
        self.assertIsNone(response.headers.getRawHeaders(b"strict-transport-security"))

    @inlineCallbacks
    def test_redirect(self) -> Gen:
        """
        The C{--redirect-http} listener answers 308 with the same host and
        target on the HTTPS listener's port, and proxies nothing.
        """
        service = yield self.start(redirectHTTP=parseListen("tcp:0:interface=127.0.0.1"))
        httpsPort = self.portOf(service, 0)
        url = b"http://127.0.0.1:%d/a/b?c=d" % (self.portOf(service, 2),)
        response, body = yield get(self, url, method=b"POST")
        self.assertEqual(response.code, 308)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"),
            [b"https://127.0.0.1:%d/a/b?c=d" % (httpsPort,)],
        )
        self.assertNotIn(b"ok", body)

    @inlineCallbacks
    def test_reloadCertificates(self) -> Gen:
        """
        L{LoadBalancerService.reloadCertificates} makes new handshakes use
        the certificate files' new contents.
        """
        service = yield self.start()
        port = self.portOf(service, 0)
        new = writeCertificates(self.mktemp())
        _write(self.files.serverKey, _read(new.serverKey))
        _write(self.files.serverCert, _read(new.serverCert))
        self.assertTrue(service.reloadCertificates())
        served = yield deferToThread(_servedTo, port, "localhost")
        self.assertEqual(served.public_bytes(_DER), _derOf(new.serverCert))


_DER = Encoding.DER


def _derOf(path: str) -> bytes:
    """
    The DER form of the PEM certificate in C{path}.
    """
    return x509.load_pem_x509_certificate(_read(path)).public_bytes(_DER)


class RedirectLocationTests(SynchronousTestCase):
    """
    Tests for L{RedirectToHTTPS.location}.
    """

    def test_locations(self) -> None:
        """
        The Host's port is replaced by the HTTPS port (left out when it is
        443); IPv6 addresses keep their brackets; an invalid Host gives
        L{None}.
        """
        on443, on8443 = RedirectToHTTPS(443), RedirectToHTTPS(8443)
        self.assertEqual(on443.location(b"Example.com:80", b"/x?y"), b"https://example.com/x?y")
        self.assertEqual(on8443.location(b"example.com", b"/"), b"https://example.com:8443/")
        self.assertEqual(on443.location(b"[::1]:80", b"/"), b"https://[::1]/")
        self.assertEqual(
            on443.location(b"example.com", b"http://evil.test/"), b"https://example.com/"
        )
        for bad in [b"", b"ex ample.com", b"example.com:x", b"[::1"]:
            self.assertIsNone(on443.location(bad, b"/"), bad)


class _Reloadable(Service):
    """
    A service that counts calls to C{reloadCertificates}.
    """

    reloads = 0

    def reloadCertificates(self) -> bool:
        self.reloads += 1
        return True


class _ImmediateReactor:
    """
    Runs C{callFromThread} calls at once.
    """

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class SIGHUPTests(SynchronousTestCase):
    """
    The twistd root service's SIGHUP handler.
    """

    def test_reloads(self) -> None:
        """
        A real SIGHUP makes the load balancer reload its certificates, in
        the reactor thread.
        """
        for number in [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]:
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        service = _Reloadable()
        root = ProcessRoot(service, _ImmediateReactor(), service.reloadCertificates)
        root._installSignalHandlers()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(service.reloads, 1)
