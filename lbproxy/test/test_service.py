"""
Tests for L{lbproxy.service}: the assembled load balancer on real loopback
sockets, with real TLS.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import os
import signal
import socket
import ssl
import sys
from collections.abc import Generator
from typing import Any, cast

from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from lbproxy import certs
from lbproxy.balancing.roundrobin import RoundRobinChooser
from lbproxy.cli.options import Options, makeService
from lbproxy.http.accesslog import AccessLog
from lbproxy.listen import parseListen
from lbproxy.service import LoadBalancerConfig, LoadBalancerService, StartupError
from lbproxy.test.fakes import get, rawConnect, reactor, startBackend
from lbproxy.upstream.health import HealthSettings

Gen = Generator[Any, Any, None]


def _freePort() -> int:
    """
    A loopback port number that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _peerCertificate(port: int) -> bytes:
    """
    Connect with Python's ssl, without verification, and return the DER
    certificate the server presented. Runs in a thread.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


class ServiceTestCase(TestCase):
    """
    Start and stop L{LoadBalancerService}s.
    """

    def start(self, config: LoadBalancerConfig) -> LoadBalancerService:
        service = LoadBalancerService(config, reactor, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def portOf(self, service: LoadBalancerService, index: int = 0) -> int:
        return service.ports[index].getHost().port  # type: ignore[attr-defined,no-any-return]


class TLSOffloadingTests(ServiceTestCase):
    """
    TLS is terminated at the proxy; backends are spoken to over plain HTTP.
    """

    @inlineCallbacks
    def test_verifiedWithGeneratedCA(self) -> Gen:
        """
        With certificate files from C{python -m lbproxy.certs}, a client
        that verifies against the generated CA reaches the backends over
        HTTPS, and the backends learn the client used https.
        """
        directory = self.mktemp()
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(certs.main([directory]), 0)
        one = yield startBackend(self, b"<p>HTTP Server-1</p>")
        two = yield startBackend(self, b"<p>HTTP Server-2</p>")
        key = os.path.join(directory, "loadbalancer.key")
        crt = os.path.join(directory, "loadbalancer.crt")
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={crt}"
        service = self.start(
            LoadBalancerConfig(
                backends=[one.backend, two.backend],
                listens=[parseListen(listen)],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                health=HealthSettings(interval=0),
            )
        )
        with open(os.path.join(directory, "ca.crt"), "rb") as f:
            ca = Certificate.loadPEM(f.read())
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=ca), pool=pool)
        url = b"https://localhost:%d/" % (self.portOf(service),)
        bodies = []
        for _ in range(4):
            response = yield agent.request(b"GET", url, Headers())
            bodies.append((yield readBody(response)))
        self.assertEqual(bodies, [b"<p>HTTP Server-1</p>", b"<p>HTTP Server-2</p>"] * 2)
        seen = one.resource.received[0]
        self.assertEqual(seen.header(b"x-forwarded-proto"), [b"https"])
        self.assertIn(b"proto=https", seen.header(b"forwarded")[0])
        self.assertEqual(seen.header(b"host"), [b"localhost:%d" % (self.portOf(service),)])

    @inlineCallbacks
    def test_adhocCertificateFingerprintLogged(self) -> Gen:
        """
        With --adhoc, an ssl: listener without files serves a generated
        certificate whose SHA-256 fingerprint is the one logged at start-up.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        backend = yield startBackend(self, b"ok")
        service = self.start(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen("ssl:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                adhoc=True,
            )
        )
        der = yield deferToThread(_peerCertificate, self.portOf(service))
        served = hashlib.sha256(der).digest().hex(":").upper()
        logged = [e["fingerprint"] for e in events if "fingerprint" in e]
        self.assertEqual(logged, [served])


