"""Node endpoints: node restriction, token + signature checks, guest writes."""

from __future__ import annotations

import time

from tests.backend.support import NODE_TOKENS, Api


async def _scene(api: Api) -> str:
    tok = await api.customer("c1")
    await api.server("s1", "c1", node="node-a")
    await api.server("s2", "c1", node="node-b")
    await api.server("s3", "c1", node=None)
    return tok


async def test_node_restriction(api: Api) -> None:
    await _scene(api)
    assert (await api.node("GET", "node-a", "/instances/s1/document", "s1")).status == 200
    r = await api.node("GET", "node-a", "/instances/s2/document", "s2")
    assert r.status == 403 and "not bound" in r.body["error"]
    assert (await api.node("GET", "node-a", "/instances/s3/document", "s3")).status == 403
    assert (await api.node("GET", "node-a", "/instances/nope/document", "nope")).status == 404
    b = await api.node("GET", "node-b", "/bindings")
    assert [x["instance_id"] for x in b.body["bindings"]] == ["s2"]
    for path, inst in (("/instances/s2/password", "s2"),):
        assert (await api.node("POST", "node-a", path, inst, data="pw")).status == 403


async def test_token_of_another_node_is_refused(api: Api) -> None:
    await _scene(api)
    r = await api.node("GET", "node-a", "/instances/s1/document", "s1",
                       token=NODE_TOKENS["node-b"])
    assert r.status == 403


async def test_bad_tokens_and_signatures(api: Api) -> None:
    await _scene(api)
    path = "/instances/s1/document"
    assert (await api.node("GET", "node-a", path, "s1", token="wrong")).status == 401
    r = await api.call("GET", f"/v1/nodes/node-a{path}", None)
    assert r.status == 401 and r.body["error"]
    # Bad key, stale timestamp, signature for another instance, no signature.
    assert (await api.node("GET", "node-a", path, "s1", key="x" * 32)).status == 401
    stale = int(time.time()) - 3600
    r = await api.node("GET", "node-a", path, "s1", timestamp=stale)
    assert r.status == 401 and "signature" in r.body["error"]
    assert (await api.node("GET", "node-a", path, "s2")).status == 401
    r = await api.call("GET", f"/v1/nodes/node-a{path}", NODE_TOKENS["node-a"])
    assert r.status == 401


async def test_password_once(api: Api) -> None:
    tok = await _scene(api)
    r = await api.node("POST", "node-a", "/instances/s1/password", "s1", data="p" * 1021)
    assert r.status == 413
    r = await api.node("POST", "node-a", "/instances/s1/password", "s1", data="s3cret")
    assert r.status == 201
    r = await api.node("POST", "node-a", "/instances/s1/password", "s1", data="again")
    assert r.status == 409
    assert (await api.call("GET", "/v1/servers/s1/password", tok)).body == {"password": "s3cret"}
    assert (await api.document("s1"))["password"] == "s3cret"
    other = await api.customer("c2")
    assert (await api.call("GET", "/v1/servers/s1/password", other)).status == 403
    assert (await api.call("DELETE", "/v1/servers/s1/password", tok)).status == 204
    assert (await api.document("s1"))["password"] is None
    r = await api.node("POST", "node-a", "/instances/s1/password", "s1", data="p" * 1020)
    assert r.status == 201


async def test_guest_deletes_a_consumed_key(api: Api) -> None:
    tok = await _scene(api)
    await api.call("PATCH", "/v1/servers/s1/metadata/restricted", tok,
                   json_body={"bootstrap": "one-time", "keep": "k"})
    r = await api.node("DELETE", "node-a", "/instances/s1/meta/restricted/bootstrap", "s1")
    assert r.status == 403  # deleting the owner's keys needs the guest_writes opt-in
    await api.call("PATCH", "/v1/servers/s1", tok, json_body={"guest_writes": True})
    r = await api.node("DELETE", "node-a", "/instances/s1/meta/restricted/bootstrap", "s1")
    assert r.status == 204
    r = await api.node("DELETE", "node-a", "/instances/s1/meta/restricted/bootstrap", "s1")
    assert r.status == 404
    r = await api.node("DELETE", "node-a", "/instances/s1/meta/private/keep", "s1")
    assert r.status == 400
    assert (await api.call("GET", "/v1/servers/s1/metadata/restricted", tok)).body == {
        "keep": "k"}


async def test_guest_data(api: Api) -> None:
    tok = await _scene(api)
    r = await api.node("PUT", "node-a", "/instances/s1/guest-data/ready", "s1", data="yes")
    assert r.status == 403
    await api.call("PATCH", "/v1/servers/s1", tok, json_body={"guest_writes": True})
    r = await api.node("PUT", "node-a", "/instances/s1/guest-data/ready", "s1", data="yes")
    assert r.status == 204
    r = await api.node("PUT", "node-a", "/instances/s1/guest-data/big", "s1",
                       data="x" * (16 * 1024 + 1))
    assert r.status == 413
    assert (await api.call("GET", "/v1/servers/s1/guest-data", tok)).body == {"ready": "yes"}
    assert (await api.document("s1"))["guest_data"] == {"ready": "yes"}
    r = await api.node("DELETE", "node-a", "/instances/s1/guest-data/ready", "s1")
    assert r.status == 204
    r = await api.node("DELETE", "node-a", "/instances/s1/guest-data/ready", "s1")
    assert r.status == 404


async def test_request_id_echoed(api: Api) -> None:
    await _scene(api)
    r = await api.node("GET", "node-a", "/bindings", headers={"X-Request-Id": "req-123"})
    assert r.headers.get("X-Request-Id") == "req-123", r.headers


async def test_keys_with_reserved_characters(api: Api) -> None:
    from urllib.parse import quote
    tok = await _scene(api)
    key = "a/b c?ü"
    await api.call("PATCH", "/v1/servers/s1", tok, json_body={"guest_writes": True})
    await api.call("PATCH", "/v1/servers/s1/metadata/public", tok, json_body={key: "v"})
    r = await api.node("PUT", "node-a", f"/instances/s1/guest-data/{quote(key, safe='')}",
                       "s1", data="x")
    assert r.status == 204, r.body
    assert (await api.call("GET", "/v1/servers/s1/guest-data", tok)).body == {key: "x"}
    r = await api.node("DELETE", "node-a", f"/instances/s1/meta/public/{quote(key, safe='')}",
                       "s1")
    assert r.status == 204, r.body
    assert (await api.call("GET", "/v1/servers/s1/metadata/public", tok)).body == {}
