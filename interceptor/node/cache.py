"""The per-VM document cache: a wrapper around the backend's document fetch.

``DocumentCache`` wraps any ``DocumentSource`` (the backend client, or a
fake in tests) and adds:

* single flight: N concurrent misses for one instance → one backend call;
* a TTL (default 60 s) with revalidation by ETag (``If-None-Match`` → 304
  keeps the document) and refresh-ahead: a hit after ~80 % of the TTL starts
  a background revalidation, so busy VMs never wait on the backend;
* invalidation (from the change feed) that refetches at once; a fetch that
  started before an invalidation does not count as fresh;
* stale-if-error: when the backend fails, the last good document is served
  for up to ``stale_if_error`` seconds past its TTL, then ``get`` raises
  ``BackendUnavailable`` (the guest gets 503 with Retry-After); after a
  failure the backend is not asked again for that VM for ``error_backoff``
  seconds, so a guest's retry loop cannot hammer it;
* per-instance change notification (``wait_change``) for long-polls: one
  ``asyncio.Event`` per instance, fired when a new document revision
  arrives or the instance is forgotten — waiters never poll the backend;
* a small memo per document revision (``CachedDocument.memo_*``) where the
  guest API keeps ready responses, so a cache hit costs a dict lookup;
* bounded memory: the memo has a byte and entry budget per document;
  responses larger than its per-entry limit (user-data, ``/metadata`` of a
  big document) go to one node-wide ``LargeMemo`` with its own byte budget
  (LRU), so a VM asking for them at its full rate costs dict lookups, not a
  render per request on the one event loop; documents not used for
  ``idle_evict`` seconds are dropped. Measured: 1000
  VMs with a typical document and ~40 paths each ≈ 40 MiB over the
  baseline; with the largest test document (180 KB of JSON) the documents
  themselves dominate (~1000 x 0.2 MB).

``peek`` is the synchronous fast path (fresh document or None); ``get`` is
the full path. The clock is injectable (monotonic seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from interceptor.formats.document import InstanceDocument
from interceptor.node.backend_client import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    FetchedDocument,
)
from interceptor.node.metrics import NodeMetrics

log = logging.getLogger(__name__)

_SWEEP_EVERY = 30.0


class DocumentSource(Protocol):
    """What the cache needs of the backend client."""

    async def document(self, instance_id: str, etag: str | None = None
                       ) -> FetchedDocument | None: ...


class LargeMemo:
    """Node-wide LRU of large memoized responses, bounded in bytes and per entry."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024, max_entry: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: Any) -> Any:
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.max_entry or key in self._entries:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)


class CachedDocument:
    """One revision of one instance's document, immutable except for its memo."""

    __slots__ = ("_large", "_memo", "_memo_budget", "_memo_bytes", "document", "etag",
                 "revision")

    def __init__(self, document: InstanceDocument, etag: str,
                 memo_budget: tuple[int, int, int] = (64 * 1024, 128, 16 * 1024),
                 large: LargeMemo | None = None) -> None:
        self.document = document
        self.etag = etag
        self.revision = document["revision"]
        self._memo: dict[Any, Any] = {}
        self._memo_bytes = 0
        self._memo_budget = memo_budget
        self._large = large

    @property
    def instance_id(self) -> str:
        return self.document["instance_id"]

    def memo_get(self, key: Any) -> Any:
        value = self._memo.get(key)
        if value is None and self._large is not None and self._large.bytes:
            value = self._large.get((self.instance_id, self.etag, key))
        return value

    def memo_put(self, key: Any, value: Any, size: int) -> None:
        """Remember ``value`` unless the memo's byte or entry budget is spent
        (then it is simply not kept: a guest asking for endless distinct paths
        costs renders, not memory). Large values go to the node-wide memo."""
        max_bytes, max_entries, max_entry = self._memo_budget
        if size > max_entry:
            if self._large is not None:
                self._large.put((self.instance_id, self.etag, key), value, size)
            return
        if len(self._memo) >= max_entries or self._memo_bytes + size > max_bytes:
            return
        self._memo[key] = value
        self._memo_bytes += size

    @property
    def memo_bytes(self) -> int:
        return self._memo_bytes


