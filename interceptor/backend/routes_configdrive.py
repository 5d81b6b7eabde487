"""``GET /v1/servers/{id}/configdrive?format=openstack|nocloud``: the config-drive ISO.

For the platform only (admin token): a hypervisor hook fetches the image when
it defines the VM and attaches it as a read-only CD-ROM. The image is built
from the same instance document the nodes serve (so never holds private
metadata) by ``interceptor.channels.configdrive``; the same document gives
the same bytes, so the ETag is the document revision plus the format and
``If-None-Match`` answers 304.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from interceptor.backend import documents
from interceptor.backend.context import BACKEND
from interceptor.backend.errors import BadRequest, NotFound
from interceptor.backend.objects import require_admin
from interceptor.channels.configdrive import FORMATS, MEDIA_TYPE, build_iso


def _etag(revision: int, fmt: str) -> str:
    return f'"{revision}-{fmt}"'


async def get_configdrive(request: web.Request) -> web.StreamResponse:
    ctx = request.app[BACKEND]
    require_admin(await ctx.auth.authenticate(request))
    fmt = request.query.get("format", "openstack")
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
    sid = request.match_info["id"]
    doc = await documents.build(ctx.store, ctx.vendor, sid)
    if doc is None:
        raise NotFound(f"server {sid} not found")
    tag = _etag(doc["revision"], fmt)
    if tag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers={"ETag": tag})
    # Building is CPU work (tens of ms): off the event loop.
    image = await asyncio.to_thread(build_iso, doc, fmt)
    return web.Response(body=image, content_type=MEDIA_TYPE, headers={
        "ETag": tag,
        "Content-Disposition": f'attachment; filename="{sid}-{fmt}.iso"',
        "Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/servers/{id}/configdrive", get_configdrive)
