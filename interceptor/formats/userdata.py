"""User-data as the guest fetches it: one part as is, several as multipart MIME.

Several parties (the owner, the image, the platform) may each contribute a
part. cloud-init and other clients accept a ``multipart/mixed`` document in
which every part carries its own ``Content-Type``; the part's name travels as
its ``Content-Disposition`` filename. The boundary is derived from a hash of
the parts so the same parts always give the same bytes (stable ETags).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from interceptor.formats.document import DocumentError, InstanceDocument, decode_b64

# A media type with optional parameters, and nothing that could end a header.
_CONTENT_TYPE = re.compile(
    r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+"
    r'(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=("[^"\x00-\x1f\x7f]*"|[A-Za-z0-9!#$&^_.+-]+))*$'
)
# text/plain makes cloud-init detect the type from the first line ("#!", "#cloud-config").
FALLBACK_CONTENT_TYPE = "text/plain"
_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\/]')
_ATTR_CHAR = re.compile(r"[A-Za-z0-9!#$&+.^_`|~-]")
_LINE = 76


@dataclass(frozen=True)
class Part:
    name: str
    content_type: str
    data: bytes


def safe_content_type(value: str) -> str:
    """The part's content type if it is a well-formed header value, else text/plain."""
    value = value.strip()
    return value if _CONTENT_TYPE.match(value) else FALLBACK_CONTENT_TYPE


def safe_filename(name: str, index: int) -> str:
    """A filename that cannot break the header or name a path."""
    cleaned = _UNSAFE_FILENAME.sub("_", name).strip()
    return cleaned or f"part-{index:03d}"


def boundary_for(parts: Sequence[Part]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        for field in (part.name.encode("utf-8", "replace"), part.content_type.encode(), part.data):
            digest.update(len(field).to_bytes(8, "big"))
            digest.update(field)
    return "==interceptor-" + digest.hexdigest()[:40] + "=="


def _rfc2231(value: str) -> str:
    """``filename*=utf-8''...`` for a name that is not plain ASCII."""
    quoted = "".join(
        ch if _ATTR_CHAR.match(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
        for ch in value
    )
    return f"filename*=utf-8''{quoted}"


def _disposition(filename: str) -> str:
    if filename.isascii():
        return f'Content-Disposition: attachment; filename="{filename}"'
    return f"Content-Disposition: attachment; {_rfc2231(filename)}"


def multipart(parts: Sequence[Part]) -> bytes:
    """One ``multipart/mixed`` document holding every part, base64 encoded.

    Base64 keeps binary parts (gzip) and CRLF-sensitive scripts intact; a
    base64 line can never start with ``--``, so the boundary cannot collide.
    """
    boundary = boundary_for(parts)
    lines = [
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "MIME-Version: 1.0",
        f"Number-Attachments: {len(parts)}",
        "",
    ]
    for index, part in enumerate(parts):
        encoded = base64.b64encode(part.data).decode("ascii")
        lines += [
            f"--{boundary}",
            f"Content-Type: {safe_content_type(part.content_type)}",
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: base64",
            _disposition(safe_filename(part.name, index)),
            "",
        ]
        lines += [encoded[i:i + _LINE] for i in range(0, len(encoded), _LINE)] or [""]
    lines += [f"--{boundary}--", ""]
    return "\n".join(lines).encode("utf-8")


def parts_of(doc: InstanceDocument) -> list[Part]:
    """The document's user-data parts, decoded; an undecodable part is skipped."""
    out: list[Part] = []
    for entry in doc["user_data"]:
        try:
            data = decode_b64(entry["data_b64"])
        except (DocumentError, KeyError, TypeError):
            continue
        out.append(Part(str(entry.get("name", "")), str(entry.get("content_type", "")), data))
    return out


def compose(doc: InstanceDocument) -> bytes | None:
    """The user-data bytes: None when there are no parts (the guest gets 404)."""
    parts = parts_of(doc)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0].data
    return multipart(parts)
