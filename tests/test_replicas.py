"""
Replicas agree: two lbproxy processes with the same backends send every
C{hash} key to the same backend, before and after a backend is removed from
both (by a config reload), whatever order each lists its backends in; and a
sticky cookie one of them issued is honoured by the other when they share
C{--sticky-secret-file}.

This is what lets lbproxy run as several stateless replicas (Kubernetes)
behind one Service: a client may reach any replica.
"""

from __future__ import annotations

import http.client
import os

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import (
    REQUEST_TIMEOUT,
    Backend,
    Twistd,
    freePort,
    startBackend,
    startTwistd,
    until,
)

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
KEYS = 120


def _ask(port: int, headers: dict[str, str]) -> tuple[bytes, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"{response.status} from port {port}: {body!r}")
        return body, response.getheader("Set-Cookie")
    finally:
        connection.close()


def _askAll(port: int, requests: list[dict[str, str]]) -> list[tuple[bytes, str | None]]:
    return [_ask(port, headers) for headers in requests]


class ReplicaTests(TestCase):
    """
    Two lbproxy processes, the same backends.
    """

    def backends(self) -> list[Backend]:
        return [
            startBackend(self, host, f"backend {number}".encode())
            for number, host in enumerate(HOSTS, 1)
        ]

    def writeConfig(self, path: str, port: int, backends: list[Backend], extra: str) -> None:
        listed = ", ".join(f'"{b.authority}"' for b in backends)
        with open(path, "w") as f:
            f.write(
                f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
                'access-log = "none"\n'
                f"{extra}"
                f"[pools.web]\nbackends = [{listed}]\nhealth-interval = 0\n"
            )

    async def startReplica(
        self, directory: str, name: str, backends: list[Backend], extra: str
    ) -> tuple[Twistd, int, str]:
        port = freePort()
        path = os.path.join(directory, f"{name}.toml")
        self.writeConfig(path, port, backends, extra)
        process = await startTwistd(self, ["--config", path], directory)
        return process, port, path

    async def reload(self, process: Twistd) -> None:
        """
        SIGHUP C{process} and wait until it says it reloaded.
        """
        before = process.out.count("configuration reloaded")
        process.signal("HUP")
        await until(lambda: process.out.count("configuration reloaded") > before, "the reload")

    async def test_hashKeysAgree(self) -> None:
        """
        Every key goes to the same backend through either replica, though
        they list the backends in opposite orders; after a backend is
        removed from both by a reload, they agree again, the removed one
        gets no key, and keys it did not own mostly stay where they were.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        backends = self.backends()
        extra = 'chooser = "hash"\nhash-key = "header:X-Key"\n'
        one, onePort, onePath = await self.startReplica(directory, "one", backends, extra)
        two, twoPort, twoPath = await self.startReplica(
            directory, "two", list(reversed(backends)), extra
        )
        requests = [{"X-Key": f"user-{number}"} for number in range(KEYS)]
        first = [body for body, _ in await deferToThread(_askAll, onePort, requests)]
        second = [body for body, _ in await deferToThread(_askAll, twoPort, requests)]
        self.assertEqual(first, second)
        self.assertEqual(len(set(first)), len(HOSTS), "every backend owns some keys")

        removed = backends[1]
        kept = [b for b in backends if b is not removed]
        self.writeConfig(onePath, onePort, kept, extra)
        self.writeConfig(twoPath, twoPort, list(reversed(kept)), extra)
        for process in (one, two):
            await self.reload(process)
        after = [body for body, _ in await deferToThread(_askAll, onePort, requests)]
        afterTwo = [body for body, _ in await deferToThread(_askAll, twoPort, requests)]
        self.assertEqual(after, afterTwo)
        self.assertNotIn(b"backend 2", after)
        stayed = sum(
            1 for old, new in zip(first, after, strict=True) if old != b"backend 2" and old == new
        )
        owned = sum(1 for old in first if old != b"backend 2")
        self.assertGreaterEqual(stayed / owned, 0.9, "consistent hashing keeps most keys")

    async def test_stickyCookiesShared(self) -> None:
        """
        A sticky cookie issued by one replica sends the request to the same
        backend through the other, when both sign with the same secret.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        secret = os.path.join(directory, "secret")
        with open(secret, "wb") as f:
            f.write(os.urandom(32).hex().encode())
        backends = self.backends()
        extra = f'chooser = "sticky"\nsticky-secret-file = "{secret}"\n'
        _, onePort, _ = await self.startReplica(directory, "one", backends, extra)
        _, twoPort, _ = await self.startReplica(directory, "two", backends, extra)
        issued = await deferToThread(_askAll, onePort, [{} for _ in range(12)])
        for body, setCookie in issued:
            assert setCookie is not None, "the first answer sets the cookie"
            cookie = setCookie.split(";", 1)[0]
            answers = await deferToThread(_askAll, twoPort, [{"Cookie": cookie}] * 3)
            self.assertEqual([b for b, _ in answers], [body] * 3, cookie)
