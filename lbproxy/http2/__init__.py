# -*- test-case-name: lbproxy.test.test_http2 -*-
"""
HTTP/2 at the edge: each stream of a client's HTTP/2 connection becomes a
request on the same path as an HTTP/1.1 one (the site's resource, the
proxy, the HTTP/1.1 backend pool, the access log).

Built on the C{h2} library's sans-I/O L{h2.connection.H2Connection}, with
lbproxy's own glue (L{lbproxy.http2.connection}) rather than twisted.web's
C{twisted[http2]} channel: that one drops the connection with a traceback
after some hundreds of rapidly reset streams, has no limits of its own on
resets or control-frame floods, and would bypass the edge's request (its
streamed body, head checks and hooks). L{lbproxy.http2.negotiate} picks
HTTP/2 or HTTP/1.1 per connection (ALPN on TLS, the connection preface
for prior-knowledge h2c).
"""

from lbproxy.http2.negotiate import NegotiatingFactory
from lbproxy.http2.settings import HTTP2Settings

__all__ = ["HTTP2Settings", "NegotiatingFactory"]
