"""Owner and platform API under /v1: the route table (``add_routes``), and
customers and images. Servers are in routes_servers.py, the metadata of
every kind and a server's guest data in routes_metadata.py, bindings in
routes_bindings.py."""

from __future__ import annotations

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.auth import digest, new_token
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
)
from interceptor.backend.httputil import (
    check_match,
    if_match,
    next_cursor,
    page_args,
    read_json_object,
    reply,
)
from interceptor.backend.objects import (
    commit_new,
    customer_view,
    get_owned,
    get_visible,
    image_view,
    put_of,
    require_admin,
    update,
)
from interceptor.backend.routes_common import new_id, who_owner
from interceptor.backend.routes_metadata import (
    delete_password,
    get_document,
    get_guest_data,
    get_metadata,
    get_password,
    write_metadata,
)
from interceptor.backend.routes_servers import (
    create_server,
    delete_server,
    get_server,
    list_servers,
    patch_server,
    put_server,
    start_server,
    stop_server,
)
from interceptor.backend.store import base

# --- customers ------------------------------------------------------------

async def create_customer(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    require_admin(who)
    body = await read_json_object(request, ctx.limits.request_bytes)
    cid = new_id("c", body)
    data = {"name": model.check_name(body, cid), "meta": model.empty_classes()}
    rev = await commit_new(ctx, [base.Put("customer", cid, data, expect=0)],
                           base.Change(kind="customer"))
    rec = base.Record("customer", cid, None, None, data, rev)
    return reply(customer_view(rec), status=201, revision=rev)


async def list_customers(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    limit, after = page_args(request)
    if who.is_admin:
        recs = await ctx.store.scan("customer", after=after, limit=limit)
    else:
        own = await ctx.store.get("customer", who.subject)
        recs = [own] if own is not None and (after is None or own.id > after) else []
    return reply({"items": [customer_view(r) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


async def get_customer(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    rec = await get_owned(ctx, who, "customer", request.match_info["id"])
    return reply(customer_view(rec), revision=rec.revision)


async def patch_customer(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
    require_admin(who)
    rec = await get_owned(ctx, who, "customer", request.match_info["id"])
    token = new_token()
    await ctx.store.put_token(digest(token), base.Token("customer", rec.id))
    return reply({"customer_id": rec.id, "token": token}, status=201)


# --- images ---------------------------------------------------------------

async def create_image(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    body = await read_json_object(request, ctx.limits.request_bytes)
    iid = new_id("img", body)
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
    ctx, who = await who_owner(request)
    limit, after = page_args(request)
    recs = await ctx.store.scan("image", after=after, limit=limit,
                                visible_to=None if who.is_admin else who.subject)
    return reply({"items": [image_view(r) for r in recs],
                  "next_cursor": next_cursor([r.id for r in recs], limit)})


async def get_image(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
    rec = await get_visible(ctx, who, "image", request.match_info["id"])
    return reply(image_view(rec), revision=rec.revision)


async def patch_image(request: web.Request) -> web.Response:
    ctx, who = await who_owner(request)
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
    ctx, who = await who_owner(request)
    iid = request.match_info["id"]
    rec = await get_owned(ctx, who, "image", iid)
    expect = check_match(request, rec.revision) or rec.revision
    if await ctx.store.ids("server", parent=iid):
        raise Conflict(f"image {iid} is used by servers")
    await update(ctx, "image", iid, expect, lambda r: None,
                 lambda r: ([base.Delete("image", iid, expect=r.revision)],
                            base.Change(kind="image")))
    return web.Response(status=204)


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
