"""
What sampling routing decisions for the admin dashboard costs a request
(lbproxy.observe.decisions, --decision-sample), measured in this process
without sockets:

    python bench/decisions_bench.py [--backends 8] [--loops 1000000]

- the check ReverseProxyResource.relay makes on every request (its exact
  lines, run on a real proxy resource), with sampling off (0), and on at 1
  in 100 with the sampled requests' recording counted in (amortized);
- one sampled request's recording (explain + ring) for each built-in
  chooser, and one choose() for scale.

Each figure is the best of 7 repeats, in nanoseconds per request.
"""

from __future__ import annotations

import argparse
import random
import timeit
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from lbproxy.balancer import Balancer, BalancerConfig, PoolConfig
from lbproxy.balancing.registry import BUILTIN_CHOOSERS, ChooserSettings, makeChooser
from lbproxy.observe.decisions import DecisionSampler
from lbproxy.routing import RouteRule, RouteTable
from lbproxy.test.test_target import parsedRequest
from lbproxy.upstream.backends import Backend
from lbproxy.upstream.pool import Upstream, UpstreamSettings


def _request() -> Any:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 40000))
    return parsedRequest(b"GET /some/page HTTP/1.1\r\nHost: example.com", transport)


def _balancer(chooser: str, count: int, clock: Clock) -> Balancer:
    settings = ChooserSettings(rng=random.Random(1), clock=clock)
    backends = tuple(Backend("127.0.0.2", 8000 + index) for index in range(count))
    config = BalancerConfig(
        pools=(
            PoolConfig(
                name="web",
                backends=backends,
                chooser=makeChooser(chooser, settings=settings),
                options={"chooser": chooser},
            ),
        ),
        routes=RouteTable((RouteRule(pool="web"),)),
    )
    balancer = Balancer(config, clock, clock, lambda s: Upstream(clock, clock, UpstreamSettings()))
    for index, backend in enumerate(balancer.pool("web").backends.backends):
        backend.inFlight = index % 3
        backend.latencyEWMA.observe(0.001 * (index + 1), 0.0)
    return balancer


def _best(statement: Any, loops: int) -> float:
    return min(timeit.repeat(statement, number=loops, repeat=7)) / loops * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--loops", type=int, default=1_000_000)
    args = parser.parse_args()
    clock = Clock()
    request = _request()

    balancer = _balancer("peak-ewma", args.backends, clock)
    pool = balancer.pool("web")
    proxy = pool.proxy
    available = pool.backends.available()
    chosen = proxy.chooser.choose(available, request)

    # The lines relay() runs after choose(), verbatim.
    def check() -> None:
        if proxy.sampleIn:
            proxy.sampleIn -= 1
            if not proxy.sampleIn and proxy.decisions is not None:
                proxy.decisions(available, chosen, request)

    def nothing() -> None:
        pass

    base = _best(nothing, args.loops)
    off = DecisionSampler(0, clock)
    off.attach(pool)
    offCost = _best(check, args.loops) - base
    on = DecisionSampler(100, clock)
    on.attach(pool)
    onCost = _best(check, args.loops) - base
    print(f"per request, {args.backends} backends, peak-ewma (less {base:.0f} ns of call):")
    print(f"  --decision-sample 0    {offCost:6.1f} ns")
    print(f"  --decision-sample 100  {onCost:6.1f} ns  (recording of 1 in 100 included)")
    print("one sampled request's recording (explain + ring), and one choose():")
    for name in sorted(BUILTIN_CHOOSERS):
        record, choose = _recording(name, args.backends, clock, request, max(1, args.loops // 100))
        print(f"  {name:12} record {record / 1000:6.1f} us   choose {choose / 1000:5.2f} us")


def _recording(
    name: str, count: int, clock: Clock, request: Any, loops: int
) -> tuple[float, float]:
    """
    Nanoseconds to record one sampled choice of chooser C{name}, and to
    make one choice.
    """
    pool = _balancer(name, count, clock).pool("web")
    DecisionSampler(1, clock).attach(pool)
    proxy = pool.proxy
    available = pool.backends.available()

    def chooseOnly() -> None:
        proxy.chooser.choose(available, request)

    def chooseAndRecord() -> None:
        picked = proxy.chooser.choose(available, request)
        proxy.sampleIn = 1
        if proxy.decisions is not None:
            proxy.decisions(available, picked, request)

    choose = _best(chooseOnly, loops)
    return _best(chooseAndRecord, loops) - choose, choose


if __name__ == "__main__":
    main()
