# -*- test-case-name: lbproxy.test.test_admin -*-
"""
What the admin API answers: a status, a content type, a body and headers,
independent of any transport; and the JSON answers built from values.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

JSON = "application/json"
"""
The content type of every JSON answer.
"""


@attrs.frozen
class AdminResponse:
    """
    One answer of the admin API.

    @ivar status: The HTTP status code.
    @ivar contentType: The C{Content-Type} of C{body}.
    @ivar body: The whole body.
    @ivar headers: More headers, as C{(name, value)} pairs in order (e.g.
        C{Allow} on a 405, C{WWW-Authenticate} on a 401).
    """

    status: int
    contentType: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """
        The value of header C{name} (case-insensitive), or L{None}.
        """
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def jsonResponse(
    status: int, value: object, headers: tuple[tuple[str, str], ...] = ()
) -> AdminResponse:
    """
    An answer whose body is C{value} as indented JSON and a newline.
    """
    text = json.dumps(value, indent=2, default=_plain) + "\n"
    return AdminResponse(status, JSON, text.encode("utf-8"), headers)


def errorResponse(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> AdminResponse:
    """
    An error answer: C{{"error": message}}, the message on one line.
    """
    return jsonResponse(status, {"error": " ".join(message.split())}, headers)


def _plain(value: Any) -> str:
    """
    What JSON cannot carry as such (dates and times a configuration may
    hold), as text.
    """
    return str(value)


__all__ = ["JSON", "AdminResponse", "errorResponse", "jsonResponse"]
