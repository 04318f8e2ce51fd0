"""
The twistd plugin declaration for lbproxy: C{twistd lbproxy --help}.

This module is a declaration only; it imports nothing of lbproxy, so that
twistd can list plugins without loading the proxy.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.cli",
    "An HTTPS load balancer and reverse proxy (TLS offloading).",
    "lbproxy",
)
