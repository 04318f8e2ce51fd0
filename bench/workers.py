"""
How `twistd lbproxy --workers 2` spreads connections and what a killed
worker costs, with and without --reuse-port (docs/operations.md, Workers).

    python bench/workers.py split [--runs 20] [--no-reuse-port]
    python bench/workers.py restart [--runs 5] [--no-reuse-port]

split: each run starts a fresh lbproxy (2 workers, CPUs 0-1, HTTPS with an
ad-hoc certificate) over one nginx backend, runs `wrk -t1 -c64 -d6s` (CPU
1), and 3 s in counts wrk's connections per worker pid with `ss -tnp`.

restart: each run starts lbproxy (2 workers, plain HTTP) over a threaded
Python backend, kills worker 1 with SIGKILL, at once opens 32 connections
each sending a request, and times each answer; the access log says which
worker answered.

Everything is on loopback; the twistd used is the one beside this Python
(the bench venv's, or give --twistd). Only processes this script started
are stopped, by PID.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

READY = re.compile(r"\[worker \d+ pid \d+\] lbproxy balancing over")
STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
SERVED = re.compile(r'\[worker \d+ pid (\d+)\] 127\.0\.0\.1 "GET (/q/\d+)')


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def read(log: IO[str]) -> str:
    log.seek(0)
    return log.read()


def workerPids(log: IO[str]) -> dict[str, int]:
    return {slot: int(pid) for slot, pid in STARTED.findall(read(log))}


def split(twistd: str, runs: int, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        backendPort = freePort()
        conf = os.path.join(directory, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"worker_processes 1; daemon off; pid {directory}/nginx.pid;\n"
                f"error_log {directory}/nginx.err; events {{ worker_connections 1024; }}\n"
                f"http {{ access_log off; client_body_temp_path {directory};\n"
                f"  proxy_temp_path {directory}; fastcgi_temp_path {directory};\n"
                f"  uwsgi_temp_path {directory}; scgi_temp_path {directory};\n"
                f"  server {{ listen 127.0.0.1:{backendPort}; keepalive_requests 100000;\n"
                f'    location / {{ return 200 "<p>HTTP Server-1</p>\\n"; }} }} }}\n'
            )
        nginx = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", conf, "-p", directory])
        try:
            time.sleep(0.5)
            larger = []
            for run in range(runs):
                args = [
                    "--adhoc",
                    "--listen",
                    "ssl:PORT:interface=127.0.0.1",
                    "--backends",
                    f"127.0.0.1:{backendPort}",
                    "--access-log",
                    "none",
                    *extra,
                ]
                counts = splitOnce(twistd, directory, args)
                larger.append(counts[0])
                within = "within" if counts[0] <= 0.55 * 64 else "outside"
                print(f"run {run + 1}: {counts[0]}/{counts[1]} ({within} 45/55)", flush=True)
            inside = sum(1 for count in larger if count <= 0.55 * 64)
            most = max(larger)
            print(
                f"{runs} runs: {inside} within 45/55, most uneven {most}/{64 - most}, "
                f"the larger share {sum(larger) / runs:.1f} of 64 on average"
            )
        finally:
            nginx.terminate()
            nginx.wait(10)


def splitOnce(twistd: str, directory: str, args: list[str]) -> list[int]:
    port = freePort()
    args = [a.replace("PORT", str(port)) for a in args]
    with _pinned(twistd, directory, args) as log:
        pids = set(workerPids(log).values())
        wrk = subprocess.Popen(
            ["taskset", "-c", "1", "wrk", "-t1", "-c64", "-d6s", f"https://127.0.0.1:{port}/"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(3)
        ss = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
        ).stdout
        wrk.wait(30)
    counts = collections.Counter(int(pid) for pid in re.findall(r"pid=(\d+)", ss))
    return sorted((counts.get(pid, 0) for pid in pids), reverse=True)


@contextmanager
def _pinned(twistd: str, directory: str, args: list[str]) -> Iterator[IO[str]]:
    """
    lbproxy --workers 2 ARGS on CPUs 0 and 1; its log once both listen.
    """
    command = ["taskset", "-c", "0,1", twistd, "-n", "--pidfile=", "lbproxy", "--workers", "2"]
    with open(os.path.join(directory, "lbproxy.log"), "w+") as log:
        process = subprocess.Popen(
            [*command, "--health-interval", "0", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        try:
            while len(READY.findall(read(log))) < 2:
                if process.poll() is not None:
                    raise SystemExit(f"lbproxy exited:\n{read(log)}")
                time.sleep(0.1)
            yield log
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def restart(twistd: str, runs: int, extra: list[str]) -> None:
    http.server.ThreadingHTTPServer.request_queue_size = 256
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        for run in range(runs):
            with tempfile.TemporaryDirectory() as directory:
                restartOnce(twistd, directory, backend.server_address[1], extra, run + 1)
    finally:
        backend.shutdown()


def restartOnce(twistd: str, directory: str, backendPort: int, extra: list[str], run: int) -> None:
    port = freePort()
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    args += ["--backends", f"127.0.0.1:{backendPort}", *extra]
    with _pinned(twistd, directory, args) as log:
        time.sleep(1)
        pids = workerPids(log)
        os.kill(pids["1"], signal.SIGKILL)
        sent = []
        for n in range(32):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(f"GET /q/{n} HTTP/1.1\r\nHost: lb\r\n\r\n".encode())
            sent.append((n, s, time.monotonic()))
        answers: dict[int, tuple[str, float]] = {}

        def answer(n: int, s: socket.socket, start: float) -> None:
            try:
                data = s.recv(100)
                status = data.split(b" ")[1].decode() if data else "closed"
            except OSError as e:
                status = type(e).__name__
            answers[n] = (status, time.monotonic() - start)
            s.close()

        threads = [threading.Thread(target=answer, args=item) for item in sent]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1)
        text = read(log)
    served = {path: int(pid) for pid, path in SERVED.findall(text)}
    replacement = int(dict(STARTED.findall(text))["1"])
    statuses = collections.Counter(status for status, _ in answers.values())
    for who, pid in (("the replacement", replacement), ("worker 2", pids["2"])):
        took = [t for n, (_, t) in answers.items() if served.get(f"/q/{n}") == pid]
        span = f"{min(took) * 1000:.0f}-{max(took) * 1000:.0f} ms" if took else "-"
        print(f"run {run}: {who} answered {len(took)} of 32, in {span}", flush=True)
    print(f"run {run}: statuses {dict(statuses)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["split", "restart"])
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--no-reuse-port", action="store_true")
    parser.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    options = parser.parse_args()
    extra = ["--no-reuse-port"] if options.no_reuse_port else []
    if options.what == "split":
        split(options.twistd, options.runs or 20, extra)
    else:
        restart(options.twistd, options.runs or 5, extra)


if __name__ == "__main__":
    main()
