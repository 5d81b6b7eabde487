"""Bad input: reasons for 400, 413 at the documented limits, 401/403/404/405 as JSON."""

from __future__ import annotations

import base64

import pytest

from interceptor.backend import limits
from tests.backend.support import Api


async def test_bad_json_is_400_with_reason(api: Api) -> None:
    await api.customer("c1")
    r = await api.call("PUT", "/v1/servers/s1", data=b"{not json",
                       headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.body["error"].startswith("invalid JSON")
    r = await api.call("PUT", "/v1/servers/s1", json_body=[1, 2])
    assert r.status == 400 and "JSON object" in r.body["error"]
    r = await api.call("PUT", "/v1/servers/s1", json_body={"customer_id": "c1",
                                                          "hostname": "bad host!"})
    assert r.status == 400 and "hostname" in r.body["error"]
    r = await api.call("PUT", "/v1/servers/s1", json_body={"customer_id": "c1",
                                                          "hostname": "h", "color": "red"})
    assert r.status == 400 and "color" in r.body["error"]
    r = await api.call("PUT", "/v1/servers/s1", json_body={
        "customer_id": "c1", "hostname": "h",
        "network": {"interfaces": [{"name": "eth0", "mac": "zz"}]}})
    assert r.status == 400 and "mac" in r.body["error"]
    r = await api.call("PUT", "/v1/servers/s1", json_body={
        "customer_id": "c1", "hostname": "h",
        "user_data": [{"name": "u", "data": "%%%"}]})
    assert r.status == 400 and "base64" in r.body["error"]
    r = await api.call("PUT", "/v1/servers/s1", json_body={"customer_id": "nobody",
                                                          "hostname": "h"})
    assert r.status == 400 and "nobody" in r.body["error"]
    r = await api.call("PATCH", "/v1/servers/x/metadata/secret", json_body={})
    assert r.status == 400 and "class" in r.body["error"]


async def test_size_limits(api: Api) -> None:
    await api.customer("c1")
    big_ud = base64.b64encode(b"x" * (64 * 1024)).decode()
    r = await api.call("PUT", "/v1/servers/s1", json_body={
        "customer_id": "c1", "hostname": "h", "user_data": [{"name": "u", "data": big_ud}]})
    assert r.status == 201, r.body  # 64 KiB of user-data is fine
    too_big = base64.b64encode(b"x" * (limits.MAX_USER_DATA_BYTES + 1)).decode()
    r = await api.call("PATCH", "/v1/servers/s1", json_body={
        "user_data": [{"name": "u", "data": too_big}]})
    assert r.status == 413 and "user_data" in r.body["error"]
    r = await api.call("PATCH", "/v1/servers/s1/metadata/public",
                       json_body={"k": "v" * limits.MAX_VALUE_BYTES})
    assert r.status == 413 and "value" in r.body["error"]
    value = "v" * (limits.MAX_VALUE_BYTES - 100)
    status = 200
    for i in range(limits.MAX_OBJECT_METADATA_BYTES // len(value) + 1):
        status = (await api.call("PATCH", "/v1/servers/s1/metadata/public",
                                 json_body={f"k{i}": value})).status
        if status != 200:
            break
    assert status == 413
    r = await api.call("PUT", "/v1/servers/s2",
                       data=b"x" * (limits.MAX_REQUEST_BYTES + 1),
                       headers={"Content-Type": "application/json"})
    assert r.status == 413 and "error" in r.body


async def test_auth_and_routing_errors(api: Api) -> None:
    await api.customer("c1")
    r = await api.call("GET", "/v1/servers/none")
    assert r.status == 404 and "none" in r.body["error"]
    r = await api.call("GET", "/v1/servers", "wrong-token")
    assert r.status == 401 and r.body["error"]
    r = await api.call("GET", "/v1/servers", None)
    assert r.status == 401
    r = await api.call("GET", "/v1/nothing-here")
    assert r.status == 404 and r.body == {"error": "no such route"}
    r = await api.call("POST", "/v1/servers/s1")
    assert r.status == 405 and "POST" in r.body["error"]
    tok = await api.customer("c2")
    r = await api.call("POST", "/v1/customers", tok, json_body={"id": "c3"})
    assert r.status == 403


async def test_customer_cannot_create_for_others(api: Api) -> None:
    tok = await api.customer("c1")
    await api.customer("c2")
    r = await api.call("PUT", "/v1/servers/s1", tok, json_body={"customer_id": "c2",
                                                               "hostname": "h"})
    assert r.status == 403
    await api.server("s1", "c1")
    r = await api.call("PATCH", "/v1/servers/s1", tok, json_body={"customer_id": "c2"})
    assert r.status == 403


async def test_binding_in_use_is_409(api: Api) -> None:
    await api.customer("c1")
    await api.server("s1", "c1", ifname="tapx")
    await api.server("s2", "c1", node=None)
    r = await api.call("PUT", "/v1/servers/s2/bindings/node-a/tapx")
    assert r.status == 409 and "tapx" in r.body["error"]
    assert (await api.call("GET", "/v1/servers/s2/bindings")).body["bindings"] == []


@pytest.mark.parametrize("collection", ["customers", "servers", "images"])
async def test_pagination(api: Api, collection: str) -> None:
    await api.customer("c0")
    for i in range(1, 5):
        if collection == "customers":
            await api.customer(f"c{i}")
        elif collection == "servers":
            await api.server(f"s{i}", "c0", node=None)
        else:
            await api.call("POST", "/v1/images", json_body={"id": f"i{i}"})
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        q = f"/v1/{collection}?limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = await api.call("GET", q)
        assert r.status == 200
        seen += [item["id"] for item in r.body["items"]]
        cursor = r.body["next_cursor"]
        if cursor is None:
            break
    expected = {"customers": ["c0", "c1", "c2", "c3", "c4"],
                "servers": ["s1", "s2", "s3", "s4"], "images": ["i1", "i2", "i3", "i4"]}
    assert seen == expected[collection]
    assert (await api.call("GET", f"/v1/{collection}?limit=0")).status == 400


async def test_delete_rules(api: Api) -> None:
    tok = await api.customer("c1")
    await api.call("POST", "/v1/images", tok, json_body={"id": "i1"})
    await api.server("s1", "c1", image_id="i1")
    assert (await api.call("DELETE", "/v1/images/i1", tok)).status == 409
    assert (await api.call("DELETE", "/v1/customers/c1")).status == 409
    assert (await api.call("DELETE", "/v1/servers/s1", tok)).status == 204
    assert (await api.node("GET", "node-a", "/instances/s1/document", "s1")).status == 404
    assert (await api.call("DELETE", "/v1/images/i1", tok)).status == 204
    assert (await api.call("DELETE", "/v1/customers/c1")).status == 204
    # Its tokens went with it.
    assert (await api.call("GET", "/v1/servers", tok)).status == 401


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_per_document_limit(database: str) -> None:
    from aiohttp import ClientSession, test_utils

    from interceptor.backend.app import create_app
    from tests.backend.support import make_config
    server = test_utils.TestServer(create_app(make_config(database,
                                                          max_document_bytes=100_000)))
    await server.start_server()
    try:
        async with ClientSession() as session:
            api = Api(session, str(server.make_url("")).rstrip("/"))
            await api.customer("c1")
            ud = base64.b64encode(b"x" * (64 * 1024)).decode()
            await api.server("s1", "c1", user_data=[{"name": "u", "data": ud}])
            r = await api.call("PATCH", "/v1/servers/s1/metadata/public",
                               json_body={"k": "v" * 20_000})
            assert r.status == 413 and "document limit" in r.body["error"]
            r = await api.call("PATCH", "/v1/servers/s1", json_body={
                "files": [{"path": "/f", "data": ud}]})
            assert r.status == 413 and "document limit" in r.body["error"]
    finally:
        await server.close()
