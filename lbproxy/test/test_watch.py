"""
Tests for L{lbproxy.watch}.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.watch import POLL_INTERVAL, ConfigWatcher


class ConfigWatcherTests(SynchronousTestCase):
    """
    A config file that changes on disk is reloaded, as on SIGHUP.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.reloads: list[None] = []
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.directory = directory
        self.path = os.path.join(directory, "lbproxy.toml")
        self.write("retries = 1\n")
        self.watcher = ConfigWatcher(self.path, lambda: self.reloads.append(None), self.clock)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    def write(self, text: str, path: str | None = None) -> None:
        with open(path or self.path, "w") as f:
            f.write(text)

    def test_changeReloads(self) -> None:
        """
        A change of contents reloads once, at the next look.
        """
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(self.reloads, [])
        self.write("retries = 2\n")
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(len(self.reloads), 1)
        self.clock.advance(POLL_INTERVAL * 3)
        self.assertEqual(len(self.reloads), 1)

    def test_sameContentsDoNot(self) -> None:
        """
        Writing the same text again (a touch) does not reload.
        """
        self.write("retries = 1\n")
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(self.reloads, [])

    def test_symlinkSwap(self) -> None:
        """
        A symlink swapped to a new file, as Kubernetes updates a mounted
        ConfigMap, reloads.
        """
        os.remove(self.path)
        first = os.path.join(self.directory, "one.toml")
        self.write("retries = 1\n", first)
        os.symlink(first, self.path)
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(self.reloads, [])
        second = os.path.join(self.directory, "two.toml")
        self.write("retries = 3\n", second)
        swap = os.path.join(self.directory, "swap")
        os.symlink(second, swap)
        os.replace(swap, self.path)
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(len(self.reloads), 1)

    def test_missingKeepsRunning(self) -> None:
        """
        A file that vanishes for a while changes nothing; when it comes
        back changed, it is reloaded.
        """
        os.remove(self.path)
        self.clock.advance(POLL_INTERVAL * 2)
        self.assertEqual(self.reloads, [])
        self.write("retries = 0\n")
        self.clock.advance(POLL_INTERVAL)
        self.assertEqual(len(self.reloads), 1)
