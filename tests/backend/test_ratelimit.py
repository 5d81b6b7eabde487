"""Guest writes are rate-limited per instance (429 + Retry-After), other VMs unaffected."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession, test_utils

from interceptor.backend.app import create_app
from interceptor.common.ratelimit import RateLimiter
from tests.backend.support import Api, make_config


def test_token_bucket_with_clock() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # another instance has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert RateLimiter(rate=0, burst=1).take("x") == 0.0  # 0 = unlimited


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_guest_write_flood_gets_429(database: str) -> None:
    server = test_utils.TestServer(create_app(make_config(
        database, guest_write_rate=0.01, guest_write_burst=3)))
    await server.start_server()
    try:
        async with ClientSession() as session:
            api = Api(session, str(server.make_url("")).rstrip("/"))
            await api.customer("c1")
            for sid, tap in (("s1", "tap1"), ("s2", "tap2")):
                await api.server(sid, "c1", ifname=tap, guest_writes=True)
            statuses = [(await api.node("PUT", "node-a", f"/instances/s1/guest-data/k{i}",
                                        "s1", data="v")).status for i in range(5)]
            assert statuses == [204, 204, 204, 429, 429]
            r = await api.node("PUT", "node-a", "/instances/s1/guest-data/k9", "s1", data="v")
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert "too many" in r.body["error"]
            r = await api.node("PUT", "node-a", "/instances/s2/guest-data/k", "s2", data="v")
            assert r.status == 204
    finally:
        await server.close()
