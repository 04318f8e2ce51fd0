# -*- test-case-name: lbproxy.test.test_configfile -*-
"""
The config file (C{--config lbproxy.toml}): the command line's options in
TOML, plus what only a file can say, several pools and the routes between
them.

The file's keys are the flags' names. At the top level, any option: those
of the edge, TLS and the process, and the pool options (C{chooser},
C{retries}, C{timeout}, C{health-*}...), which there are every pool's
defaults. A C{[pools.NAME]} table holds one pool's C{backends} and its own
pool options; C{[[routes]]} send requests to pools by C{host} and C{path}.
A flag given on the command line beats the file wherever the file says it.

An invalid file is one line naming the file, the line and the key.
"""

from __future__ import annotations

import json
import re
import sys
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.python import usage

from lbproxy.http.headers import HeaderEditError, HeaderEdits
from lbproxy.routing import (
    NO_ROUTE_STATUSES,
    RouteError,
    RouteRule,
    RouteTable,
    normalHostPattern,
    normalPathPrefix,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

POOL_OPTIONS: frozenset[str] = frozenset(
    {
        "backends",
        "chooser",
        "hash-key",
        "hash-balance-factor",
        "sticky-cookie",
        "sticky-fallback",
        "sticky-secret-file",
        "timeout",
        "connect-timeout",
        "max-idle-per-backend",
        "backend-idle-timeout",
        "health-interval",
        "health-path",
        "health-timeout",
        "health-fall",
        "health-rise",
        "max-fails",
        "eject-time",
        "eject-max-time",
        "max-ejection-percent",
        "eject-on-5xx",
        "retries",
        "retry-budget",
        "slow-start",
    }
)
"""
The options each pool may set for itself (at the top level of the file
they are every pool's defaults).
"""

POOL_ONLY_KEYS = frozenset({"draining"})
"""
Pool keys that are no flag: C{draining}, backends that start drained.
"""

NOT_IN_FILE = frozenset({"config", "version", "help"})
"""
Options a config file cannot set.
"""

ROUTE_KEYS = frozenset(
    {"host", "path", "pool", "strip-prefix", "request-headers", "response-headers"}
)

KeyPath = tuple[str | int, ...]


class ConfigFileError(usage.UsageError):
    """
    The config file cannot be used; the message is one line naming the
    file, the line and the key.
    """


@attrs.frozen
class ConfigSource:
    """
    A config file's text and what it says.

    @ivar name: The file's path, as the operator gave it (or C{<admin>}
        for a configuration posted to the admin API).
    @ivar data: The parsed document.
    """

    name: str
    text: str
    data: Mapping[str, Any]

    def locate(self, path: KeyPath) -> int | None:
        """
        The line where the key at C{path} is given (for a table given only
        through its sub-tables, the first of them; for a key inside an
        inline table or array, the nearest enclosing one that has a line).
        """
        lines = _keyLines(self.text)
        inside = [line for key, line in lines.items() if key[: len(path)] == path]
        if path and path not in lines and inside:
            return min(inside)
        for end in range(len(path), 0, -1):
            line = lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def error(self, path: KeyPath, message: str) -> ConfigFileError:
        """
        The error for a bad value at C{path}: C{FILE, line N: KEY: MESSAGE}.
        """
        line = self.locate(path)
        where = self.name if line is None else f"{self.name}, line {line}"
        key = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in path)
        key = key.replace(".[", "[")
        return ConfigFileError(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def readConfigFile(path: str) -> ConfigSource:
    """
    Read and parse the TOML file at C{path}.

    @raise ConfigFileError: If it cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as configFile:
            raw = configFile.read()
    except OSError as e:
        raise ConfigFileError(f"cannot read --config {path!r}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text") from None
    return parseConfigText(text, path)


def parseConfigText(text: str, name: str, format: str = "toml") -> ConfigSource:
    """
    Parse a configuration given as C{text} (C{format} C{toml} or C{json}),
    called C{name} in error messages.

    @raise ConfigFileError: If it does not parse.
    """
    if format == "json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigFileError(f"{name}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigFileError(f"{name}: a configuration is a JSON object")
        return ConfigSource(name, text, data)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(_syntaxError(name, str(e))) from None
    return ConfigSource(name, text, data)


_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def _syntaxError(name: str, message: str) -> str:
    match = _AT_LINE.search(message)
    if match is None:
        return f"{name}: invalid TOML: {message}"
    detail = message[: match.start()] + message[match.end() :]
    return f"{name}, line {match.group(1)}: invalid TOML: {detail} (column {match.group(2)})"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_PART_PATTERN = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*({_PART_PATTERN}(?:\s*\.\s*{_PART_PATTERN})*)\s*=")
_PART = re.compile(_PART_PATTERN)


def _splitKey(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _PART.findall(text))


def _keyLines(text: str) -> dict[KeyPath, int]:
    """
    The line of every table header and key/value line of a TOML text, by
    key path (array-of-tables elements by index).
    """
    lines: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}
    current: KeyPath = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header is not None:
            path: KeyPath = ()
            for part in _splitKey(header.group(2)):
                path += (part,)
                if path in arrays and part is not None:
                    path += (arrays[path],)
            if header.group(1) == "[[":
                base = path[:-1] if path and isinstance(path[-1], int) else path
                arrays[base] = arrays.get(base, -1) + 1
                path = (*base, arrays[base])
            current = path
            lines.setdefault(current, number)
            continue
        key = _KEY.match(line)
        if key is not None:
            lines.setdefault((*current, *_splitKey(key.group(1))), number)
    return lines


@attrs.frozen
class PoolSection:
    """
    One C{[pools.NAME]} table: its own option values (as the flags would
    give them), and the backends that start drained.
    """

    name: str
    values: Mapping[str, Any]
    draining: tuple[str, ...] = ()


@attrs.frozen
class FileLayout:
    """
    What a config file says beyond the options it sets: its pools, routes
    and the status for requests no route takes.

    @ivar pools: The pools, in file order; empty when the file names no
        pool (the options then describe one pool, as the flags do).
    @ivar routes: The routes, or L{None} for one route to the only pool.
    """

    source: ConfigSource
    pools: tuple[PoolSection, ...] = ()
    routes: RouteTable | None = None


def applyConfigFile(
    options: usage.Options, source: ConfigSource, given: Iterable[str]
) -> FileLayout:
    """
    Set C{options} from C{source}'s top-level keys, except those C{given}
    on the command line, and read its pools and routes.

    @raise ConfigFileError: For an unknown key or a value of the wrong
        type, naming the file, line and key.
    """
    given = frozenset(given)
    known = _optionNames(options)
    data = source.data
    for key, value in data.items():
        if key in ("pools", "routes", "no-route-status"):
            continue
        if key in NOT_IN_FILE:
            raise source.error((key,), "cannot be given in a config file")
        if key not in known:
            raise source.error((key,), f"unknown option{_suggestion(key, known)}")
        if key not in given:
            _setOption(options, source, (key,), value)
    pools = _pools(options, source, data.get("pools"), given, known)
    if pools and "backends" in data:
        raise source.error(
            ("backends",),
            "give backends inside [pools.NAME] tables when the file defines pools",
        )
    routes = _routes(source, data.get("routes"), data.get("no-route-status"), pools)
    return FileLayout(source=source, pools=pools, routes=routes)


def poolOptions(options: Mapping[str, Any], section: PoolSection) -> Mapping[str, Any]:
    """
    The option values of one pool: its table's, then the top level's (the
    file's, or the flags').
    """
    return ChainMap(dict(section.values), options)  # type: ignore[arg-type]


def _optionNames(options: usage.Options) -> frozenset[str]:
    return frozenset(name for name in options.synonyms.values())


def _suggestion(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _isFlag(options: usage.Options, name: str) -> bool:
    return any(flag[0] == name for flag in _flags(options))


def _flags(options: usage.Options) -> list[Sequence[Any]]:
    flags: list[Sequence[Any]] = []
    for cls in type(options).__mro__:
        flags.extend(cls.__dict__.get("optFlags", []))
    return flags


def _setOption(options: usage.Options, source: ConfigSource, path: KeyPath, value: Any) -> None:
    """
    Set one option from the file, as its flag would.
    """
    name = str(path[-1])
    handler = getattr(options, "opt_" + name.replace("-", "_"), None)
    if _isFlag(options, name):
        if not isinstance(value, bool):
            raise source.error(path, "must be true or false")
        options[name] = 1 if value else 0
        return
    if handler is not None and isinstance(options[name], list):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise source.error(path, "must be a string or a list of strings")
        options[name] = []
        for item in items:
            try:
                handler(item)
            except usage.UsageError as e:
                raise source.error(path, _withoutFlag(str(e), name)) from None
        return
    options[name] = _optionText(source, path, value, name)


def _optionText(source: ConfigSource, path: KeyPath, value: Any, name: str) -> str:
    if name == "backends" and isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise source.error(path, "must be a list of strings like '10.0.0.1:80'")
        return ",".join(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise source.error(path, "must be a number or a string")
    return str(value)


def _withoutFlag(message: str, name: str) -> str:
    """
    A flag's error message as a file's: C{--retries must be...} becomes
    C{must be...}.
    """
    prefix = f"--{name} "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _pools(
    options: usage.Options,
    source: ConfigSource,
    tables: Any,
    given: frozenset[str],
    known: frozenset[str],
) -> tuple[PoolSection, ...]:
    if tables is None:
        return ()
    if not isinstance(tables, dict) or not tables:
        raise source.error(("pools",), "must be tables like [pools.web]")
    sections = []
    for name, table in tables.items():
        where: KeyPath = ("pools", name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise source.error(where, "a pool name is letters, digits, '_', '-' and '.'")
        if not isinstance(table, dict):
            raise source.error(where, "must be a table")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in POOL_ONLY_KEYS:
                continue
            if key not in POOL_OPTIONS:
                hint = (
                    " (it is not a pool option: give it at the top level)"
                    if key in known
                    else _suggestion(key, POOL_OPTIONS | POOL_ONLY_KEYS)
                )
                raise source.error((*where, key), f"unknown pool option{hint}")
            if key in given:
                continue
            if _isFlag(options, key):
                if not isinstance(value, bool):
                    raise source.error((*where, key), "must be true or false")
                values[key] = 1 if value else 0
            else:
                values[key] = _optionText(source, (*where, key), value, key)
        if "backends" not in table and "backends" not in given:
            raise source.error(where, "a pool needs backends (an empty list for none yet)")
        draining = table.get("draining", [])
        if not isinstance(draining, list) or not all(isinstance(d, str) for d in draining):
            raise source.error((*where, "draining"), "must be a list of backends")
        sections.append(PoolSection(name=name, values=values, draining=tuple(draining)))
    return tuple(sections)


def _routes(
    source: ConfigSource,
    tables: Any,
    noRoute: Any,
    pools: Sequence[PoolSection],
) -> RouteTable | None:
    status = 404
    if noRoute is not None:
        if type(noRoute) is not int or noRoute not in NO_ROUTE_STATUSES:
            raise source.error(("no-route-status",), "must be 404 or 421")
        status = noRoute
    if tables is None:
        if len(pools) > 1:
            raise source.error(
                ("pools",),
                "with more than one pool, [[routes]] must say which requests go where",
            )
        if noRoute is not None:
            raise source.error(("no-route-status",), "only means something with [[routes]]")
        return None
    if not isinstance(tables, list) or not tables:
        raise source.error(("routes",), "must be [[routes]] tables")
    names = [pool.name for pool in pools] or ["default"]
    rules = tuple(_route(source, index, table, names) for index, table in enumerate(tables))
    return RouteTable(rules, status)


def _route(source: ConfigSource, index: int, table: Any, pools: Sequence[str]) -> RouteRule:
    where: KeyPath = ("routes", index)
    if not isinstance(table, dict):
        raise source.error(where, "must be a table")
    for key in table:
        if key not in ROUTE_KEYS:
            raise source.error((*where, key), f"unknown route option{_suggestion(key, ROUTE_KEYS)}")
    pool = table.get("pool")
    if not isinstance(pool, str):
        raise source.error(where, "a route needs pool = NAME")
    if pool not in pools:
        raise source.error(
            (*where, "pool"), f"no pool named {pool!r} (pools: {', '.join(pools)})"
        )
    hosts = table.get("host", [])
    hosts = [hosts] if isinstance(hosts, str) else hosts
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise source.error((*where, "host"), "must be a host name or a list of them")
    path = table.get("path", "/")
    if not isinstance(path, str):
        raise source.error((*where, "path"), "must be a path like '/api'")
    strip = table.get("strip-prefix", False)
    if not isinstance(strip, bool):
        raise source.error((*where, "strip-prefix"), "must be true or false")
    try:
        patterns = tuple(normalHostPattern(host) for host in hosts)
    except RouteError as e:
        raise source.error((*where, "host"), str(e)) from None
    try:
        prefix = normalPathPrefix(path)
    except RouteError as e:
        raise source.error((*where, "path"), str(e)) from None
    return RouteRule(
        pool=pool,
        hosts=patterns,
        pathPrefix=prefix,
        stripPrefix=strip,
        requestHeaders=_edits(source, (*where, "request-headers"), table.get("request-headers")),
        responseHeaders=_edits(source, (*where, "response-headers"), table.get("response-headers")),
    )


def _edits(source: ConfigSource, where: KeyPath, table: Any) -> HeaderEdits:
    if table is None:
        return HeaderEdits()
    if not isinstance(table, dict):
        raise source.error(where, "must be a table with set and remove")
    for key in table:
        if key not in ("set", "remove"):
            raise source.error((*where, key), "unknown key (set or remove)")
    setTable = table.get("set", {})
    if not isinstance(setTable, dict) or not all(isinstance(v, str) for v in setTable.values()):
        raise source.error((*where, "set"), "must be a table of header names to string values")
    remove = table.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(n, str) for n in remove):
        raise source.error((*where, "remove"), "must be a list of header names")
    try:
        return HeaderEdits.fromText(setTable.items(), remove)
    except HeaderEditError as e:
        raise source.error(where, str(e)) from None


def routeAsText(rule: RouteRule) -> dict[str, Any]:
    """
    A route as a config file states it.
    """
    text: dict[str, Any] = {"pool": rule.pool}
    if rule.hosts:
        text["host"] = list(rule.hosts) if len(rule.hosts) > 1 else rule.hosts[0]
    if rule.pathPrefix:
        text["path"] = rule.pathPrefix.decode("ascii")
    if rule.stripPrefix:
        text["strip-prefix"] = True
    for key, edits in (
        ("request-headers", rule.requestHeaders),
        ("response-headers", rule.responseHeaders),
    ):
        if edits:
            text[key] = edits.asText()
    return text


__all__ = [
    "POOL_OPTIONS",
    "ConfigFileError",
    "ConfigSource",
    "FileLayout",
    "PoolSection",
    "applyConfigFile",
    "parseConfigText",
    "poolOptions",
    "readConfigFile",
    "routeAsText",
]
