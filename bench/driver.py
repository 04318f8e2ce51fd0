"""
lbproxy's benchmark driver (run it through bench/run, which installs what it
needs first).

Two nginx backends on 127.0.0.2:80 and 127.0.0.3:80; each contender in turn
on 127.0.0.1:8443 (TLS) and 127.0.0.1:8080 (plain), pinned to CPU 0; wrk (h2load
for G, HTTP/2), the backends and the helper clients on CPU 1. Rounds are interleaved (every
contender in round 1, then every contender in round 2...), so slow drift of
a shared machine hits all contenders alike; ratios come from the same run.

Results: bench/results/YYYYMMDD-HHMMSS.md (tables), .png (chart), .json (raw).
`driver.py --report results/X.json` writes an earlier run's .md and .png again.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
CONTENDER_CPU = "0"
LOAD_CPU = "1"
BACKENDS = [("127.0.0.2", 80), ("127.0.0.3", 80)]
BACKEND_LIST = ",".join(f"{h}:{p}" for h, p in BACKENDS)
HOST = "127.0.0.1"
TLS_PORT = 8443
PLAIN_PORT = 8080
MiB = 1024 * 1024

CONTENDERS = [
    "lbproxy",
    "haproxy",
    "nginx",
    "twisted-agent",
    "twisted-stock",
    "flask",
    "nginx-direct",
]
# Not in a default run; asked for by name with --contenders.
EXTRA_CONTENDERS = ["lbproxy-2w", "lbproxy-2w-shared", "lbproxy-dash", "lbproxy-dash-off"]
# CPUs of contenders that do not fit on CONTENDER_CPU alone.
CONTENDER_CPUS = {"lbproxy-2w": "0,1", "lbproxy-2w-shared": "0,1"}
LABELS = {
    "lbproxy": "lbproxy",
    "lbproxy-2w": "lbproxy --workers 2 (CPUs 0 and 1, sharing CPU 1 with wrk and backends)",
    "lbproxy-2w-shared": "lbproxy --workers 2 --no-reuse-port (one accept queue; CPUs 0 and 1)",
    "lbproxy-dash": "lbproxy --admin (dashboard on, --decision-sample 100)",
    "lbproxy-dash-off": "lbproxy --admin --decision-sample 0 (dashboard on, sampling off)",
    "haproxy": "HAProxy (nbthread 1)",
    "nginx": "nginx proxy (1 worker, upstream keepalive)",
    "twisted-agent": "Twisted Agent + persistent pool",
    "twisted-stock": "Twisted stock ReverseProxyResource",
    "flask": "write-up's Flask balancer",
    "nginx-direct": "nginx serving directly (ceiling)",
}
# Ratio columns: contender / baseline, from the same run.
BASELINES = ["haproxy", "nginx", "twisted-agent", "flask"]
SCENARIOS = {
    "A": "HTTPS keep-alive, 64 connections, small response",
    "B": "plain HTTP keep-alive, 64 connections, small response",
    "C": "HTTPS, new TLS handshake per request (Connection: close), 64 connections",
    "D": "HTTPS keep-alive, 64 connections, 1 MiB responses",
    "E": "10 000 idle TLS connections held open while A runs",
    "F": "one slow client reading a large response while A runs",
    "G": "HTTP/2 over TLS (h2load), 8 connections x 16 streams, small response",
}
WRK_SCENARIOS = ["A", "B", "C", "D"]
# Measured with h2load rather than wrk, against the contender started with
# HTTP/2 on (contenderArgv's http2).
H2_SCENARIOS = ["G"]
LOAD_SCENARIOS = WRK_SCENARIOS + H2_SCENARIOS
# Rounds: these get --rounds, the other load scenarios --rounds-other.
MAIN_SCENARIOS = ["A", "B", "G"]
SHORT = {
    "A": "HTTPS keep-alive",
    "B": "plain HTTP keep-alive",
    "C": "HTTPS, handshake per request",
    "D": "HTTPS keep-alive, 1 MiB",
    "G": "HTTP/2, 8 conns x 16 streams",
}
# G: h2load's connections and concurrent streams per connection.
H2_CONNECTIONS = 8
H2_STREAMS = 16


NO_RESUME_C = "C (full handshakes, no resumption)"
"""
Scenario C's name with --no-resume.
"""


def scenarioName(scenario: str, args: argparse.Namespace) -> str:
    """
    How the report names C{scenario}: C says when every handshake was a
    full one.
    """
    return NO_RESUME_C if scenario == "C" and args.no_resume else scenario


def speaksHTTP2(name: str) -> bool:
    """
    Whether contender C{name} can offer HTTP/2 to clients (scenario G).
    """
    return name.startswith("lbproxy") or name in ("haproxy", "nginx", "nginx-direct")


class BenchError(Exception):
    """
    Something that stops the run, with a message a person can act on.
    """


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------


@dataclass
class Proc:
    """
    A process this run started; stopped by its PID only.
    """

    name: str
    popen: subprocess.Popen[bytes]
    logPath: Path | None = None

    def tail(self, lines: int = 5) -> str:
        if self.logPath is None or not self.logPath.exists():
            return ""
        text = self.logPath.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)


STARTED: list[Proc] = []


def spawn(name: str, argv: list[str], logPath: Path, cpu: str, **kw: object) -> Proc:
    logFile = open(logPath, "ab")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen(
        ["taskset", "-c", cpu, *argv],
        stdout=logFile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[arg-type]
    )
    logFile.close()
    proc = Proc(name, popen, logPath)
    STARTED.append(proc)
    return proc


def stopAll() -> None:
    for proc in reversed(STARTED):
        proc.stop()
    STARTED.clear()


_TICK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of C{pid} and all its live descendants (a
    contender's workers), in seconds.
    """
    total = 0.0
    children: dict[int, list[int]] = collections.defaultdict(list)
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: split after its ')'.
                fields = f.read().rpartition(")")[2].split()
            stats[int(entry)] = fields
            children[int(fields[1])].append(int(entry))
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / _TICK
        todo.extend(children.get(current, ()))
    return total


def rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# --- ports ---------------------------------------------------------------


def portFree(host: str, port: int) -> bool:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(1)
    except OSError:
        return False
    finally:
        s.close()
    return True


def refuseTakenPorts() -> None:
    taken = [
        f"{h}:{p}"
        for h, p in [*BACKENDS, (HOST, TLS_PORT), (HOST, PLAIN_PORT)]
        if not portFree(h, p)
    ]
    if taken:
        raise BenchError(
            f"port(s) {', '.join(taken)} already in use; the benchmark needs them. "
            f"See what holds them with: ss -ltnp; stop it and run again."
        )


