# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
The HTTP/2 command-line options of C{twistd lbproxy}, mixed into
L{lbproxy.cli.options.Options}, and their checking into
L{lbproxy.http2.settings.HTTP2Settings}.

    --http2 on|off    offer h2 before http/1.1 in ALPN on TLS listeners
    --h2c             take prior-knowledge HTTP/2 on plain listeners
"""

from __future__ import annotations

from twisted.python import usage

from lbproxy.http2.settings import HTTP2Settings

__all__ = ["HTTP2Options", "http2Settings"]


class HTTP2Options(usage.Options):
    """
    Whether clients may speak HTTP/2.
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
    ]


def http2Settings(options: usage.Options) -> HTTP2Settings:
    """
    The L{HTTP2Settings} of C{--http2} and C{--h2c}.

    @raise usage.UsageError: For a bad value, or C{--h2c} without
        C{--http2 on}.
    """
    value = str(options["http2"]).strip().lower()
    if value not in ("on", "off"):
        raise usage.UsageError(f"--http2 must be on or off, not {options['http2']!r}")
    enabled = value == "on"
    if options["h2c"] and not enabled:
        raise usage.UsageError("--h2c needs --http2 on")
    return HTTP2Settings(enabled=enabled, h2c=bool(options["h2c"]))
