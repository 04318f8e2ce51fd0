"""
HTTP/2 through the installed C{twistd lbproxy --http2 on}, end to end:
C{curl --http2} and C{httpx} over TLS (ALPN h2), C{curl
--http2-prior-knowledge} over h2c, C{h2load} for many streams on one
connection; bodies of real sizes both ways, the forwarding headers the
backend sees, the access log line, and the memory a slow reader costs.

The backends (L{tests.servers.DataServer}) run in threads of the test
process; blocking clients run in threads or as subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.servers import DataServer, pattern, patternDigest, writePattern
from tests.support import (
    Proxy,
    Twistd,
    freePort,
    logProblems,
    makeCertificates,
    residentBytes,
    runClient,
    startProxy,
    until,
)
from tests.test_http2_attacks import READ_DEADLINE, RawH2

try:
    import httpx
except ImportError:  # pragma: no cover - the dev extras bring it
    httpx = None  # type: ignore[assignment]

MiB = 1024 * 1024

SIZES = (0, 1, 65535, 65537, MiB, 16 * MiB)
"""
Body sizes every client and transport is tried with: empty, one byte,
either side of 64 KiB (the default window), 1 MiB, 16 MiB.
"""

BIG = 100 * MiB
"""
The large body: once per direction per transport, with curl.
"""


def _curlHasHTTP2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    version = subprocess.run([curl, "-V"], capture_output=True, text=True, check=False).stdout
    return "HTTP2" in version


def _fileDigest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class _Case(TestCase):
    """
    A backend, and C{twistd lbproxy --http2 on} in front of it.
    """

    timeout = 180

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.server = DataServer(self)

    async def start(self, tls: bool = True, *extra: str) -> Proxy:
        log = os.path.join(self.directory, "access.log")
        self.accessLog = log
        return await startProxy(
            self,
            self.directory,
            self.server.authority,
            tls,
            extra=("--http2", "on", "--access-log", log, *extra),
        )

    def curlArgs(self, proxy: Proxy) -> list[str]:
        if not _curlHasHTTP2():
            raise SkipTest("curl without HTTP2 (curl -V lists no HTTP2)")
        curl = shutil.which("curl")
        assert curl is not None
        tls = ["--cacert", proxy.caFile] if proxy.caFile is not None else []
        version = "--http2" if proxy.tls else "--http2-prior-knowledge"
        return [curl, "--silent", "--show-error", "--max-time", "60", version, *tls]

    def assertClean(self, proxy: Proxy) -> None:
        problem = logProblems(proxy.process)
        if problem is not None:
            self.fail(f"twistd logged an error:\n{problem}")


class CurlTests(_Case):
    """
    C{curl} speaks HTTP/2 to lbproxy and gets the backend's answers.
    """

    async def download(self, proxy: Proxy, size: int) -> None:
        """
        GET C{size} bytes with curl over HTTP/2: they arrive whole, in
        order (the SHA-256 of the pattern).
        """
        path = os.path.join(self.directory, "download.bin")
        argv = [
            *self.curlArgs(proxy),
            "--output",
            path,
            "--write-out",
            "%{http_version} %{http_code}",
            f"{proxy.url}/bytes?n={size}&id=g{size}",
        ]
        result = await runClient(argv, self.directory)
        self.assertEqual((result.code, result.out), (0, "2 200"), (size, result.err))
        self.assertEqual(os.path.getsize(path), size)
        self.assertEqual(await deferToThread(_fileDigest, path), patternDigest(size), size)

    async def upload(self, proxy: Proxy, size: int) -> None:
        """
        POST C{size} bytes with curl over HTTP/2: the backend's answer is
        their length and SHA-256.
        """
        path = os.path.join(self.directory, f"{size}.bin")
        if not os.path.exists(path):
            await deferToThread(writePattern, path, size)
        argv = [
            *self.curlArgs(proxy),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{path}",
            f"{proxy.url}/up?id=p{size}",
        ]
        result = await runClient(argv, self.directory)
        self.assertEqual(result.code, 0, result.err)
        answer = json.loads(result.out)
        self.assertEqual(answer, {"length": size, "sha256": patternDigest(size)})

    async def test_getSizes(self) -> None:
        """
        GETs of 0 bytes to 100 MiB (0, 1, 64 KiB either side, 1, 16 and
        100 MiB) over TLS arrive whole over HTTP/2.
        """
        proxy = await self.start()
        for size in (*SIZES, BIG):
            await self.download(proxy, size)
        self.assertClean(proxy)

    async def test_post(self) -> None:
        """
        POST bodies of 0 to 100 MiB go to the backend whole over HTTP/2
        and TLS (its answer is their length and SHA-256).
        """
        proxy = await self.start()
        for size in (*SIZES, BIG):
            await self.upload(proxy, size)
        self.assertClean(proxy)

    async def test_tooLargeAnswered(self) -> None:
        """
        An upload above C{--max-body} is answered 413 before its body is
        taken, and curl over HTTP/2 (TLS and h2c) shows that answer: the
        stream's reset waits until the client has read it.
        """
        path = os.path.join(self.directory, "big.bin")
        await deferToThread(writePattern, path, 2 * MiB)
        for tls, extra in ((True, ()), (False, ("--h2c",))):
            proxy = await self.start(tls, "--max-body", "1M", *extra)
            argv = [
                *self.curlArgs(proxy),
                "--write-out",
                "\\n%{http_version} %{http_code}",
                "--data-binary",
                f"@{path}",
                f"{proxy.url}/up?id=big",
            ]
            result = await runClient(argv, self.directory)
            self.assertEqual(result.code, 0, result.err)
            self.assertTrue(result.out.startswith("413 Content Too Large"), result.out)
            self.assertTrue(result.out.endswith("\n2 413"), result.out)
            self.assertClean(proxy)

    async def test_h2cSizes(self) -> None:
        """
        Over h2c (prior knowledge, plain), bodies of 0 bytes to 100 MiB
        arrive whole both ways.
        """
        proxy = await self.start(False, "--h2c")
        for size in (*SIZES, BIG):
            await self.download(proxy, size)
            await self.upload(proxy, size)
        self.assertClean(proxy)

    async def test_forwardingAndLog(self) -> None:
        """
        The backend sees the Host from C{:authority} and the forwarding
        headers; the access log line says HTTP/2.
        """
        proxy = await self.start()
        argv = [*self.curlArgs(proxy), f"{proxy.url}/bytes?n=0&id=fwd"]
        result = await runClient(argv, self.directory)
        self.assertEqual(result.code, 0, result.err)
        headers = self.server.exchange("fwd").headers
        self.assertEqual(headers["host"], f"127.0.0.1:{proxy.port}")
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(headers["x-forwarded-proto"], "https")
        await until(lambda: os.path.exists(self.accessLog), "the access log")
        await until(lambda: "id=fwd" in _read(self.accessLog), "the request's log line")
        line = next(x for x in _read(self.accessLog).splitlines() if "id=fwd" in x)
        self.assertIn('"GET /bytes?n=0&id=fwd HTTP/2" 200', line)

    async def test_h2c(self) -> None:
        """
        With C{--h2c}, a plain listener takes prior-knowledge HTTP/2, and
        HTTP/1.1 still.
        """
        proxy = await self.start(False, "--h2c")
        for extra in ([], ["--http1.1"]):
            args = [a for a in self.curlArgs(proxy) if a != "--http2-prior-knowledge" or not extra]
            argv = [*args, *extra, "--write-out", " %{http_version}", f"{proxy.url}/?id=c"]
            result = await runClient(argv, self.directory)
            self.assertEqual(result.code, 0, result.err)
            self.assertTrue(result.out.endswith(" 1.1" if extra else " 2"), result.out)

    async def test_http11Fallback(self) -> None:
        """
        A client that offers only http/1.1 in ALPN is served HTTP/1.1.
        """
        proxy = await self.start()
        args = [a for a in self.curlArgs(proxy) if a != "--http2"]
        argv = [*args, "--http1.1", "--write-out", " %{http_version}", f"{proxy.url}/?id=f"]
        result = await runClient(argv, self.directory)
        self.assertEqual(result.code, 0, result.err)
        self.assertTrue(result.out.endswith(" 1.1"), result.out)


class HttpxTests(_Case):
    """
    Python's C{httpx} with HTTP/2.
    """

    async def test_concurrentStreams(self) -> None:
        """
        100 requests on one HTTP/2 connection at once, GETs and POSTs, are
        each answered.
        """
        if httpx is None:
            raise SkipTest("httpx is not installed (pip install 'httpx[http2]')")
        proxy = await self.start()
        assert proxy.caFile is not None
        caFile = proxy.caFile
        url = proxy.url

        def run() -> list[tuple[str, int, bytes]]:
            import asyncio

            async def main() -> list[tuple[str, int, bytes]]:
                async with httpx.AsyncClient(http2=True, verify=caFile, timeout=60) as client:

                    async def one(i: int) -> tuple[str, int, bytes]:
                        if i % 2:
                            r = await client.post(f"{url}/up?id=h{i}", content=b"x" * (i * 1000))
                        else:
                            r = await client.get(f"{url}/bytes?n={i * 1000}&id=h{i}")
                        return r.http_version, r.status_code, r.content

                    return list(await asyncio.gather(*(one(i) for i in range(100))))

            return asyncio.run(main())

        results = await deferToThread(run)
        for i, (version, status, content) in enumerate(results):
            self.assertEqual((version, status), ("HTTP/2", 200), proxy.process.out[-3000:])
            if i % 2:
                self.assertEqual(json.loads(content)["length"], i * 1000)
            else:
                self.assertEqual(len(content), i * 1000)
        self.assertClean(proxy)


def _httpxSizes(url: str, verify: ssl.SSLContext | bool, tls: bool) -> list[str]:
    """
    With one httpx HTTP/2 client (ALPN on TLS, prior knowledge on h2c),
    GET and POST each of L{SIZES}, checking digests; what went wrong.
    """
    failures = []
    with httpx.Client(http1=tls, http2=True, verify=verify, timeout=60) as client:
        for size in SIZES:
            digest = hashlib.sha256()
            with client.stream("GET", f"{url}/bytes?n={size}&id=x{size}") as response:
                for piece in response.iter_bytes():
                    digest.update(piece)
                got = (response.http_version, response.status_code, digest.hexdigest())
            if got != ("HTTP/2", 200, patternDigest(size)):
                failures.append(f"GET {size}: {got}")
            # A generator: sent without a length, as DATA frames to the end.
            response = client.post(f"{url}/up?id=u{size}", content=pattern(size))
            answer = (response.http_version, response.status_code, response.json())
            if answer != ("HTTP/2", 200, {"length": size, "sha256": patternDigest(size)}):
                failures.append(f"POST {size}: {answer}")
    return failures


def _httpxConcurrent(url: str, verify: ssl.SSLContext, count: int, size: int) -> list[str]:
    """
    C{count} GETs and C{count} POSTs of C{size} bytes at once on one httpx
    HTTP/2 connection, checking digests; what went wrong.
    """
    import asyncio

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(http2=True, verify=verify, timeout=60, limits=limits) as c:

            async def get(i: int) -> str | None:
                digest = hashlib.sha256()
                async with c.stream("GET", f"{url}/bytes?n={size}&id=cg{i}") as response:
                    async for piece in response.aiter_bytes():
                        digest.update(piece)
                ok = response.http_version == "HTTP/2" and digest.hexdigest() == patternDigest(size)
                return None if ok else f"GET {i}: {response.http_version} {response.status_code}"

            async def post(i: int) -> str | None:
                body = b"".join(pattern(size))
                response = await c.post(f"{url}/up?id=cp{i}", content=body)
                expected = {"length": size, "sha256": patternDigest(size)}
                ok = response.http_version == "HTTP/2" and response.json() == expected
                return None if ok else f"POST {i}: {response.status_code} {response.text[:200]}"

            results = await asyncio.gather(
                *(get(i) for i in range(count)), *(post(i) for i in range(count))
            )
            return [r for r in results if r is not None]

    return asyncio.run(main())


class MatrixTests(_Case):
    """
    The body-size matrix with httpx, over TLS and h2c, and many MiBs on
    concurrent streams of one connection.
    """

    def setUp(self) -> None:
        if httpx is None:
            raise SkipTest("httpx is not installed (pip install 'httpx[http2]')")
        super().setUp()

    async def test_httpxTLS(self) -> None:
        """
        httpx over TLS (ALPN h2): GETs and POSTs of 0 bytes to 16 MiB are
        whole both ways.
        """
        proxy = await self.start()
        context = proxy.context()
        assert context is not None
        failures = await deferToThread(_httpxSizes, proxy.url, context, True)
        self.assertEqual(failures, [])
        self.assertClean(proxy)

    async def test_httpxH2c(self) -> None:
        """
        httpx over h2c (prior knowledge): GETs and POSTs of 0 bytes to 16
        MiB are whole both ways.
        """
        proxy = await self.start(False, "--h2c")
        failures = await deferToThread(_httpxSizes, proxy.url, False, False)
        self.assertEqual(failures, [])
        self.assertClean(proxy)

    async def test_concurrentMiBs(self) -> None:
        """
        Eight streams at once on one connection, four downloading and four
        uploading 4 MiB each, each arrive whole (SHA-256 both ways).
        """
        proxy = await self.start()
        context = proxy.context()
        assert context is not None
        failures = await deferToThread(_httpxConcurrent, proxy.url, context, 4, 4 * MiB)
        self.assertEqual(failures, [])
        self.assertClean(proxy)


class LoadTests(_Case):
    """
    Many streams on few connections, with C{h2load}; and the memory a
    slow reader costs.
    """

    async def test_h2load(self) -> None:
        """
        h2load's 2000 requests over 4 connections of 16 streams each all
        succeed.
        """
        h2load = shutil.which("h2load")
        if h2load is None:
            raise SkipTest("no h2load (Debian's nghttp2-client)")
        proxy = await self.start()
        argv = [h2load, "-n", "2000", "-c", "4", "-m", "16", f"{proxy.url}/?id=load"]
        result = await runClient(argv, self.directory)
        self.assertEqual(result.code, 0, result.err)
        self.assertIn("2000 succeeded, 0 failed, 0 errored", result.out)
        self.assertClean(proxy)

    async def test_slowReadersMemory(self) -> None:
        """
        100 streams of 100 MiB each on one connection whose client reads
        nothing add at most 64 MiB to lbproxy's memory: each stream's
        backend is paused once its window and buffer are full.
        """
        if httpx is None:
            raise SkipTest("httpx is not installed")
        import socket
        import ssl

        import h2.config
        import h2.connection

        proxy = await self.start()
        await until(lambda: residentBytes(proxy.process.pid) > 0, "the proxy's memory")
        before = residentBytes(proxy.process.pid)
        assert proxy.caFile is not None
        context = ssl.create_default_context(cafile=proxy.caFile)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", proxy.port))
        sock = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for i in range(100):
            conn.send_headers(
                conn.get_next_available_stream_id(),
                [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", f"/bytes?n={100 * MiB}&id=s{i}"),
                ],
                end_stream=True,
            )
        sock.sendall(conn.data_to_send())
        await until(
            lambda: sum(self.server.exchange(f"s{i}").stalled.is_set() for i in range(100)) == 100,
            "every backend held back",
            deadline=60,
        )
        grown = residentBytes(proxy.process.pid) - before
        self.assertLess(grown, 64 * MiB, f"grew by {grown / MiB:.1f} MiB")
        self.assertClean(proxy)


class RawBackend:
    """
    A one-thread HTTP/1.1 backend on 127.0.0.2 that answers every request
    with the same bytes (interim responses included, written as they are),
    closing the connection after each; while L{hold} is clear it waits
    (at most L{READ_DEADLINE} seconds) before answering.

    @ivar arrived: Set when a request head has arrived.
    @ivar hold: Cleared to hold requests; set to answer them.
    """

    def __init__(self, testCase: TestCase, answer: bytes) -> None:
        self.answer = answer
        self.arrived = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self._listener = socket.create_server(("127.0.0.2", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        testCase.addCleanup(self._stop)

    @property
    def authority(self) -> str:
        """
        Its C{host:port}.
        """
        return f"127.0.0.2:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        # Bounded: 0.2 s per wait for a connection, for at most 2 minutes.
        for _ in range(600):
            if self._stopping.is_set():
                return
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(READ_DEADLINE)
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        data = connection.recv(65536)
                        if not data:
                            break
                        head += data
                    self.arrived.set()
                    self.hold.wait(READ_DEADLINE)
                    connection.sendall(self.answer)
                except OSError:
                    continue

    def _stop(self) -> Deferred[None]:
        self._stopping.set()
        self.hold.set()
        self._listener.close()
        return deferToThread(self._thread.join, 5)


def _served(process: Twistd, prefix: str) -> dict[str, int]:
    """
    The workers' pids by the ID of each HTTP/2 request they logged whose
    ID starts with C{prefix}.
    """
    line = r'\[worker \d+ pid (\d+)\] 127\.0\.0\.1 "GET /bytes\?n=10&id=({}\d+) HTTP/2" 200'
    found = re.findall(line.format(re.escape(prefix)), process.out)
    return {name: int(pid) for pid, name in found}


def _logged(process: Twistd, count: int) -> Callable[[], bool]:
    """
    Whether C{count} requests have been logged (see L{_served}).
    """
    return lambda: len(_served(process, "w")) == count


def _metric(port: int, name: str) -> float:
    """
    The sum of metric C{name}'s samples on C{127.0.0.1:port}/metrics.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def _get(proxy: Proxy, path: str) -> tuple[str | None, int | None, bytes]:
    client = RawH2(proxy)
    try:
        status, body = client.get(path)
    finally:
        client.close()
    return client.alpn, status, body


