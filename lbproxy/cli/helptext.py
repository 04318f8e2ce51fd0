# -*- test-case-name: lbproxy.test.test_tap -*-
"""
C{twistd lbproxy --help}: the options in groups, the basics first, in the
order of docs/operations.md, instead of Twisted's one alphabetical list.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Basics",
        (
            "backends",
            "listen",
            "config",
            "watch-config",
            "adhoc",
            "demo",
            "chooser",
            "allow-host",
            "workers",
            "reuse-port",
            "no-reuse-port",
        ),
    ),
    (
        "Operating",
        (
            "admin",
            "admin-token-file",
            "metrics",
            "access-log",
            "access-log-format",
            "request-id",
            "request-id-header",
            "decision-sample",
            "trusted-proxy",
        ),
    ),
    (
        "Choosers",
        (
            "hash-key",
            "hash-balance-factor",
            "sticky-cookie",
            "sticky-fallback",
            "sticky-secret-file",
        ),
    ),
    ("Backends from DNS", ("resolver", "dns-min-ttl", "dns-max-ttl")),
    (
        "Timeouts (seconds)",
        (
            "handshake-timeout",
            "header-timeout",
            "body-timeout",
            "connect-timeout",
            "timeout",
            "send-timeout",
            "client-idle-timeout",
            "tunnel-idle-timeout",
            "backend-idle-timeout",
            "drain-timeout",
        ),
    ),
    (
        "Limits",
        (
            "max-body",
            "max-target",
            "max-header-size",
            "max-header-fields",
            "max-connections",
            "max-idle-per-backend",
        ),
    ),
    (
        "Health and resilience",
        (
            "health-interval",
            "health-path",
            "health-timeout",
            "health-fall",
            "health-rise",
            "max-fails",
            "eject-time",
            "eject-max-time",
            "max-ejection-percent",
            "eject-on-5xx",
            "retries",
            "retry-budget",
            "slow-start",
        ),
    ),
    (
        "TLS",
        (
            "tls-min",
            "tls-resumption",
            "cert",
            "cert-dir",
            "hsts",
            "redirect-http",
            "backend-ca",
            "backend-insecure",
        ),
    ),
    (
        "HTTP/2",
        (
            "http2",
            "h2c",
            "http2-max-concurrent-streams",
            "http2-max-header-list-size",
            "http2-initial-window-size",
            "http2-max-frame-size",
            "http2-stream-buffer",
        ),
    ),
)
"""
Each group's heading and its options, in the order shown; any option not
named here is shown last, under "Other".
"""


def groupedUsage(options: usage.Options, width: int | None) -> str:
    """
    The options part of C{options}' usage text, grouped by L{GROUPS}, in
    Twisted's own entry format (so that each entry reads as it always did,
    aligned in one column throughout).
    """
    entries = _entries(options)
    # docMakeChunks sorts the list it is given, then makes one chunk per
    # entry in that order.
    chunks = usage.docMakeChunks(entries, width or 80)
    chunkOf = {entry["long"]: chunk for entry, chunk in zip(entries, chunks, strict=True)}
    sections = []
    shown: set[str] = set()
    for heading, names in (*GROUPS, ("Other", tuple(sorted(chunkOf)))):
        group = [name for name in names if name in chunkOf and name not in shown]
        if group:
            shown.update(group)
            sections.append(f"{heading}:\n" + "".join(chunkOf[name] for name in group))
    return "\n".join(sections)


def _entries(options: usage.Options) -> list[dict[str, Any]]:
    """
    Twisted's description of every option (as L{usage.Options.getUsage}
    builds it).
    """
    shortOf: dict[str, str | None] = {}
    for key, name in options.synonyms.items():
        if key != name and len(key) == 1:
            shortOf[name] = key
        else:
            shortOf.setdefault(name, None)
    entries = []
    for opt in options.longOpt:
        kind = "parameter" if opt.endswith("=") else "flag"
        name = opt.rstrip("=")
        entries.append(
            {
                "long": name,
                "short": shortOf.get(name),
                "doc": options.docs[name],
                "optType": kind,
                "default": options.defaults.get(name),
                "dispatch": options._dispatch.get(name),
            }
        )
    return entries


__all__ = ["GROUPS", "groupedUsage"]
