"""
Prometheus metrics end to end, through the installed C{twistd lbproxy}:
scrapes of C{--metrics} (and of the admin API's C{GET /metrics}) before
and after known traffic move by exactly that traffic, on plain and TLS
listeners; health and ejection show in the gauges; C{--workers 2} sums
the workers into one scrape; C{--metrics} serves nothing but
C{GET /metrics}.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping

import attrs
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from tests.metricssupport import (
    UPLOAD_ANSWER,
    Exposition,
    StatusBackend,
    bodyFor,
    connectAndClose,
    exchangeFor,
    exchangeStatus,
    hold,
    rawScrape,
    request,
    scrape,
    scrapeUntil,
    startStatusBackend,
    statusOf,
)
from tests.support import (
    READY_LINE,
    Twistd,
    freePort,
    logProblems,
    makeCertificates,
    startTwistd,
    trustingContext,
    until,
    verifyingContext,
)

DEFAULT = "default"
"""
The pool the command line's backends are in.
"""


def _labels(pool: str, backend: StatusBackend | str) -> dict[str, str]:
    address = backend if isinstance(backend, str) else backend.authority
    return {"pool": pool, "backend": address}


def _delta(before: Exposition, after: Exposition, name: str, labels: Mapping[str, str]) -> float:
    """
    How much sample C{name} with C{labels} moved between two scrapes (a
    sample missing from one counts as 0 there).
    """
    return after.value(name, labels, default=0.0) - before.value(name, labels, default=0.0)


@attrs.frozen
class Running:
    """
    A running C{twistd lbproxy} with a plain listener and C{--metrics}.

    @ivar port: The plain listener's port, on 127.0.0.1.
    @ivar metricsPort: The port of C{--metrics}, on 127.0.0.1.
    @ivar adminPort: The port of C{--admin}, on 127.0.0.1, if any.
    """

    process: Twistd
    port: int
    metricsPort: int
    adminPort: int | None = None

    @property
    def listener(self) -> str:
        """
        The plain listener's C{listener} label.
        """
        return f"tcp:{self.port}:interface=127.0.0.1"

    async def scrape(self) -> Exposition:
        """
        One scrape of C{--metrics}.
        """
        return await scrape(self.metricsPort)


_STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
_READY = re.compile(r"\[worker \d+ pid (\d+)\] " + re.escape(READY_LINE.decode()))
_ACCESS = re.compile(r'\[worker \d+ pid (\d+)\] 127\.0\.0\.1 "GET ')


def _alive(pid: int) -> bool:
    """
    Whether C{pid} is a running (not zombie) lbproxy worker.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return False
    return state != b"Z" and b"lbproxy.workers" in command


