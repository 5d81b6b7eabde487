"""The change feed: wake long-polling watchers when a revision is committed.

Commits in this process call ``notify``; with PostgreSQL the store also
forwards other processes' commits (LISTEN/NOTIFY). A watcher takes the
current event *before* reading the store so no wake-up is lost between its
read and its wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from interceptor.backend.store.base import Store

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0
CHANGES_KEPT = 100_000
"""Change rows kept for watchers that fall behind; older ones are pruned."""
PRUNE_INTERVAL = 600.0


async def prune_forever(store: Store, keep: int = CHANGES_KEPT,
                        interval: float = PRUNE_INTERVAL) -> None:
    """Keep the change log bounded (a background task of the app)."""
    while True:
        try:
            current = await store.revision()
            if current > keep:
                await store.prune_changes(current - keep)
        except Exception:  # the store may be down for a while; try again later
            log.warning("pruning the change log failed", exc_info=True)
        await asyncio.sleep(interval)


class ChangeNotifier:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.revision = 0
        self.watchers = 0
        self.closed = False

    def event(self) -> asyncio.Event:
        return self._event

    def notify(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Shutting down: release every waiting watcher now."""
        self.closed = True
        self.notify(self.revision)


async def watch(store: Store, notifier: ChangeNotifier, node: str, since: int,
                wait_seconds: float) -> dict[str, Any]:
    """Long-poll for changes relevant to ``node`` after revision ``since``."""
    deadline = time.monotonic() + wait_seconds
    notifier.watchers += 1
    try:
        while True:
            event = notifier.event()
            rows = await store.changes_since(since)
            if rows and rows[0].revision > since + 1 and await store.first_revision() > since + 1:
                # What happened after ``since`` was pruned from the log: resync.
                everything = sorted({sid for _, sid in await store.bindings(node)})
                return {"revision": rows[-1].revision, "instances": everything,
                        "bindings_changed": True}
            if rows:
                bound = {sid for _, sid in await store.bindings(node)}
                instances = sorted({i for r in rows for i in r.instances if i in bound})
                bindings_changed = any(node in r.nodes for r in rows)
                since = rows[-1].revision
                if instances or bindings_changed:
                    return {"revision": since, "instances": instances,
                            "bindings_changed": bindings_changed}
            else:
                current = await store.revision()
                if since > current:
                    # The node saw a revision this store never had (restored
                    # database): tell it to resynchronise everything.
                    return {"revision": current, "instances": [], "bindings_changed": True}
            remaining = deadline - time.monotonic()
            if remaining <= 0 or notifier.closed:
                return {"revision": since, "instances": [], "bindings_changed": False}
            # Re-read now and then even without a wake-up: a safety net for a lost
            # notification (e.g. while a LISTEN connection reconnects).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, RECHECK_SECONDS))
    finally:
        notifier.watchers -= 1
