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
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.web.server import Request

from lbproxy.http.logformats import (
    FORMATS,
    LBPROXY_FORMAT,
    CombinedFormat,
    Entry,
    JSONFormat,
    lbproxyFields,
)
from lbproxy.proxy import ProxyRecord, proxyRecordOf


class AccessLog:
    """
    Formats and writes access log lines, in one of L{FORMATS}
    (see L{lbproxy.http.logformats}).

    Events carry their fields as keys (C{client}, C{method}, C{path},
    C{status}, C{bytes}, C{backend}, C{upstream}... in lbproxy's format;
    in C{json} the object's keys but C{time}, the event's own; the line
    itself as C{line} in C{json} and C{combined}) so
    observers can use them without parsing the text.
    """

    def __init__(
        self,
        write: Callable[[str], object] | None,
        enabled: bool = True,
        format: str = "lbproxy",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        @param write: Called with each formatted line (newline included);
            L{None} sends events to twisted.logger instead.
        @param enabled: False drops every line (C{--access-log none}).
        @param format: One of L{FORMATS}.
        @param clock: The time now, for the C{json} and C{combined} lines'
            time and a request's duration; on the clock the edge's
            reactor keeps.
        @raise ValueError: For a format not in L{FORMATS}.
        """
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        self._log = Logger(namespace="lbproxy.access")
        self._write = write
        self._enabled = enabled
        self._file: IO[str] | None = None
        self._clock = clock
        self.format = format
        self._combined = CombinedFormat() if format == "combined" else None
        self._json = JSONFormat() if format == "json" else None
        self.path: str | None = None

    @classmethod
    def fromOption(cls, option: str | None, format: str = "lbproxy") -> AccessLog:
        """
        Build the log C{--access-log} asks for: L{None} for twisted.logger,
        C{-} for stdout, C{none} for nothing, anything else a file path
        (appended to, line-buffered, once L{open}ed), each line in
        C{format}. Opens nothing.
        """
        if option is None:
            return cls(None, format=format)
        if option == "none":
            return cls(None, enabled=False, format=format)
        if option == "-":
            return cls(_stdoutWriter(), format=format)
        log = cls(_discard, format=format)
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
        self._emit(
            Entry(
                client=record.client or _host(request.getClientAddress()),
                method=request.method,
                target=request.uri,
                protocol=request.clientproto,
                status=request.code,
                size=request.sentLength,
                record=record,
                requestId=getattr(request, "requestId", None),
                receivedAt=getattr(request, "receivedAt", None),
                headers=request.requestHeaders,
                transport=getattr(request, "transport", None),
            )
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
        requestId: bytes | None = None,
        transport: Any = None,
    ) -> None:
        """
        Log a request refused before it reached the proxy resource.

        @param requestId: The ID it was answered with, if any.
        @param transport: The client connection's transport, if known.
        """
        if not self._enabled:
            return
        self._emit(
            Entry(
                client=_host(address),
                method=method,
                target=path,
                protocol=protocol,
                status=status,
                size=size,
                record=ProxyRecord(error=error),
                requestId=requestId,
                transport=transport,
            )
        )

    def _emit(self, entry: Entry) -> None:
        if self._json is not None:
            fields = self._json.fields(entry, self._clock())
            line = JSONFormat.dump(fields)
            # An event's "time" is its own (legacy observers read it).
            del fields["time"]
            self._line(line, fields)
        elif self._combined is not None:
            self._line(self._combined.line(entry, self._clock()), {})
        elif self._write is None:
            self._log.info(LBPROXY_FORMAT, **lbproxyFields(entry))
        else:
            self._write(LBPROXY_FORMAT.format(**lbproxyFields(entry)) + "\n")

    def _line(self, line: str, fields: dict[str, Any]) -> None:
        if self._write is None:
            self._log.info("{line}", line=line, **fields)
        else:
            self._write(line + "\n")


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