class StartupTests(ServiceTestCase):
    """
    Start-up is all or nothing.
    """

    @inlineCallbacks
    def test_portInUseLeavesNothingListening(self) -> Gen:
        """
        If one listener cannot bind, start-up fails with a one-line
        L{StartupError} naming it, and the listeners already bound are
        closed again.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        takenPort = taken.getsockname()[1]
        freePort = _freePort()
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[],
                listens=[
                    parseListen(f"tcp:{freePort}:interface=127.0.0.1"),
                    parseListen(f"tcp:{takenPort}:interface=127.0.0.1"),
                ],
                chooser=RoundRobinChooser(),
            ),
            reactor,
            reactor,
        )
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        message = str(raised.exception)
        self.assertIn(f"tcp:{takenPort}", message)
        self.assertNotIn("\n", message)
        self.assertEqual(service.ports, [])
        yield self.assertFailure(
            get(self, b"http://127.0.0.1:%d/" % (freePort,)), ConnectionRefusedError
        )

    def test_accessLogOpenedAtStart(self) -> None:
        """
        The access log file is opened when the service starts, not when
        the configuration is built, and closed when it stops.
        """
        path = os.path.abspath(self.mktemp())
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[],
                listens=[parseListen("tcp:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog.fromOption(path),
            ),
            reactor,
            reactor,
        )
        self.assertFalse(os.path.exists(path))
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertTrue(os.path.exists(path))

    def test_accessLogUnopenable(self) -> None:
        """
        An access log file that cannot be opened at start-up is a one-line
        L{StartupError} naming it, and nothing is left listening.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "missing", "access.log")
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[],
                listens=[parseListen("tcp:0:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog.fromOption(path),
            ),
            reactor,
            reactor,
        )
        with self.assertRaises(StartupError) as raised:
            service.privilegedStartService()
        message = str(raised.exception)
        self.assertEqual(message, f"cannot open --access-log {path!r}: {os.strerror(errno.ENOENT)}")
        self.assertEqual(service.ports, [])

    @inlineCallbacks
    def test_stopClosesListeners(self) -> Gen:
        """
        Stopping the service stops listening.
        """
        port = _freePort()
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[],
                listens=[parseListen(f"tcp:{port}:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
            ),
            reactor,
            reactor,
        )
        service.startService()
        response, _ = yield get(self, b"http://127.0.0.1:%d/" % (port,))
        self.assertEqual(response.code, 503)
        yield service.stopService()
        yield self.assertFailure(
            get(self, b"http://127.0.0.1:%d/" % (port,)), ConnectionRefusedError
        )


class DemoTests(ServiceTestCase):
    """
    The built-in demo.
    """

    @inlineCallbacks
    def test_demoAnswersFromBothServers(self) -> Gen:
        """
        C{--demo} starts two backends in-process, answering like the
        original write-up's containers, balanced by the proxy.
        """
        options = Options()
        options.parseOptions(
            ["--demo", "--chooser", "round-robin", "--listen", "tcp:0:interface=127.0.0.1"]
        )
        wrapper = makeService(options, reactor)
        for number in [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]:
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        # Once running, the root freezes the heap and sets GC thresholds.
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        wrapper.startService()
        self.addCleanup(wrapper.stopService)
        [service] = list(wrapper)  # type: ignore[call-overload]
        url = b"http://127.0.0.1:%d/" % (self.portOf(service),)
        bodies = set()
        for _ in range(2):
            _, body = yield get(self, url)
            bodies.add(body)
        self.assertEqual(bodies, {b"<p>HTTP Server-1</p>\n", b"<p>HTTP Server-2</p>\n"})


class DrainTests(ServiceTestCase):
    """
    Stopping the service drains client connections.
    """

    @inlineCallbacks
    def test_idleKeepAliveClosedAtOnce(self) -> Gen:
        """
        An idle keep-alive client connection is closed as soon as the
        service stops, and the stop completes without waiting for the drain
        timeout.
        """
        backend = yield startBackend(self, b"ok")
        port = _freePort()
        service = LoadBalancerService(
            LoadBalancerConfig(
                backends=[backend.backend],
                listens=[parseListen(f"tcp:{port}:interface=127.0.0.1")],
                chooser=RoundRobinChooser(),
                accessLog=AccessLog(None, enabled=False),
                health=HealthSettings(interval=0),
                drainTimeout=3600,
            ),
            reactor,
            reactor,
        )
        service.startService()
        client = yield rawConnect(self, port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        yield client.until(b"\r\n\r\nok")
        yield service.stopService()
        yield client.closed
        self.assertEqual(service.site.channels, set())
