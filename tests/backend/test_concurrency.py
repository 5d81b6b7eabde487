"""No lost updates: ETag/If-Match gives 412 to stale writers; merges never drop keys."""

from __future__ import annotations

import asyncio

from tests.backend.support import Api


async def test_concurrent_stale_if_match(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    first = await api.call("GET", "/v1/servers/s1/metadata/public", tok)
    etag = first.etag
    assert etag

    async def writer(i: int) -> int:
        r = await api.call("PATCH", "/v1/servers/s1/metadata/public", tok,
                           json_body={f"w{i}": str(i)}, headers={"If-Match": etag})
        return r.status

    statuses = await asyncio.gather(*(writer(i) for i in range(8)))
    assert sorted(statuses) == [200] + [412] * 7
    winner = statuses.index(200)
    final = await api.call("GET", "/v1/servers/s1/metadata/public", tok)
    assert final.body == {f"w{winner}": str(winner)}
    assert final.etag != etag
    # A write with the fresh ETag succeeds; the old one stays stale.
    r = await api.call("PATCH", "/v1/servers/s1/metadata/public", tok,
                       json_body={"late": "1"}, headers={"If-Match": final.etag})
    assert r.status == 200
    r = await api.call("PATCH", "/v1/servers/s1/metadata/public", tok,
                       json_body={"late": "2"}, headers={"If-Match": final.etag})
    assert r.status == 412 and "revision" in r.body["error"]


async def test_concurrent_merges_lose_nothing(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")

    async def writer(i: int) -> int:
        r = await api.call("PATCH", "/v1/servers/s1/metadata/restricted", tok,
                           json_body={f"k{i}": i})
        return r.status

    assert await asyncio.gather(*(writer(i) for i in range(12))) == [200] * 12
    final = await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)
    assert final.body == {f"k{i}": i for i in range(12)}


async def test_server_if_match(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    stale = (await api.call("GET", "/v1/servers/s1", tok)).etag
    r = await api.call("PATCH", "/v1/servers/s1", tok, json_body={"hostname": "a"},
                       headers={"If-Match": stale})
    assert r.status == 200 and r.etag != stale
    for method, body in (("PATCH", {"hostname": "b"}),
                         ("PUT", {"customer_id": "c1", "hostname": "b"})):
        r = await api.call(method, "/v1/servers/s1", tok, json_body=body,
                           headers={"If-Match": stale})
        assert r.status == 412, method
    r = await api.call("DELETE", "/v1/servers/s1", tok, headers={"If-Match": stale})
    assert r.status == 412
    assert (await api.call("GET", "/v1/servers/s1", tok)).body["hostname"] == "a"
    r = await api.call("PUT", "/v1/servers/s1", tok, json_body={"hostname": "x"},
                       headers={"If-None-Match": "*"})
    assert r.status == 412
