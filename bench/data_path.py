#!/usr/bin/env python3
"""
Memory and descriptors of the streamed data path, measured on a real
`twistd lbproxy` over loopback (issue 10's numbers):

  - RSS of the proxy during one 1 GiB upload (streamed, not spooled);
  - descriptors and RSS after rounds of 1 000 clients that each send a
    request head and 100 KB of a 10 MB body, then leave (half reset);
  - a 10 KB upload sent at 1 KB/s.

    .venv/bin/python bench/data_path.py [--twistd .venv/bin/twistd] [--rounds 3]

Run from the repository root (the backend is tests/servers.py's hashing
server, on 127.0.0.2). Every address is on loopback; every loop is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.getcwd())

from tests.servers import _Server


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    backend = _Server("127.0.0.2")
    threading.Thread(
        target=backend.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    port = _freePort()
    log = open(os.path.join(tempfile.gettempdir(), "data_path-twistd.log"), "w")  # noqa: SIM115
    proxy = subprocess.Popen(
        [args.twistd, "-n", "--pidfile=", "lbproxy", "--health-interval", "0",
         "--backends", f"127.0.0.2:{backend.server_address[1]}", "--max-body", "0",
         "--access-log", "none", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def rss() -> int:
        with open(f"/proc/{proxy.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS"))
        return int(line.split()[1]) // 1024

    def fds() -> int:
        return len(os.listdir(f"/proc/{proxy.pid}/fd"))

    def upload(size: int, piece: int = 1 << 20) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        chunk = b"z" * piece

        def pieces():  # type: ignore[no-untyped-def]
            left = size
            while left > 0:
                yield chunk[: min(left, piece)]
                left -= piece

        connection.request("POST", "/hash?id=big", pieces(), {"Content-Length": str(size)})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        upload(1 << 20)
        before = rss()
        peak = [before]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        started = time.monotonic()
        status, body = upload(1 << 30)
        done.set()
        print(
            f"1 GiB upload: {status} {body[:40]!r} in {time.monotonic() - started:.1f} s; "
            f"RSS {before} -> peak {peak[0]} MiB"
        )
        for _round in range(args.rounds):
            baseFds, baseRss = fds(), rss()
            for index in range(1000):
                client = socket.create_connection(("127.0.0.1", port))
                client.sendall(
                    b"POST /hash?id=a%d HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n"
                    % index
                    + b"x" * 100_000
                )
                if index % 2:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
            for _ in range(100):
                if fds() <= baseFds:
                    break
                time.sleep(0.1)
            time.sleep(1)
            print(
                f"1 000 clients gone mid-upload: fds {baseFds} -> {fds()}, "
                f"RSS {baseRss} -> {rss()} MiB"
            )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest("POST", "/hash?id=slow")
        connection.putheader("Content-Length", "10240")
        connection.endheaders()
        started = time.monotonic()
        for _ in range(10):
            connection.send(b"s" * 1024)
            time.sleep(1)
        response = connection.getresponse()
        print(
            f"10 KB at 1 KB/s: {response.status} {response.read()[:40]!r} "
            f"in {time.monotonic() - started:.1f} s"
        )
    finally:
        proxy.terminate()
        proxy.wait(30)
        backend.shutdown()
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
