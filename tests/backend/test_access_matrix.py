"""Every cell of the access matrix (issue 3), for each object kind, over HTTP.

                         public  restricted  private  system
    presented to the VM   yes      yes         no      yes
    owner reads           yes      yes         yes     yes
    owner writes          yes      yes         yes     no
    non-owner reads       yes      no          no      no
    non-owner writes      no       no          no      no
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.backend.support import ADMIN, Api

CLASSES = ("public", "restricted", "private", "system")
KINDS = ("customer", "image", "server", "runtime")
VM_SEES = {"public": True, "restricted": True, "private": False, "system": True}
OWNER_WRITES = {"public": True, "restricted": True, "private": True, "system": False}
OTHER_READS = {"public": True, "restricted": False, "private": False, "system": False}


@dataclass
class Scene:
    owner: str
    other: str
    paths: dict[str, str]


async def _scene(api: Api) -> Scene:
    owner = await api.customer("c-own")
    other = await api.customer("c-oth")
    r = await api.call("POST", "/v1/images", owner,
                       json_body={"id": "img-own", "name": "img", "visibility": "public"})
    assert r.status == 201, r.body
    await api.server("s-own", "c-own", image_id="img-own")
    r = await api.call("POST", "/v1/servers/s-own/start", owner)
    assert r.status == 200, r.body
    return Scene(owner, other, {
        "customer": "/v1/customers/c-own/metadata/",
        "image": "/v1/images/img-own/metadata/",
        "server": "/v1/servers/s-own/metadata/",
        "runtime": "/v1/servers/s-own/runtime/metadata/",
    })


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
async def test_matrix_cell(api: Api, kind: str, cls: str) -> None:
    scene = await _scene(api)
    path = scene.paths[kind] + cls
    marker = f"v-{kind}-{cls}-7f3a"

    # The platform writes every class (system only by it).
    r = await api.call("PATCH", path, ADMIN, json_body={"by_admin": marker})
    assert r.status == 200, r.body

    # Owner reads: yes for every class.
    r = await api.call("GET", path, scene.owner)
    assert r.status == 200, r.body
    assert r.body["by_admin"] == marker

    # Owner writes: yes except system.
    r = await api.call("PATCH", path, scene.owner, json_body={"by_owner": "x"})
    assert r.status == (200 if OWNER_WRITES[cls] else 403), r.body
    r = await api.call("PUT", path, scene.owner, json_body={"by_admin": marker, "o": "1"})
    assert r.status == (200 if OWNER_WRITES[cls] else 403), r.body
    if r.status == 403:
        assert "error" in r.body

    # Non-owner reads: public only; never sees values of other classes.
    r = await api.call("GET", path, scene.other)
    assert r.status == (200 if OTHER_READS[cls] else 403), r.body
    if r.status == 200:
        assert r.body["by_admin"] == marker
    else:
        assert marker not in json.dumps(r.body)

    # Non-owner writes: never, in any form.
    for method in ("PATCH", "PUT"):
        r = await api.call(method, path, scene.other, json_body={"evil": "1"})
        assert r.status == 403, (method, r.body)
    r = await api.call("GET", path, scene.owner)
    assert "evil" not in r.body

    # Presented to the VM: public, restricted, system; never private.
    doc = await api.document("s-own")
    assert (doc["meta"][kind].get(cls, {}).get("by_admin") == marker) is VM_SEES[cls]
    assert (marker in json.dumps(doc)) is VM_SEES[cls]


async def test_node_tokens_cannot_use_owner_api(api: Api) -> None:
    await api.customer("c1")
    await api.server("s1", "c1")
    r = await api.call("GET", "/v1/servers/s1/metadata/public", "tok-node-a-" + "x" * 16)
    assert r.status == 403


async def test_platform_image_owned_by_admin(api: Api) -> None:
    tok = await api.customer("c1")
    r = await api.call("POST", "/v1/images", json_body={"id": "base", "visibility": "public"})
    assert r.status == 201 and r.body["owner"] is None
    r = await api.call("PATCH", "/v1/images/base/metadata/system",
                       json_body={"default_username": "debian"})
    assert r.status == 200
    assert (await api.call("GET", "/v1/images/base/metadata/public", tok)).status == 200
    assert (await api.call("GET", "/v1/images/base/metadata/system", tok)).status == 403
    assert (await api.call("PATCH", "/v1/images/base/metadata/public", tok,
                           json_body={"a": "b"})).status == 403
    await api.server("s1", "c1", image_id="base")
    doc = await api.document("s1")
    assert doc["meta"]["image"]["system"]["default_username"] == "debian"


async def test_private_image_hidden_and_unusable(api: Api) -> None:
    tok_a = await api.customer("ca")
    tok_b = await api.customer("cb")
    r = await api.call("POST", "/v1/images", tok_a, json_body={"id": "priv"})
    assert r.status == 201 and r.body["visibility"] == "private"
    assert (await api.call("GET", "/v1/images/priv", tok_b)).status == 404
    assert (await api.call("GET", "/v1/images/priv/metadata/public", tok_b)).status == 404
    listing = await api.call("GET", "/v1/images", tok_b)
    assert [i["id"] for i in listing.body["items"]] == []
    r = await api.call("POST", "/v1/servers", tok_b,
                       json_body={"hostname": "sb", "image_id": "priv"})
    assert r.status == 400


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bTXxY2e2fE m@x"
NODE_A = "tok-node-a-" + "x" * 16
OCCI_BODY = ('Category: compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; '
             'class="kind"\nX-OCCI-Attribute: occi.compute.hostname="m"\n')

# (method, path, JSON body or text, status for: owner, other customer, node token, none)
MODEL_ENDPOINTS: list[tuple[str, str, object, tuple[int, int, int, int]]] = [
    ("POST", "/v1/customers/c-own/keypairs", {"name": "k2", "public_key": KEY},
     (201, 404, 403, 401)),
    ("GET", "/v1/customers/c-own/keypairs", None, (200, 404, 403, 401)),
    ("GET", "/v1/customers/c-own/keypairs/k1", None, (200, 404, 403, 401)),
    ("DELETE", "/v1/customers/c-own/keypairs/k1", None, (204, 404, 403, 401)),
    ("GET", "/v1/images/img-own/user-data", None, (200, 403, 403, 401)),
    ("PUT", "/v1/images/img-own/user-data", {"user_data": []}, (200, 403, 403, 401)),
    ("GET", "/v1/images/img-own/final-keys", None, (200, 403, 403, 401)),
    ("PUT", "/v1/images/img-own/final-keys", {"restricted": ["k"]}, (200, 403, 403, 401)),
    ("PATCH", "/v1/servers/s-own/guest-data", {"k": "v"}, (200, 403, 403, 401)),
    ("GET", "/v1/servers/s-own/guest-data?wait_for_change=true&timeout_sec=0", None,
     (200, 403, 403, 401)),
    ("POST", "/occi1.1/compute/", OCCI_BODY, (201, 201, 403, 401)),
    ("GET", "/occi1.1/compute/s-own", None, (200, 403, 403, 401)),
    ("GET", "/occi1.1/-/", None, (200, 200, 403, 401)),
]


@pytest.mark.parametrize(("method", "path", "body", "want"), MODEL_ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in MODEL_ENDPOINTS])
@pytest.mark.parametrize("who", range(4), ids=["owner", "other", "node", "none"])
async def test_model_endpoints_matrix(api: Api, method: str, path: str, body: object,
                                      want: tuple[int, int, int, int], who: int) -> None:
    scene = await _scene(api)
    r = await api.call("POST", "/v1/customers/c-own/keypairs", scene.owner,
                       json_body={"name": "k1", "public_key": KEY})
    assert r.status == 201, r.body
    token = (scene.owner, scene.other, NODE_A, None)[who]
    if isinstance(body, str):
        r = await api.call(method, path, token, data=body,
                           headers={"Content-Type": "text/plain"})
    else:
        r = await api.call(method, path, token, json_body=body)
    assert r.status == want[who], (r.status, r.body)
    if r.status >= 400:
        assert "error" in r.body


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/instances/s-own/meta/public/k"), ("DELETE", "/instances/s-own/meta/public/k"),
    ("POST", "/instances/s-own/disable")])
async def test_guest_write_endpoints_only_for_the_signed_bound_node(api: Api, method: str,
                                                                   path: str) -> None:
    scene = await _scene(api)
    assert (await api.call("PATCH", "/v1/servers/s-own", scene.owner,
                           json_body={"guest_writes": True})).status == 200
    assert (await api.call("PATCH", "/v1/servers/s-own/metadata/public", scene.owner,
                           json_body={"k": "v"})).status == 200
    full = "/v1/nodes/node-a" + path
    for token in (ADMIN, scene.owner, scene.other):  # owner API tokens are no node's
        r = await api.call(method, full, token, data="x")
        assert r.status == 403, (token, r.body)
    assert (await api.call(method, full, NODE_A, data="x")).status == 401  # unsigned
    r = await api.node(method, "node-a", path, "s-other", data="x")  # signed for another
    assert r.status == 401
    assert (await api.node(method, "node-b", path, "s-own", data="x")).status == 403
    r = await api.node(method, "node-a", path, "s-own", data="x")
    assert r.status == 204, r.body


async def test_guest_put_refused_without_guest_writes(api: Api) -> None:
    await _scene(api)
    r = await api.node("PUT", "node-a", "/instances/s-own/meta/restricted/k", "s-own",
                       data="x")
    assert r.status == 403 and "guest writes" in r.body["error"]
    doc = await api.document("s-own")
    assert "k" not in doc["meta"]["server"]["restricted"]
