"""Keypairs, customer sshkeys, image user-data parts and final keys, over HTTP."""

from __future__ import annotations

import base64
import json

from interceptor.formats.document import merged_meta, validate_document
from interceptor.formats.router import render_path
from interceptor.formats.xml_metadata import decode_keys
from tests.backend.support import ADMIN, Api

KEY_A = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bT"
         "XxY2e2fE alice@laptop")
KEY_B = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGSc3FqdDlm1lGlv1fW6eNfJ3hzk5KbXc7kE"
         "1Mv1Aa9d bob@laptop")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_keypair_lifecycle_and_servers_naming_it(api: Api) -> None:
    tok = await api.customer("c1")
    other = await api.customer("c2")
    path = "/v1/customers/c1/keypairs"
    r = await api.call("POST", path, tok, json_body={"name": "alice", "public_key": KEY_A})
    assert r.status == 201, r.body
    assert r.body["fingerprint"].startswith("SHA256:") and r.body["public_key"] == KEY_A
    r = await api.call("POST", path, tok, json_body={"name": "alice", "public_key": KEY_B})
    assert r.status == 409, r.body
    for bad in ("ssh-ed25519 !!!", "not-a-key AAAA", KEY_A + "\nssh-rsa x",
                "ssh-rsa " + KEY_A.split()[1]):  # blob of another type
        r = await api.call("POST", path, tok, json_body={"name": "x", "public_key": bad})
        assert r.status == 400 and "error" in r.body, bad
    r = await api.call("POST", path, tok, json_body={"name": "gen"})
    assert r.status == 400
    # Another customer learns nothing, not even that c1 exists.
    assert (await api.call("GET", path, other)).status == 404
    assert (await api.call("POST", path, other,
                           json_body={"name": "e", "public_key": KEY_B})).status == 404
    assert [k["name"] for k in (await api.call("GET", path, tok)).body["items"]] == ["alice"]

    # A server names it; an unknown name is refused.
    r = await api.call("POST", "/v1/servers", tok,
                       json_body={"hostname": "s1", "key_names": ["nope"]})
    assert r.status == 400 and "nope" in r.body["error"]
    await api.server("s1", "c1", key_names=["alice"],
                     ssh_keys=[{"name": "own", "key": KEY_B}])
    doc = await api.document("s1")
    assert [(k["name"], k["key"]) for k in doc["ssh_keys"]] == [("own", KEY_B),
                                                                ("alice", KEY_A)]
    for path_, want in (("/latest/meta-data/public-keys/", "0=own\n1=alice"),
                        ("/latest/meta-data/public-keys/1/openssh-key", KEY_A)):
        assert render_path(validate_document(doc), path_).body.decode() == want

    # Deleting the keypair removes the key and moves the document's revision on.
    before = doc["revision"]
    assert (await api.call("DELETE", "/v1/customers/c1/keypairs/alice", tok)).status == 204
    doc = await api.document("s1")
    assert [k["name"] for k in doc["ssh_keys"]] == ["own"] and doc["revision"] > before
    assert (await api.call("DELETE", "/v1/customers/c1/keypairs/alice", tok)).status == 404
    # Re-created under the same name, it reaches the server again.
    r = await api.call("POST", "/v1/customers/c1/keypairs", tok,
                       json_body={"name": "alice", "public_key": KEY_A})
    assert r.status == 201
    assert [k["name"] for k in (await api.document("s1"))["ssh_keys"]] == ["own", "alice"]


async def test_customer_sshkeys_reach_the_key_lists(api: Api) -> None:
    await api.customer("c1")
    r = await api.call("PATCH", "/v1/customers/c1/metadata/system", ADMIN,
                       json_body={"sshkeys": {"ops": [KEY_A], "": [KEY_B, KEY_A]}})
    assert r.status == 200, r.body
    await api.server("s1", "c1", ssh_keys=[{"name": "mine", "key": KEY_A}])
    doc = validate_document(await api.document("s1"))
    # KEY_A once (the server's own entry first); KEY_B for the default user.
    assert [(k["name"], k["key"], k.get("user")) for k in doc["ssh_keys"]] == [
        ("mine", KEY_A, None), ("default-0", KEY_B, "")]
    meta = json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)
    assert meta["public_keys"] == {"mine": KEY_A, "default-0": KEY_B}
    assert render_path(doc, "/nocloud/meta-data").body.count(b"ssh-ed25519") == 2
    xml = render_path(doc, "/metadata").body

    assert decode_keys(xml) == [{"name": "mine", "key": KEY_A},
                                {"name": "default-0", "key": KEY_B, "user": ""}]


