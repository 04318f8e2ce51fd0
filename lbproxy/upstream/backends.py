# -*- test-case-name: lbproxy.test.test_backends,lbproxy.test.test_h2client -*-
"""
Backends: where requests go, their live counters, and parsing of the
C{--backends} list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.balancing.ewma import PeakEWMA
from lbproxy.upstream.latency import LatencyHistogram

DEFAULT_PORT = 80
DEFAULT_HTTPS_PORT = 443


class BackendSpecError(ValueError):
    """
    A C{--backends} item could not be understood; the message says why.
    """


@attrs.frozen
class SlowStart:
    """
    A traffic ramp for a backend that has just come (back) into service: its
    weight grows linearly from C{floor} to full over C{duration} seconds, as
    HAProxy's C{slowstart} does.

    @ivar clock: The proxy's clock.
    @ivar startedAt: When the backend came into service.
    @ivar duration: Seconds to full weight.
    @ivar floor: The smallest fraction of its weight it gets meanwhile, so
        that it does take some traffic from the start.
    """

    clock: IReactorTime
    startedAt: float
    duration: float
    floor: float = 0.05

    def factor(self) -> float:
        """
        The fraction of its weight the backend takes now, in C{[floor, 1]}.
        """
        elapsed = self.clock.seconds() - self.startedAt
        return min(1.0, max(self.floor, elapsed / self.duration))

    def finished(self) -> bool:
        """
        Whether the ramp has reached full weight.
        """
        return self.clock.seconds() - self.startedAt >= self.duration


@attrs.define(eq=False)
class Backend:
    """
    One upstream server and its live counters.

    Identity is the object itself: two L{Backend}s are never equal, even for
    the same address, because each carries its own counters.

    @ivar host: Host name or IP literal (IPv6 without brackets).
    @ivar port: TCP port.
    @ivar scheme: C{"http"}, or C{"https"} for a backend reached over TLS
        (its certificate verified, see L{lbproxy.tls.client.BackendTLS});
        C{"h2c"} and C{"h2"} for the same over HTTP/2 (see
        L{lbproxy.upstream.h2client}).
    @ivar weight: Relative share of traffic for weighted choosers.
    @ivar inFlight: Requests sent to this backend and not yet finished.
    @ivar requests: Requests ever sent to this backend.
    @ivar failures: Requests to this backend that ended in a proxy error
        (502/504).
    @ivar healthy: The active health checks' verdict (up until they say
        otherwise).
    @ivar ejected: Whether passive checks have ejected it for now.
    @ivar ejections: How many times it has been ejected.
    @ivar retries: Requests retried away from this backend.
    @ivar slowStart: Its traffic ramp after coming back, if one is running.
    @ivar draining: Whether it is being taken out of service: it gets no
        new requests, and those in flight finish.
    @ivar latencyEWMA: Peak-sensitive moving average of its latencies, for
        latency-aware choosers.
    @ivar latency: Histogram of its latencies (metrics, percentiles).
    @ivar responses: Its responses by status class: index 1 for 1xx (a
        final 101) to 5 for 5xx.
    @ivar bytesToBackend: Request body bytes sent to it (and tunnel bytes).
    @ivar bytesFromBackend: Response body bytes it sent (and tunnel bytes).
    @ivar connectFailures: Failed connections to it by kind (C{refused},
        C{timeout}, C{dns}, C{tls}, C{unreachable}).
    """

    host: str
    port: int = DEFAULT_PORT
    scheme: str = "http"
    weight: int = 1
    inFlight: int = 0
    requests: int = 0
    failures: int = 0
    lastLatency: float | None = None
    healthy: bool = True
    ejected: bool = False
    ejections: int = 0
    retries: int = 0
    slowStart: SlowStart | None = None
    draining: bool = False
    latencyEWMA: PeakEWMA = attrs.field(factory=PeakEWMA, repr=False)
    latency: LatencyHistogram = attrs.field(factory=LatencyHistogram, repr=False)
    responses: list[int] = attrs.field(factory=lambda: [0] * 6, repr=False)
    bytesToBackend: int = 0
    bytesFromBackend: int = 0
    connectFailures: dict[str, int] = attrs.field(factory=dict, repr=False)
    _url: str = attrs.field(init=False, default="", repr=False)

    @property
    def effectiveWeight(self) -> float:
        """
        The weight weighted choosers should use now: the configured weight,
        scaled down while the backend is in slow start.
        """
        if self.slowStart is None:
            return float(self.weight)
        return self.weight * self.slowStart.factor()

    @property
    def available(self) -> bool:
        """
        Whether this backend can take traffic now: healthy, not ejected and
        not draining. Choosers are only ever given available backends.
        """
        return self.healthy and not self.ejected and not self.draining

    @property
    def authority(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 literal.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """
        The base URL of this backend, e.g. C{http://127.0.0.2:80} (made
        once: a backend's scheme, host and port do not change).
        """
        if not self._url:
            self._url = f"{self.scheme}://{self.authority}"
        return self._url

    @property
    def key(self) -> tuple[str, str, int]:
        """
        What makes two configurations' backends the same backend: scheme,
        host and port (a reload keeps the state of a backend whose key is
        in both).
        """
        return (self.scheme, _normalHost(self.host), self.port)

    @property
    def state(self) -> str:
        """
        One word for its state: C{draining}, C{down} (health checks
        fail), C{ejected}, C{slow-start} or C{up}.
        """
        if self.draining:
            return "draining"
        if not self.healthy:
            return "down"
        if self.ejected:
            return "ejected"
        if self.slowStart is not None and not self.slowStart.finished():
            return "slow-start"
        return "up"

    def __str__(self) -> str:
        return self.authority

    def requestStarted(self) -> None:
        """
        Count a request sent to this backend.
        """
        self.inFlight += 1
        self.requests += 1

    def requestFinished(
        self, failed: bool = False, latency: float | None = None, now: float | None = None
    ) -> None:
        """
        Count a request to this backend as finished.

        @param failed: Whether it ended in a proxy error.
        @param latency: Seconds from sending the request until the response
            headers arrived, if they did.
        @param now: The proxy clock's time at completion.
        """
        self.inFlight -= 1
        if failed:
            self.failures += 1
        if latency is not None:
            self.lastLatency = latency
            self.latencyEWMA.observe(latency, now)
            self.latency.observe(latency)


@attrs.define
class BackendPool:
    """
    The configured backends, in configured order.
    """

    backends: list[Backend]

    def available(self) -> list[Backend]:
        """
        The backends that can take traffic now, in configured order.
        """
        return [backend for backend in self.backends if backend.available]


MAX_WEIGHT = 1000
"""
The largest weight a backend may be given.
"""


def parseBackend(item: str) -> Backend:
    """
    Parse one backend: C{host}, C{host:port}, C{[v6addr]}, C{[v6addr]:port},
    C{v6addr} (bare), C{http://host[:port]} or C{https://host[:port]}
    (port 443 by default), C{h2c://host[:port]} (HTTP/2 in clear text, by
    prior knowledge) or C{h2://host[:port]} (HTTP/2 over TLS, port 443 by
    default), each optionally followed by
    C{=WEIGHT}, a whole number from 1 to L{MAX_WEIGHT} (default 1), e.g.
    C{10.0.0.1:80=3}.

    @raise BackendSpecError: With a message naming the item.
    """
    text = item.strip()
    if not text:
        raise BackendSpecError("empty backend in --backends")
    weight = 1
    if "=" in text:
        text, weightText = (part.strip() for part in text.rsplit("=", 1))
        weight = _parseWeight(item, weightText)
    scheme = "http"
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("http", "https", "h2c", "h2"):
            raise BackendSpecError(
                f"backend {item!r}: only http://, https://, h2c:// and h2:// backends are supported"
            )
        rest = text.split("://", 1)[1]
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest or "?" in rest or "#" in rest or "@" in rest:
            raise BackendSpecError(f"backend {item!r}: give only scheme, host and port (no path)")
        text = rest
    defaultPort = DEFAULT_HTTPS_PORT if scheme in ("https", "h2") else DEFAULT_PORT
    host, port = _splitHostPort(item, text, defaultPort)
    if not host:
        raise BackendSpecError(f"backend {item!r}: missing host")
    return Backend(host=host, port=port, scheme=scheme, weight=weight)


def _parseWeight(item: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_WEIGHT:
        raise BackendSpecError(
            f"backend {item!r}: weight after '=' must be a whole number from 1 to {MAX_WEIGHT}"
        )
    return int(text)


def _splitHostPort(item: str, text: str, defaultPort: int = DEFAULT_PORT) -> tuple[str, int]:
    """
    Split C{text} into host and port, accepting bracketed or bare IPv6.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BackendSpecError(f"backend {item!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        _checkIPv6(item, host)
        if not rest:
            return host, defaultPort
        if not rest.startswith(":"):
            raise BackendSpecError(f"backend {item!r}: unexpected {rest!r}")
        return host, _parsePort(item, rest[1:])
    if text.count(":") > 1:
        _checkIPv6(item, text)
        return text, defaultPort
    if ":" in text:
        host, portText = text.split(":", 1)
        return _checkHost(item, host), _parsePort(item, portText)
    return _checkHost(item, text), defaultPort


def _checkIPv6(item: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise BackendSpecError(f"backend {item!r}: {host!r} is not an IPv6 address") from None


def _checkHost(item: str, host: str) -> str:
    # Only the characters a DNS name or IPv4 literal may hold.
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    if not host or not set(host) <= allowed:
        raise BackendSpecError(f"backend {item!r}: {host!r} is not a host name")
    return host


def _parsePort(item: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise BackendSpecError(f"backend {item!r}: port must be a number from 1 to 65535")
    return int(text)


def parseBackends(text: str) -> list[Backend]:
    """
    Parse a comma-separated C{--backends} value.

    @raise BackendSpecError: For an empty list, an empty item or a
        duplicate backend.
    """
    items = text.split(",")
    backends = [parseBackend(item) for item in items]
    seen: dict[tuple[str, str, int], str] = {}
    for item, backend in zip(items, backends, strict=True):
        key = (backend.scheme, _normalHost(backend.host), backend.port)
        if key in seen:
            raise BackendSpecError(
                f"duplicate backend {item.strip()!r} in --backends "
                f"(same as {seen[key]!r}: {backend.authority})"
            )
        seen[key] = item.strip()
    return backends


def _normalHost(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def isIPLiteral(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address rather than a name.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IResolutionReceiver)
class _Resolved:
    """
    Fires C{done} with whether a name resolved to any address.
    """

    def __init__(self) -> None:
        self.done: Deferred[bool] = Deferred()
        self._any = False

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self._any = True

    def resolutionComplete(self) -> None:
        self.done.callback(self._any)


_log = Logger()


def warnUnresolvable(
    backends: Sequence[Backend], resolver: IHostnameResolver, log: Logger = _log
) -> Deferred[list[Backend]]:
    """
    Look up the host name of each backend given by name (not by address),
    and log a warning naming each one that does not resolve. It is kept:
    its requests fail (and are retried elsewhere) until the name resolves,
    and health checks take it out meanwhile. Nothing is refused, so
    start-up goes on whatever DNS says.

    @param resolver: E.g. the reactor's C{nameResolver}.
    @param log: Where the warnings go (event C{backend}, C{host}).
    @return: Fires with the backends whose names did not resolve, in
        configured order; never fails.
    """
    named = [backend for backend in backends if not isIPLiteral(backend.host)]
    checks: list[Deferred[bool]] = []
    for backend in named:
        receiver = _Resolved()
        try:
            resolver.resolveHostName(receiver, backend.host, backend.port)
        except Exception:  # noqa: BLE001 - a broken resolver must not stop start-up
            log.failure("looking up backend {backend}", backend=backend.authority)
            receiver.done.callback(False)
        checks.append(receiver.done)

    def warn(resolved: list[bool]) -> list[Backend]:
        unresolvable = [b for b, ok in zip(named, resolved, strict=True) if not ok]
        for backend in unresolvable:
            log.warn(
                "backend {backend}: the host name {host!r} does not resolve; "
                "its requests fail until it does",
                backend=backend.authority,
                host=backend.host,
            )
        return unresolvable

    return gatherResults(checks).addCallback(warn)


__all__: Sequence[str] = [
    "MAX_WEIGHT",
    "Backend",
    "BackendPool",
    "BackendSpecError",
    "isIPLiteral",
    "parseBackend",
    "parseBackends",
    "warnUnresolvable",
]
