"""
Graceful drain of the installed C{twistd lbproxy}: SIGTERM lets a request
in progress finish, then the process exits 0.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import fetch, freePort, startTwistd, until


class _Held(Resource):
    """
    Holds every request open until the test releases it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.arrived: Deferred[Request] = Deferred()

    def render(self, request: Request) -> int:
        self.held.append(request)
        if not self.arrived.called:
            self.arrived.callback(request)
        return NOT_DONE_YET


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class DrainTests(TestCase):
    """
    SIGTERM drains.
    """

    async def test_slowRequestFinishes(self) -> None:
        """
        A request in progress when SIGTERM arrives is answered in full; new
        connections are refused meanwhile; then twistd exits 0.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        resource = _Held()
        site = Site(resource)
        site.log = lambda request: None  # type: ignore[method-assign]
        backendPort = reactor.listenTCP(0, site, interface="127.0.0.2")  # type: ignore[arg-type]
        self.addCleanup(backendPort.stopListening)
        port = freePort()
        process = await startTwistd(
            self,
            [
                "--backends",
                f"127.0.0.2:{backendPort.getHost().port}",  # type: ignore[attr-defined]
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--health-interval",
                "0",
            ],
            directory,
        )
        answer = fetch(f"http://127.0.0.1:{port}/slow")
        request = await resource.arrived
        process.signal("TERM")
        await until(lambda: "draining" in process.out, "the drain to start")
        await until(lambda: _refused(port), "the listener to close")
        request.write(b"finished after SIGTERM")
        request.finish()
        status, body = await answer
        self.assertEqual((status, body), (200, b"finished after SIGTERM"))
        result = await process.exited()
        self.assertEqual((result.code, result.signal), (0, None), result.combined)
        self.assertNotIn("Traceback", result.combined)
