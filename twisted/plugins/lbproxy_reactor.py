"""
The twistd reactor plugin for lbproxy's reactor: C{twistd --reactor lbproxy}
(Twisted's epoll reactor without the per-event log context, see
L{lbproxy._twisted.reactor}). C{twistd lbproxy} installs it anyway unless
C{--reactor} names another.

A declaration only, like the service plugin: it imports nothing of lbproxy.
"""

from twisted.application.reactors import Reactor

lbproxyReactor = Reactor(
    "lbproxy",
    "lbproxy._twisted.reactor",
    "epoll, dispatching without the per-event log context (Linux; lbproxy's default)",
)
