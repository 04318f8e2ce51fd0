# -*- test-case-name: lbproxy.test.test_watch -*-
"""
C{--watch-config}: reload when the config file changes on disk, as SIGHUP
does.

Kubernetes updates a mounted ConfigMap by pointing a symlink at a new
directory, which no inotify watch on the file itself sees; polling what
the path leads to sees every way a file can change. The file is read every
L{POLL_INTERVAL} seconds and a reload runs when its contents differ from
what was last loaded (a touch, or a rewrite with the same text, does not
reload).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

POLL_INTERVAL = 2.0
"""
Seconds between two looks at the config file.
"""


def _digest(path: str) -> bytes | None:
    """
    The SHA-256 of the file at C{path}, or L{None} if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class ConfigWatcher(Service):
    """
    Calls C{reload} when the file at C{path} changes.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reload: Callable[[], object],
        clock: IReactorTime,
        interval: float = POLL_INTERVAL,
        digest: Callable[[str], bytes | None] = _digest,
    ) -> None:
        self._path = path
        self._reload = reload
        self._interval = interval
        self._digest = digest
        self._loop = LoopingCall(self._look)
        self._loop.clock = clock
        self._known: bytes | None = None
        self._missing = False

    def startService(self) -> None:
        super().startService()
        self._known = self._digest(self._path)
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _look(self) -> None:
        current = self._digest(self._path)
        if current is None:
            if not self._missing:
                self._missing = True
                self._log.warn(
                    "--watch-config: cannot read {path}; the running configuration is kept",
                    path=self._path,
                )
            return
        self._missing = False
        if current != self._known:
            self._known = current
            self._log.info("--watch-config: {path} changed; reloading", path=self._path)
            self._reload()


__all__ = ["POLL_INTERVAL", "ConfigWatcher"]
