"""Bindings: which tap (or serial socket) on which node speaks for a server.

Which instance a tap speaks for is the one fact the product must never get
wrong, so bindings are the platform's alone (admin token): a customer can
neither set nor read them, and they are never part of the owner-writable
server body. The hypervisor hook binds when it plugs a VM's interface and
releases when it unplugs it (README "The platform's part").

A binding is for one incarnation of a tap. Every binding carries a
``generation`` minted when it is written: the node pins a generation to the
tap (ifindex) it first serves it on, and a tap that disappears and comes back
under the same name is not served under that generation again. A binding
with a ``mac`` is served only while the tap has that MAC. The single-tap PUT
is the plug event and always mints a new generation; the whole-set PUT keeps
the generation of items it leaves unchanged (so re-sending the same set is
harmless).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import BadRequest, Conflict, Forbidden, NotFound
from interceptor.backend.httputil import if_match, read_json_object, reply
from interceptor.backend.objects import put_of, server_bindings, update
from interceptor.backend.store import base

GENERATION_BITS = 53  # exact in every JSON reader


def new_generation() -> int:
    return secrets.randbits(GENERATION_BITS) or 1


async def _platform(request: web.Request) -> tuple[Backend, str]:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    if not who.is_admin:
        raise Forbidden("bindings are set by the platform only (admin token)")
    return ctx, request.match_info["id"]


def view(bindings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(b) for b in bindings]


async def _check_macs(ctx: Backend, sid: str, bindings: list[dict[str, Any]]) -> None:
    """A MAC names one tap on a node: refuse one already bound elsewhere there."""
    for node in sorted({b["node"] for b in bindings if b.get("mac")}):
        wanted = {b["mac"]: b["ifname"] for b in bindings if b["node"] == node and b.get("mac")}
        others = sorted({other for _, other in await ctx.store.bindings(node) if other != sid})
        for rec in (await ctx.store.get_many("server", others)).values():
            for b in server_bindings(rec):
                if b["node"] == node and b.get("mac") in wanted:
                    raise Conflict(f"mac {b['mac']} is already bound on node {node} "
                                   f"(server {rec.id}, {b.get('ifname')})")
        if len(wanted) != len([b for b in bindings if b["node"] == node and b.get("mac")]):
            raise Conflict(f"one mac is given for two taps on node {node}")


async def _write(ctx: Backend, request: web.Request, sid: str,
                 change: Any) -> tuple[list[dict[str, Any]], int]:
    """Apply ``change(old bindings) -> new bindings`` to server ``sid``."""
    rec = await ctx.store.get("server", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    await _check_macs(ctx, sid, change(server_bindings(rec)))
    result: list[list[dict[str, Any]]] = []

    def mutate(r: base.Record) -> tuple[list[base.Put | base.Delete], base.Change]:
        old = server_bindings(r)
        new = change(old)
        result[:] = [new]
        nodes = sorted({b["node"] for b in (*old, *new)})
        data = {**r.data, "spec": {k: v for k, v in r.data["spec"].items() if k != "bindings"},
                "bindings": new}
        put = put_of(r, data, bindings=[model.binding_key(b) for b in new])
        return [put], base.Change([sid], nodes, kind="server")

    rev = await update(ctx, "server", sid, if_match(request), lambda r: None, mutate)
    return result[0], rev


def _minted(items: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The whole-set PUT: unchanged items keep their generation."""
    kept = {(*model.binding_key(b), b.get("mac")): b["generation"] for b in old}
    return [{**b, "generation": kept.get((*model.binding_key(b), b.get("mac")))
             or new_generation()} for b in items]


async def get_bindings(request: web.Request) -> web.Response:
    ctx, sid = await _platform(request)
    rec = await ctx.store.get("server", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    return reply({"id": sid, "bindings": view(server_bindings(rec))}, revision=rec.revision)


async def put_bindings(request: web.Request) -> web.Response:
    ctx, sid = await _platform(request)
    items = model.check_bindings(await read_json_object(request, ctx.limits.request_bytes))
    new, rev = await _write(ctx, request, sid, lambda old: _minted(items, old))
    return reply({"id": sid, "bindings": view(new)}, revision=rev)


async def delete_bindings(request: web.Request) -> web.Response:
    ctx, sid = await _platform(request)
    await _write(ctx, request, sid, lambda old: [])
    return web.Response(status=204)


def _one(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    info = request.match_info
    if request.path.split("/")[4] == "serial":
        return model.check_binding({"node": info["node"], "serial": info["name"], **body})
    return model.check_binding({"node": info["node"], "ifname": info["name"], **body})


async def put_one(request: web.Request) -> web.Response:
    """Plug: bind one tap (``{"mac": …}`` optional) or serial socket, always as a
    new incarnation."""
    ctx, sid = await _platform(request)
    body = await read_json_object(request, ctx.limits.request_bytes, optional=True)
    if set(body) - {"mac"}:
        raise BadRequest(f"unknown field {sorted(set(body) - {'mac'})[0]!r}")
    binding = {**_one(request, body), "generation": new_generation()}
    key = model.binding_key(binding)

    def change(old: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*(b for b in old if model.binding_key(b) != key), binding]

    _, rev = await _write(ctx, request, sid, change)
    return reply({"id": sid, "binding": binding}, revision=rev)


async def delete_one(request: web.Request) -> web.Response:
    """Unplug: release one tap or serial socket (404 when it is not bound here)."""
    ctx, sid = await _platform(request)
    one = _one(request, {})
    key = model.binding_key(one)
    rec = await ctx.store.get("server", sid)
    if rec is None:
        raise NotFound(f"server {sid} not found")
    if not any(model.binding_key(b) == key for b in server_bindings(rec)):
        what = f"serial socket {one['serial']}" if "serial" in one else f"tap {one['ifname']}"
        raise NotFound(f"server {sid} has no binding of {what} on node {one['node']}")
    await _write(ctx, request, sid,
                 lambda old: [b for b in old if model.binding_key(b) != key])
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/servers/{id}/bindings", get_bindings)
    r.add_put("/v1/servers/{id}/bindings", put_bindings)
    r.add_delete("/v1/servers/{id}/bindings", delete_bindings)
    for kind in ("bindings", "serial"):
        r.add_put(f"/v1/servers/{{id}}/{kind}/{{node}}/{{name}}", put_one)
        r.add_delete(f"/v1/servers/{{id}}/{kind}/{{node}}/{{name}}", delete_one)

