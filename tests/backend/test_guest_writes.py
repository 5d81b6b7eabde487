"""Guest writes through the node API (signed), and the owner's side: consumed
keys, guest PUT of keys, self-disable, owner guest-data and long-polling."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from interceptor.formats.document import merged_meta, validate_document
from interceptor.formats.router import render_path
from interceptor.formats.xml_metadata import decode_xml
from tests.backend.support import ADMIN, Api


async def _scene(api: Api, **spec: Any) -> str:
    tok = await api.customer("c1")
    r = await api.call("POST", "/v1/images", json_body={"id": "img", "visibility": "public"})
    assert r.status == 201
    await api.server("s1", "c1", image_id="img", **spec)
    return tok


async def test_guest_put_needs_guest_writes_then_lands_in_server_meta(api: Api) -> None:
    tok = await _scene(api)
    path = "/instances/s1/meta/restricted/result"
    r = await api.node("PUT", "node-a", path, "s1", data="done")
    assert r.status == 403, r.body
    assert (await api.call("PATCH", "/v1/servers/s1", tok,
                           json_body={"guest_writes": True})).status == 200
    r = await api.node("PUT", "node-a", path, "s1", data="done")
    assert r.status == 204, r.body
    r = await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)
    assert r.body == {"result": "done"}
    for bad, status in (("/instances/s1/meta/private/k", 400),
                        ("/instances/s1/meta/system/k", 400)):
        assert (await api.node("PUT", "node-a", bad, "s1", data="x")).status == status
    # Another node, or an instance not bound to it, cannot write.
    assert (await api.node("PUT", "node-b", path, "s1", data="x")).status == 403
    r = await api.node("PUT", "node-a", path, "s1", data=b"\xff\xfe")
    assert r.status == 400


async def test_delete_shadows_the_key_on_every_object(api: Api) -> None:
    tok = await _scene(api, guest_writes=True)  # a delete changes the owner's data: opt-in
    for obj in ("/v1/customers/c1", "/v1/images/img", "/v1/servers/s1"):
        r = await api.call("PATCH", obj + "/metadata/public", ADMIN,
                           json_body={"bootstrap": f"token-from-{obj.split('/')[2]}"})
        assert r.status == 200, r.body
    assert (await api.call("POST", "/v1/servers/s1/start", tok, json_body={
        "metadata": {"public": {"bootstrap": "runtime-token"}}})).status == 200
    assert (await api.call("PATCH", "/v1/customers/c1/metadata/public", ADMIN,
                           json_body={"only_customer": "x"})).status == 200
    doc = validate_document(await api.document("s1"))
    assert merged_meta(doc)["bootstrap"] == "runtime-token"

    r = await api.node("DELETE", "node-a", "/instances/s1/meta/public/bootstrap", "s1")
    assert r.status == 204, r.body
    doc = validate_document(await api.document("s1"))
    text = json.dumps(doc)
    assert "token-from" not in text and "runtime-token" not in text
    assert "bootstrap" not in merged_meta(doc)
    os_meta = json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)["meta"]
    assert "bootstrap" not in os_meta and os_meta["only_customer"] == "x"
    xml = decode_xml(render_path(doc, "/metadata").body)
    assert all("bootstrap" not in xml[o]["public"] for o in xml)
    assert render_path(doc, "/interceptor/v1/meta/public/bootstrap").status == 404
    # A key only the customer has is consumed the same way; a second delete is 404.
    assert (await api.node("DELETE", "node-a", "/instances/s1/meta/public/only_customer",
                           "s1")).status == 204
    assert "only_customer" not in merged_meta(validate_document(await api.document("s1")))
    for key in ("bootstrap", "only_customer", "never-there"):
        r = await api.node("DELETE", "node-a", f"/instances/s1/meta/public/{key}", "s1")
        assert r.status == 404, key
    # The owner sees what was consumed; customer writes do not bring it back.
    r = await api.call("GET", "/v1/servers/s1", tok)
    assert r.body["consumed_keys"] == {"public": ["bootstrap", "only_customer"]}
    assert (await api.call("PATCH", "/v1/customers/c1/metadata/public", ADMIN,
                           json_body={"bootstrap": "again"})).status == 200
    assert "bootstrap" not in merged_meta(validate_document(await api.document("s1")))
    # Writing the key to the server's class lifts the shadow.
    assert (await api.call("PATCH", "/v1/servers/s1/metadata/public", tok,
                           json_body={"bootstrap": "fresh"})).status == 200
    doc = validate_document(await api.document("s1"))
    assert merged_meta(doc)["bootstrap"] == "runtime-token"  # runtime is back in view too
    assert doc["meta"]["customer"]["public"]["bootstrap"] == "again"


async def test_guest_disable_is_undone_only_by_the_owner(api: Api) -> None:
    tok = await _scene(api)
    before = (await api.node("GET", "node-a", "/bindings")).body
    assert before["bindings"][0]["metadata_enabled"] is True
    r = await api.node("POST", "node-a", "/instances/s1/disable", "s1")
    assert r.status == 204, r.body
    after = (await api.node("GET", "node-a", "/bindings")).body
    assert after["bindings"][0]["metadata_enabled"] is False
    # The node's watch hears it as a binding change (its toggle path).
    w = await api.node("GET", "node-a", f"/watch?since={before['revision']}&timeout=0")
    assert w.body["bindings_changed"] is True and "s1" in w.body["instances"]
    view = (await api.call("GET", "/v1/servers/s1", tok)).body
    assert view["metadata_enabled"] is False and view["disabled_by_guest"] <= time.time()
    # Other nodes cannot switch off instances they do not serve.
    assert (await api.node("POST", "node-b", "/instances/s1/disable", "s1")).status == 403
    r = await api.call("PATCH", "/v1/servers/s1", tok, json_body={"metadata_enabled": True})
    assert r.status == 200 and "disabled_by_guest" not in r.body
    assert (await api.node("GET", "node-a", "/bindings")).body["bindings"][0][
        "metadata_enabled"] is True


async def test_owner_guest_data_and_long_poll(api: Api) -> None:
    tok = await _scene(api, guest_writes=True)
    r = await api.call("PATCH", "/v1/servers/s1/guest-data", tok, json_body={"ask": "42?"})
    assert r.status == 200 and r.body == {"ask": "42?"}
    for bad in ({"n": 1}, {"": "x"}):
        assert (await api.call("PATCH", "/v1/servers/s1/guest-data", tok,
                               json_body=bad)).status == 400
    other = await api.customer("c2")
    assert (await api.call("PATCH", "/v1/servers/s1/guest-data", other,
                           json_body={"x": "y"})).status in (403, 404)
    doc = validate_document(await api.document("s1"))
    assert render_path(doc, "/interceptor/v1/guest-data/ask").body == b"42?"

    current = await api.call("GET", "/v1/servers/s1/guest-data", tok)
    etag = current.etag
    started = time.monotonic()
    waiter = asyncio.ensure_future(api.call(
        "GET", f"/v1/servers/s1/guest-data?wait_for_change=true&last_etag={etag}"
               "&timeout_sec=20", tok))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    r = await api.node("PUT", "node-a", "/instances/s1/guest-data/answer", "s1", data="42")
    assert r.status == 204
    got = await asyncio.wait_for(waiter, 10)
    elapsed = time.monotonic() - started
    assert got.status == 200 and got.body == {"ask": "42?", "answer": "42"}
    assert got.etag != etag and elapsed < 5, elapsed
    # Nothing changes: it answers at the timeout with the current data.
    started = time.monotonic()
    r = await api.call("GET", f"/v1/servers/s1/guest-data?wait_for_change=true"
                              f"&last_etag={got.etag}&timeout_sec=0.5", tok)
    assert r.status == 200 and r.etag == got.etag and time.monotonic() - started >= 0.45
    # A stale last_etag answers at once; bad parameters are 400.
    r = await api.call("GET", f"/v1/servers/s1/guest-data?wait_for_change=true"
                              f"&last_etag={etag}", tok)
    assert r.status == 200 and r.etag == got.etag
    for query in ("wait_for_change=maybe", "wait_for_change=true&timeout_sec=x",
                  "wait_for_change=true&last_etag=abc"):
        assert (await api.call("GET", f"/v1/servers/s1/guest-data?{query}", tok)).status == 400
    # Server metadata long-polls the same way (a guest PUT wakes it).
    meta = await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)
    waiter = asyncio.ensure_future(api.call(
        "GET", f"/v1/servers/s1/metadata/restricted?wait_for_change=true"
               f"&last_etag={meta.etag}&timeout_sec=20", tok))
    await asyncio.sleep(0.2)
    assert (await api.node("PUT", "node-a", "/instances/s1/meta/restricted/r", "s1",
                           data="v")).status == 204
    got = await asyncio.wait_for(waiter, 10)
    assert got.body == {"r": "v"}
