"""
Tests for L{lbproxy.upstream.connection}: the lean HTTP/1.1 client connection, driven
over an in-memory transport so every byte is exact.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy.test.fakes import CollectedBody, RecordedReading
from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.connection import (
    CLOSE_WAIT,
    BackendConnection,
    BackendResponse,
    InvalidResponse,
)


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.connection = BackendConnection()
        self.idle: list[BackendConnection] = []
        self.connection.onIdle = self.idle.append
        self.connection.makeConnection(self.transport)

    def exchange(
        self, answer: bytes, method: bytes = b"GET"
    ) -> tuple[BackendResponse, CollectedBody]:
        d = self.connection.request(method, b"/p?q", [(b"Host", b"h")], None)
        self.connection.dataReceived(answer)
        response: BackendResponse = self.successResultOf(d)
        body = CollectedBody()
        response.deliverBody(body)
        return response, body


class RequestTests(ClientTestCase):
    """
    What is written to the backend.
    """

    def test_headInOneWrite(self) -> None:
        """
        The request head is written as given, with the proxy's own framing.
        """
        self.connection.request(b"POST", b"/a", [(b"Host", b"h"), (b"X", b"1")], _body(b"hello"))
        self.assertEqual(
            self.transport.value(),
            b"POST /a HTTP/1.1\r\nHost: h\r\nX: 1\r\nContent-Length: 5\r\n\r\nhello",
        )

    def test_emptyPost(self) -> None:
        """
        A POST without a body says Content-Length: 0; a GET says nothing.
        """
        self.connection.request(b"POST", b"/", [(b"Host", b"h")], None)
        self.assertIn(b"Content-Length: 0\r\n", self.transport.value())

    def test_largeBodyStreamed(self) -> None:
        """
        A body is written as it arrives, with the body registered as the
        transport's streaming producer until it is complete; the
        connection is reusable afterwards.
        """
        reading = RecordedReading()
        body = StreamedBody(200 * 1024, reading)
        d = self.connection.request(b"PUT", b"/", [(b"Host", b"h")], body)
        self.assertIs(self.transport.producer, body)
        self.assertTrue(self.transport.streaming)
        for _ in range(200):
            body.received(b"x" * 1024)
        # The backend's transport is full: the client is paused, and
        # resumed when it drains.
        body.pauseProducing()
        self.assertEqual(reading.paused, {"backend"})
        body.resumeProducing()
        self.assertEqual(reading.paused, set())
        body.receivedAll()
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n" + b"x" * (200 * 1024)))
        self.connection.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d).deliverBody(CollectedBody())
        self.assertEqual(self.idle, [self.connection])

    def test_emptyPieceOfChunkedBody(self) -> None:
        """
        An empty piece of a body of unknown length writes nothing: as a
        chunk it would be the last one, and the rest of the body would
        reach the backend as another request.
        """
        body = StreamedBody(None, RecordedReading())
        self.connection.request(b"POST", b"/", [(b"Host", b"h")], body)
        head = self.transport.value()
        body.received(b"")
        body.received(b"abc")
        body.receivedAll()
        self.assertEqual(self.transport.value()[len(head) :], b"3\r\nabc\r\n0\r\n\r\n")


class ResponseTests(ClientTestCase):
    """
    Parsing answers.
    """

    def test_contentLength(self) -> None:
        """
        A Content-Length body is delivered whole and the connection goes
        back to the pool.
        """
        response, body = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nhello"
        )
        self.assertEqual((response.code, response.phrase, response.length), (200, b"OK", 5))
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a", b"b"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        self.assertEqual(body.data, b"hello")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.connection])

    def test_chunked(self) -> None:
        """
        A chunked body with extensions and trailers is decoded, split across
        reads anyhow.
        """
        d = self.connection.request(b"GET", b"/", [(b"Host", b"h")], None)
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        for byte in range(len(answer)):
            self.connection.dataReceived(answer[byte : byte + 1])
            if d.called and not hasattr(self, "body"):
                response = self.successResultOf(d)
                self.body = CollectedBody()
                response.deliverBody(self.body)
        self.assertEqual(self.body.data, b"abc0123456789abcdef")
        assert self.body.reason is not None
        self.assertTrue(self.body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.connection])

    def test_interimResponsesSkipped(self) -> None:
        """
        100 Continue and 103 Early Hints are skipped; the final answer is
        the response.
        """
        response, body = self.exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(body.data, b"")

    def test_headHasNoBody(self) -> None:
        """
        The answer to HEAD has no body whatever its Content-Length says.
        """
        response, _body = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", method=b"HEAD"
        )
        self.assertEqual(response.length, 0)
        self.assertEqual(self.idle, [self.connection])

    def test_untilClose(self) -> None:
        """
        A body without length ends with the connection, as a potential data
        loss, and the connection is not reused.
        """
        response, body = self.exchange(b"HTTP/1.1 200 OK\r\n\r\nsome")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.connection.dataReceived(b" more")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(body.data, b"some more")
        assert body.reason is not None
        self.assertTrue(body.reason.check(PotentialDataLoss))
        self.assertEqual(self.idle, [])

    def test_untilResetIsFailure(self) -> None:
        """
        A body without length that ends with a reset rather than a clean
        close is a failure, not a complete body: it may have been cut.
        """
        _response, body = self.exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
        self.connection.connectionLost(Failure(ConnectionLost("reset")))
        assert body.reason is not None
        self.assertFalse(body.reason.check(PotentialDataLoss, ResponseDone))
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_connectionCloseNotReused(self) -> None:
        """
        Connection: close, or HTTP/1.0 without keep-alive, is not reused.
        """
        self.exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_http10KeepAlive(self) -> None:
        """
        HTTP/1.0 with Connection: keep-alive is reused.
        """
        self.exchange(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.idle, [self.connection])

    def test_cutBody(self) -> None:
        """
        A connection lost mid-body ends the body with a failure, not done.
        """
        _response, body = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.connection.connectionLost(Failure(Exception("reset")))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_backpressure(self) -> None:
        """
        The body protocol's transport pauses and resumes reading from the
        backend, and stopping it aborts the connection.
        """
        _response, body = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        producer = body.transport
        assert producer is not None
        producer.pauseProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.transport.producerState, "paused")
        producer.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.transport.producerState, "producing")
        producer.stopProducing()  # type: ignore[attr-defined]
        self.assertTrue(self.transport.disconnecting)


class InvalidResponseTests(ClientTestCase):
    """
    Answers that cannot be relayed safely.
    """

    def test_table(self) -> None:
        """
        Each malformed answer fails the request with L{InvalidResponse}
        inside L{ResponseFailed}, and the connection is dropped.
        """
        cases = [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2OO OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ]
        for answer in cases:
            transport = StringTransport()
            connection = BackendConnection()
            connection.makeConnection(transport)
            d = connection.request(b"GET", b"/", [(b"Host", b"h")], None)
            connection.dataReceived(answer)
            failure = self.failureResultOf(d, ResponseFailed)
            self.assertTrue(failure.value.reasons[0].check(InvalidResponse), answer[:60])
            self.assertTrue(transport.disconnecting, answer[:60])
            self.assertFalse(connection.reusable)

    def test_badChunk(self) -> None:
        """
        A malformed chunk ends the body with a failure and drops the
        connection.
        """
        _response, body = self.exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertTrue(self.transport.disconnecting)

    def test_neverAnswered(self) -> None:
        """
        A connection lost before any answer fails with
        L{ResponseNeverReceived} (which an idempotent request may retry).
        """
        d = self.connection.request(b"GET", b"/", [(b"Host", b"h")], None)
        self.connection.connectionLost(Failure(Exception("reset")))
        self.failureResultOf(d, ResponseNeverReceived)

    def test_unsolicitedBytes(self) -> None:
        """
        Bytes arriving on an idle connection make it unusable.
        """
        self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertFalse(self.connection.reusable)
        self.assertTrue(self.transport.disconnecting)


def _body(data: bytes) -> StreamedBody:
    """
    A complete body of C{data}.
    """
    body = StreamedBody(len(data), RecordedReading())
    body.received(data)
    body.receivedAll()
    return body


class _Lingering(StringTransport):
    """
    A transport whose clean close never completes (as a TLS connection
    waiting for a hung backend's close_notify), recording an abort.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class CloseTests(SynchronousTestCase):
    """
    L{BackendConnection.close} closes cleanly, and aborts a close that
    does not complete.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = _Lingering()
        self.connection = BackendConnection()
        self.connection.clock = self.clock
        self.connection.makeConnection(self.transport)

    def test_abortedWhenTheCloseHangs(self) -> None:
        """
        A close still not done after L{CLOSE_WAIT} seconds is an abort.
        """
        self.connection.close()
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(CLOSE_WAIT - 0.1)
        self.assertFalse(self.transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.aborted)

    def test_noAbortOnceClosed(self) -> None:
        """
        A close that completes leaves no timer behind.
        """
        self.connection.close()
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(CLOSE_WAIT)
        self.assertFalse(self.transport.aborted)
