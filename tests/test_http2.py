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
import shutil
import subprocess

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.servers import DataServer, patternDigest, writePattern
from tests.support import Proxy, logProblems, residentBytes, runClient, startProxy, until

try:
    import httpx
except ImportError:  # pragma: no cover - the dev extras bring it
    httpx = None  # type: ignore[assignment]

MiB = 1024 * 1024


def _curlHasHTTP2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    version = subprocess.run([curl, "-V"], capture_output=True, text=True, check=False).stdout
    return "HTTP2" in version


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

    async def test_getSizes(self) -> None:
        """
        GETs of 0 bytes to 100 MiB over TLS arrive whole over HTTP/2.
        """
        proxy = await self.start()
        for size in (0, 1, 65535, 65537, MiB, 100 * MiB):
            argv = [
                *self.curlArgs(proxy),
                "--output",
                "-",
                "--write-out",
                "%{http_version} %{http_code}",
                f"{proxy.url}/bytes?n={size}&id=g{size}",
            ]
            result = await deferToThread(
                subprocess.run, argv, capture_output=True, check=False, timeout=120
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            tail = result.stdout[-5:]
            body = result.stdout[:-5]
            self.assertEqual(tail, b"2 200", (size, result.stdout[-40:]))
            self.assertEqual(len(body), size)
            self.assertEqual(hashlib.sha256(body).hexdigest(), patternDigest(size))
        self.assertClean(proxy)

    async def test_post(self) -> None:
        """
        POST bodies of 0 to 100 MiB go to the backend whole over HTTP/2 (its
        answer is their length and SHA-256).
        """
        proxy = await self.start()
        for size in (0, 1, 65537, MiB, 100 * MiB):
            path = os.path.join(self.directory, f"{size}.bin")
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
