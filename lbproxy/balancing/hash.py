# -*- test-case-name: lbproxy.test.test_choosers,lbproxy.test.test_maglev -*-
"""
C{--chooser hash}: consistent hashing of a request key with Maglev tables
(L{lbproxy.balancing.maglev}) and bounded load; its settings (the key, the
balance factor, the table size) and their validation.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

import attrs
from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.errors import ChooserError
from lbproxy.balancing.explain import Explanation, Figures, only
from lbproxy.balancing.maglev import DEFAULT_TABLE_SIZE, buildTable, keyHash
from lbproxy.balancing.weights import effectiveWeights
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend

DEFAULT_HASH_KEY = "client-ip"
DEFAULT_BALANCE_FACTOR = 1.25

HashKey = Callable[[IRequest], "bytes | None"]


def parseHashKey(text: str) -> HashKey:
    """
    Parse a C{--hash-key}: C{client-ip} (the address of the connection, not
    a client-supplied X-Forwarded-For), C{header:NAME} (all values of the
    header, joined), C{cookie:NAME} or C{path} (without the query).

    @raise ChooserError: For anything else.
    """
    kind, _, name = text.partition(":")
    if kind == "client-ip" and not name:
        return _clientIP
    if kind == "path" and not name:
        return _path
    if kind in ("header", "cookie") and name and name.isascii() and name.isprintable():
        encoded = name.encode("ascii")
        return _headerKey(encoded) if kind == "header" else _cookieKey(encoded)
    raise ChooserError(
        f"--hash-key must be client-ip, header:NAME, cookie:NAME or path, not {text!r}"
    )


def _clientIP(request: IRequest) -> bytes | None:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host.encode("ascii", "replace")
    return None


def _path(request: IRequest) -> bytes | None:
    return request.path  # type: ignore[no-any-return]


def _headerKey(name: bytes) -> HashKey:
    def key(request: IRequest) -> bytes | None:
        values = request.requestHeaders.getRawHeaders(name)
        return b",".join(values) if values else None

    return key


def _cookieKey(name: bytes) -> HashKey:
    def key(request: IRequest) -> bytes | None:
        return request.getCookie(name)  # type: ignore[no-any-return]

    return key


@attrs.frozen
class HashSettings:
    """
    What C{hash} can be configured with.

    @ivar key: What it hashes: C{client-ip}, C{header:NAME},
        C{cookie:NAME} or C{path} (see L{parseHashKey}).
    @ivar balanceFactor: It sends no backend more than this times the
        average in-flight count (bounded load); at least 1.
    @ivar tableSize: Slots in its Maglev table (a prime).
    """

    key: str = DEFAULT_HASH_KEY
    balanceFactor: float = DEFAULT_BALANCE_FACTOR
    tableSize: int = DEFAULT_TABLE_SIZE

    def check(self) -> None:
        """
        @raise ChooserError: With a one-line message, for a key that is not
            understood or a balance factor below 1.
        """
        parseHashKey(self.key)
        if not self.balanceFactor >= 1:
            raise ChooserError(
                f"--hash-balance-factor must be a number of at least 1, not {self.balanceFactor}"
            )


_TABLE_CACHE_SIZE = 4
_WEIGHT_STEPS = 4


@implementer(IChooser)
class HashChooser:
    """
    Consistent hashing with Maglev tables (L{lbproxy.balancing.maglev}) and bounded
    load (Mirrokni, Thorup and Zadimoghaddam, 2018).

    The request's key (see L{parseHashKey}) is hashed to a table slot whose
    backend serves it, unless that backend already has more than
    C{balanceFactor} times its weighted share of the in-flight requests
    (counting this one); then the following slots are tried in order, so
    the overflow of a hot key spills to the same second choice every time.
    A request without the key (no such header or cookie) goes to a random
    slot, under the same bound.

    The table depends only on the backends' URLs and weights, so two
    proxies with the same backends agree on every key. Weights enter the
    table in quarter steps of the configured weight (a slow-starting
    backend's table changes at most four times), and the last few tables are
    kept, so a backend flapping in and out does not rebuild every time.

    @ivar slot: The table slot its last choice among two or more backends
        looked up first (for L{explain}).
    """

    slot = -1

    def __init__(
        self,
        key: HashKey,
        balanceFactor: float = DEFAULT_BALANCE_FACTOR,
        rng: random.Random | None = None,
        tableSize: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        self._key = key
        self._factor = balanceFactor
        self._random = rng if rng is not None else random.Random()
        self._size = tableSize
        self._tables: OrderedDict[tuple[tuple[str, float], ...], list[int]] = OrderedDict()

    @classmethod
    def fromSettings(cls, settings: HashSettings, rng: random.Random) -> HashChooser:
        """
        The chooser C{settings} (checked) describe.

        @raise ChooserError: For settings that do not check.
        """
        settings.check()
        return cls(parseHashKey(settings.key), settings.balanceFactor, rng, settings.tableSize)

    def _table(self, backends: Sequence[Backend]) -> list[int]:
        """
        The Maglev table for C{backends} (indices into it), from the cache
        when possible.
        """
        shape = tuple(
            (backend.url, _quantized(backend.effectiveWeight, backend.weight))
            for backend in backends
        )
        table = self._tables.get(shape)
        if table is None:
            table = buildTable([url for url, _ in shape], [w for _, w in shape], self._size)
            self._tables[shape] = table
            if len(self._tables) > _TABLE_CACHE_SIZE:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(shape)
        return table

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the backend owning the request's key, or the next one with room.
        """
        if not backends:
            return None
        if len(backends) == 1:
            return backends[0]
        table = self._table(backends)
        key = self._key(request)
        slot = self._random.randrange(self._size) if key is None else keyHash(key) % self._size
        self.slot = slot
        weights = effectiveWeights(backends)
        total = sum(weights)
        inFlight = sum(backend.inFlight for backend in backends) + 1
        tried: set[int] = set()
        while len(tried) < len(backends):
            index = table[slot]
            if index not in tried:
                tried.add(index)
                capacity = math.ceil(self._factor * inFlight * weights[index] / total)
                if backends[index].inFlight < capacity:
                    return backends[index]
            slot = (slot + 1) % self._size
        # Unreachable with a factor of at least 1; never answer 503 for it.
        return min(backends, key=lambda backend: backend.inFlight)

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        The slot the request's key hashed to, the backend the Maglev table
        gives it (its owner), and each backend's room under the bounded
        load.
        """
        single = only(backends)
        if single is not None:
            return single
        slot = self.slot
        if not 0 <= slot < self._size:
            return Explanation("the slot is not known", [{} for _ in backends])
        owner = self._table(backends)[slot]
        weights = effectiveWeights(backends)
        total = sum(weights)
        inFlight = sum(backend.inFlight for backend in backends) + 1
        figures: list[Figures] = []
        for index, backend in enumerate(backends):
            capacity = math.ceil(self._factor * inFlight * weights[index] / total)
            figures.append(
                {
                    "owns_slot": index == owner,
                    "capacity": capacity,
                    "full": backend.inFlight >= capacity,
                }
            )
        keyed = self._key(request) is not None
        reason = (
            f"the key hashes to slot {slot} of {self._size}"
            if keyed
            else f"no key: random slot {slot} of {self._size}"
        )
        reason += f", which the Maglev table gives to {backends[owner]}"
        if chosen is not None and chosen is not backends[owner]:
            reason += f"; it is full, so the next slot's backend with room, {chosen}"
        return Explanation(reason, figures)


def _quantized(effective: float, weight: int) -> float:
    """
    C{effective} rounded to a quarter of C{weight}, at least a quarter.
    """
    if weight <= 0 or effective >= weight:
        return float(max(weight, 1))
    steps = max(1, round(effective / weight * _WEIGHT_STEPS))
    return weight * steps / _WEIGHT_STEPS


__all__ = [
    "DEFAULT_BALANCE_FACTOR",
    "DEFAULT_HASH_KEY",
    "HashChooser",
    "HashKey",
    "HashSettings",
    "parseHashKey",
]
