"""What a renderer returns for one guest path, and the small constructors for it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
XML = "text/xml; charset=utf-8"
YAML = "text/yaml; charset=utf-8"
OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class Rendered:
    """The response to one guest GET: status, body and content type."""

    status: int
    body: bytes
    content_type: str


NOT_FOUND = Rendered(404, b"Not Found\n", TEXT)


def text(value: str) -> Rendered:
    return Rendered(200, value.encode("utf-8", errors="replace"), TEXT)


def listing(entries: list[str]) -> Rendered:
    """A directory listing: one entry per line, no trailing newline (as EC2 does)."""
    return text("\n".join(entries))


def json_bytes(value: Any) -> bytes:
    """JSON as guests get it: ASCII-only escapes, so any string (even a lone
    surrogate) yields valid UTF-8, and stable output for stable ETags."""
    return json.dumps(value, ensure_ascii=True, indent=2).encode("ascii")


def json_body(value: Any) -> Rendered:
    return Rendered(200, json_bytes(value), JSON)


def octets(body: bytes) -> Rendered:
    return Rendered(200, body, OCTETS)


def etag_of(body: bytes) -> str:
    """A strong, quoted ETag that depends on the body alone."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
