# -*- test-case-name: lbproxy.test.test_reasons -*-
"""
The reason phrases of RFC 9110 section 15, for every status lbproxy itself
sends (twisted.web's table lacks some, such as 421 and 431, and has older
wording for others, such as 413's "Request Entity Too Large").
"""

from __future__ import annotations

REASONS: dict[int, str] = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def reasonPhrase(status: int) -> bytes:
    """
    The RFC 9110 reason phrase for C{status}; for a status not in
    L{REASONS}, its class's generic phrase (C{b"Client Error"}...).
    """
    phrase = REASONS.get(status)
    if phrase is None:
        phrase = {1: "Informational", 2: "Success", 3: "Redirection", 4: "Client Error"}.get(
            status // 100, "Server Error"
        )
    return phrase.encode("ascii")


__all__ = ["REASONS", "reasonPhrase"]
