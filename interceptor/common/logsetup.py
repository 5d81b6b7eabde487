"""Logging for both processes: one line per event, plain text or JSON, or
records with structured fields straight into the systemd journal.

Callers pass structured fields with ``extra=`` (see ``FIELDS``); tokens,
signatures and keys are never passed to a logger in the first place.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys
from typing import Any

FIELDS = ("method", "route", "status", "ms", "request_id", "instance", "tap", "node")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key in FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Python level -> syslog priority (journal PRIORITY=).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
_MAX_VALUE = 48 * 1024  # one datagram; the journal takes far more, the socket buffer less


class JournalHandler(logging.Handler):
    """Sends each record to the journal's native socket with structured
    fields: MESSAGE, PRIORITY, LOGGER, CODE_FILE/CODE_LINE/CODE_FUNC,
    SYSLOG_IDENTIFIER and every ``FIELDS`` key upper-cased (``journalctl
    STATUS=503``). Falls back to stderr when the socket is gone."""

    def __init__(self, identifier: str, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._identifier = identifier
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._fallback = logging.StreamHandler(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                      "SYSLOG_IDENTIFIER": self._identifier, "LOGGER": record.name,
                      "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno),
                      "CODE_FUNC": record.funcName}
            for key in FIELDS:
                if key in record.__dict__:
                    fields[key.upper()] = str(record.__dict__[key])
            self._sock.sendto(journal_datagram(fields), self._path)
        except OSError:
            self._fallback.emit(record)
        except Exception:  # logging must never raise
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def journal_datagram(fields: dict[str, str]) -> bytes:
    """The native journal protocol: ``KEY=value`` lines, or for values with a
    newline ``KEY``, newline, 64-bit little-endian length, value, newline."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")[:_MAX_VALUE]
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal() -> bool:
    """systemd sets $JOURNAL_STREAM to the device:inode of the stream it
    connected stderr to (systemd.exec(5)); only then is stderr the journal."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


LOG_FORMATS = ("auto", "text", "json", "journal")


def setup_logging(fmt: str, level: str, identifier: str = "interceptor") -> None:
    """``fmt``: text, json, journal, or auto (journal when systemd connected
    stderr to the journal, else text)."""
    if fmt == "auto":
        fmt = "journal" if stderr_is_journal() else "text"
    handler: logging.Handler = (JournalHandler(identifier) if fmt == "journal"
                                else logging.StreamHandler(sys.stderr))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print request lines; ours are structured.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