def waitPortsFree(timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if portFree(HOST, TLS_PORT) and portFree(HOST, PLAIN_PORT):
            return
        time.sleep(0.2)
    raise BenchError(f"ports {TLS_PORT}/{PLAIN_PORT} still taken after stopping a contender")


def waitListening(procs: list[Proc], ports: list[tuple[str, int]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        for proc in procs:
            if not proc.alive():
                raise BenchError(
                    f"{proc.name} exited with status {proc.popen.returncode}: {proc.tail()}"
                )
        host, port = pending[0]
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, port)) == 0:
                pending.pop(0)
                continue
        if time.monotonic() > deadline:
            raise BenchError(f"nothing listening on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.1)


def fetch(port: int, path: str, tls: bool) -> tuple[int, bytes]:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            HOST, port, timeout=10, context=context
        )
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the world: certificates, files, backends ------------------------------


@dataclass
class World:
    tmp: Path
    cert: Path
    key: Path
    pem: Path
    bigSize: int
    # --no-resume: every TLS contender refuses session resumption.
    refuseResumption: bool = False
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.logs = self.tmp / "logs"
        self.logs.mkdir()


def nginxCommon(tmp: Path, name: str) -> str:
    return f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/{name}.pid;
error_log {tmp}/logs/{name}.error.log warn;
events {{ worker_connections 19000; }}
"""


def nginxHttpCommon(tmp: Path, name: str) -> str:
    return f"""
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    types {{ text/html html; }}
    default_type application/octet-stream;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
"""


def makeWorld(tmp: Path, bigSize: int, rsa: bool = False, refuseResumption: bool = False) -> World:
    certs = tmp / "certs"
    subprocess.run(
        [sys.executable, "-m", "lbproxy.certs", str(certs)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cert, key = certs / "loadbalancer.crt", certs / "loadbalancer.key"
    if rsa:
        # A self-signed RSA-2048 certificate instead: the handshake's
        # signature costs about ten times an ECDSA P-256 one.
        cert, key = certs / "rsa.crt", certs / "rsa.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30"),
                *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    pem = certs / "combined.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    world = World(tmp, cert, key, pem, bigSize, refuseResumption)
    for i, _ in enumerate(BACKENDS, 1):
        www = tmp / f"www{i}"
        www.mkdir()
        (www / "index.html").write_text(f"<p>HTTP Server-{i}</p>")
        # Sparse files: no disk, and sendfile serves them at memory speed.
        with open(www / "1m.bin", "wb") as f:
            f.truncate(MiB)
        with open(www / "big.bin", "wb") as f:
            f.truncate(bigSize)
    return world


def startBackends(world: World) -> list[Proc]:
    procs = []
    for i, (host, port) in enumerate(BACKENDS, 1):
        name = f"backend{i}"
        conf = world.tmp / f"{name}.conf"
        conf.write_text(
            nginxCommon(world.tmp, name)
            + "http {"
            + nginxHttpCommon(world.tmp, name)
            + f"""
    server {{
        listen {host}:{port} default_server backlog=4096;
        root {world.tmp}/www{i};
        index index.html;
    }}
}}
"""
        )
        procs.append(
            spawn(
                name,
                ["nginx", "-p", str(world.tmp), "-c", str(conf)],
                world.logs / f"{name}.log",
                LOAD_CPU,
            )
        )
    waitListening(procs, BACKENDS)
    for i, (host, port) in enumerate(BACKENDS, 1):
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/")
        body = conn.getresponse().read()
        conn.close()
        if body != f"<p>HTTP Server-{i}</p>".encode():
            raise BenchError(f"backend {host}:{port} answered {body!r}")
    return procs


# --- contenders ------------------------------------------------------------


@dataclass
class Running:
    name: str
    procs: list[Proc]

    @property
    def main(self) -> Proc:
        return self.procs[0]

    def rss(self) -> int:
        return sum(rssKiB(p.pid) for p in self.procs if p.alive())

    def cpu(self) -> float:
        return sum(cpuSeconds(p.pid) for p in self.procs if p.alive())

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
            with contextlib.suppress(ValueError):
                STARTED.remove(proc)


def contenderArgv(name: str, world: World, http2: bool = False) -> list[tuple[str, list[str]]]:
    """
    The process(es) to start for a contender, first the one whose RSS and
    profile matter most. With C{http2}, its TLS listener offers h2 (then
    http/1.1) in ALPN; backends are spoken to over HTTP/1.1 either way.
    """
    tmp = world.tmp
    twistedListen = [
        "--listen",
        f"ssl:{TLS_PORT}:interface={HOST}:privateKey={world.key}:certKey={world.cert}",
        "--listen",
        f"tcp:{PLAIN_PORT}:interface={HOST}",
    ]
    py = sys.executable
    if name in ("lbproxy", "lbproxy-2w", "lbproxy-2w-shared", "lbproxy-dash", "lbproxy-dash-off"):
        extra = ["--workers", "2"] if name.startswith("lbproxy-2w") else []
        if name == "lbproxy-2w-shared":
            extra.append("--no-reuse-port")
        if name.startswith("lbproxy-dash"):
            # The admin API (and with it the dashboard's history and
            # decisions) on a unix socket; sampling at its default or off.
            extra = ["--admin", f"unix:{tmp}/{name}-admin.sock"]
            if name == "lbproxy-dash-off":
                extra += ["--decision-sample", "0"]
        if http2:
            extra += ["--http2", "on"]
        if world.refuseResumption:
            extra += ["--tls-resumption", "off"]
        return [
            (
                name,
                [
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "lbproxy",
                    "--backends",
                    BACKEND_LIST,
                    *twistedListen,
                    "--access-log",
                    "none",
                    # HAProxy's maxconn here: E holds 10 000 idle connections
                    # and A adds 64 (lbproxy's default limit is 10 000).
                    "--max-connections",
                    "10200",
                    *extra,
                ],
            )
        ]
    # The Twisted baselines never let a client resume, --no-resume or not:
    # the ssl: endpoint's CertificateOptions has session tickets and the
    # session cache off by default (enableSessionTickets, enableSessions).
    if name == "twisted-stock":
        script = HERE / "baselines" / "twisted_stock_proxy.py"
        return [(name, [py, str(script), "--backends", BACKEND_LIST, *twistedListen])]
    if name == "twisted-agent":
        script = HERE / "baselines" / "twisted_agent_proxy.py"
        return [(name, [py, str(script), "--backends", BACKEND_LIST, *twistedListen])]
    if name == "flask":
        script = str(HERE / "baselines" / "flask_balancer.py")
        common = [py, script, "--backends", BACKEND_LIST, "--host", HOST]
        return [
            (
                name,
                [
                    *common,
                    "--port",
                    str(TLS_PORT),
                    "--cert",
                    str(world.cert),
                    "--key",
                    str(world.key),
                    *(["--no-resume"] if world.refuseResumption else []),
                ],
            ),
            (f"{name}-plain", [*common, "--port", str(PLAIN_PORT)]),
        ]
    if http2 and not speaksHTTP2(name):
        raise BenchError(f"{name} cannot speak HTTP/2 to clients")
    if name == "haproxy":
        conf = tmp / "haproxy.cfg"
        alpn = "h2,http/1.1" if http2 else "http/1.1"
        # --no-resume: no session tickets, no session cache.
        cache = "\n    tune.ssl.cachesize 0" if world.refuseResumption else ""
        tickets = " no-tls-tickets" if world.refuseResumption else ""
        conf.write_text(
            f"""
