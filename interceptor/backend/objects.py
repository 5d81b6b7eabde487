"""Reading and updating records with the access rules and compare-and-set.

Route handlers stay thin: they call these with the caller's Principal. Each
update reads the record, applies a pure change, and commits expecting the
revision it read; a concurrent writer makes the commit fail, and then either
the caller's ``If-Match`` was stale (412) or we simply retry on fresh data —
so no update is ever lost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from interceptor.backend import model
from interceptor.backend.context import Backend
from interceptor.backend.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
)
from interceptor.backend.model import Principal
from interceptor.backend.store import base

RETRIES = 20


def owner_of(rec: base.Record) -> str | None:
    """The customer that owns a record (customers own themselves; None = platform)."""
    return rec.id if rec.kind == "customer" else rec.owner


def visible(who: Principal, rec: base.Record) -> bool:
    """Whether ``who`` may know the object exists (private images are hidden)."""
    if rec.kind == "image":
        return who.owns(rec.owner) or rec.shared
    return who.kind in ("admin", "customer")


async def get_visible(ctx: Backend, who: Principal, kind: str, id: str) -> base.Record:
    rec = await ctx.store.get(kind, id)
    if rec is None or not visible(who, rec):
        raise NotFound(f"{kind} {id} not found")
    return rec


async def get_owned(ctx: Backend, who: Principal, kind: str, id: str) -> base.Record:
    rec = await get_visible(ctx, who, kind, id)
    if not who.owns(owner_of(rec)):
        raise Forbidden(f"not the owner of {kind} {id}")
    return rec


async def affected(ctx: Backend, rec: base.Record) -> list[str]:
    """Instances whose documents depend on ``rec``."""
    if rec.kind == "customer":
        return await ctx.store.ids("server", owner=rec.id)
    if rec.kind == "image":
        return await ctx.store.ids("server", parent=rec.id)
    return [rec.id]


def put_of(rec: base.Record, data: dict[str, Any], **overrides: Any) -> base.Put:
    fields: dict[str, Any] = {"kind": rec.kind, "id": rec.id, "data": data, "owner": rec.owner,
                              "parent": rec.parent, "shared": rec.shared,
                              "expect": rec.revision}
    fields.update(overrides)
    return base.Put(**fields)


Mutation = Callable[[base.Record], tuple[list[base.Put | base.Delete], base.Change]]


async def update(ctx: Backend, kind: str, id: str, wanted: int | None,
                 check: Callable[[base.Record], None], mutate: Mutation) -> int:
    """Read-check-mutate-commit with retries; return the new revision.

    ``wanted`` is the caller's If-Match revision (None: none given). ``check``
    raises for access problems; ``mutate`` builds the ops (expecting the
    revision it was given) and the change.
    """
    async with ctx.lock(kind, id):
        for attempt in range(RETRIES):
            rec = await ctx.store.get(kind, id)
            if rec is None:
                raise NotFound(f"{kind} {id} not found")
            check(rec)
            if wanted is not None and wanted != rec.revision:
                raise PreconditionFailed(
                    f"{kind} {id} is at revision {rec.revision}, not {wanted}")
            ops, change = mutate(rec)
            try:
                return await ctx.commit(ops, change)
            except base.Conflict:
                # Another process committed in between: back off, re-read, re-check.
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # noqa: S311
            except base.Missing as exc:
                raise NotFound(str(exc)) from None
            except base.BindingInUse as exc:
                raise Conflict(str(exc)) from None
    raise Conflict(f"{kind} {id} is changing too fast, try again")


async def commit_new(ctx: Backend, ops: list[base.Put | base.Delete],
                     change: base.Change) -> int:
    try:
        return await ctx.commit(ops, change)
    except base.Conflict as exc:
        raise Conflict(str(exc).replace("changed", "already exists")) from None
    except base.Missing as exc:
        raise NotFound(str(exc)) from None
    except base.BindingInUse as exc:
        raise Conflict(str(exc)) from None


def require_admin(who: Principal) -> None:
    if not who.is_admin:
        raise Forbidden("only the platform (admin token) may do this")


def require_customer_or_admin(who: Principal) -> None:
    if who.kind not in ("admin", "customer"):
        raise Forbidden("node tokens may only use the node endpoints")


def customer_view(rec: base.Record) -> dict[str, Any]:
    return {"id": rec.id, "name": rec.data.get("name", ""), "revision": rec.revision}


def image_view(rec: base.Record) -> dict[str, Any]:
    return {"id": rec.id, "name": rec.data.get("name", ""), "owner": rec.owner,
            "visibility": rec.data.get("visibility", "private"), "revision": rec.revision}


def server_spec(rec: base.Record) -> dict[str, Any]:
    return model.spec_of(rec.data)


def server_bindings(rec: base.Record) -> list[dict[str, Any]]:
    return model.bindings_of(rec.data)


def binding_nodes(rec: base.Record | None) -> set[str]:
    return set() if rec is None else {b["node"] for b in server_bindings(rec)}


def server_view(rec: base.Record, runtime: base.Record | None) -> dict[str, Any]:
    view = {"id": rec.id, **server_spec(rec), "revision": rec.revision,
            "running": bool(runtime is not None and runtime.data.get("running"))}
    if rec.data.get("disabled_by_guest"):
        view["disabled_by_guest"] = rec.data["disabled_by_guest"]
    if rec.data.get("consumed"):
        view["consumed_keys"] = rec.data["consumed"]
    return view


def bad_if(cond: bool, reason: str) -> None:
    if cond:
        raise BadRequest(reason)
