"""Owner and platform API under /v1: customers, images, servers and their metadata."""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from interceptor.backend import consumed, documents, longpoll, model, routes_keypairs
from interceptor.backend.auth import digest, new_token
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    TooLarge,
)
from interceptor.backend.httputil import (
    check_match,
    if_match,
    next_cursor,
    page_args,
    read_json,
    read_json_object,
    reply,
)
from interceptor.backend.model import Principal
from interceptor.backend.objects import (
    affected,
    binding_nodes,
    commit_new,
    customer_view,
    get_owned,
    get_visible,
    image_view,
    owner_of,
    put_of,
    require_admin,
    require_customer_or_admin,
    server_bindings,
    server_spec,
    server_view,
    update,
)
from interceptor.backend.store import base

KIND_OF_COLLECTION = {"customers": "customer", "images": "image", "servers": "server"}


async def _who(request: web.Request) -> tuple[Backend, Principal]:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    return ctx, who


def _new_id(prefix: str, body: dict[str, Any]) -> str:
    if "id" in body:
        return model.check_id(body["id"], "id")
    return f"{prefix}-{secrets.token_hex(6)}"


# --- customers ------------------------------------------------------------

async def create_customer(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    require_admin(who)
    body = await read_json_object(request, ctx.limits.request_bytes)
    cid = _new_id("c", body)
    data = {"name": model.check_name(body, cid), "meta": model.empty_classes()}
    rev = await commit_new(ctx, [base.Put("customer", cid, data, expect=0)],
                           base.Change(kind="customer"))
    rec = base.Record("customer", cid, None, None, data, rev)
    return reply(customer_view(rec), status=201, revision=rev)


async def list_customers(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    limit, after = page_args(request)
    if who.is_admin:
        recs = await ctx.store.scan("customer", after=after, limit=limit)
    else:
        own = await ctx.store.get("customer", who.subject)
        recs = [own] if own is not None and (after is None or own.id > after) else []
    return reply({"items": [customer_view(r) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


async def get_customer(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    rec = await get_owned(ctx, who, "customer", request.match_info["id"])
    return reply(customer_view(rec), revision=rec.revision)


async def patch_customer(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    name = model.check_name(body) if "name" in body else None
    cid = request.match_info["id"]

    def check(rec: base.Record) -> None:
        if not who.owns(rec.id):
            raise Forbidden(f"not the owner of customer {cid}")

    def mutate(rec: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        data = rec.data if name is None else {**rec.data, "name": name}
        return [put_of(rec, data)], base.Change(kind="customer")

    await update(ctx, "customer", cid, if_match(request), check, mutate)
    rec = await get_owned(ctx, who, "customer", cid)
    return reply(customer_view(rec), revision=rec.revision)


async def delete_customer(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    require_admin(who)
    cid = request.match_info["id"]
    rec = await get_owned(ctx, who, "customer", cid)
    expect = check_match(request, rec.revision) or rec.revision
    if await ctx.store.ids("server", owner=cid) or await ctx.store.ids("image", owner=cid):
        raise Conflict(f"customer {cid} still owns servers or images")
    keypairs = await ctx.store.ids("keypair", owner=cid)
    await update(ctx, "customer", cid, expect, lambda r: None,
                 lambda r: ([base.Delete("customer", cid, expect=r.revision),
                             *(base.Delete("keypair", k) for k in keypairs)],
                            base.Change(kind="customer")))
    await ctx.store.delete_tokens(cid)
    return web.Response(status=204)


async def create_customer_token(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    require_admin(who)
    rec = await get_owned(ctx, who, "customer", request.match_info["id"])
    token = new_token()
    await ctx.store.put_token(digest(token), base.Token("customer", rec.id))
    return reply({"customer_id": rec.id, "token": token}, status=201)


# --- images ---------------------------------------------------------------

async def create_image(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    iid = _new_id("img", body)
    owner: str | None = who.subject if who.kind == "customer" else body.get("owner")
    if who.kind == "customer" and body.get("owner", owner) != owner:
        raise Forbidden("customers create images they own")
    if owner is not None:
        model.check_id(owner, "owner")
        if await ctx.store.get("customer", owner) is None:
            raise BadRequest(f"customer {owner} does not exist")
    visibility = model.check_visibility(body)
    data = {"name": model.check_name(body, iid), "visibility": visibility,
            "meta": model.empty_classes()}
    rev = await commit_new(ctx, [base.Put("image", iid, data, owner=owner,
                                          shared=visibility == "public", expect=0)],
                           base.Change(kind="image"))
    rec = base.Record("image", iid, owner, None, data, rev, visibility == "public")
    return reply(image_view(rec), status=201, revision=rev)


async def list_images(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    limit, after = page_args(request)
    recs = await ctx.store.scan("image", after=after, limit=limit,
                                visible_to=None if who.is_admin else who.subject)
    return reply({"items": [image_view(r) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


async def get_image(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    rec = await get_visible(ctx, who, "image", request.match_info["id"])
    return reply(image_view(rec), revision=rec.revision)


async def patch_image(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    iid = request.match_info["id"]
    await get_owned(ctx, who, "image", iid)

    def check(rec: base.Record) -> None:
        if not who.owns(rec.owner):
            raise Forbidden(f"not the owner of image {iid}")

    def mutate(rec: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        data = dict(rec.data)
        if "name" in body:
            data["name"] = model.check_name(body)
        if "visibility" in body:
            data["visibility"] = model.check_visibility(body)
        return ([put_of(rec, data, shared=data["visibility"] == "public")],
                base.Change(kind="image"))

    await update(ctx, "image", iid, if_match(request), check, mutate)
    rec = await get_owned(ctx, who, "image", iid)
    return reply(image_view(rec), revision=rec.revision)


async def delete_image(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    iid = request.match_info["id"]
    rec = await get_owned(ctx, who, "image", iid)
    expect = check_match(request, rec.revision) or rec.revision
    if await ctx.store.ids("server", parent=iid):
        raise Conflict(f"image {iid} is used by servers")
    await update(ctx, "image", iid, expect, lambda r: None,
                 lambda r: ([base.Delete("image", iid, expect=r.revision)],
                            base.Change(kind="image")))
    return web.Response(status=204)


# --- servers --------------------------------------------------------------

def _nodes_touched(rec: base.Record, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Nodes whose binding list changes: those the server is bound to, when its
    enable toggle flips (bindings themselves change in routes_bindings.py)."""
    if old["metadata_enabled"] == new["metadata_enabled"]:
        return []
    return sorted(binding_nodes(rec))


def _platform_fields(who: Principal, body: dict[str, Any],
                     current: dict[str, Any] | None, *, carry: bool) -> dict[str, Any]:
    """Refuse what only the platform decides; return the body to validate.

    ``bindings`` never belong to the server body. A customer may not change a
    platform field: with ``carry`` (a full PUT) the ones it leaves out keep
    their current value, and :func:`_check_unchanged` refuses any other value.
    """
    if model.BINDINGS_FIELD in body:
        if not who.is_admin:
            raise Forbidden('field "bindings" is set by the platform only')
        raise BadRequest('"bindings" are not part of the server body: '
                         "use PUT /v1/servers/{id}/bindings")
    if who.is_admin or not carry or current is None:
        return body
    return {**{f: current[f] for f in model.PLATFORM_FIELDS if f in current}, **body}


def _check_unchanged(who: Principal, spec: dict[str, Any],
                     current: dict[str, Any] | None, limits: Any) -> None:
    if who.is_admin:
        return
    before = current if current is not None else model.check_server(
        {"customer_id": spec["customer_id"], "hostname": spec["hostname"]}, limits)
    for field in model.PLATFORM_FIELDS:
        if spec[field] != before[field]:
            raise Forbidden(f'field "{field}" is set by the platform only')


async def _check_server_refs(ctx: Backend, who: Principal, spec: dict[str, Any],
                             old: dict[str, Any] | None = None) -> None:
    """The customer must exist (and be the caller's); a newly chosen image must be
    usable by it (an image made private later does not break existing servers)."""
    if who.kind == "customer" and spec["customer_id"] != who.subject:
        raise Forbidden("customers create servers they own")
    if await ctx.store.get("customer", spec["customer_id"]) is None:
        raise BadRequest(f"customer {spec['customer_id']} does not exist")
    unchanged = old is not None and old["image_id"] == spec["image_id"] \
        and old["customer_id"] == spec["customer_id"]
    if spec["image_id"] is not None and not unchanged:
        image = await ctx.store.get("image", spec["image_id"])
        if image is None or not (image.shared or image.owner == spec["customer_id"]
                                 or who.is_admin):
            raise BadRequest(f"image {spec['image_id']} does not exist or is not usable")
    await routes_keypairs.check_key_names(ctx, who, spec, old)


def _size_check(ctx: Backend, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    size = model.json_size(spec) + model.json_size(meta)
    if size > ctx.limits.document_bytes:
        raise TooLarge(f"server exceeds the document limit of {ctx.limits.document_bytes} bytes")


async def create_server(request: web.Request) -> web.Response:
    """POST /v1/servers: the platform names the id, so nobody can pre-claim one."""
    ctx, who = await _who(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    if "id" in body and not who.is_admin:
        raise Forbidden("server ids are chosen by the platform")
    sid = _new_id("i", body)
    body.pop("id", None)
    return await _create_server(ctx, who, sid, body, 0)


async def put_server(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = model.check_id(request.match_info["id"], "server id")
    body = await read_json_object(request, ctx.limits.request_bytes)
    existing = await ctx.store.get("server", sid)
    if existing is None and not who.is_admin:
        # Chosen ids could be squatted before the platform creates them.
        raise Forbidden("server ids are chosen by the platform: create with POST /v1/servers")
    wanted = if_match(request)
    if request.headers.get("If-None-Match", "").strip() == "*":
        wanted = 0
    if existing is None and wanted not in (None, 0):
        raise NotFound(f"server {sid} not found")
    if existing is None and request.headers.get("If-Match", "").strip() == "*":
        raise PreconditionFailed(f"server {sid} does not exist (If-Match: *)")
    if existing is None:
        return await _create_server(ctx, who, sid, body, wanted)
    if wanted == 0:
        raise PreconditionFailed(f"server {sid} already exists")
    current = server_spec(existing)
    body = _platform_fields(who, body, current, carry=True)
    if who.kind == "customer":
        body.setdefault("customer_id", who.subject)
    spec = model.check_server(body, ctx.limits)
    _check_unchanged(who, spec, current, ctx.limits)
    await _check_server_refs(ctx, who, spec, current)
    await _replace_server(ctx, who, sid, wanted, lambda old: spec)
    return await _server_reply(ctx, who, sid)


async def _create_server(ctx: Backend, who: Principal, sid: str, body: dict[str, Any],
                         wanted: int | None) -> web.Response:
    body = _platform_fields(who, body, None, carry=False)
    if who.kind == "customer":
        body.setdefault("customer_id", who.subject)
    spec = model.check_server(body, ctx.limits)
    _check_unchanged(who, spec, None, ctx.limits)
    await _check_server_refs(ctx, who, spec, None)
    meta = model.empty_classes()
    _size_check(ctx, spec, meta)
    ops: list[base.Put | base.Delete] = [
        base.Put("server", sid, {"spec": spec, "meta": meta, "bindings": []},
                 owner=spec["customer_id"], parent=spec["image_id"], expect=0,
                 bindings=[]),
        base.Put("runtime", sid, {"running": False, "meta": model.empty_classes()},
                 owner=spec["customer_id"], expect=0),
        base.Put("guest", sid, {"password": None, "data": {}}, owner=spec["customer_id"],
                 expect=0),
    ]
    try:
        rev = await ctx.commit(ops, base.Change([sid], kind="server"))
    except base.Conflict:
        if wanted == 0:
            raise PreconditionFailed(f"server {sid} already exists") from None
        raise Conflict(f"server {sid} was created concurrently, retry") from None
    rec = await ctx.store.get("server", sid)
    assert rec is not None
    return reply(server_view(rec, None), status=201, revision=rev)


async def _replace_server(ctx: Backend, who: Principal, sid: str, wanted: int | None,
                          new_spec: Any) -> None:
    def check(rec: base.Record) -> None:
        if not who.owns(rec.owner):
            raise Forbidden(f"not the owner of server {sid}")

    def mutate(rec: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        old = server_spec(rec)
        spec = new_spec(old)
        _size_check(ctx, spec, rec.data["meta"])
        data = {**rec.data, "spec": spec, "bindings": server_bindings(rec)}
        if spec["metadata_enabled"]:  # the owner switched it (back) on
            data.pop("disabled_by_guest", None)
        put = put_of(rec, data, owner=spec["customer_id"], parent=spec["image_id"])
        return [put], base.Change([sid], _nodes_touched(rec, old, spec), kind="server")

    rec = await ctx.store.get("server", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    check(rec)
    await update(ctx, "server", sid, wanted, check, mutate)


async def _server_reply(ctx: Backend, who: Principal, sid: str) -> web.Response:
    rec = await get_owned(ctx, who, "server", sid)
    runtime = await ctx.store.get("runtime", sid)
    return reply(server_view(rec, runtime), revision=rec.revision)


async def get_server(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    return await _server_reply(ctx, who, request.match_info["id"])


async def patch_server(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    patch = _platform_fields(who, await read_json_object(request, ctx.limits.request_bytes),
                             None, carry=False)

    def new_spec(old: dict[str, Any]) -> dict[str, Any]:
        spec = model.check_server(model.merge_patch(old, patch), ctx.limits)
        _check_unchanged(who, spec, old, ctx.limits)
        return spec

    # Validate references before committing (they are read outside the CAS loop).
    current = server_spec(await get_owned(ctx, who, "server", sid))
    candidate = new_spec(current)
    await _check_server_refs(ctx, who, candidate, current)
    await _replace_server(ctx, who, sid, if_match(request), new_spec)
    return await _server_reply(ctx, who, sid)


async def delete_server(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    rec = await get_owned(ctx, who, "server", sid)
    wanted = check_match(request, rec.revision)

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        return ([base.Delete("server", sid, expect=r.revision), base.Delete("runtime", sid),
                 base.Delete("guest", sid)],
                base.Change([sid], sorted(binding_nodes(r)), kind="server"))

    await update(ctx, "server", sid, wanted, lambda r: None, mutate)
    return web.Response(status=204)


async def list_servers(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    limit, after = page_args(request)
    owner = request.query.get("customer") if who.is_admin else who.subject
    recs = await ctx.store.scan("server", owner=owner, after=after, limit=limit)
    runtimes = await ctx.store.get_many("runtime", [r.id for r in recs])
    return reply({"items": [server_view(r, runtimes.get(r.id)) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


# --- metadata of every object kind ------------------------------------------

async def _meta_target(request: web.Request) -> tuple[Backend, Principal, str, str, str]:
    ctx, who = await _who(request)
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
            _size_check(ctx, r.data["spec"], meta)
            data = consumed.lifted(data, cls, body if replace else
                                   [k for k, v in body.items() if v is not None])
        return [put_of(r, data)], base.Change(change_instances, kind=kind)

    rev = await update(ctx, kind, oid, if_match(request), check, mutate)
    fresh = await ctx.store.get(kind, oid)
    return reply(_class_values(fresh, cls) if fresh else {}, revision=rev)


# --- runtime, password, guest data, document --------------------------------

async def start_server(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    server = await get_owned(ctx, who, "server", sid)
    body = await read_json_object(request, ctx.limits.request_bytes, optional=True)
    meta = model.empty_classes()
    given = body.get("metadata", {})
    if not isinstance(given, dict):
        raise BadRequest("metadata must map classes to objects")
    for cls, values in given.items():
        model.check_class(cls)
        if not model.can_write(who, server.owner, cls):
            raise Forbidden("system metadata is written by the platform only")
        meta[cls] = model.check_metadata(values, ctx.limits)
    model.check_object_meta(meta, ctx.limits)
    data = {"running": True, "started_at": time.time(), "meta": meta}
    rev = await update(ctx, "runtime", sid, None, lambda r: None,
                       lambda r: ([put_of(r, data)], base.Change([sid], kind="runtime")))
    return reply({"id": sid, "running": True, "revision": rev}, revision=rev)


async def stop_server(request: web.Request) -> web.Response:
    """Stop: clear runtime data and release the bindings in the same commit (a
    stopped VM's tap name is the hypervisor's to give to another VM at once),
    unless the platform asks to keep them (``{"keep_bindings": true}``)."""
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    body = await read_json_object(request, ctx.limits.request_bytes, optional=True)
    if set(body) - {"keep_bindings"}:
        raise BadRequest(f"unknown field {sorted(set(body) - {'keep_bindings'})[0]!r}")
    keep = body.get("keep_bindings", False)
    if not isinstance(keep, bool):
        raise BadRequest("keep_bindings must be true or false")
    if keep and not who.is_admin:
        raise Forbidden('field "keep_bindings" is set by the platform only')
    data = {"running": False, "meta": model.empty_classes()}
    runtime = await ctx.store.get("runtime", sid)
    if runtime is None:
        raise NotFound(f"server {sid} not found")

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        ops: list[base.Put | base.Delete] = [
            base.Put("runtime", sid, data, owner=runtime.owner, parent=runtime.parent)]
        nodes = sorted(binding_nodes(r))
        if not keep and nodes:
            ops.insert(0, put_of(r, {**r.data, "bindings": []}, bindings=[]))
        return ops, base.Change([sid], nodes if not keep else [], kind="runtime")

    rev = await update(ctx, "server", sid, None, lambda r: None, mutate)
    return reply({"id": sid, "running": False, "revision": rev}, revision=rev)


async def get_password(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    rec = await ctx.store.get("guest", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    return reply({"password": rec.data.get("password")}, revision=rec.revision)


async def delete_password(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    sid = request.match_info["id"]
    await get_owned(ctx, who, "server", sid)
    await update(ctx, "guest", sid, if_match(request), lambda r: None,
                 lambda r: ([put_of(r, {**r.data, "password": None})],
                            base.Change([sid], kind="guest")))
    return web.Response(status=204)


async def get_guest_data(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
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
    ctx, who = await _who(request)
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


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/customers", create_customer)
    r.add_get("/v1/customers", list_customers)
    r.add_get("/v1/customers/{id}", get_customer)
    r.add_patch("/v1/customers/{id}", patch_customer)
    r.add_delete("/v1/customers/{id}", delete_customer)
    r.add_post("/v1/customers/{id}/tokens", create_customer_token)
    r.add_post("/v1/images", create_image)
    r.add_get("/v1/images", list_images)
    r.add_get("/v1/images/{id}", get_image)
    r.add_patch("/v1/images/{id}", patch_image)
    r.add_delete("/v1/images/{id}", delete_image)
    r.add_get("/v1/servers", list_servers)
    r.add_post("/v1/servers", create_server)
    r.add_put("/v1/servers/{id}", put_server)
    r.add_get("/v1/servers/{id}", get_server)
    r.add_patch("/v1/servers/{id}", patch_server)
    r.add_delete("/v1/servers/{id}", delete_server)
    for prefix in ("/v1/customers/{id}", "/v1/images/{id}", "/v1/servers/{id}",
                   "/v1/servers/{id}/runtime"):
        r.add_get(prefix + "/metadata/{cls}", get_metadata)
        r.add_put(prefix + "/metadata/{cls}", write_metadata)
        r.add_patch(prefix + "/metadata/{cls}", write_metadata)
    r.add_post("/v1/servers/{id}/start", start_server)
    r.add_post("/v1/servers/{id}/stop", stop_server)
    r.add_get("/v1/servers/{id}/password", get_password)
    r.add_delete("/v1/servers/{id}/password", delete_password)
    r.add_get("/v1/servers/{id}/guest-data", get_guest_data)
    r.add_get("/v1/servers/{id}/document", get_document)
