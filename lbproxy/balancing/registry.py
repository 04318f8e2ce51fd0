"""
Choosers: the load-balancing policies, and the registry that maps
C{--chooser} names to them.

Every chooser is given, on every call, only the backends that can take
traffic (in configured order) and returns one of them, or L{None} for none
(the proxy answers 503). Choosers never block and never do I/O; live
counters (in-flight requests, latency estimates) live on
L{lbproxy.upstream.backends.Backend} and are maintained by the proxy. Weighted
choosers read L{Backend.effectiveWeight}, which slow start scales down.
Randomness and time are injected, so tests and the simulator are exact.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.python.reflect import namedAny
from twisted.web.iweb import IRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.balancing.maglev import DEFAULT_TABLE_SIZE, buildTable, keyHash
from lbproxy.balancing.sticky import DEFAULT_COOKIE, StickyChooser, checkCookieName, newSecret
from lbproxy.interfaces import IChooser
from lbproxy.upstream.backends import Backend

ENTRY_POINT_GROUP = "lbproxy.choosers"
"""
The entry point group third-party packages register choosers under.
"""

DEFAULT_HASH_KEY = "client-ip"
DEFAULT_BALANCE_FACTOR = 1.25


@attrs.frozen
class ChooserSettings:
    """
    Everything the built-in choosers can be configured with.

    @ivar rng: The randomness to use; L{None} gives each chooser a
        C{random.Random()} of its own.
    @ivar clock: The proxy's clock (latency-aware choosers); L{None} means
        the global reactor.
    @ivar hashKey: What C{hash} hashes: C{client-ip}, C{header:NAME},
        C{cookie:NAME} or C{path}.
    @ivar hashBalanceFactor: C{hash} sends no backend more than this times
        the average in-flight count (bounded load); at least 1.
    @ivar hashTableSize: Slots in C{hash}'s Maglev table (a prime).
    @ivar stickyCookie: The name of C{sticky}'s cookie.
    @ivar stickySecret: The key C{sticky} signs cookies with; L{None}
        generates a random one per process.
    @ivar stickyFallback: The chooser C{sticky} uses for requests without
        a valid cookie (or whose backend is gone).
    """

    rng: random.Random | None = None
    clock: IReactorTime | None = None
    hashKey: str = DEFAULT_HASH_KEY
    hashBalanceFactor: float = DEFAULT_BALANCE_FACTOR
    hashTableSize: int = DEFAULT_TABLE_SIZE
    stickyCookie: str = DEFAULT_COOKIE
    stickySecret: bytes | None = None
    stickyFallback: str = "random"

    def random(self) -> random.Random:
        """
        The injected randomness, or a new generator of a chooser's own.
        """
        return self.rng if self.rng is not None else random.Random()

    def reactorTime(self) -> IReactorTime:
        """
        The injected clock, or the global reactor.
        """
        if self.clock is not None:
            return self.clock
        from twisted.internet import reactor

        return reactor  # type: ignore[return-value]


def _weights(backends: Sequence[Backend]) -> list[float]:
    """
    The effective weights of C{backends}, with nothing below 0; if none is
    positive, all count as 1 (a pool entirely in slow start still serves).
    """
    weights = [backend.effectiveWeight for backend in backends]
    if min(weights) > 0:
        return weights
    weights = [max(0.0, weight) for weight in weights]
    if not any(weights):
        return [1.0] * len(backends)
    return weights


def _uniform(weights: list[float]) -> bool:
    return weights.count(weights[0]) == len(weights)


def _weightedIndex(rng: random.Random, weights: Sequence[float], skip: int = -1) -> int:
    """
    An index drawn with probability proportional to C{weights}, never
    C{skip}.
    """
    total = sum(weight for index, weight in enumerate(weights) if index != skip)
    point = rng.random() * total
    last = -1
    for index, weight in enumerate(weights):
        if index == skip or weight <= 0:
            continue
        last = index
        point -= weight
        if point < 0:
            return index
    return last


def _twoChoices(
    rng: random.Random, backends: Sequence[Backend], weights: list[float]
) -> tuple[int, int]:
    """
    Two distinct indices into C{backends}, drawn in proportion to
    C{weights}; the same index twice only when just one backend has a
    positive weight.
    """
    count = len(backends)
    if _uniform(weights):
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        return first, second + 1 if second >= first else second
    first = _weightedIndex(rng, weights)
    if sum(1 for weight in weights if weight > 0) < 2:
        return first, first
    return first, _weightedIndex(rng, weights, skip=first)


@implementer(IChooser)
class RandomChooser:
    """
    Random choice in proportion to the backends' weights; with equal
    weights, exactly the original write-up's C{random.choice}.

    @ivar _random: The source of randomness, injected so tests are exact.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick one of C{backends} at random, in proportion to its weight.
        """
        if not backends:
            return None
        weights = _weights(backends)
        if _uniform(weights):
            return self._random.choice(backends)
        return backends[_weightedIndex(self._random, weights)]


class _SmoothWeights:
    """
    nginx's smooth weighted round robin: each pick, every candidate's
    current value grows by its weight, the largest is picked and loses the
    total. Weights 5, 1, 1 give C{a a b a c a a}, never C{a a a a a b c}.
    """

    def __init__(self) -> None:
        self._current: dict[Backend, float] = {}

    def pick(
        self, candidates: Sequence[Backend], weights: Sequence[float], everyone: Sequence[Backend]
    ) -> Backend:
        """
        Pick one of C{candidates} (non-empty, with positive total weight);
        C{everyone} is the whole list the chooser was given, so that the
        state of backends no longer there is dropped.
        """
        current = self._current
        if len(current) > len(everyone):
            kept = set(everyone)
            self._current = current = {b: v for b, v in current.items() if b in kept}
        best = candidates[0]
        bestValue = -math.inf
        for backend, weight in zip(candidates, weights, strict=True):
            value = current.get(backend, 0.0) + weight
            current[backend] = value
            if value > bestValue:
                best, bestValue = backend, value
        current[best] -= sum(weights)
        return best


@implementer(IChooser)
class RoundRobinChooser:
    """
    Smooth weighted round robin, as nginx does it: successive requests go
    to successive backends in configured order, a backend of weight C{w}
    gets C{w} picks per round, spread out rather than in a burst.

    When the list of available backends changes, backends that stay keep
    their place in the rotation and new ones join it.
    """

    def __init__(self) -> None:
        self._smooth = _SmoothWeights()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the next backend of the smooth weighted rotation.
        """
        if not backends:
            return None
        weights = _weights(backends)
        candidates = [b for b, w in zip(backends, weights, strict=True) if w > 0]
        return self._smooth.pick(candidates, [w for w in weights if w > 0], backends)


