# -*- test-case-name: lbproxy.test.test_twistedwall,lbproxy.test.test_edge,lbproxy.test.test_wholeresponse -*-  # noqa: E501
"""
twisted.web's server C{Request}, lighter to make and to finish, for the
edge's requests (one per request the proxy relays): its set-up without
what the edge never uses, cookies parsed only when read, and a finish for
a response that was written whole.

Checked against Twisted 26.10 (see L{lbproxy._twisted.httpchannel}); the
private names used are listed in L{PRIVATE_NAMES}.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server
from twisted.web.http_headers import Headers

from lbproxy._twisted.headers import QuickHeaders

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.web.http.Request": ("_parsePOSTFormSubmission", "_disconnected", "_cleanup"),
    "twisted.python.components.Componentized": ("_adapterCache",),
    "twisted.web.http_headers.Headers": ("_rawHeaders",),
}
"""
Every private Twisted name this module uses, by the object that has it.
"""

_parseCookies = http.Request.parseCookies


class LeanRequest(server.Request):
    """
    C{server.Request}, made as its C{__init__} makes it but for what a
    proxied request never uses (a queue position, form parsing of the
    body), with C{received_cookies} parsed when first read rather than for
    every request.
    """

    def __init__(self, channel: Any, queued: object = None) -> None:
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = QuickHeaders()
        self._receivedCookies: dict[bytes, bytes] | None = None
        self._responseHeaders: Headers = QuickHeaders()
        self.cookies = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = False
        self._adapterCache = {}

    @property
    def received_cookies(self) -> dict[bytes, bytes]:
        """
        The request's cookies, parsed from its C{Cookie} headers when first
        read.
        """
        cookies = self._receivedCookies
        if cookies is None:
            cookies = self._receivedCookies = {}
            _parseCookies(self)
        return cookies

    @received_cookies.setter
    def received_cookies(self, cookies: dict[bytes, bytes]) -> None:
        self._receivedCookies = cookies

    _presetLines: list[tuple[bytes, bytes]] | None = None

    @property
    def responseHeaders(self) -> Headers:
        """
        The response's headers, with the lines L{presetHeader} set.
        """
        headers = self._responseHeaders
        preset = self._presetLines
        if preset is not None:
            self._presetLines = None
            for name, value in preset:
                headers.addRawHeader(name, value)
        return headers

    @responseHeaders.setter
    def responseHeaders(self, headers: Headers) -> None:
        self._responseHeaders = headers

    def presetHeader(self, name: bytes, value: bytes) -> None:
        """
        Add a response header line (a value the proxy made, in a name not
        set yet): kept as a line until C{responseHeaders} is read, so that
        a response written whole (see L{takePresetLines}) needs no
        L{Headers}.
        """
        if self._presetLines is None:
            if self._responseHeaders._rawHeaders:
                self._responseHeaders.addRawHeader(name, value)
                return
            self._presetLines = []
        self._presetLines.append((name, value))

    def takePresetLines(self) -> list[tuple[bytes, bytes]] | None:
        """
        The response header lines set so far, if they are all preset lines
        (C{responseHeaders} not read since), else L{None}: read
        C{responseHeaders} instead.
        """
        if self._responseHeaders._rawHeaders:
            return None
        preset, self._presetLines = self._presetLines, None
        return preset if preset is not None else []

    def parseCookies(self) -> None:
        """
        Nothing now: the cookies are parsed when first read (twisted.web's
        channel calls this for every request).
        """

    def finishWritten(self) -> bool:
        """
        Finish a response whose head and body have been written whole, past
        twisted.web's own C{Request} (no encoder, no chunking, no head left
        to write): log it, mark it finished, let the channel go on.

        @return: Whether it did; if not (the connection was lost, or the
            request was already finished), call C{finish} for twisted.web's
            own answer to that.
        """
        if self._disconnected or self.finished:
            return False
        self.channel.factory.log(self)
        self.finished = 1
        self._cleanup()
        return True


__all__ = ["PRIVATE_NAMES", "LeanRequest"]
