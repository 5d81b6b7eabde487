"""Keypairs: a customer uploads a named public key once and names it in servers.

``POST /v1/customers/{id}/keypairs`` ``{"name", "public_key"}`` → 201;
``GET`` lists them, ``GET``/``DELETE …/keypairs/{name}`` read or remove one.
The customer itself (its token) and the platform may do all of it; nobody
else learns that a keypair exists. Keypairs are immutable, as Nova's are:
replace one by deleting and creating it again.

A server names keypairs in ``key_names``; its document carries their keys
(see ``interceptor/backend/documents.py``). Creating or deleting a keypair
bumps the revision of every server of that customer that names it, in the
same commit, so those documents change (and their revision never goes back).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.documents import keypair_id
from interceptor.backend.errors import BadRequest, Conflict, Forbidden, NotFound
from interceptor.backend.httputil import read_json_object, reply
from interceptor.backend.model import Principal
from interceptor.backend.objects import put_of, require_customer_or_admin
from interceptor.backend.store import base

MAX_KEYPAIRS = 100
"""Keypairs per customer (Nova's default quota)."""


async def _owner(request: web.Request) -> tuple[Backend, Principal, str]:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    cid = request.match_info["id"]
    if not who.owns(cid) or await ctx.store.get("customer", cid) is None:
        # Another customer's keypairs are as invisible as the customer itself.
        raise NotFound(f"customer {cid} not found")
    return ctx, who, cid


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def keypair_view(rec: base.Record) -> dict[str, Any]:
    return {"name": rec.data["name"], "customer_id": rec.owner,
            "public_key": rec.data["public_key"], "fingerprint": rec.data["fingerprint"],
            "revision": rec.revision}


async def _bump_servers(ctx: Backend, cid: str, name: str) -> tuple[list[base.Put], list[str]]:
    """Puts that re-commit each server of ``cid`` naming ``name`` (revision bump)."""
    servers = await ctx.store.scan("server", owner=cid, limit=100_000)
    users = [s for s in servers if name in s.data["spec"].get("key_names", [])]
    return [put_of(s, s.data) for s in users], [s.id for s in users]


async def _commit_with_servers(ctx: Backend, cid: str, name: str,
                               op: base.Put | base.Delete) -> int:
    for _ in range(20):
        puts, ids = await _bump_servers(ctx, cid, name)
        try:
            return await ctx.commit([op, *puts], base.Change(ids, kind="keypair"))
        except base.Conflict:
            if isinstance(op, base.Put) and await ctx.store.get(op.kind, op.id) is not None:
                raise Conflict(f"keypair {name} already exists") from None
            if isinstance(op, base.Delete) and await ctx.store.get(op.kind, op.id) is None:
                raise NotFound(f"keypair {name} not found") from None
            continue  # a server changed meanwhile: bump its fresh revision
        except base.Missing:
            raise NotFound(f"keypair {name} not found") from None
    raise Conflict("servers of this customer are changing too fast, try again")


async def create_keypair(request: web.Request) -> web.Response:
    ctx, _, cid = await _owner(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    unknown = set(body) - {"name", "public_key", "type"}
    if unknown:
        raise BadRequest(f"unknown keypair field {sorted(unknown)[0]!r}")
    name = model.check_keypair_name(body.get("name"))
    if "public_key" not in body:
        raise BadRequest("public_key is required (the backend never generates private keys)")
    if body.get("type", "ssh") != "ssh":
        raise BadRequest("type must be ssh")
    line, blob = model.check_public_key(body["public_key"])
    if len(await ctx.store.ids("keypair", owner=cid)) >= MAX_KEYPAIRS:
        raise Conflict(f"customer {cid} has {MAX_KEYPAIRS} keypairs already")
    data = {"name": name, "public_key": line, "fingerprint": fingerprint(blob)}
    kid = keypair_id(cid, name)
    rev = await _commit_with_servers(ctx, cid, name,
                                     base.Put("keypair", kid, data, owner=cid, expect=0))
    rec = base.Record("keypair", kid, cid, None, data, rev)
    return reply(keypair_view(rec), status=201, revision=rev)


async def list_keypairs(request: web.Request) -> web.Response:
    ctx, _, cid = await _owner(request)
    recs = await ctx.store.scan("keypair", owner=cid, limit=MAX_KEYPAIRS + 1)
    return reply({"items": [keypair_view(r) for r in recs]})


async def get_keypair(request: web.Request) -> web.Response:
    ctx, _, cid = await _owner(request)
    name = request.match_info["name"]
    rec = await ctx.store.get("keypair", keypair_id(cid, name))
    if rec is None:
        raise NotFound(f"keypair {name} not found")
    return reply(keypair_view(rec), revision=rec.revision)


async def delete_keypair(request: web.Request) -> web.Response:
    ctx, _, cid = await _owner(request)
    name = request.match_info["name"]
    kid = keypair_id(cid, name)
    if await ctx.store.get("keypair", kid) is None:
        raise NotFound(f"keypair {name} not found")
    await _commit_with_servers(ctx, cid, name, base.Delete("keypair", kid))
    return web.Response(status=204)


async def check_key_names(ctx: Backend, who: Principal, spec: dict[str, Any],
                          old: dict[str, Any] | None) -> None:
    """A server may newly name only keypairs its customer has (400 otherwise)."""
    before = set(old.get("key_names", [])) if old is not None \
        and old["customer_id"] == spec["customer_id"] else set()
    for name in spec.get("key_names", []):
        if name in before:
            continue
        if await ctx.store.get("keypair", keypair_id(spec["customer_id"], name)) is None:
            raise BadRequest(f"keypair {name!r} does not exist for customer "
                             f"{spec['customer_id']}")
    if who.kind == "customer" and spec["customer_id"] != who.subject:
        raise Forbidden("customers name their own keypairs only")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/customers/{id}/keypairs", create_keypair)
    r.add_get("/v1/customers/{id}/keypairs", list_keypairs)
    r.add_get("/v1/customers/{id}/keypairs/{name}", get_keypair)
    r.add_delete("/v1/customers/{id}/keypairs/{name}", delete_keypair)
