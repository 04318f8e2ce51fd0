"""
Baseline: the best simple Twisted proxy, an Agent over a persistent
HTTPConnectionPool, streaming the response body with backpressure, a
backend picked at random per request.

About sixty lines, no error mapping beyond 502, no forwarding headers: the
floor a Twisted user gets for a day's work, and what lbproxy has to beat.

    python twisted_agent_proxy.py --backends 127.0.0.2:80,127.0.0.3:80 \
        --listen ssl:8443:interface=127.0.0.1:privateKey=K:certKey=C \
        --listen tcp:8080:interface=127.0.0.1

It never lets a TLS client resume a session (the driver's --no-resume or
not): the ssl: endpoint's CertificateOptions has session tickets and the
session cache off by default.
"""

from __future__ import annotations

import argparse
import random

from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"content-length",
    b"host",
}


class Relay(Protocol):
    def __init__(self, request):
        self.request = request

    def connectionMade(self):
        # The backend connection becomes the client's producer: backpressure.
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.request.write(data)

    def connectionLost(self, reason):
        self.request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.request.finish()
        else:
            self.request.channel.loseConnection()


class AgentProxy(Resource):
    isLeaf = True

    def __init__(self, agent, backends):
        super().__init__()
        self.agent = agent
        self.backends = backends

    def render(self, request):
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        headers.setRawHeaders(b"host", [request.getHeader(b"host") or b"localhost"])
        body = None
        if request.getHeader(b"content-length") not in (None, b"0"):
            request.content.seek(0)
            body = FileBodyProducer(request.content)
        url = random.choice(self.backends) + request.uri
        d = self.agent.request(request.method, url, headers, body)
        d.addCallbacks(self.gotResponse, self.failed, (request,), None, (request,))
        return NOT_DONE_YET

    def gotResponse(self, response, request):
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
        if response.length is not None and isinstance(response.length, int):
            request.setHeader(b"content-length", b"%d" % response.length)
        response.deliverBody(Relay(request))

    def failed(self, failure, request):
        request.setResponseCode(502)
        request.write(b"502 Bad Gateway\n")
        request.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", required=True)
    parser.add_argument("--listen", action="append", required=True)
    args = parser.parse_args()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 128
    pool._factory.noisy = False
    backends = [f"http://{item}".encode() for item in args.backends.split(",")]
    site = Site(AgentProxy(Agent(reactor, pool=pool), backends))
    site.noisy = False
    for description in args.listen:
        endpoints.serverFromString(reactor, description).listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
