# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
Discovery sources: the C{--backends} items that name backends through DNS
instead of listing them, C{dns:NAME:PORT[=WEIGHT]} (every A and AAAA
record of NAME) and C{srv:_service._proto.NAME} (every target of its SRV
records), and the split of a C{--backends} list into static backends and
sources.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import attrs

from lbproxy.upstream.backends import (
    MAX_WEIGHT,
    Backend,
    BackendSpecError,
    parseBackends,
)

DNS = "dns"
"""
The kind of a C{dns:NAME:PORT} source.
"""

SRV = "srv"
"""
The kind of a C{srv:_service._proto.NAME} source.
"""

SourceKey = tuple[str, str, int]
"""
What makes two configurations' sources the same source: kind, name
(lower case, without a trailing dot) and port.
"""

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


@attrs.frozen
class Source:
    """
    Where a pool finds some of its backends in DNS.

    @ivar kind: L{DNS} or L{SRV}.
    @ivar name: The name looked up, as given.
    @ivar port: For L{DNS}, the port of every backend; 0 for L{SRV}, whose
        records give the ports.
    @ivar weight: For L{DNS}, the weight of every backend; for L{SRV} the
        records give the weights.
    """

    kind: str
    name: str
    port: int = 0
    weight: int = 1

    @property
    def key(self) -> SourceKey:
        """
        What a reload compares: a source with the same key (a changed
        weight aside) keeps its backends.
        """
        return (self.kind, self.name.lower().rstrip("."), self.port)

    def __str__(self) -> str:
        """
        The source as C{--backends} takes it, e.g. C{dns:backend.svc:8080=2}.
        """
        if self.kind == SRV:
            return f"srv:{self.name}"
        weight = f"={self.weight}" if self.weight != 1 else ""
        return f"dns:{self.name}:{self.port}{weight}"


def isSourceItem(item: str) -> bool:
    """
    Whether the C{--backends} item C{item} is a discovery source (it starts
    with C{dns:} or C{srv:}) rather than one backend.
    """
    return item.strip()[:4].lower() in ("dns:", "srv:")


def parseSource(item: str) -> Source:
    """
    Parse C{dns:NAME:PORT}, optionally followed by C{=WEIGHT} (1 to
    L{MAX_WEIGHT}, every address's weight), or C{srv:_service._proto.NAME}.

    @raise BackendSpecError: With a message naming the item.
    """
    text = item.strip()
    kind, rest = text[:3].lower(), text[4:].strip()
    if kind == SRV:
        return _parseService(item, rest)
    weight = 1
    if "=" in rest:
        rest, weightText = (part.strip() for part in rest.rsplit("=", 1))
        if not (weightText.isascii() and weightText.isdigit()) or not (
            0 < int(weightText) <= MAX_WEIGHT
        ):
            raise BackendSpecError(
                f"backend {item.strip()!r}: weight after '=' must be a whole number "
                f"from 1 to {MAX_WEIGHT}"
            )
        weight = int(weightText)
    name, colon, portText = rest.rpartition(":")
    if not colon or not name:
        raise BackendSpecError(
            f"backend {item.strip()!r}: give dns:NAME:PORT, e.g. dns:backend.svc:8080"
        )
    if not (portText.isascii() and portText.isdigit()) or not 0 < int(portText) < 65536:
        raise BackendSpecError(f"backend {item.strip()!r}: port must be a number from 1 to 65535")
    _checkName(item, name)
    return Source(kind=DNS, name=name, port=int(portText), weight=weight)


def _parseService(item: str, name: str) -> Source:
    if "=" in name:
        raise BackendSpecError(
            f"backend {item.strip()!r}: srv: takes each target's weight from its SRV "
            "record; give no =WEIGHT"
        )
    if ":" in name:
        raise BackendSpecError(
            f"backend {item.strip()!r}: srv: takes each target's port from its SRV "
            "record; give srv:_service._proto.NAME, e.g. srv:_http._tcp.backend.svc"
        )
    labels = name.rstrip(".").split(".")
    if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
        raise BackendSpecError(
            f"backend {item.strip()!r}: give srv:_service._proto.NAME, "
            "e.g. srv:_http._tcp.backend.svc"
        )
    _checkName(item, name)
    return Source(kind=SRV, name=name)


def _checkName(item: str, name: str) -> None:
    """
    Refuse a C{name} that is not a DNS name (an address among them: a
    backend given by address needs no lookup).
    """
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise BackendSpecError(
            f"backend {item.strip()!r}: {name!r} is an address, not a name; give it without dns:"
        )
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BackendSpecError(f"backend {item.strip()!r}: {name!r} is not a DNS name")


def splitBackends(text: str) -> tuple[tuple[Backend, ...], tuple[Source, ...]]:
    """
    Parse a comma-separated C{--backends} value whose items may be backends
    (see L{parseBackends}) or discovery sources (see L{parseSource}), in
    any mix.

    @return: The backends and the sources, each in the order given.
    @raise BackendSpecError: For an empty list, an empty or invalid item,
        or a duplicate backend or source.
    """
    items = text.split(",")
    static = [item for item in items if not isSourceItem(item)]
    sources: list[Source] = []
    seen: dict[SourceKey, str] = {}
    for item in items:
        if not isSourceItem(item):
            continue
        source = parseSource(item)
        if source.key in seen:
            raise BackendSpecError(
                f"duplicate backend {item.strip()!r} in --backends (same name as "
                f"{seen[source.key]!r})"
            )
        seen[source.key] = item.strip()
        sources.append(source)
    backends = parseBackends(",".join(static)) if static else []
    return tuple(backends), tuple(sources)


__all__: Sequence[str] = [
    "DNS",
    "SRV",
    "Source",
    "SourceKey",
    "isSourceItem",
    "parseSource",
    "splitBackends",
]