class _MetricsCase(TestCase):
    """
    Helpers: C{twistd lbproxy} with a plain listener and C{--metrics} in a
    temporary directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.workers: set[int] = set()
        self.addCleanup(self._killWorkersLeft)

    def _killWorkersLeft(self) -> None:
        """
        A worker a failed test left running is killed, by its pid.
        """
        for pid in self.workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    async def launch(self, *arguments: str, admin: bool = False) -> Running:
        """
        Start C{twistd lbproxy ARGUMENTS} with a plain listener and
        C{--metrics} (and C{--admin}) on free ports of 127.0.0.1; wait
        until it (and, with C{--workers}, every worker) listens.
        """
        port = freePort()
        metricsPort = freePort()
        extra = ["--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"]
        adminPort = None
        if admin:
            adminPort = freePort()
            extra += ["--admin", f"tcp:{adminPort}:interface=127.0.0.1"]
        process = await startTwistd(
            self,
            ["--listen", f"tcp:{port}:interface=127.0.0.1", *extra, *arguments],
            self.directory,
        )
        if "--workers" in arguments:
            count = int(arguments[list(arguments).index("--workers") + 1])
            await until(
                lambda: len(set(_READY.findall(process.out))) == count,
                f"all {count} workers to listen",
            )
            self.workers.update(int(pid) for _, pid in _STARTED.findall(process.out))
        return Running(process, port, metricsPort, adminPort)

    def assertQuiet(self, running: Running) -> None:
        """
        C{running} has logged no traceback.
        """
        self.assertIsNone(logProblems(running.process))


class TrafficTests(_MetricsCase):
    """
    Counters move by exactly the traffic that went through.
    """

    async def test_requestsResponsesBytesLatency(self) -> None:
        """
        Four 200s (one of them answering a POST), two 404s and one 503 from
        the backend move its requests by 7, its responses by class by 4, 2
        and 1 (1xx and 3xx by nothing), the bytes sent to it by the POST's
        body, the bytes received from it by the bodies of the seven
        answers, and its latency histogram's count (and +Inf bucket) by 7;
        failures and retries do not move. The admin API's C{GET /metrics}
        shows the same counters, and both parse as Prometheus text.
        """
        backend = startStatusBackend(self)
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--max-idle-per-backend",
            "1",
            admin=True,
        )
        assert running.adminPort is not None
        labels = _labels(DEFAULT, backend)
        before = await running.scrape()

        paths = ["/status/200"] * 3 + ["/status/404"] * 2 + ["/status/503"]
        for path in paths:
            status, body = await request(running.port, "GET", path)
            code = int(path.rsplit("/", 1)[1])
            self.assertEqual((status, body), (code, bodyFor(code)))
        upload = b"p" * 5000
        status, body = await request(running.port, "POST", "/upload", upload)
        self.assertEqual((status, len(body)), (200, UPLOAD_ANSWER))
        self.assertEqual(backend.uploads, [len(upload)])

        after = await running.scrape()
        moved = {
            name: _delta(before, after, name, labels)
            for name in (
                "lbproxy_backend_requests_total",
                "lbproxy_backend_failures_total",
                "lbproxy_backend_retries_total",
                "lbproxy_backend_sent_bytes_total",
                "lbproxy_backend_received_bytes_total",
                "lbproxy_backend_latency_seconds_count",
            )
        }
        self.assertEqual(
            moved,
            {
                "lbproxy_backend_requests_total": 7,
                "lbproxy_backend_failures_total": 0,
                "lbproxy_backend_retries_total": 0,
                "lbproxy_backend_sent_bytes_total": 5000,
                "lbproxy_backend_received_bytes_total": 3 * 200 + 2 * 404 + 503 + UPLOAD_ANSWER,
                "lbproxy_backend_latency_seconds_count": 7,
            },
        )
        byClass = {
            kind: _delta(
                before, after, "lbproxy_backend_responses_total", {**labels, "class": kind}
            )
            for kind in ("1xx", "2xx", "3xx", "4xx", "5xx")
        }
        self.assertEqual(byClass, {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 2, "5xx": 1})
        self.assertEqual(
            _delta(
                before, after, "lbproxy_backend_latency_seconds_bucket", {**labels, "le": "+Inf"}
            ),
            7,
        )
        self.assertGreater(_delta(before, after, "lbproxy_backend_latency_seconds_sum", labels), 0)
        self.assertEqual(after.value("lbproxy_backend_in_flight", labels), 0)
        self.assertEqual(after.types["lbproxy_backend_requests"], "counter")
        self.assertEqual(after.types["lbproxy_backend_latency_seconds"], "histogram")
        self.assertEqual(after.types["lbproxy_backend_up"], "gauge")
        self.assertTrue(after.contentType.startswith("text/plain"), after.contentType)

        # One keep-alive connection to the backend is kept, idle
        # (--max-idle-per-backend 1).
        await scrapeUntil(
            running.metricsPort,
            lambda e: (
                (
                    e.value("lbproxy_backend_connections_idle", labels),
                    e.value("lbproxy_backend_connections_open", labels),
                )
                == (1, 1)
            ),
            "one open, idle backend connection",
        )

        admin = await scrape(running.adminPort)
        for name in ("lbproxy_backend_requests_total", "lbproxy_backend_latency_seconds_count"):
            self.assertEqual(admin.value(name, labels), after.value(name, labels))
        self.assertQuiet(running)

    async def test_inFlight(self) -> None:
        """
        While the backend holds two requests, its in-flight gauge is 2 and
        it has two open connections, neither idle; once it answers them
        the gauge is back at 0.
        """
        backend = startStatusBackend(self)
        running = await self.launch("--backends", backend.authority, "--health-interval", "0")
        labels = _labels(DEFAULT, backend)
        self.assertEqual((await running.scrape()).value("lbproxy_backend_in_flight", labels), 0)
        answers = gatherResults([request(running.port, "GET", "/hold") for _ in range(2)])
        await until(lambda: backend.held == 2, "the backend to hold both requests")
        holding = await running.scrape()
        self.assertEqual(
            [
                holding.value(f"lbproxy_backend_{name}", labels)
                for name in ("in_flight", "connections_open", "connections_idle")
            ],
            [2, 2, 0],
        )
        backend.release()
        self.assertEqual(await answers, [(200, bodyFor(200))] * 2)
        done = await running.scrape()
        self.assertEqual(done.value("lbproxy_backend_in_flight", labels), 0)

    async def test_tlsListeners(self) -> None:
        """
        On an C{--adhoc} TLS listener and on one with its own certificate
        files, each new TLS connection is one more handshake on its own
        listener only, and its request one more request to the backend; a
        connection that closes without a handshake is one handshake
        failure on the listener it came to, and no handshake; a request
        refused at the edge is one rejection of its TLS listener. The
        listener's label leaves out the key and certificate file names,
        escaped colons in them included.
        """
        certs = os.path.join(self.directory, "certs:tls")
        await makeCertificates(certs)
        key = os.path.join(certs, "loadbalancer.key").replace(":", "\\:")
        cert = os.path.join(certs, "loadbalancer.crt").replace(":", "\\:")
        backend = startStatusBackend(self)
        adhocPort, filesPort = freePort(), freePort()
        adhoc = f"ssl:{adhocPort}:interface=127.0.0.1"
        files = f"ssl:{filesPort}:interface=127.0.0.1"
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--adhoc",
            "--listen",
            adhoc,
            "--listen",
            f"{files}:privateKey={key}:certKey={cert}",
        )
        labels = _labels(DEFAULT, backend)
        before = await running.scrape()
        self.assertEqual(
            {
                dict(labels)["listener"]
                for labels in before.named("lbproxy_listener_tls_handshakes_total")
            },
            {adhoc, files},
        )
        self.assertNotIn("certs", before.text)

        for _ in range(3):
            status, _ = await request(adhocPort, "GET", "/", context=trustingContext())
            self.assertEqual(status, 200)
        for _ in range(2):
            caFile = os.path.join(certs, "ca.crt")
            status, _ = await request(filesPort, "GET", "/", context=verifyingContext(caFile))
            self.assertEqual(status, 200)
        after = await running.scrape()

        def moved(name: str, listener: str) -> float:
            return _delta(before, after, name, {"listener": listener})

        handshakes = "lbproxy_listener_tls_handshakes_total"
        failures = "lbproxy_listener_tls_handshake_failures_total"
        self.assertEqual(
            [moved(handshakes, adhoc), moved(handshakes, files)],
            [3, 2],
        )
        self.assertEqual([moved(failures, adhoc), moved(failures, files)], [0, 0])
        self.assertEqual(_delta(before, after, "lbproxy_backend_requests_total", labels), 5)
        self.assertEqual(
            after.named(handshakes).keys(),
            {frozenset({("listener", adhoc)}), frozenset({("listener", files)})},
        )

        # A connection that closes at once, before any handshake.
        await connectAndClose(filesPort)
        closed = await scrapeUntil(
            running.metricsPort,
            lambda e: _delta(after, e, failures, {"listener": files}) > 0,
            "a handshake failure",
        )
        self.assertEqual(
            [
                _delta(after, closed, failures, {"listener": files}),
                _delta(after, closed, failures, {"listener": adhoc}),
                _delta(after, closed, handshakes, {"listener": files}),
            ],
            [1, 0, 0],
        )
        self.assertNotIn("certs", closed.text)

        # A request refused at the edge of a TLS listener is counted there.
        data = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"
        self.assertEqual(await exchangeStatus(adhocPort, data, trustingContext()), 505)
        refused = await running.scrape()
        rejections = "lbproxy_listener_rejections_total"
        self.assertEqual(
            [
                _delta(closed, refused, rejections, {"listener": adhoc, "status": "505"}),
                _delta(closed, refused, rejections, {"listener": files, "status": "505"}),
                _delta(closed, refused, handshakes, {"listener": adhoc}),
            ],
            [1, 0, 1],
        )
        self.assertQuiet(running)

    async def test_tlsRejectionCloses(self) -> None:
        """
        A request refused over TLS once its head is complete (here: no
        Host, 400) is answered and its connection closed within the
        lingering close's 5 seconds. (Found through the connections
        gauge, which counted such connections long after their answer.)
        """
        backend = startStatusBackend(self)
        tlsPort = freePort()
        await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--adhoc",
            "--listen",
            f"ssl:{tlsPort}:interface=127.0.0.1",
        )
        answer, closed = await exchangeFor(
            tlsPort, b"GET / HTTP/1.1\r\n\r\n", 8.0, trustingContext()
        )
        self.assertEqual((statusOf(answer), closed), (400, True))

    async def test_connectFailuresAndRetries(self) -> None:
        """
        A backend that refuses connections counts each request sent to it
        as a request, a failure and a connect failure of kind C{refused};
        where the pool has another backend the request is retried there
        (one retry counted on the refusing backend, the answer a 200 from
        the other); where it has none the client gets 503 and nothing is
        retried. Each backend is labelled with its own pool.
        """
        good = startStatusBackend(self)
        refusing, alone = f"127.0.0.1:{freePort()}", f"127.0.0.1:{freePort()}"
        path = os.path.join(self.directory, "lbproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                "health-interval = 0\n"
                "max-fails = 0\n"
                "retries = 1\n"
                "retry-budget = 100\n"
                "\n"
                "[pools.web]\n"
                f'backends = ["{good.authority}", "{refusing}"]\n'
                'chooser = "round-robin"\n'
                "\n"
                "[pools.broken]\n"
                f'backends = ["{alone}"]\n'
                "\n"
                "[[routes]]\n"
                'path = "/broken"\n'
                'pool = "broken"\n'
                "\n"
                "[[routes]]\n"
                'pool = "web"\n'
            )
        running = await self.launch("--config", path)
        before = await running.scrape()

        sent = 0
        for _ in range(20):
            self.assertEqual(await request(running.port, "GET", "/status/200"), (200, bodyFor(200)))
            sent += 1
            if sent >= 4 and f"tried={refusing}," in running.process.out:
                break
        # The access log says which requests were tried on the refusing
        # backend first, once it has every request's line.
        await until(
            lambda: running.process.out.count('"GET /status/200 HTTP/1.1" 200') == sent,
            "the access log of every request",
        )
        retried = running.process.out.count(f"retries=1 tried={refusing},{good.authority}")
        self.assertGreater(retried, 0)
        status, _ = await request(running.port, "GET", "/broken/x")
        self.assertEqual(status, 503)
        after = await running.scrape()

        def moved(name: str, pool: str, backend: str, **more: str) -> float:
            return _delta(before, after, name, {**_labels(pool, backend), **more})

        connect = "lbproxy_backend_connect_failures_total"
        self.assertEqual(
            {
                "good requests": moved("lbproxy_backend_requests_total", "web", good.authority),
                "good 2xx": moved(
                    "lbproxy_backend_responses_total", "web", good.authority, **{"class": "2xx"}
                ),
                "good failures": moved("lbproxy_backend_failures_total", "web", good.authority),
                "refusing requests": moved("lbproxy_backend_requests_total", "web", refusing),
                "refusing failures": moved("lbproxy_backend_failures_total", "web", refusing),
                "refusing retries": moved("lbproxy_backend_retries_total", "web", refusing),
                "refusing refused": moved(connect, "web", refusing, kind="refused"),
                "alone requests": moved("lbproxy_backend_requests_total", "broken", alone),
                "alone failures": moved("lbproxy_backend_failures_total", "broken", alone),
                "alone retries": moved("lbproxy_backend_retries_total", "broken", alone),
                "alone refused": moved(connect, "broken", alone, kind="refused"),
                "alone 5xx": moved(
                    "lbproxy_backend_responses_total", "broken", alone, **{"class": "5xx"}
                ),
            },
            {
                "good requests": sent,
                "good 2xx": sent,
                "good failures": 0,
                "refusing requests": retried,
                "refusing failures": retried,
                "refusing retries": retried,
                "refusing refused": retried,
                "alone requests": 1,
                "alone failures": 1,
                "alone retries": 0,
                "alone refused": 1,
                "alone 5xx": 0,
            },
        )
        # Every kind is there from the start; only "refused" moved.
        kinds = {"refused", "timeout", "dns", "tls", "unreachable"}
        self.assertEqual(
            {
                kind: before.value(connect, {**_labels("broken", alone), "kind": kind})
                for kind in kinds
            },
            dict.fromkeys(kinds, 0),
        )
        self.assertEqual(
            {kind: moved(connect, "web", refusing, kind=kind) for kind in kinds},
            {**dict.fromkeys(kinds, 0), "refused": retried},
        )
        self.assertEqual(
            after.value("lbproxy_backend_latency_seconds_count", _labels("broken", alone)), 0
        )

    async def test_edgeRejections(self) -> None:
        """
        Requests the edge refuses are counted by status on their listener,
        each once: a request without Host (400), a body over C{--max-body}
        (413), a target over C{--max-target} (414), more header fields than
        C{--max-header-fields} (431), HTTP/1.2 (505) and a head that does
        not arrive within C{--header-timeout} (408). None of them reaches
        the backend. Every status the edge answers with is counted, at 0,
        from the start.
        """
        backend = startStatusBackend(self)
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--max-body",
            "10",
            "--max-target",
            "1000",
            "--max-header-fields",
            "20",
            "--header-timeout",
            "0.3",
        )
        before = await running.scrape()
        fields = b"".join(b"X-F%d: v\r\n" % (i,) for i in range(21))
        provoked = {
            400: b"GET / HTTP/1.1\r\n\r\n",
            413: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
            414: b"GET /" + b"t" * 1000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            431: b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n",
            505: b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            408: b"GET / HTTP/1.1\r\nHost: a\r\n",
        }
        for expected, data in provoked.items():
            self.assertEqual(await exchangeStatus(running.port, data), expected, data[:60])
        after = await running.scrape()
        rejections = "lbproxy_listener_rejections_total"
        statuses = (400, 408, 413, 414, 421, 431, 501, 503, 505)

        def counts(exposition: Exposition) -> dict[int, float]:
            return {
                int(dict(labels)["status"]): value
                for labels, value in exposition.named(rejections).items()
                if dict(labels)["listener"] == running.listener
            }

        self.assertEqual(counts(before), dict.fromkeys(statuses, 0))
        self.assertEqual(
            counts(after), {**dict.fromkeys(statuses, 0), **dict.fromkeys(provoked, 1)}
        )
        self.assertEqual(
            _delta(before, after, "lbproxy_backend_requests_total", _labels(DEFAULT, backend)), 0
        )

    async def test_unknownTransferCoding(self) -> None:
        """
        A request body in a transfer coding other than chunked is answered
        501 Not Implemented (RFC 9112 6.1), counted as such on its listener.
        """
        backend = startStatusBackend(self)
        running = await self.launch("--backends", backend.authority, "--health-interval", "0")
        before = await running.scrape()
        data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        self.assertEqual(await exchangeStatus(running.port, data), 501)
        after = await running.scrape()
        labels = {"listener": running.listener, "status": "501"}
        self.assertEqual(_delta(before, after, "lbproxy_listener_rejections_total", labels), 1)

    test_unknownTransferCoding.todo = (  # type: ignore[attr-defined]
        "twisted.web's HTTPChannel.headerReceived refuses any Transfer-Encoding but "
        "chunked itself (malformedRequest: 400) before lbproxy.http.checks.checkFraming "
        "can answer 501"
    )

    async def test_allowHostRejection(self) -> None:
        """
        A request for a Host that C{--allow-host} does not serve (421) is
        counted as an edge rejection of its listener.
        """
        backend = startStatusBackend(self)
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--allow-host",
            "served.example",
        )
        before = await running.scrape()
        status, _ = await request(running.port, "GET", "/", headers={"Host": "other.example"})
        self.assertEqual(status, 421)
        after = await running.scrape()
        labels = {"listener": running.listener, "status": "421"}
        self.assertEqual(_delta(before, after, "lbproxy_listener_rejections_total", labels), 1)

    async def test_listenerConnections(self) -> None:
        """
        While K client connections are held open (sending nothing) the
        listener's connections gauge is K, and on the TLS listener it
        counts its own held connections only; one more than
        C{--max-connections} is refused with 503 and counted as a
        rejection, not as a connection; once they are closed the gauges
        are back at 0.
        """
        backend = startStatusBackend(self)
        tlsPort = freePort()
        tls = f"ssl:{tlsPort}:interface=127.0.0.1"
        held = 5
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--adhoc",
            "--listen",
            tls,
            "--max-connections",
            str(held + 2),
        )
        gauge = "lbproxy_listener_connections"

        def counts(exposition: Exposition) -> tuple[float, float]:
            return (
                exposition.value(gauge, {"listener": running.listener}),
                exposition.value(gauge, {"listener": tls}),
            )

        self.assertEqual(counts(await running.scrape()), (0, 0))
        plain = await hold(self, running.port, held)
        secure = await hold(self, tlsPort, 2, trustingContext())
        before = await scrapeUntil(
            running.metricsPort,
            lambda e: counts(e) == (held, 2),
            f"the gauges to show {held} plain and 2 TLS connections",
        )
        status = await exchangeStatus(running.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(status, 503)
        after = await running.scrape()
        self.assertEqual(
            _delta(
                before,
                after,
                "lbproxy_listener_rejections_total",
                {"listener": running.listener, "status": "503"},
            ),
            1,
        )
        self.assertEqual(after.value(gauge, {"listener": running.listener}), held)
        plain.close()
        secure.close()
        await scrapeUntil(
            running.metricsPort, lambda e: counts(e) == (0, 0), "the gauges to be back at 0"
        )

    async def test_sharedPortListeners(self) -> None:
        """
        Two listeners on the same port number of different addresses
        (127.0.0.1 and 127.0.0.2) count their connections and rejections
        apart.
        """
        backend = startStatusBackend(self)
        port = freePort()
        other = f"tcp:{port}:interface=127.0.0.2"
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--listen",
            other,
        )
        first = f"tcp:{port}:interface=127.0.0.1"
        before = await running.scrape()
        self.assertEqual(await exchangeStatus(port, b"GET / HTTP/1.1\r\n\r\n"), 400)
        after = await running.scrape()
        rejections = "lbproxy_listener_rejections_total"
        self.assertEqual(
            [
                _delta(before, after, rejections, {"listener": first, "status": "400"}),
                _delta(before, after, rejections, {"listener": other, "status": "400"}),
            ],
            [1, 0],
        )

    async def test_labelsBounded(self) -> None:
        """
        No label value, and nothing anywhere in the exposition, carries a
        request's path, query, Host or a client's address: after requests
        with distinctive ones (from 127.0.0.3, with C{X-Forwarded-For}),
        the scrape has none of them, and the only label values are pools,
        backends, listeners, status classes, statuses, kinds, buckets and
        versions.
        """
        backend = startStatusBackend(self)
        running = await self.launch(
            "--backends", backend.authority, "--health-interval", "0", admin=True
        )
        assert running.adminPort is not None
        distinctive = [
            ("/status/404/zq7-private-path", {}),
            ("/zq7-other?token=hunter2zq7", {"Host": "zq7-host.example"}),
            ("/status/503?user=zq7mallory", {"X-Forwarded-For": "198.51.100.77"}),
        ]
        for path, headers in distinctive:
            await request(running.port, "GET", path, source="127.0.0.3", headers=headers)
        await exchangeStatus(running.port, b"GET /zq7-refused HTTP/1.1\r\n\r\n")
        for exposition in (await running.scrape(), await scrape(running.adminPort)):
            for secret in ("zq7", "hunter2", "127.0.0.3", "198.51.100.77", "mallory"):
                self.assertNotIn(secret, exposition.text)
            allowed = re.compile(
                r"\A(?:"
                r"default|"
                + re.escape(backend.authority)
                + "|"
                + re.escape(running.listener)
                + r"|[1-5]xx|[1-5][0-9][0-9]|refused|timeout|dns|tls|unreachable"
                r"|[0-9]+(?:\.[0-9]+){0,2}|\+Inf|CPython|PyPy)\Z"
            )
            self.assertEqual(
                sorted(v for v in exposition.labelValues() if not allowed.match(v)), []
            )


class HealthTests(_MetricsCase):
    """
    The health gauges follow active and passive checks.
    """

    async def test_backendDown(self) -> None:
        """
        A backend that stops listening is, after one failed active check
        (C{--health-fall 1}), C{lbproxy_backend_healthy 0} and
        C{lbproxy_backend_up 0}, and not ejected; the other backend is
        still healthy and up.
        """
        stays, goes = startStatusBackend(self), startStatusBackend(self)
        running = await self.launch(
            "--backends",
            f"{stays.authority},{goes.authority}",
            "--health-interval",
            "0.2",
            "--health-fall",
            "1",
            "--max-fails",
            "0",
        )

        def gauges(exposition: Exposition, backend: StatusBackend) -> dict[str, float]:
            return {
                name: exposition.value(f"lbproxy_backend_{name}", _labels(DEFAULT, backend))
                for name in ("up", "healthy", "ejected", "draining")
            }

        first = await running.scrape()
        self.assertEqual(gauges(first, goes), {"up": 1, "healthy": 1, "ejected": 0, "draining": 0})
        await goes.stop()
        last = await scrapeUntil(
            running.metricsPort,
            lambda e: gauges(e, goes)["healthy"] == 0,
            "the stopped backend to be unhealthy",
        )
        self.assertEqual(gauges(last, goes), {"up": 0, "healthy": 0, "ejected": 0, "draining": 0})
        self.assertEqual(gauges(last, stays), {"up": 1, "healthy": 1, "ejected": 0, "draining": 0})

    async def test_backendEjected(self) -> None:
        """
        With C{--max-fails 1}, the first request a refusing backend fails
        ejects it: C{lbproxy_backend_ejected 1}, C{lbproxy_backend_up 0},
        its ejections counter one more, still C{healthy} (active checks are
        off); it gets no further requests while ejected.
        """
        good = startStatusBackend(self)
        refusing = f"127.0.0.1:{freePort()}"
        running = await self.launch(
            "--backends",
            f"{good.authority},{refusing}",
            "--health-interval",
            "0",
            "--max-fails",
            "1",
            "--eject-time",
            "300",
            "--chooser",
            "round-robin",
        )
        labels = _labels(DEFAULT, refusing)
        before = await running.scrape()
        self.assertEqual(before.value("lbproxy_backend_ejected", labels), 0)
        for _ in range(6):
            self.assertEqual((await request(running.port, "GET", "/"))[0], 200)
        after = await running.scrape()
        self.assertEqual(
            {
                name: after.value(f"lbproxy_backend_{name}", labels)
                for name in ("ejected", "up", "healthy")
            },
            {"ejected": 1, "up": 0, "healthy": 1},
        )
        self.assertEqual(_delta(before, after, "lbproxy_backend_ejections_total", labels), 1)
        self.assertEqual(_delta(before, after, "lbproxy_backend_requests_total", labels), 1)
        self.assertEqual(
            _delta(before, after, "lbproxy_backend_requests_total", _labels(DEFAULT, good)), 6
        )
        self.assertEqual(after.value("lbproxy_backend_ejected", _labels(DEFAULT, good)), 0)


class WorkersTests(_MetricsCase):
    """
    C{--workers 2}: one scrape sums both workers.
    """

    async def test_workersSummed(self) -> None:
        """
        After N requests on fresh connections, served by both workers, and
        M over TLS, one scrape of C{--metrics} and one of the admin API's
        C{GET /metrics} each show N + M requests and 2xx responses (and
        latency observations) in all, M handshakes, the connections held
        open on either worker, C{lbproxy_workers_reporting 2} and the
        process metrics; C{up}, C{healthy} and C{weight} stay 1 (not 2).
        """
        backend = startStatusBackend(self)
        tlsPort = freePort()
        running = await self.launch(
            "--backends",
            backend.authority,
            "--health-interval",
            "0",
            "--workers",
            "2",
            "--adhoc",
            "--listen",
            f"ssl:{tlsPort}:interface=127.0.0.1",
            admin=True,
        )
        assert running.adminPort is not None
        workers = set(int(pid) for _, pid in _STARTED.findall(running.process.out))
        self.assertEqual(len(workers), 2)
        sent = 0
        for _ in range(50):
            answers = await gatherResults(
                [request(running.port, "GET", "/status/200") for _ in range(8)]
            )
            sent += len(answers)
            self.assertEqual(set(answers), {(200, bodyFor(200))})
            if {int(pid) for pid in _ACCESS.findall(running.process.out)} == workers:
                break
        self.assertEqual({int(pid) for pid in _ACCESS.findall(running.process.out)}, workers)
        secure = 3
        for _ in range(secure):
            status, _ = await request(tlsPort, "GET", "/", context=trustingContext())
            self.assertEqual(status, 200)
        held = await hold(self, running.port, 4)
        listener = {"listener": running.listener}
        combined = await scrapeUntil(
            running.metricsPort,
            lambda e: e.value("lbproxy_listener_connections", listener) == 4,
            "the 4 held connections to show",
        )
        admin = await scrape(running.adminPort)
        held.close()

        labels = _labels(DEFAULT, backend)
        for exposition in (combined, admin):
            self.assertEqual(
                {
                    "requests": exposition.value("lbproxy_backend_requests_total", labels),
                    "2xx": exposition.value(
                        "lbproxy_backend_responses_total", {**labels, "class": "2xx"}
                    ),
                    "latency count": exposition.value(
                        "lbproxy_backend_latency_seconds_count", labels
                    ),
                    "handshakes": exposition.value(
                        "lbproxy_listener_tls_handshakes_total",
                        {"listener": f"ssl:{tlsPort}:interface=127.0.0.1"},
                    ),
                    "reporting": exposition.value("lbproxy_workers_reporting"),
                    "up": exposition.value("lbproxy_backend_up", labels),
                    "healthy": exposition.value("lbproxy_backend_healthy", labels),
                    "weight": exposition.value("lbproxy_backend_weight", labels),
                },
                {
                    "requests": sent + secure,
                    "2xx": sent + secure,
                    "latency count": sent + secure,
                    "handshakes": secure,
                    "reporting": 2,
                    "up": 1,
                    "healthy": 1,
                    "weight": 1,
                },
            )
            for name in (
                "process_resident_memory_bytes",
                "process_cpu_seconds_total",
                "process_open_fds",
                "process_start_time_seconds",
            ):
                self.assertGreater(exposition.value(name), 0, name)
        self.assertEqual(combined.value("lbproxy_listener_connections", listener), 4)
        self.assertEqual(combined.value("lbproxy_info", {"version": _version(combined)}), 1)
        self.assertQuiet(running)


def _version(exposition: Exposition) -> str:
    (labels,) = exposition.named("lbproxy_info")
    return dict(labels)["version"]


class EndpointTests(_MetricsCase):
    """
    C{--metrics} serves C{GET /metrics} and nothing else.
    """

    async def test_readOnly(self) -> None:
        """
        C{--metrics} answers C{GET} and C{HEAD /metrics} (with or without
        a trailing slash or a query) with the exposition; any other path
        is 404 (the admin API's included), any other method on
        C{/metrics} 405; none of those changes anything.
        """
        backend = startStatusBackend(self)
        running = await self.launch("--backends", backend.authority, "--health-interval", "0")
        first = await running.scrape()
        for path in ("/", "/pools", "/config", "/metricsx", "/metrics/x", "/other"):
            for method in ("GET", "POST"):
                status, _, _ = await rawScrape(running.metricsPort, path, method)
                self.assertEqual(status, 404, f"{method} {path}")
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _, _ = await rawScrape(running.metricsPort, "/metrics", method)
            self.assertEqual(status, 405, method)
        for path in ("/metrics/", "/metrics?name=x"):
            status, contentType, body = await rawScrape(running.metricsPort, path)
            self.assertEqual(status, 200, path)
            Exposition.parse(body.decode("utf-8"))
        status, contentType, body = await rawScrape(running.metricsPort, "/metrics", "HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertTrue(contentType.startswith("text/plain"), contentType)
        last = await running.scrape()
        self.assertEqual(
            last.value("lbproxy_backend_requests_total", _labels(DEFAULT, backend)),
            first.value("lbproxy_backend_requests_total", _labels(DEFAULT, backend)),
        )
