"""PostgreSQL restarted under load (issue 16): a real backend process keeps
taking writes while the database restarts. Nothing a 2xx acknowledged is
lost, writes during the outage fail cleanly (5xx with a JSON reason, never a
hang), and the backend and a node's change-feed long-poll resume by
themselves once the database is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.backend.support import Api, PgServer, start_backend, stop_backend

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 8


async def test_postgres_restart_under_load_loses_nothing_acknowledged(
        pg_server: PgServer, tmp_path: Path) -> None:
    dsn = await pg_server.create_database()
    backend = await start_backend(dsn, tmp_path / "backend.log")
    try:
        async with ClientSession() as session:
            api = Api(session, backend.base)
            tok = await api.customer("c1")
            await api.server("s1", "c1")
            rev = (await api.node("GET", "node-a", "/bindings")).body["revision"]
            acked: dict[str, int] = {}
            failed: list[int] = []
            stop = asyncio.Event()

            async def writer(w: int) -> None:
                n = 0
                while not stop.is_set():
                    key = f"w{w}n{n}"
                    try:
                        r = await asyncio.wait_for(api.call(
                            "PATCH", "/v1/servers/s1/metadata/restricted", tok,
                            json_body={key: n}), 15)
                    except TimeoutError:
                        failed.append(0)  # a hang: asserted below never to happen
                        continue
                    if 200 <= r.status < 300:
                        acked[key] = n
                    else:
                        assert r.status >= 500 and isinstance(r.body, dict), (r.status, r.body)
                        failed.append(r.status)
                        await asyncio.sleep(0.05)
                    n += 1

            async def watcher() -> int:
                since, answers = rev, 0
                while not stop.is_set():
                    r = await api.node("GET", "node-a", f"/watch?since={since}&timeout=2")
                    if r.status == 200:
                        since, answers = r.body["revision"], answers + 1
                    else:
                        await asyncio.sleep(0.1)
                return answers

            tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
            feed = asyncio.create_task(watcher())
            await asyncio.sleep(1.5)
            before = len(acked)
            restarted_at = time.monotonic()
            await asyncio.to_thread(pg_server.restart)
            back_at = time.monotonic()
            # The backend must resume by itself: acknowledged writes again.
            while len(acked) < before + 50 and time.monotonic() - back_at < 20:
                await asyncio.sleep(0.05)
            resumed_after = time.monotonic() - back_at
            await asyncio.sleep(1.0)
            feed_before = await _feed_answers(feed, stop, tasks)
            assert len(acked) >= before + 50, f"writes did not resume: {len(acked)} vs {before}"
            assert 0 not in failed, "a write hung for 15 s during the restart"
            final = await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)
            assert final.status == 200
            lost = {k: v for k, v in acked.items() if final.body.get(k) != v}
            assert lost == {}, f"{len(lost)} acknowledged writes lost: {sorted(lost)[:10]}"
            # The node API's change feed answers again too.
            r = await api.node("GET", "node-a", f"/watch?since={rev}&timeout=1")
            assert r.status == 200 and r.body["revision"] > rev
            assert feed_before > 0
            print(f"PostgreSQL restart ({back_at - restarted_at:.2f}s) under {WRITERS} writers: "
                  f"{len(acked)} writes acknowledged, 0 lost, {len(failed)} refused with 5xx, "
                  f"writes resumed {resumed_after:.2f}s after the database was back")
    finally:
        stop_backend(backend)


async def _feed_answers(feed: asyncio.Task[int], stop: asyncio.Event,
                        tasks: list[asyncio.Task[None]]) -> int:
    stop.set()
    await asyncio.gather(*tasks)
    return await feed