@implementer(IChooser)
class LeastConnChooser:
    """
    The backend with the fewest in-flight requests per unit of weight
    (nginx's and HAProxy's C{least_conn}/C{leastconn}). Ties, such as an
    idle pool, are broken by smooth weighted round robin among the tied
    backends, so they take turns rather than the first always winning.
    """

    def __init__(self) -> None:
        self._smooth = _SmoothWeights()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the least loaded backend, taking turns among equals.
        """
        if not backends:
            return None
        weights = _weights(backends)
        best: list[int] = []
        bestLoad = math.inf
        for index, (backend, weight) in enumerate(zip(backends, weights, strict=True)):
            if weight <= 0:
                continue
            load = backend.inFlight / weight
            if load < bestLoad:
                best, bestLoad = [index], load
            elif load == bestLoad:
                best.append(index)
        if len(best) == 1:
            return backends[best[0]]
        return self._smooth.pick(
            [backends[index] for index in best], [weights[index] for index in best], backends
        )


@implementer(IChooser)
class P2CChooser:
    """
    Power of two random choices (Envoy's default C{LEAST_REQUEST},
    HAProxy's C{random(2)}): draw two distinct backends at random, in
    proportion to weight, and pick the one with fewer in-flight requests per
    unit of weight (the first drawn on a tie, so an idle pool is shared in
    proportion to weight). Nearly as good as least-conn at spreading load,
    without herding every proxy onto the same backend.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the less loaded of two random backends.
        """
        if not backends:
            return None
        if len(backends) == 1:
            return backends[0]
        weights = _weights(backends)
        first, second = _twoChoices(self._random, backends, weights)
        one, two = backends[first], backends[second]
        if two.inFlight / weights[second] < one.inFlight / weights[first]:
            return two
        return one


DEFAULT_TOLERANCE = 0.2
"""
Relative difference below which two peak-EWMA costs count as equal.
"""


@implementer(IChooser)
class PeakEWMAChooser:
    """
    Latency-aware power of two choices, as Finagle's and Linkerd's "peak
    EWMA" balancers: of two backends drawn at random (in proportion to
    weight), pick the one with the lower cost, its peak-sensitive latency
    estimate (L{lbproxy.balancing.ewma.PeakEWMA}, kept on the backend) times its
    in-flight requests plus one, divided by its weight. Costs within
    C{tolerance} (20 %) of each other count as equal and the first drawn
    wins, so identical backends share traffic evenly instead of being ranked
    by the noise in their latencies.

    It does not starve a backend: an estimate that has not been refreshed
    for a second decays toward the pool's typical latency (the median
    estimate) with a time constant of half a second (see
    L{lbproxy.balancing.ewma.PeakEWMA}), so a backend that once answered 30 times
    slower than the others and then got no traffic is tried again after
    about four seconds, and its next fast answer restores it. A backend
    with no estimate yet counts as typical.

    @ivar _clock: The proxy's clock, the one latencies are stamped with.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self._clock = clock
        self._random = rng if rng is not None else random.Random()
        self._tolerance = tolerance

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        Pick the cheaper of two random backends.
        """
        if not backends:
            return None
        if len(backends) == 1:
            return backends[0]
        weights = _weights(backends)
        first, second = _twoChoices(self._random, backends, weights)
        known = [b.latencyEWMA.value for b in backends if b.latencyEWMA.value is not None]
        typical = statistics.median(known) if known else 1.0
        now = self._clock.seconds()

        def cost(index: int) -> float:
            backend = backends[index]
            latency = backend.latencyEWMA.estimate(now, typical)
            return latency * (backend.inFlight + 1) / weights[index]

        if cost(second) * (1.0 + self._tolerance) < cost(first):
            return backends[second]
        return backends[first]


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
    """

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
        weights = _weights(backends)
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


