"""
End-to-end tests: the installed C{twistd lbproxy} run as a subprocess, with
real backends, real TLS clients and real sockets on loopback.

Run them from the repository root with C{trial tests}.
"""
