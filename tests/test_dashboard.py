"""
The admin API's live dashboard in a real browser: headless Chromium
(Debian's C{chromium} package) loads C{GET /} from the installed
C{twistd lbproxy} while real requests flow through it, runs the page's
scripts, and the DOM it leaves shows the backends and the sampled
decisions ("why this backend"). A screenshot of the page is kept in the
test's temporary directory (its path is logged).

Skipped when no Chromium is installed. Chromium is kept on loopback: its
background services are off and every host name but 127.0.0.1 resolves
to nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.adminsupport import AdminClient, AdminProxy, eventually, startAdminProxy
from tests.support import fetch, logProblems, runProgram, startBackend

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
)
"""
The Chromium binary, if one is installed.
"""

BUDGET_MS = 8000
"""
Virtual milliseconds Chromium lets the page run (its polls every 2 s)
before it dumps the DOM or takes the screenshot.
"""

_log = Logger()


def _directory(testCase: TestCase) -> str:
    directory = os.path.abspath(str(testCase.mktemp()))
    os.makedirs(directory)
    return directory


def chromiumArgv(profile: str, *action: str) -> list[str]:
    """
    Headless Chromium with a profile of its own in C{profile}, no
    background traffic, no name resolution beyond 127.0.0.1, running a
    page for L{BUDGET_MS} virtual milliseconds, then C{action}.
    """
    assert CHROMIUM is not None
    return [
        CHROMIUM,
        "--headless",
        # As root (CI), Chromium's sandbox cannot start; the page is our own.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-sync",
        "--disable-extensions",
        "--metrics-recording-only",
        "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        "--window-size=1400,1200",
        f"--virtual-time-budget={BUDGET_MS}",
        *action,
    ]


def _attributes(tag: str) -> dict[str, str]:
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def backendRows(dom: str) -> list[dict[str, str]]:
    """
    The attributes of each backend row the page drew.
    """
    return [_attributes(tag) for tag in re.findall(r'<tr class="backend"[^>]*>', dom)]


def decisionRows(dom: str) -> list[tuple[dict[str, str], list[tuple[str, bool, str]]]]:
    """
    Each decision row the page drew: its attributes, and each candidate's
    address, whether it is marked chosen, and its text (scores).
    """
    rows = []
    for match in re.finditer(r'(<tr class="decision"[^>]*>)(.*?)</tr>', dom, re.S):
        candidates = [
            (_attributes(tag)["data-address"], "chosen" in _attributes(tag)["class"], text)
            for tag, text in re.findall(
                r'(<li class="candidate[^"]*"[^>]*>)(.*?)</li>', match.group(2), re.S
            )
        ]
        rows.append((_attributes(match.group(1)), candidates))
    return rows


class DashboardInBrowserTests(TestCase):
    """
    Chromium shows what the running lbproxy does.
    """

    if CHROMIUM is None:
        skip = "no chromium binary on PATH (Debian: apt-get install chromium)"

    async def browse(self, url: str, directory: str, *action: str) -> str:
        """
        Run Chromium on C{url} with C{action}; its standard output.
        """
        profile = os.path.join(directory, "chromium-profile")
        result = await runProgram(chromiumArgv(profile, *action, url), directory)
        self.assertEqual(result.code, 0, result.combined[-3000:])
        return result.out

    async def dom(self, url: str, directory: str, ready: str) -> str:
        """
        The page's DOM after its scripts ran, once it holds C{ready} (at
        most three tries).
        """
        dom = ""
        for _ in range(3):
            dom = await self.browse(url, directory, "--dump-dom")
            if ready in dom:
                break
        return dom

    async def startWithTraffic(self, directory: str, *extra: str) -> tuple[AdminProxy, list[str]]:
        """
        Two backends, lbproxy (peak-EWMA, every decision sampled) and 40
        requests through it; returns once the dashboard has recorded
        decisions and a history sample with traffic in it.
        """
        backends = [
            startBackend(self, host, b"<p>%s</p>" % host.encode())
            for host in ("127.0.0.2", "127.0.0.3")
        ]
        addresses = [b.authority for b in backends]
        proxy = await startAdminProxy(
            self,
            directory,
            [
                "--backends",
                ",".join(addresses),
                "--chooser",
                "peak-ewma",
                "--decision-sample",
                "1",
                "--access-log",
                "none",
                *extra,
            ],
        )
        for _ in range(40):
            status, _ = await fetch(proxy.url + "/some/page?q=1")
            self.assertEqual(status, 200)
        return proxy, addresses

    async def test_backendsAndDecisions(self) -> None:
        """
        After real traffic, the page's DOM has a row for each backend (its
        state up, its sparklines drawn) and the last decisions, each with
        both backends as candidates, peak-EWMA's cost among their scores
        and exactly one marked chosen, the one the decision names; a
        screenshot is taken.
        """
        directory = _directory(self)
        proxy, addresses = await self.startWithTraffic(directory)
        admin = proxy.admin

        async def sampled() -> bool:
            # A sparkline needs two samples; one of them with the traffic.
            history = await admin.get("/dashboard/history")
            backends = history["backends"]
            return all(len(b["rate"]) >= 2 for b in backends) and any(
                sum(b["rate"]) > 0 for b in backends
            )

        await eventually(sampled, "two history samples, with traffic")
        url = f"http://127.0.0.1:{admin.port}/"
        dom = await self.dom(url, directory, 'class="decision"')

        refreshes = re.search(r'<body data-refreshes="(\d+)"', dom)
        self.assertIsNotNone(refreshes, dom[:2000])
        assert refreshes is not None
        self.assertGreaterEqual(int(refreshes.group(1)), 1)
        rows = backendRows(dom)
        self.assertEqual(sorted(row["data-address"] for row in rows), sorted(addresses))
        self.assertEqual({row["data-pool"] for row in rows}, {"default"})
        self.assertEqual(dom.count('<span class="state up">up</span>'), 2)
        self.assertGreaterEqual(dom.count("<polyline"), 2 * 5)

        decisions = decisionRows(dom)
        self.assertGreaterEqual(len(decisions), 1, dom[-3000:])
        for attributes, candidates in decisions:
            self.assertEqual(sorted(address for address, _, _ in candidates), sorted(addresses))
            chosen = [address for address, marked, _ in candidates if marked]
            self.assertEqual(chosen, [attributes["data-chosen"]])
            for _, _, text in candidates:
                self.assertIn("cost", text)
                self.assertIn("in flight", text)
        self.assertIn("GET /some/page", dom)
        self.assertIn("of the two drawn", dom)

        screenshot = os.path.join(directory, "dashboard.png")
        await self.browse(url, directory, f"--screenshot={screenshot}")
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(screenshot), 10_000)
        _log.info("dashboard screenshot: {path}", path=screenshot)
        sys.stderr.write(f"\n  dashboard screenshot: {screenshot}\n")
        self.assertIsNone(logProblems(proxy.process))

    async def test_tokenAsked(self) -> None:
        """
        With an admin token, the page still loads, shows the token form,
        and draws no data until it is given.
        """
        directory = _directory(self)
        tokenFile = os.path.join(directory, "token")
        with open(tokenFile, "w") as f:
            f.write("dashboard-token-0123456789\n")
        backend = startBackend(self, "127.0.0.2", b"a")
        proxy = await startAdminProxy(
            self,
            directory,
            ["--backends", backend.authority, "--admin-token-file", tokenFile],
        )
        assert proxy.admin.port is not None
        dom = await self.dom(f"http://127.0.0.1:{proxy.admin.port}/", directory, "token shown")
        self.assertIn('<form id="token" class="token shown">', dom)
        self.assertEqual(backendRows(dom), [])
        self.assertIn("needs a token", dom)
        withToken = AdminClient(port=proxy.admin.port, token="dashboard-token-0123456789")
        state = await withToken.get("/dashboard/state")
        self.assertEqual(state["pools"][0]["backends"][0]["address"], backend.authority)

    async def test_workers(self) -> None:
        """
        With C{--workers 2}, the supervisor's page shows the backends and
        decisions of both workers, each decision marked with its worker.
        """
        directory = _directory(self)
        proxy, addresses = await self.startWithTraffic(directory, "--workers", "2")
        admin = proxy.admin

        async def bothSampled() -> bool:
            # Which worker accepts a connection is the kernel's choice:
            # more requests until both have had some.
            for _ in range(5):
                await fetch(proxy.url + "/more")
            decisions = await admin.get("/dashboard/decisions")
            return len({d["worker"] for d in decisions["decisions"]}) == 2

        await eventually(bothSampled, "decisions from both workers")
        dom = await self.dom(f"http://127.0.0.1:{admin.port}/", directory, 'class="decision"')
        self.assertEqual(sorted(row["data-address"] for row in backendRows(dom)), sorted(addresses))
        self.assertIn("2 workers", dom)
        workers = set(re.findall(r"\u00b7 (worker \d)", dom))
        self.assertEqual(workers, {"worker 1", "worker 2"})
