"""
The installed C{twistd lbproxy} balancing real requests over real backends.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support import (
    Backend,
    fetch,
    freePort,
    makeCertificates,
    peerCertificate,
    startBackend,
    startTwistd,
    trustingContext,
    verifyingContext,
)

SERVER_1 = b"<p>HTTP Server-1</p>"
SERVER_2 = b"<p>HTTP Server-2</p>"
REQUESTS = 20


def _which(body: bytes) -> bytes:
    """
    Which server answered: C{SERVER_1} or C{SERVER_2}, or the whole body.
    """
    for name in (SERVER_1, SERVER_2):
        if name in body:
            return name
    return body


class BalancingTests(TestCase):
    """
    C{twistd lbproxy} in front of two backends on 127.0.0.2 and 127.0.0.3,
    as in the mission's write-up.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.backends: list[Backend] = [
            startBackend(self, "127.0.0.2", SERVER_1 + b"\n"),
            startBackend(self, "127.0.0.3", SERVER_2 + b"\n"),
        ]
        self.backendsOption = ",".join(b.authority for b in self.backends)

    async def _answers(self, url: str, context: ssl.SSLContext | None = None) -> list[bytes]:
        """
        Make L{REQUESTS} requests one after the other; check every answer is
        a 200 and return which server gave each.
        """
        answers = []
        for _ in range(REQUESTS):
            status, body = await fetch(url, context)
            self.assertEqual(status, 200, body)
            answers.append(_which(body))
        return answers

    async def _startWithCertificates(self, *extra: str) -> tuple[str, int]:
        """
        Make certificates with C{python -m lbproxy.certs} and start twistd
        lbproxy serving them on a free port; return the certificate
        directory and the port.
        """
        certs = os.path.join(self.directory, "certs")
        await makeCertificates(certs)
        port = freePort()
        key = os.path.join(certs, "loadbalancer.key")
        cert = os.path.join(certs, "loadbalancer.crt")
        await startTwistd(
            self,
            [
                "--backends",
                self.backendsOption,
                "--listen",
                f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                *extra,
            ],
            self.directory,
        )
        return certs, port

    async def test_certificateFilesVerifiedClient(self) -> None:
        """
        With certificates from C{python -m lbproxy.certs}, a client that
        trusts only their CA gets 200 for every request, from both backends.
        """
        certs, port = await self._startWithCertificates("--chooser", "round-robin")
        context = verifyingContext(os.path.join(certs, "ca.crt"))
        answers = await self._answers(f"https://127.0.0.1:{port}/", context)
        self.assertEqual(set(answers), {SERVER_1, SERVER_2})

    async def test_curlVerifiesCertificate(self) -> None:
        """
        C{curl --cacert ca.crt} accepts the certificate from
        C{python -m lbproxy.certs} for C{localhost} and gets a backend's
        answer.
        """
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        certs, port = await self._startWithCertificates()
        out, err, code = await getProcessOutputAndValue(
            curl,
            [
                "--silent",
                "--show-error",
                "--max-time",
                "10",
                "--cacert",
                os.path.join(certs, "ca.crt"),
                "--resolve",
                f"localhost:{port}:127.0.0.1",
                "--write-out",
                "\n%{http_code}",
                f"https://localhost:{port}/",
            ],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        body, _, status = out.rpartition(b"\n")
        self.assertEqual(status, b"200")
        self.assertIn(_which(body), {SERVER_1, SERVER_2})

    async def test_adhocRoundRobinAlternates(self) -> None:
        """
        With C{--adhoc} and C{--chooser round-robin}, every request gets 200
        and successive requests go to alternate backends.
        """
        port = freePort()
        await startTwistd(
            self,
            [
                "--backends",
                self.backendsOption,
                "--adhoc",
                "--chooser",
                "round-robin",
                "--listen",
                f"ssl:{port}:interface=127.0.0.1",
            ],
            self.directory,
        )
        answers = await self._answers(f"https://127.0.0.1:{port}/", trustingContext())
        self.assertIn(answers[0], {SERVER_1, SERVER_2})
        other = SERVER_2 if answers[0] == SERVER_1 else SERVER_1
        self.assertEqual(answers, [answers[0], other] * (REQUESTS // 2))

    async def test_adhocFingerprintLogged(self) -> None:
        """
        With C{--adhoc}, the SHA-256 fingerprint logged at start-up is that
        of the certificate the listener serves.
        """
        port = freePort()
        process = await startTwistd(
            self,
            [
                "--backends",
                self.backendsOption,
                "--adhoc",
                "--listen",
                f"ssl:{port}:interface=127.0.0.1",
            ],
            self.directory,
        )
        logged = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", process.out)
        self.assertIsNotNone(logged, process.out)
        assert logged is not None
        der = await peerCertificate(port)
        self.assertEqual(logged.group(1), hashlib.sha256(der).digest().hex(":").upper())

    async def test_demoServesBothServers(self) -> None:
        """
        C{--demo} starts two backends of its own; over plain HTTP both
        C{<p>HTTP Server-1</p>} and C{<p>HTTP Server-2</p>} answer.
        """
        port = freePort()
        await startTwistd(
            self,
            ["--demo", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            self.directory,
        )
        answers = await self._answers(f"http://127.0.0.1:{port}/")
        self.assertEqual(set(answers), {SERVER_1, SERVER_2})

    async def test_sigtermShutsDownCleanly(self) -> None:
        """
        SIGTERM stops C{twistd lbproxy} cleanly: it closes its listeners,
        logs C{Server Shut Down.} and exits with status 0 (a graceful
        shutdown is not an error); no traceback.
        """
        port = freePort()
        process = await startTwistd(
            self,
            ["--demo", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            self.directory,
        )
        status, _ = await fetch(f"http://127.0.0.1:{port}/")
        self.assertEqual(status, 200)
        result = await process.stop("TERM")
        self.assertEqual((result.code, result.signal), (0, None), result.combined)
        self.assertIn(f"(TCP Port {port} Closed)", result.out)
        self.assertIn("Server Shut Down.", result.out)
        self.assertNotIn("Traceback", result.combined)
