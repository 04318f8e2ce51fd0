# -*- test-case-name: lbproxy.test.test_twistedwall,lbproxy.test.test_edge,lbproxy.test.test_chunks -*-  # noqa: E501
"""
twisted.web's C{HTTPChannel} with named operations over the private state
that lbproxy's edge (L{lbproxy.http.edge}) needs: the one-pass hand-over
of a whole request head, the input still buffered when a connection turns
into a tunnel, the "network producer" that twisted.web pauses and
resumes, the request line being parsed, and hooks in place of
twisted.web's private C{_send100Continue} and
C{_respondToBadRequestAndDisconnect}.

Checked against Twisted 26.10 (setup.cfg allows C{twisted < 27}; a new
major version gets this module re-read first). The private names used are
listed in L{PRIVATE_NAMES}, and L{lbproxy.test.test_twistedwall} fails,
naming them, if Twisted no longer has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.protocols import basic
from twisted.web import http

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.web.http.HTTPChannel": (
        "_networkProducer",
        "_dataBuffer",
        "_handlingRequest",
        "_savedTimeOut",
        "_transferDecoder",
        "_command",
        "_path",
        "_version",
        "_HTTPChannel__first_line",
        "_send100Continue",
        "_respondToBadRequestAndDisconnect",
    ),
    "twisted.protocols.basic.LineReceiver": ("_buffer", "_busyReceiving"),
    "twisted.web.http": ("_ChunkedTransferDecoder", "_MalformedChunkedDataError"),
    "twisted.web.http._ChunkedTransferDecoder": ("_dataReceived_CHUNK_LENGTH",),
}
"""
Every private Twisted name this module uses, by the object that has it
(instance attributes are checked on an instance).
"""

_CHUNKED_DECODER = http._ChunkedTransferDecoder
_plainGotLength = http.Request.gotLength


class _BoundedChunkedDecoder(http._ChunkedTransferDecoder):
    """
    twisted.web's chunked decoder, refusing a chunk size above a limit:
    twisted.web takes any size and waits for that many bytes, so
    C{ffffffffffffffffff} got no answer until a timeout. The channel
    answers the error as malformed (400) and closes.
    """

    limit = 2**63 - 1

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done and self.length > self.limit:
            raise http._MalformedChunkedDataError("chunk size too large")
        return bool(done)


class ChannelInternals(http.HTTPChannel):
    """
    C{HTTPChannel} plus the operations on its private state that the edge
    uses, each named for what it does.
    """

    # Hooks, in place of twisted.web's private methods.

    def continueExpected(self) -> None:
        """
        A request asked for C{100 Continue}; twisted.web sends it at once.
        Override to decide otherwise.
        """
        http.HTTPChannel._send100Continue(self)

    def malformedRequest(self) -> None:
        """
        twisted.web found the request malformed (bad header syntax, both
        framing headers, a bad chunk); by default it answers 400 and
        closes.
        """
        http.HTTPChannel._respondToBadRequestAndDisconnect(self)

    def _send100Continue(self) -> None:
        self.continueExpected()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.malformedRequest()

    # The request being parsed.

    def requestLine(self) -> tuple[bytes, bytes, bytes]:
        """
        The method, target and version of the request whose head was just
        parsed (valid from its request line until its body is complete).
        """
        return self._command, self._path, self._version

    def requestVersion(self) -> bytes:
        """
        The version of the request whose head was just parsed.
        """
        return self._version

    def boundChunkSizes(self, limit: int) -> None:
        """
        Refuse, as malformed, a chunk size of the current request's body
        above C{limit}.
        """
        decoder = self._transferDecoder
        if type(decoder) is _CHUNKED_DECODER:
            bounded = _BoundedChunkedDecoder(decoder.dataCallback, decoder.finishCallback)
            bounded.limit = limit
            self._transferDecoder = bounded

    def bodyMayFollow(self) -> bool:
        """
        Whether the current request's head announced a body (a
        C{Content-Length} above 0, or C{chunked}) that may still arrive.
        """
        return bool(self.length) or self._transferDecoder is not None

    def forgetRequest(self) -> None:
        """
        Drop the body decoder of a request cut short (it holds bound
        methods of this channel and of the request: a cycle).
        """
        self._transferDecoder = None

    # Reading.

    def wrapNetworkProducer(self, wrap: Callable[[Any], Any]) -> None:
        """
        Replace what twisted.web pauses and resumes to stop and start
        reading (the transport) by C{wrap(it)}.
        """
        self._networkProducer = wrap(self._networkProducer)

    def takeUnreadInput(self) -> bytes:
        """
        Everything received and not parsed yet (pipelined data held while
        a request is handled), now taken out of the channel.
        """
        held = b"".join(self._dataBuffer)
        unparsed: bytes = self.clearLineBuffer()
        pending = held + unparsed
        self._dataBuffer = []
        return pending

    def idleTimerSuspended(self) -> bool:
        """
        Whether twisted.web suspended the idle timer for the request in
        progress (it does for a request parsed line by line; the one-pass
        hand-over leaves it running).
        """
        return self._savedTimeOut is not None

    def canTakeWholeHead(self) -> bool:
        """
        Whether nothing of an earlier head is pending in the line parser
        and we are not inside its own loop: a whole head that arrives now
        may be parsed in one pass.
        """
        return not (self._buffer or self._busyReceiving or not self.line_mode)

    def handOver(self, request: http.Request, rest: bytes, receive: Callable[[], object]) -> None:
        """
        Leave this channel as twisted.web's C{lineReceived},
        C{allHeadersReceived} and C{allContentReceived} leave it after a
        head without a body (C{request} already made, appended and its
        persistence decided), call C{receive()} (the request's
        C{requestReceived}) as from inside C{LineReceiver.dataReceived},
        then read C{rest} as that loop would read what follows the head.
        """
        _plainGotLength(request, 0)
        setattr(self, "_HTTPChannel__first_line", 1)  # noqa: B010 - twisted.web's private name
        # twisted.web suspends the idle timer here and makes a new one when
        # the request is done; the edge keeps it running instead (no timer
        # object per request).
        self._savedTimeOut = None
        self._handlingRequest = True
        self.setRawMode()
        self._buffer = rest
        self._busyReceiving = True
        try:
            receive()
        finally:
            self._busyReceiving = False
        if self._buffer and not getattr(self.transport, "disconnecting", False):
            basic.LineReceiver.dataReceived(self, self.clearLineBuffer())


__all__ = ["PRIVATE_NAMES", "ChannelInternals"]