global
    nbthread 1
    maxconn 10200
    # The fd limit here is 20000 and cannot be raised; 10 200 connections
    # proxied would need 20 400, idle ones (scenario E) need one each.
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.2{cache}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-request 300s
    timeout http-keep-alive 300s
frontend fe
    bind {HOST}:{TLS_PORT} ssl crt {world.pem} alpn {alpn}{tickets}
    bind {HOST}:{PLAIN_PORT}
    default_backend be
backend be
    balance random
    server s1 {BACKENDS[0][0]}:{BACKENDS[0][1]}
    server s2 {BACKENDS[1][0]}:{BACKENDS[1][1]}
"""
        )
        return [(name, ["haproxy", "-db", "-f", str(conf)])]
    if name in ("nginx", "nginx-direct"):
        conf = tmp / f"{name}.conf"
        if name == "nginx":
            upstream = f"""
    upstream backends {{
        random;
        server {BACKENDS[0][0]}:{BACKENDS[0][1]};
        server {BACKENDS[1][0]}:{BACKENDS[1][1]};
        keepalive 64;
    }}"""
            location = """
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
        else:
            upstream = ""
            location = f"""
        root {tmp}/www1;
        index index.html;"""
        # nginx's defaults resume by session ticket (its cache is "none").
        resumption = (
            """
        ssl_session_tickets off;
        ssl_session_cache off;"""
            if world.refuseResumption
            else ""
        )
        conf.write_text(
            nginxCommon(tmp, name)
            + "http {"
            + nginxHttpCommon(tmp, name)
            + upstream
            + f"""
    server {{
        listen {HOST}:{TLS_PORT} ssl{" http2" if http2 else ""} backlog=4096;
        listen {HOST}:{PLAIN_PORT} backlog=4096;
        ssl_certificate {world.cert};
        ssl_certificate_key {world.key};
        ssl_protocols TLSv1.2 TLSv1.3;{resumption}
{location}
    }}
}}
"""
        )
        return [(name, ["nginx", "-p", str(tmp), "-c", str(conf)])]
    raise BenchError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


def startContender(name: str, world: World, http2: bool = False) -> Running:
    waitPortsFree()
    procs = [
        spawn(
            procName, argv, world.logs / f"{procName}.log", CONTENDER_CPUS.get(name, CONTENDER_CPU)
        )
        for procName, argv in contenderArgv(name, world, http2)
    ]
    running = Running(name, procs)
    try:
        waitListening(procs, [(HOST, TLS_PORT), (HOST, PLAIN_PORT)])
        for port, tls in ((TLS_PORT, True), (PLAIN_PORT, False)):
            status, body = fetch(port, "/", tls)
            if status != 200 or b"HTTP Server-" not in body:
                raise BenchError(f"{name} on port {port} answered {status} {body[:80]!r}")
    except BaseException:
        running.stop()
        raise
    return running


# --- wrk -------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50: float  # milliseconds
    p99: float
    requests: int
    errors: int
    non2xx: int

    def asDict(self) -> dict[str, float]:
        return self.__dict__.copy()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parseWrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot read wrk output:\n{output}")
    socketErrors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(g) for g in socketErrors.groups()) if socketErrors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)),
        p50=_ms(p50.group(1)),
        p99=_ms(p99.group(1)),
        requests=int(total.group(1)),
        errors=errors,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrkArgv(scenario: str, duration: float) -> list[str]:
    url = {
        "A": f"https://{HOST}:{TLS_PORT}/",
        "B": f"http://{HOST}:{PLAIN_PORT}/",
        "C": f"https://{HOST}:{TLS_PORT}/",
        "D": f"https://{HOST}:{TLS_PORT}/1m.bin",
    }[scenario]
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        "-c64",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-H",
        "Host: localhost",
    ]
    if scenario == "C":
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def runWrk(scenario: str, duration: float) -> WrkResult:
    argv = wrkArgv(scenario, duration)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parseWrk(done.stdout)


