"""Per-VM request rate limits and the HTTP limits of the guest listener.

One token bucket per instance: one VM's flood spends only its own budget,
so it gets 429 while its neighbours are served as usual. The buckets are
refilled lazily on use (no timers), so idle VMs cost nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    """Limits of the guest-facing HTTP/1.1 server (per connection unless noted)."""

    max_head_bytes: int = 8192
    """Request line plus headers; beyond it: 431 and close."""
    max_headers: int = 64
    max_body_bytes: int = 16384
    """Content-Length above it: 413 and close."""
    header_timeout: float = 10.0
    """Seconds from a request's first byte until its head and body are complete."""
    idle_timeout: float = 30.0
    """Seconds a keep-alive connection may sit idle between requests."""
    max_connections_per_tap: int = 64
    """Concurrent connections per tap (long-polls included); more get 503 and
    are closed. Reading pauses while more than head + body limit is buffered
    behind a busy request, and processing pauses while 64 KiB of responses
    wait for a peer that does not read."""


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets keyed by instance id. ``rate <= 0`` disables limiting."""

    def __init__(self, rate: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        if self.rate <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = _Bucket(self.burst - 1.0, now)
            return True
        tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return True
        bucket.tokens = tokens
        return False

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` has a token again (at least 1)."""
        bucket = self._buckets.get(key)
        if bucket is None or self.rate <= 0:
            return 1
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def forget(self, key: str) -> None:
        """Drop the bucket of an instance that is no longer managed."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
