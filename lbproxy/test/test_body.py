"""
Tests for L{lbproxy.upstream.body}: a request body streamed from the client to a
backend, with bounded buffering and backpressure both ways.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.test.fakes import RecordedReading
from lbproxy.upstream.body import BUFFER_LIMIT, StreamedBody


class _Writer:
    """
    A backend connection's side: what it was sent, and whether the body
    ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.finished = False

    def writeBody(self, data: bytes) -> None:
        self.data += data

    def finishBody(self) -> None:
        self.finished = True


class StreamedBodyTests(SynchronousTestCase):
    """
    A body goes to its writer as it arrives; before a writer exists at
    most L{BUFFER_LIMIT} bytes wait and the client is then paused; the
    writer's backpressure pauses the client.
    """

    def setUp(self) -> None:
        self.reading = RecordedReading()
        self.body = StreamedBody(None, self.reading)

    def test_waitsForWriter(self) -> None:
        """
        What arrives before the backend connection exists is handed over,
        in order, when it attaches; the rest follows as it comes, then
        the end.
        """
        self.body.received(b"ab")
        self.body.received(b"cd")
        writer = _Writer()
        self.body.attach(writer)
        self.assertEqual(writer.data, b"abcd")
        self.body.received(b"ef")
        self.assertEqual(writer.data, b"abcdef")
        self.assertFalse(writer.finished)
        self.body.receivedAll()
        self.assertTrue(writer.finished)
        self.assertEqual(self.body.sent, 6)

    def test_bufferBounded(self) -> None:
        """
        Past L{BUFFER_LIMIT} bytes with no writer, the client is paused;
        reading resumes once a writer took them.
        """
        self.body.received(b"x" * BUFFER_LIMIT)
        self.assertEqual(self.reading.paused, set())
        self.body.received(b"y")
        self.assertEqual(self.reading.paused, {"body-buffer"})
        writer = _Writer()
        self.body.attach(writer)
        self.assertEqual(self.reading.paused, set())
        self.assertEqual(len(writer.data), BUFFER_LIMIT + 1)

    def test_backendBackpressure(self) -> None:
        """
        The backend's transport pausing the body pauses the client; its
        resuming resumes it; a writer that goes away lifts its pause.
        """
        self.body.attach(_Writer())
        self.body.pauseProducing()
        self.assertEqual(self.reading.paused, {"backend"})
        self.body.resumeProducing()
        self.assertEqual(self.reading.paused, set())
        self.body.pauseProducing()
        self.body.detach()
        self.assertEqual(self.reading.paused, set())

    def test_endLiftsBackpressure(self) -> None:
        """
        Once the whole body went out, the client is not held back for it.
        """
        self.body.attach(_Writer())
        self.body.pauseProducing()
        self.body.receivedAll()
        self.assertEqual(self.reading.paused, set())

    def test_smallBodyReplayable(self) -> None:
        """
        A complete body no larger than L{BUFFER_LIMIT} can be sent again to
        another backend, from its start.
        """
        self.body.received(b"hello")
        self.body.receivedAll()
        first = _Writer()
        self.body.attach(first)
        self.body.detach()
        self.assertTrue(self.body.replayable())
        second = _Writer()
        self.body.attach(second)
        self.assertEqual((second.data, second.finished), (b"hello", True))

    def test_largeBodyNotReplayable(self) -> None:
        """
        A body larger than L{BUFFER_LIMIT} is not kept: once any of it went
        out it cannot be sent again; before that it can.
        """
        self.body.received(b"x" * (BUFFER_LIMIT + 1))
        self.assertTrue(self.body.replayable())
        self.body.attach(_Writer())
        self.body.detach()
        self.assertFalse(self.body.replayable())

    def test_incompleteNotReplayable(self) -> None:
        """
        A body still arriving cannot be sent again once some of it went out.
        """
        self.body.attach(_Writer())
        self.body.received(b"part")
        self.body.detach()
        self.assertFalse(self.body.replayable())

    def test_whenSent(self) -> None:
        """
        Callbacks run once the whole body has been handed to a writer.
        """
        sent: list[bool] = []
        self.body.whenSent(lambda: sent.append(True))
        self.body.attach(_Writer())
        self.body.received(b"a")
        self.assertEqual(sent, [])
        self.body.receivedAll()
        self.assertEqual(sent, [True])
