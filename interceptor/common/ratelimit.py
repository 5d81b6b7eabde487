"""Token buckets keyed by a string (an instance id): the node's per-VM
request limit and the backend's per-instance guest-write limit.

One bucket per key, refilled lazily on use (no timers), so idle keys cost
nothing; past ``max_buckets`` keys, full (idle) buckets are forgotten, so
memory stays bounded whatever keys callers bring. ``rate <= 0`` disables
limiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_BUCKETS = 100_000


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """``rate`` tokens per second per key, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_buckets: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._max = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """0.0 when a token was taken for ``key``, else seconds until it has one."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        return self.take(key) == 0.0

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` has a token again (at least 1)."""
        bucket = self._buckets.get(key)
        if bucket is None or self.rate <= 0:
            return 1
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def forget(self, key: str) -> None:
        """Drop the bucket of a key that is no longer used."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.tokens + (now - b.stamp) * self.rate >= self.burst:
                del self._buckets[key]
