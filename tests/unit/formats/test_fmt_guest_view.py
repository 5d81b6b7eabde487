"""The ``/interceptor/v1/`` read-back surface, final keys and the key lists."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from interceptor.formats.document import InstanceDocument, merged_meta, validate_document
from interceptor.formats.router import render_path
from interceptor.formats.xml_metadata import decode_keys, decode_xml

Load = Callable[[str], InstanceDocument]


def test_listing_and_parts_by_name(load_doc: Load) -> None:
    doc = load_doc("normal")
    assert render_path(doc, "/interceptor").body == b"v1"
    assert render_path(doc, "/interceptor/v1/").body == b"guest-data/\nmeta/\nuser-data/"
    assert render_path(doc, "/interceptor/v1/user-data").body == b"user\nplatform.sh"
    for part in doc["user_data"]:
        got = render_path(doc, f"/interceptor/v1/user-data/{part['name']}")
        assert got.status == 200 and got.content_type == part["content_type"]
        assert got.body == base64.b64decode(part["data_b64"])
    assert render_path(doc, "/interceptor/v1/user-data/nope").status == 404
    assert render_path(doc, "/interceptor/v2/").status == 404


def test_guest_data_read_back(load_doc: Load) -> None:
    doc = load_doc("normal")
    doc["guest_data"] = {"result": "ok", "multi": "a\nb"}
    assert render_path(doc, "/interceptor/v1/guest-data/").body == b"result\nmulti"
    assert render_path(doc, "/interceptor/v1/guest-data/multi").body == b"a\nb"
    doc["guest_data"] = {}
    assert render_path(doc, "/interceptor/v1/guest-data/").body == b""


def test_meta_merged_with_final_keys(load_doc: Load) -> None:
    doc = load_doc("normal")
    # The server tries to override the image's final "mirror": the image wins.
    assert doc["meta"]["server"]["restricted"]["mirror"] != \
        doc["meta"]["image"]["restricted"]["mirror"]
    assert merged_meta(doc)["mirror"] == "http://mirror.example/debian"
    assert render_path(doc, "/interceptor/v1/meta/restricted/mirror").body == \
        b"http://mirror.example/debian"
    os_meta = json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)["meta"]
    assert os_meta["mirror"] == "http://mirror.example/debian"
    assert render_path(doc, "/interceptor/v1/meta/public/role").body == b"server-role"
    assert render_path(doc, "/interceptor/v1/meta/public/flags").body == b'{"a":[1,2]}'
    listing = render_path(doc, "/interceptor/v1/meta/public/").body.decode().splitlines()
    assert set(listing) == set(merged_meta(doc, ("public",)))
    assert render_path(doc, "/interceptor/v1/meta/private/").status == 404
    assert render_path(doc, "/interceptor/v1/meta/system/").status == 404
    # Without final_keys (an older backend), the server's value wins as before.
    del doc["final_keys"]
    assert merged_meta(validate_document(doc))["mirror"] == "http://attempted-override.example"


def test_xml_lists_every_key_with_its_user(load_doc: Load) -> None:
    doc = load_doc("normal")
    body = render_path(doc, "/metadata").body
    assert decode_keys(body) == [
        {"name": k["name"], "key": k["key"], **({"user": k["user"]} if "user" in k else {})}
        for k in doc["ssh_keys"]]
    assert decode_xml(body)["image"]["restricted"] == doc["meta"]["image"]["restricted"]


def test_every_doc_renders_the_new_paths(any_doc: InstanceDocument) -> None:
    for path in ("/interceptor/v1/user-data/", "/interceptor/v1/guest-data/",
                 "/interceptor/v1/meta/public/", "/interceptor/v1/meta/restricted/",
                 "/nocloud/meta-data", "/metadata"):
        assert render_path(any_doc, path).status == 200, path
    for part in any_doc["user_data"]:
        name = part["name"]
        if name and "/" not in name and name.isprintable():
            assert render_path(any_doc, f"/interceptor/v1/user-data/{name}").status in (200, 404)
