# -*- test-case-name: lbproxy.test.test_choosers -*-
"""
Cookie affinity: the C{sticky} chooser, and its settings (the cookie's
name, the signing key, the fallback chooser) and their validation.

The proxy marks each response with a cookie naming the backend that served
it; later requests carrying the cookie go back to that backend while it can
take traffic. The cookie value is opaque: a truncated HMAC-SHA256 of the
backend's URL under a secret key, so it neither reveals the backend's
address nor can be made up for a backend by a client that has not been
sent to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence

import attrs
from twisted.web.iweb import IRequest
from zope.interface import implementer

from lbproxy.balancing.errors import ChooserError
from lbproxy.balancing.explain import Explanation
from lbproxy.interfaces import IAffinityChooser, IChooser
from lbproxy.upstream.backends import Backend

DEFAULT_COOKIE = "lbproxy_backend"
DEFAULT_FALLBACK = "random"
MIN_SECRET_BYTES = 16

_TOKEN_BYTES = 16
_CONTEXT = b"lbproxy sticky backend v1\x00"
_COOKIE_NAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)


def newSecret() -> bytes:
    """
    A fresh random signing key (32 bytes from C{os.urandom}).
    """
    return os.urandom(32)


def checkCookieName(name: str) -> None:
    """
    @raise ValueError: Unless C{name} is a valid cookie name (an RFC 6265
        token).
    """
    if not name or not set(name) <= _COOKIE_NAME_CHARACTERS:
        raise ValueError(
            f"--sticky-cookie must be a cookie name (letters, digits, -_.), not {name!r}"
        )


@attrs.frozen
class StickySettings:
    """
    What C{sticky} can be configured with.

    @ivar cookie: The name of its cookie.
    @ivar secret: The key it signs cookies with (at least 16 bytes);
        L{None} generates a random one per process.
    @ivar fallback: The name of the chooser it uses for requests without
        a valid cookie (or whose backend is gone); not C{sticky}.
    """

    cookie: str = DEFAULT_COOKIE
    secret: bytes | None = None
    fallback: str = DEFAULT_FALLBACK

    def check(self) -> None:
        """
        @raise ChooserError: With a one-line message, for a bad cookie name,
            a fallback that is C{sticky} itself or a secret that is too
            short.
        """
        try:
            checkCookieName(self.cookie)
        except ValueError as e:
            raise ChooserError(str(e)) from None
        if self.fallback == "sticky":
            raise ChooserError("--sticky-fallback cannot be sticky itself")
        if self.secret is not None and len(self.secret) < MIN_SECRET_BYTES:
            raise ChooserError(
                f"the sticky cookie secret must be at least {MIN_SECRET_BYTES} bytes"
            )


@implementer(IAffinityChooser)
class StickyChooser:
    """
    Sends a request carrying a valid affinity cookie to the backend the
    cookie names, if that backend is among those that can take traffic;
    every other request goes to C{fallback}. Responses get a
    C{Set-Cookie} naming their backend unless the request already carried
    exactly that cookie.

    The cookie is a session cookie (no expiry), C{Path=/}, C{HttpOnly},
    C{SameSite=Lax}, and C{Secure} on requests that came over TLS.

    @ivar _secret: The HMAC key; cookies made with another key are ignored.
    """

    @classmethod
    def fromSettings(cls, settings: StickySettings, fallback: IChooser) -> StickyChooser:
        """
        The chooser C{settings} (checked) describe, falling back to
        C{fallback} (the chooser C{settings.fallback} names).

        @raise ChooserError: For settings that do not check.
        """
        settings.check()
        secret = settings.secret if settings.secret is not None else newSecret()
        return cls(fallback, secret, settings.cookie)

    def __init__(self, fallback: IChooser, secret: bytes, cookieName: str = DEFAULT_COOKIE) -> None:
        checkCookieName(cookieName)
        self._fallback = fallback
        self._secret = secret
        self._cookie = cookieName.encode("ascii")
        self._tokens: dict[str, bytes] = {}

    def token(self, backend: Backend) -> bytes:
        """
        The cookie value naming C{backend}: 22 URL-safe characters.
        """
        url = backend.url
        token = self._tokens.get(url)
        if token is None:
            digest = hmac.new(self._secret, _CONTEXT + url.encode("utf-8"), hashlib.sha256)
            token = base64.urlsafe_b64encode(digest.digest()[:_TOKEN_BYTES]).rstrip(b"=")
            self._tokens[url] = token
        return token

    def _named(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        The backend among C{backends} that the request's cookie names.
        """
        value = request.getCookie(self._cookie)
        if not value:
            return None
        for backend in backends:
            if hmac.compare_digest(self.token(backend), value):
                return backend
        return None

    def choose(self, backends: Sequence[Backend], request: IRequest) -> Backend | None:
        """
        The backend the cookie names, else the fallback chooser's pick.
        """
        if not backends:
            return None
        named = self._named(backends, request)
        if named is not None:
            return named
        return self._fallback.choose(backends, request)

    def explain(
        self, backends: Sequence[Backend], request: IRequest, chosen: Backend | None
    ) -> Explanation:
        """
        Whether the request's cookie named each backend; when it named
        none, the fallback chooser's explanation too.
        """
        named = self._named(backends, request) if backends else None
        if named is not None:
            return Explanation(
                "the affinity cookie names it",
                [{"named": backend is named} for backend in backends],
            )
        explain = getattr(self._fallback, "explain", None)
        fallback = None if explain is None else explain(backends, request, chosen)
        name = type(self._fallback).__name__
        cookie = (
            "no affinity cookie"
            if not request.getCookie(self._cookie)
            else "the affinity cookie names no backend that can take traffic (or is not valid)"
        )
        if fallback is None or len(fallback.figures) != len(backends):
            return Explanation(f"{cookie}; chosen by {name}", [{"named": False} for _ in backends])
        return Explanation(
            f"{cookie}; {name}: {fallback.reason}",
            [{"named": False, **figures} for figures in fallback.figures],
        )

    def responseHeaders(self, backend: Backend, request: IRequest) -> Sequence[tuple[bytes, bytes]]:
        """
        A C{Set-Cookie} naming C{backend}, unless the request's cookie
        already does.
        """
        if self._named([backend], request) is backend:
            return ()
        cookie = self._cookie + b"=" + self.token(backend) + b"; Path=/; HttpOnly; SameSite=Lax"
        if request.isSecure():
            cookie += b"; Secure"
        return [(b"Set-Cookie", cookie)]


__all__ = [
    "DEFAULT_COOKIE",
    "DEFAULT_FALLBACK",
    "MIN_SECRET_BYTES",
    "StickyChooser",
    "StickySettings",
    "checkCookieName",
    "newSecret",
]
