# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
Keeping a pool's discovered backends current: each source is looked up
again when its answer's TTL runs out (bounded by C{--dns-min-ttl} and
C{--dns-max-ttl}), and what it says now is given to the balancer
(L{lbproxy.balancer.Balancer.setDiscovered}), which adds, keeps and drains
backends.

A failed lookup, and one that finds no address, change nothing: the
pool keeps the backends the source last gave (none, before its first
answer), one line says which it was, and the source is looked up again
after C{--dns-min-ttl}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IResolver
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.balancer import Balancer, DiscoveryChange
from lbproxy.discovery.lookup import LookupFailed, Resolved, lookup
from lbproxy.discovery.resolver import DiscoverySettings
from lbproxy.discovery.sources import Source, SourceKey
from lbproxy.upstream.backends import Backend

_ANSWERED = "answered"
_EMPTY = "empty"
_FAILED = "failed"


def _listed(backends: Sequence[Backend]) -> str:
    return ", ".join(
        backend.authority + (f"={backend.weight}" if backend.weight != 1 else "")
        for backend in backends
    )


class SourceWatcher:
    """
    Looks up one source of one pool, now and whenever its answer expires,
    and gives the balancer what it finds.

    @ivar source: The source (a reload may give it a new weight).
    """

    _log = Logger()

    def __init__(
        self,
        pool: str,
        source: Source,
        resolver: IResolver,
        balancer: Balancer,
        clock: IReactorTime,
        settings: DiscoverySettings,
    ) -> None:
        self.pool = pool
        self.source = source
        self._resolver = resolver
        self._balancer = balancer
        self._clock = clock
        self._settings = settings
        self._timer: IDelayedCall | None = None
        self._running = False
        self._outcome: str | None = None
        self._reason = ""

    def start(self) -> None:
        """
        Look the source up now, and again whenever its answer expires.
        """
        self._running = True
        self._lookUp()

    def stop(self) -> None:
        """
        Stop looking it up; a lookup under way is ignored when it ends.
        """
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _lookUp(self) -> None:
        self._timer = None
        source = self.source
        lookup(self._resolver, source).addCallbacks(
            self._answered, self._failed, callbackArgs=(source,)
        ).addErrback(
            lambda failure: self._log.failure(
                "pool {pool}: looking up {source}", failure, pool=self.pool, source=str(source)
            )
        )

    def _answered(self, resolved: Resolved, source: Source) -> None:
        if not self._running:
            return
        if not resolved.backends:
            self._unchanged(_EMPTY, "resolved to no addresses")
            return
        backends = resolved.backends
        if source != self.source:
            # A reload changed the source's weight while it was looked up.
            source = self.source
            backends = tuple(attrs.evolve(b, weight=source.weight) for b in backends)
        change = self._balancer.setDiscovered(self.pool, source, backends)
        if change:
            self._logChange(change)
        elif self._outcome in (_EMPTY, _FAILED):
            self._log.info(
                "pool {pool}: {source} resolves again, unchanged: {now}",
                pool=self.pool,
                source=str(self.source),
                now=_listed(change.now),
            )
        self._outcome = _ANSWERED
        self._schedule(self._settings.delay(resolved.ttl))

    def _failed(self, failure: Failure) -> None:
        if not self._running:
            return
        failure.trap(LookupFailed)
        self._unchanged(_FAILED, f"lookup failed ({failure.getErrorMessage()})")

    def _unchanged(self, outcome: str, reason: str) -> None:
        """
        Keep the backends the source last gave, saying so once (not again
        while the lookups go on failing in the same way), and try again
        after the shortest wait.
        """
        delay = self._settings.minTTL
        if (outcome, reason) != (self._outcome, self._reason):
            kept = [
                b
                for b in self._balancer.discoveredBy(self.pool, self.source)
                if not self._balancer.removing(b)
            ]
            self._log.warn(
                "pool {pool}: {source} {reason}; {kept}; trying again every {delay:g} s",
                pool=self.pool,
                source=str(self.source),
                reason=reason,
                kept=f"keeping {_listed(kept)}" if kept else "no backends from it yet",
                delay=delay,
            )
        self._outcome, self._reason = outcome, reason
        self._schedule(delay)

    def _logChange(self, change: DiscoveryChange) -> None:
        changes = [f"+{b.authority}" for b in change.added]
        changes += [f"-{b.authority}" for b in change.removed]
        changes += [f"{b.authority} weight {b.weight}" for b in change.reweighted]
        self._log.info(
            "pool {pool}: {source} now {now} ({changes})",
            pool=self.pool,
            source=str(self.source),
            now=_listed(change.now),
            changes=", ".join(changes),
        )

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._timer = self._clock.callLater(delay, self._lookUp)


class Discovery:
    """
    One L{SourceWatcher} for every source of every pool of a balancer's
    configuration, kept in step with it (L{update} after each reload).
    """

    def __init__(
        self,
        balancer: Balancer,
        clock: IReactorTime,
        settings: DiscoverySettings,
        makeResolver: Callable[[], IResolver],
    ) -> None:
        """
        @param makeResolver: Makes the resolver, once there is a source
            to look up.
        """
        self._balancer = balancer
        self._clock = clock
        self._settings = settings
        self._makeResolver = makeResolver
        self._resolver: IResolver | None = None
        self._running = False
        self.watchers: dict[tuple[str, SourceKey], SourceWatcher] = {}

    def start(self) -> None:
        """
        Start looking up every source of the balancer's configuration.
        """
        self._running = True
        self.update()

    def update(self) -> None:
        """
        Follow the balancer's configuration (after a reload): a source it
        keeps (same pool, kind, name and port) keeps its watcher, one it
        drops is no longer looked up, and one it adds is looked up now.
        """
        if not self._running:
            return
        wanted = {
            (pool.name, source.key): (pool.name, source)
            for pool in self._balancer.config.pools
            for source in pool.sources
        }
        for key in [key for key in self.watchers if key not in wanted]:
            self.watchers.pop(key).stop()
        for key, (pool, source) in wanted.items():
            watcher = self.watchers.get(key)
            if watcher is not None:
                watcher.source = source
                continue
            if self._resolver is None:
                self._resolver = self._makeResolver()
            watcher = SourceWatcher(
                pool, source, self._resolver, self._balancer, self._clock, self._settings
            )
            self.watchers[key] = watcher
            watcher.start()

    def stop(self) -> None:
        """
        Stop every lookup.
        """
        self._running = False
        for watcher in self.watchers.values():
            watcher.stop()
        self.watchers = {}


__all__ = ["Discovery", "SourceWatcher"]
