# -*- test-case-name: lbproxy.test.test_reactor -*-
"""
Twisted's epoll reactor without the per-event log context.

Twisted's C{EPollReactor} dispatches each ready socket through
C{log.callWithLogger}: it asks the connection for its log prefix, copies
the current legacy log context, adds the prefix and pushes the copy for
the duration of the C{doRead} or C{doWrite}, so that a legacy
C{log.msg} or C{log.err} made meanwhile is tagged
C{[ProxyChannel,5,127.0.0.1]}. A proxied request is two such events
(the client's request, the backend's answer), and the wrapper cost 7 µs
of benchmark B's 75 µs per request and 4 µs of A's 82 (measured by
taking it out; see docs/benchmarks.md).

L{LeanEPollReactor} dispatches directly. Nothing of lbproxy logs through
the legacy context (its lines come from C{twisted.logger.Logger}, tagged
by namespace), so the only lines the context still tagged were the
unhandled errors of a C{doRead} or C{doWrite}; those keep their prefix
here, given explicitly when the error is logged. A legacy C{log.msg}
made inside an event handler (Twisted itself has a few) is tagged C{-}.

L{installPreferred} installs it where twistd would install its default
reactor (Linux, nothing installed yet, no C{--reactor} given); the
C{lbproxy} reactor plugin names it for C{twistd --reactor lbproxy}.

Checked against Twisted 26.10: C{_doReadOrWrite} is Twisted's, with the
prefix given to C{log.err}. The private names it uses are listed in
L{PRIVATE_NAMES}.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import epollreactor, posixbase
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.internet.epollreactor.EPollReactor": (
        "_poller",
        "_selectables",
        "_reads",
        "_doReadOrWrite",
        "_disconnectSelectable",
        "_POLL_DISCONNECTED",
        "_POLL_IN",
        "_POLL_OUT",
    ),
    "twisted.internet.posixbase": ("_NO_FILEDESC",),
}
"""
Every private Twisted name this module uses, by the object that has it.
"""

_NO_FILEDESC = posixbase._NO_FILEDESC


def logPrefixOf(selectable: Any) -> str:
    """
    What C{log.callWithLogger} tags a selectable's log lines with.
    """
    try:
        return str(selectable.logPrefix())
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - as Twisted: a broken logPrefix must not stop the loop
        return "(buggy logPrefix method)"


class LeanEPollReactor(epollreactor.EPollReactor):
    """
    C{EPollReactor} dispatching each ready socket without the legacy log
    context (see the module docstring).
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events and dispatch each (Twisted's C{doPoll} without
        C{log.callWithLogger}).
        """
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - as callWithLogger: log, serve the others
                log.err(system=logPrefixOf(selectable))

    doIteration = doPoll

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        """
        Twisted's C{_PollLikeMixin._doReadOrWrite}, logging an unhandled
        error with the selectable's prefix (which Twisted's took from the
        context that C{callWithLogger} set).
        """
        why: Any = None
        inRead = False
        if event & self._POLL_DISCONNECTED and not (event & self._POLL_IN):
            # Disconnected, with all pending input read: a clean close if
            # we were reading, a lost connection if not.
            if fd in self._reads:
                inRead = True
                why = CONNECTION_DONE
            else:
                why = CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & self._POLL_IN:
                        why = selectable.doRead()
                        inRead = True
                    if not why and event & self._POLL_OUT:
                        why = selectable.doWrite()
                        inRead = False
            except BaseException:  # noqa: BLE001 - as Twisted: log, drop this connection
                why = sys.exc_info()[1]
                log.err(system=logPrefixOf(selectable))
        if why:
            self._disconnectSelectable(selectable, why, inRead)


def install() -> LeanEPollReactor:
    """
    Install L{LeanEPollReactor} as the reactor (C{twistd --reactor
    lbproxy}).
    """
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


def installPreferred() -> bool:
    """
    Install L{LeanEPollReactor} if no reactor is installed yet (none was
    chosen with C{twistd --reactor}, nothing imported the default);
    otherwise leave the reactor alone. (Where epoll is missing this module
    does not import: see L{lbproxy.cli.options.preferLeanReactor}.)

    @return: Whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True


__all__ = ["PRIVATE_NAMES", "LeanEPollReactor", "install", "installPreferred", "logPrefixOf"]
