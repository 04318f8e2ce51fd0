# -*- test-case-name: lbproxy.test.test_http2_hpack -*-
"""
The HPACK encoder of lbproxy's HTTP/2 responses: a header block without
compression state.

C{h2}'s own encoder (the C{hpack} library's) looks every field up in the
dynamic table, adds most of them to it and Huffman-codes every string, in
Python: about a third of the CPU an HTTP/2 response cost lbproxy (see
docs/benchmarks.md, scenario G). Responses of a proxy repeat little that
is worth the work (a request ID and a date differ each time), so this one
writes each field as an index into the static table where the whole field
is there (C{:status 200}), else as a literal without indexing, its name an
index into the static table where it can be, with no Huffman coding. It
never adds to the dynamic table, so it needs no table state: it tells the
client, at the start of its first block and after any change of the
client's C{SETTINGS_HEADER_TABLE_SIZE}, that its table is empty (a size
update to 0, RFC 7541 6.3), and every decoder reads it.

Credentials are literals never indexed (RFC 7541 7.1.3), so that an
intermediary further on keeps them out of its tables too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE

_WHOLE: dict[tuple[bytes, bytes], int] = {}
_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(_STATIC, start=1):
    _WHOLE.setdefault((_name, _value), _index)
    _NAME.setdefault(_name, _index)

_NEVER_INDEXED = frozenset([b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"])

_TABLE_EMPTY = b"\x20"
"""
A dynamic table size update to 0 (C{001} and a 5-bit prefix integer).
"""


def _integer(value: int, prefix: int, flags: int) -> bytes:
    """
    C{value} as an HPACK integer with a C{prefix}-bit prefix, the rest of
    the first octet being C{flags} (RFC 7541 5.1).
    """
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(name: bytes, value: bytes) -> bytes:
    """
    The representation of one field (see the module docstring).
    """
    index = _WHOLE.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    flags = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _NAME.get(name)
    if index is not None:
        head = _integer(index, 4, flags)
    else:
        head = bytes((flags,)) + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0) + value


_REPEATED_VALUE = 128
"""
Fields with values up to this long (and not credentials) are encoded once
and kept (L{_repeated}): most of a backend's response fields repeat from
one response to the next (C{server}, C{content-type}, C{etag},
C{content-length}...).
"""

_repeated = functools.lru_cache(maxsize=1024)(_field)
"""
L{_field}, remembered for the last 1 024 short fields (at most about
150 KiB). Being a function of the field alone, what it returns is the
same whether or not it was remembered.
"""


class PlainEncoder:
    """
    An HPACK encoder without a dynamic table, in place of
    C{h2.connection.H2Connection.encoder} (the attributes C{h2} uses:
    C{encode} and C{header_table_size}).
    """

    def __init__(self) -> None:
        self._announce = True
        self._tableSize = 4096

    @property
    def header_table_size(self) -> int:
        """
        The client's C{SETTINGS_HEADER_TABLE_SIZE}; setting it to another
        value makes the next block start by saying the table is empty.
        """
        return self._tableSize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value != self._tableSize:
            self._tableSize = value
            self._announce = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """
        The header block for C{headers}: lower-case names as bytes, values
        as bytes (C{huffman} is ignored: strings are written as they are).
        """
        out = bytearray()
        if self._announce:
            out += _TABLE_EMPTY
            self._announce = False
        for name, value in headers:
            if len(value) <= _REPEATED_VALUE and name not in _NEVER_INDEXED:
                out += _repeated(name, value)
            else:
                out += _field(name, value)
        return bytes(out)


__all__ = ["PlainEncoder"]
