"""
Summarise a py-spy raw (collapsed stacks) profile: where the process spends
its time, by leaf function (self time), by area of the code (self time), and
by a few inclusive subtrees that map to the request path.

    python bench/profile_summary.py bench/results/profile-A.txt
"""

from __future__ import annotations

import collections
import re
import sys

# Area of a sample by its leaf frame ("Class.method (pkg/file.py:line)"); the
# first match wins. py-spy without --native charges C code (OpenSSL, syscalls)
# to the Python frame that called it.
AREAS = [
    ("TLS: pyOpenSSL calls into OpenSSL (encrypt, decrypt, BIO copies)", r"\(OpenSSL/"),
    ("TLS: Twisted's TLSMemoryBIOProtocol glue", r"protocols/tls\.py|internet/_newtls\.py"),
    (
        "socket send/recv syscalls",
        r"^untilConcludes |^Connection\.(doRead|_dataReceived) \(twisted/int",
    ),
    ("line splitting (LineReceiver, both sides)", r"protocols/basic\.py"),
    ("client-side HTTP (twisted.web._newclient, client.py)", r"web/_newclient\.py|web/client\.py"),
    (
        "server-side HTTP (twisted.web.http, server.py)",
        r"web/http\.py|web/server\.py|web/resource\.py|web/_abnf\.py",
    ),
    ("headers (twisted.web.http_headers)", r"web/http_headers\.py"),
    ("lbproxy", r"lbproxy/"),
    ("Deferreds", r"internet/defer\.py"),
    ("logging (twisted.logger, log.msg)", r"twisted/logger/|^(msg|err) \(twisted/python/log"),
    (
        "reactor dispatch (epoll, callWithLogger context, write buffers)",
        r"internet/(tcp|epollreactor|posixbase|abstract|base|main)\.py|python/(log|context)\.py",
    ),
    ("attrs / zope.interface", r"attr/|zope/"),
    ("other Twisted", r"twisted/"),
]

# The phase of the request a sample belongs to: the innermost (closest to the
# leaf) frame that matches one of these.
PHASES = [
    (
        "proxy: render, route, choose, rewrite request headers",
        r"^ReverseProxyResource\.render|^_Exchange\.start",
    ),
    (
        "client: Agent.request (URI, pool, write request to backend)",
        r"^Agent\.request|^HTTPConnectionPool\.|^_?\w*HTTP11ClientProtocol\.request|^Request\._write|^Upstream\.request",
    ),
    (
        "client: parse backend response",
        r"^HTTPClientParser\.|^HTTPParser\.|^HTTP11ClientProtocol\.dataReceived|^Response\.",
    ),
    ("proxy: copy response headers, relay body", r"^_Exchange\.(_gotResponse|body)|^_BodyRelay\."),
    (
        "server: write response, finish, log",
        r"^Request\.(write|finish|_cleanup|notifyFinish)|^HTTPChannel\.writeHeaders|^ProxySite\.log|^AccessLog\.",
    ),
    (
        "server: parse request (HTTPChannel)",
        r"^HTTPChannel\.|^ProxyChannel\.|^Request\.(requestReceived|gotLength|parseCookies)",
    ),
    ("TLS handshake (OpenSSL do_handshake)", r"^Connection\.do_handshake \(OpenSSL/"),
    (
        "connection set-up and tear-down (accept, buildProtocol, connectionLost)",
        r"^Port\.doRead|buildProtocol|connectionLost|connectionMade|makeConnection",
    ),
    ("TLS record layer (TLSMemoryBIOProtocol) outside the above", r"^TLSMemoryBIOProtocol\."),
    (
        "reactor: epoll, doRead/doWrite, write buffers",
        r"^EPollReactor\.|^_PollLikeMixin|^FileDescriptor\.|^(Connection|Port)\.\w+ \(twisted/",
    ),
]


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            frames, _, count = line.rpartition(" ")
            stacks.append((frames.split(";"), int(count)))
    return stacks


def area(frame: str) -> str:
    for name, pattern in AREAS:
        if re.search(pattern, frame):
            return name
    return "other (stdlib, interpreter)"


def short(frame: str) -> str:
    # "name (path/to/site-packages/pkg/mod.py:123)" -> "name (pkg/mod.py:123)"
    return re.sub(r"\(.*?site-packages/", "(", frame)


def main(path: str) -> None:
    stacks = parse(path)
    total = sum(c for _, c in stacks)
    selfTime: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        # Collapse the line number so one function is one row.
        selfTime[re.sub(r":\d+\)$", ")", short(leaf))] += count
        areas[area(leaf)] += count
    print(f"# Profile summary: {path}\n")
    print(f"{total} samples of the busy thread (py-spy leaves out idle samples)\n")
    print("## Self time by area (leaf frame's file)\n")
    print("| area | % of samples |\n| --- | --- |")
    for name, count in areas.most_common():
        print(f"| {name} | {100 * count / total:.1f} |")
    phases: collections.Counter[str] = collections.Counter()
    compiled = [(name, re.compile(pattern)) for name, pattern in PHASES]
    for frames, count in stacks:
        phase = "other"
        for frame in reversed(frames):
            match = next((name for name, rx in compiled if rx.search(frame)), None)
            if match:
                phase = match
                break
        phases[phase] += count
    print("\n## Time by request phase (innermost matching frame)\n")
    print("| phase | % of samples |\n| --- | --- |")
    for name, count in phases.most_common():
        print(f"| {name} | {100 * count / total:.1f} |")
    print("\n## Top 30 functions by self time\n")
    print("| function | % self |\n| --- | --- |")
    for name, count in selfTime.most_common(30):
        print(f"| `{name}` | {100 * count / total:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
