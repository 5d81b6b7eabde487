"""The main path: create a customer and a server, a node reads its document."""

from __future__ import annotations

import base64

from interceptor.formats.document import validate_document
from tests.backend.support import Api


async def test_server_document_through_node(api: Api) -> None:
    await api.customer("c1")
    ud = base64.b64encode(b"#cloud-config\n").decode()
    await api.server("s1", "c1", ssh_keys=[{"name": "k", "key": "ssh-ed25519 AAAA k"}],
                     user_data=[{"name": "user", "content_type": "text/cloud-config",
                                 "data": ud}])
    bindings = await api.node("GET", "node-a", "/bindings")
    assert bindings.status == 200
    (item,) = bindings.body["bindings"]
    assert isinstance(item.pop("generation"), int)
    assert item == {"ifname": "tap0", "mac": None, "instance_id": "s1",
                    "metadata_enabled": True}
    doc = validate_document(await api.document("s1"))
    assert doc["hostname"] == "s1"
    assert doc["node"] == "node-a"
    assert doc["ssh_keys"] == [{"name": "k", "key": "ssh-ed25519 AAAA k"}]
    assert doc["user_data"][0]["data_b64"] == ud
    assert doc["meta"]["server"]["system"]["id"] == "s1"
    first = await api.node("GET", "node-a", "/instances/s1/document", "s1")
    assert first.etag.startswith(f'"{doc["revision"]}-')
    r = await api.node("GET", "node-a", "/instances/s1/document", "s1",
                       headers={"If-None-Match": first.etag})
    assert r.status == 304
