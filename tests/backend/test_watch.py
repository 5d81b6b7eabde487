"""The change feed: long-polls wake within 1 s, scoped to the node's instances."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from interceptor.backend.context import BACKEND
from tests.backend.support import Api

WAKE_BOUND = 1.0


async def _waiting(api: Api, count: int) -> None:
    """Until ``count`` watchers are parked in the backend (bounded)."""
    notifier = api.app[BACKEND].notifier
    for _ in range(500):
        if notifier.watchers >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("watcher never started waiting")


async def _watch(api: Api, node: str, since: int, timeout: float = 10) -> dict[str, Any]:
    r = await api.node("GET", node, f"/watch?since={since}&timeout={timeout}")
    assert r.status == 200, r.body
    return dict(r.body)


async def test_watch_wakes_within_a_second(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    rev = (await api.node("GET", "node-a", "/bindings")).body["revision"]
    task = asyncio.create_task(_watch(api, "node-a", rev))
    await _waiting(api, 1)
    assert not task.done()
    start = time.monotonic()
    await api.call("PATCH", "/v1/servers/s1/metadata/public", tok, json_body={"k": "v"})
    result = await asyncio.wait_for(task, 5)
    elapsed = time.monotonic() - start
    assert elapsed < WAKE_BOUND, elapsed
    assert result["instances"] == ["s1"] and result["bindings_changed"] is False
    assert result["revision"] > rev


async def test_watch_scope_and_bindings(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1", node="node-a")
    await api.server("s2", "c1", node="node-b")
    rev = (await api.node("GET", "node-a", "/bindings")).body["revision"]

    # A change to node-b's instance does not concern node-a.
    await api.call("PATCH", "/v1/servers/s2/metadata/public", tok, json_body={"k": "v"})
    quiet = await _watch(api, "node-a", rev, timeout=0)
    assert quiet["instances"] == [] and quiet["bindings_changed"] is False
    assert quiet["revision"] > rev
    # …but it does concern node-b, at once.
    assert (await _watch(api, "node-b", rev, timeout=0))["instances"] == ["s2"]

    # A customer-level change reaches every bound instance of that customer.
    await api.call("PATCH", "/v1/customers/c1/metadata/public", tok, json_body={"c": "1"})
    r = await _watch(api, "node-a", quiet["revision"], timeout=0)
    assert r["instances"] == ["s1"]

    # Toggle and rebinding are binding changes for both nodes involved.
    await api.call("PATCH", "/v1/servers/s1", tok, json_body={"metadata_enabled": False})
    r2 = await _watch(api, "node-a", r["revision"], timeout=0)
    assert r2["bindings_changed"] is True
    b = await api.node("GET", "node-a", "/bindings")
    assert b.body["bindings"][0]["metadata_enabled"] is False
    r3 = await api.call("PUT", "/v1/servers/s1/bindings",
                        json_body={"bindings": [{"node": "node-b", "ifname": "tap9"}]})
    assert r3.status == 200, r3.body
    for node in ("node-a", "node-b"):
        assert (await _watch(api, node, r2["revision"], timeout=0))["bindings_changed"]
    assert (await api.node("GET", "node-a", "/bindings")).body["bindings"] == []


async def test_watch_times_out_and_rejects_bad_args(api: Api) -> None:
    await api.customer("c1")
    rev = (await api.node("GET", "node-a", "/bindings")).body["revision"]
    start = time.monotonic()
    r = await _watch(api, "node-a", rev, timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert r == {"revision": rev, "instances": [], "bindings_changed": False}
    for query in ("since=-1", "since=x", "timeout=61", "timeout=abc"):
        bad = await api.node("GET", "node-a", f"/watch?{query}")
        assert bad.status == 400, query
    # A revision from the future (restored database) asks the node to resync.
    r = await _watch(api, "node-a", rev + 1000, timeout=0)
    assert r["bindings_changed"] is True and r["revision"] == rev


async def test_many_watchers_all_woken(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    rev = (await api.node("GET", "node-a", "/bindings")).body["revision"]
    tasks = [asyncio.create_task(_watch(api, "node-a", rev)) for _ in range(20)]
    await _waiting(api, 20)
    start = time.monotonic()
    await api.call("POST", "/v1/servers/s1/start", tok)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert time.monotonic() - start < WAKE_BOUND
    assert all(r["instances"] == ["s1"] for r in results)
