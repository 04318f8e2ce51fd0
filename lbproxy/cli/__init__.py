# -*- test-case-name: lbproxy.test.test_tap -*-
"""
The command line: C{twistd lbproxy} options parsed into plain settings, and
the service they make. The only part of lbproxy that knows flag names.
"""

from lbproxy.cli.options import Options, makeService

__all__ = ["Options", "makeService"]