async def test_image_parts_merge_before_the_servers(api: Api) -> None:
    tok = await api.customer("c1")
    r = await api.call("POST", "/v1/images", json_body={"id": "deb", "visibility": "public"})
    assert r.status == 201
    mirror = b"#cloud-config\napt:\n  primary:\n  - arches: [default]\n    uri: http://mirror/\n"
    parts = [{"name": "mirror", "content_type": "text/cloud-config", "data": _b64(mirror)},
             {"name": "motd", "content_type": "text/x-shellscript", "data": _b64(b"#!/bin/sh\n")}]
    r = await api.call("PUT", "/v1/images/deb/user-data", tok, json_body={"user_data": parts})
    assert r.status == 403  # not the image's owner
    r = await api.call("PUT", "/v1/images/deb/user-data", ADMIN, json_body={"user_data": parts})
    assert r.status == 200, r.body
    r = await api.call("PUT", "/v1/images/deb/user-data", ADMIN,
                       json_body={"user_data": [{"name": "x", "data": "!!"}]})
    assert r.status == 400
    await api.server("s1", "c1", image_id="deb", user_data=[
        {"name": "user", "content_type": "text/cloud-config", "data": _b64(b"#cloud-config\n")},
        {"name": "motd", "content_type": "text/plain", "data": _b64(b"mine")}])
    doc = validate_document(await api.document("s1"))
    assert [(p["name"], p.get("origin")) for p in doc["user_data"]] == [
        ("mirror", "image"), ("user", "server"), ("motd", "server")]
    assert render_path(doc, "/interceptor/v1/user-data/").body == b"mirror\nuser\nmotd"
    got = render_path(doc, "/interceptor/v1/user-data/mirror")
    assert (got.body, got.content_type) == (mirror, "text/cloud-config")
    assert render_path(doc, "/interceptor/v1/user-data/motd").body == b"mine"
    assert b"multipart/mixed" in render_path(doc, "/latest/user-data").body
    # The image's owner changes its part: every server of the image is told.
    before = doc["revision"]
    r = await api.call("PUT", "/v1/images/deb/user-data", ADMIN, json_body={"user_data": []})
    assert r.status == 200 and r.body == {"user_data": []}
    doc = validate_document(await api.document("s1"))
    assert doc["revision"] > before and [p["name"] for p in doc["user_data"]] == ["user", "motd"]


async def test_final_restricted_keys_win_the_merged_view(api: Api) -> None:
    tok = await api.customer("c1")
    r = await api.call("POST", "/v1/images", tok, json_body={"id": "img"})
    assert r.status == 201
    assert (await api.call("PATCH", "/v1/images/img/metadata/restricted", tok,
                           json_body={"mirror": "http://m.local/", "free": "img"})).status == 200
    r = await api.call("PUT", "/v1/images/img/final-keys", tok,
                       json_body={"restricted": ["mirror", "mirror"]})
    assert r.status == 200 and r.body == {"restricted": ["mirror"]}
    assert (await api.call("PUT", "/v1/images/img/final-keys", tok,
                           json_body={"restricted": "mirror"})).status == 400
    await api.server("s1", "c1", image_id="img")
    for obj in ("/v1/customers/c1", "/v1/servers/s1"):
        r = await api.call("PATCH", obj + "/metadata/restricted", tok,
                           json_body={"mirror": "http://evil/", "free": "server"})
        assert r.status == 200
    doc = validate_document(await api.document("s1"))
    assert doc["final_keys"] == ["mirror"]
    assert merged_meta(doc)["mirror"] == "http://m.local/"
    assert merged_meta(doc)["free"] == "server"  # not final: the server wins
    meta = json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)
    assert meta["meta"]["mirror"] == "http://m.local/"
    assert render_path(doc, "/interceptor/v1/meta/restricted/mirror").body == b"http://m.local/"
    r = await api.call("GET", "/v1/images/img/final-keys", await api.customer("c2"))
    assert r.status == 404  # a private image is invisible to others
