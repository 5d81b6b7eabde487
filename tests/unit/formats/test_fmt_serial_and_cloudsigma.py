"""The serial channel's meta-data JSON and CloudSigma's server context: the same
values as the HTTP surfaces, from the same document."""

from __future__ import annotations

import base64
from collections.abc import Callable

import yaml

from interceptor.formats import cloudsigma, ec2, nocloud
from interceptor.formats.document import InstanceDocument
from interceptor.formats.router import render_path


def test_meta_data_json_matches_the_http_meta_data(any_doc: InstanceDocument) -> None:
    served = yaml.safe_load(render_path(any_doc, "/nocloud/meta-data").body)
    serial = nocloud.meta_data_json(any_doc)
    for key in ("instance-id", "local-hostname", "hostname", "availability-zone"):
        assert serial[key] == served[key]
    assert serial["public-keys"] == served.get("public-keys", [])
    assert serial["ami-id"] == any_doc["image_id"]
    region = render_path(any_doc, "/latest/meta-data/placement/region")
    assert serial["region"] == region.body.decode()


def test_tags_only_when_visible(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["tags"] = {"role": "web", "flag": ""}
    doc["tags_visible"] = True
    assert nocloud.meta_data_json(doc)["tags"] == ["role=web", "flag"]
    doc["tags_visible"] = False
    assert nocloud.meta_data_json(doc)["tags"] == []


def test_a_source_region_wins_everywhere(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["availability_zone"] = "us-east1-a"
    assert nocloud.meta_data_json(doc)["region"] == "us-east1-a"
    doc["region"] = "us-east1"
    assert nocloud.meta_data_json(doc)["region"] == "us-east1"
    assert ec2.identity_document(doc)["region"] == "us-east1"
    assert render_path(doc, "/latest/meta-data/placement/region").body == b"us-east1"


def test_server_context(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["meta"]["server"]["public"]["ssh_public_key"] = "forged"
    doc["meta"]["server"]["public"]["size"] = 3
    context = cloudsigma.server_context(doc)
    assert context["uuid"] == doc["instance_id"] and context["name"] == doc["hostname"]
    meta = context["meta"]
    assert meta["ssh_public_key"] != "forged" and meta["size"] == "3"
    assert meta["ssh_public_key"].splitlines() == [k["key"] for k in doc["ssh_keys"]]
    assert meta["base64_fields"] == "cloudinit-user-data"
    assert base64.b64decode(meta["cloudinit-user-data"]) == render_path(
        doc, "/latest/user-data").body
    assert context["vendor_data"]["cloudinit"] == render_path(
        doc, "/nocloud/vendor-data").body.decode()
    assert cloudsigma.lookup(context, ["meta", "size"]) == "3"
    assert cloudsigma.lookup(context, ["meta", "size", "deeper"]) is None


def test_server_context_of_every_document(any_doc: InstanceDocument) -> None:
    context = cloudsigma.server_context(any_doc)
    assert "private" not in repr(context).lower() or "private" in repr(any_doc).lower()
    assert set(context) == {"name", "uuid", "meta", "vendor_data"}
