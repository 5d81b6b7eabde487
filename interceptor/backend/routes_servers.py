"""Owner and platform API: servers (create, replace, read, update, delete,
list) and their runtime (start, stop)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from interceptor.backend import model, routes_keypairs
from interceptor.backend.context import Backend
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
)
from interceptor.backend.httputil import (
    check_match,
    if_match,
    next_cursor,
    page_args,
    read_json_object,
    reply,
)
from interceptor.backend.model import Principal
from interceptor.backend.objects import (
    binding_nodes,
    get_owned,
    put_of,
    server_bindings,
    server_spec,
    server_view,
    update,
)
from interceptor.backend.routes_common import check_server_size, new_id, who_owner
from interceptor.backend.store import base

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


async def create_server(request: web.Request) -> web.Response:
    """POST /v1/servers: the platform names the id, so nobody can pre-claim one."""
    ctx, who = await who_owner(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    if "id" in body and not who.is_admin:
        raise Forbidden("server ids are chosen by the platform")
    sid = new_id("i", body)
    body.pop("id", None)
    return await _create_server(ctx, who, sid, body, 0)


async def put_server(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
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
    check_server_size(ctx, spec, meta)
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
        check_server_size(ctx, spec, rec.data["meta"])
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
    ctx, who = await who_owner(request)
    return await _server_reply(ctx, who, request.match_info["id"])


async def patch_server(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
    limit, after = page_args(request)
    owner = request.query.get("customer") if who.is_admin else who.subject
    recs = await ctx.store.scan("server", owner=owner, after=after, limit=limit)
    runtimes = await ctx.store.get_many("runtime", [r.id for r in recs])
    return reply({"items": [server_view(r, runtimes.get(r.id)) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


# --- runtime -----------------------------------------------------------------

async def start_server(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
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
