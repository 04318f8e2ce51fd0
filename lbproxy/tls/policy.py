# -*- test-case-name: lbproxy.test.test_tls -*-
"""
lbproxy's server TLS policy: Mozilla's "intermediate" profile, or "modern"
with C{--tls-min 1.3}; resumption on, or off with C{--tls-resumption off}.

Every server context is built by L{serverContext}, so that the protocol
versions, ciphers, options and ALPN change in one place:

    - TLS 1.2 and 1.3 only (1.3 only with C{minimumVersion="1.3"});
    - for TLS 1.2, ECDHE key exchange with AES-GCM or ChaCha20-Poly1305
      only (forward secrecy and AEAD; ECDSA and RSA certificates); TLS 1.3's
      three suites are all both;
    - key exchange over X25519, P-256 or P-384 (and X25519MLKEM768 where
      OpenSSL has it);
    - no compression, no renegotiation, the server's cipher order;
    - session tickets and a server-side session cache (resumption), or,
      with C{resumption=False}, neither: every handshake is a full one;
    - ALPN offering only L{ALPN_PROTOCOLS}, whatever the site could speak.

pyOpenSSL has no API for the key exchange groups, so L{serverContext} sets
them through pyOpenSSL's own (private) OpenSSL bindings; nothing here
touches Twisted.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto

from lbproxy.tls.certificates import ServerCertificate, TLSConfigError

__all__ = [
    "ALPN_PROTOCOLS",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "TLS_VERSIONS",
    "serverContext",
]

# The application protocols offered by ALPN, most preferred first (with
# C{--http2 on}, C{h2} comes first: see ServerTLSSettings.alpnProtocols).
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)

# The TLS versions C{--tls-min} accepts: 1.2 is Mozilla's "intermediate"
# profile, 1.3 its "modern" one.
TLS_VERSIONS: dict[str, int] = {
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}

# Mozilla's "intermediate" TLS 1.2 suites, in its order, without the DHE
# ones (lbproxy does elliptic-curve key exchange only): ECDHE, AEAD.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# TLS 1.3's suites; every one is AEAD and every TLS 1.3 key exchange is
# ephemeral.
TLS13_CIPHERSUITES = ":".join(
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)

# Key exchange groups, most preferred first: Mozilla's X25519, P-256 and
# P-384, after the post-quantum hybrid where OpenSSL has it.  Not X448 or
# P-521, which OpenSSL would otherwise also accept.
_GROUPS = (b"X25519MLKEM768:X25519:P-256:P-384", b"X25519:P-256:P-384")

_SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
)


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """
    The ALPN protocol for a connection: the first of L{ALPN_PROTOCOLS} the
    client offers, or none (the handshake goes on without ALPN).
    """
    return _select(ALPN_PROTOCOLS, offered)


def _select(protocols: tuple[bytes, ...], offered: list[bytes]) -> bytes:
    for protocol in protocols:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def _setGroups(context: SSL.Context) -> None:
    """
    Limit C{context}'s key exchange to L{_GROUPS}.  pyOpenSSL has no API for
    this, so it calls OpenSSL through pyOpenSSL's bindings; the first list
    this OpenSSL accepts is used.
    """
    from OpenSSL._util import lib

    for groups in _GROUPS:
        if lib.SSL_CTX_set1_curves_list(context._context, groups) == 1:
            return
        lib.ERR_clear_error()
    raise TLSConfigError("this OpenSSL supports none of X25519, P-256 and P-384")


def serverContext(
    minimumVersion: str,
    certificate: ServerCertificate,
    alpnProtocols: tuple[bytes, ...] = ALPN_PROTOCOLS,
    resumption: bool = True,
) -> SSL.Context:
    """
    A new server context for C{certificate}: the one place lbproxy's server
    TLS policy is set (see the module docstring).

    @param minimumVersion: a key of L{TLS_VERSIONS}.
    @param certificate: what the context serves.
    @param alpnProtocols: the protocols ALPN may choose, most preferred
        first.
    @param resumption: whether a client may resume an earlier session (by
        session ticket, or by session ID from the server's cache); if not,
        neither is kept and every handshake is a full one.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(TLS_VERSIONS[minimumVersion])
    context.set_options(_SERVER_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _setGroups(context)
    context.use_privatekey(crypto.PKey.from_cryptography_key(certificate.key))
    context.use_certificate(crypto.X509.from_cryptography(certificate.certificate))
    for intermediate in certificate.chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_NONE)
    if resumption:
        context.set_session_id(b"lbproxy")
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    else:
        # Both: with tickets off alone, OpenSSL resumes TLS 1.2 sessions by
        # ID and TLS 1.3 ones by "stateful" tickets, both from its cache.
        # (TLS 1.3 clients are still sent such a ticket; it never resumes.)
        context.set_options(SSL.OP_NO_TICKET)
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if alpnProtocols == ALPN_PROTOCOLS:
        context.set_alpn_select_callback(_selectALPN)
    else:
        context.set_alpn_select_callback(lambda c, offered: _select(alpnProtocols, offered))
    return context
