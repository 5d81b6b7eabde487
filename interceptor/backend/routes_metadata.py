"""Owner and platform API: the metadata classes of every object kind, and
what a server's guest wrote (password, guest data) or sees (its document)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from interceptor.backend import consumed, documents, longpoll, model
from interceptor.backend.context import Backend
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
)
from interceptor.backend.httputil import (
    if_match,
    read_json,
    reply,
)
from interceptor.backend.model import Principal
from interceptor.backend.objects import (
    affected,
    get_owned,
    get_visible,
    owner_of,
    put_of,
    update,
)
from interceptor.backend.routes_common import check_server_size, who_owner
from interceptor.backend.store import base

KIND_OF_COLLECTION = {"customers": "customer", "images": "image", "servers": "server"}


# --- metadata of every object kind ------------------------------------------

async def _meta_target(request: web.Request) -> tuple[Backend, Principal, str, str, str]:
    ctx, who = await who_owner(request)
    info = request.match_info
    cls = model.check_class(info["cls"])
    collection = request.path.split("/")[2]
    kind = KIND_OF_COLLECTION[collection]
    oid = info["id"]
    if "/runtime/" in request.path:
        kind = "runtime"
    return ctx, who, kind, oid, cls


async def _meta_record(ctx: Backend, who: Principal, kind: str, oid: str
                       ) -> tuple[base.Record, str | None]:
    if kind == "runtime":  # a run belongs to whoever owns the server now
        server = await get_visible(ctx, who, "server", oid)
        return await get_visible(ctx, who, "runtime", oid), server.owner
    rec = await get_visible(ctx, who, kind, oid)
    return rec, owner_of(rec)


def _class_values(rec: base.Record, cls: str) -> dict[str, Any]:
    values = dict(rec.data["meta"].get(cls, {}))
    if rec.kind == "server" and cls == "system":
        values.update(documents.server_record(rec))
    return values


async def get_metadata(request: web.Request) -> web.Response:
    ctx, who, kind, oid, cls = await _meta_target(request)
    rec, owner = await _meta_record(ctx, who, kind, oid)
    if not model.can_read(who, owner, cls):
        raise Forbidden(f"{cls} metadata of this {kind} is readable by its owner only")
    rec = await longpoll.wait_record(ctx, request, rec)
    return reply(_class_values(rec, cls), revision=rec.revision)


async def write_metadata(request: web.Request) -> web.Response:
    ctx, who, kind, oid, cls = await _meta_target(request)
    rec, owner = await _meta_record(ctx, who, kind, oid)
    if not model.can_write(who, owner, cls):
        raise Forbidden(f"{cls} metadata of this {kind} is not writable with this token"
                        if cls != "system" else "system metadata is written by the platform only")
    body = await read_json(request, ctx.limits.request_bytes)
    if not isinstance(body, dict):
        raise BadRequest("metadata must be a JSON object")
    replace = request.method == "PUT"
    if replace:
        model.check_metadata(body, ctx.limits)
    else:
        model.check_metadata({k: v for k, v in body.items() if v is not None}, ctx.limits)
    change_instances = await affected(ctx, rec)

    def check(r: base.Record) -> None:
        if kind == "runtime" and not r.data.get("running"):
            raise Conflict(f"server {oid} is not running: start it to set runtime metadata")

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        old = r.data["meta"].get(cls, {})
        new = dict(body) if replace else model.merge_patch(old, body)
        new = {k: v for k, v in new.items() if v is not None}
        if cls == "system":
            model.check_system(kind, new)
        meta = {**r.data["meta"], cls: new}
        model.check_object_meta(meta, ctx.limits)
        data = {**r.data, "meta": meta}
        if kind == "server":
            check_server_size(ctx, r.data["spec"], meta)
            data = consumed.lifted(data, cls, body if replace else
                                   [k for k, v in body.items() if v is not None])
        return [put_of(r, data)], base.Change(change_instances, kind=kind)

    rev = await update(ctx, kind, oid, if_match(request), check, mutate)
    fresh = await ctx.store.get(kind, oid)
    return reply(_class_values(fresh, cls) if fresh else {}, revision=rev)


# --- what the guest wrote or sees ---------------------------------------------

async def get_password(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    rec = await ctx.store.get("guest", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    return reply({"password": rec.data.get("password")}, revision=rec.revision)


async def delete_password(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    await update(ctx, "guest", sid, if_match(request), lambda r: None,
                 lambda r: ([put_of(r, {**r.data, "password": None})],
                            base.Change([sid], kind="guest")))
    return web.Response(status=204)


async def get_guest_data(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    rec = await ctx.store.get("guest", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    rec = await longpoll.wait_record(ctx, request, rec)
    return reply(dict(rec.data.get("data", {})), revision=rec.revision)


async def get_document(request: web.Request) -> web.Response:
    """What the VM will see; the image's non-public classes are hidden from a
    server owner who does not own the image (they may hold its owner's secrets)."""
    ctx, who = await who_owner(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    doc = await documents.build(ctx.store, ctx.vendor, sid)
    if doc is None:
        raise NotFound(f"server {sid} not found")
    image = await ctx.store.get("image", doc["image_id"]) if doc["image_id"] else None
    if image is not None:
        for cls in model.VM_CLASSES:
            if not model.can_read(who, image.owner, cls):
                doc["meta"]["image"][cls] = {}
    return reply(doc, revision=doc["revision"])
