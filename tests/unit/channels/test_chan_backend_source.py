"""The backend driver over fakes of the node's client and cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from interceptor.channels.backend_source import BackendSource, serial_bindings
from interceptor.channels.sources import NotBound, SerialBinding, SourceUnavailable
from interceptor.node.backend_client import (
    BackendUnavailable,
    Bindings,
    WatchResult,
)
from interceptor.node.backend_client import (
    NotBound as BackendNotBound,
)
from interceptor.node.cache import CachedDocument
from tests.channels.support import document


@dataclass(frozen=True)
class Item:
    """A binding item as the node API returns it (a tap or a serial socket)."""

    instance_id: str
    metadata_enabled: bool
    generation: int
    ifname: str | None = None
    serial: str | None = None


class FakeClient:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.revision = 7
        self.error: Exception | None = None
        self.watches: asyncio.Queue[WatchResult] = asyncio.Queue()

    async def bindings(self) -> Bindings:
        if self.error is not None:
            raise self.error
        return Bindings(self.revision, tuple(self.items))  # type: ignore[arg-type]

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
    answer = Bindings(3, (Item("i-1", True, 2, ifname="vnet3"),  # type: ignore[arg-type]
                          Item("i-1", True, 4, serial="vm1"),
                          Item("i-2", False, 1, serial="vm2"),
                          Item("i-3", True, 1, serial="../x/y")))
    assert serial_bindings(answer) == {
        "vm1": SerialBinding("vm1", "i-1", True, 4),
        "vm2": SerialBinding("vm2", "i-2", False, 1)}


async def test_bindings_and_documents() -> None:
    client, cache = FakeClient(), FakeCache()
    client.items = [Item("i-1", True, 1, serial="vm1")]
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
