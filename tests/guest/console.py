"""Parse the serial console of the test guest (protocol: see init.sh)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class GuestResponse:
    """One HTTP exchange the guest made; ``raw`` is exactly what nc received."""

    seq: int
    method: str
    path: str
    raw: bytes
    nc_status: int | None

    @property
    def status(self) -> int | None:
        """HTTP status code, or None when nothing (or no HTTP) came back."""
        head = self.raw.split(b"\r\n", 1)[0].split()
        if len(head) >= 2 and head[0].startswith(b"HTTP/") and head[1].isdigit():
            return int(head[1])
        return None

    @property
    def headers(self) -> dict[str, str]:
        """Response headers, names lower-cased (last one wins)."""
        head = self.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        out: dict[str, str] = {}
        for line in head:
            name, sep, value = line.partition(b":")
            if sep:
                out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return out

    @property
    def body(self) -> bytes:
        """The body, de-chunked when the server used chunked encoding."""
        _, sep, body = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return _dechunk(body)
        return body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


@dataclass
class GuestResult:
    """What one guest run printed and how it ended."""

    console: str
    returncode: int | None
    timed_out: bool
    duration: float
    init_uptime: float | None = None
    done_uptime: float | None = None
    net_ok: bool = False
    net_detail: str = ""
    responses: list[GuestResponse] = field(default_factory=list)
    instance_id: str | None = None
    """What the guest itself read as its instance id (cdrom and serial modes)."""
    cdrom_mounted: bool | None = None
    cdrom_read_only: bool | None = None

    @property
    def completed(self) -> bool:
        """The guest ran its whole script and powered off by itself."""
        return not self.timed_out and self.done_uptime is not None

    def response(self, path: str, method: str = "GET") -> GuestResponse:
        for r in self.responses:
            if r.path == path and r.method == method:
                return r
        raise KeyError(f"guest made no {method} {path}; console tail:\n{self.tail()}")

    def body(self, path: str) -> bytes:
        return self.response(path).body

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def parse_console(console: str, result: GuestResult) -> None:
    """Fill ``result`` from the marker lines in ``console``."""
    current: tuple[int, str, str] | None = None
    chunks: list[str] = []
    for raw_line in console.splitlines():
        line = raw_line.strip("\r\n\x00 ")
        # Marker lines may follow other console output on the same line.
        for marker in ("IMDINIT ", "IMDNET ", "IMDBEGIN ", "IMDEND ", "IMDDONE ", "IMDID ",
                       "IMDCDROM ", "IMDRO "):
            pos = line.find(marker)
            if pos > 0:
                line = line[pos:]
                break
        words = line.split()
        if not words:
            continue
        tag = words[0]
        if tag == "IMDINIT" and len(words) > 1:
            result.init_uptime = _float(words[1])
        elif tag == "IMDNET" and len(words) > 1:
            result.net_ok = words[1] == "ok"
            result.net_detail = " ".join(words[2:])
        elif tag == "IMDBEGIN" and len(words) >= 4:
            current = (int(words[1]), words[2], " ".join(words[3:]))
            chunks = []
        elif tag == "IMDEND" and current is not None:
            status = int(words[2]) if len(words) > 2 and words[2].isdigit() else None
            try:
                raw = base64.b64decode("".join(chunks))
            except binascii.Error:
                raw = b""
            result.responses.append(GuestResponse(current[0], current[1], current[2],
                                                  raw, status))
            current = None
        elif tag == "IMDDONE" and len(words) > 1:
            result.done_uptime = _float(words[1])
        elif tag == "IMDID":
            result.instance_id = words[1] if len(words) > 1 else ""
        elif tag == "IMDCDROM" and len(words) > 1:
            result.cdrom_mounted = words[1] == "ok"
        elif tag == "IMDRO" and len(words) > 1:
            result.cdrom_read_only = words[1] == "yes"
        elif current is not None and _BASE64_LINE.match(line):
            chunks.append(line)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
