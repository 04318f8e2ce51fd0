# -*- test-case-name: lbproxy.test.test_tap -*-
"""
lbproxy: an HTTPS load balancer and reverse proxy built on Twisted.

Run it with C{twistd -n lbproxy --backends HOST[:PORT],...}.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
