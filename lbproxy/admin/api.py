# -*- test-case-name: lbproxy.test.test_admin -*-
"""
The admin API's core, independent of any transport: a method, a path (with
its query), a body and an C{Accept} value go in; an L{AdminResponse} comes
out. The HTTP listener (L{lbproxy.admin.http}) drives it, and so can a
supervisor that forwards requests from its workers.

Endpoints (JSON unless said otherwise)::

    GET    /                                  the dashboard page (HTML), or with
                                              ?format=json the endpoints
    GET    /dashboard/state                   every pool and backend, for the page
    GET    /dashboard/history                 the backends' last minutes, and events
    GET    /dashboard/decisions               the last sampled routing decisions
    GET    /pools                             every pool, in brief
    GET    /pools/NAME                        a pool and its backends
    GET    /pools/NAME/backends               the same
    POST   /pools/NAME/backends               add {"address": A, "weight": W}
    GET    /pools/NAME/backends/ADDRESS       one backend
    PATCH  /pools/NAME/backends/ADDRESS       {"weight": W} and/or {"drain": B}
    DELETE /pools/NAME/backends/ADDRESS       drain it, then remove it
    GET    /config                            the running configuration (TOML)
    POST   /config                            apply a configuration (TOML or JSON)

A request that is refused (400, 404, 405, 413) changes nothing: every part
of it is checked before the first change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.admin.dashboard import pageResponse, stateView, wantsJSON
from lbproxy.admin.response import AdminResponse, errorResponse, jsonResponse
from lbproxy.admin.views import backendView, poolSummary, poolView
from lbproxy.balancer import BackendState, Balancer, BalancerError, LivePool
from lbproxy.observe.dashboard import Dashboard
from lbproxy.upstream.backends import MAX_WEIGHT, Backend, BackendSpecError, parseBackend

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""
Prometheus's text exposition format, as C{GET /metrics} answers.
"""

MAX_BODY = 1024 * 1024
"""
The largest request body, in bytes, the admin API reads (larger: 413).
"""

TOML = "application/toml; charset=utf-8"
"""
The content type of the configuration as TOML.
"""


class AdminHandler(Protocol):
    """
    What the HTTP layer (L{lbproxy.admin.http.adminSite}) calls: the one
    method of L{AdminAPI}, which the workers' supervisor has too
    (L{lbproxy.control.admin.WorkersAdmin}).
    """

    def handle(
        self, method: str, path: str, body: bytes, accept: str | None = None
    ) -> Deferred[AdminResponse]:
        """
        Answer one admin request; never fails.
        """


class ConfigRejected(Exception):
    """
    A configuration given to L{ConfigHooks.apply} is invalid; the message
    says why, on one line, and nothing was changed.
    """


class ConfigHooks(Protocol):
    """
    What the admin API needs from whoever owns the configuration.
    """

    def describe(self) -> dict[str, Any]:
        """
        The running configuration, as values TOML can represent.
        """

    def describeTOML(self) -> str:
        """
        The running configuration as TOML text.
        """

    def apply(self, text: str, format: str) -> Deferred[None]:
        """
        Check the configuration C{text} (C{format} is C{"toml"} or
        C{"json"}), then switch to it.

        @return: Fires when it is applied; fails with L{ConfigRejected}
            when it is invalid, and nothing changed then.
        """


class _Refused(Exception):
    """
    A request the admin API answers with an error; nothing was changed.
    """

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers

    def response(self) -> AdminResponse:
        return errorResponse(self.status, str(self), self.headers)


@attrs.frozen
class _Call:
    """
    One request, routed: its path parameters percent-decoded.
    """

    method: str
    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    body: bytes
    accept: str | None


_Handler = Callable[[_Call], "AdminResponse | Deferred[AdminResponse]"]


