# -*- test-case-name: lbproxy.test.test_tls -*-
"""
TLS: the server policy (L{policy}), certificates and their loading
(L{certificates}), the server contexts chosen by name and their reload
(L{sni}), the edge's server endpoint (L{server}) and the backend client
side (L{client}).
"""
