"""What reaches the VM: privacy, cross-customer images, runtime, revisions."""

from __future__ import annotations

import json

from interceptor.formats.document import validate_document
from tests.backend.support import Api


async def test_private_never_in_any_document(api: Api) -> None:
    tok = await api.customer("c1")
    await api.call("POST", "/v1/images", tok, json_body={"id": "img1"})
    for sid in ("s1", "s2"):
        await api.server(sid, "c1", image_id="img1", ifname=f"tap-{sid}")
        await api.call("POST", f"/v1/servers/{sid}/start", tok,
                       json_body={"metadata": {"private": {"rt": "SECRET-runtime"}}})
    await api.call("PATCH", "/v1/customers/c1/metadata/private", tok,
                   json_body={"k": "SECRET-customer"})
    await api.call("PATCH", "/v1/images/img1/metadata/private", tok,
                   json_body={"k": "SECRET-image"})
    await api.call("PATCH", "/v1/servers/s1/metadata/private", tok,
                   json_body={"k": "SECRET-server"})
    for sid in ("s1", "s2"):
        for doc in (await api.document(sid),
                    (await api.call("GET", f"/v1/servers/{sid}/document", tok)).body):
            validate_document(doc)
            assert "SECRET" not in json.dumps(doc)
            assert all("private" not in classes for classes in doc["meta"].values())
    # …while the owner can still read them through the API.
    r = await api.call("GET", "/v1/servers/s1/runtime/metadata/private", tok)
    assert r.body == {"rt": "SECRET-runtime"}


async def test_image_owner_restricted_reaches_other_customers_vm(api: Api) -> None:
    vendor = await api.customer("vendor")
    user = await api.customer("user")
    r = await api.call("POST", "/v1/images", vendor,
                       json_body={"id": "appliance", "visibility": "public"})
    assert r.status == 201
    await api.call("PATCH", "/v1/images/appliance/metadata/restricted", vendor,
                   json_body={"license_key": "LIC-12345"})
    await api.call("PATCH", "/v1/images/appliance/metadata/public", vendor,
                   json_body={"product": "appliance"})
    await api.server("vm", "user", image_id="appliance")

    doc = await api.document("vm")
    assert doc["meta"]["image"]["restricted"] == {"license_key": "LIC-12345"}
    # The VM's owner cannot read it: not directly, not via the document preview.
    r = await api.call("GET", "/v1/images/appliance/metadata/restricted", user)
    assert r.status == 403 and "LIC-12345" not in json.dumps(r.body)
    preview = await api.call("GET", "/v1/servers/vm/document", user)
    assert preview.status == 200
    assert "LIC-12345" not in json.dumps(preview.body)
    assert preview.body["meta"]["image"]["public"] == {"product": "appliance"}
    # The platform's preview shows what the VM sees.
    admin_view = await api.call("GET", "/v1/servers/vm/document")
    assert admin_view.body["meta"]["image"]["restricted"] == {"license_key": "LIC-12345"}


