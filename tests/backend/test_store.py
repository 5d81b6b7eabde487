"""The store contract, run against both implementations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from interceptor.backend.store import base, open_store
from tests.backend.support import PgServer


@pytest.fixture
async def store(database: str) -> AsyncIterator[base.Store]:
    s = open_store(database)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_revisions_increase_and_changes_are_logged(store: base.Store) -> None:
    assert await store.revision() == 0
    r1 = await store.commit([base.Put("customer", "c1", {"n": 1}, expect=0)],
                            base.Change(kind="customer"))
    r2 = await store.commit([base.Put("server", "s1", {"n": 2}, owner="c1", parent="i1",
                                      expect=0, bindings=[("node-a", "tap0")])],
                            base.Change(["s1"], ["node-a"], kind="server"))
    assert 0 < r1 < r2 == await store.revision()
    rec = await store.get("server", "s1")
    assert rec is not None and rec.revision == r2 and rec.owner == "c1" and rec.parent == "i1"
    rows = await store.changes_since(r1)
    assert [(r.revision, r.instances, r.nodes) for r in rows] == [(r2, ["s1"], ["node-a"])]
    assert await store.bindings("node-a") == [("tap0", "s1")]
    assert await store.ids("server", owner="c1") == ["s1"]
    assert await store.ids("server", parent="i1") == ["s1"]


async def test_compare_and_set(store: base.Store) -> None:
    rev = await store.commit([base.Put("customer", "c1", {"v": 1}, expect=0)], base.Change())
    with pytest.raises(base.Conflict):
        await store.commit([base.Put("customer", "c1", {"v": 2}, expect=0)], base.Change())
    with pytest.raises(base.Conflict):
        await store.commit([base.Put("customer", "c1", {"v": 2}, expect=rev + 5)],
                           base.Change())
    with pytest.raises(base.Missing):
        await store.commit([base.Put("customer", "nope", {"v": 2}, expect=3)], base.Change())
    with pytest.raises(base.Missing):
        await store.commit([base.Delete("customer", "nope")], base.Change())
    # A failed commit changes nothing, not even the revision.
    assert await store.revision() == rev
    rec = await store.get("customer", "c1")
    assert rec is not None and rec.data == {"v": 1}
    rev2 = await store.commit([base.Put("customer", "c1", {"v": 3}, expect=rev)],
                              base.Change())
    assert rev2 > rev
    await store.commit([base.Delete("customer", "c1", expect=rev2)], base.Change())
    assert await store.get("customer", "c1") is None


async def test_bindings_are_unique_and_atomic(store: base.Store) -> None:
    await store.commit([base.Put("server", "s1", {}, bindings=[("n", "tap0")])], base.Change())
    before = await store.revision()
    with pytest.raises(base.BindingInUse):
        await store.commit([base.Put("server", "s2", {}, bindings=[("n", "tap1"),
                                                                    ("n", "tap0")])],
                           base.Change())
    assert await store.revision() == before
    assert await store.get("server", "s2") is None
    assert await store.bindings("n") == [("tap0", "s1")]
    await store.commit([base.Delete("server", "s1")], base.Change())
    assert await store.bindings("n") == []


async def test_scan_pages_and_visibility(store: base.Store) -> None:
    ops: list[base.Put | base.Delete] = [
        base.Put("image", f"i{i}", {}, owner="a" if i % 2 else "b", shared=i == 2)
        for i in range(6)]
    await store.commit(ops, base.Change())
    page1 = await store.scan("image", limit=4)
    page2 = await store.scan("image", limit=4, after=page1[-1].id)
    assert [r.id for r in page1 + page2] == [f"i{i}" for i in range(6)]
    visible = await store.scan("image", visible_to="a")
    assert [r.id for r in visible] == ["i1", "i2", "i3", "i5"]
    many = await store.get_many("image", ["i1", "i4", "zz"])
    assert sorted(many) == ["i1", "i4"]


async def test_tokens_by_digest(store: base.Store) -> None:
    await store.put_token("d1", base.Token("customer", "c1"))
    await store.put_token("d2", base.Token("node", "n1"))
    assert await store.find_token("d1") == base.Token("customer", "c1")
    await store.delete_tokens("c1")
    assert await store.find_token("d1") is None
    assert await store.find_token("d2") == base.Token("node", "n1")


async def test_migrations_are_idempotent(database: str) -> None:
    first = open_store(database)
    await first.open()
    await first.commit([base.Put("customer", "c1", {"x": 1})], base.Change())
    await first.close()
    second = open_store(database)
    await second.open()
    try:
        rec = await second.get("customer", "c1")
        assert rec is not None and rec.data == {"x": 1}
    finally:
        await second.close()


@pytest.mark.postgres
async def test_listen_reconnects_after_connection_loss(pg_server: PgServer) -> None:
    dsn = await pg_server.create_database()
    here, other = open_store(dsn), open_store(dsn)
    await here.open()
    await other.open()
    woken: asyncio.Queue[int] = asyncio.Queue()
    try:
        await here.subscribe(woken.put_nowait)
        admin = await asyncpg.connect(pg_server.dsn())
        try:
            db = dsn.split("/")[3].split("?")[0]
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname=$1 AND query LIKE 'LISTEN%'", db)
        finally:
            await admin.close()
        assert killed == 1
        # After reconnecting, the store wakes its watchers once (to re-read)…
        await asyncio.wait_for(woken.get(), 10)
        # …and hears other processes' commits again.
        start = time.monotonic()
        rev = await other.commit([base.Put("customer", "c1", {})], base.Change())
        assert await asyncio.wait_for(woken.get(), 5) == rev
        assert time.monotonic() - start < 1.0
    finally:
        await other.close()
        await here.close()


async def test_pruned_log_makes_watchers_resync(store: base.Store) -> None:
    from interceptor.backend.changes import ChangeNotifier, watch
    await store.commit([base.Put("server", "s1", {}, bindings=[("node-a", "tap0")])],
                       base.Change(["s1"], ["node-a"]))
    for i in range(5):
        await store.commit([base.Put("customer", f"c{i}", {})], base.Change())
    latest = await store.revision()
    await store.prune_changes(latest - 1)
    assert await store.first_revision() == latest - 1
    assert await store.revision() == latest
    result = await watch(store, ChangeNotifier(), "node-a", 1, 0)
    assert result == {"revision": latest, "instances": ["s1"], "bindings_changed": True}
    # Pruning never drops the latest row: the revision survives a full prune.
    await store.prune_changes(latest + 10)
    assert await store.revision() == latest
