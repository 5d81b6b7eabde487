"""What every owner-API route (routes_owner.py, routes_servers.py,
routes_metadata.py) starts with: the caller, and ids for new objects."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from interceptor.backend import model
from interceptor.backend.context import BACKEND, Backend
from interceptor.backend.errors import TooLarge
from interceptor.backend.model import Principal
from interceptor.backend.objects import require_customer_or_admin


async def who_owner(request: web.Request) -> tuple[Backend, Principal]:
    """The backend and the authenticated caller: a customer or the admin."""
    ctx = request.app[BACKEND]
    who = await ctx.auth.authenticate(request)
    require_customer_or_admin(who)
    return ctx, who


def new_id(prefix: str, body: dict[str, Any]) -> str:
    """The id the body names (checked), or a fresh one."""
    if "id" in body:
        return model.check_id(body["id"], "id")
    return f"{prefix}-{secrets.token_hex(6)}"


def check_server_size(ctx: Backend, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """A server's spec and metadata must fit in one instance document."""
    size = model.json_size(spec) + model.json_size(meta)
    if size > ctx.limits.document_bytes:
        raise TooLarge(f"server exceeds the document limit of {ctx.limits.document_bytes} bytes")
