# -*- test-case-name: lbproxy.test.test_http2options -*-
"""
The HTTP/2 command-line options of C{twistd lbproxy}, mixed into
L{lbproxy.cli.options.Options}, and their checking into
L{lbproxy.http2.settings.HTTP2Settings}.

    --http2 on|off                        offer h2 before http/1.1 in ALPN
    --h2c                                 prior-knowledge HTTP/2 on plain listeners
    --http2-max-concurrent-streams N      streams a client may have open at once
    --http2-max-header-list-size SIZE     largest decoded header list
    --http2-initial-window-size SIZE      each stream's receive window
    --http2-max-frame-size SIZE           largest frame a client may send
    --http2-stream-buffer SIZE            response bytes held per stream

As config-file keys they are the same names without the dashes in front
(C{http2-max-concurrent-streams = 50}); a reload names them among the
options that wait for a restart (each connection takes them when it opens).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.python import usage

from lbproxy.http2.settings import (
    MAX_FRAME_SIZE_RANGE,
    MAX_WINDOW_SIZE,
    HTTP2Settings,
)

__all__ = ["HTTP2Options", "http2Settings"]

_DEFAULTS = HTTP2Settings()


class HTTP2Options(usage.Options):
    """
    Whether clients may speak HTTP/2, and what they may do with it.
    """

    optFlags = [
        [
            "h2c",
            None,
            "Take prior-knowledge HTTP/2 (h2c) on plain listeners (with --http2 on).",
        ],
    ]

    optParameters = [
        [
            "http2",
            None,
            "off",
            "on: offer HTTP/2 (ALPN h2, then http/1.1) on TLS listeners; off: HTTP/1.1 only.",
        ],
        [
            "http2-max-concurrent-streams",
            None,
            str(_DEFAULTS.maxConcurrentStreams),
            "HTTP/2 streams a client may have open at once on one connection.",
        ],
        [
            "http2-max-header-list-size",
            None,
            "64K",
            "Largest decoded HTTP/2 header list (name, value and 32 bytes per field); "
            "larger closes the connection (the HPACK bomb defence).",
        ],
        [
            "http2-initial-window-size",
            None,
            str(_DEFAULTS.initialWindowSize),
            "Request body bytes a client may send on a stream ahead of its backend "
            "taking them (the connection's window is this times the stream limit).",
        ],
        [
            "http2-max-frame-size",
            None,
            str(_DEFAULTS.maxFrameSize),
            "Largest HTTP/2 frame payload a client may send (16384 to 16777215).",
        ],
        [
            "http2-stream-buffer",
            None,
            "64K",
            "Response bytes held per HTTP/2 stream for a client that is not reading "
            "before that stream's backend is paused.",
        ],
    ]


def http2Settings(options: usage.Options) -> HTTP2Settings:
    """
    The L{HTTP2Settings} of the HTTP/2 options (and C{--send-timeout}, which
    bounds a stream's wait for its window as it bounds an HTTP/1.1
    client's reading).

    @raise usage.UsageError: For a bad value, or C{--h2c} without
        C{--http2 on}.
    """
    value = str(options["http2"]).strip().lower()
    if value not in ("on", "off"):
        raise usage.UsageError(f"--http2 must be on or off, not {options['http2']!r}")
    enabled = value == "on"
    if options["h2c"] and not enabled:
        raise usage.UsageError("--h2c needs --http2 on")
    low, high = MAX_FRAME_SIZE_RANGE
    streams = _whole(options, "http2-max-concurrent-streams", 1, MAX_WINDOW_SIZE, parse=int)
    headerList = _whole(options, "http2-max-header-list-size", 1024, MAX_WINDOW_SIZE)
    window = _whole(options, "http2-initial-window-size", 1, MAX_WINDOW_SIZE)
    frame = _whole(options, "http2-max-frame-size", low, high)
    buffer = _whole(options, "http2-stream-buffer", 1, MAX_WINDOW_SIZE)
    sendTimeout = _DEFAULTS.sendTimeout
    try:
        sendTimeout = float(options.get("send-timeout", sendTimeout))
    except ValueError:
        pass  # --send-timeout's own check says so.
    return HTTP2Settings(
        enabled=enabled,
        h2c=bool(options["h2c"]),
        maxConcurrentStreams=streams,
        maxHeaderListSize=headerList,
        initialWindowSize=window,
        maxFrameSize=frame,
        streamBuffer=buffer,
        sendTimeout=sendTimeout,
    )


def _whole(
    options: usage.Options,
    name: str,
    low: int,
    high: int,
    parse: Callable[[str], int] | None = None,
) -> int:
    """
    Option C{name}: a whole number (a size with C{K} or C{M} unless
    C{parse} says otherwise) from C{low} to C{high}.

    @raise usage.UsageError: In one line, for anything else.
    """
    from lbproxy.cli.options import parseSize

    text = str(options[name])
    kind = "a whole number" if parse is int else "a size like 65536 or 64K"
    try:
        value = (parse or parseSize)(text.strip())
    except ValueError:
        raise usage.UsageError(f"--{name} must be {kind}, not {text!r}") from None
    if not low <= value <= high:
        raise usage.UsageError(f"--{name} must be from {low} to {high}, not {text!r}")
    return value
