"""Owner-side long-polling of one record: ``?wait_for_change=true``.

The same parameters as the guest side (``interceptor/node/guest_api.py``):
``wait_for_change=true``, ``last_etag=<ETag>`` (default: the ETag at request
time), ``timeout_sec=<n>`` (default 60, at most ``MAX_LONGPOLL_SECONDS``).
The answer comes as soon as the record's revision differs from the one
``last_etag`` names, else after ``n`` seconds with the current record.
Waiters sleep on the change notifier (woken by every commit of this process
and, with PostgreSQL, of the others) and re-read the one record; they cost
nothing while nothing is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from interceptor.backend.changes import RECHECK_SECONDS
from interceptor.backend.context import Backend
from interceptor.backend.errors import BadRequest, NotFound
from interceptor.backend.store import base

DEFAULT_LONGPOLL_SECONDS = 60.0
MAX_LONGPOLL_SECONDS = 300.0


def wants_wait(request: web.Request) -> bool:
    value = request.query.get("wait_for_change")
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise BadRequest("wait_for_change must be true or false")


def _args(request: web.Request, current: int) -> tuple[int, float]:
    last = request.query.get("last_etag")
    baseline = current
    if last is not None:
        try:
            baseline = int(last.strip().removeprefix("W/").strip('"'))
        except ValueError:
            raise BadRequest("last_etag must be an ETag of this API") from None
    try:
        timeout = float(request.query.get("timeout_sec", DEFAULT_LONGPOLL_SECONDS))
    except ValueError:
        raise BadRequest("timeout_sec must be a number of seconds") from None
    if not 0 <= timeout < float("inf"):
        raise BadRequest("timeout_sec must be ≥ 0")
    return baseline, min(timeout, MAX_LONGPOLL_SECONDS)


async def wait_record(ctx: Backend, request: web.Request, rec: base.Record) -> base.Record:
    """``rec`` at once without ``wait_for_change``; else the record once its
    revision is not the baseline (or at the timeout). 404 if it is deleted."""
    if not wants_wait(request):
        return rec
    baseline, timeout = _args(request, rec.revision)
    deadline = time.monotonic() + timeout
    ctx.notifier.watchers += 1
    try:
        while True:
            event = ctx.notifier.event()  # before the read: no wake-up is lost
            fresh = await ctx.store.get(rec.kind, rec.id)
            if fresh is None:
                raise NotFound(f"{rec.kind} {rec.id} not found")
            remaining = deadline - time.monotonic()
            if fresh.revision != baseline or remaining <= 0 or ctx.notifier.closed:
                return fresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, RECHECK_SECONDS))
    finally:
        ctx.notifier.watchers -= 1
