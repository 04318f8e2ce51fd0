# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
The zope interfaces that connect lbproxy's parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.web.iweb import IRequest

    from lbproxy.upstream.backends import Backend


class IChooser(Interface):
    """
    A load-balancing policy: picks the backend for one request.

    A chooser is given, on every call, only the backends that can take
    traffic, in configured order. It never blocks and never does I/O. It may
    keep a cursor of its own; live per-backend counters (in-flight requests,
    totals) live on L{lbproxy.upstream.backends.Backend} and are maintained by the
    proxy, so choosers only read them.
    """

    def choose(
        backends: Sequence[Backend], request: IRequest
    ) -> Backend | None:  # pragma: no cover - interface
        """
        Pick the backend that should serve C{request}.

        @param backends: The backends that can take traffic, never empty
            when called by the proxy, in configured order.
        @param request: The client's request (read-only).
        @return: One of C{backends}, or L{None} if none is acceptable, in
            which case the proxy answers 503.
        """


class IAffinityChooser(IChooser):
    """
    A chooser that also marks responses, e.g. with a cookie naming the
    backend, so that later requests of the same client can be sent there.
    """

    def responseHeaders(
        backend: Backend, request: IRequest
    ) -> Sequence[tuple[bytes, bytes]]:  # pragma: no cover - interface
        """
        Headers to add to the response relayed from C{backend} for
        C{request} (for example C{(b"Set-Cookie", b"...")}). Called once per
        response, before it is written; never blocks.
        """
