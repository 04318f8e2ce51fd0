# -*- test-case-name: lbproxy.test.test_edge -*-
"""
The client side: the edge's HTTP/1.1 channel and request (L{edge}), strict
head checks and the one-pass parser (L{checks}), request targets
(L{target}), hop-by-hop and forwarding headers (L{headers}), the
HTTP-to-HTTPS redirect (L{redirect}) and the access log (L{accesslog}).
"""
