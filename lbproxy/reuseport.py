# -*- test-case-name: lbproxy.test.test_workers -*-
"""
Several listening sockets on one TCP port, one per worker
(C{--reuse-port}, L{lbproxy.workers}).

On Linux, sockets that all set C{SO_REUSEPORT} before they bind may bind
the same address and port; each has its own accept queue, and the kernel
gives each new connection to one of them by a hash of its addresses and
ports.  The split is that of a fair coin per connection: even on average,
with the spread of chance (64 connections over 2 sockets: 32 +/- 4).

Only processes of the same user can join such a group.  L{bindGroup}
refuses a port another group already holds (another lbproxy started twice,
say), instead of silently sharing its connections.
"""

from __future__ import annotations

import socket
import sys

import attrs
from twisted.internet.abstract import isIPv6Address

from lbproxy.listen import splitDescription

__all__ = ["REUSE_PORT", "TCPAddress", "bindGroup", "tcpAddress"]

REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""
Whether this platform spreads connections over sockets sharing a port
(Linux does; the BSDs' C{SO_REUSEPORT} lets sockets share a port but gives
every connection to the last one bound).
"""


@attrs.frozen
class TCPAddress:
    """
    Where a C{tcp:} or C{tcp6:} server endpoint listens, as Twisted's
    C{listenTCP} would bind it.

    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar interface: The address to bind; C{""} for every IPv4 address.
    @ivar port: The port; 0 for a free one.
    @ivar backlog: The length of each socket's accept queue.
    """

    family: int
    interface: str
    port: int
    backlog: int = 50


# Twisted's order of the positional fields after the port, by type.
_POSITIONAL = {"tcp": ("interface", "backlog"), "tcp6": ("backlog", "interface")}
_DEFAULT_INTERFACE = {"tcp": "", "tcp6": "::"}


def tcpAddress(description: str) -> TCPAddress | None:
    """
    The address a C{tcp:} or C{tcp6:} endpoint description listens on;
    L{None} for any other type (C{unix:}...).

    @raise ValueError: If the port or backlog is not a number.
    """
    positional, named = splitDescription(description)
    kind = positional[0] if positional else ""
    if kind not in _POSITIONAL:
        return None
    fields = dict(zip(("port", *_POSITIONAL[kind]), positional[1:], strict=False))
    fields.update(named)
    interface = fields.get("interface", _DEFAULT_INTERFACE[kind])
    return TCPAddress(
        family=socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET,
        interface=interface,
        port=int(fields["port"]),
        backlog=int(fields.get("backlog", "50")),
    )


def _sockaddr(address: TCPAddress, port: int) -> tuple[object, ...]:
    if address.family == socket.AF_INET6:
        flags = socket.AI_NUMERICHOST
        info = socket.getaddrinfo(address.interface, port, socket.AF_INET6, 0, 0, flags)
        return info[0][4]
    return (address.interface, port)


def _listening(address: TCPAddress, port: int, reusePort: bool) -> socket.socket:
    """
    A socket bound to C{address} on C{port}, with C{SO_REUSEPORT} when
    C{reusePort}; not yet listening.
    """
    s = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(_sockaddr(address, port))
    except BaseException:
        s.close()
        raise
    return s


def bindGroup(address: TCPAddress, count: int) -> list[socket.socket]:
    """
    C{count} non-blocking listening sockets on C{address}, each with
    C{SO_REUSEPORT}: all on its port, or, for port 0, on one free port
    the first is given.  All or nothing.

    @raise OSError: If they cannot be bound; C{EADDRINUSE} too when
        another group of sockets already holds the port (sockets that
        share a port never see that error themselves).
    """
    port = address.port
    if port != 0:
        # A socket without SO_REUSEPORT cannot bind where any socket
        # listens, reuse-port group or not.
        _listening(address, port, reusePort=False).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = _listening(address, port, reusePort=True)
            sockets.append(s)
            port = s.getsockname()[1]
            s.listen(address.backlog)
            s.setblocking(False)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets
