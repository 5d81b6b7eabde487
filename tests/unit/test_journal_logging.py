"""Journal logging over the native protocol, received on a real Unix socket."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

from interceptor.common.logsetup import JournalHandler, journal_datagram


def _parse(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            out[line.decode()] = rest[8:8 + size].decode()
            data = rest[8 + size + 1:]
    return out


def test_records_reach_the_journal_with_structured_fields(tmp_path: Path) -> None:
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "socket"))
    journal.settimeout(2)
    handler = JournalHandler("interceptor-node", str(tmp_path / "socket"))
    logger = logging.getLogger("test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s -> %d", "/latest", 503,
                       extra={"status": 503, "route": "/latest", "tap": "tap1"})
        fields = _parse(journal.recv(65536))
        assert fields["MESSAGE"] == "GET /latest -> 503"
        assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "interceptor-node"
        assert (fields["STATUS"], fields["ROUTE"], fields["TAP"]) == ("503", "/latest", "tap1")
        assert fields["LOGGER"] == "test.journal" and fields["CODE_FUNC"].startswith("test_")
    finally:
        logger.removeHandler(handler)
        handler.close()
        journal.close()


def test_multiline_values_use_the_length_form() -> None:
    data = journal_datagram({"MESSAGE": "two\nlines", "A": "b"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nA=b\n"
    assert _parse(data) == {"MESSAGE": "two\nlines", "A": "b"}
