# -*- test-case-name: lbproxy.test.test_control -*-
"""
The control channel's messages and lines (see L{lbproxy.control}): what
the supervisor writes on a worker's standard input, what a worker answers
on its standard output, and the fields of an admin call and its answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import attrs

from lbproxy.admin.response import JSON, AdminResponse

MARKER = b"\x1elbproxy-control "
"""
How a worker's answer line starts on its standard output: an ASCII record
separator, then a name.
"""

MAX_MESSAGE = 16 * 1024 * 1024
"""
The longest line, in bytes, either side reads as a control message (an
admin request body of L{lbproxy.admin.MAX_BODY} fits, base64 and all).
"""

ANSWER_TIMEOUT = 10.0
"""
Seconds the supervisor waits for a worker's answer.
"""


class ControlError(Exception):
    """
    A request did not get a usable answer: the message says why, on one
    line (C{no answer within 10 s}, C{not running}...).

    @ivar id: The request's id, when known.
    """

    def __init__(self, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.id = id


# The wire.


@attrs.frozen
class ControlRequest:
    """
    One request from the supervisor.

    @ivar id: Echoed in the answer.
    @ivar kind: C{reload} or C{admin}.
    @ivar fields: The rest of the message.
    """

    id: int
    kind: str
    fields: Mapping[str, Any]


def encodeRequest(id: int, kind: str, fields: Mapping[str, Any]) -> bytes:
    """
    A request, as the line the supervisor writes.
    """
    message = {**fields, "id": id, "kind": kind}
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def decodeRequest(line: bytes) -> ControlRequest:
    """
    A request line (without its newline) read by a worker.

    @raise ControlError: If it is not one, with the id when it has one.
    """
    message = _object(line)
    id = message.get("id")
    if not isinstance(id, int) or isinstance(id, bool):
        raise ControlError("a control request without an id")
    kind = message.get("kind")
    if not isinstance(kind, str):
        raise ControlError("a control request without a kind", id)
    fields = {key: value for key, value in message.items() if key not in ("id", "kind")}
    return ControlRequest(id, kind, fields)


def encodeReply(id: int, fields: Mapping[str, Any]) -> bytes:
    """
    An answer, as the line a worker writes.
    """
    message = {**fields, "id": id}
    return MARKER + json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def isReply(line: bytes) -> bool:
    """
    Whether a line of a worker's output is an answer (not a log line).
    """
    return line.startswith(MARKER)


def decodeReply(line: bytes) -> tuple[int, dict[str, Any]]:
    """
    The id and fields of an answer line (without its newline).

    @raise ControlError: If it is not one.
    """
    message = _object(line[len(MARKER) :] if isReply(line) else line)
    id = message.pop("id", None)
    if not isinstance(id, int) or isinstance(id, bool):
        raise ControlError("a control answer without an id")
    return id, message


def _object(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_MESSAGE:
        raise ControlError(f"a control line longer than {MAX_MESSAGE} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError(f"an unreadable control line: {line[:60]!r}") from None
    if not isinstance(message, dict):
        raise ControlError(f"a control line that is no JSON object: {line[:60]!r}")
    return message


def escapeLogText(text: str) -> str:
    """
    A worker's log text with the marker's first character written out
    (C{\\x1e}), so that no log line can pass for an answer.
    """
    return text.replace(MARKER[:1].decode("ascii"), "\\x1e")


class LineBuffer:
    """
    Splits a stream of bytes into lines, without their newline.  An
    unfinished line longer than its limit is given out as it is, as a line,
    so that memory stays bounded: L{MAX_MESSAGE} for an answer (a line that
    starts with L{MARKER}), C{limit} for any other.
    """

    def __init__(self, limit: int, answerLimit: int = MAX_MESSAGE) -> None:
        self._limit = limit
        self._answerLimit = answerLimit
        self._pending: list[bytes] = []
        self._size = 0
        self._head = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        The lines C{data} finishes (or cuts, see above).
        """
        pieces = data.split(b"\n")
        lines = []
        for piece in pieces[:-1]:
            self._pending.append(piece)
            lines.append(self.flush())
        last = pieces[-1]
        if last:
            self._pending.append(last)
            self._size += len(last)
            if len(self._head) < len(MARKER):
                self._head = (self._head + last)[: len(MARKER)]
            limit = self._answerLimit if isReply(self._head) else self._limit
            if self._size > limit:
                lines.append(self.flush())
        return lines

    def flush(self) -> bytes:
        """
        The unfinished line (at the end of the stream), which is forgotten.
        """
        line = b"".join(self._pending)
        self._pending = []
        self._size = 0
        self._head = b""
        return line


def adminRequest(method: str, path: str, body: bytes, accept: str | None) -> dict[str, Any]:
    """
    The fields of an C{admin} request.
    """
    return {
        "method": method,
        "path": path,
        "body": base64.b64encode(body).decode("ascii"),
        "accept": accept,
    }


def readAdminRequest(fields: Mapping[str, Any]) -> tuple[str, str, bytes, str | None]:
    """
    The method, path, body and accept value of an C{admin} request.

    @raise ControlError: If the fields are not those of one.
    """
    method, path, accept = fields.get("method"), fields.get("path"), fields.get("accept")
    if not isinstance(method, str) or not isinstance(path, str):
        raise ControlError("an admin request needs a method and a path")
    if accept is not None and not isinstance(accept, str):
        raise ControlError("an admin request's accept must be text")
    return method, path, _unbase64(fields.get("body", "")), accept


def responseFields(response: AdminResponse) -> dict[str, Any]:
    """
    The fields of the answer to an C{admin} request.
    """
    return {
        "status": response.status,
        "contentType": response.contentType,
        "body": base64.b64encode(response.body).decode("ascii"),
        "headers": [list(header) for header in response.headers],
    }


def readResponse(fields: Mapping[str, Any]) -> AdminResponse:
    """
    The admin response an answer carries.

    @raise ControlError: If the fields are not those of one.
    """
    status, contentType, headers = (
        fields.get("status"),
        fields.get("contentType"),
        fields.get("headers", []),
    )
    if not isinstance(status, int) or isinstance(status, bool) or not isinstance(contentType, str):
        raise ControlError("an admin answer needs a status and a content type")
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h) for h in headers
    ):
        raise ControlError("an admin answer's headers must be [name, value] pairs")
    return AdminResponse(
        status,
        contentType,
        _unbase64(fields.get("body", "")),
        tuple((name, value) for name, value in headers),
    )


def errorMessage(response: AdminResponse) -> str | None:
    """
    The message of an admin API error answer (C{{"error": "..."}}), if it
    is one.
    """
    if response.contentType != JSON:
        return None
    try:
        value = json.loads(response.body)
    except ValueError:
        return None
    error = value.get("error") if isinstance(value, dict) else None
    return error if isinstance(error, str) else None


def _unbase64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ControlError("a body must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError("a body that is not base64") from None


__all__ = [
    "ANSWER_TIMEOUT",
    "MARKER",
    "MAX_MESSAGE",
    "ControlError",
    "ControlRequest",
    "LineBuffer",
    "adminRequest",
    "decodeReply",
    "decodeRequest",
    "encodeReply",
    "encodeRequest",
    "errorMessage",
    "escapeLogText",
    "isReply",
    "readAdminRequest",
    "readResponse",
    "responseFields",
]