def _quantized(effective: float, weight: int) -> float:
    """
    C{effective} rounded to a quarter of C{weight}, at least a quarter.
    """
    if weight <= 0 or effective >= weight:
        return float(max(weight, 1))
    steps = max(1, round(effective / weight * _WEIGHT_STEPS))
    return weight * steps / _WEIGHT_STEPS


ChooserFactory = Callable[[ChooserSettings], IChooser]
"""
Builds a chooser from the settings; the registry's values.
"""


def _sticky(settings: ChooserSettings) -> IChooser:
    fallback = makeChooser(settings.stickyFallback, settings=settings)
    secret = settings.stickySecret if settings.stickySecret is not None else newSecret()
    return StickyChooser(fallback, secret, settings.stickyCookie)


BUILTIN_CHOOSERS: Mapping[str, ChooserFactory] = {
    "random": lambda settings: RandomChooser(settings.random()),
    "round-robin": lambda settings: RoundRobinChooser(),
    "least-conn": lambda settings: LeastConnChooser(),
    "p2c": lambda settings: P2CChooser(settings.random()),
    "peak-ewma": lambda settings: PeakEWMAChooser(settings.reactorTime(), settings.random()),
    "hash": lambda settings: HashChooser(
        parseHashKey(settings.hashKey),
        settings.hashBalanceFactor,
        settings.random(),
        settings.hashTableSize,
    ),
    "sticky": _sticky,
}
"""
The built-in choosers by C{--chooser} name. Read-only.
"""

DEFAULT_CHOOSER = "random"


class ChooserError(ValueError):
    """
    A C{--chooser} value (or a chooser setting) names nothing usable; the
    message says why.
    """


def _entryPointFactory(entryPoint: EntryPoint) -> ChooserFactory:
    """
    A factory that loads C{entryPoint} when first used and calls what it
    names without arguments.
    """

    def factory(settings: ChooserSettings) -> IChooser:
        name = f"{entryPoint.name} ({entryPoint.value})"
        try:
            loaded = entryPoint.load()
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            raise ChooserError(f"cannot load chooser {name}: {_oneLine(e)}") from None
        return _instantiate(name, loaded)

    return factory


def registry(
    builtins: Mapping[str, ChooserFactory] = BUILTIN_CHOOSERS,
) -> dict[str, ChooserFactory]:
    """
    The chooser names C{--chooser} knows: C{builtins} plus every entry point
    in the L{ENTRY_POINT_GROUP} group of the installed distributions. A
    built-in name wins over an entry point of the same name. Entry points are
    only imported when chosen.
    """
    known: dict[str, ChooserFactory] = {}
    for entryPoint in entry_points(group=ENTRY_POINT_GROUP):
        known.setdefault(entryPoint.name, _entryPointFactory(entryPoint))
    known.update(builtins)
    return known


