"""
A bounded fuzz test of the edge: seeded random mutations of valid
requests, over real sockets, against the proxy and a recording backend.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from lbproxy.http.checks import checkHost, checkRequestLine
from lbproxy.test.fakes import rawConnect, startBackend, startProxy

Gen = Generator[Any, Any, None]

ITERATIONS = 1000
SEED = 20261125

TEMPLATES = [
    b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: example.com:8443\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: [::1]:80\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
]

INSERTS = [
    b"\r",
    b"\n",
    b"\x00",
    b" ",
    b"\t",
    b"\x7f",
    b"\xff",
    b":",
    b"@",
    b"/",
    b"\r\n",
    b"\r\nHost: other\r\n",
    b"\r\nContent-Length: 3\r\n",
    b"\r\nTransfer-Encoding: chunked\r\n",
    b"\r\nTransfer-Encoding: identity\r\n",
    b"\r\n X: folded\r\n",
    b"99999999999999999999",
    b"HTTP/1.1",
]


def mutate(rng: random.Random, payload: bytes) -> bytes:
    """
    One to three random edits of C{payload}: insert, delete, replace or
    duplicate bytes, or cut it short.
    """
    data = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0:
            data[position:position] = rng.choice(INSERTS)
        elif kind == 1 and data:
            del data[position : position + rng.randint(1, 4)]
        elif kind == 2 and position < len(data):
            data[position] = rng.randrange(256)
        elif kind == 3:
            end = min(len(data), position + rng.randint(1, 20))
            data[position:position] = data[position:end]
        else:
            data = data[: max(1, position)]
    return bytes(data)


class FuzzTests(TestCase):
    """
    Random malformed input never gets through and never stops the proxy.
    """

    @inlineCallbacks
    def test_mutations(self) -> Gen:
        """
        For a fixed seed and a bounded number of mutated requests: the
        proxy never crashes (no logged error), every request that reaches
        the backend has a valid request line and Host, and a well-behaved
        keep-alive client is served throughout: each of its requests gets
        one answer, a 200 with the backend's body.
        """
        backend = yield startBackend(self, b"ok")
        proxy = yield startProxy(self, [backend.backend])
        rng = random.Random(SEED)
        good = yield rawConnect(self, proxy.portNumber)
        served = 0
        for iteration in range(ITERATIONS):
            payload = mutate(rng, rng.choice(TEMPLATES))
            client = yield rawConnect(self, proxy.portNumber)
            client.transport.write(payload)
            client.transport.loseWriteConnection()
            yield client.closed
            if iteration % 40 == 0:
                start = len(good.data)
                answered = good.data.count(b"\r\n\r\nok")
                good.transport.write(b"GET /alive HTTP/1.1\r\nHost: example.com\r\n\r\n")
                data = yield good.until(b"\r\n\r\nok", count=answered + 1)
                answer = data[start:]
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
                self.assertTrue(answer.endswith(b"\r\n\r\nok"), answer)
                self.assertEqual(answer.count(b"HTTP/1.1 "), 1, answer)
                served += 1
        self.assertEqual(served, ITERATIONS // 40)
        self.assertTrue(good.transport.connected)
        for received in backend.resource.received:
            line = b"%s %s HTTP/1.1" % (received.method, received.uri)
            self.assertIsNone(checkRequestLine(line, 8192), received)
            self.assertIsNone(checkHost(received.header(b"host"), b"HTTP/1.1"), received)
        self.assertGreater(len(backend.resource.received), 0)
