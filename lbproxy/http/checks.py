# -*- test-case-name: lbproxy.test.test_edge,lbproxy.test.test_target,lbproxy.test.test_fuzz -*-
"""
Strict checks of what a client sends, beyond what twisted.web's parser
enforces: the request line, the Host header, Content-Length and
Transfer-Encoding. Pure functions: each returns L{None} for acceptable
input or the L{Rejection} to answer with; L{parsePlainHead} parses the
common request head, one that passes every check, in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import attrs
from twisted.web.http_headers import Headers

from lbproxy._twisted.headers import QuickHeaders

MAX_CONTENT_LENGTH = 2**63 - 1


@attrs.frozen
class Rejection:
    """
    Why a request is refused: the status, its reason phrase and a short
    message for the client and the log.
    """

    code: int
    reason: str
    message: str


def badRequest(message: str) -> Rejection:
    """
    A 400 Bad Request with C{message}.
    """
    return Rejection(400, "Bad Request", message)


_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + rb"+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
# Visible ASCII only: no controls, no DEL, no 8-bit bytes, no spaces.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_REG_NAME = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%]*\Z")
_PORT = re.compile(rb"[0-9]*\Z")
_IPV6 = re.compile(rb"\[[0-9A-Fa-f:.]+\]\Z")


def checkRequestLine(line: bytes, maxTarget: int) -> Rejection | None:
    """
    Check a request line: C{METHOD SP TARGET SP HTTP/x.y}, a token method,
    a target of visible ASCII in origin form (C{/...}), absolute form
    (C{http://...}) or C{*} for OPTIONS, no longer than C{maxTarget}, and
    HTTP/1.0 or HTTP/1.1.
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        return badRequest("malformed request line")
    method, target, version = parts
    if len(target) > maxTarget:
        return Rejection(414, "URI Too Long", f"request target longer than {maxTarget} bytes")
    if not _TOKEN.match(method):
        return badRequest("malformed method")
    if not _VERSION.match(version):
        return badRequest("malformed HTTP version")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return Rejection(505, "HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1")
    if not _TARGET.match(target):
        return badRequest("request target with spaces, control or non-ASCII bytes")
    if target == b"*":
        return None if method == b"OPTIONS" else badRequest("'*' target is for OPTIONS only")
    lowered = target[:8].lower()
    if not (target.startswith(b"/") or lowered.startswith((b"http://", b"https://"))):
        return badRequest("request target must start with '/'")
    return None


def checkHost(hosts: Sequence[bytes], version: bytes) -> Rejection | None:
    """
    Check the Host header values: exactly one on HTTP/1.1 (at most one on
    HTTP/1.0), and each a valid C{host[:port]} (RFC 9112 3.2, RFC 3986).
    """
    if len(hosts) > 1:
        return badRequest("more than one Host header")
    if not hosts:
        return badRequest("HTTP/1.1 request without Host") if version == b"HTTP/1.1" else None
    return None if validHost(hosts[0]) else badRequest("invalid Host header")


def validHost(value: bytes) -> bool:
    """
    Whether C{value} is a valid Host: a registered name, IPv4 address or
    bracketed IPv6 address, with an optional numeric port.
    """
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return False
        host, rest = value[: end + 1], value[end + 1 :]
        if not _IPV6.match(host):
            return False
    else:
        host, colon, port = value.partition(b":")
        rest = colon + port
        if not host or not _REG_NAME.match(host):
            return False
    return not rest or bool(rest.startswith(b":") and _PORT.match(rest[1:]))


def checkFraming(contentLengths: list[bytes], transferEncodings: list[bytes]) -> Rejection | None:
    """
    Check the message framing headers: a Content-Length must be a number
    small enough to represent; a Transfer-Encoding must be exactly
    C{chunked} (the only coding a proxy must understand; anything else is
    501, as RFC 9112 6.1 says), and not combined with Content-Length.
    """
    if transferEncodings:
        if contentLengths:
            return badRequest("both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in transferEncodings for c in v.split(b",")]
        if codings != [b"chunked"]:
            if codings and codings[-1] == b"chunked":
                return Rejection(501, "Not Implemented", "only the chunked transfer coding")
            if b"" in codings:
                return badRequest("malformed Transfer-Encoding")
            return Rejection(501, "Not Implemented", "only the chunked transfer coding")
    for value in contentLengths:
        if not (value.isdigit() and value.isascii()):
            return badRequest("malformed Content-Length")
        if int(value) > MAX_CONTENT_LENGTH:
            return badRequest("Content-Length too large")
    return None


# Field lines as twisted.web accepts them and lbproxy lets through: a token
# name, a colon, a value without NUL, CR or LF (so no obs-fold, no bare LF,
# no space before the colon), each line ending in CRLF.
_FIELD_LINES = re.compile(rb"(?:" + _TCHAR + rb"+:[^\x00\r\n]*\r\n)*\Z")


class PlainHead(NamedTuple):
    """
    A request head that passed every check and announces no body: the
    request line's parts and the header fields as twisted.web stores them,
    and the request line itself (for the access log).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    requestLine: bytes


def parsePlainHead(
    head: bytes, maxTarget: int, maxHeaderBytes: int, maxFields: int
) -> PlainHead | None:
    """
    Parse a request head in one pass, if it is the common case: a request
    line that L{checkRequestLine} accepts, at most C{maxFields} well-formed
    header lines in at most C{maxHeaderBytes}, a Host that L{checkHost}
    accepts, no Transfer-Encoding, no Expect, and no Content-Length but
    C{0}.

    The headers are what twisted.web's C{HTTPChannel.headerReceived} makes
    of the same lines: names canonicalised, values stripped of spaces and
    tabs, in the order received.

    @param head: The request line and the header lines, each with its CRLF;
        not the empty line that ends the head.
    @return: The parsed head, or L{None} for anything else (the line by
        line parser then decides what to answer).
    """
    requestLine, _, block = head.partition(b"\r\n")
    if len(block) > maxHeaderBytes or checkRequestLine(requestLine, maxTarget) is not None:
        return None
    # A field name is followed at once by its colon, so a field not found
    # here is surely absent; a value that merely mentions one sends the
    # head the line by line way, which is only slower.
    named = block.lower()
    if b"transfer-encoding:" in named or b"expect:" in named or not _FIELD_LINES.match(block):
        return None
    lines = block.split(b"\r\n")
    del lines[-1]  # what follows the last CRLF: nothing
    if len(lines) > maxFields:
        return None
    fields = []
    for line in lines:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    headers = QuickHeaders.fromCheckedLines(fields)
    method, target, version = requestLine.split(b" ")
    if b"content-length:" in named and headers.getRawHeaders(b"content-length") != [b"0"]:
        return None
    if checkHost(headers.getRawHeaders(b"host", []), version) is not None:
        return None
    return PlainHead(method, target, version, headers, requestLine)