class _Slot:
    __slots__ = ("changed", "current", "error_until", "generation", "inflight", "invalid",
                 "last_access", "refresh_at", "validated_at", "waiters")

    def __init__(self, now: float) -> None:
        self.current: CachedDocument | None = None
        self.validated_at = 0.0
        self.refresh_at = 0.0
        self.invalid = False
        self.generation = 0
        self.inflight: asyncio.Task[CachedDocument] | None = None
        self.error_until = 0.0
        self.changed: asyncio.Event | None = None
        self.waiters = 0
        self.last_access = now


class DocumentCache:
    """Documents per instance id, fetched through ``source``; see module doc."""

    def __init__(self, source: DocumentSource, *, ttl: float = 60.0,
                 stale_if_error: float = 300.0, error_backoff: float = 1.0,
                 refresh_ahead: float = 0.8, idle_evict: float = 900.0,
                 memo_bytes: int = 64 * 1024, memo_entries: int = 128,
                 memo_entry_bytes: int = 16 * 1024,
                 large_memo: LargeMemo | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: NodeMetrics | None = None,
                 rng: random.Random | None = None) -> None:
        self._source = source
        self.ttl = ttl
        self.stale_if_error = stale_if_error
        self.error_backoff = error_backoff
        self._refresh_ahead = refresh_ahead
        self._idle_evict = idle_evict
        self._memo_budget = (memo_bytes, memo_entries, memo_entry_bytes)
        self.large_memo = large_memo if large_memo is not None else LargeMemo()
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_sweep = clock() + _SWEEP_EVERY
        self._closed = False

    def __len__(self) -> int:
        return sum(1 for s in self._slots.values() if s.current is not None)

    def __contains__(self, instance_id: str) -> bool:
        slot = self._slots.get(instance_id)
        return slot is not None and slot.current is not None

    # -- read paths ---------------------------------------------------------------------

    def peek(self, instance_id: str) -> CachedDocument | None:
        """The fresh document, or None when ``get`` must be awaited. Never blocks."""
        slot = self._slots.get(instance_id)
        if slot is None:
            return None
        current = slot.current
        if current is None or slot.invalid:
            return None
        now = self._clock()
        if now - slot.validated_at >= self.ttl:
            return None
        slot.last_access = now
        if now >= slot.refresh_at and slot.inflight is None and now >= slot.error_until:
            self._start_fetch(instance_id, slot)
        if now >= self._next_sweep:
            self._sweep(now)
        if self._metrics is not None:
            self._metrics.count_cache_hit()
        return current

    async def get(self, instance_id: str) -> CachedDocument:
        """The document to serve: fresh, refetched, or stale within bounds.

        Raises ``BackendUnavailable`` when nothing usable is left, or the
        backend's ``NotBound``/``NotFound`` (the cached document is dropped:
        an instance that is no longer ours is never served stale).
        """
        fresh = self.peek(instance_id)
        if fresh is not None:
            return fresh
        if self._closed:
            raise BackendUnavailable("document cache is closed")
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        slot = self._slots.get(instance_id)
        if slot is None:
            slot = self._slots[instance_id] = _Slot(now)
        slot.last_access = now
        if slot.inflight is not None:
            if self._metrics is not None:
                self._metrics.cache_joins.inc()
            return await asyncio.shield(slot.inflight)
        if now < slot.error_until:
            return self._stale_or_raise(slot, now, None)
        if self._metrics is not None:
            self._metrics.cache_misses.inc()
        return await asyncio.shield(self._start_fetch(instance_id, slot))

    def _start_fetch(self, instance_id: str, slot: _Slot) -> asyncio.Task[CachedDocument]:
        task = asyncio.get_running_loop().create_task(self._fetch(instance_id, slot))
        slot.inflight = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a background refresh may fail unobserved

    async def _fetch(self, instance_id: str, slot: _Slot) -> CachedDocument:
        generation = slot.generation
        current = slot.current
        try:
            try:
                fetched = await self._source.document(
                    instance_id, current.etag if current is not None else None)
            finally:
                slot.inflight = None
        except BackendRejected:
            # Not ours (403) or gone (404): never serve what we had.
            if slot.current is not None:
                slot.current = None
                self._notify(slot)
            slot.error_until = self._clock() + self.error_backoff
            raise
        except BackendError as exc:
            now = self._clock()
            slot.error_until = now + self.error_backoff
            log.warning("document of %s: %s", instance_id, exc)
            return self._stale_or_raise(slot, now, exc)
        now = self._clock()
        if fetched is None:
            if current is None or slot.current is not current:
                # A 304 for a document we no longer hold (forgotten meanwhile).
                raise BackendUnavailable("backend answered 304 without a cached document")
            doc = current
        else:
            doc = CachedDocument(fetched.document, fetched.etag, self._memo_budget,
                                 self.large_memo)
        slot.error_until = 0.0
        slot.validated_at = now
        slot.refresh_at = now + self.ttl * self._refresh_ahead * self._rng.uniform(0.9, 1.0)
        if self._instance_known(instance_id, slot):
            changed = slot.current is None or doc.etag != slot.current.etag
            slot.current = doc
            if slot.generation != generation:
                # Invalidated while this fetch was in flight: fetch again.
                self._start_fetch(instance_id, slot)
            else:
                slot.invalid = False
            if changed:
                self._notify(slot)
        return doc

    def _instance_known(self, instance_id: str, slot: _Slot) -> bool:
        return self._slots.get(instance_id) is slot

    def _stale_or_raise(self, slot: _Slot, now: float,
                        exc: BackendError | None) -> CachedDocument:
        current = slot.current
        if current is not None and now - slot.validated_at <= self.ttl + self.stale_if_error:
            if self._metrics is not None:
                self._metrics.cache_stale.inc()
            return current
        if exc is not None:
            raise exc
        raise BackendUnavailable("backend unavailable and no usable cached document")

    # -- change handling ----------------------------------------------------------------

    def invalidate(self, instance_id: str) -> None:
        """The instance's document changed: refetch now (waiters see the result)."""
        slot = self._slots.get(instance_id)
        if slot is None or self._closed:
            return
        slot.invalid = True
        slot.generation += 1
        slot.error_until = 0.0
        if slot.inflight is None:
            self._start_fetch(instance_id, slot)

    def invalidate_all(self) -> None:
        """After a change-feed outage: everything may be stale. Documents with
        long-poll waiters are refetched now; the rest on their next use."""
        for instance_id, slot in list(self._slots.items()):
            slot.invalid = True
            slot.generation += 1
            slot.error_until = 0.0
            if slot.waiters and slot.inflight is None and not self._closed:
                self._start_fetch(instance_id, slot)

    def forget(self, instance_id: str) -> None:
        """The instance is no longer managed here: drop it and wake its waiters."""
        slot = self._slots.pop(instance_id, None)
        if slot is None:
            return
        # An in-flight fetch finishes for its joined callers but no longer
        # updates anything (``_instance_known``).
        slot.current = None
        self._notify(slot)

    def _notify(self, slot: _Slot) -> None:
        event = slot.changed
        if event is not None:
            slot.changed = None
            event.set()

    async def wait_change(self, instance_id: str, seen: CachedDocument | None,
                          max_wait: float) -> bool:
        """Wait until the instance's document is no longer ``seen`` (a new
        revision arrived, or it was dropped) or ``max_wait`` seconds pass.

        True when something changed. Waiters cost one shared Event per
        instance; they never call the backend themselves.
        """
        slot = self._slots.get(instance_id)
        if slot is None or slot.current is not seen:
            return True
        event = slot.changed
        if event is None:
            event = slot.changed = asyncio.Event()
        slot.waiters += 1
        if self._metrics is not None:
            self._metrics.longpoll_waiters.inc()
        try:
            async with asyncio.timeout(max_wait):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            slot.waiters -= 1
            if self._metrics is not None:
                self._metrics.longpoll_waiters.dec()

    def waiters(self, instance_id: str) -> int:
        slot = self._slots.get(instance_id)
        return 0 if slot is None else slot.waiters

    # -- housekeeping -------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY
        for instance_id, slot in list(self._slots.items()):
            if (now - slot.last_access > self._idle_evict and not slot.waiters
                    and slot.inflight is None):
                del self._slots[instance_id]
        if self._metrics is not None:
            self._metrics.cache_documents.set(len(self))

    def memo_bytes(self) -> int:
        return sum(s.current.memo_bytes for s in self._slots.values() if s.current)

    async def close(self) -> None:
        """Cancel background fetches and wake every waiter."""
        self._closed = True
        for slot in self._slots.values():
            self._notify(slot)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
