# -*- test-case-name: lbproxy.test.test_routing -*-
"""
Routes: which pool a request goes to, by Host and path prefix, first match
wins; and L{Router}, the resource that applies them.

A route table is a value: the router holds one and a reload swaps in
another (L{Router.install}), so every request is routed by one whole table,
old or new, never a mix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request

from lbproxy.http.headers import HeaderEdits
from lbproxy.http.target import Route, TargetError, hostName, routeTarget
from lbproxy.proxy import ProxyRecord, ReverseProxyResource, answer, setProxyRecord

NO_ROUTE_STATUSES = (404, 421)
"""
The answers a route table may give a request that matches no route.
"""


class RouteError(ValueError):
    """
    A route could not be understood; the message says why.
    """


def normalHostPattern(pattern: str) -> str:
    """
    Check and lower-case a route's host pattern: a host name or address
    (no port), or C{*.} and a domain for any one label under it.

    @raise RouteError: For anything else.
    """
    text = pattern.strip().lower()
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed:
        name = text[1:-1]
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-._:")
    # A colon belongs to an IPv6 address only: a port is never compared
    # (hostName drops the Host's), so a pattern with one could not match.
    if (
        not name
        or not set(name) <= allowed
        or "*" in name
        or ".." in name
        or name.startswith(".")
        or ((bracketed or ":" in name) and (wildcard or not _isIPv6(name)))
    ):
        raise RouteError(f"host {pattern!r} must be a host name like example.com or *.example.com")
    return name if bracketed else text


def _isIPv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def normalPathPrefix(prefix: str) -> bytes:
    """
    Check a route's path prefix: it starts with C{/}; a trailing C{/} is
    dropped (C{/api/} and C{/api} are the same prefix).

    @raise RouteError: For anything else.
    """
    if not prefix.startswith("/") or not prefix.isascii():
        raise RouteError(f"path {prefix!r} must start with '/'")
    if any(c in prefix for c in " ?#\r\n\t"):
        raise RouteError(f"path {prefix!r} must be a plain path, without spaces, '?' or '#'")
    return prefix.rstrip("/").encode("ascii")


@attrs.frozen
class RouteRule:
    """
    One route: the requests it matches and what happens to them.

    @ivar pool: The name of the pool matching requests go to.
    @ivar hosts: Lower-case host patterns (L{normalHostPattern}); empty
        matches every Host.
    @ivar pathPrefix: Requests whose path is this or under it (at a C{/})
        match; C{b""} matches every path.
    @ivar stripPrefix: Whether C{pathPrefix} is taken off the path sent to
        the backend (C{/api/users} goes as C{/users}).
    @ivar requestHeaders: Edits to the request sent to the backend.
    @ivar responseHeaders: Edits to the response relayed to the client.
    """

    pool: str
    hosts: tuple[str, ...] = ()
    pathPrefix: bytes = b""
    stripPrefix: bool = False
    requestHeaders: HeaderEdits = attrs.Factory(HeaderEdits)
    responseHeaders: HeaderEdits = attrs.Factory(HeaderEdits)

    def matchesHost(self, host: str) -> bool:
        """
        Whether this route takes requests for C{host} (lower case, no port).
        """
        if not self.hosts:
            return True
        for pattern in self.hosts:
            if pattern.startswith("*."):
                suffix = pattern[1:]
                if host.endswith(suffix) and "." not in host[: -len(suffix)] and host != suffix:
                    return True
            elif host == pattern:
                return True
        return False

    def matchesPath(self, target: bytes) -> bool:
        """
        Whether this route takes the request-target C{target}.
        """
        prefix = self.pathPrefix
        if not prefix or not target.startswith(prefix):
            return not prefix
        rest = target[len(prefix) : len(prefix) + 1]
        return rest in (b"", b"/", b"?")

    def targetFor(self, target: bytes) -> bytes:
        """
        The request-target to send to the backend for C{target} (one this
        route matches).
        """
        if not self.stripPrefix or not self.pathPrefix:
            return target
        rest = target[len(self.pathPrefix) :]
        return rest if rest.startswith(b"/") else b"/" + rest


@attrs.frozen
class RouteTable:
    """
    Routes in order, first match wins, and the status a request that
    matches none gets (404, or 421 Misdirected Request when the table is
    about hosts this proxy does not serve).
    """

    rules: tuple[RouteRule, ...]
    noRouteStatus: int = 404

    def match(self, host: str, target: bytes) -> RouteRule | None:
        """
        The first route that takes a request for C{host} and C{target}.
        """
        for rule in self.rules:
            if rule.matchesHost(host) and rule.matchesPath(target):
                return rule
        return None


@attrs.frozen
class Routing:
    """
    What a L{Router} needs to route: the table, and each pool's proxy by
    name (every pool a rule names is there).
    """

    table: RouteTable
    pools: Mapping[str, ReverseProxyResource]
    allowedHosts: frozenset[str] | None = None
    only: RouteRule | None = attrs.field(init=False)
    needsHost: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # The common case, one route that takes everything, costs no
        # matching per request.
        rules = self.table.rules
        catchAll = len(rules) == 1 and not rules[0].hosts and not rules[0].pathPrefix
        object.__setattr__(self, "only", rules[0] if catchAll else None)
        needsHost = self.allowedHosts is not None or any(rule.hosts for rule in rules)
        object.__setattr__(self, "needsHost", needsHost)


class Router(Resource):
    """
    Routes every request to a pool's L{ReverseProxyResource} by the
    installed L{Routing}; a malformed target or Host gets 400, a Host not
    in C{--allow-host} 421, a request no route matches the table's
    C{noRouteStatus}.
    """

    isLeaf = True

    def __init__(self, routing: Routing) -> None:
        super().__init__()
        self.routing = routing

    def install(self, routing: Routing) -> None:
        """
        Route requests that arrive from now on with C{routing}; requests
        already routed finish where they went.
        """
        self.routing = routing

    def render(self, request: Request) -> int | bytes:
        routing = self.routing
        record = ProxyRecord()
        setProxyRecord(request, record)
        try:
            route = routeTarget(request)
        except TargetError as e:
            return _refuse(request, 400, str(e), record)
        rule = routing.only
        if rule is None or routing.needsHost:
            host = hostName(route.host) if routing.needsHost else ""
            allowed = routing.allowedHosts
            if allowed is not None and host not in allowed:
                return _refuse(request, 421, "This proxy does not serve that host.", record)
            rule = routing.table.match(host, route.target)
        if rule is None:
            status = routing.table.noRouteStatus
            message = "No route for this host." if status == 421 else "No route for this path."
            return _refuse(request, status, message, record)
        proxy = routing.pools[rule.pool]
        record.pool = rule.pool
        if rule.stripPrefix:
            route = Route(target=rule.targetFor(route.target), host=route.host)
        return proxy.relay(request, route, record, rule.requestHeaders, rule.responseHeaders)


def _refuse(request: Request, status: int, message: str, record: ProxyRecord) -> bytes:
    """
    Answer C{request} with C{status} before it reaches a pool, counted as
    a rejection of its listener (see L{lbproxy.http.edge.ProxySite}).
    """
    channel = getattr(request, "channel", None)
    site = getattr(channel, "site", None)
    count = getattr(site, "countRejection", None)
    transport = getattr(channel, "transport", None)
    if count is not None and transport is not None:
        count(transport, status)
    return answer(request, status, message, record)


def checkRoutes(rules: Sequence[RouteRule], pools: Sequence[str]) -> None:
    """
    Check that every route names a known pool.

    @raise RouteError: Naming the first route that does not.
    """
    for index, rule in enumerate(rules):
        if rule.pool not in pools:
            raise RouteError(
                f"route {index + 1} names pool {rule.pool!r}, which is not defined "
                f"(pools: {', '.join(pools) or 'none'})"
            )


__all__ = [
    "NO_ROUTE_STATUSES",
    "RouteError",
    "RouteRule",
    "RouteTable",
    "Router",
    "Routing",
    "checkRoutes",
    "normalHostPattern",
    "normalPathPrefix",
]
