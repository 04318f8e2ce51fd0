# -*- test-case-name: lbproxy.test.test_listen,lbproxy.test.test_twistedwall -*-
"""
Twisted's TLS protocol (L{twisted.protocols.tls}) for lbproxy's edge, with
a cheaper start and a handshake timeout; L{lbproxy.tls.server} listens with
it.

L{EdgeTLSFactory} makes L{EdgeTLSProtocol}s, which encrypt each write at
once: Twisted's default protocol, C{BufferingTLSTransport}, holds writes
for a timer until the next reactor turn, and lbproxy's edge writes a
response head with its first data while its TCP transports already batch
a turn's sends (L{lbproxy._twisted.transport}).  L{EdgeTLSProtocol}'s
C{makeConnection} is a copy of C{TLSMemoryBIOProtocol.makeConnection} that
declares the transport's last interface on the protocol in one
C{directlyProvides} call (what Twisted's nine calls, one per interface,
each replacing the one before, leave declared: about 11 µs per
connection), and starts the handshake timer.

The copy leans on the TLS protocol's private state, checked against
Twisted 26.10 (setup.cfg allows C{twisted < 27}; a new major version gets
this module re-read first) and listed in L{PRIVATE_NAMES}:
C{TLSMemoryBIOProtocol}'s C{_tlsConnection} (the OpenSSL connection,
made by the factory's C{_creatorCallable}), C{_appSendBuffer} (writes
waiting for the handshake), C{_connectWrapped} (whether the application
protocol is connected now), C{_checkHandshakeStatus} (drives the
handshake; overridden to stop the timer once it is done) and
C{_handshakeDone}; and C{TLSMemoryBIOFactory}'s C{_creatorCallable}.
L{lbproxy.test.test_twistedwall} fails, naming them, if Twisted no longer
has one.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl
from OpenSSL._util import no_zero_allocator as _allocate
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = ["CLOSE_NOTIFY_WAIT", "PRIVATE_NAMES", "EdgeTLSFactory", "EdgeTLSProtocol"]

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.protocols.tls.TLSMemoryBIOProtocol": (
        "_tlsConnection",
        "_appSendBuffer",
        "_connectWrapped",
        "_checkHandshakeStatus",
        "_handshakeDone",
        "_flushSendBIO",
        "_flushReceiveBIO",
        "_lostTLSConnection",
        "_aborted",
        "_shutdownTLS",
        "_tlsShutdownFinished",
        "_write",
        "_bufferedWrite",
    ),
    "twisted.protocols.tls.TLSMemoryBIOFactory": ("_creatorCallable",),
    "OpenSSL.SSL.Connection": ("_into_ssl", "_from_ssl", "_ssl", "_raise_ssl_error"),
    "OpenSSL._util": ("lib", "ffi", "no_zero_allocator"),
}
"""
Every private Twisted name this module uses, by the object that has it
(instance attributes are checked on an instance).
"""

_log = Logger()

CLOSE_NOTIFY_WAIT = 5.0
"""
Seconds the edge waits, once its close_notify is sent, for the client's
before it closes the TCP connection (after what was written has been
sent). Twisted's TLS protocol waits without limit: a client that neither
answered nor closed held its connection, counted against
C{--max-connections}, for ever. nginx and HAProxy close at once; the wait
keeps bytes the client still sends (a pipelined request) from turning the
close into a reset before it has read the answer.
"""


# The bytes a memory BIO holds: BIO_get_mem_data(bio, NULL), the same as
# BIO_ctrl_pending, which pyOpenSSL's bindings lack.
_buffered = _openssl.BIO_get_mem_data
_NULL = _ffi.NULL
_RECORD = 2**14
_READ = 2**15


class EdgeTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol for the edge, with a cheaper start.

    Twisted's C{makeConnection} declares the interfaces of the transport on
    the protocol one C{directlyProvides} call at a time (nine for a TCP
    connection, 11 µs per connection); each call replaces the one before,
    so what is left is the last interface alone. This does the same in one
    call, with the last interface remembered per transport class by the
    factory. Otherwise it is Twisted 26's C{makeConnection} as it stands.
    """

    factory: EdgeTLSFactory
    _handshakeTimer: IDelayedCall | None = None
    _closeTimer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        last = self.factory.lastInterface(transport)
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        if last is not None:
            directlyProvides(self, last)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()
        timeout = self.factory.handshakeTimeout
        if timeout is not None and not self._handshakeDone:
            self._handshakeTimer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)

    def _checkHandshakeStatus(self) -> None:
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if self._handshakeDone and not done:
            self.factory.handshakes += 1
            self._stopHandshakeTimer()

    # The data path, once the handshake is done: OpenSSL's calls made
    # directly (as pyOpenSSL's Connection makes them, without its per-call
    # checks, which matter only for callbacks during a handshake; the edge
    # refuses renegotiation), and pyOpenSSL's error handling when a call
    # does not succeed.

    def dataReceived(self, data: bytes) -> None:
        """
        Twisted's: put the bytes received into the receive BIO, then hand
        the application what they decrypt to.
        """
        if (
            not self._handshakeDone
            or self._appSendBuffer
            or not data
            or data.__class__ is not bytes
        ):
            super().dataReceived(data)
            return
        if _openssl.BIO_write(self._tlsConnection._into_ssl, data, len(data)) <= 0:
            super().dataReceived(data)  # (pyOpenSSL's bio_write raises)
            return
        self._flushReceiveBIO()

    def _write(self, data: bytes) -> None:
        """
        Twisted's: encrypt C{data} and send the records (one C{SSL_write}
        for up to a record's worth, as Twisted's loop would make).
        """
        if (
            not self._handshakeDone
            or self._lostTLSConnection
            or data.__class__ is not bytes
            or not 0 < len(data) <= _RECORD
        ):
            super()._write(data)
            return
        connection = self._tlsConnection
        written = _openssl.SSL_write(connection._ssl, data, len(data))
        if written <= 0:
            try:
                connection._raise_ssl_error(connection._ssl, written)
            except SSL.WantReadError:
                self._bufferedWrite(data)
                return
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return
            written = 0
        self._flushSendBIO()
        if written < len(data):
            super()._write(data[written:])

    def _flushSendBIO(self) -> None:
        """
        Twisted's: send what OpenSSL has written to the send BIO. Twisted
        reads until OpenSSL raises C{WantReadError}, an exception for each
        flush that finds nothing (most of them); this asks the BIO how much
        it holds and reads that, all at once.
        """
        bio = self._tlsConnection._from_ssl
        waiting = _buffered(bio, _NULL)
        if waiting:
            buffer = _allocate("char[]", waiting)
            read = _openssl.BIO_read(bio, buffer, waiting)
            if read > 0:
                self.transport.write(_ffi.buffer(buffer, read)[:])  # type: ignore[union-attr]

    def _flushReceiveBIO(self) -> None:
        """
        Twisted's: hand the application what the bytes put into the
        receive BIO decrypt to, then send what that produced. Twisted calls
        C{recv} until it raises C{WantReadError}; this stops as soon as
        neither the BIO nor OpenSSL holds anything more to read (the next
        C{recv} could only raise), so that a request costs no exception.
        """
        connection = self._tlsConnection
        ssl = connection._ssl
        into = connection._into_ssl
        while not self._lostTLSConnection:
            if not (_buffered(into, _NULL) or _openssl.SSL_pending(ssl)):
                break
            buffer = _allocate("char[]", _READ)
            read = _openssl.SSL_read(ssl, buffer, _READ)
            if read > 0:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, _ffi.buffer(buffer, read)[:])
                continue
            try:
                connection._raise_ssl_error(ssl, read)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # The client closed TLS; the application's connectionLost
                # gets the underlying transport's reason.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                break
        self._flushSendBIO()

    def _shutdownTLS(self) -> None:
        """
        Twisted's: send close_notify (or answer the client's). If the
        client's is still to come, wait for it for
        C{factory.closeNotifyTimeout} seconds at most (see
        L{CLOSE_NOTIFY_WAIT}).
        """
        super()._shutdownTLS()
        transport: Any = self.transport
        wait = self.factory.closeNotifyTimeout
        if (
            self._closeTimer is None
            and wait is not None
            and not self._lostTLSConnection
            and transport is not None
            and not transport.disconnecting
        ):
            self._closeTimer = self.factory.clock.callLater(wait, self._closeNotifyTimedOut)

    def _closeNotifyTimedOut(self) -> None:
        self._closeTimer = None
        if self.transport is not None and not self._lostTLSConnection:
            self.transport.loseConnection()

    def _stopHandshakeTimer(self) -> None:
        timer, self._handshakeTimer = self._handshakeTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        if not self._handshakeDone and self.transport is not None:
            _log.info(
                "TLS handshake from {peer} not done in {timeout:g}s; closing",
                peer=self.transport.getPeer(),
                timeout=self.factory.handshakeTimeout,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopHandshakeTimer()
        closeTimer, self._closeTimer = self._closeTimer, None
        if closeTimer is not None and closeTimer.active():
            closeTimer.cancel()
        if not self._handshakeDone:
            self.factory.handshakeFailures += 1
        super().connectionLost(reason)


class EdgeTLSFactory(TLSMemoryBIOFactory):
    """
    Makes L{EdgeTLSProtocol}s: encrypting each write at once (not at the
    next reactor turn, as Twisted's default C{BufferingTLSTransport} does
    with a timer per connection; lbproxy's edge writes a response head with
    its first data, and lbproxy's TCP transports batch a turn's sends, see
    L{lbproxy._twisted.transport}), and starting cheaper.

    @ivar handshakeTimeout: seconds a client has to complete its handshake
        (L{None}: no limit).
    @ivar closeNotifyTimeout: seconds to wait for the client's close_notify
        after the edge's (L{None}: no limit, as Twisted has it; see
        L{CLOSE_NOTIFY_WAIT}).
    @ivar clock: what times the handshake and the close; needed with
        either timeout.
    @ivar handshakes: TLS handshakes completed on this listener.
    @ivar handshakeFailures: Connections that closed before their
        handshake completed (refused, timed out, or abandoned).
    """

    protocol = EdgeTLSProtocol
    handshakeTimeout: float | None = None
    closeNotifyTimeout: float | None = None
    clock: IReactorTime
    handshakes = 0
    handshakeFailures = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lastInterfaces: dict[type, Any] = {}

    def lastInterface(self, transport: Any) -> Any:
        """
        The last interface C{transport} provides (what Twisted's
        C{makeConnection} leaves declared on the protocol), or L{None}.
        """
        kind = type(transport)
        if kind not in self._lastInterfaces:
            declared = list(providedBy(transport))
            self._lastInterfaces[kind] = declared[-1] if declared else None
        return self._lastInterfaces[kind]
