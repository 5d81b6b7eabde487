"""NoCloud seed files, read with cloud-init's own seed reader and parsers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudinit import helpers as ci_helpers
from cloudinit import url_helper, util
from cloudinit import user_data as ci_user_data

from interceptor.formats import nocloud
from interceptor.formats.document import InstanceDocument, decode_b64, encode_b64
from interceptor.formats.router import render_path

Fetch = Callable[[InstanceDocument, str], bytes]
SEED = "http://169.254.169.254/nocloud/"


def read_seeded(doc: InstanceDocument, fetch: Fetch, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[Any, Any, Any]:
    """cloud-init's ``util.read_seeded`` (what ``ds=nocloud;s=…`` runs), our renderer
    as the transport. A 404 raises, exactly as cloud-init's reader does."""

    def read_file_or_url(url: str, **_: Any) -> url_helper.StringResponse:
        return url_helper.StringResponse(fetch(doc, url))

    monkeypatch.setattr(url_helper, "read_file_or_url", read_file_or_url)
    return util.read_seeded(SEED, timeout=None)  # type: ignore[no-any-return]


def test_seed_of_normal_doc(load_doc: Callable[[str], InstanceDocument], fetcher: Fetch,
                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doc = load_doc("normal")
    md, ud, vd = read_seeded(doc, fetcher, monkeypatch)
    assert md == {
        "instance-id": "i-0123456789abcdef0",
        "local-hostname": "vm1",
        "hostname": "vm1",
        "availability-zone": "us-east-1a",
        "region": "us-east-1",
        "ami-id": "img-1",
        "launch-index": 0,
        "public-keys": [k["key"] for k in doc["ssh_keys"]],
        "tags": ["role=web", "Name=vm one", "bad/key=x", "0=key=y"],
    }
    assert ud == render_path(doc, "/latest/user-data").body
    paths = ci_helpers.Paths({"cloud_dir": str(tmp_path)})
    vendor = ci_user_data.UserDataProcessor(paths).process(vd)
    payloads = [p.get_payload(decode=True) for p in vendor.walk() if not p.is_multipart()]
    assert payloads == [b"#cloud-config\npackages: [htop]\n", b"#!/bin/sh\necho dynamic\n"]
    types = [p.get_content_type() for p in vendor.walk() if not p.is_multipart()]
    assert types == ["text/cloud-config", "text/x-shellscript"]  # detected by cloud-init


def test_seed_of_every_doc(any_doc: InstanceDocument, fetcher: Fetch,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    md, ud, vd = read_seeded(any_doc, fetcher, monkeypatch)
    assert md["instance-id"] == any_doc["instance_id"]
    assert md["local-hostname"] == any_doc["hostname"]
    assert isinstance(ud, bytes) and isinstance(vd, bytes)


def test_no_user_data_is_an_empty_200(load_doc: Callable[[str], InstanceDocument],
                                      tmp_path: Path) -> None:
    doc = load_doc("empty")
    result = render_path(doc, "/nocloud/user-data")
    assert (result.status, result.body) == (200, b"")
    paths = ci_helpers.Paths({"cloud_dir": str(tmp_path)})
    message = ci_user_data.UserDataProcessor(paths).process(result.body)
    assert all(not p.get_payload() for p in message.walk() if not p.is_multipart())


def test_single_vendor_part_is_served_as_is(load_doc: Callable[[str], InstanceDocument]
                                            ) -> None:
    doc = load_doc("normal")
    del doc["vendor_data"]["dynamic"]["cloud-init"]
    assert nocloud.vendor_data(doc) == b"#cloud-config\npackages: [htop]\n"
    doc["vendor_data"]["static"]["cloud-init"] = ["#!/bin/sh\necho a\n", 7, "#!/bin/sh\necho b\n"]
    assert b"multipart/mixed" in nocloud.vendor_data(doc)
    doc["vendor_data"]["static"] = {"cloud-init": {"nested": "dict"}}
    assert nocloud.vendor_data(doc) == b""


def test_network_config_v1_parses_with_cloud_init(any_doc: InstanceDocument) -> None:
    from cloudinit.net import network_state

    result = render_path(any_doc, "/nocloud/network-config")
    if not any_doc["network"]["interfaces"]:
        assert result.status == 404
        return
    config = util.load_yaml(result.body)
    assert config["version"] == 1
    state = network_state.parse_net_config_data(config, skip_broken=False)
    names = {iface["name"] for iface in state.iter_interfaces()}
    assert names == {i["name"] for i in any_doc["network"]["interfaces"]}


def test_network_config_v2_seed_parses_with_cloud_init(any_doc: InstanceDocument) -> None:
    from cloudinit.net import network_state

    result = render_path(any_doc, "/nocloud/v2/network-config")
    if not any_doc["network"]["interfaces"]:
        assert result.status == 404
        return
    config = util.load_yaml(result.body)
    assert config["version"] == 2
    state = network_state.parse_net_config_data(config, skip_broken=False)
    assert {i["name"] for i in state.iter_interfaces()} >= {
        i["name"] for i in any_doc["network"]["interfaces"]}
    # The rest of the v2 seed is the same seed.
    for name in ("meta-data", "user-data", "vendor-data"):
        assert render_path(any_doc, f"/nocloud/v2/{name}") == render_path(
            any_doc, f"/nocloud/{name}")


def test_meta_data_survives_hostile_strings(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("hostile")
    doc["hostname"] = "yes"  # YAML 1.1 would read a bare yes as True
    doc["instance_id"] = "0x10: {a: [b]} # c\n- d"
    md = yaml.safe_load(render_path(doc, "/nocloud/meta-data").body)
    assert md["local-hostname"] == "yes"
    assert md["instance-id"] == doc["instance_id"]
    assert md["public-keys"][0] == "ssh-rsa AAAA\nsecond-line"


def test_meta_data_unicode(load_doc: Callable[[str], InstanceDocument]) -> None:
    body = render_path(load_doc("unicode"), "/nocloud/meta-data").body
    assert "vm-ü".encode() in body  # readable, not escaped
    assert yaml.safe_load(body)["local-hostname"] == "vm-ü"


def test_user_data_single_part_as_is(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("unicode")
    first = decode_b64(doc["user_data"][0]["data_b64"])
    assert render_path(doc, "/nocloud/user-data").body == first
    doc["user_data"].append({"name": "b", "content_type": "text/x-shellscript",
                             "data_b64": encode_b64(b"#!/bin/sh\n")})
    assert render_path(doc, "/nocloud/user-data").body.startswith(b"Content-Type: multipart/mixed")


def test_meta_data_with_lone_surrogate_is_valid_utf8(
        load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["hostname"] = "a\ud800b"
    result = render_path(doc, "/nocloud/meta-data")
    assert result.status == 200
    assert yaml.safe_load(result.body.decode("utf-8"))["local-hostname"].startswith("a")


@pytest.mark.parametrize("hostname", ["yes", "~", "- x", "a: b", "%x", "@x", "'\"", "1e3",
                                      "a\x00b\x85c\u2028", "\ufeffbom", "🚀", ""])
def test_meta_data_strings_round_trip(load_doc: Callable[[str], InstanceDocument],
                                      hostname: str) -> None:
    doc = load_doc("normal")
    doc["hostname"] = hostname
    md = util.load_yaml(render_path(doc, "/nocloud/meta-data").body)
    assert md["local-hostname"] == hostname


def test_meta_data_ami_region_tags_follow_the_document(
        load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["image_id"], doc["tags_visible"], doc["availability_zone"] = None, False, "zone-b"
    md = yaml.safe_load(render_path(doc, "/nocloud/meta-data").body)
    assert "ami-id" not in md and "tags" not in md
    assert md["region"] == "zone-b"  # a zone not in AWS style is its own region
