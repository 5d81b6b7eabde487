"""The HTTP limits of the guest listener, and the per-VM request limit.

The per-VM limit is one token bucket per instance (``RateLimiter``, shared
with the backend: interceptor/common/ratelimit.py): one VM's flood spends
only its own budget, so it gets 429 while its neighbours are served as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from interceptor.common.ratelimit import RateLimiter

__all__ = ["HttpLimits", "RateLimiter"]


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
