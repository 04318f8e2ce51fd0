"""
The client side of the edge alone: how long L{ProxyChannel} takes to turn a
keep-alive request head into a L{ProxyRequest} handed to the resource, with
the one-pass parser of complete bodiless heads ("fast") and with it turned
off, so that every head goes line by line through twisted.web's
C{HTTPChannel} and lbproxy's per-line checks ("slow").

    python bench/edge_parse_bench.py [--requests 20000] [--runs 5]

No sockets, no threads, no reactor loop: one L{ProxySite} (the access log
off) and one channel over a L{StringTransport}, in this process; timers go
to the real reactor (never run), so that a C{callLater} costs what it costs
in the proxy. The resource keeps each request unanswered, as the proxy
does while the backend works; the driver then answers it (C{write},
C{finish}), which ends the request and lets the channel read the next one.
Two shapes of head: wrk's (C{GET / HTTP/1.1} and Host) and a browser's
(nine header fields).

Reported per request, median of C{--runs} runs of C{--requests} requests:
"parse" is the C{dataReceived} call that ends with the resource's
C{render} (the request head parsed, checked and handed over: making the
L{ProxyRequest}, its query arguments and cookies, C{process} and C{render}
are the same work on both paths); "total" adds answering it. The two paths
run alternately in the same process. Last, for the fast path, how much of
"parse" is L{parsePlainHead} itself.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbproxy.http.accesslog import AccessLog
from lbproxy.http.checks import parsePlainHead
from lbproxy.http.edge import EdgeLimits, ProxyChannel, ProxySite

HEADS = {
    "wrk": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "browser": (
        b"GET /static/app.js?v=3 HTTP/1.1\r\n"
        b"Host: localhost:8080\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Referer: http://localhost:8080/\r\n"
        b"Connection: keep-alive\r\n"
        b"Cookie: session=abc123; theme=dark\r\n"
        b"Sec-Fetch-Dest: script\r\n"
        b"\r\n"
    ),
}


class _SlowChannel(ProxyChannel):
    """
    The channel with the one-pass parser off: every head line by line.
    """

    fastHeads = False


class _Held(Resource):
    """
    Keeps each request unanswered, for the driver to answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render(self, request: Request) -> int:  # type: ignore[override]
        self.held.append(request)
        return NOT_DONE_YET


def _run(fast: bool, head: bytes, requests: int) -> tuple[float, float]:
    """
    Send C{requests} copies of C{head}, one at a time, each answered before
    the next; the time per request, in seconds, spent parsing and in all.
    """
    resource = _Held()
    site = ProxySite(resource, AccessLog(None, enabled=False), reactor=reactor)
    if not fast:
        site.protocol = _SlowChannel  # type: ignore[assignment]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    clock = time.perf_counter
    receive: Callable[[bytes], None] = channel.dataReceived
    held = resource.held
    parsing = 0.0
    start = clock()
    for _ in range(requests):
        before = clock()
        receive(head)
        parsing += clock() - before
        request = held.pop()
        request.write(b"ok")
        request.finish()
        transport.clear()
    total = clock() - start
    if not transport.connected or held:
        raise RuntimeError("the channel did not serve every request")
    channel.connectionLost(None)  # type: ignore[arg-type]
    return parsing / requests, total / requests


def _parseOnly(head: bytes, requests: int) -> float:
    """
    The time, in seconds, L{parsePlainHead} takes for C{head}.
    """
    limits = EdgeLimits()
    lines = head[:-2]
    clock = time.perf_counter
    start = clock()
    for _ in range(requests):
        parsePlainHead(lines, limits.maxTarget, limits.maxHeaderBytes, limits.maxFields)
    return (clock() - start) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    print(f"{options.requests} keep-alive requests per run, median of {options.runs} runs, µs")
    print(f"{'head':8} {'path':5} {'parse':>7} {'total':>7}")
    for name, head in HEADS.items():
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        parseOnly = []
        _run(True, head, options.requests // 10)  # warm-up
        _run(False, head, options.requests // 10)
        for _ in range(options.runs):
            for fast in (False, True):
                gc.collect()
                results[fast].append(_run(fast, head, options.requests))
            parseOnly.append(_parseOnly(head, options.requests))
        medians = {
            fast: (
                statistics.median(p for p, _ in runs) * 1e6,
                statistics.median(t for _, t in runs) * 1e6,
            )
            for fast, runs in results.items()
        }
        for fast in (False, True):
            parse, total = medians[fast]
            print(f"{name:8} {'fast' if fast else 'slow':5} {parse:7.2f} {total:7.2f}")
        ratio = medians[False][0] / medians[True][0]
        print(f"{name:8} parse: fast is {ratio:.2f}x the speed of slow")
        print(f"{name:8} of which parsePlainHead: {statistics.median(parseOnly) * 1e6:.2f}")


if __name__ == "__main__":
    main()
