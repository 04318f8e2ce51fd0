"""
TLS session resumption through the installed C{twistd lbproxy}, end to end:
a client that comes back with its session resumes it by default, in TLS 1.2
and 1.3, and with C{--tls-resumption off} gets a full handshake each time.

The client is Python's C{ssl} module, in a thread, off the reactor.
"""

from __future__ import annotations

import os
import socket
import ssl

import attrs
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import REQUEST_TIMEOUT, Proxy, startBackend, startProxy

_BODY = b"<p>resumed or not</p>"


@attrs.frozen
class _Visit:
    """
    One HTTPS request on a new connection, as the client saw it.

    @ivar version: The TLS version negotiated.
    @ivar resumed: Whether the handshake resumed the offered session.
    @ivar response: Everything the proxy sent.
    """

    version: str | None
    resumed: bool
    response: bytes


def _visit(
    proxy: Proxy, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[_Visit, ssl.SSLSession | None]:
    """
    GET / on a new TLS connection to C{proxy}, offering C{session}, and read
    the response to its end (C{Connection: close}), by which time a TLS 1.3
    session ticket has arrived.  Blocking: run it in a thread.

    @return: What the client saw, and the session to offer next time.
    """
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=REQUEST_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
        return _Visit(tls.version(), bool(tls.session_reused), response), tls.session


def _twoVisits(proxy: Proxy, maximum: ssl.TLSVersion) -> tuple[_Visit, _Visit]:
    """
    Two L{_visit}s with one client context limited to TLS C{maximum}, the
    second offering the first's session.
    """
    context = proxy.context()
    assert context is not None
    context.maximum_version = maximum
    first, session = _visit(proxy, context, None)
    again, _ = _visit(proxy, context, session)
    return first, again


class ResumptionTests(TestCase):
    """
    C{--tls-resumption} on a real C{ssl:} listener.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.backend = startBackend(self, "127.0.0.2", _BODY)

    async def visits(self, *extra: str) -> dict[str, tuple[_Visit, _Visit]]:
        """
        Start lbproxy over the test's backend with C{extra} arguments and
        make two visits in TLS 1.2 and two in TLS 1.3.

        @return: The two visits, by TLS version.
        """
        proxy = await startProxy(self, self.directory, self.backend.authority, True, extra=extra)
        results = {}
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            first, again = await deferToThread(_twoVisits, proxy, maximum)
            for visit in (first, again):
                self.assertTrue(visit.response.startswith(b"HTTP/1.1 200 "), visit.response[:80])
                self.assertTrue(visit.response.endswith(_BODY), visit.response[-80:])
                self.assertEqual(visit.version, maximum.name.replace("v1_", "v1."))
            results[str(first.version)] = (first, again)
        return results

    async def test_resumedByDefault(self) -> None:
        """
        By default a second connection that offers the first one's session
        resumes it, in TLS 1.2 and in TLS 1.3.
        """
        for version, (first, again) in (await self.visits()).items():
            self.assertFalse(first.resumed, version)
            self.assertTrue(again.resumed, version)

    async def test_off(self) -> None:
        """
        With C{--tls-resumption off} a second connection that offers the
        first one's session is not resumed, in TLS 1.2 or TLS 1.3: each
        handshake is a full one, and each request is answered.
        """
        for version, (first, again) in (await self.visits("--tls-resumption", "off")).items():
            self.assertFalse(first.resumed, version)
            self.assertFalse(again.resumed, version)
