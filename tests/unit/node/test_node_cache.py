"""DocumentCache without a network: fake source, fake clock."""

from __future__ import annotations

import asyncio

import pytest

from interceptor.node.backend_client import BackendUnavailable, NotBound, NotFound
from interceptor.node.cache import DocumentCache, LargeMemo
from interceptor.node.metrics import NodeMetrics
from tests.unit.node.node_fakes import IID, FakeClock, FakeSource, load_doc


def make(source: FakeSource, clock: FakeClock, **kw: float) -> DocumentCache:
    return DocumentCache(source, clock=clock, error_backoff=kw.pop("error_backoff", 1.0),
                         **kw)  # type: ignore[arg-type]


async def settle(cache: DocumentCache) -> None:
    """Let background fetches finish (they only await the fake source)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_single_flight(source: FakeSource, clock: FakeClock) -> None:
    metrics = NodeMetrics()
    cache = DocumentCache(source, clock=clock, metrics=metrics)
    source.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get(IID)) for _ in range(50)]
    await asyncio.sleep(0)
    source.gate.set()
    docs = await asyncio.gather(*waiters)
    assert len(source.calls) == 1
    assert all(d is docs[0] for d in docs)
    assert metrics.cache_joins._value.get() == 49
    assert cache.peek(IID) is docs[0]


async def test_peek_is_none_until_fetched_and_after_ttl(source: FakeSource,
                                                        clock: FakeClock) -> None:
    cache = make(source, clock, ttl=60)
    assert cache.peek(IID) is None
    doc = await cache.get(IID)
    clock.advance(30)
    assert cache.peek(IID) is doc
    clock.advance(30)
    assert cache.peek(IID) is None


async def test_ttl_revalidates_with_etag_and_304_keeps_doc(source: FakeSource,
                                                           clock: FakeClock) -> None:
    cache = make(source, clock, ttl=60)
    doc = await cache.get(IID)
    doc.memo_put("/x", "memo", 10)
    clock.advance(61)
    again = await cache.get(IID)
    assert again is doc and again.memo_get("/x") == "memo"
    assert source.calls == [(IID, None), (IID, '"42"')]
    # Fresh again for a whole TTL after the 304.
    clock.advance(59)
    assert cache.peek(IID) is doc


async def test_new_revision_replaces_doc(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock, ttl=60)
    doc = await cache.get(IID)
    source.bump(IID, hostname="renamed")
    clock.advance(61)
    new = await cache.get(IID)
    assert new is not doc and new.document["hostname"] == "renamed"
    assert new.etag == '"43"' and new.memo_get("/x") is None


async def test_refresh_ahead_in_background(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock, ttl=60, refresh_ahead=0.5)
    doc = await cache.get(IID)
    source.bump(IID, hostname="later")
    clock.advance(55)
    assert cache.peek(IID) is doc  # still served at once...
    await settle(cache)
    assert len(source.calls) == 2  # ...while one background revalidation ran
    fresh = cache.peek(IID)
    assert fresh is not None and fresh.document["hostname"] == "later"


async def test_stale_if_error_bound_then_503(source: FakeSource, clock: FakeClock) -> None:
    metrics = NodeMetrics()
    cache = DocumentCache(source, clock=clock, ttl=60, stale_if_error=300,
                          error_backoff=1.0, metrics=metrics)
    doc = await cache.get(IID)
    source.error = BackendUnavailable("down")
    clock.advance(61)
    assert await cache.get(IID) is doc  # stale, served
    clock.advance(60 + 300 - 61 - 1)  # just inside ttl + stale_if_error
    assert await cache.get(IID) is doc
    clock.advance(2)
    with pytest.raises(BackendUnavailable):
        await cache.get(IID)
    assert metrics.cache_stale._value.get() == 2
    # Backend back: served fresh again.
    source.error = None
    clock.advance(1)
    assert (await cache.get(IID)).document["instance_id"] == IID


async def test_error_backoff_limits_backend_calls(source: FakeSource,
                                                  clock: FakeClock) -> None:
    cache = make(source, clock, error_backoff=2.0)
    source.error = BackendUnavailable("down")
    for _ in range(10):
        with pytest.raises(BackendUnavailable):
            await cache.get(IID)
    assert len(source.calls) == 1
    clock.advance(2.0)
    with pytest.raises(BackendUnavailable):
        await cache.get(IID)
    assert len(source.calls) == 2


@pytest.mark.parametrize("error", [NotBound("x"), NotFound("x")])
async def test_not_bound_drops_doc_instead_of_stale(source: FakeSource, clock: FakeClock,
                                                    error: Exception) -> None:
    cache = make(source, clock, ttl=60, stale_if_error=300)
    await cache.get(IID)
    source.error = error  # type: ignore[assignment]
    clock.advance(61)
    with pytest.raises(type(error)):
        await cache.get(IID)
    assert IID not in cache
    clock.advance(0.5)  # within the error backoff: no usable document at all
    with pytest.raises(BackendUnavailable):
        await cache.get(IID)


async def test_invalidate_refetches_and_notifies(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock, ttl=60)
    doc = await cache.get(IID)
    waiter = asyncio.create_task(cache.wait_change(IID, doc, 10))
    await asyncio.sleep(0)
    assert cache.waiters(IID) == 1
    source.bump(IID, hostname="changed")
    cache.invalidate(IID)
    assert cache.peek(IID) is None  # readers now wait for the refetch
    assert await waiter is True
    new = cache.peek(IID)
    assert new is not None and new.document["hostname"] == "changed"
    assert cache.waiters(IID) == 0


async def test_invalidate_without_change_does_not_wake(source: FakeSource,
                                                       clock: FakeClock) -> None:
    cache = make(source, clock)
    doc = await cache.get(IID)
    waiter = asyncio.create_task(cache.wait_change(IID, doc, 0.2))
    await asyncio.sleep(0)
    cache.invalidate(IID)  # backend answers 304: same document
    await settle(cache)
    assert cache.peek(IID) is doc
    assert await waiter is False  # timed out (real 0.2 s): no spurious wake-up


async def test_invalidate_during_fetch_fetches_again(source: FakeSource,
                                                     clock: FakeClock) -> None:
    cache = make(source, clock)
    source.gate = asyncio.Event()
    first = asyncio.create_task(cache.get(IID))
    await settle(cache)
    assert len(source.calls) == 1
    source.bump(IID, hostname="newer")  # changed after the fetch started ...
    cache.invalidate(IID)
    source.gate.set()
    await first
    await settle(cache)
    assert len(source.calls) == 2  # ... so the fetched copy is not trusted as fresh
    fresh = cache.peek(IID)
    assert fresh is not None and fresh.document["hostname"] == "newer"


async def test_invalidate_all_refetches_lazily(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock)
    other = load_doc(instance_id="i-other")
    source.put(other)
    await cache.get(IID)
    await cache.get("i-other")
    cache.invalidate_all()
    await settle(cache)
    assert len(source.calls) == 2  # nobody waits: nothing fetched yet
    assert cache.peek(IID) is None
    await cache.get(IID)
    assert len(source.calls) == 3


async def test_forget_wakes_waiters_and_drops(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock)
    doc = await cache.get(IID)
    waiter = asyncio.create_task(cache.wait_change(IID, doc, 10))
    await asyncio.sleep(0)
    cache.forget(IID)
    assert await waiter is True
    assert IID not in cache and cache.peek(IID) is None


async def test_wait_change_returns_at_once_when_already_changed(source: FakeSource,
                                                                clock: FakeClock) -> None:
    cache = make(source, clock)
    assert await cache.wait_change(IID, None, 10) is True  # unknown instance
    doc = await cache.get(IID)
    source.bump(IID)
    clock.advance(61)
    await cache.get(IID)
    assert await cache.wait_change(IID, doc, 10) is True


async def test_memo_budget_and_idle_eviction(source: FakeSource, clock: FakeClock) -> None:
    cache = DocumentCache(source, clock=clock, memo_bytes=100, memo_entries=3,
                          memo_entry_bytes=70, idle_evict=120)
    doc = await cache.get(IID)
    doc.memo_put("big", 0, 71)  # over the per-entry bound: kept in the node-wide memo
    doc.memo_put("a", 1, 60)
    doc.memo_put("b", 2, 60)  # over the byte budget: not kept
    doc.memo_put("c", 3, 10)
    doc.memo_put("d", 4, 10)
    doc.memo_put("e", 5, 1)  # over the entry budget
    assert [doc.memo_get(k) for k in ("big", *"abcde")] == [0, 1, None, 3, 4, None]
    assert cache.memo_bytes() == 80 and cache.large_memo.bytes == 71
    other = load_doc(instance_id="i-other")
    source.put(other)
    clock.advance(200)
    await cache.get("i-other")  # periodic sweep runs here
    clock.advance(31)
    await cache.get("i-other")
    assert IID not in cache and "i-other" in cache


async def test_close_cancels_background_and_wakes(source: FakeSource, clock: FakeClock) -> None:
    cache = make(source, clock)
    doc = await cache.get(IID)
    waiter = asyncio.create_task(cache.wait_change(IID, doc, 10))
    source.gate = asyncio.Event()
    cache.invalidate(IID)
    await asyncio.sleep(0)
    await cache.close()
    assert await waiter is True
    with pytest.raises(BackendUnavailable):
        await cache.get("i-unknown")


def test_large_memo_is_an_lru_bounded_in_bytes() -> None:
    """Responses over the per-document entry limit (issue 15: >16 KiB bodies
    were rendered again for every request) live in one byte-bounded LRU."""
    memo = LargeMemo(max_bytes=300, max_entry=150)
    memo.put("a", 1, 100)
    memo.put("b", 2, 100)
    memo.put("huge", 3, 151)  # over the entry bound: not kept
    assert memo.get("a") == 1  # "a" is now the most recently used
    memo.put("c", 4, 150)  # 350 > 300: the least recently used ("b") goes
    assert (memo.get("a"), memo.get("b"), memo.get("c"), memo.get("huge")) == (1, None, 4, None)
    assert memo.bytes == 250 and len(memo) == 2
