"""Guest writes that reach beyond the guest-data namespace, and the owner's side of it.

Node endpoints (node token + signature, the instance bound to that node, the
per-instance guest write rate):

* ``PUT …/instances/{iid}/meta/{public|restricted}/{key}`` (UTF-8 text body):
  the guest sets a key of its server's class; only when the owner set
  ``guest_writes`` (403 otherwise). Lifts a consumed-key shadow.
* ``DELETE …/instances/{iid}/meta/{cls}/{key}``: the guest consumes a key —
  see ``interceptor/backend/consumed.py``. 404 when no object shows it.
* ``POST …/instances/{iid}/disable``: the guest switches its own metadata
  off (``metadata_enabled`` false, recorded in ``disabled_by_guest``); only
  the owner can switch it back on (``PATCH /v1/servers/{id}``). The change
  names the node, so its bindings refresh and the datapath refuses the VM.

Owner endpoint: ``PATCH /v1/servers/{id}/guest-data`` (JSON merge patch of
string values, null deletes) writes the same namespace the guest does, so an
owner can hand a guest a value and read the guest's answer back with
``GET /v1/servers/{id}/guest-data?wait_for_change=true``.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from interceptor.backend import consumed, documents, model
from interceptor.backend.context import BACKEND
from interceptor.backend.errors import BadRequest, Forbidden, NotFound, TooLarge
from interceptor.backend.httputil import if_match, read_body, read_json_object, reply
from interceptor.backend.limits import MAX_GUEST_DATA_BYTES, MAX_GUEST_VALUE_BYTES, MAX_KEY_CHARS
from interceptor.backend.objects import (
    binding_nodes,
    get_owned,
    put_of,
    require_customer_or_admin,
    update,
)
from interceptor.backend.routes_common import check_server_size
from interceptor.backend.routes_nodes import _bound, _guest_check, _node, _write_allowed
from interceptor.backend.store import base

GUEST_CLASSES = ("public", "restricted")


def _key_args(request: web.Request) -> tuple[str, str, str]:
    iid, cls, key = (request.match_info[k] for k in ("iid", "cls", "key"))
    if cls not in GUEST_CLASSES:
        raise BadRequest("a guest may write public or restricted keys only")
    if not key or len(key) > MAX_KEY_CHARS:
        raise BadRequest(f"key must be 1-{MAX_KEY_CHARS} characters")
    return iid, cls, key


async def put_meta_key(request: web.Request) -> web.Response:
    iid, cls, key = _key_args(request)
    ctx, node = await _node(request, iid)
    server = await _bound(ctx, node, iid)
    if not server.data["spec"]["guest_writes"]:
        raise Forbidden("this server does not allow guest writes")
    _write_allowed(ctx, iid)
    raw = await read_body(request, MAX_GUEST_VALUE_BYTES)
    try:
        value = raw.decode()
    except UnicodeDecodeError:
        raise BadRequest("metadata values written by a guest must be UTF-8 text") from None

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        meta = {**r.data["meta"], cls: {**r.data["meta"].get(cls, {}), key: value}}
        model.check_object_meta(meta, ctx.limits)
        check_server_size(ctx, r.data["spec"], meta)
        data = consumed.lifted({**r.data, "meta": meta}, cls, [key])
        return [put_of(r, data)], base.Change([iid], kind="server")

    await update(ctx, "server", iid, None, _guest_check, mutate)
    return web.Response(status=204)


async def delete_meta_key(request: web.Request) -> web.Response:
    iid, cls, key = _key_args(request)
    ctx, node = await _node(request, iid)
    server = await _bound(ctx, node, iid)
    if not server.data["spec"]["guest_writes"]:  # it changes the owner's data: opt-in only
        raise Forbidden("this server does not allow guest writes")
    _write_allowed(ctx, iid)
    src = await documents.load_sources(ctx.store, iid)
    if src is None:
        raise NotFound(f"instance {iid} not found")
    others = [r for r in (src.customer, src.image, src.runtime) if r is not None
              and (r.kind != "runtime" or r.data.get("running"))]
    elsewhere = any(key in r.data.get("meta", {}).get(cls, {}) for r in others)

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        here = key in r.data["meta"].get(cls, {})
        if consumed.is_consumed(r.data, cls, key) or not (here or elsewhere):
            raise NotFound(f"no {cls} key {key!r}")
        data = consumed.shadowed(r.data, cls, key)
        return [put_of(r, data)], base.Change([iid], kind="server")

    await update(ctx, "server", iid, None, _guest_check, mutate)
    return web.Response(status=204)


async def disable(request: web.Request) -> web.Response:
    iid = request.match_info["iid"]
    ctx, node = await _node(request, iid)
    await _bound(ctx, node, iid)
    _write_allowed(ctx, iid)

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        spec = {**r.data["spec"], "metadata_enabled": False}
        data = {**r.data, "spec": spec,
                "disabled_by_guest": r.data.get("disabled_by_guest") or time.time()}
        return [put_of(r, data)], base.Change([iid], sorted({node, *binding_nodes(r)}),
                                                   kind="server")

    await update(ctx, "server", iid, None, _guest_check, mutate)
    return web.Response(status=204)


async def patch_guest_data(request: web.Request) -> web.Response:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    patch = await read_json_object(request, ctx.limits.request_bytes)
    for key, value in patch.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise BadRequest(f"guest-data keys must be 1-{MAX_KEY_CHARS} characters")
        if value is not None and not isinstance(value, str):
            raise BadRequest("guest-data values are strings (null deletes)")

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        data: dict[str, Any] = dict(r.data.get("data", {}))
        for key, value in patch.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if model.json_size(data) > MAX_GUEST_DATA_BYTES:
            raise TooLarge(f"guest data exceeds {MAX_GUEST_DATA_BYTES} bytes")
        return [put_of(r, {**r.data, "data": data})], base.Change([sid], kind="guest")

    rev = await update(ctx, "guest", sid, if_match(request), _guest_check, mutate)
    fresh = await ctx.store.get("guest", sid)
    return reply(dict(fresh.data.get("data", {})) if fresh else {}, revision=rev)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/nodes/{node}/instances/{iid}/meta/{cls}/{key}", put_meta_key)
    r.add_delete("/v1/nodes/{node}/instances/{iid}/meta/{cls}/{key}", delete_meta_key)
    r.add_post("/v1/nodes/{node}/instances/{iid}/disable", disable)
    r.add_patch("/v1/servers/{id}/guest-data", patch_guest_data)
