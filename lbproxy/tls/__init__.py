"""
TLS: the server policy, certificates and their reload, SNI, the edge's
server side and the backend client side.
"""
