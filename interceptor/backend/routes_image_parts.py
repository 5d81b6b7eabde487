"""What an image owner contributes to its servers besides metadata.

* ``PUT /v1/images/{id}/user-data`` ``{"user_data": [parts]}`` (parts as a
  server's: name, content_type, base64 data): the image's own user-data
  parts (e.g. a platform image pointing apt at a local mirror). Every server
  of the image gets them *before* its own parts, in the merged multipart
  document and at ``/interceptor/v1/user-data/{name}``; a server part of the
  same name replaces the image's part.
* ``PUT /v1/images/{id}/final-keys`` ``{"restricted": ["key", …]}``: image
  restricted keys that no customer, server or runtime value overrides in the
  merged view (OpenStack ``meta``, ``/interceptor/v1/meta/restricted/``).

Both: the image owner writes (the platform for platform images); the owner
reads with ``GET``. ``If-Match`` is honoured; every server of the image is
told of the change.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import BadRequest, Forbidden, TooLarge
from interceptor.backend.httputil import if_match, read_json_object, reply
from interceptor.backend.limits import MAX_KEY_CHARS
from interceptor.backend.model import Principal
from interceptor.backend.objects import get_owned, put_of, require_customer_or_admin, update
from interceptor.backend.store import base

MAX_FINAL_KEYS = 256


async def _image(request: web.Request) -> tuple[Backend, Principal, base.Record]:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    rec = await get_owned(ctx, who, "image", request.match_info["id"])
    return ctx, who, rec


def _views(rec: base.Record) -> dict[str, dict[str, Any]]:
    return {"user-data": {"user_data": list(rec.data.get("user_data", []))},
            "final-keys": {"restricted": list(rec.data.get("final_keys", []))}}


def _check_final(body: dict[str, Any]) -> list[str]:
    keys = body.get("restricted")
    if set(body) - {"restricted"} or not isinstance(keys, list) or not all(
            isinstance(k, str) and 0 < len(k) <= MAX_KEY_CHARS for k in keys):
        raise BadRequest('final keys must be {"restricted": ["key", …]}')
    if len(keys) > MAX_FINAL_KEYS:
        raise BadRequest(f"at most {MAX_FINAL_KEYS} final keys")
    return list(dict.fromkeys(keys))


async def get_extra(request: web.Request) -> web.Response:
    _, _, rec = await _image(request)
    what = request.path.rsplit("/", 1)[1]
    return reply(_views(rec)[what], revision=rec.revision)


async def put_extra(request: web.Request) -> web.Response:
    ctx, who, rec = await _image(request)
    what = request.path.rsplit("/", 1)[1]
    body = await read_json_object(request, ctx.limits.request_bytes)
    if what == "user-data":
        if set(body) - {"user_data"} or not isinstance(body.get("user_data"), list):
            raise BadRequest('image user-data must be {"user_data": [parts]}')
        field = "user_data"
        value: list[Any] = model.check_user_data(body["user_data"], ctx.limits)
    else:
        field, value = "final_keys", _check_final(body)
    servers = await ctx.store.ids("server", parent=rec.id)

    def check(r: base.Record) -> None:
        if not who.owns(r.owner):
            raise Forbidden(f"not the owner of image {r.id}")

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        data = {**r.data, field: value}
        if model.json_size(data) > ctx.limits.document_bytes:
            raise TooLarge(f"image exceeds the document limit of {ctx.limits.document_bytes} "
                           "bytes")
        return [put_of(r, data)], base.Change(servers, kind="image")

    rev = await update(ctx, "image", rec.id, if_match(request), check, mutate)
    fresh = await ctx.store.get("image", rec.id)
    return reply(_views(fresh)[what] if fresh else {}, revision=rev)


def add_routes(app: web.Application) -> None:
    r = app.router
    for what in ("user-data", "final-keys"):
        r.add_get(f"/v1/images/{{id}}/{what}", get_extra)
        r.add_put(f"/v1/images/{{id}}/{what}", put_extra)
