"""Creating servers the OCCI 1.1 way, under ``/occi1.1/`` (``interceptor/backend/occi.py``).

* ``GET /occi1.1/-/`` (also ``/occi1.1/.well-known/org/ogf/occi/-/``): the
  query interface — the compute kind, the ``user_data`` and ``public_key``
  mixins, and one ``os_tpl`` mixin per image the caller may use.
* ``POST /occi1.1/compute/`` with ``Content-Type: text/occi`` (categories and
  attributes in headers) or ``text/plain`` (in the body): the compute kind,
  ``occi.compute.hostname`` (or ``occi.core.title``), the mixins (the
  platform may choose the id with ``occi.core.id``) → a server of the caller (an admin names the
  customer with ``interceptor.customer_id``). 201 with ``Location``.
* ``GET /occi1.1/compute/{id}``: the resource rendered back.

The answer's rendering follows ``Accept`` (``text/occi`` → headers,
otherwise ``text/plain``). Tokens as for ``/v1`` (``Authorization: Bearer``).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from interceptor.backend import model, occi, routes_servers
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import BadRequest, Forbidden
from interceptor.backend.httputil import read_body
from interceptor.backend.model import Principal
from interceptor.backend.objects import get_owned, require_customer_or_admin, server_spec

CUSTOMER_ATTR = "interceptor.customer_id"
ROOT = "/occi1.1"


async def _who(request: web.Request) -> tuple[Backend, Principal]:
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    return ctx, who


def _respond(request: web.Request, lines: list[tuple[str, str]], *, status: int = 200,
             location: str | None = None) -> web.Response:
    headers: dict[str, str] = {"Server": "interceptor-occi/1.1"}
    if location is not None:
        headers["Location"] = location
    if occi.OCCI_TEXT in request.headers.get("Accept", ""):
        resp = web.Response(status=status, text="OK\n", content_type=occi.PLAIN,
                            headers=headers)
        resp.headers["Content-Type"] = occi.OCCI_TEXT
        for name, value in lines:
            resp.headers.add(name, value)
        return resp
    return web.Response(status=status, text=occi.plain_body(lines), content_type=occi.PLAIN,
                        headers=headers)


async def query(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    images = await ctx.store.scan("image", limit=1000,
                                  visible_to=None if who.is_admin else who.subject)
    cats = occi.query_interface((r.id, str(r.data.get("name", ""))) for r in images)
    return _respond(request, occi.lines_of(cats))


async def _parse(request: web.Request, ctx: Backend) -> occi.Request:
    ctype = request.content_type
    try:
        if ctype == occi.OCCI_TEXT:
            await read_body(request, ctx.limits.request_bytes)  # nothing in it is used
            return occi.parse_headers(list(request.headers.items()))
        if ctype in (occi.PLAIN, "application/octet-stream", ""):
            raw = await read_body(request, ctx.limits.request_bytes)
            return occi.parse_plain(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("OCCI text/plain must be UTF-8") from None
    except occi.OcciError as exc:
        raise BadRequest(f"OCCI: {exc}") from None
    raise web.HTTPUnsupportedMediaType(text="use text/occi or text/plain\n")


def _text_attr(req: occi.Request, name: str) -> str | None:
    value = req.attributes.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"OCCI: attribute {name} must be a string")
    return value


def server_body(req: occi.Request, who: Principal) -> tuple[str | None, dict[str, Any]]:
    """(requested id or None, the ``/v1`` server body) of an OCCI create request."""
    if not req.has(occi.INFRA, "compute", "kind"):
        raise BadRequest("OCCI: the compute kind is required")
    hostname = _text_attr(req, occi.HOSTNAME_ATTR) or _text_attr(req, occi.TITLE_ATTR)
    if not hostname:
        raise BadRequest(f"OCCI: {occi.HOSTNAME_ATTR} (or {occi.TITLE_ATTR}) is required")
    body: dict[str, Any] = {"hostname": hostname}
    customer = _text_attr(req, CUSTOMER_ATTR)
    if who.kind == "customer":
        if customer not in (None, who.subject):
            raise Forbidden("customers create servers they own")
        customer = who.subject
    if customer is None:
        raise BadRequest(f"OCCI: the platform names the customer in {CUSTOMER_ATTR}")
    body["customer_id"] = customer
    user_data = _text_attr(req, occi.USER_DATA_ATTR)
    if req.has(occi.OS_INSTANCE, "user_data", "mixin") != (user_data is not None):
        raise BadRequest(f"OCCI: the user_data mixin and {occi.USER_DATA_ATTR} go together")
    if user_data is not None:
        body["user_data"] = [{"name": "user", "content_type": "text/plain",
                              "data": user_data}]
    key_name = _text_attr(req, occi.KEY_NAME_ATTR)
    key_data = _text_attr(req, occi.KEY_DATA_ATTR)
    if req.has(occi.OS_CREDENTIALS, "public_key", "mixin") != bool(key_name or key_data):
        raise BadRequest("OCCI: the public_key mixin and its attributes go together")
    if key_data:
        body["ssh_keys"] = [{"name": key_name or "occi", "key": key_data}]
    elif key_name:
        body["key_names"] = [key_name]
    images = req.terms(occi.OS_TPL)
    if len(images) > 1:
        raise BadRequest("OCCI: at most one os_tpl mixin")
    if images:
        body["image_id"] = images[0]
    return _text_attr(req, occi.ID_ATTR), body


async def create_compute(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    req = await _parse(request, ctx)
    sid, body = server_body(req, who)
    if sid is not None and not who.is_admin:
        raise Forbidden("server ids are chosen by the platform (occi.core.id: admin only)")
    sid = model.check_id(sid, "occi.core.id") if sid else f"i-{secrets.token_hex(6)}"
    # The same creation as POST /v1/servers (validation, references, records).
    await routes_servers._create_server(ctx, who, sid, body, 0)
    location = f"{request.scheme}://{request.host}{ROOT}/compute/{sid}"
    return _respond(request, occi.lines_of(locations=[location]), status=201,
                    location=location)


async def get_compute(request: web.Request) -> web.Response:
    ctx, who = await _who(request)
    rec = await get_owned(ctx, who, "server", request.match_info["id"])
    spec = server_spec(rec)
    cats = [occi.COMPUTE]
    if spec["user_data"]:
        cats.append(occi.USER_DATA)
    if spec["ssh_keys"] or spec.get("key_names"):
        cats.append(occi.PUBLIC_KEY)
    if spec["image_id"]:
        cats.append(occi.os_template(spec["image_id"], ""))
    attrs: dict[str, str | int | float | bool] = {
        occi.ID_ATTR: rec.id, occi.TITLE_ATTR: spec["hostname"],
        occi.HOSTNAME_ATTR: spec["hostname"],
        "occi.compute.state": "active" if spec["metadata_enabled"] else "inactive"}
    return _respond(request, occi.lines_of(cats, attrs))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(ROOT + "/-/", query)
    r.add_get(ROOT + "/.well-known/org/ogf/occi/-/", query)
    r.add_post(ROOT + "/compute/", create_compute)
    r.add_get(ROOT + "/compute/{id}", get_compute)
