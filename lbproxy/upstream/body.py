# -*- test-case-name: lbproxy.test.test_body -*-
"""
A request body on its way from the client to a backend, streamed as it
arrives rather than spooled first.

The edge dispatches a request as soon as its head is checked and feeds the
body here chunk by chunk (L{StreamedBody.received}); the backend
connection, once it exists, attaches itself as the writer and gets what
was buffered meanwhile, then every chunk as it comes. Backpressure runs
both ways through the client's reading control:

  - while no backend connection has taken the body, at most
    L{BUFFER_LIMIT} bytes are kept and the client's socket is then paused;
  - the backend connection's transport registers this body as its
    streaming producer, so a backend that reads slowly pauses the client.

A body that is complete and no larger than L{BUFFER_LIMIT} is kept until
the exchange ends, so that a request whose backend failed can be sent
again to another (L{StreamedBody.replayable}); a larger one cannot be
retried once any of it went out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

BUFFER_LIMIT = 64 * 1024
"""
Bytes of a body kept while no backend takes them (and the most kept for a
retry).
"""


class ReadingControl(Protocol):
    """
    Pauses and resumes reading the client's socket for one reason of its
    own (see L{lbproxy.http.edge.ProxyChannel.pauseReading}).
    """

    def pauseReading(self, reason: str) -> None: ...

    def resumeReading(self, reason: str) -> None: ...


class BodyWriter(Protocol):
    """
    Where a body goes: a backend connection's request in progress.
    """

    def writeBody(self, data: bytes) -> None:
        """
        Send C{data}, the next piece of the body.
        """

    def finishBody(self) -> None:
        """
        The body is complete: end it (the last chunk, for a chunked body).
        """


@implementer(IPushProducer)
class StreamedBody:
    """
    One request body, streamed from the client to the backend.

    @ivar length: The declared length, or L{None} for a chunked body.
    @ivar complete: Whether the client has sent all of it.
    @ivar sent: Bytes handed to backend connections (counting replays).
    """

    def __init__(self, length: int | None, reading: ReadingControl) -> None:
        self.length = length
        self.complete = False
        self.sent = 0
        self._reading = reading
        self._writer: BodyWriter | None = None
        self._waiting: list[bytes] = []
        self._waitingBytes = 0
        self._kept: list[bytes] | None = []
        self._keptBytes = 0
        self._fullBuffer = False
        self._backendFull = False
        self._whenSent: list[Callable[[], None]] = []

    # From the client (the edge).

    def received(self, data: bytes) -> None:
        """
        The next piece of the body arrived from the client.
        """
        if self._kept is not None:
            self._keptBytes += len(data)
            if self._keptBytes > BUFFER_LIMIT:
                self._kept = None
            else:
                self._kept.append(data)
        if self._writer is not None:
            self.sent += len(data)
            self._writer.writeBody(data)
            return
        self._waiting.append(data)
        self._waitingBytes += len(data)
        if self._waitingBytes > BUFFER_LIMIT and not self._fullBuffer:
            self._fullBuffer = True
            self._reading.pauseReading("body-buffer")

    def receivedAll(self) -> None:
        """
        The client has sent the whole body.
        """
        self.complete = True
        if self._writer is not None:
            self._finishWriting()

    # Toward the backend.

    def attach(self, writer: BodyWriter) -> None:
        """
        Send the body to C{writer}: what arrived so far at once (all of it
        again for a replay), the rest as it arrives.
        """
        assert self._writer is None, "a body has one writer at a time"
        self._writer = writer
        if self.sent and self._kept is not None:
            # A replay on another backend: everything from the start.
            self._waiting = list(self._kept)
        waiting, self._waiting = self._waiting, []
        self._waitingBytes = 0
        for data in waiting:
            self.sent += len(data)
            writer.writeBody(data)
        if self._fullBuffer:
            self._fullBuffer = False
            self._reading.resumeReading("body-buffer")
        if self.complete and self._writer is writer:
            self._finishWriting()

    def detach(self) -> None:
        """
        The writer is gone (its connection was lost or aborted): nothing
        more goes to it, and its backpressure no longer holds the client.
        """
        self._writer = None
        if self._backendFull:
            self._backendFull = False
            self._reading.resumeReading("backend")

    def replayable(self) -> bool:
        """
        Whether the body can be sent again from its start: none of it went
        out yet, or it is complete and small enough to have been kept.
        """
        return self.sent == 0 or (self.complete and self._kept is not None)

    def abandon(self) -> None:
        """
        Nobody waits for this body any more (the client left or the edge
        gave up): forget the writer and the callbacks (which hold the
        exchange).
        """
        self._whenSent = []
        self._waiting = []
        self._kept = None
        self.detach()

    def whenSent(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once the whole body has been handed to a writer.
        """
        self._whenSent.append(callback)

    def _finishWriting(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        if self._backendFull:
            self._backendFull = False
            self._reading.resumeReading("backend")
        writer.finishBody()
        callbacks, self._whenSent = self._whenSent, []
        for callback in callbacks:
            callback()

    # IPushProducer, for the backend connection's transport.

    def pauseProducing(self) -> None:
        """
        The backend does not take the body as fast as it comes: stop
        reading from the client.
        """
        if not self._backendFull and self._writer is not None:
            self._backendFull = True
            self._reading.pauseReading("backend")

    def resumeProducing(self) -> None:
        """
        The backend took what was waiting: read from the client again.
        """
        if self._backendFull:
            self._backendFull = False
            self._reading.resumeReading("backend")

    def stopProducing(self) -> None:
        """
        The backend connection is going away.
        """
        self.detach()


__all__ = ["BUFFER_LIMIT", "BodyWriter", "ReadingControl", "StreamedBody"]
