"""A Store wrapper that times every operation into a Prometheus histogram."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from prometheus_client import Histogram

from interceptor.backend.store.base import Store

TIMED = frozenset({"ping", "get", "get_many", "scan", "ids", "commit", "revision",
                   "changes_since", "first_revision", "prune_changes", "bindings",
                   "put_token", "find_token", "delete_tokens"})


class _Timed:
    def __init__(self, inner: Store, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in TIMED:
            return attr
        observe = self._histogram.labels(name).observe
        call = cast(Callable[..., Awaitable[Any]], attr)

        @functools.wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                observe(time.perf_counter() - start)
        return timed


def timed_store(inner: Store, histogram: Histogram) -> Store:
    """``inner`` with each operation observed under the label ``op``."""
    return cast(Store, _Timed(inner, histogram))
