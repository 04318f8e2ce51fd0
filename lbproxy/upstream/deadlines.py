# -*- test-case-name: lbproxy.test.test_deadlines -*-
"""
One timer for many deadlines of the same length.

The proxy gives every request to a backend the same response timeout. A
timer per request (C{callLater}, then C{cancel} when the answer comes, which
nearly always happens) costs a L{DelayedCall}, a heap insertion and a
cancelled entry left in the reactor's heap until it is compacted. Deadlines
of one length expire in the order they were set, so one ordered dict and one
timer, set for the earliest deadline still waiting, do the same work: adding
and removing are dict operations, and while requests overlap the timer
fires about once per timeout, not once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadlines:
    """
    Calls each added callable C{timeout} seconds after it was added, unless
    it is removed before.

    @ivar timeout: Seconds from L{add} to the call.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._waiting: dict[Hashable, tuple[float, Callable[[], object]]] = {}
        self._timer: IDelayedCall | None = None

    def add(self, key: Hashable, expired: Callable[[], object], now: float) -> None:
        """
        Call C{expired} C{timeout} seconds after C{now} (the clock's time),
        unless C{key} is removed first; adding C{key} again starts its
        deadline over.
        """
        self._waiting.pop(key, None)
        self._waiting[key] = (now + self.timeout, expired)
        if self._timer is None:
            self._timer = self._clock.callLater(self.timeout, self._expire)

    def remove(self, key: Hashable) -> None:
        """
        Forget C{key}'s deadline, if it has one; with none left, stop the
        timer (so an idle process has none pending).
        """
        waiting = self._waiting
        waiting.pop(key, None)
        if not waiting:
            self.stop()

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        waiting = self._waiting
        while waiting:
            key = next(iter(waiting))
            deadline, expired = waiting[key]
            if deadline > now:
                break
            del waiting[key]
            expired()
        # A callback may have added (and so started the timer) or emptied.
        if waiting and self._timer is None:
            first, _ = waiting[next(iter(waiting))]
            self._timer = self._clock.callLater(max(0.0, first - now), self._expire)

    def stop(self) -> None:
        """
        Forget every deadline and stop the timer.
        """
        self._waiting.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


__all__ = ["Deadlines"]