def warmUp(scenario: str, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(BenchError):
            runWrk(scenario, seconds)


# --- h2load (G) ------------------------------------------------------------


def h2loadArgv(duration: float, warmup: float, logPath: Path) -> list[str]:
    argv = [
        *("taskset", "-c", LOAD_CPU, "h2load"),
        *("-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS), "-t", "1"),
        *("-D", str(max(1, round(duration)))),
        f"--log-file={logPath}",
        # As wrk's Host: localhost in A.
        *("-H", ":authority: localhost"),
    ]
    if round(warmup) > 0:
        argv.append(f"--warm-up-time={round(warmup)}")
    return [*argv, f"https://{HOST}:{TLS_PORT}/"]


def percentile(ordered: list[int], q: float) -> float:
    """
    The nearest-rank C{q} quantile (0 < q <= 1) of a sorted list.
    """
    return float(ordered[max(0, math.ceil(len(ordered) * q) - 1)])


def parseH2load(output: str, latenciesUs: list[int]) -> WrkResult:
    """
    h2load's summary, with p50 and p99 from the per-request times of its
    --log-file (h2load prints no percentiles).
    """
    protocol = re.search(r"^Application protocol: (\S+)", output, re.M)
    if not protocol or protocol.group(1) != "h2":
        got = protocol.group(1) if protocol else "none"
        raise BenchError(f"h2load did not negotiate h2 (ALPN chose {got}):\n{output}")
    rps = re.search(r"^finished in \S+, ([\d.]+) req/s", output, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if not (rps and counts and codes):
        raise BenchError(f"cannot read h2load output:\n{output}")
    if not latenciesUs:
        raise BenchError(f"h2load logged no requests:\n{output}")
    ordered = sorted(latenciesUs)
    return WrkResult(
        rps=float(rps.group(1)),
        p50=percentile(ordered, 0.50) / 1000,
        p99=percentile(ordered, 0.99) / 1000,
        requests=int(counts.group(3)),
        errors=int(counts.group(5)),
        non2xx=int(codes.group(3)) + int(codes.group(4)),
    )


def readH2loadLog(path: Path) -> list[int]:
    """
    The response times, in µs, of the requests in an h2load --log-file
    (start µs since the epoch, status, µs to the end of the response).
    Only the main duration's requests are logged, not the warm-up's.
    """
    times = []
    with open(path) as f:
        for line in f:
            fields = line.split("\t")
            if len(fields) >= 3:
                times.append(int(fields[2]))
    return times


def runH2load(
    running: Running, duration: float, warmup: float, tmp: Path
) -> tuple[WrkResult, float]:
    """
    h2load against the contender: C{warmup} seconds on the same connections,
    then C{duration} measured. Returns the result and the contender's CPU
    seconds during the measured part alone (sampled when h2load says that
    part starts and ends; it prints those lines as they happen).
    """
    logPath = tmp / "h2load.log"
    logPath.unlink(missing_ok=True)  # h2load appends
    popen = subprocess.Popen(
        h2loadArgv(duration, warmup, logPath),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    proc = Proc("h2load", popen)  # type: ignore[arg-type]
    STARTED.append(proc)
    limit = threading.Timer(duration + warmup + 60, popen.kill)
    limit.start()
    cpuStart = running.cpu()
    cpuBefore: float | None = None
    cpuAfter: float | None = None
    lines = []
    try:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line)
            if line.startswith("Main benchmark duration is started"):
                cpuBefore = running.cpu()
            elif line.startswith("Main benchmark duration is over"):
                cpuAfter = running.cpu()
        popen.wait(30)
    finally:
        limit.cancel()
        proc.stop()
        with contextlib.suppress(ValueError):
            STARTED.remove(proc)
    if cpuAfter is None:
        cpuAfter = running.cpu()
    output = "".join(lines)
    if popen.returncode != 0:
        raise BenchError(f"h2load failed ({popen.returncode}): {output.strip()[-2000:]}")
    result = parseH2load(output, readH2loadLog(logPath) if logPath.exists() else [])
    logPath.unlink(missing_ok=True)
    return result, cpuAfter - (cpuStart if cpuBefore is None else cpuBefore)


def measure(
    scenario: str, running: Running, args: argparse.Namespace, world: World
) -> tuple[WrkResult, float]:
    """
    One measurement of a load scenario, after its warm-up: the result and
    the contender's CPU seconds while it was measured.
    """
    if scenario in H2_SCENARIOS:
        return runH2load(running, args.duration, args.warmup, world.tmp)
    warmUp(scenario, args.warmup)
    cpuBefore = running.cpu()
    result = runWrk(scenario, args.duration)
    return result, running.cpu() - cpuBefore


# --- scenarios E and F -------------------------------------------------------


def scenarioE(running: Running, world: World, args: argparse.Namespace) -> dict[str, object]:
    warmUp("A", args.warmup)
    alone = runWrk("A", args.duration)
    before = running.rss()
    client = subprocess.Popen(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            str(HERE / "idle_tls.py"),
            "--host",
            HOST,
            "--port",
            str(TLS_PORT),
            "--count",
            str(args.idle),
            "--open-timeout",
            "180",
            "--hold",
            str(args.duration * 3 + 240),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    STARTED.append(Proc("idle-client", client))  # type: ignore[arg-type]
    try:
        assert client.stdout is not None and client.stdin is not None
        opened = client.stdout.readline().strip()
        if not opened.startswith("open="):
            raise BenchError(f"idle client failed: {opened!r}")
        time.sleep(2)
        withIdle = running.rss()
        under = runWrk("A", args.duration)
        after = running.rss()
        client.stdin.close()
        held = client.stdout.readline().strip()
        client.wait(30)
    finally:
        Proc("idle-client", client).stop()  # type: ignore[arg-type]
    fields = dict(kv.split("=") for kv in (opened + " " + held).split())
    openCount = int(fields["open"])
    heldCount = int(fields.get("held", 0))
    return {
        "aloneA": alone.asDict(),
        "underA": under.asDict(),
        "rssBeforeKiB": before,
        "rssIdleKiB": withIdle,
        "rssAfterKiB": after,
        "opened": openCount,
        "failed": int(fields["failed"]),
        "openSeconds": float(fields["seconds"]),
        "held": heldCount,
        "closedByServer": int(fields.get("closed_by_server", 0)),
        "perConnKiB": (withIdle - before) / openCount if openCount else None,
    }


def scenarioF(running: Running, world: World, args: argparse.Namespace) -> dict[str, object]:
    warmUp("A", args.warmup)
    before = running.rss()
    limit = world.bigSize / args.slow_rate * 1.5 + 60
    client = subprocess.Popen(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            str(HERE / "slow_client.py"),
            "--host",
            HOST,
            "--port",
            str(TLS_PORT),
            "--path",
            "/big.bin",
            "--rate",
            str(args.slow_rate),
            "--time-limit",
            str(limit),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    STARTED.append(Proc("slow-client", client))  # type: ignore[arg-type]
    samples: list[int] = []
    under: WrkResult | None = None
    try:
        time.sleep(1)
        wrk = subprocess.Popen(
            wrkArgv("A", args.duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + limit + 10
        while time.monotonic() < deadline and (client.poll() is None or wrk.poll() is None):
            if running.main.alive():
                samples.append(running.rss())
            time.sleep(0.25)
        if wrk.poll() is None:
            wrk.kill()
        out, _ = wrk.communicate(timeout=30)
        with contextlib.suppress(BenchError):
            under = parseWrk(out)
        if client.poll() is None:
            Proc("slow-client", client).stop()  # type: ignore[arg-type]
        result = (client.stdout.read() if client.stdout else "").strip()
    finally:
        Proc("slow-client", client).stop()  # type: ignore[arg-type]
    fields = dict(kv.split("=") for kv in result.split()) if result else {}
    peak = max(samples) if samples else before
    return {
        "underA": under.asDict() if under else None,
        "rssBeforeKiB": before,
        "rssPeakKiB": peak,
        "growthMiB": (peak - before) / 1024,
        "bytes": int(fields.get("bytes", 0)),
        "seconds": float(fields.get("seconds", 0)),
        "status": fields.get("status", "-"),
        "size": world.bigSize,
        "rate": args.slow_rate,
    }


# --- orchestration -----------------------------------------------------------


def runAll(args: argparse.Namespace, world: World, record: dict[str, object]) -> None:
    contenders: list[str] = args.contenders
    loadScenarios = [s for s in LOAD_SCENARIOS if s in args.scenarios]
    notes: list[str] = record["notes"]  # type: ignore[assignment]
    failures: list[str] = record["failures"]  # type: ignore[assignment]
    if "G" in loadScenarios:
        for name in contenders:
            if not speaksHTTP2(name):
                notes.append(f"G skipped for {name}: it cannot speak HTTP/2 to clients.")
    rounds = max(args.rounds, args.rounds_other) if loadScenarios else 0
    for r in range(1, rounds + 1):
        scenarios = [
            s
            for s in loadScenarios
            if r <= (args.rounds if s in MAIN_SCENARIOS else args.rounds_other)
        ]
        for name in contenders:
            # A-D against the contender as configured for HTTP/1.1; G against
            # a fresh one with HTTP/2 on, in the same round.
            wrkHere = [s for s in scenarios if s in WRK_SCENARIOS]
            if wrkHere:
                measureContender(r, name, wrkHere, False, args, world, record)
            h2Here = [s for s in scenarios if s in H2_SCENARIOS]
            if h2Here and speaksHTTP2(name):
                measureContender(r, name, h2Here, True, args, world, record)
    for scenario, function in (("E", scenarioE), ("F", scenarioF)):
        if scenario not in args.scenarios:
            continue
        for name in contenders:
            if scenario == "E" and name == "flask":
                notes.append(
                    "E skipped for flask: Werkzeug's threaded server needs one OS thread per "
                    "idle connection; 10 000 of them is not a configuration anyone would run."
                )
                continue
            log(f"{scenario}: {name}")
            try:
                running = startContender(name, world)
            except BenchError as e:
                failures.append(f"{scenario} {name}: {e}")
                log(f"  {e}")
                continue
            try:
                result = function(running, world, args)
                record[scenario][name] = result  # type: ignore[index]
                log(f"  {json.dumps(result)}")
            except (BenchError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as e:
                failures.append(f"{scenario} {name}: {e!r}")
                log(f"  {e!r}")
            finally:
                running.stop()
            saveTmp(record)


def measureContender(
    r: int,
    name: str,
    scenarios: list[str],
    http2: bool,
    args: argparse.Namespace,
    world: World,
    record: dict[str, object],
) -> None:
    """
    Start contender C{name}, measure each of C{scenarios} in turn into
    C{record}, stop it.
    """
    rows: list[dict[str, object]] = record["wrk"]  # type: ignore[assignment]
    failures: list[str] = record["failures"]  # type: ignore[assignment]
    log(f"round {r}: {name}{' (HTTP/2 on)' if http2 else ''}: {','.join(scenarios)}")
    try:
        running = startContender(name, world, http2)
    except BenchError as e:
        failures.append(f"round {r} {name}: {e}")
        log(f"  {e}")
        return
    try:
        for s in scenarios:
            try:
                result, cpuUsed = measure(s, running, args, world)
            except (BenchError, subprocess.TimeoutExpired) as e:
                failures.append(f"round {r} {name} {s}: {e}")
                log(f"  {s}: {e}")
                continue
            cpuPerRequest = cpuUsed / result.requests * 1e6 if result.requests else 0.0
            rows.append(
                {
                    "round": r,
                    "scenario": s,
                    "contender": name,
                    **result.asDict(),
                    "cpuUsPerRequest": cpuPerRequest,
                }
            )
            log(
                f"  {s}: {result.rps:9.0f} req/s  p50 {result.p50:7.2f} ms  "
                f"p99 {result.p99:7.2f} ms  CPU {cpuPerRequest:6.1f} us/req  "
                f"errors {result.errors} non2xx {result.non2xx}"
            )
            if not running.main.alive():
                raise BenchError(f"{name} died during {s}")
    except BenchError as e:
        failures.append(f"round {r} {name}: {e}")
        log(f"  {e}")
    finally:
        running.stop()
    saveTmp(record)


def saveTmp(record: dict[str, object]) -> None:
    (RESULTS / f"{record['stamp']}.json.tmp").write_text(json.dumps(record, indent=1))


# --- reporting ---------------------------------------------------------------


def summarise(rows: list[dict[str, object]]) -> dict[tuple[str, str], dict[str, float]]:
    grouped: dict[tuple[str, str], list[dict[str, object]]] = collections.defaultdict(list)
    for row in rows:
        grouped[(str(row["scenario"]), str(row["contender"]))].append(row)
    summary = {}
    for key, items in grouped.items():
        rps = [float(i["rps"]) for i in items]  # type: ignore[arg-type]
        summary[key] = {
            "median": statistics.median(rps),
            "min": min(rps),
            "max": max(rps),
            "n": len(rps),
            "p50": statistics.median(float(i["p50"]) for i in items),  # type: ignore[arg-type]
            "p99": statistics.median(float(i["p99"]) for i in items),  # type: ignore[arg-type]
            "errors": sum(int(i["errors"]) + int(i["non2xx"]) for i in items),  # type: ignore[call-overload]
            "requests": sum(int(i["requests"]) for i in items),  # type: ignore[call-overload]
            # Rows from runs before this column existed have none.
            "cpu": statistics.median(float(i.get("cpuUsPerRequest", 0.0)) for i in items),  # type: ignore[arg-type]
        }
    return summary


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def report(record: dict[str, object], args: argparse.Namespace) -> str:
    summary = summarise(record["wrk"])  # type: ignore[arg-type]
    lines = [f"# lbproxy benchmark {record['stamp']}", ""]
    lines += [f"- {k}: {v}" for k, v in record["machine"].items()]  # type: ignore[attr-defined]
    http2 = any(s in H2_SCENARIOS for s, _ in summary)
    h2load = (
        f"G: h2load -c{H2_CONNECTIONS} -m{H2_STREAMS} -t1 (HTTP/2 over TLS) with its "
        "warm-up on the same connections; "
    )
    lines += [
        f"- settings: {args.duration:g} s per measurement after {args.warmup:g} s warm-up; "
        f"{'RSA-2048' if args.rsa else 'ECDSA P-256'} server certificate; "
        f"A, B{', G' if http2 else ''}: {args.rounds} round(s); C, D: {args.rounds_other}; "
        f"wrk -t1 -c64; {h2load if http2 else ''}"
        f"contenders on CPU {CONTENDER_CPU}, "
        f"wrk{', h2load' if http2 else ''} and backends on CPU {LOAD_CPU}",
        "- req/s is the median over rounds, spread is min-max, p50/p99 are medians of "
        "each round's wrk latency percentiles; ratios are this row's median over the "
        "baseline's median in the same run. CPU µs/req is the contender's CPU time "
        "(user + system, all its processes) during the measurement over the requests "
        f"wrk{' (in G, h2load)' if http2 else ''} completed, median over rounds: the cost "
        "per request, less sensitive to the machine's noise than req/s.",
    ]
    if args.no_resume:
        lines.append(
            "- **TLS resumption refused by every contender** (`--no-resume`): lbproxy "
            "`--tls-resumption off`; HAProxy `no-tls-tickets` on the bind line and "
            "`tune.ssl.cachesize 0`; nginx `ssl_session_tickets off; ssl_session_cache off;`; "
            "the Twisted baselines as always (Twisted's `ssl:` endpoint: no session tickets, "
            "no session cache); Flask `ssl.OP_NO_TICKET` and no TLS 1.3 tickets. wrk offers "
            "its last session on each new connection and is refused, so every handshake of "
            f"{NO_RESUME_C} is a full one."
        )
    else:
        lines.append(
            "- TLS resumption as each contender does it by default: wrk resumes its session "
            "on each new connection in C where the server lets it (lbproxy, HAProxy, nginx, "
            "Flask); the Twisted baselines never let it (Twisted's `ssl:` endpoint has no "
            "session tickets or cache), so their C handshakes are full ones. `--no-resume` "
            "refuses resumption everywhere."
        )
    if http2:
        lines.append(
            "- G: each contender started again with HTTP/2 offered in ALPN (lbproxy "
            "`--http2 on`, HAProxy `alpn h2,http/1.1`, nginx `listen ... ssl http2`), "
            "HTTP/1.1 to the same backends; h2load prints no percentiles, so p50/p99 are "
            "nearest-rank percentiles of every measured request's time in h2load's "
            "`--log-file` (warm-up requests are not logged); errors are h2load's failed "
            "requests plus 4xx/5xx."
        )
    lines.append("")
    for s in LOAD_SCENARIOS:
        present = [c for c in args.contenders if (s, c) in summary]
        if not present:
            continue
        lines += [f"## {scenarioName(s, args)}: {SCENARIOS[s]}", ""]
        bases = [b for b in BASELINES if s not in H2_SCENARIOS or speaksHTTP2(b)]
        head = "| contender | req/s | spread | p50 ms | p99 ms | CPU µs/req | errors |"
        head += "".join(f" vs {b} |" for b in bases)
        lines += [head, "|" + " --- |" * (7 + len(bases))]
        for c in present:
            m = summary[(s, c)]
            row = (
                f"| {c} | {_fmt(m['median'])} | {_fmt(m['min'])}-{_fmt(m['max'])} "
                f"| {m['p50']:.2f} | {m['p99']:.2f} | {_fmt(m['cpu'] or None, 1)} "
                f"| {int(m['errors'])} |"
            )
            for b in bases:
                base = summary.get((s, b), {}).get("median")
                row += f" {_ratio(m['median'], base)} |"
            lines.append(row)
        lines.append("")
        if s == "G":
            lines += http2AgainstA(summary, args)
    E: dict[str, dict[str, object]] = record["E"]  # type: ignore[assignment]
    if E:
        lines += [f"## E: {SCENARIOS['E']}", ""]
        lines += [
            "| contender | idle conns open | held to the end | open s | RSS before MiB "
            "| RSS with idle MiB | KiB per idle conn | A req/s alone | A req/s under E "
            "| A p99 alone ms | A p99 under E ms | p99 ratio | A errors under E |",
            "|" + " --- |" * 13,
        ]
        for c, e in E.items():
            alone, under = e["aloneA"], e["underA"]  # type: ignore[index]
            lines.append(
                f"| {c} | {e['opened']} | {e['held']} | {e['openSeconds']} "
                f"| {int(e['rssBeforeKiB']) / 1024:.1f} | {int(e['rssIdleKiB']) / 1024:.1f} "
                f"| {_fmt(e['perConnKiB'], 1)} | {_fmt(alone['rps'])} | {_fmt(under['rps'])} "
                f"| {alone['p99']:.2f} | {under['p99']:.2f} "
                f"| {_ratio(under['p99'], alone['p99'])} "
                f"| {int(under['errors']) + int(under['non2xx'])} |"  # type: ignore[call-overload]
            )
        lines.append("")
    F: dict[str, dict[str, object]] = record["F"]  # type: ignore[assignment]
    if F:
        lines += [
            f"## F: {SCENARIOS['F']} ({args.big // MiB} MiB at {args.slow_rate / MiB:g} MiB/s)",
            "",
            "| contender | status | MiB read | seconds | RSS before MiB | RSS peak MiB "
            "| growth MiB | A req/s under F | A p99 under F ms |",
            "|" + " --- |" * 9,
        ]
        for c, f in F.items():
            under = f["underA"] or {}  # type: ignore[assignment]
            lines.append(
                f"| {c} | {f['status']} | {int(f['bytes']) / MiB:.0f} | {f['seconds']} "
                f"| {int(f['rssBeforeKiB']) / 1024:.1f} | {int(f['rssPeakKiB']) / 1024:.1f} "
                f"| {float(f['growthMiB']):.1f} | {_fmt(under.get('rps'))} "
                f"| {_fmt(under.get('p99'), 2)} |"
            )
        lines.append("")
    lines += targets(summary, record, args)
    notes: list[str] = record["notes"]  # type: ignore[assignment]
    failures: list[str] = record["failures"]  # type: ignore[assignment]
    if notes or failures:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [f"- failed: {f}" for f in failures]
        lines.append("")
    return "\n".join(lines)


def http2AgainstA(
    summary: dict[tuple[str, str], dict[str, float]], args: argparse.Namespace
) -> list[str]:
    """
    G beside A, per contender, from the same run: what HTTP/2 costs each
    one against its own HTTP/1.1, and lbproxy against HAProxy and nginx.
    """
    both = [c for c in args.contenders if ("G", c) in summary and ("A", c) in summary]
    out = []
    if both:
        out += [
            "G against the same contender's HTTP/1.1 scenario A in this run:",
            "",
            "| contender | A req/s | G req/s | G / A | A CPU µs/req | G CPU µs/req "
            "| A p99 ms | G p99 ms |",
            "|" + " --- |" * 8,
        ]
        for c in both:
            a, g = summary[("A", c)], summary[("G", c)]
            out.append(
                f"| {c} | {_fmt(a['median'])} | {_fmt(g['median'])} "
                f"| {g['median'] / a['median']:.0%} | {_fmt(a['cpu'] or None, 1)} "
                f"| {_fmt(g['cpu'] or None, 1)} | {a['p99']:.2f} | {g['p99']:.2f} |"
            )
        out.append("")
    lb = summary.get(("G", "lbproxy"))
    if lb:
        for base in ("haproxy", "nginx"):
            other = summary.get(("G", base))
            if other:
                out.append(
                    f"- lbproxy / {base} on G: {lb['median'] / other['median']:.0%} of its "
                    f"req/s, {_ratio(lb['cpu'], other['cpu'])} its CPU per request"
                )
        out.append("")
    return out


def targets(
    summary: dict[tuple[str, str], dict[str, float]],
    record: dict[str, object],
    args: argparse.Namespace,
) -> list[str]:
    """
    Issue #6's targets for lbproxy (issue #15's for HTTP/2, issue #17's for
    the second performance round), checked against this run.
    """

    def med(s: str, c: str) -> float | None:
        return summary.get((s, c), {}).get("median")

    def p99(s: str, c: str) -> float | None:
        return summary.get((s, c), {}).get("p99")

    def cpu(s: str, c: str) -> float | None:
        return summary.get((s, c), {}).get("cpu")

    checks: list[tuple[str, float | None, float, str]] = []  # (what, value, goal, kind)

    def ratio(s: str, base: str, goal: float, what: str) -> None:
        a, b = med(s, "lbproxy"), med(s, base)
        checks.append((what, a / b if a and b else None, goal, ">="))

    ratio("A", "twisted-agent", 1.5, "A: >= 1.5x Twisted Agent+pool")
    ratio("A", "flask", 10, "A: >= 10x the write-up's Flask balancer")
    ratio("A", "haproxy", 0.2, "A: >= 20 % of HAProxy")
    ratio("B", "twisted-agent", 1.5, "B: >= 1.5x Twisted Agent+pool")
    ratio("C", "haproxy", 0.8, f"{scenarioName('C', args)}: >= 80 % of HAProxy")
    ratio("D", "haproxy", 0.7, "D: >= 70 % of HAProxy")
    # Issue #17 (performance round 2): per core, by req/s as above and by
    # CPU per request (the base's CPU over lbproxy's: the share of the
    # base's work per core, whether or not the base's core was full).
    ratio("A", "twisted-agent", 2, "A: >= 2x Twisted Agent+pool (#17)")
    ratio("A", "haproxy", 0.3, "A: >= 30 % of HAProxy (#17)")
    ratio("B", "haproxy", 0.3, "B: >= 30 % of HAProxy (#17)")
    for s in ("A", "B"):
        mine, base = cpu(s, "lbproxy"), cpu(s, "haproxy")
        checks.append(
            (
                f"{s}: >= 30 % of HAProxy by CPU per request (#17)",
                base / mine if mine and base else None,
                0.3,
                ">=",
            )
        )
    ratio("D", "haproxy", 0.9, "D: >= 90 % of HAProxy (#17)")
    a, b = p99("A", "lbproxy"), p99("A", "haproxy")
    checks.append(("A: p99 <= 2x HAProxy's (#17)", a / b if a and b else None, 2, "<="))
    h2, h1 = med("G", "lbproxy"), med("A", "lbproxy")
    checks.append(("G: >= 60 % of lbproxy's own A", h2 / h1 if h2 and h1 else None, 0.6, ">="))
    e = record["E"].get("lbproxy")  # type: ignore[attr-defined]
    if e:
        checks.append(("E: <= 32 KiB RSS per idle TLS connection", e["perConnKiB"], 32, "<="))
        under = e["underA"]
        # Errors (refusals, say) answer fast: such a p99 says nothing.
        failed = int(under["errors"]) + int(under["non2xx"])
        checks.append(
            (
                "E: A's p99 under E <= 2x A alone",
                under["p99"] / e["aloneA"]["p99"] if not failed else None,
                2,
                "<=",
            )
        )
    f = record["F"].get("lbproxy")  # type: ignore[attr-defined]
    if f:
        checks.append(("F: RSS growth during the transfer <= 32 MiB", f["growthMiB"], 32, "<="))
    a, b = p99("A", "lbproxy"), p99("A", "twisted-agent")
    checks.append(("A: p99 no worse than Agent+pool (ratio)", a / b if a and b else None, 1, "<="))
    out = [
        "## lbproxy against its targets (issue #6; G: issue #15; #17: performance round 2)",
        "",
        "| target | this run | met |",
        "| --- | --- | --- |",
    ]
    for what, value, goal, kind in checks:
        if value is None:
            out.append(f"| {what} | not measured | - |")
            continue
        met = value >= goal if kind == ">=" else value <= goal
        out.append(f"| {what} | {value:.2f} | {'yes' if met else '**no**'} |")
    out.append("")
    return out


def chart(record: dict[str, object], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(record["wrk"])  # type: ignore[arg-type]
    scenarios = [s for s in LOAD_SCENARIOS if any((s, c) in summary for c in args.contenders)]
    if not scenarios:
        return
    contenders = [c for c in args.contenders if any((s, c) in summary for s in scenarios)]
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(contenders)
    for i, c in enumerate(contenders):
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(scenarios):
            m = summary.get((s, c))
            if m:
                xs.append(j + (i - (len(contenders) - 1) / 2) * width)
                ys.append(m["median"])
                lo.append(m["median"] - m["min"])
                hi.append(m["max"] - m["median"])
        bars = ax.bar(xs, ys, width, label=LABELS.get(c, c), yerr=[lo, hi], capsize=2)
        for bar, y, top in zip(bars, ys, hi, strict=True):
            ax.annotate(
                f"{y:,.0f}",
                (bar.get_x() + bar.get_width() / 2, y + top),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(
        [f"{scenarioName(s, args)}: {SHORT[s]}" for s in scenarios],
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (median, log scale; whiskers min-max)")
    ax.set_title(
        f"lbproxy benchmark {record['stamp']}: one core each, 64 connections "
        f"(G: {H2_CONNECTIONS} x {H2_STREAMS} streams)"
    )
    # Beside the bars, not over them (G's stand at the right).
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machineInfo(args: argparse.Namespace) -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import twisted

    commit = out(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "lbproxy"])
    ref = os.environ.get("LBBENCH_REF")
    if ref:
        source = f"git {ref}"
    else:
        source = f"work tree at {commit}"
        if dirty not in ("", "?"):
            source += " (lbproxy/ had uncommitted changes)"
    return {
        "lbproxy measured": source,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "cpu": out(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "haproxy": out(["haproxy", "-v"]),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]),
        "h2load": out(["h2load", "--version"]),
        "openssl": ssl.OPENSSL_VERSION,
    }


# --- profiling ---------------------------------------------------------------


def profile(args: argparse.Namespace, world: World) -> None:
    """
    lbproxy alone under py-spy during each of A-D and G asked for: raw
    (collapsed) stacks, a flame graph, and a summary in results/profile-*.
    """
    pyspy = BIN / "py-spy"
    for s in [s for s in args.scenarios if s in LOAD_SCENARIOS]:
        http2 = s in H2_SCENARIOS
        running = startContender("lbproxy", world, http2)
        try:
            if http2:
                with contextlib.suppress(BenchError):
                    runH2load(running, args.warmup, 0, world.tmp)
            else:
                warmUp(s, args.warmup)
            for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
                out = RESULTS / f"profile-{s}.{suffix}"
                spy = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        LOAD_CPU,
                        str(pyspy),
                        "record",
                        "--pid",
                        str(running.main.pid),
                        "--rate",
                        "250",
                        "--nonblocking",
                        "--duration",
                        str(round(args.duration)),
                        "--format",
                        fmt,
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(world.logs / "py-spy.log", "ab"),  # noqa: SIM115
                )
                STARTED.append(Proc("py-spy", spy))  # type: ignore[arg-type]
                time.sleep(0.5)
                if http2:
                    result, _ = runH2load(running, args.duration, 0, world.tmp)
                else:
                    result = runWrk(s, args.duration)
                spy.wait(args.duration + 60)
                log(f"profile {s} ({fmt}): {result.rps:.0f} req/s under py-spy -> {out}")
        finally:
            running.stop()
        summary = HERE / "profile_summary.py"
        text = subprocess.run(
            [sys.executable, str(summary), str(RESULTS / f"profile-{s}.txt")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (RESULTS / f"profile-{s}.md").write_text(text)
        print(text)


# --- main --------------------------------------------------------------------


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark lbproxy against HAProxy, nginx, Twisted and the write-up's Flask "
        "balancer on one core each (scenarios: "
        + "; ".join(f"{k}) {v}" for k, v in SCENARIOS.items())
        + ").",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 s measurements, 1 round, small E and F"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="F as specified: 1 GiB at 1 MiB/s (17 minutes per contender)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated (default all)"
    )
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated (default all)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A, B and G (default 3)")
    parser.add_argument("--rounds-other", type=int, default=1, help="rounds of C and D (default 1)")
    parser.add_argument(
        "--duration", type=float, default=10, help="seconds per measurement (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)"
    )
    parser.add_argument(
        "--idle", type=int, default=10_000, help="idle TLS connections in E (default 10000)"
    )
    parser.add_argument(
        "--big", type=int, default=256 * MiB, help="bytes of F's response (default 256 MiB)"
    )
    parser.add_argument(
        "--slow-rate",
        type=float,
        default=16 * MiB,
        help="F's client read rate, bytes/s (default 16 MiB/s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: profile lbproxy under py-spy during --scenarios (A-D, G)",
    )
    parser.add_argument(
        "--rsa",
        action="store_true",
        help="serve an RSA-2048 certificate instead of ECDSA P-256 (C's handshakes then cost "
        "OpenSSL about ten times more)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="every TLS contender refuses session resumption, so that C measures full "
        "handshakes (wrk resumes where it may): lbproxy --tls-resumption off, HAProxy "
        "no-tls-tickets and tune.ssl.cachesize 0, nginx ssl_session_tickets off and "
        "ssl_session_cache off, Flask without tickets; the Twisted baselines never resume",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds, args.rounds_other = 3, 1, 1, 1
        args.idle, args.big = 2000, 64 * MiB
    if args.full:
        args.big, args.slow_rate = 1024 * MiB, 1 * MiB
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for s in args.scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    for c in args.contenders:
        if c not in CONTENDERS + EXTRA_CONTENDERS:
            known = ", ".join(CONTENDERS + EXTRA_CONTENDERS)
            parser.error(f"unknown contender {c!r}; known: {known}")
    if args.duration <= 0 or args.duration > 600:
        parser.error("--duration must be in (0, 600]")
    return args


@contextlib.contextmanager
def stoppedOnSignals() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        stopAll()
        signal.signal(signal.SIGTERM, old)


def rerender(path: Path) -> int:
    """
    Write the Markdown and PNG of an earlier run again from its JSON.
    """
    record = json.loads(path.read_text())
    args = parseArgs(record["argv"])
    stem = path.with_suffix("")
    stem.with_suffix(".md").write_text(report(record, args) + "\n")
    chart(record, args, stem.with_suffix(".png"))
    log(f"wrote {stem}.md, .png")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"] and len(argv) == 2:
        return rerender(Path(argv[1]))
    args = parseArgs(argv)
    tools = ["nginx", "haproxy", "wrk", "taskset"]
    if "G" in args.scenarios:
        tools.append("h2load")
    for tool in tools:
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found; run through bench/run, which installs it")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs two CPUs: one for the contender, one for wrk and the backends")
    refuseTakenPorts()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="lbbench-") as tmpName, stoppedOnSignals():
        world = makeWorld(Path(tmpName), args.big, args.rsa, args.no_resume)
        log(f"backends on {BACKEND_LIST}; work files in {tmpName}")
        startBackends(world)
        if args.profile:
            profile(args, world)
            return 0
        record: dict[str, object] = {
            "stamp": stamp,
            "argv": argv,
            "machine": machineInfo(args),
            "wrk": [],
            "E": {},
            "F": {},
            "notes": [],
            "failures": [],
        }
        started = time.monotonic()
        try:
            runAll(args, world, record)
        finally:
            record["machine"]["load average at end"] = " ".join(  # type: ignore[index]
                f"{x:.2f}" for x in os.getloadavg()
            )
            record["machine"]["wall time"] = f"{(time.monotonic() - started) / 60:.1f} min"  # type: ignore[index]
            if args.quick:
                record["notes"].append("--quick run: short measurements, not for comparison")  # type: ignore[attr-defined]
            text = report(record, args)
            (RESULTS / f"{stamp}.md").write_text(text + "\n")
            (RESULTS / f"{stamp}.json").write_text(json.dumps(record, indent=1) + "\n")
            with contextlib.suppress(FileNotFoundError):
                (RESULTS / f"{stamp}.json.tmp").unlink()
            try:
                chart(record, args, RESULTS / f"{stamp}.png")
            except Exception as e:  # noqa: BLE001 - the tables matter more than the chart
                log(f"no chart: {e!r}")
            print(text)
            log(f"wrote {RESULTS / stamp}.md, .png, .json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench/run: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench/run: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
