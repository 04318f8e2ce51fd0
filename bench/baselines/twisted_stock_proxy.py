"""
Baseline: Twisted's stock reverse proxy, twisted.web.proxy.ReverseProxyResource,
with a backend picked at random per request.

This is what a Twisted user reaches for first. It opens a new HTTP/1.0
connection to the backend for every request (Connection: close), buffers the
request body and does not apply backpressure to the response.

    python twisted_stock_proxy.py --backends 127.0.0.2:80,127.0.0.3:80 \
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
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site


class RandomReverseProxy(Resource):
    """
    Delegates each request to one of several stock ReverseProxyResources,
    chosen at random.
    """

    def __init__(self, proxies: list[ReverseProxyResource]) -> None:
        super().__init__()
        self._proxies = proxies

    def getChild(self, path: bytes, request: object) -> Resource:
        return random.choice(self._proxies).getChild(path, request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", required=True)
    parser.add_argument("--listen", action="append", required=True)
    args = parser.parse_args()
    proxies = []
    for item in args.backends.split(","):
        host, _, port = item.partition(":")
        proxies.append(ReverseProxyResource(host, int(port or 80), b""))
    site = Site(RandomReverseProxy(proxies))
    site.noisy = False
    for description in args.listen:
        endpoints.serverFromString(reactor, description).listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
