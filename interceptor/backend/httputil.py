"""Small HTTP helpers shared by the route modules: JSON in/out, ETags, pages."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from interceptor.backend.errors import BadRequest, PreconditionFailed, TooLarge
from interceptor.backend.limits import DEFAULT_PAGE, MAX_PAGE


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:  # StreamReader.read(n) returns what has arrived, not n bytes
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(raw: bytes) -> Any:
    """Strict JSON: a key given twice is refused, since readers disagree about
    which one wins and a check could read one and the store keep the other."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise BadRequest(f"invalid JSON: key {str(exc)!r} given twice") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


async def read_json(request: web.Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        raise BadRequest("request body must be JSON")
    return parse_json(raw)


async def read_json_object(request: web.Request, limit: int, *,
                           optional: bool = False) -> dict[str, Any]:
    if optional:
        raw = await read_body(request, limit)
        if not raw.strip():
            return {}
        body = parse_json(raw)
    else:
        body = await read_json(request, limit)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def etag(revision: int) -> str:
    return f'"{revision}"'


def reply(data: Any, *, status: int = 200, revision: int | None = None) -> web.Response:
    resp = web.json_response(data, status=status,
                             dumps=lambda v: json.dumps(v, ensure_ascii=False))
    if revision is not None:
        resp.headers["ETag"] = etag(revision)
    return resp


def if_match(request: web.Request) -> int | None:
    """The revision an ``If-Match`` header names (None = header absent or ``*``)."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    value = header.strip().removeprefix("W/").strip('"')
    try:
        revision = int(value)
    except ValueError:
        raise PreconditionFailed("If-Match does not name a revision of this object") from None
    if revision <= 0:
        raise PreconditionFailed("If-Match does not name a revision of this object")
    return revision


def check_match(request: web.Request, current: int) -> int | None:
    """Raise 412 when If-Match names another revision; return the expected one."""
    wanted = if_match(request)
    if wanted is not None and wanted != current:
        raise PreconditionFailed(f"object is at revision {current}, not {wanted}")
    return wanted


def page_args(request: web.Request) -> tuple[int, str | None]:
    try:
        limit = int(request.query.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be 1-{MAX_PAGE}")
    cursor = request.query.get("cursor")
    if cursor is None:
        return limit, None
    try:
        return limit, base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, ValueError):
        raise BadRequest("invalid cursor") from None


def next_cursor(ids: list[str], limit: int) -> str | None:
    if len(ids) < limit or not ids:
        return None
    return base64.urlsafe_b64encode(ids[-1].encode()).decode()
