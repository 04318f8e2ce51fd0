# -*- test-case-name: lbproxy.test.test_discovery -*-
"""
The options of backends from DNS (C{dns:} and C{srv:} items of
C{--backends}), mixed into L{lbproxy.cli.options.Options}, and their
checking into L{DiscoverySettings}.

    --resolver ADDRESS[:PORT]   the one name server to ask
    --dns-min-ttl SECONDS       fewest seconds between lookups of a name
    --dns-max-ttl SECONDS       most seconds between lookups of a name
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from lbproxy.discovery.resolver import (
    DEFAULT_MAX_TTL,
    DEFAULT_MIN_TTL,
    DiscoverySettings,
    ResolverSpecError,
    parseServer,
)

__all__ = ["DiscoveryOptions", "discoverySettings"]


class DiscoveryOptions(usage.Options):
    """
    How C{dns:} and C{srv:} backends are looked up.
    """

    optParameters = [
        [
            "resolver",
            None,
            None,
            "The name server (ADDRESS[:PORT], port 53 by default) that dns: and srv: "
            "backends are looked up on. Default: those of /etc/resolv.conf, after "
            "/etc/hosts.",
        ],
        [
            "dns-min-ttl",
            None,
            f"{DEFAULT_MIN_TTL:g}",
            "Fewest seconds between two lookups of a dns: or srv: name, whatever its "
            "TTL; also the wait before trying again after a failed or empty answer.",
        ],
        [
            "dns-max-ttl",
            None,
            f"{DEFAULT_MAX_TTL:g}",
            "Most seconds between two lookups of a dns: or srv: name, whatever its TTL.",
        ],
    ]


def discoverySettings(options: Mapping[str, Any]) -> DiscoverySettings:
    """
    The L{DiscoverySettings} that L{DiscoveryOptions} give.

    @raise usage.UsageError: For a bad value, naming the option.
    """
    server = None
    if options["resolver"] is not None:
        try:
            server = parseServer(options["resolver"])
        except ResolverSpecError as e:
            raise usage.UsageError(str(e)) from None
    low, high = _seconds(options, "dns-min-ttl"), _seconds(options, "dns-max-ttl")
    if high < low:
        raise usage.UsageError(f"--dns-max-ttl ({high:g}) must be at least --dns-min-ttl ({low:g})")
    return DiscoverySettings(server=server, minTTL=low, maxTTL=high)


def _seconds(options: Mapping[str, Any], name: str) -> float:
    text = options[name]
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number of seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise usage.UsageError(f"--{name} must be greater than 0, not {text!r}")
    return value
