# -*- test-case-name: lbproxy.test.test_twistedwall,lbproxy.test.test_client -*-
"""
Names of twisted.web's HTTP client that lbproxy's retry rules recognise
but that twisted.web exports only from its private C{_newclient} module.

Checked against Twisted 26.10 (see L{PRIVATE_NAMES}).
"""

from twisted.web._newclient import RequestNotSent

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "twisted.web._newclient": ("RequestNotSent",),
}
"""
Every private Twisted name this module uses, by the object that has it.
"""

__all__ = ["PRIVATE_NAMES", "RequestNotSent"]
