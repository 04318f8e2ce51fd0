"""
The choosers under real traffic: two real backends on loopback, one 50 ms
slower, through lbproxy's own proxy classes; p50 and p99 per chooser.

    python bench/choosers_bench.py [--requests 2000] [--seconds 30] [--concurrency 4]

Everything runs in this one process on one reactor: two twisted.web
backends on 127.0.0.2 and 127.0.0.3 (port 0; the second answers 50 ms
later, via callLater), the proxy (ReverseProxyResource over Upstream, as
the twistd plugin assembles it) on 127.0.0.1 port 0, and a closed-loop load
generator (twisted.web Agent, persistent connections) that stops after
--requests answers or --seconds, whichever comes first, per chooser. Each
chooser gets fresh Backend objects, so no latency estimate carries over.
The first tenth of each run is warm-up and not counted.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lbproxy.balancing.registry import ChooserSettings, makeChooser
from lbproxy.proxy import ReverseProxyResource
from lbproxy.upstream.backends import Backend, BackendPool
from lbproxy.upstream.pool import Upstream

CHOOSERS = ["round-robin", "p2c", "peak-ewma"]
SLOW_DELAY = 0.050


class _Answer(Resource):
    """
    A backend answering C{name}, after C{delay} seconds.
    """

    isLeaf = True

    def __init__(self, reactor: Any, name: bytes, delay: float) -> None:
        super().__init__()
        self._reactor = reactor
        self._body = b"<p>" + name + b"</p>\n"
        self._delay = delay

    def render_GET(self, request: Request) -> int | bytes:
        if not self._delay:
            return self._body

        def answer() -> None:
            if not request.finished and not request._disconnected:  # type: ignore[attr-defined]
                request.write(self._body)
                request.finish()

        self._reactor.callLater(self._delay, answer)
        return NOT_DONE_YET


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def _load(
    reactor: Any, url: bytes, requests: int, seconds: float, concurrency: int
) -> list[float]:
    """
    Send requests from C{concurrency} closed-loop clients until C{requests}
    are answered or C{seconds} have passed; return the latencies.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    agent = Agent(reactor, pool=pool)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            response = await agent.request(b"GET", url)
            await readBody(response)
            latencies.append(time.perf_counter() - started)

    await defer.gatherResults([defer.Deferred.fromCoroutine(client()) for _ in range(concurrency)])
    await pool.closeCachedConnections()
    return latencies


async def _run(reactor: Any, arguments: argparse.Namespace) -> None:
    ports: list[IListeningPort] = []
    fast = reactor.listenTCP(0, Site(_Answer(reactor, b"fast", 0.0)), interface="127.0.0.2")
    slow = reactor.listenTCP(0, Site(_Answer(reactor, b"slow", SLOW_DELAY)), interface="127.0.0.3")
    ports += [fast, slow]
    print(
        f"backends: 127.0.0.2:{fast.getHost().port} (immediate), "
        f"127.0.0.3:{slow.getHost().port} (+{SLOW_DELAY * 1000:.0f} ms); "
        f"{arguments.concurrency} concurrent clients, up to {arguments.requests} requests "
        f"or {arguments.seconds:.0f} s per chooser"
    )
    print(f"{'chooser':12} {'answered':>8} {'p50 ms':>8} {'p99 ms':>8} {'to slow':>8}")
    try:
        for name in arguments.chooser or CHOOSERS:
            backends = [
                Backend("127.0.0.2", fast.getHost().port),
                Backend("127.0.0.3", slow.getHost().port),
            ]
            chooser = makeChooser(
                name, settings=ChooserSettings(rng=random.Random(1), clock=reactor)
            )
            upstream = Upstream(reactor, reactor)
            proxy = reactor.listenTCP(
                0,
                Site(ReverseProxyResource(BackendPool(backends), chooser, upstream, reactor)),
                interface="127.0.0.1",
            )
            url = b"http://127.0.0.1:%d/" % (proxy.getHost().port,)
            try:
                latencies = await _load(
                    reactor, url, arguments.requests, arguments.seconds, arguments.concurrency
                )
            finally:
                await proxy.stopListening()
                closing = getattr(upstream, "close", None)
                if closing is not None:
                    await defer.maybeDeferred(closing)
            counted = latencies[len(latencies) // 10 :]
            share = backends[1].requests / max(1, sum(b.requests for b in backends))
            print(
                f"{name:12} {len(counted):8d} {_percentile(counted, 0.5) * 1000:8.1f} "
                f"{_percentile(counted, 0.99) * 1000:8.1f} {share * 100:7.1f}%"
            )
    finally:
        for port in ports:
            await defer.maybeDeferred(port.stopListening)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the benchmark from the command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per chooser (default 2000)")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="time limit per chooser (default 30)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="clients (default 4)")
    parser.add_argument(
        "--chooser", action="append", help=f"chooser to run (repeatable; default {CHOOSERS})"
    )
    arguments = parser.parse_args(argv)
    # twisted.web's readBody warns about the client transport it is given;
    # irrelevant to what is measured here.
    warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_run(reactor, arguments)))


if __name__ == "__main__":
    main()
