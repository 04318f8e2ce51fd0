"""
C{twistd lbproxy} refuses to start on bad input with one line a person can
act on, a non-zero exit status and no traceback.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.support import ExitResult, freePort, runTwistd


class StartupErrorTests(TestCase):
    """
    Start-up errors of C{twistd -n lbproxy}.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def assertOneLineError(self, result: ExitResult) -> str:
        """
        C{result} is a failed start: a non-zero exit status, exactly one
        non-empty line on standard error, and no traceback anywhere.

        @return: That line.
        """
        self.assertIsNotNone(result.code, result)
        self.assertNotEqual(result.code, 0, result)
        lines = [line for line in result.err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.err)
        self.assertNotIn("Traceback", result.combined)
        return lines[0]

    async def test_missingCertificateFiles(self) -> None:
        """
        Without C{--listen}, in a directory with no C{certs/}, the default
        certificate files are missing: one line says how to create them
        (C{python -m lbproxy.certs}) or to use C{--adhoc} instead.
        """
        result = await runTwistd(["--backends", "127.0.0.2"], self.directory)
        line = self.assertOneLineError(result)
        self.assertIn("python -m lbproxy.certs", line)
        self.assertIn("--adhoc", line)

    async def test_unknownChooser(self) -> None:
        """
        An unknown C{--chooser} is refused with one line listing the known
        ones.
        """
        result = await runTwistd(
            ["--backends", "127.0.0.2", "--adhoc", "--chooser", "no-such-chooser"],
            self.directory,
        )
        line = self.assertOneLineError(result)
        self.assertIn("no-such-chooser", line)
        self.assertIn("random", line)
        self.assertIn("round-robin", line)

    async def test_duplicateBackend(self) -> None:
        """
        The same backend twice in C{--backends} is refused with one line
        naming it.
        """
        result = await runTwistd(
            ["--backends", "127.0.0.2:8080,127.0.0.2:8080", "--adhoc"],
            self.directory,
        )
        line = self.assertOneLineError(result)
        self.assertIn("127.0.0.2:8080", line)

    async def test_emptyBackendItem(self) -> None:
        """
        An empty item in C{--backends} (two commas) is refused with one
        line.
        """
        result = await runTwistd(
            ["--backends", "127.0.0.2,,127.0.0.3", "--adhoc"], self.directory
        )
        line = self.assertOneLineError(result)
        self.assertIn("--backends", line)

    async def test_portInUse(self) -> None:
        """
        When one C{--listen} port is taken, start-up fails with
        C{lbproxy: error: cannot listen ...}, a non-zero exit status and no
        traceback, and the other listener given is not left listening.
        """
        free = freePort()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            takenPort = taken.getsockname()[1]
            result = await runTwistd(
                [
                    "--backends", "127.0.0.2",
                    "--listen", f"tcp:{free}:interface=127.0.0.1",
                    "--listen", f"tcp:{takenPort}:interface=127.0.0.1",
                ],
                self.directory,
            )
        self.assertIsNotNone(result.code, result)
        self.assertNotEqual(result.code, 0, result)
        # twistd has redirected standard error into its log by then, so the
        # message may be on either stream.
        self.assertIn("lbproxy: error:", result.combined)
        self.assertIn("cannot listen", result.combined)
        self.assertIn(str(takenPort), result.combined)
        self.assertNotIn("Traceback", result.combined)
        from twisted.internet import reactor

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", free, timeout=10)
        await self.assertFailure(
            endpoint.connect(Factory.forProtocol(Protocol)), ConnectionRefusedError
        )
