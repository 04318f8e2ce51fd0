# -*- test-case-name: lbproxy.test.test_quickheaders,lbproxy.test.test_twistedwall -*-
"""
twisted.web's L{Headers}, quicker where the edge uses it most: reading,
testing and setting a header by a byte name twisted.web has seen before
(C{b"host"}, C{b"connection"}...) skips the name encoder's method call,
and a head the edge's parser already checked is stored without checking
each value again. Everything else is twisted.web's own code, and the
result is the same (L{lbproxy.test.test_quickheaders} compares the two on
random operations).

Checked against Twisted 26.10 (see L{lbproxy._twisted.httpchannel}); the
private names used are listed in L{PRIVATE_NAMES}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from twisted.web.http_headers import Headers, _nameEncoder

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.web.http_headers": ("_nameEncoder",),
    "twisted.web.http_headers.Headers": ("_rawHeaders",),
    "twisted.web.http_headers._NameEncoder": ("_canonicalHeaderCache",),
}
"""
Every private Twisted name this module uses, by the object that has it.
"""

_T = TypeVar("_T")

# twisted.web's own cache of canonical names (b"host" -> b"Host"), read
# here only: a name it holds is one twisted.web has already checked.
_canonical: dict[Any, bytes] = _nameEncoder._canonicalHeaderCache
_encode = _nameEncoder.encode


class QuickHeaders(Headers):
    """
    L{Headers}, with a quicker way for byte names twisted.web has seen.
    """

    __slots__ = ()

    @classmethod
    def fromCheckedLines(cls, lines: Iterable[tuple[bytes, bytes]]) -> QuickHeaders:
        """
        Headers from field lines whose names are tokens and whose values
        hold no CR, LF or NUL (a parser checked them), in order: what
        C{addRawHeader} makes of each, without checking the values again.
        """
        headers = cls()
        raw = headers._rawHeaders
        for name, value in lines:
            canonical = _canonical.get(name) or _encode(name)
            values = raw.get(canonical)
            if values is None:
                raw[canonical] = [value]
            else:
                values.append(value)
        return headers

    def getRawHeaders(self, name: Any, default: Any = None) -> Any:
        """
        See L{Headers.getRawHeaders}.
        """
        if name.__class__ is bytes:
            canonical = _canonical.get(name)
            if canonical is not None:
                values = self._rawHeaders.get(canonical)
                return values if values else default
        return super().getRawHeaders(name, default)

    def hasHeader(self, name: Any) -> bool:
        """
        See L{Headers.hasHeader}.
        """
        if name.__class__ is bytes:
            canonical = _canonical.get(name)
            if canonical is not None:
                return canonical in self._rawHeaders
        return super().hasHeader(name)

    def setRawHeaders(self, name: Any, values: Sequence[Any]) -> None:
        """
        See L{Headers.setRawHeaders}.
        """
        if name.__class__ is bytes:
            canonical = _canonical.get(name)
            if canonical is not None:
                for value in values:
                    if value.__class__ is not bytes or b"\r" in value or b"\n" in value:
                        break  # (twisted.web's way: encoded, line breaks replaced)
                else:
                    self._rawHeaders[canonical] = list(values)
                    return
        super().setRawHeaders(name, values)


__all__ = ["PRIVATE_NAMES", "QuickHeaders"]
