"""Ownership over time: moved servers, images made private later, partial patches."""

from __future__ import annotations

from tests.backend.support import Api


async def test_moved_server_runtime_follows_new_owner(api: Api) -> None:
    a = await api.customer("ca")
    b = await api.customer("cb")
    await api.server("s1", "ca")
    await api.call("POST", "/v1/servers/s1/start", a)
    r = await api.call("PATCH", "/v1/servers/s1", json_body={"customer_id": "cb"})
    assert r.status == 200 and r.body["customer_id"] == "cb"
    assert (await api.call("GET", "/v1/servers/s1/runtime/metadata/private", a)).status == 403
    r = await api.call("PATCH", "/v1/servers/s1/runtime/metadata/private", b,
                       json_body={"k": "v"})
    assert r.status == 200
    assert (await api.call("GET", "/v1/servers/s1", a)).status == 403
    doc = await api.document("s1")
    assert doc["customer_id"] == "cb"


async def test_image_made_private_keeps_existing_servers_working(api: Api) -> None:
    vendor = await api.customer("vendor")
    user = await api.customer("user")
    await api.call("POST", "/v1/images", vendor,
                   json_body={"id": "img", "visibility": "public"})
    await api.server("s1", "user", image_id="img")
    r = await api.call("PATCH", "/v1/images/img", vendor, json_body={"visibility": "private"})
    assert r.status == 200 and r.body["visibility"] == "private"
    r = await api.call("PATCH", "/v1/servers/s1", user, json_body={"hostname": "renamed"})
    assert r.status == 200, r.body
    # …but a new server cannot pick it any more.
    r = await api.call("POST", "/v1/servers", user,
                       json_body={"hostname": "s2", "image_id": "img"})
    assert r.status == 400
    assert (await api.document("s1"))["image_id"] == "img"


async def test_customer_patch_keeps_unnamed_fields(api: Api) -> None:
    tok = await api.customer("c1")
    r = await api.call("PATCH", "/v1/customers/c1", tok, json_body={})
    assert r.status == 200 and r.body["name"] == "c1"
    r = await api.call("PATCH", "/v1/customers/c1", tok, json_body={"name": "New"})
    assert r.body["name"] == "New"
    other = await api.customer("c2")
    assert (await api.call("PATCH", "/v1/customers/c1", other,
                           json_body={"name": "x"})).status == 403
