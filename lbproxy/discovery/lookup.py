# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
Looking up a discovery source: the backends its DNS records name now,
and how long that answer may be kept (the smallest TTL of the records
used).

A name that does not exist (NXDOMAIN) and a name without records of the
type asked for are both an answer with no backends; any other failure
(a server failure, a refusal, a timeout) fails the whole lookup, so that
a caller never mistakes half an answer for the whole one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DomainError,
)
from twisted.python.failure import Failure

from lbproxy.discovery.sources import SRV, Source
from lbproxy.upstream.backends import MAX_WEIGHT, Backend

LOOKUP_TIMEOUT: tuple[int, ...] = (1, 3, 5)
"""
Seconds to wait for each try of a query (Twisted's default waits up to a
minute in all).
"""

_MAX_CNAMES = 8


class LookupFailed(Exception):
    """
    A lookup got no usable answer; the message says why, in a few words
    (C{server failure}, C{timed out}...).
    """


@attrs.frozen
class Resolved:
    """
    What a source's records say now.

    @ivar backends: Its backends, sorted by address and port; none if the
        name does not exist or has no records.
    @ivar ttl: The smallest TTL of the records used, in seconds; L{None}
        when there were none.
    """

    backends: tuple[Backend, ...]
    ttl: float | None


def lookup(
    resolver: IResolver, source: Source, timeout: Sequence[int] = LOOKUP_TIMEOUT
) -> Deferred[Resolved]:
    """
    Look up C{source} with C{resolver}.

    @return: Fires with its L{Resolved} backends, or fails with
        L{LookupFailed}.
    """
    if source.kind == SRV:
        return _lookupService(resolver, source, timeout)
    return _addresses(resolver, source.name, timeout).addCallback(
        lambda found: Resolved(
            backends=_sorted(
                Backend(host=address, port=source.port, weight=source.weight)
                for address, _ in found
            ),
            ttl=min((ttl for _, ttl in found), default=None),
        )
    )


def _addresses(
    resolver: IResolver, name: str, timeout: Sequence[int]
) -> Deferred[list[tuple[str, float]]]:
    """
    Every A and AAAA address of C{name}, each with its record's TTL.
    """
    queries = [
        resolver.lookupAddress(name, timeout),
        resolver.lookupIPV6Address(name, timeout),
    ]

    def combine(results: list[tuple[bool, Any]]) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for (ok, result), recordType in zip(results, (dns.A, dns.AAAA), strict=True):
            if ok:
                found += _records(name, result[0], recordType)
            elif not _noSuchName(result):
                raise LookupFailed(_why(result))
        return found

    answers: Deferred[list[tuple[bool, Any]]] = DeferredList(queries, consumeErrors=True)
    return answers.addCallback(combine)


@inlineCallbacks
def _lookupService(
    resolver: IResolver, source: Source, timeout: Sequence[int]
) -> Generator[Deferred[Any], Any, Resolved]:
    """
    Every target of C{source}'s SRV records, each address a backend on the
    record's port with its weight (scaled into 1 to L{MAX_WEIGHT}). A
    target's addresses come from the answer's additional section when it
    has them, else from a lookup of their own.
    """
    try:
        answers, _, additional = yield resolver.lookupService(source.name, timeout)
    except Exception:  # noqa: BLE001 - any failure but "no such name" fails the lookup
        failure = Failure()
        if _noSuchName(failure):
            return Resolved(backends=(), ttl=None)
        raise LookupFailed(_why(failure)) from None
    services: list[tuple[dns.Record_SRV, float]] = []
    records, cnameTTL = _chain(source.name, answers, dns.SRV)
    for record in records:
        payload = record.payload
        # A target of "." says the service is not offered at this name.
        if isinstance(payload, dns.Record_SRV) and payload.target.name not in (b"", b"."):
            services.append((payload, float(record.ttl)))
    known: dict[bytes, list[tuple[str, float]]] = {}
    for record in [*answers, *additional]:
        address = _address(record)
        if address is not None:
            known.setdefault(_nameOf(record), []).append((address, float(record.ttl)))
    weights = _scaledWeights([service.weight for service, _ in services])
    backends: dict[tuple[str, str, int], Backend] = {}
    ttls = [ttl for _, ttl in services] + ([cnameTTL] if services and cnameTTL else [])
    for (service, _), weight in zip(services, weights, strict=True):
        target = service.target.name.lower().rstrip(b".")
        found = known.get(target)
        if found is None:
            found = yield _addresses(resolver, target.decode("ascii"), timeout)
            known[target] = found
        for address, ttl in found:
            ttls.append(ttl)
            backend = Backend(host=address, port=service.port, weight=weight)
            present = backends.get(backend.key)
            if present is None:
                backends[backend.key] = backend
            else:
                present.weight = max(present.weight, weight)
    return Resolved(backends=_sorted(backends.values()), ttl=min(ttls, default=None))


