# -*- test-case-name: lbproxy.test.test_simulate -*-
"""
Simulation scenarios: backends (latency distributions, capacities, slow and
down windows), the arrival process and the choosers to compare, read from
JSON files.

A scenario file is a JSON object::

    {
      "description": "five equal backends",
      "seed": 1,
      "requests": 20000,
      "choosers": ["random", "round-robin", "p2c"],
      "arrivals": {"kind": "poisson", "load": 0.7},
      "clients": 1000,
      "backends": [
        {"count": 5, "latency": {"dist": "exponential", "mean": 0.02},
         "capacity": 4, "weight": 1,
         "slow": [[0, 1, 20]], "down": [[5, 10]]}
      ]
    }

C{arrivals} is C{{"kind": "poisson", "rate": R}} (requests per second),
C{{"kind": "poisson", "load": L}} (L times what the backends can serve:
the sum of capacity / mean latency), C{{"kind": "closed", "concurrency":
C}} (C clients, each sending its next request when the last is answered),
or C{{"kind": "replay", "path": P}} (a file of lines C{SECONDS [CLIENT]}:
arrival times, optionally with a client name, e.g. cut from an access log).
Latency distributions: C{constant} (C{value}), C{uniform} (C{low},
C{high}), C{exponential} (C{mean}), C{lognormal} (C{median}, C{sigma}), in
seconds. C{capacity} is how many requests a backend serves at once (more
wait in its queue); omitted, unlimited. C{slow} windows C{[start, end,
factor]} multiply its latencies; C{down} windows C{[start, end]} take it
out of the pool (its requests fail). C{clients} is the number of distinct
clients (addresses, paths, cookies) requests come from.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs


class ScenarioError(ValueError):
    """
    A scenario file or name is not usable; the message says why.
    """


@attrs.frozen
class Latency:
    """
    A latency distribution, in seconds.
    """

    dist: str
    params: Mapping[str, float]

    def sample(self, rng: random.Random) -> float:
        """
        One latency drawn from this distribution with C{rng}.
        """
        p = self.params
        if self.dist == "constant":
            return p["value"]
        if self.dist == "uniform":
            return rng.uniform(p["low"], p["high"])
        if self.dist == "exponential":
            return rng.expovariate(1.0 / p["mean"])
        return rng.lognormvariate(math.log(p["median"]), p["sigma"])

    def mean(self) -> float:
        """
        The mean of this distribution.
        """
        p = self.params
        if self.dist == "constant":
            return p["value"]
        if self.dist == "uniform":
            return (p["low"] + p["high"]) / 2
        if self.dist == "exponential":
            return p["mean"]
        return p["median"] * math.exp(p["sigma"] ** 2 / 2)


_DISTRIBUTIONS = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
}


@attrs.frozen
class BackendSpec:
    """
    One simulated backend.

    @ivar capacity: Requests served at once; L{None} for unlimited.
    @ivar slow: C{(start, end, factor)} windows multiplying its latency.
    @ivar down: C{(start, end)} windows when it is out of the pool.
    """

    latency: Latency
    capacity: int | None = None
    weight: int = 1
    slow: tuple[tuple[float, float, float], ...] = ()
    down: tuple[tuple[float, float], ...] = ()

    def slowFactor(self, now: float) -> float:
        """
        The latency multiplier at time C{now}.
        """
        factor = 1.0
        for start, end, multiplier in self.slow:
            if start <= now < end:
                factor *= multiplier
        return factor

    def isDown(self, now: float) -> bool:
        """
        Whether the backend is out of the pool at time C{now}.
        """
        return any(start <= now < end for start, end in self.down)


@attrs.frozen
class Arrivals:
    """
    How requests arrive: C{kind} is C{poisson} (at C{rate} per second),
    C{closed} (C{concurrency} clients) or C{replay} (at C{times}, from
    C{names}).
    """

    kind: str
    rate: float = 0.0
    concurrency: int = 0
    times: tuple[float, ...] = ()
    names: tuple[str | None, ...] = ()


@attrs.frozen
class Scenario:
    """
    A complete simulation setup.
    """

    name: str
    description: str
    backends: tuple[BackendSpec, ...]
    arrivals: Arrivals
    requests: int
    choosers: tuple[str, ...]
    seed: int = 1
    clients: int = 1000
    settings: Mapping[str, Any] = attrs.field(factory=dict)

    def removalTime(self) -> float | None:
        """
        The first time a backend goes down, if one does: the simulator
        reports how many clients' backends changed across it.
        """
        starts = [start for backend in self.backends for start, _ in backend.down]
        return min(starts) if starts else None


def builtinScenarios() -> list[str]:
    """
    The names of the scenarios shipped with lbproxy.
    """
    folder = resources.files("lbproxy.simulate") / "scenarios"
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


def loadScenario(nameOrPath: str, requests: int | None = None) -> Scenario:
    """
    Load a shipped scenario by name, or a scenario file by path.

    @param requests: Overrides the file's request count.
    @raise ScenarioError: With a one-line message.
    """
    path = Path(nameOrPath)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ScenarioError(f"cannot read scenario {nameOrPath!r}: {e.strerror}") from None
        name = path.stem
        base = path.parent
    else:
        resource = resources.files("lbproxy.simulate") / "scenarios" / f"{nameOrPath}.json"
        if not resource.is_file():
            known = ", ".join(builtinScenarios())
            raise ScenarioError(
                f"unknown scenario {nameOrPath!r}; shipped scenarios: {known}, or a .json file"
            )
        text = resource.read_text(encoding="utf-8")
        name = nameOrPath
        base = Path(".")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ScenarioError(f"scenario {nameOrPath!r} is not JSON: {e}") from None
    try:
        return parseScenario(name, data, base, requests)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ScenarioError):
            raise
        raise ScenarioError(f"scenario {nameOrPath!r}: bad or missing {e}") from None


def _latency(data: Mapping[str, Any]) -> Latency:
    dist = data["dist"]
    if dist not in _DISTRIBUTIONS:
        raise ScenarioError(f"unknown latency distribution {dist!r}")
    params = {key: float(data[key]) for key in _DISTRIBUTIONS[dist]}
    if any(value < 0 for value in params.values()) or not all(map(math.isfinite, params.values())):
        raise ScenarioError(f"latency {dict(data)!r}: parameters must be finite and >= 0")
    return Latency(dist, params)


def _backends(items: Sequence[Mapping[str, Any]]) -> tuple[BackendSpec, ...]:
    backends = []
    for item in items:
        capacity = item.get("capacity")
        spec = BackendSpec(
            latency=_latency(item["latency"]),
            capacity=None if capacity is None else int(capacity),
            weight=int(item.get("weight", 1)),
            slow=tuple((float(a), float(b), float(c)) for a, b, c in item.get("slow", ())),
            down=tuple((float(a), float(b)) for a, b in item.get("down", ())),
        )
        if spec.capacity is not None and spec.capacity < 1:
            raise ScenarioError("backend capacity must be at least 1")
        backends.extend([spec] * int(item.get("count", 1)))
    if not backends:
        raise ScenarioError("a scenario needs at least one backend")
    return tuple(backends)


def _arrivals(data: Mapping[str, Any], backends: Sequence[BackendSpec], base: Path) -> Arrivals:
    kind = data["kind"]
    if kind == "poisson":
        if "rate" in data:
            rate = float(data["rate"])
        else:
            if any(backend.capacity is None for backend in backends):
                raise ScenarioError("poisson 'load' needs a capacity on every backend")
            servable = sum((backend.capacity or 0) / backend.latency.mean() for backend in backends)
            rate = float(data["load"]) * servable
        if not rate > 0:
            raise ScenarioError("poisson arrivals need a rate above 0")
        return Arrivals("poisson", rate=rate)
    if kind == "closed":
        concurrency = int(data["concurrency"])
        if concurrency < 1:
            raise ScenarioError("closed arrivals need a concurrency of at least 1")
        return Arrivals("closed", concurrency=concurrency)
    if kind == "replay":
        return readReplay(base / data["path"])
    raise ScenarioError(f"unknown arrivals kind {kind!r} (poisson, closed or replay)")


def readReplay(path: Path) -> Arrivals:
    """
    Read a replay file: one request per line, C{SECONDS [CLIENT]}, times
    relative to any origin (they are shifted to start at 0); blank lines
    and lines starting with C{#} are skipped.

    @raise ScenarioError: For an unreadable file or a bad line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ScenarioError(f"cannot read replay file {str(path)!r}: {e.strerror}") from None
    entries: list[tuple[float, str | None]] = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            when = float(fields[0])
        except ValueError:
            raise ScenarioError(f"{path}:{number}: not a time in seconds: {fields[0]!r}") from None
        entries.append((when, fields[1] if len(fields) > 1 else None))
    if not entries:
        raise ScenarioError(f"replay file {str(path)!r} holds no requests")
    entries.sort(key=lambda entry: entry[0])
    origin = entries[0][0]
    return Arrivals(
        "replay",
        times=tuple(when - origin for when, _ in entries),
        names=tuple(name for _, name in entries),
    )


def parseScenario(
    name: str, data: Mapping[str, Any], base: Path = Path("."), requests: int | None = None
) -> Scenario:
    """
    Build a L{Scenario} from parsed JSON C{data}; relative replay paths are
    relative to C{base}.
    """
    backends = _backends(data["backends"])
    arrivals = _arrivals(data["arrivals"], backends, base)
    count = int(requests if requests is not None else data.get("requests", 10_000))
    if arrivals.kind == "replay":
        count = min(count, len(arrivals.times)) if requests is not None else len(arrivals.times)
    if count < 1:
        raise ScenarioError("a scenario needs at least one request")
    choosers = tuple(data.get("choosers", ("random", "round-robin", "least-conn", "p2c")))
    return Scenario(
        name=name,
        description=str(data.get("description", "")),
        backends=backends,
        arrivals=arrivals,
        requests=count,
        choosers=choosers,
        seed=int(data.get("seed", 1)),
        clients=int(data.get("clients", 1000)),
        settings=dict(data.get("settings", {})),
    )


__all__ = [
    "Arrivals",
    "BackendSpec",
    "Latency",
    "Scenario",
    "ScenarioError",
    "builtinScenarios",
    "loadScenario",
    "parseScenario",
    "readReplay",
]
