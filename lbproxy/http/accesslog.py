"""
The access log: one line per request, to twisted.logger, a file, stdout,
or nowhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.web.server import Request

_FORMAT = (
    '{client} "{method} {path} {protocol}" {status} {bytes} '
    "backend={backend} upstream={upstream}{extra}"
)


class AccessLog:
    """
    Formats and writes access log lines.

    Events carry their fields as keys (C{client}, C{method}, C{path},
    C{status}, C{bytes}, C{backend}, C{upstream}...) so observers can use
    them without parsing the text.
    """

    def __init__(self, write: Callable[[str], object] | None, enabled: bool = True) -> None:
        """
        @param write: Called with each formatted line (newline included);
            L{None} sends events to twisted.logger instead.
        @param enabled: False drops every line (C{--access-log none}).
        """
        self._log = Logger(namespace="lbproxy.access")
        self._write = write
        self._enabled = enabled
        self._file: IO[str] | None = None

    @classmethod
    def fromOption(cls, option: str | None) -> AccessLog:
        """
        Build the log C{--access-log} asks for: L{None} for twisted.logger,
        C{-} for stdout, C{none} for nothing, anything else a file path
        (appended to, line-buffered).

        @raise OSError: If the file cannot be opened.
        """
        if option is None:
            return cls(None)
        if option == "none":
            return cls(None, enabled=False)
        if option == "-":
            return cls(_stdoutWriter())
        logFile = open(option, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open
        log = cls(logFile.write)
        log._file = logFile
        return log

    def close(self) -> None:
        """
        Close the log file, if this log owns one.
        """
        if self._file is not None:
            self._file.close()
            self._file = None

    def logRequest(self, request: Request) -> None:
        """
        Log a request the proxy has answered (or whose answer was cut).
        """
        if not self._enabled:
            return
        record = getattr(request, "proxyRecord", None)
        backend = getattr(record, "backend", None)
        upstream = getattr(record, "upstreamSeconds", None)
        extra = ""
        tried = getattr(record, "tried", [])
        if len(tried) > 1:
            extra += f" retries={len(tried) - 1} tried={','.join(str(b) for b in tried)}"
        toBackend = getattr(record, "tunnelToBackend", None)
        if toBackend is not None:
            seconds = getattr(record, "tunnelSeconds", None)
            extra += (
                f" tunnel_up={toBackend} tunnel_down={getattr(record, 'tunnelToClient', 0)}"
                + (f" tunnel_time={seconds:.3f}s" if seconds is not None else "")
            )
        if getattr(record, "truncated", False):
            extra += " truncated"
        error = getattr(record, "error", None)
        if error:
            extra += f' error="{error}"'
        self._emit(
            client=getattr(record, "client", None) or _host(request.getClientAddress()),
            method=_text(request.method),
            path=_text(request.uri),
            protocol=_text(request.clientproto),
            status=request.code,
            bytes=request.sentLength,
            backend=str(backend) if backend is not None else "-",
            upstream="-" if upstream is None else f"{upstream:.3f}s",
            extra=extra,
        )

    def logRejected(
        self,
        address: IAddress,
        method: bytes | None,
        path: bytes | None,
        protocol: bytes | None,
        status: int,
        size: int,
        error: str,
    ) -> None:
        """
        Log a request refused before it reached the proxy resource.
        """
        if not self._enabled:
            return
        self._emit(
            client=_host(address),
            method=_text(method or b"-"),
            path=_text(path or b"-"),
            protocol=_text(protocol or b"-"),
            status=status,
            bytes=size,
            backend="-",
            upstream="-",
            extra=f' error="{error}"',
        )

    def _emit(self, **fields: Any) -> None:
        if self._write is None:
            self._log.info(_FORMAT, **fields)
        else:
            self._write(_FORMAT.format(**fields) + "\n")


def _stdoutWriter() -> Callable[[str], object]:
    def write(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    return write


def _host(address: IAddress) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "-"


def _text(value: bytes) -> str:
    # Request lines are ASCII; escape anything else so one line stays one line.
    text = value.decode("ascii", "backslashreplace")
    return text.translate(_ESCAPES)


_ESCAPES = (
    {c: f"\\x{c:02x}" for c in range(32)}
    | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
    | {127: "\\x7f", ord('"'): '\\"'}
)