def _scaledWeights(weights: Sequence[int]) -> list[int]:
    """
    SRV weights (0 to 65535) as backend weights (1 to L{MAX_WEIGHT}): as
    they are when the largest fits, else scaled so that the largest is
    L{MAX_WEIGHT}; 0, and anything that scales below 1, is 1.
    """
    largest = max(weights, default=0)
    if largest <= MAX_WEIGHT:
        return [max(1, weight) for weight in weights]
    return [max(1, round(weight * MAX_WEIGHT / largest)) for weight in weights]


def _chain(
    name: str, answers: Iterable[dns.RRHeader], recordType: int
) -> tuple[list[dns.RRHeader], float | None]:
    """
    The records of C{recordType} in C{answers} for C{name} or the names its
    CNAME records lead to, and the smallest TTL of those CNAME records
    (L{None} if there were none).
    """
    answers = list(answers)
    names = {name.encode("ascii").lower().rstrip(b".")}
    cnameTTLs: list[float] = []
    for _ in range(_MAX_CNAMES):
        more: set[bytes] = set()
        for record in answers:
            payload = record.payload
            if isinstance(payload, dns.Record_CNAME) and _nameOf(record) in names:
                target = payload.name.name.lower().rstrip(b".")
                if target not in names:
                    more.add(target)
                    cnameTTLs.append(float(record.ttl))
        if not more:
            break
        names |= more
    found = [record for record in answers if record.type == recordType and _nameOf(record) in names]
    return found, min(cnameTTLs, default=None)


def _nameOf(record: dns.RRHeader) -> bytes:
    """
    The name C{record} is about, in lower case without a trailing dot.
    """
    return bytes(record.name.name).lower().rstrip(b".")


def _records(
    name: str, answers: Iterable[dns.RRHeader], recordType: int
) -> list[tuple[str, float]]:
    """
    The addresses in C{answers}' records of C{recordType} (A or AAAA) for
    C{name} (or the names its CNAME records lead to), each with its TTL.
    """
    records, cnameTTL = _chain(name, answers, recordType)
    found = []
    for record in records:
        address = _address(record)
        if address is not None:
            ttl = float(record.ttl)
            found.append((address, ttl if cnameTTL is None else min(ttl, cnameTTL)))
    return found


def _address(record: dns.RRHeader) -> str | None:
    """
    The address an A or AAAA record holds; L{None} for any other record.
    """
    payload = record.payload
    if isinstance(payload, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    if isinstance(payload, dns.Record_A):
        return str(payload.dottedQuad())
    return None


def _sorted(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """
    C{backends}, IPv4 before IPv6, each by address then port (DNS servers
    rotate their answers; the order of a pool's backends should not).
    """

    def order(backend: Backend) -> tuple[int, int, int]:
        address = ipaddress.ip_address(backend.host)
        return (address.version, int(address), backend.port)

    return tuple(sorted(backends, key=order))


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (DNSServerError, "server failure"),
    (DNSQueryRefusedError, "query refused"),
    (DNSFormatError, "format error"),
    (DNSNotImplementedError, "query not implemented by the server"),
    (dns.DNSQueryTimeoutError, "timed out"),
    (DNSLookupError, "lookup error"),
)


def _noSuchName(failure: Failure) -> bool:
    """
    Whether C{failure} says the name does not exist (NXDOMAIN from a
    server, a local authority's "not here", or a resolver chain none of
    whose resolvers knew it) rather than that the lookup failed.
    """
    return bool(failure.check(DNSNameError, AuthoritativeDomainError)) or (
        type(failure.value) is DomainError
    )


def _why(failure: Failure) -> str:
    """
    A few words for why a query failed.
    """
    for kind, words in _REASONS:
        if failure.check(kind):
            return words
    if "Timeout" in type(failure.value).__name__:
        return "timed out"
    return failure.getErrorMessage() or type(failure.value).__name__


__all__ = ["LOOKUP_TIMEOUT", "LookupFailed", "Resolved", "lookup"]
