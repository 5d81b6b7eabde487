"""Bindings and the other platform-only facts of a server, through the real
backend, for every token kind (admin, owner, other customer, node, none).

A customer can neither create nor change bindings (POST, PUT, PATCH,
merge-patch with null, JSON with a duplicate key), nor learn which taps are in
use; it cannot pre-claim a server id; only the platform can.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.backend.support import ADMIN, NODE_TOKENS, Api

BIND = {"bindings": [{"node": "node-a", "ifname": "vnet9"}]}


async def _scene(api: Api) -> tuple[str, str]:
    owner = await api.customer("c-own")
    other = await api.customer("c-oth")
    await api.server("s-own", "c-own", ifname="tap0")
    await api.server("s-oth", "c-oth", ifname="tap1")
    r = await api.call("PUT", "/v1/servers/s-own/serial/node-a/s-own")
    assert r.status == 200, r.body
    return owner, other


def _tokens(owner: str, other: str) -> dict[str, str | None]:
    return {"owner": owner, "other": other, "node": NODE_TOKENS["node-a"], "none": None}


BINDING_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/servers/s-own/bindings", None),
    ("PUT", "/v1/servers/s-own/bindings", BIND),
    ("DELETE", "/v1/servers/s-own/bindings", None),
    ("PUT", "/v1/servers/s-own/bindings/node-a/vnet9", {"mac": "fe:54:00:00:00:09"}),
    ("DELETE", "/v1/servers/s-own/bindings/node-a/tap0", None),
    ("PUT", "/v1/servers/s-own/serial/node-a/s-own", None),
    ("DELETE", "/v1/servers/s-own/serial/node-a/s-own", None),
]


@pytest.mark.parametrize("who", ["owner", "other", "node", "none"])
@pytest.mark.parametrize(("method", "path", "body"), BINDING_CALLS)
async def test_only_the_platform_uses_the_binding_endpoints(
        api: Api, who: str, method: str, path: str, body: Any) -> None:
    owner, other = await _scene(api)
    r = await api.call(method, path, _tokens(owner, other)[who], json_body=body)
    assert r.status == (401 if who == "none" else 403), r.body
    assert "tap" not in json.dumps(r.body)  # nothing about taps in the refusal
    # Nothing changed: still bound to tap0 and serial socket s-own only.
    bound = (await api.call("GET", "/v1/servers/s-own/bindings")).body["bindings"]
    assert [(b["node"], b.get("ifname"), b.get("serial")) for b in bound] == [
        ("node-a", "tap0", None), ("node-a", None, "s-own")]


@pytest.mark.parametrize(("method", "path", "body"), BINDING_CALLS)
async def test_the_platform_uses_every_binding_endpoint(
        api: Api, method: str, path: str, body: Any) -> None:
    await _scene(api)
    r = await api.call(method, path, ADMIN, json_body=body)
    assert r.status in (200, 204), r.body


SMUGGLED: list[tuple[str, str, Any]] = [
    ("POST", "/v1/servers", {"hostname": "evil", **BIND}),
    ("PUT", "/v1/servers/s-own", {"hostname": "s-own", **BIND}),
    ("PATCH", "/v1/servers/s-own", BIND),
    ("PATCH", "/v1/servers/s-own", {"bindings": None}),
    ("PATCH", "/v1/servers/s-own", {"bindings": []}),
]


@pytest.mark.parametrize(("method", "path", "body"), SMUGGLED)
async def test_a_customer_sending_bindings_gets_403_naming_the_field(
        api: Api, method: str, path: str, body: Any) -> None:
    owner, _ = await _scene(api)
    r = await api.call(method, path, owner, json_body=body)
    assert r.status == 403 and '"bindings"' in r.body["error"], r.body
    bound = (await api.call("GET", "/v1/servers/s-own/bindings")).body["bindings"]
    assert [b.get("ifname") for b in bound] == ["tap0", None]


async def test_a_duplicate_key_cannot_smuggle_a_field(api: Api) -> None:
    owner, _ = await _scene(api)
    raw = ('{"hostname": "s-own", "bindings": [], '
           '"bindings": [{"node": "node-a", "ifname": "vnet9"}]}')
    for method, path in (("PATCH", "/v1/servers/s-own"), ("POST", "/v1/servers")):
        r = await api.call(method, path, owner, data=raw,
                           headers={"Content-Type": "application/json"})
        assert r.status == 400 and "given twice" in r.body["error"], r.body
    r = await api.call("PATCH", "/v1/servers/s-own", owner,
                       data='{"launch_index": 0, "launch_index": 5}',
                       headers={"Content-Type": "application/json"})
    assert r.status == 400


async def test_a_customer_learns_nothing_about_other_taps(api: Api) -> None:
    owner, _ = await _scene(api)
    # The old 409 said "tap1 on node-a is bound to another server".
    for method, path, body in SMUGGLED:
        r = await api.call(method, path, owner,
                           json_body={**(body or {}),
                                      "bindings": [{"node": "node-a", "ifname": "tap1"}]})
        assert "tap1" not in json.dumps(r.body) and "s-oth" not in json.dumps(r.body)
    view = (await api.call("GET", "/v1/servers/s-own", owner)).body
    assert "bindings" not in view
    listing = (await api.call("GET", "/v1/servers", owner)).body
    assert all("bindings" not in item for item in listing["items"])


@pytest.mark.parametrize(("field", "value"), [
    ("launch_index", 3), ("instance_type", "m1.huge"), ("availability_zone", "zone-x"),
    ("network", {"interfaces": [{"name": "eth0", "mac": "52:54:00:00:00:01"}]})])
async def test_platform_fields_are_the_platforms(api: Api, field: str, value: Any) -> None:
    owner, _ = await _scene(api)
    for method, path, body in (
            ("POST", "/v1/servers", {"hostname": "new", field: value}),
            ("PATCH", "/v1/servers/s-own", {field: value}),
            ("PUT", "/v1/servers/s-own", {"hostname": "s-own", field: value})):
        r = await api.call(method, path, owner, json_body=body)
        assert r.status == 403 and f'"{field}"' in r.body["error"], (method, r.body)
    # The platform sets it; the owner then round-trips it unchanged (GET → PUT)
    # and may not remove it (merge-patch null resets to the default).
    r = await api.call("PATCH", "/v1/servers/s-own", ADMIN, json_body={field: value})
    assert r.status == 200, r.body
    view = (await api.call("GET", "/v1/servers/s-own", owner)).body
    body = {k: v for k, v in view.items() if k not in ("id", "revision", "running")}
    r = await api.call("PUT", "/v1/servers/s-own", owner, json_body={**body, "hostname": "h2"})
    assert r.status == 200 and r.body[field] == view[field], r.body
    # Left out of a full PUT, it keeps the platform's value.
    r = await api.call("PUT", "/v1/servers/s-own", owner,
                       json_body={"hostname": "h3"})
    assert r.status == 200 and r.body[field] == view[field], r.body
    r = await api.call("PATCH", "/v1/servers/s-own", owner, json_body={field: None})
    assert r.status == 403 and f'"{field}"' in r.body["error"], r.body


async def test_server_ids_cannot_be_pre_claimed(api: Api) -> None:
    owner, other = await _scene(api)
    # A customer cannot choose an id (it could squat the platform's next one)…
    r = await api.call("PUT", "/v1/servers/i-0platform0001", owner,
                       json_body={"hostname": "squat"})
    assert r.status == 403 and "chosen by the platform" in r.body["error"]
    r = await api.call("POST", "/v1/servers", owner, json_body={"id": "x", "hostname": "x"})
    assert r.status == 403
    # …but gets one the backend chose, and owns it.
    r = await api.call("POST", "/v1/servers", owner, json_body={"hostname": "mine"})
    assert r.status == 201 and r.body["id"].startswith("i-") and r.body["customer_id"] == "c-own"
    assert (await api.call("GET", f"/v1/servers/{r.body['id']}", other)).status == 403
    r = await api.call("PUT", "/v1/servers/i-0platform0001", ADMIN,
                       json_body={"customer_id": "c-oth", "hostname": "real"})
    assert r.status == 201


async def test_stop_releases_the_bindings_unless_the_platform_keeps_them(api: Api) -> None:
    owner, _ = await _scene(api)
    r = await api.call("POST", "/v1/servers/s-own/stop", owner,
                       json_body={"keep_bindings": True})
    assert r.status == 403 and '"keep_bindings"' in r.body["error"]
    r = await api.call("POST", "/v1/servers/s-own/stop", ADMIN,
                       json_body={"keep_bindings": True})
    assert r.status == 200
    assert len((await api.call("GET", "/v1/servers/s-own/bindings")).body["bindings"]) == 2
    r = await api.call("POST", "/v1/servers/s-own/stop", owner)
    assert r.status == 200
    assert (await api.call("GET", "/v1/servers/s-own/bindings")).body["bindings"] == []
    bindings = (await api.node("GET", "node-a", "/bindings")).body["bindings"]
    assert [b["instance_id"] for b in bindings] == ["s-oth"]
    # The freed tap can go to another server at once.
    r = await api.call("PUT", "/v1/servers/s-oth/bindings/node-a/tap0")
    assert r.status == 200


async def test_generations_mark_incarnations(api: Api) -> None:
    await _scene(api)
    await api.call("DELETE", "/v1/servers/s-own/serial/node-a/s-own")
    first = (await api.call("GET", "/v1/servers/s-own/bindings")).body["bindings"][0]
    # Re-sending the same set keeps the incarnation; a plug starts a new one.
    same = await api.call("PUT", "/v1/servers/s-own/bindings", json_body={
        "bindings": [{"node": "node-a", "ifname": "tap0"}]})
    assert same.body["bindings"][0]["generation"] == first["generation"]
    plugged = await api.call("PUT", "/v1/servers/s-own/bindings/node-a/tap0")
    assert plugged.body["binding"]["generation"] != first["generation"]
    node_view = (await api.node("GET", "node-a", "/bindings")).body["bindings"]
    assert {b["instance_id"]: b["generation"] for b in node_view}["s-own"] == \
        plugged.body["binding"]["generation"]


async def test_the_platform_gets_clear_errors(api: Api) -> None:
    await _scene(api)
    cases: list[tuple[str, str, Any, int, str]] = [
        ("PUT", "/v1/servers/s-own", {"customer_id": "c-own", "hostname": "h", **BIND}, 400,
         "PUT /v1/servers/{id}/bindings"),
        ("PUT", "/v1/servers/s-own/bindings/node-a/tap1", None, 409, "tap1"),
        ("PUT", "/v1/servers/s-own/bindings/node-a/much-too-long-name", None, 400, "ifname"),
        ("PUT", "/v1/servers/s-own/bindings/node-a/vnet3", {"mac": "nope"}, 400, "mac"),
        ("PUT", "/v1/servers/s-own/bindings/node-a/vnet3", {"typo": 1}, 400, "typo"),
        ("PUT", "/v1/servers/s-own/bindings", {"bindings": [{"node": "n", "ifname": "a",
                                                             "serial": "b"}]}, 400, "either"),
        ("PUT", "/v1/servers/s-own/bindings", {"bindings": [{"node": "n", "ifname": "a"}] * 2},
         400, "twice"),
        ("DELETE", "/v1/servers/s-own/bindings/node-a/vnet3", None, 404, "no binding"),
        ("PUT", "/v1/servers/nope/bindings/node-a/vnet3", None, 404, "not found"),
    ]
    for method, path, body, status, text in cases:
        r = await api.call(method, path, ADMIN, json_body=body)
        assert r.status == status and text in r.body["error"], (path, r.body)
    # One MAC names one tap on a node.
    await api.call("PUT", "/v1/servers/s-own/bindings/node-a/vnet3",
                   json_body={"mac": "fe:54:00:00:00:03"})
    r = await api.call("PUT", "/v1/servers/s-oth/bindings/node-a/vnet4",
                       json_body={"mac": "FE:54:00:00:00:03"})
    assert r.status == 409 and "fe:54:00:00:00:03" in r.body["error"]
