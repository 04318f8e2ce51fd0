# -*- test-case-name: lbproxy.test.test_client -*-
"""
The backend side: the lean HTTP/1.1 backend connection (L{connection}), the
pooled connections per backend (L{pool}), the request body streamed from
the edge (L{body}), the backends and their pool (L{backends}), active and
passive health (L{health}), retry rules and budget (L{retry}) and response
deadlines (L{deadlines}).
"""