async def test_runtime_appears_after_start_and_goes_at_stop(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    await api.call("PATCH", "/v1/servers/s1/metadata/public", tok, json_body={"keep": "yes"})
    r = await api.call("PATCH", "/v1/servers/s1/runtime/metadata/public", tok,
                       json_body={"x": "1"})
    assert r.status == 409  # not running
    assert (await api.document("s1"))["meta"]["runtime"]["public"] == {}

    r = await api.call("POST", "/v1/servers/s1/start", tok,
                       json_body={"metadata": {"public": {"boot": "one"}}})
    assert r.status == 200 and r.body["running"] is True
    r = await api.call("PATCH", "/v1/servers/s1/runtime/metadata/restricted", tok,
                       json_body={"otp": "123"})
    assert r.status == 200
    doc = await api.document("s1")
    assert doc["meta"]["runtime"]["public"] == {"boot": "one"}
    assert doc["meta"]["runtime"]["restricted"] == {"otp": "123"}
    assert "started_at" in doc["meta"]["runtime"]["system"]
    assert (await api.call("GET", "/v1/servers/s1", tok)).body["running"] is True

    r = await api.call("POST", "/v1/servers/s1/stop", tok)
    assert r.status == 200 and r.body["running"] is False
    # Stopping released the tap: the node may no longer read the document.
    r = await api.node("GET", "node-a", "/instances/s1/document", "s1")
    assert r.status == 403
    await api.bind("s1", "node-a", "tap0")
    stopped = await api.document("s1")
    assert stopped["meta"]["runtime"] == {"public": {}, "restricted": {}, "system": {}}
    assert stopped["meta"]["server"]["public"] == {"keep": "yes"}  # server data persists
    assert stopped["revision"] > doc["revision"]

    await api.call("POST", "/v1/servers/s1/start", tok)
    again = await api.document("s1")
    assert again["meta"]["runtime"]["public"] == {}
    assert again["meta"]["runtime"]["restricted"] == {}
    assert again["meta"]["server"]["public"] == {"keep": "yes"}


async def test_restart_clears_runtime(api: Api) -> None:
    tok = await api.customer("c1")
    await api.server("s1", "c1")
    await api.call("POST", "/v1/servers/s1/start", tok,
                   json_body={"metadata": {"public": {"run": "1"}}})
    await api.call("POST", "/v1/servers/s1/start", tok,
                   json_body={"metadata": {"public": {"other": "2"}}})
    assert (await api.document("s1"))["meta"]["runtime"]["public"] == {"other": "2"}


async def test_revision_follows_every_dependency(api: Api) -> None:
    tok = await api.customer("c1")
    await api.call("POST", "/v1/images", tok, json_body={"id": "i1"})
    await api.server("s1", "c1", image_id="i1")
    seen = [(await api.document("s1"))["revision"]]
    for path in ("/v1/customers/c1/metadata/public", "/v1/images/i1/metadata/public",
                 "/v1/servers/s1/metadata/public"):
        r = await api.call("PATCH", path, tok, json_body={"k": path})
        assert r.status == 200
        doc = await api.document("s1")
        assert doc["revision"] > seen[-1]
        seen.append(doc["revision"])
    etag = (await api.node("GET", "node-a", "/instances/s1/document", "s1")).etag
    assert (await api.node("GET", "node-a", "/instances/s1/document", "s1",
                           headers={"If-None-Match": etag})).status == 304
    await api.call("PATCH", "/v1/customers/c1/metadata/public", tok, json_body={"k": "new"})
    r = await api.node("GET", "node-a", "/instances/s1/document", "s1",
                       headers={"If-None-Match": etag})
    assert r.status == 200 and r.body["meta"]["customer"]["public"] == {"k": "new"}


async def test_system_metadata_shapes(api: Api) -> None:
    await api.customer("c1")
    await api.server("s1", "c1")
    r = await api.call("PATCH", "/v1/customers/c1/metadata/system",
                       json_body={"sshkeys": {"": ["ssh-ed25519 AAAA def"],
                                              "alice": ["ssh-rsa BBBB a"]}})
    assert r.status == 200
    bad = await api.call("PATCH", "/v1/customers/c1/metadata/system",
                         json_body={"sshkeys": ["not", "a", "map"]})
    assert bad.status == 400 and "sshkeys" in bad.body["error"]
    doc = await api.document("s1")
    assert doc["meta"]["customer"]["system"]["sshkeys"]["alice"] == ["ssh-rsa BBBB a"]
    record = doc["meta"]["server"]["system"]
    assert record["id"] == "s1" and record["hostname"] == "s1"
    assert record["customer_id"] == "c1"


async def test_full_server_spec_round_trip(api: Api) -> None:
    await api.customer("c1")
    spec = {
        "customer_id": "c1", "hostname": "web-1", "instance_type": "m1.large",
        "availability_zone": "zone-b", "launch_index": 2, "require_token": True,
        "tags": {"role": "web"}, "tags_visible": True, "guest_writes": True,
        "files": [{"path": "/etc/motd", "data": "aGk="}],
        "network": {"interfaces": [{
            "name": "eth0", "mac": "52:54:00:12:34:56", "mtu": 1450, "dhcp4": False,
            "addresses": [{"address": "10.0.0.5", "prefix": 24}], "gateway4": "10.0.0.1",
            "nameservers": ["10.0.0.1"], "search": ["example.internal"]}]},
    }
    r = await api.call("PUT", "/v1/servers/web-1", json_body=spec)
    assert r.status == 201, r.body
    await api.bind("web-1", "node-a", "tapweb1", mac="FE:54:00:12:34:56")
    bound = (await api.call("GET", "/v1/servers/web-1/bindings")).body["bindings"]
    assert [(b["node"], b["ifname"], b["mac"]) for b in bound] == [
        ("node-a", "tapweb1", "fe:54:00:12:34:56")]
    got = (await api.call("GET", "/v1/servers/web-1")).body
    for key, value in spec.items():
        assert got[key] == value, key
    doc = validate_document(await api.document("web-1"))
    assert doc["network"] == spec["network"]
    assert doc["files"] == [{"path": "/etc/motd", "data_b64": "aGk="}]
    assert (doc["instance_type"], doc["availability_zone"], doc["launch_index"]) == (
        "m1.large", "zone-b", 2)
    assert doc["require_token"] and doc["tags_visible"] and doc["guest_writes"]
    assert doc["tags"] == {"role": "web"}
