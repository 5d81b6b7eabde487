"""OpenStack surface, read with cloud-init's own OpenStack metadata reader."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cloudinit import sources as ci_sources
from cloudinit.sources.helpers import openstack as ci_openstack

from interceptor.formats import openstack
from interceptor.formats.document import InstanceDocument, decode_b64, merged_meta
from interceptor.formats.router import render_path

Fetch = Callable[[InstanceDocument, str], bytes]
BASE = "http://169.254.169.254"


def read_v2(doc: InstanceDocument, fetch: Fetch) -> dict[str, Any]:
    """cloud-init's MetadataReader.read_v2 with our renderer as the transport."""

    class Reader(ci_openstack.MetadataReader):  # type: ignore[misc]
        def _path_read(self, path: str, decode: bool = False) -> Any:
            body = fetch(doc, path)
            return body.decode() if decode else body

        def _read_ec2_metadata(self) -> dict[str, Any]:
            return {}

    result = Reader(BASE).read_v2()
    assert isinstance(result, dict)
    return result


def test_cloud_init_reads_normal_doc(load_doc: Callable[[str], InstanceDocument],
                                     fetcher: Fetch) -> None:
    doc = load_doc("normal")
    result = read_v2(doc, fetcher)
    md = result["metadata"]
    assert md["uuid"] == md["instance-id"] == doc["instance_id"]
    assert md["hostname"] == md["local-hostname"] == "vm1"
    assert md["project_id"] == "c-1"
    assert md["availability_zone"] == "us-east-1a"
    assert md["launch_index"] == 0
    assert md["devices"] == []
    assert md["public_keys"] == {k["name"]: k["key"] for k in doc["ssh_keys"]}
    assert md["keys"] == [{"name": k["name"], "type": "ssh", "data": k["key"]}
                          for k in doc["ssh_keys"]]
    # merged image < customer < server < runtime, public + restricted, strings only
    assert md["meta"]["role"] == "server-role"
    assert md["meta"]["os"] == "debian"
    assert md["meta"]["budget"] == "100"
    assert md["meta"]["secret-ish"] == "visible to vm"
    assert md["meta"]["cpus"] == "4"
    assert json.loads(md["meta"]["flags"]) == {"a": [1, 2]}
    assert "default_username" not in md["meta"] and "sshkeys" not in md["meta"]
    assert all(isinstance(v, str) for v in md["meta"].values())
    assert "random_seed" not in md
    # injected files come through content_path
    assert result["files"] == {f["path"]: decode_b64(f["data_b64"]) for f in doc["files"]}
    assert result["vendordata"] == doc["vendor_data"]["static"]
    assert result["vendordata2"] == doc["vendor_data"]["dynamic"]
    vendor = ci_sources.convert_vendordata(result["vendordata"])
    assert vendor == "#cloud-config\npackages: [htop]\n"
    assert result["userdata"] == render_path(doc, "/latest/user-data").body
    assert result["networkdata"]["links"][0]["ethernet_mac_address"] == "52:54:00:12:34:56"


def test_public_keys_through_cloud_init(load_doc: Callable[[str], InstanceDocument],
                                        fetcher: Fetch) -> None:
    doc = load_doc("normal")
    md = read_v2(doc, fetcher)["metadata"]
    keys = ci_sources.normalize_pubkey_data(md["public_keys"])
    assert sorted(keys) == sorted(k["key"] for k in doc["ssh_keys"])


def test_cloud_init_reads_every_doc(any_doc: InstanceDocument, fetcher: Fetch) -> None:
    result = read_v2(any_doc, fetcher)
    assert result["metadata"]["instance-id"] == any_doc["instance_id"]
    assert result["userdata"] == (render_path(any_doc, "/latest/user-data").body
                                  if any_doc["user_data"] else "")


def test_meta_values_flattened(any_doc: InstanceDocument) -> None:
    meta = json.loads(render_path(any_doc, "/openstack/latest/meta_data.json").body)["meta"]
    merged = merged_meta(any_doc)
    assert set(meta) == set(merged)
    for key, value in merged.items():
        assert meta[key] == value if isinstance(value, str) else json.loads(meta[key]) == value


def test_undecodable_file_is_not_announced(load_doc: Callable[[str], InstanceDocument],
                                           fetcher: Fetch) -> None:
    doc = load_doc("hostile")
    assert json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)["files"] == []
    assert read_v2(doc, fetcher)["files"] == {}


def test_content_paths_are_positional(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    files = json.loads(render_path(doc, "/openstack/latest/meta_data.json").body)["files"]
    assert files == [{"path": "/etc/motd", "content_path": "/content/0000"},
                     {"path": "/etc/app/blob.bin", "content_path": "/content/0001"}]
    assert render_path(doc, "/openstack/content/0001").body == bytes(range(256))


@pytest.mark.parametrize("version", openstack.VERSIONS)
def test_cloud_init_picks_each_version(load_doc: Callable[[str], InstanceDocument],
                                       fetcher: Fetch, version: str) -> None:
    """Offer only one version (by trimming the list) and cloud-init still reads it."""
    doc = load_doc("normal")

    def only(doc: InstanceDocument, url: str) -> bytes:
        if url.rstrip("/") == f"{BASE}/openstack":
            return f"{version}\nlatest".encode()
        return fetcher(doc, url)

    result = read_v2(doc, only)
    assert result["metadata"]["uuid"] == doc["instance_id"]
    assert ("networkdata" in result) == (version >= "2015-10-15")
    assert ("vendordata2" in result) == (version >= "2016-10-06")


def test_password(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    assert render_path(doc, "/openstack/latest/password").body == b"s3cret-from-guest"
    doc["password"] = None
    assert render_path(doc, "/openstack/latest/password").body == b""
    unicode = load_doc("unicode")
    assert render_path(unicode, "/openstack/latest/password").body == "pässwörd".encode()


def test_network_data_converts_with_cloud_init(load_doc: Callable[[str], InstanceDocument]
                                               ) -> None:
    doc = load_doc("normal")
    network_json = json.loads(render_path(doc, "/openstack/latest/network_data.json").body)
    config = ci_openstack.convert_net_json(
        network_json, known_macs={"52:54:00:12:34:56": "ens3", "52:54:00:ab:cd:ef": "ens4"}
    )
    assert config["version"] == 1
    phys = {c["name"]: c for c in config["config"] if c["type"] == "physical"}
    assert set(phys) == {"ens3", "ens4"}
    assert phys["ens3"]["mtu"] == 1500
    static = [s for s in phys["ens3"]["subnets"] if s["type"] == "static"]
    assert [(s["address"], s["netmask"]) for s in static] == [
        ("10.0.0.5", "255.255.255.0"), ("10.0.0.6", "255.255.255.0")]
    assert static[0]["routes"][0]["gateway"] == "10.0.0.1"
    assert static[0]["dns_nameservers"] == ["10.0.0.1", "9.9.9.9"]
    assert static[0]["dns_search"] == ["example.internal"]
    assert [s["type"] for s in phys["ens3"]["subnets"]] == ["static", "static", "static6"]
    assert [s["type"] for s in phys["ens4"]["subnets"]] == ["dhcp4"]
    nameservers = [c for c in config["config"] if c["type"] == "nameserver"]
    assert [n["address"] for n in nameservers] == ["10.0.0.1", "9.9.9.9"]
