# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
The settings of HTTP/2 at the edge (C{--http2}, C{--h2c}), with their
documented defaults.
"""

from __future__ import annotations

import attrs

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""
The client connection preface (RFC 9113 3.4): how a prior-knowledge h2c
connection starts.
"""

MAX_WINDOW_SIZE = 2**31 - 1
"""
The largest flow-control window (and setting value) HTTP/2 allows (RFC
9113 6.9.1).
"""

MAX_FRAME_SIZE_RANGE = (2**14, 2**24 - 1)
"""
The values SETTINGS_MAX_FRAME_SIZE may take (RFC 9113 6.5.2).
"""


@attrs.frozen
class HTTP2Settings:
    """
    How HTTP/2 is offered to clients and what a client may do with it.

    @ivar enabled: Offer C{h2} (before C{http/1.1}) in ALPN on TLS
        listeners (C{--http2 on}).
    @ivar h2c: Take prior-knowledge HTTP/2 (a connection that starts with
        the preface) on plain listeners (C{--h2c}).
    @ivar maxConcurrentStreams: Streams a client may have open at once
        (SETTINGS_MAX_CONCURRENT_STREAMS).
    @ivar maxHeaderListSize: The largest decoded header list, in bytes as
        RFC 9113 counts them (name, value and 32 per field); larger is a
        connection error (the HPACK bomb defence).
    @ivar maxFrameSize: The largest frame payload a client may send.
    @ivar initialWindowSize: Each stream's receive window: request body
        bytes a client may send ahead of their being taken by a backend.
        The connection's window is this times C{maxConcurrentStreams} (at
        most L{MAX_WINDOW_SIZE}), so that a stalled stream never holds the
        others back.
    @ivar streamBuffer: Response bytes held per stream, waiting for the
        client's flow-control window, before reading from that stream's
        backend pauses.
    @ivar resetBurst: Client resets (RST_STREAM) a connection may send at
        once before it is closed with ENHANCE_YOUR_CALM (CVE-2023-44487)...
    @ivar resetRate: ...and then per second, sustained (a token bucket).
    @ivar maxPendingAcks: PING and SETTINGS frames a client may send while
        not reading what lbproxy sends (their acknowledgements queue);
        beyond, the connection is closed with ENHANCE_YOUR_CALM.
    @ivar sendTimeout: Seconds a stream's response may wait for the client
        to open its window before the stream is reset.
    """

    enabled: bool = False
    h2c: bool = False
    maxConcurrentStreams: int = 100
    maxHeaderListSize: int = 64 * 1024
    maxFrameSize: int = 16 * 1024
    initialWindowSize: int = 64 * 1024 - 1
    streamBuffer: int = 64 * 1024
    resetBurst: int = 200
    resetRate: float = 100.0
    maxPendingAcks: int = 1000
    sendTimeout: float = 60.0

    @property
    def connectionWindowSize(self) -> int:
        """
        The connection's receive window (see C{initialWindowSize}).
        """
        return min(MAX_WINDOW_SIZE, self.maxConcurrentStreams * self.initialWindowSize)


__all__ = ["H2_PREFACE", "MAX_FRAME_SIZE_RANGE", "MAX_WINDOW_SIZE", "HTTP2Settings"]