def checkSettings(settings: ChooserSettings) -> None:
    """
    Check the settings that do not depend on the chooser, so that a typo in
    C{--hash-key} is reported even when another chooser is in use.

    @raise ChooserError: With a one-line message.
    """
    parseHashKey(settings.hashKey)
    if not settings.hashBalanceFactor >= 1:
        raise ChooserError(
            "--hash-balance-factor must be a number of at least 1, "
            f"not {settings.hashBalanceFactor}"
        )
    try:
        checkCookieName(settings.stickyCookie)
    except ValueError as e:
        raise ChooserError(str(e)) from None
    if settings.stickyFallback == "sticky":
        raise ChooserError("--sticky-fallback cannot be sticky itself")
    if settings.stickySecret is not None and len(settings.stickySecret) < 16:
        raise ChooserError("the sticky cookie secret must be at least 16 bytes")


def settingsFromOptions(options: Mapping[str, Any]) -> ChooserSettings:
    """
    L{ChooserSettings} from the C{twistd lbproxy} options C{hash-key},
    C{hash-balance-factor}, C{sticky-cookie}, C{sticky-fallback} and
    C{sticky-secret-file}.

    @raise ChooserError: For a value that is not understood, or a secret
        file that cannot be read.
    """
    factorText = options["hash-balance-factor"]
    try:
        factor = float(factorText)
    except ValueError:
        raise ChooserError(
            f"--hash-balance-factor must be a number of at least 1, not {factorText!r}"
        ) from None
    secret = None
    path = options["sticky-secret-file"]
    if path is not None:
        try:
            with open(path, "rb") as secretFile:
                secret = secretFile.read().strip()
        except OSError as e:
            raise ChooserError(f"cannot read --sticky-secret-file {path!r}: {e.strerror}") from None
    settings = ChooserSettings(
        hashKey=options["hash-key"],
        hashBalanceFactor=factor,
        stickyCookie=options["sticky-cookie"],
        stickySecret=secret,
        stickyFallback=options["sticky-fallback"],
    )
    checkSettings(settings)
    return settings


def makeChooser(
    name: str,
    registry: Mapping[str, ChooserFactory] | None = None,
    settings: ChooserSettings = ChooserSettings(),
) -> IChooser:
    """
    Build the chooser called C{name}: a registered short name (built-in or
    from an entry point), or the dotted name of a class providing
    L{IChooser} that takes no arguments.

    @param registry: The names to know; L{None} for the built-ins plus the
        installed entry points (see L{registry}).
    @raise ChooserError: With a one-line message listing the known names.
    """
    checkSettings(settings)
    known = _registry() if registry is None else registry
    if name in known:
        return known[name](settings)
    names = ", ".join(sorted(known))
    if "." not in name:
        raise ChooserError(
            f"unknown chooser {name!r}; known choosers: {names}, "
            "or the dotted name of a class providing lbproxy.interfaces.IChooser"
        )
    try:
        factory = namedAny(name)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot import chooser {name!r}: {_oneLine(e)}") from None
    return _instantiate(repr(name), factory)


_registry = registry


def _instantiate(name: str, factory: Any) -> IChooser:
    """
    Call C{factory} without arguments and check that the result provides
    L{IChooser}.
    """
    try:
        chooser = factory()
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ChooserError(f"cannot instantiate chooser {name}: {_oneLine(e)}") from None
    try:
        verifyObject(IChooser, chooser)
    except Exception:  # noqa: BLE001 - verifyObject raises several kinds
        raise ChooserError(f"chooser {name} does not provide lbproxy.interfaces.IChooser") from None
    return chooser  # type: ignore[no-any-return]


def _oneLine(error: Exception) -> str:
    """
    The first line of an exception's message, for a one-line error.
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


__all__ = [
    "BUILTIN_CHOOSERS",
    "DEFAULT_CHOOSER",
    "ENTRY_POINT_GROUP",
    "ChooserError",
    "ChooserFactory",
    "ChooserSettings",
    "HashChooser",
    "LeastConnChooser",
    "P2CChooser",
    "PeakEWMAChooser",
    "RandomChooser",
    "RoundRobinChooser",
    "StickyChooser",
    "checkSettings",
    "makeChooser",
    "parseHashKey",
    "registry",
    "settingsFromOptions",
]