class WorkersTests(TestCase):
    """
    C{--workers 2} with HTTP/2: each worker serves HTTP/2 (TLS and h2c),
    logs it, and is counted in the supervisor's metrics.
    """

    timeout = 180

    async def serveBoth(self, tls: bool) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = DataServer(self)
        metrics = freePort()
        flags = ("--http2", "on") if tls else ("--http2", "on", "--h2c")
        proxy = await startProxy(
            self,
            directory,
            server.authority,
            tls,
            workers=2,
            extra=(*flags, "--metrics", f"tcp:{metrics}:interface=127.0.0.1"),
        )
        made = 0
        # New connections until both workers have served some (the kernel
        # spreads them): at most 20 rounds of 6.
        for _ in range(20):
            paths = [f"/bytes?n=10&id=w{made + i}" for i in range(6)]
            made += len(paths)
            answers = await gatherResults([deferToThread(_get, proxy, p) for p in paths])
            expected = ("h2" if tls else None, 200, b"".join(pattern(10)))
            self.assertEqual(set(answers), {expected})
            await until(_logged(proxy.process, made), "the log lines")
            if len(set(_served(proxy.process, "w").values())) == 2:
                break
        pids = set(_served(proxy.process, "w").values())
        self.assertEqual(len(pids), 2, proxy.process.out[-2000:])
        self.assertNotIn(proxy.process.pid, pids)
        counted = await deferToThread(_metric, metrics, "lbproxy_backend_requests_total")
        self.assertEqual(counted, made)
        problem = logProblems(proxy.process)
        self.assertIsNone(problem, problem)

    async def test_tls(self) -> None:
        """
        Over TLS, connections spread over two workers all negotiate h2 and
        are served; the access log says HTTP/2 with each worker's pid; the
        metrics count every request.
        """
        await self.serveBoth(True)

    async def test_h2c(self) -> None:
        """
        With C{--h2c}, both workers take prior-knowledge HTTP/2.
        """
        await self.serveBoth(False)


