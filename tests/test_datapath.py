"""
The data path of the installed C{twistd lbproxy}, end to end: request and
response bodies of real sizes through real clients (curl and Python's
C{http.client}) on loopback sockets, plain and TLS, with one and two
worker processes; C{Expect: 100-continue}; a client that goes away in the
middle of an upload.

The backends (L{tests.servers.DataServer}) run in threads of the test
process and answer the SHA-256 and length of every body they receive;
blocking clients run in threads or as subprocesses, off the reactor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.servers import PIECE, DataServer, Exchange, patternDigest, writePattern
from tests.support import Proxy, logProblems, runClient, startProxy, until

SIZES = (0, 1, 65535, 65537, 1024 * 1024)
"""
Body sizes every combination is tried with: empty, one byte, either side
of 64 KiB, 1 MiB.
"""

BIG = 100 * 1024 * 1024
"""
The large body, tried for a few combinations only.
"""

CLIENT_TIMEOUT = 15.0
"""
Seconds a client waits on its socket (http.client) or for a small
transfer (curl) before the case fails: a hang fails fast.
"""

BIG_TIMEOUT = 60.0
"""
Seconds curl may take over a 100 MiB transfer.
"""

_payloads: dict[int, str] = {}


async def _payload(size: int) -> str:
    """
    The path of a file holding L{tests.servers.pattern}C{(size)}, written
    once per run (into trial's working directory).
    """
    if size not in _payloads:
        directory = os.path.abspath("payloads")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{size}.bin")
        # Two sweeps may ask for one size at once: each writes its own
        # file and renames it into place, so that neither reads a file
        # the other is still writing (one once read 0 bytes of 1).
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        await deferToThread(writePattern, partial, size)
        os.replace(partial, path)
        _payloads[size] = path
    return _payloads[size]


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        raise AssertionError("curl is not installed")
    return curl


def _tlsArgs(proxy: Proxy) -> list[str]:
    return ["--cacert", proxy.caFile] if proxy.caFile is not None else []


def _pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def _postWithHttpClient(proxy: Proxy, target: str, path: str, size: int, chunked: bool) -> str:
    """
    POST the file C{path} (C{size} bytes) with C{http.client}, with
    Content-Length or chunked; return the response body as text, or raise
    on anything but a 200.
    """
    connection = proxy.connection(CLIENT_TIMEOUT)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(size)
        connection.request("POST", target, _pieces(path), headers, encode_chunked=chunked)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise AssertionError(f"status {response.status}: {body[:200]!r}")
    return body.decode("utf-8", "replace")


async def _postWithCurl(proxy: Proxy, target: str, path: str, chunked: bool, timeout: float) -> str:
    """
    POST the file C{path} with C{curl --data-binary @path} (chunked with
    C{-H 'Transfer-Encoding: chunked'}), without C{Expect}; return the
    response body, or raise on anything but a 200.
    """
    argv = [
        _curl(),
        "--silent",
        "--show-error",
        "--max-time",
        str(timeout),
        "--connect-timeout",
        "5",
        *_tlsArgs(proxy),
        "-H",
        "Expect:",
        "-H",
        "Content-Type: application/octet-stream",
        *(["-H", "Transfer-Encoding: chunked"] if chunked else []),
        "--data-binary",
        f"@{path}",
        "--write-out",
        "\n%{http_code}",
        proxy.url + target,
    ]
    result = await runClient(argv, os.path.dirname(path))
    if result.code != 0:
        raise AssertionError(f"curl exited {result.code}: {result.err.strip()}")
    body, _, status = result.out.rpartition("\n")
    if status != "200":
        raise AssertionError(f"status {status}: {body[:200]!r}")
    return body


def _checkHash(body: str, size: int) -> str | None:
    """
    What is wrong with the backend's answer about a body of C{size}
    pattern bytes, or L{None}.
    """
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not the backend's answer: {body[:200]!r}"
    if answer.get("length") != size:
        return f"the backend received {answer.get('length')} bytes"
    if answer.get("sha256") != patternDigest(size):
        return "the backend received other bytes (SHA-256 differs)"
    return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


class _Case(TestCase):
    """
    Shared set-up: a working directory per test.
    """

    timeout = 120

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self._counter = 0

    def newId(self) -> str:
        """
        A fresh request name for the backend's C{id} parameter.
        """
        self._counter += 1
        return f"r{self._counter}"

    def assertNoFailures(self, failures: list[str], proxy: Proxy) -> None:
        """
        Fail listing every failed case and the end of the proxy's log; or
        if the proxy logged an unhandled error.
        """
        problem = logProblems(proxy.process)
        if problem is not None:
            failures = [*failures, f"twistd logged an error:\n{problem}"]
        if failures:
            log = "\n".join(proxy.process.out.splitlines()[-15:])
            self.fail("\n".join(failures) + "\n--- twistd log (end) ---\n" + log)


class RequestBodyTests(_Case):
    """
    Request bodies arrive at the backend whole, whatever their size,
    framing, transport, client or number of workers.
    """

    async def _upload(self, proxy: Proxy, client: str, size: int, chunked: bool) -> str | None:
        path = await _payload(size)
        target = f"/hash?id={self.newId()}"
        try:
            if client == "curl":
                timeout = BIG_TIMEOUT if size >= BIG else CLIENT_TIMEOUT
                body = await _postWithCurl(proxy, target, path, chunked, timeout)
            else:
                body = await deferToThread(_postWithHttpClient, proxy, target, path, size, chunked)
        except Exception as e:
            return _describe(e)
        return _checkHash(body, size)

    async def _sweep(
        self, proxy: Proxy, client: str, chunked: bool, sizes: tuple[int, ...]
    ) -> list[str]:
        """
        Upload each size in turn with C{client}; after the first failure,
        the larger sizes are not tried (each would wait out its timeout).
        """
        failures: list[str] = []
        framing = "chunked" if chunked else "Content-Length"
        scheme = "https" if proxy.tls else "http"
        broken = None
        for size in sizes:
            name = f"{scheme} {client} {framing} {size} bytes"
            if broken is not None:
                failures.append(f"{name}: not tried after {broken} failed")
                continue
            problem = await self._upload(proxy, client, size, chunked)
            if problem is not None:
                failures.append(f"{name}: {problem}")
                broken = f"{size} bytes"
        return failures

    async def _uploads(
        self,
        tls: bool,
        chunked: bool,
        workers: int = 1,
        bigWith: str | None = None,
    ) -> None:
        """
        Upload every size in L{SIZES} with curl and with http.client at
        the same time (and L{BIG} with C{bigWith}); check every answer.
        """
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, tls, workers)
        sweeps = []
        for client in ("curl", "http.client"):
            sizes = SIZES + ((BIG,) if client == bigWith else ())
            sweeps.append(ensureDeferred(self._sweep(proxy, client, chunked, sizes)))
        results = await gatherResults(sweeps, consumeErrors=True)
        self.assertNoFailures([f for failures in results for f in failures], proxy)

    async def test_contentLengthPlain(self) -> None:
        """
        Over plain HTTP with one worker, bodies of 0 B to 1 MiB (and 100
        MiB with curl) sent with Content-Length reach the backend intact.
        """
        await self._uploads(tls=False, chunked=False, bigWith="curl")

    async def test_chunkedPlain(self) -> None:
        """
        Over plain HTTP with one worker, chunked bodies of 0 B to 1 MiB
        reach the backend intact.
        """
        await self._uploads(tls=False, chunked=True)

    async def test_contentLengthTLS(self) -> None:
        """
        Over TLS with one worker, bodies of 0 B to 1 MiB sent with
        Content-Length reach the backend intact.
        """
        await self._uploads(tls=True, chunked=False)

    async def test_chunkedTLS(self) -> None:
        """
        Over TLS with one worker, chunked bodies of 0 B to 1 MiB (and 100
        MiB with http.client) reach the backend intact.
        """
        await self._uploads(tls=True, chunked=True, bigWith="http.client")

    async def test_contentLengthPlainTwoWorkers(self) -> None:
        """
        Over plain HTTP with C{--workers 2}, bodies of 0 B to 1 MiB (and
        100 MiB with http.client) sent with Content-Length reach the
        backend intact.
        """
        await self._uploads(tls=False, chunked=False, workers=2, bigWith="http.client")

    async def test_chunkedPlainTwoWorkers(self) -> None:
        """
        Over plain HTTP with C{--workers 2}, chunked bodies of 0 B to 1 MiB
        reach the backend intact.
        """
        await self._uploads(tls=False, chunked=True, workers=2)

    async def test_contentLengthTLSTwoWorkers(self) -> None:
        """
        Over TLS with C{--workers 2}, bodies of 0 B to 1 MiB sent with
        Content-Length reach the backend intact.
        """
        await self._uploads(tls=True, chunked=False, workers=2)

    async def test_chunkedTLSTwoWorkers(self) -> None:
        """
        Over TLS with C{--workers 2}, chunked bodies of 0 B to 1 MiB (and
        100 MiB with curl) reach the backend intact.
        """
        await self._uploads(tls=True, chunked=True, workers=2, bigWith="curl")


def _download(
    proxy: Proxy,
    target: str,
    paused: threading.Event | None,
    resume: threading.Event | None,
) -> tuple[int, str]:
    """
    GET C{target} with http.client and read the whole body, hashing it;
    with C{paused} and C{resume}, read only 1 KiB of it first, set
    C{paused} and read no more until C{resume} is set. Return the number
    of bytes and their hex SHA-256.
    """
    connection = proxy.connection(CLIENT_TIMEOUT)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        if response.status != 200:
            raise AssertionError(f"status {response.status}: {response.read()[:200]!r}")
        digest = hashlib.sha256()
        length = 0
        if paused is not None and resume is not None:
            first = response.read(1024)
            digest.update(first)
            length += len(first)
            paused.set()
            if not resume.wait(60):
                raise AssertionError("the test never resumed the reader")
        while piece := response.read(PIECE):
            digest.update(piece)
            length += len(piece)
        return length, digest.hexdigest()
    finally:
        connection.close()


class ResponseBodyTests(_Case):
    """
    Response bodies of every size and framing reach clients intact, fast
    readers and readers that pause alike.
    """

    async def _fetch(
        self, proxy: Proxy, backend: DataServer, size: int, chunked: bool, pause: bool
    ) -> str | None:
        name = self.newId()
        framing = "chunked" if chunked else "length"
        target = f"/bytes?n={size}&framing={framing}&id={name}"
        exchange = backend.exchange(name)
        if not pause:
            try:
                length, digest = await deferToThread(_download, proxy, target, None, None)
            except Exception as e:
                return _describe(e)
            return _checkDownload(length, digest, size)
        paused, resume = threading.Event(), threading.Event()
        answer: Deferred[tuple[int, str]] = deferToThread(_download, proxy, target, paused, resume)
        try:
            await until(lambda: paused.is_set() or answer.called, "the reader to pause")
            await until(
                lambda: _heldOrFinished(exchange) or answer.called,
                "the backend to be held back or to finish",
                deadline=30.0,
            )
        except AssertionError as e:
            resume.set()
            answer.addErrback(lambda f: None)
            return str(e)
        finally:
            resume.set()
        try:
            length, digest = await answer
        except Exception as e:
            return _describe(e)
        problem = _checkDownload(length, digest, size)
        if problem is None and size >= BIG and not exchange.stalled.is_set():
            problem = (
                "the backend sent the whole body to a reader that had stopped: "
                "the proxy does not hold the backend back"
            )
        return problem

    async def _curlFetch(self, proxy: Proxy, size: int, chunked: bool) -> str | None:
        framing = "chunked" if chunked else "length"
        out = os.path.join(self.directory, f"download-{self.newId()}")
        argv = [
            _curl(),
            "--silent",
            "--show-error",
            "--max-time",
            str(BIG_TIMEOUT),
            *_tlsArgs(proxy),
            "--output",
            out,
            "--write-out",
            "%{http_code}",
            f"{proxy.url}/bytes?n={size}&framing={framing}&id={self.newId()}",
        ]
        result = await runClient(argv, self.directory)
        if result.code != 0:
            return f"curl exited {result.code}: {result.err.strip()}"
        if result.out != "200":
            return f"status {result.out}"
        length, digest = await deferToThread(_hashFile, out)
        os.remove(out)
        return _checkDownload(length, digest, size)

    async def _downloads(
        self,
        tls: bool,
        pause: bool,
        workers: int = 1,
        big: tuple[tuple[str, bool], ...] = (),
    ) -> None:
        """
        Fetch every size in L{SIZES} with both framings (and L{BIG} with
        each (client, chunked) in C{big}); check every body.
        """
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, tls, workers)
        failures = []
        scheme = "https" if tls else "http"
        reader = "paused reader" if pause else "fast reader"
        cases = [("http.client", chunked, size) for chunked in (False, True) for size in SIZES]
        cases += [(client, chunked, BIG) for client, chunked in big]
        for client, chunked, size in cases:
            framing = "chunked" if chunked else "Content-Length"
            name = f"{scheme} {client} {reader} {framing} {size} bytes"
            if client == "curl":
                problem = await self._curlFetch(proxy, size, chunked)
            else:
                problem = await self._fetch(proxy, backend, size, chunked, pause)
            if problem is not None:
                failures.append(f"{name}: {problem}")
        self.assertNoFailures(failures, proxy)

    async def test_fastReaderPlain(self) -> None:
        """
        Over plain HTTP, bodies of 0 B to 1 MiB with Content-Length and
        chunked (and 100 MiB with Content-Length, to curl) reach a client
        that reads as fast as it can intact.
        """
        await self._downloads(tls=False, pause=False, big=(("curl", False),))

    async def test_fastReaderTLS(self) -> None:
        """
        Over TLS, bodies of 0 B to 1 MiB with Content-Length and chunked
        (and 100 MiB chunked, to curl) reach a client that reads as fast
        as it can intact.
        """
        await self._downloads(tls=True, pause=False, big=(("curl", True),))

    async def test_fastReaderTwoWorkers(self) -> None:
        """
        With C{--workers 2}, bodies of 0 B to 1 MiB with Content-Length
        and chunked reach a fast client intact.
        """
        await self._downloads(tls=False, pause=False, workers=2)

    async def test_pausedReaderPlain(self) -> None:
        """
        Over plain HTTP, a client that reads 1 KiB, stops reading until the
        backend is held back (or has sent everything) and then reads the
        rest gets every body intact; a 100 MiB body holds the backend back.
        """
        await self._downloads(tls=False, pause=True, big=(("http.client", False),))

    async def test_pausedReaderTLS(self) -> None:
        """
        Over TLS, a client that pauses as in L{test_pausedReaderPlain} gets
        every body intact; a 100 MiB chunked body holds the backend back.
        """
        await self._downloads(tls=True, pause=True, big=(("http.client", True),))


def _heldOrFinished(exchange: Exchange) -> bool:
    return exchange.stalled.is_set() or exchange.done.is_set() or exchange.lost.is_set()


def _checkDownload(length: int, digest: str, size: int) -> str | None:
    if length != size:
        return f"received {length} bytes"
    if digest != patternDigest(size):
        return "received other bytes (SHA-256 differs)"
    return None


def _hashFile(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    for piece in _pieces(path):
        digest.update(piece)
        length += len(piece)
    return length, digest.hexdigest()


def _connect(proxy: Proxy) -> socket.socket:
    """
    A raw client socket connected to the proxy (TLS handshake done when
    the proxy speaks TLS).
    """
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT)
    context = proxy.context()
    if context is None:
        return raw
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _finalResponseHead(connection: socket.socket) -> tuple[list[str], bytes]:
    """
    Read responses until a final (non-1xx) head; return the status lines
    seen, in order, and any bytes read after the final head.
    """
    data = b""
    statuses: list[str] = []
    while True:
        while b"\r\n\r\n" not in data:
            piece = connection.recv(PIECE)
            if not piece:
                raise AssertionError(f"connection closed after {statuses} {data[:200]!r}")
            data += piece
        head, _, data = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        statuses.append(status)
        if not status.split(" ")[1].startswith("1"):
            return statuses, data


def _expectWithoutBody(proxy: Proxy, target: str, size: int) -> list[str]:
    """
    Send a request head announcing C{size} body bytes with C{Expect:
    100-continue}, then no body; return the status lines of the responses
    up to the final one.
    """
    with _connect(proxy) as connection:
        connection.sendall(
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode("ascii")
        )
        statuses, _ = _finalResponseHead(connection)
        return statuses


class ExpectContinueTests(_Case):
    """
    C{Expect: 100-continue} uploads: the client gets C{100 Continue} and
    the body arrives; a backend's early refusal reaches the client.
    """

    async def _curlExpect(self, proxy: Proxy, target: str, size: int) -> tuple[str, str, str]:
        """
        POST C{size} pattern bytes with C{Expect: 100-continue}, curl
        waiting up to 10 s for the C{100 Continue}; return the status, the
        body and curl's verbose output.
        """
        path = await _payload(size)
        argv = [
            _curl(),
            "--verbose",
            "--silent",
            "--show-error",
            "--max-time",
            str(CLIENT_TIMEOUT),
            "--expect100-timeout",
            "10",
            *_tlsArgs(proxy),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{path}",
            "--write-out",
            "\n%{http_code}",
            proxy.url + target,
        ]
        result = await runClient(argv, self.directory)
        if result.code != 0:
            raise AssertionError(f"curl exited {result.code}: {result.err.strip()[-600:]}")
        body, _, status = result.out.rpartition("\n")
        return status, body, result.err

    async def _uploadsIntact(self, tls: bool, *proxyArgs: str) -> None:
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, tls, extra=proxyArgs)
        failures = []
        for size in (65537, 1024 * 1024, 8 * 1024 * 1024):
            name = f"{proxy.url} Expect: 100-continue {size} bytes"
            try:
                status, body, verbose = await self._curlExpect(
                    proxy, f"/hash?id={self.newId()}", size
                )
            except Exception as e:
                failures.append(f"{name}: {_describe(e)}")
                continue
            # Over HTTP/2 (curl's choice when lbproxy offers h2) a 100 has
            # no reason phrase.
            if not ("< HTTP/1.1 100 Continue" in verbose or "< HTTP/2 100" in verbose):
                failures.append(f"{name}: no 100 Continue within 10 s")
            if status != "200":
                failures.append(f"{name}: status {status}: {body[:200]!r}")
                continue
            problem = _checkHash(body, size)
            if problem is not None:
                failures.append(f"{name}: {problem}")
        self.assertNoFailures(failures, proxy)

    async def test_expectContinuePlain(self) -> None:
        """
        Over plain HTTP, curl sending 64 KiB + 1, 1 MiB and 8 MiB with
        C{Expect: 100-continue} gets C{100 Continue} and the backend gets
        every body intact.
        """
        await self._uploadsIntact(tls=False)

    async def test_expectContinueTLS(self) -> None:
        """
        Over TLS, curl sending 64 KiB + 1, 1 MiB and 8 MiB with C{Expect:
        100-continue} gets C{100 Continue} and the backend gets every body
        intact.
        """
        await self._uploadsIntact(tls=True)

    async def test_expectContinueHTTP2(self) -> None:
        """
        Over TLS with HTTP/2 (C{--http2 on}, which curl then picks), curl
        sending 64 KiB + 1, 1 MiB and 8 MiB with C{Expect: 100-continue}
        gets the C{100} and the backend gets every body intact.
        """
        await self._uploadsIntact(True, "--http2", "on")

    async def _refused(self, tls: bool) -> None:
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, tls)
        failures = []
        size = 8 * 1024 * 1024
        try:
            status, body, _ = await self._curlExpect(proxy, "/reject", size)
            if status != "413":
                failures.append(f"curl: status {status}, not 413: {body[:200]!r}")
        except Exception as e:
            failures.append(f"curl: {_describe(e)}")
        try:
            statuses = await deferToThread(_expectWithoutBody, proxy, "/reject", size)
            if not statuses[-1].startswith("HTTP/1.1 413"):
                failures.append(f"head only: got {statuses}, not a 413")
        except Exception as e:
            failures.append(
                f"head only: no final answer without the body ({_describe(e)}): the proxy "
                "did not forward the request head before the body"
            )
        self.assertNoFailures(failures, proxy)

    async def test_refusedAtOncePlain(self) -> None:
        """
        Over plain HTTP, when the backend answers 413 at once to an 8 MiB
        upload with C{Expect: 100-continue}, without reading it, the client
        gets that 413: curl, and a client that never sends the body.
        """
        await self._refused(tls=False)

    async def test_refusedAtOnceTLS(self) -> None:
        """
        Over TLS, when the backend answers 413 at once to an 8 MiB upload
        with C{Expect: 100-continue}, the client gets that 413: curl, and a
        client that never sends the body.
        """
        await self._refused(tls=True)


def _startUpload(proxy: Proxy, target: str, size: int, send: int) -> socket.socket:
    """
    Open a connection and send a request head announcing C{size} body
    bytes, then only the first C{send} of them; return the connection.
    """
    connection = _connect(proxy)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    connection.sendall(head.encode("ascii"))
    for piece in _pieces(_payloads[1024 * 1024]):
        if send <= 0:
            break
        connection.sendall(piece[:send])
        send -= len(piece)
    return connection


def _abort(connection: socket.socket, reset: bool) -> None:
    """
    Close C{connection}; with C{reset}, with a TCP reset instead of a FIN.
    """
    if reset:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


class ClientGoneTests(_Case):
    """
    A client that disconnects in the middle of an upload costs the proxy
    that request only.
    """

    async def _clientGone(self, tls: bool, reset: bool) -> None:
        backend = DataServer(self)
        proxy = await startProxy(self, self.directory, backend.authority, tls)
        await _payload(1024 * 1024)
        failures = []
        exchange = backend.exchange("gone")
        connection = await deferToThread(
            _startUpload, proxy, "/hash?id=gone", 64 * 1024 * 1024, 1024 * 1024
        )
        try:
            await until(
                lambda: exchange.received > 0,
                "the backend to receive the start of the upload (the proxy streams bodies)",
                deadline=CLIENT_TIMEOUT,
            )
        except AssertionError as e:
            failures.append(str(e))
        _abort(connection, reset)
        if exchange.arrived.is_set():
            try:
                await until(
                    exchange.lost.is_set,
                    "the backend's connection to be closed after the client left",
                    deadline=CLIENT_TIMEOUT,
                )
            except AssertionError as e:
                failures.append(f"{e}; the backend received {exchange.received} bytes")
        path = _payloads[1024 * 1024]
        try:
            body = await deferToThread(
                _postWithHttpClient, proxy, "/hash?id=next", path, 1024 * 1024, False
            )
            problem = _checkHash(body, 1024 * 1024)
            if problem is not None:
                failures.append(f"the next request: {problem}")
        except Exception as e:
            failures.append(f"the next request: {_describe(e)}")
        self.assertNoFailures(failures, proxy)

    async def test_clientResetsMidUploadPlain(self) -> None:
        """
        Over plain HTTP, when a client resets its connection after 1 MiB of
        a 64 MiB upload, the backend's connection for it is closed too and
        the next request is served.
        """
        await self._clientGone(tls=False, reset=True)

    async def test_clientClosesMidUploadTLS(self) -> None:
        """
        Over TLS, when a client closes its connection after 1 MiB of a 64
        MiB upload, the backend's connection for it is closed too and the
        next request is served.
        """
        await self._clientGone(tls=True, reset=False)
