"""
Tests for chunk sizes in request bodies at the edge (L{lbproxy.http.edge}):
a size too large to represent is refused at once, as twisted.web's decoder
would otherwise wait for that many bytes.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbproxy.http.accesslog import AccessLog
from lbproxy.http.edge import ProxySite

_CLIENT = IPv4Address("TCP", "192.0.2.7", 50000)

_HEAD = b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Holding(Resource):
    """
    Takes every request and never answers, like a proxy waiting for its
    backend.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class ChunkSizeTests(SynchronousTestCase):
    """
    A chunk size above 2**63 - 1, the largest Content-Length accepted, is a
    400 and the connection is closed at once; smaller ones are read on.
    """

    def send(self, *reads: bytes) -> tuple[StringTransport, list[str]]:
        """
        Send C{reads} to a new channel of a proxy site whose resource
        never answers; return the client's transport and the access log.
        """
        clock = Clock()
        lines: list[str] = []
        site = ProxySite(_Holding(), AccessLog(lines.append), reactor=clock)
        transport = StringTransport(peerAddress=_CLIENT)
        channel = site.buildProtocol(_CLIENT)
        channel.makeConnection(transport)
        for data in reads:
            channel.dataReceived(data)
        return transport, lines

    def test_overflowRefused(self) -> None:
        """
        A chunk size of more than 16 hex digits' worth, or above
        C{7fffffffffffffff}, gets a 400 and the connection is closed, also
        when the size line comes in pieces.
        """
        for reads in [
            (_HEAD + b"ffffffffffffffffff\r\nabc",),
            (_HEAD + b"1" + b"0" * 40 + b"\r\n",),
            (_HEAD + b"8000000000000000\r\n",),
            (_HEAD + b"ffffffffffffffffffff;ext=1\r\n",),
            (_HEAD, b"ffffffff", b"ffffffffff\r", b"\nabc"),
            (_HEAD + b"3\r\nabc\r\n", b"ffffffffffffffffff\r\n"),
        ]:
            transport, _ = self.send(*reads)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), reads)
            self.assertTrue(transport.disconnecting, reads)

    def test_largeButRepresentableReadOn(self) -> None:
        """
        A chunk size up to C{7fffffffffffffff}, however many leading zeros
        it has, is accepted: the proxy waits for the chunk's data.
        """
        for size in [b"7fffffffffffffff", b"0000000000000000000000000005", b"ffff"]:
            transport, _ = self.send(_HEAD + size + b"\r\nab")
            self.assertEqual(transport.value(), b"", size)
            self.assertFalse(transport.disconnecting, size)
