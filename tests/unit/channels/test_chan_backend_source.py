"""The backend driver over fakes of the node's client and cache."""

from __future__ import annotations

import asyncio

import pytest

from interceptor.channels.backend_source import BackendSource, serial_bindings
from interceptor.channels.sources import NotBound, SerialBinding, SourceUnavailable
from interceptor.node.backend_client import (
    BackendUnavailable,
    Binding,
    Bindings,
    WatchResult,
)
from interceptor.node.backend_client import (
    NotBound as BackendNotBound,
)
from interceptor.node.backend_client import (
    SerialBinding as ClientSerialBinding,
)
from interceptor.node.cache import CachedDocument
from tests.channels.support import document


class FakeClient:
    def __init__(self) -> None:
        self.items: list[ClientSerialBinding] = []
        self.revision = 7
        self.error: Exception | None = None
        self.watches: asyncio.Queue[WatchResult] = asyncio.Queue()

    async def bindings(self) -> Bindings:
        if self.error is not None:
            raise self.error
        return Bindings(self.revision, (), tuple(self.items))

    async def watch(self, since: int, timeout: float) -> WatchResult:
        return await self.watches.get()


class FakeCache:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.invalidated: list[str] = []

    async def get(self, instance_id: str) -> CachedDocument:
        if self.error is not None:
            raise self.error
        doc = document(instance_id)
        return CachedDocument(doc, f'"{doc["revision"]}"')

    def invalidate(self, instance_id: str) -> None:
        self.invalidated.append(instance_id)

    def invalidate_all(self) -> None:
        self.invalidated.append("*")


def test_only_serial_items_with_valid_names_become_bindings() -> None:
    answer = Bindings(3, (Binding("vnet3", "i-1", True, None, 2),),
                      (ClientSerialBinding("vm1", "i-1", True, 4),
                       ClientSerialBinding("vm2", "i-2", False, 1),
                       ClientSerialBinding("../x/y", "i-3", True, 1)))
    assert serial_bindings(answer) == {
        "vm1": SerialBinding("vm1", "i-1", True, 4),
        "vm2": SerialBinding("vm2", "i-2", False, 1)}


async def test_bindings_and_documents() -> None:
    client, cache = FakeClient(), FakeCache()
    client.items = [ClientSerialBinding("vm1", "i-1", True, 1)]
    source = BackendSource(client, cache)
    bound = await source.bindings()
    assert source.revision == 7 and bound["vm1"].instance_id == "i-1"
    assert (await source.document(bound["vm1"]))["instance_id"] == "i-1"
    cache.error = BackendUnavailable("down")
    with pytest.raises(SourceUnavailable):
        await source.document(bound["vm1"])
    cache.error = BackendNotBound("not bound", 403)
    with pytest.raises(NotBound):
        await source.document(bound["vm1"])
    client.error = BackendUnavailable("down")
    with pytest.raises(SourceUnavailable):
        await source.bindings()


async def test_follow_invalidates_and_reports_binding_changes() -> None:
    client, cache = FakeClient(), FakeCache()
    source = BackendSource(client, cache)
    await source.bindings()
    changed = asyncio.Event()

    async def on_change() -> None:
        changed.set()

    task = asyncio.create_task(source.follow(on_change))
    try:
        await client.watches.put(WatchResult(8, ("i-1",), False))
        await client.watches.put(WatchResult(9, (), True))
        await asyncio.wait_for(changed.wait(), 2)
        assert cache.invalidated == ["i-1"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