class LimitsTests(_Case):
    """
    The HTTP/2 limits, set in a config file, reach the clients of every
    worker.
    """

    async def test_configFileLimits(self) -> None:
        """
        C{http2-max-concurrent-streams}, C{http2-initial-window-size} and
        C{http2-max-frame-size} in the config file are what each worker
        advertises in its SETTINGS.
        """
        path = os.path.join(self.directory, "lbproxy.toml")
        with open(path, "w") as f:
            f.write(
                'http2 = "on"\nhttp2-max-concurrent-streams = 7\n'
                'http2-initial-window-size = "1M"\nhttp2-max-frame-size = 32768\n'
            )
        proxy = await startProxy(
            self, self.directory, self.server.authority, True, workers=2, extra=("--config", path)
        )

        def settings() -> tuple[int | None, int, int, int]:
            client = RawH2(proxy)
            try:
                status, _ = client.get("/bytes?n=10&id=limits")
                remote = client.h2.remote_settings
                return (
                    status,
                    remote.max_concurrent_streams,
                    remote.initial_window_size,
                    remote.max_frame_size,
                )
            finally:
                client.close()

        for _ in range(4):
            self.assertEqual(await deferToThread(settings), (200, 7, 1024 * 1024, 32768))
        self.assertClean(proxy)


