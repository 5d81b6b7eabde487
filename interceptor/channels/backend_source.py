"""The backend driver: serial bindings and documents through the node API.

Runs on the compute node as that node (its token and signing key): the
bindings are the node's ``serial`` bindings (``GET /v1/nodes/{node}/bindings``),
documents come through the node's ``DocumentCache`` (single flight, TTL,
stale-if-error; ``interceptor/node/cache.py``) and the change feed
(``interceptor/node/watcher.py``) invalidates them and reports binding
changes. The backend's node restriction still holds: this node can read
only instances bound to it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from interceptor.channels.sources import (
    NotBound,
    SerialBinding,
    SourceUnavailable,
    valid_name,
)
from interceptor.formats.document import InstanceDocument
from interceptor.node.backend_client import BackendError, BackendRejected, Bindings, WatchResult
from interceptor.node.cache import CachedDocument
from interceptor.node.watcher import FeedWatcher, Invalidatable

log = logging.getLogger(__name__)


class NodeApi(Protocol):
    """What this source needs of ``interceptor.node.backend_client.BackendClient``."""

    async def bindings(self) -> Bindings: ...

    async def watch(self, since: int, timeout: float) -> WatchResult: ...  # noqa: ASYNC109


class Documents(Invalidatable, Protocol):
    """What this source needs of ``interceptor.node.cache.DocumentCache``."""

    async def get(self, instance_id: str) -> CachedDocument: ...


def serial_bindings(answer: Bindings) -> dict[str, SerialBinding]:
    """The serial-socket bindings of a node's answer, by socket name (taps are the
    node daemon's; a name that could not be a socket file is skipped)."""
    return {item.name: SerialBinding(item.name, item.instance_id, item.metadata_enabled,
                                     item.generation)
            for item in answer.serial if valid_name(item.name)}


class BackendSource:
    """``SerialSource`` over the backend (see the module doc)."""

    def __init__(self, client: NodeApi, cache: Documents, *,
                 poll_timeout: float = 30.0) -> None:
        self._client = client
        self._cache = cache
        self._poll_timeout = poll_timeout
        self.revision = 0

    async def bindings(self) -> Mapping[str, SerialBinding]:
        try:
            answer = await self._client.bindings()
        except BackendError as exc:
            raise SourceUnavailable(str(exc)) from None
        self.revision = answer.revision
        return serial_bindings(answer)

    async def document(self, binding: SerialBinding) -> InstanceDocument:
        try:
            cached = await self._cache.get(binding.instance_id)
        except BackendRejected as exc:  # 403/404: the binding is gone at the backend
            raise NotBound(str(exc)) from None
        except BackendError as exc:
            raise SourceUnavailable(str(exc)) from None
        return cached.document

    async def follow(self, on_change: Callable[[], Awaitable[None]]) -> None:
        watcher = FeedWatcher(self._client, self._cache, on_change, since=self.revision,
                              poll_timeout=self._poll_timeout)
        await watcher.run()
