"""FeedWatcher with a scripted feed and a recording cache."""

from __future__ import annotations

import asyncio
import random

import pytest

from interceptor.node.backend_client import BackendUnavailable, WatchResult
from interceptor.node.watcher import FeedWatcher


class Feed:
    def __init__(self, script: list[WatchResult | Exception]) -> None:
        self.script = script
        self.asked: list[int] = []
        self.done = asyncio.Event()

    async def watch(self, since: int, timeout: float) -> WatchResult:
        self.asked.append(since)
        if not self.script:
            self.done.set()
            await asyncio.Event().wait()  # block like an idle long-poll
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class RecordingCache:
    def __init__(self) -> None:
        self.events: list[str] = []

    def invalidate(self, instance_id: str) -> None:
        self.events.append(instance_id)

    def invalidate_all(self) -> None:
        self.events.append("*")


async def run_until_drained(watcher: FeedWatcher, feed: Feed) -> None:
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(feed.done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_invalidates_and_follows_revisions() -> None:
    feed = Feed([WatchResult(11, ("i-1", "i-2"), False), WatchResult(12, (), True),
                 WatchResult(12, (), False)])
    cache = RecordingCache()
    bindings_calls: list[int] = []

    async def on_bindings() -> None:
        bindings_calls.append(1)

    watcher = FeedWatcher(feed, cache, on_bindings, since=10, poll_timeout=30)
    await run_until_drained(watcher, feed)
    assert feed.asked == [10, 11, 12, 12]
    assert cache.events == ["i-1", "i-2"]
    assert bindings_calls == [1]
    assert watcher.healthy


async def test_backoff_then_resync_after_outage() -> None:
    feed = Feed([BackendUnavailable("down"), BackendUnavailable("down"),
                 WatchResult(20, ("i-9",), False), WatchResult(21, ("i-3",), False)])
    cache = RecordingCache()
    sleeps: list[float] = []
    bindings_calls: list[int] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def on_bindings() -> None:
        bindings_calls.append(1)

    watcher = FeedWatcher(feed, cache, on_bindings, since=10, backoff_initial=1.0,
                          backoff_max=8.0, sleep=fake_sleep, rng=random.Random(1))
    await run_until_drained(watcher, feed)
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0
    # First answer after the outage: resync everything (not just the named ones).
    assert cache.events == ["*", "i-3"]
    assert bindings_calls == [1]
    assert feed.asked == [10, 10, 10, 20, 21]


async def test_revision_going_backwards_resyncs() -> None:
    feed = Feed([WatchResult(3, (), False)])
    cache = RecordingCache()

    async def on_bindings() -> None:
        pass

    watcher = FeedWatcher(feed, cache, on_bindings, since=50)
    await run_until_drained(watcher, feed)
    assert cache.events == ["*"] and watcher.since == 3


async def test_callback_bug_does_not_stop_the_feed() -> None:
    feed = Feed([WatchResult(2, (), True), WatchResult(3, ("i-1",), False)])
    cache = RecordingCache()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def on_bindings() -> None:
        raise RuntimeError("bug")

    watcher = FeedWatcher(feed, cache, on_bindings, since=1, sleep=fake_sleep)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(feed.done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The failed round counts as an outage, so the next answer resyncs (which
    # calls the failing callback again; the loop goes on regardless).
    assert len(sleeps) >= 1 and "*" in cache.events


def test_backoff_is_capped() -> None:
    async def nop() -> None:
        pass

    watcher = FeedWatcher(Feed([]), RecordingCache(), nop, backoff_initial=0.5,
                          backoff_max=30.0, rng=random.Random(3))
    assert all(0 <= watcher.backoff(n) <= 30.0 for n in range(1, 200))
    assert max(watcher.backoff(50) for _ in range(200)) > 15.0
