"""EC2 surface, crawled with cloud-init's own EC2 metadata reader."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudinit import helpers as ci_helpers
from cloudinit import sources as ci_sources
from cloudinit import user_data as ci_user_data
from cloudinit.sources import DataSourceEc2
from cloudinit.sources.helpers import ec2 as ci_ec2

from interceptor.formats import ec2
from interceptor.formats.document import InstanceDocument, decode_b64
from interceptor.formats.router import render_path

Fetch = Callable[[InstanceDocument, str], bytes]
BASE = "http://169.254.169.254"


def crawl(doc: InstanceDocument, fetch: Fetch, version: str, tree: str) -> dict[str, Any]:
    url = f"{BASE}/{version}/{tree}"
    materializer = ci_ec2.MetadataMaterializer(fetch(doc, url), url, lambda u: fetch(doc, u))
    result = materializer.materialize()
    assert isinstance(result, dict)
    return result


def test_cloud_init_crawl_of_normal_doc(load_doc: Callable[[str], InstanceDocument],
                                        fetcher: Fetch) -> None:
    doc = load_doc("normal")
    md = crawl(doc, fetcher, "latest", "meta-data/")
    assert md["instance-id"] == "i-0123456789abcdef0"
    assert md["ami-id"] == "img-1"
    assert md["ami-launch-index"] == "0"
    assert md["hostname"] == md["local-hostname"] == "vm1"
    assert md["instance-type"] == "m1.small"
    assert md["local-ipv4"] == "10.0.0.5"
    assert md["mac"] == "52:54:00:12:34:56"
    assert md["placement"] == {"availability-zone": "us-east-1a", "region": "us-east-1"}
    assert md["tags"] == {"instance": {"role": "web", "Name": "vm one"}}
    keys = ci_sources.normalize_pubkey_data(md["public-keys"])
    assert sorted(keys) == sorted(k["key"] for k in doc["ssh_keys"])
    eth0 = md["network"]["interfaces"]["macs"]["52:54:00:12:34:56"]
    assert eth0["local-ipv4s"] == ["10.0.0.5", "10.0.0.6"]
    assert eth0["subnet-ipv4-cidr-block"] == "10.0.0.0/24"
    assert eth0["device-number"] == "0"
    assert eth0["ipv6s"] == "2001:db8::5"
    eth1 = md["network"]["interfaces"]["macs"]["52:54:00:ab:cd:ef"]
    assert eth1["device-number"] == "1"
    assert "local-ipv4s" not in eth1


def test_cloud_init_network_config_from_crawl(load_doc: Callable[[str], InstanceDocument],
                                              fetcher: Fetch) -> None:
    md = crawl(load_doc("normal"), fetcher, "2021-03-23", "meta-data/")
    netcfg = DataSourceEc2.convert_ec2_metadata_network_config(
        md["network"], macs_to_nics={"52:54:00:12:34:56": "ens3", "52:54:00:ab:cd:ef": "ens4"}
    )
    assert netcfg["ethernets"]["ens3"]["addresses"] == ["10.0.0.6/24"]
    assert netcfg["ethernets"]["ens3"]["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert netcfg["ethernets"]["ens4"]["dhcp4"] is True


@pytest.mark.parametrize("version", [*ec2.VERSIONS, "latest"])
def test_every_version_crawls(any_doc: InstanceDocument, fetcher: Fetch, version: str) -> None:
    md = crawl(any_doc, fetcher, version, "meta-data/")
    assert md["instance-id"] == any_doc["instance_id"]
    assert ("tags" in md) == (version in ("2021-03-23", "latest") and any_doc["tags_visible"])
    assert ("network" in md) == (version != "2009-04-04")


def test_identity_document(any_doc: InstanceDocument, fetcher: Fetch) -> None:
    identity = crawl(any_doc, fetcher, "latest", "dynamic/instance-identity")
    document = identity["document"]
    assert document["instanceId"] == any_doc["instance_id"]
    assert document["accountId"] == any_doc["customer_id"]
    assert document["imageId"] == any_doc["image_id"]
    assert document["instanceType"] == any_doc["instance_type"]
    assert document["availabilityZone"] == any_doc["availability_zone"]
    assert document["version"] == ec2.IDENTITY_VERSION
    assert "region" in document and "privateIp" in document
    body = render_path(any_doc, "/latest/dynamic/instance-identity/document").body
    assert json.loads(body) == document


def test_hostile_doc_crawls_without_breaking_listings(load_doc: Callable[[str], InstanceDocument],
                                                      fetcher: Fetch) -> None:
    doc = load_doc("hostile")
    md = crawl(doc, fetcher, "latest", "meta-data/")
    assert md["hostname"] == "host_name"  # a newline cannot split the leaf into a list
    # four keys, each reachable under its own (sanitised, unique) name
    assert len(md["public-keys"]) == 4
    assert set(md["public-keys"]) == {"evil_name=1", "key-1", "dup", "dup-3"}
    assert md["tags"] == {"instance": {"a": "b"}}
    assert md["local-ipv4"] == "10.9.9.9"  # malformed addresses are skipped


def test_tag_keys_that_cannot_be_paths_are_left_out(load_doc: Callable[[str], InstanceDocument]
                                                    ) -> None:
    doc = load_doc("normal")
    listing = render_path(doc, "/latest/meta-data/tags/instance/").body.decode().splitlines()
    assert listing == ["role", "Name"]
    doc["tags_visible"] = False
    assert render_path(doc, "/latest/meta-data/tags/instance/").status == 404
    assert "tags/" not in render_path(doc, "/latest/meta-data/").body.decode().splitlines()


def test_user_data_through_cloud_init(load_doc: Callable[[str], InstanceDocument],
                                      fetcher: Fetch, tmp_path: Path) -> None:
    doc = load_doc("normal")
    body = fetcher(doc, f"{BASE}/latest/user-data")
    paths = ci_helpers.Paths({"cloud_dir": str(tmp_path)})
    message = ci_user_data.UserDataProcessor(paths).process(body)
    parts = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert [p.get_payload(decode=True) for p in parts] == [
        decode_b64(part["data_b64"]) for part in doc["user_data"]
    ]
    assert [p.get_filename() for p in parts] == ["user", "platform.sh"]


def test_user_data_404_is_no_user_data_for_cloud_init(load_doc: Callable[[str], InstanceDocument]
                                                      ) -> None:
    from cloudinit import url_helper

    doc = load_doc("empty")
    result = render_path(doc, "/latest/user-data")
    assert result.status == 404
    assert url_helper.NOT_FOUND == 404 and 404 in ci_ec2.SKIP_USERDATA_CODES


def test_max_user_data_is_served_whole(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("max")
    body = render_path(doc, "/latest/user-data").body
    assert body == decode_b64(doc["user_data"][0]["data_b64"])
    assert len(body) == 64 * 1024


def test_undecodable_only_part_is_listed_but_404(load_doc: Callable[[str], InstanceDocument]
                                                 ) -> None:
    doc = load_doc("empty")
    doc["user_data"] = [{"name": "x", "content_type": "text/plain", "data_b64": "@@"}]
    assert "user-data" in render_path(doc, "/latest/").body.decode().splitlines()
    assert render_path(doc, "/latest/user-data").status == 404
    assert render_path(doc, "/openstack/latest/user_data").status == 404


def test_meta_data_tree_api(load_doc: Callable[[str], InstanceDocument]) -> None:
    tree = ec2.meta_data_tree(load_doc("normal"), "2009-04-04")
    assert "network" not in tree.children and "tags" not in tree.children
    assert "instance-id" in tree.children
