# -*- test-case-name: lbproxy.test.test_accesslog -*-
"""
The access log: one line per request, to twisted.logger, a file, stdout,
or nowhere.

A log to a file is built with only the file's path (L{AccessLog.fromOption}
does no I/O); the service opens the file when it starts
(L{AccessLog.open}) and closes it when it stops.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.web.server import Request

from lbproxy.proxy import ProxyRecord, proxyRecordOf

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
        self.path: str | None = None

    @classmethod
    def fromOption(cls, option: str | None) -> AccessLog:
        """
        Build the log C{--access-log} asks for: L{None} for twisted.logger,
        C{-} for stdout, C{none} for nothing, anything else a file path
        (appended to, line-buffered, once L{open}ed). Opens nothing.
        """
        if option is None:
            return cls(None)
        if option == "none":
            return cls(None, enabled=False)
        if option == "-":
            return cls(_stdoutWriter())
        log = cls(_discard)
        log.path = option
        return log

    def open(self) -> None:
        """
        Open the log's file, if it writes to one that is not open yet; until
        then its lines are dropped.

        @raise OSError: If the file cannot be opened.
        """
        if self.path is not None and self._file is None:
            logFile = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open
            self._file = logFile
            self._write = logFile.write

    def close(self) -> None:
        """
        Close the log file, if this log owns one (L{open} opens it again).
        """
        if self._file is not None:
            self._file.close()
            self._file = None
            self._write = _discard

    def logRequest(self, request: Request) -> None:
        """
        Log a request the proxy has answered (or whose answer was cut).
        """
        if not self._enabled:
            return
        record = proxyRecordOf(request) or ProxyRecord()
        extra = ""
        tried = record.tried
        if len(tried) > 1:
            extra += f" retries={len(tried) - 1} tried={','.join(str(b) for b in tried)}"
        if record.tunnelToBackend is not None:
            seconds = record.tunnelSeconds
            extra += f" tunnel_up={record.tunnelToBackend} tunnel_down={record.tunnelToClient}"
            if seconds is not None:
                extra += f" tunnel_time={seconds:.3f}s"
        if record.truncated:
            extra += " truncated"
        if record.error:
            extra += f' error="{record.error}"'
        backend = record.backend
        upstream = record.upstreamSeconds
        self._emit(
            client=record.client or _host(request.getClientAddress()),
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


def _discard(line: str) -> None:
    pass


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
