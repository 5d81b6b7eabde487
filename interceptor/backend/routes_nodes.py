"""Node endpoints (/v1/nodes/{node}/…): bearer token of that node + signed identity.

Node restriction: a node reads and writes only instances bound to it (403
otherwise), like Kubernetes' NodeRestriction.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from interceptor.backend import documents
from interceptor.backend.changes import watch as watch_changes
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)
from interceptor.backend.httputil import read_body, reply
from interceptor.backend.limits import (
    MAX_GUEST_DATA_BYTES,
    MAX_GUEST_VALUE_BYTES,
    MAX_KEY_CHARS,
    MAX_PASSWORD_BYTES,
    MAX_WATCH_TIMEOUT,
)
from interceptor.backend.model import bindings_of, json_size
from interceptor.backend.objects import put_of, update
from interceptor.backend.store import base
from interceptor.common.signing import body_matches, verify


async def _node(request: web.Request, instance: str = "") -> tuple[Backend, str]:
    """Authenticate the node token and the request signature."""
    ctx = request.app[BACKEND]
    node = request.match_info["node"]
    who = await ctx.auth.authenticate(request)
    if who.kind != "node" or who.subject != node:
        raise Forbidden(f"this token does not belong to node {node}")
    if ctx.signing_key is None:
        raise Unauthorized("node request signing is not configured on the backend")
    signed = verify(ctx.signing_key, request.headers, request.method, request.raw_path)
    if signed is None or signed != (node, instance):
        raise Unauthorized("missing, invalid or stale request signature")
    return ctx, node


async def _signed_body(request: web.Request, limit: int) -> bytes:
    """The body of a ``_node``-checked request, if it is the one the node signed."""
    raw = await read_body(request, limit)
    if not body_matches(request.headers, raw):
        raise Unauthorized("the body does not match its signed digest")
    return raw


def _write_allowed(ctx: Backend, iid: str) -> None:
    wait = ctx.guest_writes.take(iid)
    if wait > 0:
        raise TooManyRequests(f"too many guest writes for instance {iid}", wait)


async def _bound(ctx: Backend, node: str, iid: str) -> base.Record:
    rec = await ctx.store.get("server", iid)
    if rec is None:
        raise NotFound(f"instance {iid} not found")
    if not any(b["node"] == node for b in bindings_of(rec.data)):
        raise Forbidden(f"instance {iid} is not bound to node {node}")
    return rec


async def bindings(request: web.Request) -> web.Response:
    ctx, node = await _node(request)
    revision = await ctx.store.revision()  # read first: a later change is then seen by watch
    pairs = await ctx.store.bindings(node)
    servers = await ctx.store.get_many("server", sorted({sid for _, sid in pairs}))
    out = []
    for sid in sorted({sid for _, sid in pairs} & set(servers)):
        data = servers[sid].data
        enabled = bool(data["spec"]["metadata_enabled"])
        for b in bindings_of(data):
            if b["node"] != node:
                continue
            where = {"serial": b["serial"]} if "serial" in b else {
                "ifname": b["ifname"], "mac": b.get("mac")}
            out.append({**where, "instance_id": sid, "metadata_enabled": enabled,
                        "generation": int(b.get("generation", 0))})
    out.sort(key=lambda b: (b.get("ifname", ""), b.get("serial", "")))
    return reply({"revision": revision, "bindings": out})


async def document(request: web.Request) -> web.Response:
    iid = request.match_info["iid"]
    ctx, node = await _node(request, iid)
    await _bound(ctx, node, iid)
    src = await documents.load_sources(ctx.store, iid)
    if src is None:
        raise NotFound(f"instance {iid} not found")
    vendor: Any = {"static": {}, "dynamic": {}}
    if ctx.vendor is not None:
        vendor = await ctx.vendor.get(documents.vendor_request(src))
    # Dynamic vendor data can change when its cache expires without any
    # revision moving, so the ETag covers it too; otherwise nodes revalidating
    # with If-None-Match would keep stale vendor data forever.
    digest = hashlib.sha256(json.dumps(vendor, sort_keys=True).encode()).hexdigest()[:16]
    tag = f'"{src.revision}-{digest}"'
    if request.headers.get("If-None-Match", "").strip() == tag:
        ctx.metrics.documents.labels("not_modified").inc()
        return web.Response(status=304, headers={"ETag": tag})
    doc = documents.assemble(src, vendor, node)
    ctx.metrics.documents.labels("served").inc()
    resp = reply(doc)
    resp.headers["ETag"] = tag
    return resp


async def watch(request: web.Request) -> web.Response:
    ctx, node = await _node(request)
    try:
        since = int(request.query.get("since", "0"))
        timeout = float(request.query.get("timeout", "30"))
    except ValueError:
        raise BadRequest("since must be an integer and timeout a number") from None
    if since < 0 or not 0 <= timeout <= MAX_WATCH_TIMEOUT:
        raise BadRequest(f"since must be ≥ 0 and timeout 0-{MAX_WATCH_TIMEOUT}")
    ctx.metrics.watchers.inc()
    try:
        result = await watch_changes(ctx.store, ctx.notifier, node, since, timeout)
    finally:
        ctx.metrics.watchers.dec()
    return reply(result)


def _guest_check(rec: base.Record) -> None:
    """Guest records exist exactly as long as their server."""


async def set_password(request: web.Request) -> web.Response:
    iid = request.match_info["iid"]
    ctx, node = await _node(request, iid)
    await _bound(ctx, node, iid)
    _write_allowed(ctx, iid)
    raw = await _signed_body(request, MAX_PASSWORD_BYTES)
    try:
        password = raw.decode()
    except UnicodeDecodeError:
        raise BadRequest("password must be UTF-8 text") from None

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        if r.data.get("password") is not None:
            raise Conflict("the password is already set")
        return [put_of(r, {**r.data, "password": password})], base.Change([iid], kind="guest")

    await update(ctx, "guest", iid, None, _guest_check, mutate)
    return web.Response(status=201)


async def guest_data(request: web.Request) -> web.Response:
    iid, key = request.match_info["iid"], request.match_info["key"]
    ctx, node = await _node(request, iid)
    server = await _bound(ctx, node, iid)
    if not server.data["spec"]["guest_writes"]:
        raise Forbidden("this server does not allow guest writes")
    _write_allowed(ctx, iid)
    if not key or len(key) > MAX_KEY_CHARS:
        raise BadRequest(f"guest-data key must be 1-{MAX_KEY_CHARS} characters")
    value: str | None = None
    if request.method == "PUT":
        raw = await _signed_body(request, MAX_GUEST_VALUE_BYTES)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise BadRequest("guest-data values must be UTF-8 text") from None

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        data = dict(r.data.get("data", {}))
        if value is None:
            if key not in data:
                raise NotFound(f"no guest-data key {key!r}")
            del data[key]
        else:
            data[key] = value
            if json_size(data) > MAX_GUEST_DATA_BYTES:
                raise TooLarge(f"guest data exceeds {MAX_GUEST_DATA_BYTES} bytes")
        return [put_of(r, {**r.data, "data": data})], base.Change([iid], kind="guest")

    await update(ctx, "guest", iid, None, _guest_check, mutate)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/nodes/{node}/bindings", bindings)
    r.add_get("/v1/nodes/{node}/instances/{iid}/document", document)
    r.add_get("/v1/nodes/{node}/watch", watch)
    r.add_post("/v1/nodes/{node}/instances/{iid}/password", set_password)
    r.add_put("/v1/nodes/{node}/instances/{iid}/guest-data/{key}", guest_data)
    r.add_delete("/v1/nodes/{node}/instances/{iid}/guest-data/{key}", guest_data)