class LifecycleTests(_Case):
    """
    Certificate reload, idle and handshake timeouts and graceful drain,
    with HTTP/2 connections on real sockets.
    """

    async def test_certificateReload(self) -> None:
        """
        After the certificate files are replaced and SIGHUP reloads them, a
        new connection negotiates h2 and is shown the new certificate; an
        HTTP/2 connection open across the reload keeps working.
        """
        proxy = await self.start()
        old = RawH2(proxy)
        self.addCleanup(old.close)
        self.assertEqual(old.alpn, "h2")
        self.assertEqual((await deferToThread(old.get, "/bytes?n=10&id=before"))[0], 200)
        fresh = os.path.join(self.directory, "fresh")
        await makeCertificates(fresh)
        certs = os.path.join(self.directory, "certs")
        for name in ("loadbalancer.key", "loadbalancer.crt"):
            shutil.copy(os.path.join(fresh, name), os.path.join(certs, name + ".new"))
            os.replace(os.path.join(certs, name + ".new"), os.path.join(certs, name))
        proxy.process.signal("HUP")
        await until(lambda: "TLS certificates reloaded" in proxy.process.out, "the reload")
        new = await deferToThread(RawH2, proxy, None, True, None, os.path.join(fresh, "ca.crt"))
        self.addCleanup(new.close)
        with open(os.path.join(fresh, "loadbalancer.crt")) as f:
            expected = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertEqual((new.alpn, new.certificate), ("h2", expected))
        self.assertNotEqual(old.certificate, expected)
        self.assertEqual((await deferToThread(new.get, "/bytes?n=10&id=new"))[0], 200)
        self.assertEqual((await deferToThread(old.get, "/bytes?n=10&id=after"))[0], 200)
        self.assertClean(proxy)

    async def test_idleTimeout(self) -> None:
        """
        An HTTP/2 connection idle for C{--client-idle-timeout} gets GOAWAY
        (NO_ERROR, naming its last stream) and is closed.
        """
        proxy = await self.start(True, "--client-idle-timeout", "1")

        def idle() -> tuple[RawH2, int | None, float]:
            client = RawH2(proxy)
            status, _ = client.get("/bytes?n=10&id=idle")
            started = time.monotonic()
            client.readToClose(deadline=15)
            client.close()
            return client, status, time.monotonic() - started

        client, status, waited = await deferToThread(idle)
        self.assertEqual(status, 200)
        self.assertTrue(client.closed)
        self.assertEqual(client.goAway(), (1, ErrorCodes.NO_ERROR))
        self.assertGreater(waited, 0.5)
        self.assertClean(proxy)

    async def test_handshakeTimeout(self) -> None:
        """
        A TLS client that offers h2 in its ClientHello and never finishes
        the handshake is dropped after C{--handshake-timeout}.
        """
        proxy = await self.start(True, "--handshake-timeout", "1")
        waited = await deferToThread(_stalledHandshake, proxy.port)
        self.assertGreater(waited, 0.5)
        self.assertLess(waited, 10)
        await deferToThread(_get, proxy, "/bytes?n=10&id=after")
        self.assertClean(proxy)

    async def test_drain(self) -> None:
        """
        On SIGTERM, an HTTP/2 connection with a stream in progress gets
        GOAWAY (NO_ERROR, naming that stream); the stream then completes,
        the connection closes, and twistd exits 0. (nghttp shows the
        frames; h2's own client reads nothing after a GOAWAY.)
        """
        nghttp = shutil.which("nghttp")
        if nghttp is None:
            raise SkipTest("no nghttp (Debian's nghttp2-client)")
        backend = RawBackend(self, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        backend.hold.clear()
        proxy = await startProxy(
            self, self.directory, backend.authority, True, extra=("--http2", "on")
        )
        running = ensureDeferred(runClient([nghttp, "-v", f"{proxy.url}/held"], self.directory))
        await deferToThread(backend.arrived.wait, READ_DEADLINE)
        proxy.process.signal("TERM")
        await until(lambda: "draining" in proxy.process.out, "the drain to start")
        backend.hold.set()
        client = await running
        self.assertEqual(client.code, 0, client.combined)
        out = client.out
        goAway = re.search(r"recv GOAWAY .*\n.*last_stream_id=(\d+), error_code=([A-Z_]+)", out)
        assert goAway is not None, out
        answered = re.search(r"recv \(stream_id=(\d+)\) :status: 200", out)
        assert answered is not None, out
        self.assertEqual(goAway.groups(), (answered.group(1), "NO_ERROR"))
        self.assertGreater(out.find("recv DATA frame"), goAway.start(), out)
        self.assertIn("hello", out)
        result = await proxy.process.exited()
        self.assertEqual((result.code, result.signal), (0, None), result.combined)
        self.assertNotIn("Traceback", result.combined)


def _stalledHandshake(port: int) -> float:
    """
    Send a ClientHello offering h2 and http/1.1 and nothing more; the
    seconds until the server closes the connection.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", port), timeout=READ_DEADLINE) as sock:
        started = time.monotonic()
        sock.sendall(hello)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
        return time.monotonic() - started


class InterimTests(_Case):
    """
    Interim (1xx) responses reach HTTP/2 clients.
    """

    async def test_earlyHints(self) -> None:
        """
        A backend's C{103 Early Hints} reaches an HTTP/2 client as an
        informational HEADERS frame (with its Link), before the final 200.
        """
        backend = RawBackend(
            self,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        )
        proxy = await startProxy(
            self, self.directory, backend.authority, True, extra=("--http2", "on")
        )
        client = RawH2(proxy)
        self.addCleanup(client.close)
        streamId = await deferToThread(client.request, "/hinted")
        await deferToThread(client.readUntil, lambda: client.ended(streamId))
        status, _, body = client.response(streamId)
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(
            client.informational(streamId),
            [{b":status": b"103", b"link": b"</s.css>; rel=preload"}],
        )
        self.assertClean(proxy)
