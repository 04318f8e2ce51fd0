# -*- test-case-name: lbproxy.test.test_client -*-
"""
A lean HTTP/1.1 client connection to one backend: writes a request head in
one write, parses the response head in one pass, and streams the body to a
protocol with backpressure. It replaces twisted.web's C{Agent} on the hot
path (see bench/README.md for why) and keeps its failure vocabulary
(L{ResponseNeverReceived}, L{ResponseFailed}, L{RequestTransmissionFailed},
L{ResponseDone}, L{PotentialDataLoss}) so the proxy's error mapping and
retry rules stay as they are.

Parsing is strict: a response whose framing is ambiguous or malformed fails
with L{InvalidResponse} and its connection is aborted, never reused.

The request body streams (L{lbproxy.upstream.body.StreamedBody}): the head goes out
at once, the body as the client sends it, with the body registered as the
transport's producer so that a slow backend pauses the client. Interim
(1xx) responses are handed to the caller as they come; a C{101} to a
request that asked for an upgrade turns the connection into a byte
tunnel (L{BackendResponse.tunnel}).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from lbproxy.upstream.body import StreamedBody
from lbproxy.upstream.reply import Pending

MAX_HEAD = 64 * 1024
"""
The largest response head (status line and headers) accepted.
"""

_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?\Z")
# A whole response head in one match: a status line, then header lines of a
# token, a colon and a value without CR or LF (so no bare CR/LF anywhere).
_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: ([^\r\n]*))?"
    rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*)*\Z"
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")

# Connection-control response headers: kept apart from the end-to-end ones,
# as twisted.web's client does, so the proxy can drop them.
_CONNECTION_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


class HeaderLines:
    """
    Response header lines as received, read through the part of
    L{twisted.web.http_headers.Headers}' interface the proxy uses, without
    copying or re-checking every value (the parser already checked them).
    """

    def __init__(
        self, lines: Sequence[tuple[bytes, bytes]], names: frozenset[bytes] | None = None
    ) -> None:
        self._lines = lines
        self._names = names

    @property
    def names(self) -> frozenset[bytes]:
        """
        The lower-cased names of the lines.
        """
        if self._names is None:
            self._names = frozenset(name.lower() for name, _ in self._lines)
        return self._names

    @property
    def lines(self) -> Sequence[tuple[bytes, bytes]]:
        """
        The header lines, as received (names as the backend wrote them).
        """
        return self._lines

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """
        Each header name with all its values, in order of first appearance.
        """
        grouped: dict[bytes, tuple[bytes, list[bytes]]] = {}
        for name, value in self._lines:
            entry = grouped.get(name.lower())
            if entry is None:
                grouped[name.lower()] = (name, [value])
            else:
                entry[1].append(value)
        return iter(grouped.values())

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        """
        All values of header C{name} (case-insensitive), or C{default}.
        """
        lower = name.lower()
        values = [value for key, value in self._lines if key.lower() == lower]
        return values if values else default

    def hasHeader(self, name: bytes) -> bool:
        """
        Whether there is a header C{name}.
        """
        lower = name.lower()
        return any(key.lower() == lower for key, _ in self._lines)


class InvalidResponse(Exception):
    """
    A backend's response cannot be relayed safely (malformed status line or
    header, ambiguous framing, a head over the limit); its connection was
    dropped.
    """


def _whatIsWrong(head: bytes) -> str:
    """
    A short description of what is wrong with a response head that failed
    the one-pass check (this path is rare, so it may be slow).
    """
    if b"\x00" in head:
        return "NUL in the response head"
    lines = head.split(b"\r\n")
    if not _STATUS.match(lines[0]):
        return f"malformed status line {lines[0][:80]!r}"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return f"malformed header line {line[:80]!r}"
        if b"\r" in value or b"\n" in value:
            return "bare CR or LF in a header value"
    return "malformed response head"


class BackendResponse:
    """
    A response's head, and its body delivered later to a protocol.

    The same attributes the proxy reads from twisted.web's C{IResponse}:
    C{code}, C{phrase}, C{headers} (end-to-end), C{connectionHeaders},
    C{length} and L{deliverBody}; C{trailers} as an HTTP/2 backend's
    response has them (a chunked body's trailer section is not kept).
    """

    trailers: list[tuple[bytes, bytes]] | None = None

    def __init__(
        self,
        connection: BackendConnection,
        code: int,
        phrase: bytes,
        headers: HeaderLines,
        connectionHeaders: HeaderLines,
        length: int | object,
    ) -> None:
        self._connection = connection
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.connectionHeaders = connectionHeaders
        self.length = length
        self.tunnel: BackendTunnel | None = BackendTunnel(connection) if code == 101 else None

    def deliverBody(self, protocol: Protocol) -> None:
        """
        Stream the body to C{protocol}: C{makeConnection} with a producer
        (pause, resume, stop), then C{dataReceived}s, then
        C{connectionLost} with L{ResponseDone}, L{PotentialDataLoss} (a body
        that ends when the connection does), or another failure.
        """
        self._connection.deliverBody(protocol)

    def takeWholeBody(self) -> bytes | None:
        """
        The whole body, if it arrived complete with the head (most small
        responses do), instead of L{deliverBody}: the exchange is then over
        and the connection goes back to its pool. L{None} if the body is
        still on its way, or failed; L{deliverBody} then streams it.
        """
        return self._connection.takeWholeBody()


class BackendTunnel:
    """
    The client-to-backend half of an upgraded connection (after a C{101}):
    bytes written here go to the backend as they are; the backend's bytes
    arrive as the response "body" (L{BackendResponse.deliverBody}).
    """

    def __init__(self, connection: BackendConnection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        """
        Send C{data} to the backend.
        """
        transport = self._connection.transport
        if transport is not None:
            transport.write(data)

    def registerProducer(self, producer: IPushProducer) -> None:
        """
        Let the backend's transport pause C{producer} (the client's
        reading) when it cannot take more.
        """
        transport: Any = self._connection.transport
        if transport is not None and transport.producer is None:
            transport.registerProducer(producer, True)

    def loseConnection(self) -> None:
        """
        Close the backend connection once what was written has been sent.
        """
        self._connection.close()

    def abort(self) -> None:
        """
        Drop the backend connection at once.
        """
        self._connection.abort()


@implementer(IPushProducer)
class _BodyProducer:
    """
    What a body protocol sees as its transport: pause and resume reading
    from the backend, or stop (abort the connection).
    """

    def __init__(self, connection: BackendConnection) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.pauseReading()

    def resumeProducing(self) -> None:
        self._connection.resumeReading()

    def stopProducing(self) -> None:
        self._connection.abort()


CLOSE_WAIT = 5.0
"""
Seconds a connection closed cleanly (L{BackendConnection.close}) may take
to be gone before it is aborted: over TLS the close waits for the
backend's close_notify, and a backend that hangs never sends it (nor
reads what is still to be sent).
"""


class BackendConnection(Protocol):
    """
    One persistent HTTP/1.1 connection to a backend, carrying one request at
    a time.

    @ivar reusable: Whether the connection can carry another request once
        the current exchange is complete.
    @ivar onIdle: Called with this connection when an exchange completes
        and it can be reused (set by the pool).
    @ivar onClosed: Called with this connection when it closes.
    @ivar clock: What times a clean close (see L{CLOSE_WAIT}); set by the
        pool. Without one, a clean close waits as long as it takes.
    """

    reusable = True
    onIdle: Callable[[BackendConnection], None] | None = None
    onClosed: Callable[[BackendConnection], None] | None = None
    clock: IReactorTime | None = None
    _closeTimer: IDelayedCall | None = None

    def __init__(self) -> None:
        self._state = "idle"
        self._buffer = b""
        self._method = b""
        self._pending: Pending | None = None
        self._received = False
        self._requestWritten = True
        self._bodyProtocol: Protocol | None = None
        self._bodyBuffer: list[bytes] = []
        self._remaining = 0
        self._chunked = False
        self._untilClose = False
        self._chunkState = "size"
        self._paused = False
        self._closed = False
        self._lostReason: Failure | None = None
        self._body: StreamedBody | None = None
        self._chunkedRequest = False
        self._upgrade = False
        self._interim: Callable[[int, bytes, HeaderLines], None] | None = None

    # Requests.

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Callable[[int, bytes, HeaderLines], None] | None = None,
        upgrade: bool = False,
    ) -> Deferred[BackendResponse]:
        """
        Send a request; fires with the response once its head has arrived
        (see L{requestInto}); cancelling it aborts the connection.
        """
        d: Deferred[BackendResponse] = Deferred(lambda _: self.abort())
        self.requestInto(d, method, target, headers, body, interim, upgrade)
        return d

    def requestInto(
        self,
        pending: Pending,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: StreamedBody | None,
        interim: Callable[[int, bytes, HeaderLines], None] | None = None,
        upgrade: bool = False,
    ) -> None:
        """
        Send a request; C{pending} (a L{lbproxy.upstream.reply.Reply} or a
        L{Deferred}) is called back with the response once its head has
        arrived, or errbacked with why it will not come.

        @param headers: The request's header lines (no framing headers).
        @param body: The body, streamed as it arrives (see
            L{StreamedBody}), or L{None}.
        @param interim: Called with each interim (1xx) response other than
            C{101}: its code, reason phrase and header lines.
        @param upgrade: Whether C{headers} ask for a protocol upgrade: a
            C{101} answer then turns the connection into a tunnel (and is
            refused otherwise).
        """
        assert self._state == "idle" and not self._closed
        self._state = "head"
        self._method = method
        self._received = False
        self._buffer = b""
        self._interim = interim
        self._upgrade = upgrade
        self._pending = pending
        # The head: request line, header lines, framing (joined in C: the
        # names and values are the edge's, already checked).
        fields = b"\r\n".join(map(b": ".join, headers))
        self._chunkedRequest = body is not None and body.length is None
        if body is None or body.length == 0:
            if body is not None or method in (b"POST", b"PUT", b"PATCH"):
                framing = b"Content-Length: 0\r\n"
            else:
                framing = b""
            body = None
        elif body.length is None:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % (body.length,)
        transport: Any = self.transport
        if fields:
            transport.write(
                b"%s %s HTTP/1.1\r\n%s\r\n%s\r\n" % (method, target, fields, framing)
            )
        else:
            transport.write(b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, framing))
        if body is None:
            self._requestWritten = True
        else:
            self._requestWritten = False
            self._body = body
            transport.registerProducer(body, True)
            body.attach(self)

    def writeBody(self, data: bytes) -> None:
        """
        Send the next piece of the request body (see L{StreamedBody}).
        """
        transport: Any = self.transport
        if self._closed or transport is None or not data:
            # An empty piece is nothing to send; as a chunk it would be the
            # last one, and what followed would be read as a new request.
            return
        if self._chunkedRequest:
            transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            transport.write(data)

    def finishBody(self) -> None:
        """
        The request body is complete.
        """
        self._body = None
        transport: Any = self.transport
        if self._closed or transport is None:
            return
        if self._chunkedRequest:
            transport.write(b"0\r\n\r\n")
        transport.unregisterProducer()
        self._requestWritten = True
        self._maybeIdle()

    def _stopBody(self) -> None:
        """
        The request body will not be completed on this connection.
        """
        body, self._body = self._body, None
        if body is not None:
            body.detach()
        transport: Any = self.transport
        if transport is not None and transport.producer is body is not None:
            transport.unregisterProducer()

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if data:
            self._received = True
        if self._state == "head":
            self._buffer += data
            self._parseHead()
        elif self._state == "body":
            self._bodyData(data)
        elif self._state == "idle":
            # Bytes nobody asked for: the connection cannot be trusted.
            self.reusable = False
            self.abort()

    def _parseHead(self) -> None:
        while self._state == "head":
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._fail(InvalidResponse("response head too large"))
                elif self._buffer.count(b"\n") != self._buffer.count(b"\r\n"):
                    # A line ended by LF alone: refused at once (a head that
                    # never ends in CRLF CRLF would otherwise wait for the
                    # response timeout).
                    self._fail(InvalidResponse("line ending without CR in the response head"))
                return
            if end > MAX_HEAD:
                self._fail(InvalidResponse("response head too large"))
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            try:
                response = self._response(head)
            except InvalidResponse as e:
                self._fail(e)
                return
            if response is None:
                continue  # An interim 1xx response; the real one follows.
            self._state = "body"
            pending, self._pending = self._pending, None
            rest, self._buffer = self._buffer, b""
            assert pending is not None
            # The body that came with the head is taken first (kept until
            # deliverBody), so that a small response is complete by the
            # time its receiver sees it.
            if self._bodyIsEmpty():
                self._bodyDone()
            elif rest:
                self._bodyData(rest)
            pending.callback(response)

    def _bodyIsEmpty(self) -> bool:
        return not self._chunked and not self._untilClose and self._remaining == 0

    def _response(self, head: bytes) -> BackendResponse | None:
        match = _HEAD.match(head)
        if match is None or b"\x00" in head:
            raise InvalidResponse(_whatIsWrong(head))
        minor, codeText, phrase = match.groups()
        code = int(codeText)
        endToEnd: list[tuple[bytes, bytes]] = []
        names: set[bytes] = set()
        connectionLines: list[tuple[bytes, bytes]] = []
        connection: dict[bytes, list[bytes]] = {}
        lines = head.split(b"\r\n")
        for index in range(1, len(lines)):
            name, _, value = lines[index].partition(b":")
            value = value.strip(b" \t")
            lower = name.lower()
            if lower in _CONNECTION_HEADERS:
                connectionLines.append((name, value))
                connection.setdefault(lower, []).append(value)
            else:
                endToEnd.append((name, value))
                names.add(lower)
        if code < 200:
            if code != 101:
                if self._interim is not None:
                    self._interim(code, phrase or b"", HeaderLines(endToEnd + connectionLines))
                return None
            if not self._upgrade:
                raise InvalidResponse("101 Switching Protocols to a request without Upgrade")
            # From here on the connection is a tunnel: everything the
            # backend sends is the "body", until it closes.
            self.reusable = False
            self._chunked = False
            self._untilClose = True
            return BackendResponse(
                self,
                code,
                phrase or b"",
                HeaderLines(endToEnd),
                HeaderLines(connectionLines),
                UNKNOWN_LENGTH,
            )
        if b"connection" in connection or minor == b"0":
            tokens = {
                t.strip().lower() for v in connection.get(b"connection", ()) for t in v.split(b",")
            }
            if (minor == b"0" and b"keep-alive" not in tokens) or b"close" in tokens:
                self.reusable = False
        length = self._framing(code, connection)
        return BackendResponse(
            self,
            code,
            phrase or b"",
            HeaderLines(endToEnd, frozenset(names)),
            HeaderLines(connectionLines),
            length,
        )

    def _framing(self, code: int, connection: dict[bytes, list[bytes]]) -> int | object:
        encodings = connection.get(b"transfer-encoding")
        lengths = connection.get(b"content-length")
        self._chunked = self._untilClose = False
        self._remaining = 0
        if self._method == b"HEAD" or code in (204, 304):
            return 0
        if encodings:
            if lengths:
                raise InvalidResponse("both Content-Length and Transfer-Encoding")
            codings = [c.strip().lower() for v in encodings for c in v.split(b",")]
            if codings != [b"chunked"]:
                raise InvalidResponse("a transfer coding other than chunked")
            self._chunked = True
            self._chunkState = "size"
            return UNKNOWN_LENGTH
        if lengths:
            if len(lengths) == 1 and lengths[0].isdigit() and lengths[0].isascii():
                self._remaining = int(lengths[0])
                return self._remaining
            values = {v.strip() for value in lengths for v in value.split(b",")}
            if len(values) != 1:
                raise InvalidResponse("conflicting Content-Length headers")
            (value,) = values
            if not (value.isdigit() and value.isascii()):
                raise InvalidResponse("malformed Content-Length")
            self._remaining = int(value)
            return self._remaining
        self._untilClose = True
        self.reusable = False
        return UNKNOWN_LENGTH

    # The body.

    def deliverBody(self, protocol: Protocol) -> None:
        """
        See L{BackendResponse.deliverBody}.
        """
        self._bodyProtocol = protocol
        protocol.makeConnection(_BodyProducer(self))
        buffered, self._bodyBuffer = self._bodyBuffer, []
        for data in buffered:
            protocol.dataReceived(data)
        if self._state == "done-body":
            self._finishBody(self._lostReason)

    def takeWholeBody(self) -> bytes | None:
        """
        See L{BackendResponse.takeWholeBody}.
        """
        if self._state != "done-body" or self._lostReason is not None:
            return None
        buffered, self._bodyBuffer = self._bodyBuffer, []
        self._finishBody(None)
        return buffered[0] if len(buffered) == 1 else b"".join(buffered)

    def _emit(self, data: bytes) -> None:
        if self._bodyProtocol is not None:
            self._bodyProtocol.dataReceived(data)
        else:
            self._bodyBuffer.append(data)

    def _bodyData(self, data: bytes) -> None:
        if self._untilClose:
            self._emit(data)
        elif not self._chunked:
            take = data[: self._remaining]
            self._remaining -= len(take)
            if take:
                self._emit(take)
            if self._remaining == 0:
                if len(data) > len(take):
                    self.reusable = False  # Bytes beyond the body: distrust.
                self._bodyDone()
        else:
            self._buffer += data
            self._chunks()

    def _chunks(self) -> None:
        while self._state == "body":
            if self._chunkState == "size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        self._bodyFailed(InvalidResponse("malformed chunk size"))
                    return
                sizeText = self._buffer[:end].split(b";", 1)[0].strip(b" \t")
                self._buffer = self._buffer[end + 2 :]
                if not _CHUNK_SIZE.match(sizeText):
                    self._bodyFailed(InvalidResponse("malformed chunk size"))
                    return
                self._remaining = int(sizeText, 16)
                self._chunkState = "data" if self._remaining else "trailer"
            elif self._chunkState == "data":
                if not self._buffer:
                    return
                take = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                self._emit(take)
                if self._remaining == 0:
                    self._chunkState = "crlf"
            elif self._chunkState == "crlf":
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    self._bodyFailed(InvalidResponse("malformed chunk"))
                    return
                self._buffer = self._buffer[2:]
                self._chunkState = "size"
            else:  # trailer section: skip lines up to the empty one
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        self._bodyFailed(InvalidResponse("trailer section too large"))
                    return
                line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                if not line:
                    if self._buffer:
                        self.reusable = False
                    self._bodyDone()

    def _bodyDone(self) -> None:
        self._state = "done-body"
        self._lostReason = None
        if self._bodyProtocol is not None:
            self._finishBody(None)

    def _bodyFailed(self, error: Exception) -> None:
        self.reusable = False
        self._state = "done-body"
        self._lostReason = Failure(ResponseFailed([Failure(error)]))
        if self._bodyProtocol is not None:
            self._finishBody(self._lostReason)
        self.abort()

    def _finishBody(self, reason: Failure | None) -> None:
        protocol, self._bodyProtocol = self._bodyProtocol, None
        self._state = "finished"
        if not self._requestWritten:
            # The response ended before the request body did: this
            # connection is out of step with the backend.
            self._stopBody()
            self.abort()
        if reason is None:
            self._maybeIdle()
        if protocol is not None:
            protocol.connectionLost(reason or Failure(ResponseDone()))

    def _maybeIdle(self) -> None:
        if self._state != "finished" or not self._requestWritten:
            return
        self._state = "idle"
        self._buffer = b""
        if self._paused:
            self.resumeReading()
        if self.reusable and not self._closed and self.onIdle is not None:
            self.onIdle(self)
        elif not self._closed:
            self.close()

    # Flow control and closing.

    def pauseReading(self) -> None:
        """
        Stop reading from the backend (the client is slow).
        """
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeReading(self) -> None:
        """
        Read from the backend again.
        """
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> None:
        """
        Close the connection cleanly; abort it if it is not gone within
        L{CLOSE_WAIT} seconds.
        """
        self.reusable = False
        if self.transport is not None and not self._closed:
            self.transport.loseConnection()
            if self.clock is not None and self._closeTimer is None and not self._closed:
                self._closeTimer = self.clock.callLater(CLOSE_WAIT, self.abort)

    def abort(self) -> None:
        """
        Drop the connection at once: its current exchange fails.
        """
        self.reusable = False
        if self.transport is not None and not self._closed:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        pending, self._pending = self._pending, None
        self.abort()
        if pending is not None:
            pending.errback(Failure(ResponseFailed([Failure(error)])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self.reusable = False
        closeTimer, self._closeTimer = self._closeTimer, None
        if closeTimer is not None and closeTimer.active():
            closeTimer.cancel()
        self._stopBody()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            if not self._requestWritten:
                pending.errback(Failure(RequestTransmissionFailed([reason])))
            elif self._received:
                pending.errback(Failure(ResponseFailed([reason])))
            else:
                pending.errback(Failure(ResponseNeverReceived([reason])))
        elif self._state == "body":
            if self._untilClose and reason.check(ConnectionDone):
                # A body delimited by the end of the connection ended with a
                # clean close; a reset is a failure (the body may be cut).
                self._lostReason = Failure(PotentialDataLoss())
            else:
                self._lostReason = Failure(ResponseFailed([reason]))
            self._state = "done-body"
            if self._bodyProtocol is not None:
                self._finishBody(self._lostReason)
        if self.onClosed is not None:
            self.onClosed(self)


__all__ = [
    "CLOSE_WAIT",
    "BackendConnection",
    "BackendResponse",
    "InvalidResponse",
]
