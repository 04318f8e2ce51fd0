# -*- test-case-name: lbproxy.test.test_accesslog -*-
"""
The access log's line formats (C{--access-log-format}): lbproxy's own,
Apache's C{combined}, and C{json}, one object per line.

Each format turns an L{Entry} (what is known of one request) into one line
of text. Whatever a client sent (the request line, User-Agent, Referer, an
ID from a trusted proxy) is escaped, so one request is always one line and
every quoted field stays one field: no control character, line separator,
unescaped quote or invalid UTF-8 reaches the log.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.web.http_headers import Headers

from lbproxy.proxy import ProxyRecord

FORMATS = ("lbproxy", "combined", "json")
"""
The names C{--access-log-format} takes, the default first.
"""


@attrs.define
class Entry:
    """
    What the access log knows of one request: one it answered (through
    the proxy or not) or one the edge refused.

    @ivar client: The original client's address (through trusted
        proxies), or C{-}.
    @ivar method: The request method, if it was read.
    @ivar target: The request-target, if it was read.
    @ivar protocol: The HTTP version, if it was read.
    @ivar status: The status sent (499 when the client left first).
    @ivar size: Bytes of response body sent.
    @ivar record: What the proxy did (an empty record, but for C{error},
        for a request it never saw).
    @ivar requestId: The request's ID, or L{None}.
    @ivar receivedAt: When the request was handed over, or L{None}.
    @ivar headers: The request's headers, when they were read.
    @ivar transport: The client connection's transport (for the TLS
        version), or L{None}.
    """

    client: str
    method: bytes | None
    target: bytes | None
    protocol: bytes | None
    status: int
    size: int
    record: ProxyRecord
    requestId: bytes | None = None
    receivedAt: float | None = None
    headers: Headers | None = None
    transport: Any = None


# --- lbproxy's own format ----------------------------------------------

LBPROXY_FORMAT = (
    '{client} "{method} {path} {protocol}" {status} {bytes} '
    "backend={backend} upstream={upstream}{extra}"
)
"""
lbproxy's line, as a twisted.logger format over L{lbproxyFields}.
"""


def lbproxyFields(entry: Entry) -> dict[str, Any]:
    """
    The fields of lbproxy's line for C{entry}, already escaped; the
    request ID, when there is one, ends the line as C{rid=ID}.
    """
    record = entry.record
    extra = ""
    tried = record.tried
    if len(tried) > 1:
        extra += f" retries={len(tried) - 1} tried={','.join(str(b) for b in tried)}"
    if record.tunnelToBackend is not None:
        seconds = record.tunnelSeconds
        extra += f" tunnel_up={record.tunnelToBackend} tunnel_down={record.tunnelToClient}"
        if seconds is not None:
            extra += f" tunnel_time={seconds:.3f}s"
    if record.truncated:
        extra += " truncated"
    if record.error:
        extra += f' error="{_escapedText(record.error, _ERROR_UNSAFE, _ESCAPES)}"'
    if entry.requestId is not None:
        extra += " rid=" + _text(entry.requestId, _TOKEN_SAFE, _TOKEN_ESCAPES)
    backend = record.backend
    upstream = record.upstreamSeconds
    return {
        "client": _escapedText(entry.client, _TOKEN_UNSAFE, _TOKEN_ESCAPES),
        "method": _text(entry.method or b"-"),
        "path": _text(entry.target or b"-"),
        "protocol": _text(entry.protocol or b"-"),
        "status": entry.status,
        "bytes": entry.size,
        "backend": str(backend) if backend is not None else "-",
        "upstream": "-" if upstream is None else f"{upstream:.3f}s",
        "extra": extra,
    }


_ESCAPES = (
    {c: f"\\x{c:02x}" for c in range(32)}
    | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
    | {127: "\\x7f", ord('"'): '\\"'}
    # Line separators that some readers split lines at (str.splitlines).
    | {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}
)
_TOKEN_ESCAPES = _ESCAPES | {ord(" "): "\\x20"}
_SAFE = bytes(c for c in range(0x20, 0x7F) if c != ord('"'))
_TOKEN_SAFE = _SAFE.replace(b" ", b"")
_ERROR_UNSAFE = re.compile('[\x00-\x1f"\x7f\x85\u2028\u2029]')
_TOKEN_UNSAFE = re.compile('[^!#-~]')


def _text(value: bytes, safe: bytes = _SAFE, escapes: dict[int, str] = _ESCAPES) -> str:
    """
    Bytes from a request as text for lbproxy's line: as they are when
    every byte is in C{safe} (the usual case, checked in one C{translate}),
    else escaped (bytes beyond ASCII as C{\\xHH}, the rest by C{escapes}).
    """
    if not value.translate(None, safe):
        return value.decode("ascii")
    return value.decode("ascii", "backslashreplace").translate(escapes)


def _escapedText(text: str, unsafe: re.Pattern[str], escapes: dict[int, str]) -> str:
    """
    C{text} with C{escapes} made, when C{unsafe} finds it needs any.
    """
    return text.translate(escapes) if unsafe.search(text) else text


# --- combined ------------------------------------------------------------


class CombinedFormat:
    """
    Apache's and nginx's C{combined} format, C{%h %l %u %t "%r" %>s %b
    "%{Referer}i" "%{User-agent}i"}, in UTC; C{-} for what is empty. A
    request ID, when there is one, follows as one more quoted field (as
    nginx's C{log_format ... "$request_id"}); parsers of the combined format
    read past it.

    Escaped as nginx escapes: C{"}, C{\\} and bytes outside printable
    ASCII as C{\\xHH}, so a quoted field never holds a quote and the usual
    C{"([^"]*)"} patterns hold.
    """

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def line(self, entry: Entry, now: float) -> str:
        """
        The combined line for C{entry}, logged at C{now}.
        """
        second = int(now)
        if second != self._second:
            t = time.gmtime(second)
            self._second = second
            self._stamp = (
                f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]"
            )
        if entry.method is None:
            request = "-"
        else:
            request = " ".join(
                (
                    _field(entry.method),
                    _field(entry.target, _TARGET_SAFE, _TARGET_ESCAPES),
                    _field(entry.protocol),
                )
            )
        headers = entry.headers
        referer = userAgent = None
        if headers is not None:
            referer = _first(headers, b"referer")
            userAgent = _first(headers, b"user-agent")
        client = _escapedText(entry.client, _TOKEN_UNSAFE, _TARGET_ESCAPES)
        line = (
            f'{client} - - {self._stamp} "{request}" {entry.status} {entry.size or "-"} '
            f'"{_field(referer)}" "{_field(userAgent)}"'
        )
        if entry.requestId is not None:
            line += f' "{_field(entry.requestId)}"'
        return line


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_COMBINED_ESCAPES = {
    c: f"\\x{c:02X}" for c in (*range(0x20), ord('"'), ord("\\"), *range(0x7F, 0x100))
}
_TARGET_ESCAPES = _COMBINED_ESCAPES | {ord(" "): "\\x20"}
_COMBINED_SAFE = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
_TARGET_SAFE = _COMBINED_SAFE.replace(b" ", b"")


def _field(
    value: bytes | None, safe: bytes = _COMBINED_SAFE, escapes: dict[int, str] = _COMBINED_ESCAPES
) -> str:
    """
    A combined field: C{-} when empty, else C{value}, escaped when a byte
    is not in C{safe}.
    """
    if not value:
        return "-"
    if not value.translate(None, safe):
        return value.decode("ascii")
    return value.decode("latin-1").translate(escapes)


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


# --- json ----------------------------------------------------------------


class JSONFormat:
    """
    One JSON object per line: C{time} (ISO 8601, UTC, milliseconds),
    C{client}, C{method}, C{target}, C{protocol}, C{status}, C{bytes},
    C{duration} and C{upstream_time} (seconds), C{backend}, C{pool},
    C{retries}, C{tried}, C{request_id}, C{tls_version}, C{user_agent},
    C{referer}, C{error}, C{truncated}; and for an upgraded connection
    C{tunnel_up}, C{tunnel_down} (bytes each way) and C{tunnel_time}.
    C{null} for what is not known.

    Text is UTF-8 where the bytes were (invalid bytes appear as C{\\xHH}),
    and the line is ASCII: JSON escapes everything else, control
    characters and line separators included.
    """

    def __init__(self, tlsVersion: Callable[[Any], str | None] | None = None) -> None:
        """
        @param tlsVersion: Finds the TLS version of a client transport
            (L{tlsVersionOf} unless given).
        """
        self._tlsVersion = tlsVersion or tlsVersionOf
        self._second = -1
        self._stamp = ""

    def fields(self, entry: Entry, now: float) -> dict[str, Any]:
        """
        The object logged for C{entry} at C{now}.
        """
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = min(int((now - second) * 1000), 999)
        record = entry.record
        headers = entry.headers
        referer = userAgent = None
        if headers is not None:
            referer = _first(headers, b"referer")
            userAgent = _first(headers, b"user-agent")
        tried = record.tried
        upstream = record.upstreamSeconds
        fields: dict[str, Any] = {
            "time": f"{self._stamp}.{millis:03d}Z",
            "client": entry.client,
            "method": _utf8(entry.method),
            "target": _utf8(entry.target),
            "protocol": _utf8(entry.protocol),
            "status": entry.status,
            "bytes": entry.size,
            "duration": (
                None if entry.receivedAt is None else round(max(now - entry.receivedAt, 0.0), 6)
            ),
            "upstream_time": None if upstream is None else round(upstream, 6),
            "backend": None if record.backend is None else str(record.backend),
            "pool": record.pool,
            "retries": max(len(tried) - 1, 0),
            "tried": [str(backend) for backend in tried],
            "request_id": _utf8(entry.requestId),
            "tls_version": self._tlsVersion(entry.transport),
            "user_agent": _utf8(userAgent),
            "referer": _utf8(referer),
            "error": record.error or None,
            "truncated": record.truncated,
        }
        if record.tunnelToBackend is not None:
            seconds = record.tunnelSeconds
            fields["tunnel_up"] = record.tunnelToBackend
            fields["tunnel_down"] = record.tunnelToClient
            fields["tunnel_time"] = None if seconds is None else round(seconds, 6)
        return fields

    def line(self, entry: Entry, now: float) -> str:
        """
        The JSON line for C{entry}, logged at C{now}.
        """
        return self.dump(self.fields(entry, now))

    @staticmethod
    def dump(fields: dict[str, Any]) -> str:
        """
        C{fields} (as L{fields} makes them) as one line of ASCII JSON.
        """
        return json.dumps(fields, separators=(",", ":"))


def _utf8(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def tlsVersionOf(transport: Any) -> str | None:
    """
    The TLS version of a client connection (C{"TLSv1.3"}), from its
    transport's OpenSSL connection (C{getHandle}); L{None} for a plain
    one, or if it cannot be told.
    """
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    try:
        version = getattr(getHandle(), "get_protocol_version_name", None)
        name = version() if version is not None else None
    except Exception:  # noqa: BLE001 - a closed or odd transport: unknown
        return None
    return name if isinstance(name, str) and name.startswith(("TLS", "SSL")) else None


__all__ = [
    "FORMATS",
    "LBPROXY_FORMAT",
    "CombinedFormat",
    "Entry",
    "JSONFormat",
    "lbproxyFields",
    "tlsVersionOf",
]
