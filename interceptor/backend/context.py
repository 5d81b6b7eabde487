"""The backend's long-lived parts, as one object the handlers reach via an AppKey."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from interceptor.backend.auth import Authenticator
from interceptor.backend.changes import ChangeNotifier
from interceptor.backend.documents import VendorSource
from interceptor.backend.limits import Limits
from interceptor.backend.metrics import BackendMetrics
from interceptor.backend.store.base import Change, Delete, Put, Store
from interceptor.common.ratelimit import RateLimiter

log = logging.getLogger(__name__)


@dataclass
class Backend:
    store: Store
    auth: Authenticator
    notifier: ChangeNotifier
    limits: Limits
    metrics: BackendMetrics
    signing_key: bytes | None
    vendor: VendorSource | None = None
    guest_writes: RateLimiter = field(default_factory=lambda: RateLimiter(0, 1))
    vendor_seen: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary)

    def lock(self, kind: str, id: str) -> asyncio.Lock:
        """Serialises this process's read-modify-write of one record, so local
        writers queue instead of failing compare-and-set against each other."""
        lock = self._locks.get((kind, id))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(kind, id)] = lock
        return lock

    async def commit(self, ops: list[Put | Delete], change: Change) -> int:
        """Commit, then wake this process's watchers and drop stale vendor data."""
        revision = await self.store.commit(ops, change)
        if self.vendor is not None:
            for iid in change.instances:
                self.vendor.invalidate(iid)
        self.notifier.notify(revision)
        return revision

    def on_remote_commit(self, revision: Any) -> None:
        """Another process committed (PostgreSQL NOTIFY): wake watchers, and drop
        vendor data of the instances it touched so every process refreshes it."""
        self.notifier.notify(int(revision))
        if self.vendor is not None:
            task = asyncio.get_running_loop().create_task(self._invalidate_remote())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _invalidate_remote(self) -> None:
        vendor = self.vendor
        if vendor is None:
            return
        try:
            rows = await self.store.changes_since(self.vendor_seen)
        except Exception:  # the store is unreachable: the vendor TTL still bounds staleness
            log.warning("could not read changes for vendor-data invalidation", exc_info=True)
            return
        for row in rows:
            for iid in row.instances:
                vendor.invalidate(iid)
        if rows:
            self.vendor_seen = max(self.vendor_seen, rows[-1].revision)

    async def close_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


BACKEND = web.AppKey("backend", Backend)
