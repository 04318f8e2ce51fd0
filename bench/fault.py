"""
The fault scenario (issue #3): steady GET load through `twistd lbproxy`
over two backends; one backend is killed for a while and restarted.

Reports how many requests failed (the target for GETs is 0) and how long
after the restart the recovered backend took traffic again.

Everything runs on loopback: the backends are small twisted.web processes
on 127.0.0.2 and 127.0.0.3, the proxy listens on 127.0.0.1. The load is
bounded in time and in request count. Only processes this script started
are stopped, by PID.

    python bench/fault.py [--kill-after 5] [--down 10] [--total 30] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

BACKEND = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Answer(Resource):
    isLeaf = True
    def render_GET(self, request):
        return sys.argv[3].encode()

site = Site(Answer())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[2]), site, interface=sys.argv[1])
reactor.run()
"""


def freePort(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def waitForPort(host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"fault: nothing listening on {host}:{port} in time")


def startBackend(host: str, port: int, name: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", BACKEND, host, str(port), name])
    waitForPort(host, port, time.monotonic() + 15)
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill-after", type=float, default=5.0)
    parser.add_argument("--down", type=float, default=10.0)
    parser.add_argument("--total", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args()

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    p1, p2, pp = freePort("127.0.0.2"), freePort("127.0.0.3"), freePort("127.0.0.1")
    one = startBackend("127.0.0.2", p1, "server-1")
    two = startBackend("127.0.0.3", p2, "server-2")
    proxy = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "lbproxy",
            "--backends",
            f"127.0.0.2:{p1},127.0.0.3:{p2}",
            "--listen",
            f"tcp:{pp}:interface=127.0.0.1",
            "--chooser",
            "round-robin",
            "--access-log",
            "none",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        waitForPort("127.0.0.1", pp, time.monotonic() + 30)
        url = f"http://127.0.0.1:{pp}/"
        results: list[tuple[float, int, str]] = []
        start = time.monotonic()
        end = start + args.total
        budget = [args.max_requests]

        def client() -> None:
            while time.monotonic() < end and budget[0] > 0:
                budget[0] -= 1
                try:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        results.append(
                            (time.monotonic() - start, response.status, response.read().decode())
                        )
                except Exception as e:  # noqa: BLE001 - every failure counts
                    code = getattr(e, "code", 0)
                    results.append((time.monotonic() - start, code, type(e).__name__))

        killedAt = restartedAt = 0.0
        with ThreadPoolExecutor(args.clients) as pool:
            for _ in range(args.clients):
                pool.submit(client)
            time.sleep(args.kill_after)
            stop(two, signal.SIGKILL)
            killedAt = time.monotonic() - start
            time.sleep(args.down)
            two = startBackend("127.0.0.3", p2, "server-2")
            restartedAt = time.monotonic() - start
        failed = [r for r in results if r[1] != 200]
        back = [t for t, status, body in results if t > restartedAt and body == "server-2"]
        during = [r for r in results if killedAt <= r[0] < restartedAt]
        print(f"requests: {len(results)} in {args.total:g}s with {args.clients} clients")
        print(f"failed:   {len(failed)} (target 0) {sorted({r[1:] for r in failed})[:5]}")
        print(
            f"while server-2 was down ({args.down:g}s): {len(during)} requests, "
            f"{sum(1 for r in during if r[2] == 'server-2')} answered by server-2"
        )
        if back:
            print(
                f"recovered backend took traffic again {back[0] - restartedAt:.2f}s after restart"
            )
        else:
            print("recovered backend took no traffic before the end of the run")
        return 0 if not failed else 1
    finally:
        stop(proxy)
        stop(one)
        stop(two)


if __name__ == "__main__":
    raise SystemExit(main())