@attrs.frozen
class _Route:
    """
    A path pattern and the handler of each method allowed on it.

    @ivar pattern: The path's segments: literal, C{{name}} for one segment,
        C{{name...}} (last) for the rest of the path, slashes and all.
    """

    pattern: tuple[str, ...]
    methods: Mapping[str, _Handler]

    @property
    def text(self) -> str:
        return "/" + "/".join(self.pattern)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """
        The (still percent-encoded) parameters of a path that matches, or
        L{None}.
        """
        params: dict[str, str] = {}
        for index, part in enumerate(self.pattern):
            if part.endswith("...}"):
                rest = "/".join(segments[index:])
                if not rest:
                    return None
                params[part[1:-4]] = rest
                return params
            if index >= len(segments):
                return None
            if part.startswith("{"):
                params[part[1:-1]] = segments[index]
            elif part != segments[index]:
                return None
        return params if len(segments) == len(self.pattern) else None


class AdminAPI:
    """
    The admin API over a live L{Balancer} and the owner of its
    configuration.
    """

    _log = Logger()

    def __init__(
        self,
        balancer: Balancer,
        config: ConfigHooks,
        metrics: Callable[[], bytes] | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        """
        @param metrics: Renders the Prometheus metrics for C{GET /metrics}
            (L{lbproxy.metrics}); L{None} answers it with 404.
        @param dashboard: The history and decisions C{GET /dashboard/...}
            show (L{lbproxy.observe}); L{None} answers those with 404.
        """
        self._balancer = balancer
        self._config = config
        self._metrics = metrics
        self._dashboard = dashboard
        self._applying = DeferredLock()
        self._routes = (
            _Route((), {"GET": self._index}),
            _Route(("pools",), {"GET": self._listPools}),
            _Route(("pools", "{pool}"), {"GET": self._showPool}),
            _Route(
                ("pools", "{pool}", "backends"),
                {"GET": self._showPool, "POST": self._addBackend},
            ),
            _Route(
                ("pools", "{pool}", "backends", "{address...}"),
                {
                    "GET": self._showBackend,
                    "PATCH": self._changeBackend,
                    "DELETE": self._removeBackend,
                },
            ),
            _Route(("config",), {"GET": self._showConfig, "POST": self._applyConfig}),
            _Route(("metrics",), {"GET": self._showMetrics}),
            _Route(("dashboard", "state"), {"GET": self._dashboardState}),
            _Route(("dashboard", "history"), {"GET": self._dashboardHistory}),
            _Route(("dashboard", "decisions"), {"GET": self._dashboardDecisions}),
        )

    def handle(
        self, method: str, path: str, body: bytes, accept: str | None = None
    ) -> Deferred[AdminResponse]:
        """
        Answer one request.

        @param method: The HTTP method, e.g. C{"GET"} (case matters).
        @param path: The request target: path and query, percent-encoded,
            e.g. C{/pools/web/backends/127.0.0.2%3A80} or
            C{/config?format=json}.
        @param body: The whole request body.
        @param accept: The request's C{Accept} header, if any.
        @return: Fires with the answer; never fails (an unexpected error is
            logged and answered with 500).
        """
        result: AdminResponse | Deferred[AdminResponse]
        try:
            result = self._dispatch(method, path, body, accept)
        except _Refused as e:
            result = e.response()
        except Exception:  # noqa: BLE001 - logged, and answered with 500
            self._log.failure("admin API: {method} {path} failed", method=method, path=path)
            result = _internalError()
        answer = result if isinstance(result, Deferred) else succeed(result)
        answer.addErrback(self._failed, method, path)
        if method != "GET":
            answer.addCallback(self._audit, method, path)
        return answer

    def _dispatch(
        self, method: str, path: str, body: bytes, accept: str | None
    ) -> AdminResponse | Deferred[AdminResponse]:
        target, _, queryText = path.partition("?")
        if not target.startswith("/"):
            raise _Refused(404, f"no such endpoint: {target!r}")
        target = target.rstrip("/")
        segments = target.split("/")[1:] if target else []
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            handler = route.methods.get(method)
            if handler is None:
                allowed = ", ".join(route.methods)
                raise _Refused(
                    405,
                    f"{method} is not allowed on {route.text} (allowed: {allowed})",
                    (("Allow", allowed),),
                )
            if len(body) > MAX_BODY:
                raise _Refused(413, f"the request body is larger than {MAX_BODY} bytes")
            call = _Call(
                method=method,
                params={name: _decode(value) for name, value in params.items()},
                query=parse_qs(queryText, keep_blank_values=True),
                body=body,
                accept=accept,
            )
            try:
                return handler(call)
            except (BalancerError, BackendSpecError) as e:
                raise _Refused(400, str(e)) from None
        raise _Refused(404, f"no such endpoint: {target or '/'}")

    def _failed(self, failure: Failure, method: str, path: str) -> AdminResponse:
        if isinstance(failure.value, _Refused):
            return failure.value.response()
        self._log.failure("admin API: {method} {path} failed", failure, method=method, path=path)
        return _internalError()

    def _audit(self, response: AdminResponse, method: str, path: str) -> AdminResponse:
        self._log.info(
            "admin API: {method} {path} answered {status}",
            method=method,
            path=path,
            status=response.status,
        )
        return response

    # The endpoints.

    def _index(self, call: _Call) -> AdminResponse:
        """
        The dashboard page (L{lbproxy.admin.dashboard}); for a script
        (C{?format=json}, or C{Accept: application/json}) the endpoints.
        """
        if not wantsJSON(call.query, call.accept):
            return pageResponse()
        return jsonResponse(
            200,
            {
                "endpoints": [
                    f"{method} {route.text}" for route in self._routes for method in route.methods
                ]
            },
        )

    def _showMetrics(self, call: _Call) -> AdminResponse:
        """
        The Prometheus metrics, in its text format.
        """
        if self._metrics is None:
            raise _Refused(404, "metrics are not available here")
        return AdminResponse(200, METRICS_CONTENT_TYPE, self._metrics())

    def _dashboardState(self, call: _Call) -> AdminResponse:
        sample = None if self._dashboard is None else self._dashboard.decisions.every
        return jsonResponse(200, stateView(self._balancer.snapshot(), sample))

    def _dashboardHistory(self, call: _Call) -> AdminResponse:
        return jsonResponse(200, self._running().history.view())

    def _dashboardDecisions(self, call: _Call) -> AdminResponse:
        return jsonResponse(200, self._running().decisions.view())

    def _running(self) -> Dashboard:
        if self._dashboard is None:
            raise _Refused(404, "the dashboard's history and decisions are not kept here")
        return self._dashboard

    def _listPools(self, call: _Call) -> AdminResponse:
        return jsonResponse(200, {"pools": [poolSummary(p) for p in self._balancer.snapshot()]})

    def _showPool(self, call: _Call) -> AdminResponse:
        name = call.params["pool"]
        self._balancer.pool(name)
        (state,) = (p for p in self._balancer.snapshot() if p.name == name)
        return jsonResponse(200, poolView(state))

    def _addBackend(self, call: _Call) -> AdminResponse:
        poolName = call.params["pool"]
        pool = self._balancer.pool(poolName)
        fields = _object(call.body, ("address", "weight"))
        address = fields.get("address")
        if not isinstance(address, str) or not address.strip():
            raise _Refused(400, 'give "address": "HOST:PORT" (or a URL) of the new backend')
        if "=" in address:
            raise _Refused(400, 'give the weight as "weight", not after "=" in the address')
        weight = _weight(fields.get("weight", 1))
        backend = self._balancer.addBackend(
            poolName, attrs.evolve(parseBackend(address), weight=weight)
        )
        location = f"/pools/{quote(poolName, safe='')}/backends/{quote(backend.url, safe='')}"
        return jsonResponse(201, self._backendView(pool, backend), (("Location", location),))

    def _showBackend(self, call: _Call) -> AdminResponse:
        pool, backend = self._find(call)
        return jsonResponse(200, self._backendView(pool, backend))

    def _changeBackend(self, call: _Call) -> AdminResponse:
        fields = _object(call.body, ("weight", "drain"))
        if not fields:
            raise _Refused(400, 'give "weight" (a number), "drain" (true or false) or both')
        weight = _weight(fields["weight"]) if "weight" in fields else None
        drain = fields.get("drain")
        if "drain" in fields and not isinstance(drain, bool):
            raise _Refused(400, '"drain" must be true or false')
        pool, backend = self._find(call)
        if drain is not None and self._balancer.removing(backend):
            raise _Refused(400, f"backend {backend.authority} is being removed")
        if drain is not None:
            self._balancer.setDraining(pool.name, backend.url, drain)
        if weight is not None:
            self._balancer.setWeight(pool.name, backend.url, weight)
        return jsonResponse(200, self._backendView(pool, backend))

    def _removeBackend(self, call: _Call) -> AdminResponse:
        pool, backend = self._find(call)
        self._balancer.removeBackend(pool.name, backend.url)
        view = backendView(BackendState.of(backend, pool, removing=True))
        return jsonResponse(202, {"backend": view, "removing": True})

    def _showConfig(self, call: _Call) -> AdminResponse:
        formats = call.query.get("format", [])
        wanted = formats[-1] if formats else None
        if wanted not in (None, "json", "toml"):
            raise _Refused(400, f"format must be json or toml, not {wanted!r}")
        accept = (call.accept or "").lower()
        if wanted == "json" or (wanted is None and "application/json" in accept):
            return jsonResponse(200, self._config.describe())
        text = self._config.describeTOML()
        if not text.endswith("\n"):
            text += "\n"
        return AdminResponse(200, TOML, text.encode("utf-8"))

    def _applyConfig(self, call: _Call) -> Deferred[AdminResponse]:
        try:
            text = call.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "the configuration is not UTF-8 text") from None
        format = "json" if text.lstrip().startswith("{") else "toml"
        applying = self._applying.run(self._config.apply, text, format)
        return applying.addCallbacks(lambda _: jsonResponse(200, {"applied": True}), _rejected)

    # Helpers.

    def _find(self, call: _Call) -> tuple[LivePool, Backend]:
        """
        The pool and backend a request names: the backend whose C{host:port}
        or URL is the address given, else the one that address means (e.g.
        C{127.0.0.2} for C{127.0.0.2:80}).

        @raise BalancerError: If there is no such pool or backend.
        @raise _Refused: If the address is ambiguous (C{host:port} of both
            an C{http} and an C{https} backend).
        """
        pool = self._balancer.pool(call.params["pool"])
        address = call.params["address"]
        backends = pool.backends.backends
        exact = [b for b in backends if address in (b.authority, b.url)]
        if len(exact) > 1:
            raise _Refused(
                400,
                f"pool {pool.name!r} has {len(exact)} backends at {address}; "
                f"give the URL (e.g. {exact[0].url})",
            )
        if exact:
            return pool, exact[0]
        if "=" not in address:
            try:
                key = parseBackend(address).key
            except BackendSpecError:
                pass
            else:
                meant = [b for b in backends if b.key == key]
                if len(meant) == 1:
                    return pool, meant[0]
        return pool, pool.find(address)

    def _backendView(self, pool: LivePool, backend: Backend) -> dict[str, Any]:
        return backendView(BackendState.of(backend, pool, self._balancer.removing(backend)))


def _decode(value: str) -> str:
    """
    A percent-encoded path parameter, decoded.
    """
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise _Refused(400, f"the path holds {value!r}, which is not UTF-8") from None


def _object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """
    The request body: a JSON object with no fields but C{allowed}.
    """
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _Refused(
            400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise _Refused(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise _Refused(400, f"the body must be a JSON object with {_fields(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _Refused(
            400, f"unknown field {', '.join(map(repr, unknown))}: give only {_fields(allowed)}"
        )
    return value


def _fields(names: tuple[str, ...]) -> str:
    return " and/or ".join(f'"{name}"' for name in names)


def _weight(value: object) -> int:
    """
    A backend weight given in JSON.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
        raise _Refused(
            400, f"weight must be a whole number from 1 to {MAX_WEIGHT}, not {json.dumps(value)}"
        )
    return value


def _rejected(failure: Failure) -> AdminResponse | Failure:
    if isinstance(failure.value, ConfigRejected):
        return errorResponse(400, str(failure.value))
    return failure


def _internalError() -> AdminResponse:
    return errorResponse(500, "internal error in the admin API; see the log")


__all__ = ["MAX_BODY", "TOML", "AdminAPI", "AdminResponse", "ConfigHooks", "ConfigRejected"]
