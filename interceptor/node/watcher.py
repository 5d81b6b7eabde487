"""Follows the backend's change feed and keeps the document cache honest.

``FeedWatcher.run()`` long-polls ``watch(since, timeout)`` forever. For each
answer it invalidates the named instances in the cache (which refetches
them and wakes their long-polling guests) and, when the node's bindings
changed, awaits ``on_bindings_changed()`` (the composition root re-reads
bindings and reconciles listeners and the datapath).

On errors it retries with exponential backoff and full jitter, so a node
fleet does not stampede a backend that comes back. Changes may have been
missed while the feed was down (or the backend may have been restored from
an older state, seen as a revision going backwards), so after any outage it
resyncs everything: every cached document is invalidated and
``on_bindings_changed()`` runs once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from interceptor.node.backend_client import BackendError, WatchResult
from interceptor.node.metrics import NodeMetrics

log = logging.getLogger(__name__)


class WatchSource(Protocol):
    async def watch(self, since: int, timeout: float) -> WatchResult: ...  # noqa: ASYNC109


class Invalidatable(Protocol):
    def invalidate(self, instance_id: str) -> None: ...

    def invalidate_all(self) -> None: ...


class FeedWatcher:
    """Runs until cancelled; ``since`` is the revision the caller's state is from
    (e.g. the ``revision`` of the ``bindings()`` answer it reconciled)."""

    def __init__(self, source: WatchSource, cache: Invalidatable,
                 on_bindings_changed: Callable[[], Awaitable[None]], *, since: int = 0,
                 poll_timeout: float = 30.0, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, metrics: NodeMetrics | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self._source = source
        self._cache = cache
        self._on_bindings_changed = on_bindings_changed
        self.since = since
        self._poll_timeout = poll_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._metrics = metrics
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.failures = 0
        self.healthy = False
        """True after a successful poll, False from the first failure on."""

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^(failures-1))]."""
        cap = min(self._backoff_max, self._backoff_initial * (2 ** min(failures - 1, 30)))
        return self._rng.uniform(0.0, cap)

    async def poll_once(self) -> WatchResult:
        """One watch round trip and its effects (raises BackendError)."""
        result = await self._source.watch(self.since, self._poll_timeout)
        resync = self.failures > 0 or result.revision < self.since
        if self.failures:
            log.info("change feed is back after %d failed polls; resyncing", self.failures)
        self.failures = 0
        self.healthy = True
        self.since = result.revision
        if resync:
            if self._metrics is not None:
                self._metrics.watch_resyncs.inc()
            self._cache.invalidate_all()
            await self._on_bindings_changed()
            return result
        for instance_id in result.instances:
            self._cache.invalidate(instance_id)
        if result.bindings_changed:
            await self._on_bindings_changed()
        return result

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
                continue
            except BackendError as exc:
                self.failures += 1
                self.healthy = False
                if self._metrics is not None:
                    self._metrics.watch_errors.inc()
                delay = self.backoff(self.failures)
                # Log the first failure and then sparsely, not every retry.
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("change feed poll failed (%d in a row), retrying in %.1fs: %s",
                                self.failures, delay, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in a callback must not stop the feed forever.
                self.failures += 1
                self.healthy = False
                delay = self.backoff(self.failures)
                log.exception("change feed handling failed; retrying in %.1fs", delay)
            await self._sleep(delay)
