"""cloud-init reads keypairs, customer ``sshkeys`` and the merged user-data (issue 12).

Debian's cloud-init (system Python) in a guest namespace, against the live
product on the nft datapath. The server names a keypair the customer
uploaded, the customer has platform ``sshkeys``, its image contributes a
user-data part and the server has its own: cloud-init's EC2, OpenStack and
NoCloud readers must find every key, and its user-data processor must find
the image's part first, then the server's, as the API's document has them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conformance.support import api_parts, client_parts, crawl
from tests.e2e.stack import ProductStack, get, product
from tests.lab import Guest, Topology, mac_of

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.conformance]

KEYPAIR = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxFqGk6JmrTJ3N3pCZTjI4PbnPf2Gr0c7bT"
           "XxY2e2fE laptop@ci")
OPS_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGSc3FqdDlm1lGlv1fW6eNfJ3hzk5KbXc7kE"
           "1Mv1Aa9d ops@ci")
IMAGE_PART = b"#cloud-config\napt:\n  primary:\n  - arches: [default]\n    uri: http://mirror.ci/\n"
SERVER_PART = b"#!/bin/sh\necho from-the-owner > /run/owner\n"


@dataclass
class World:
    stack: ProductStack
    guest: Guest


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    topo = Topology()
    try:
        with product(topo, datapath="nft") as stack:
            guest = topo.add_guest(ip="10.22.0.5/24")
            stack.ensure_customer("cust-ci")
            status, body = stack.api("POST", "/v1/customers/cust-ci/keypairs",
                                     {"name": "laptop", "public_key": KEYPAIR})
            assert status == 201, body
            status, body = stack.api("PATCH", "/v1/customers/cust-ci/metadata/system",
                                     {"sshkeys": {"ops": [OPS_KEY]}})
            assert status == 200, body
            status, body = stack.api("POST", "/v1/images",
                                     {"id": "img-ci", "visibility": "public"})
            assert status == 201, body
            status, body = stack.api("PUT", "/v1/images/img-ci/user-data", {"user_data": [
                {"name": "mirror.cfg", "content_type": "text/cloud-config",
                 "data": base64.b64encode(IMAGE_PART).decode()}]})
            assert status == 200, body
            stack.put_server("i-ci-model", hostname="ci-model", ifname=guest.tap,
                             customer="cust-ci", image_id="img-ci", key_names=["laptop"],
                             user_data=[{"name": "owner.sh",
                                         "content_type": "text/x-shellscript",
                                         "data": base64.b64encode(SERVER_PART).decode()}],
                             network={"interfaces": [{
                                 "name": "eth0", "mac": mac_of(guest.netns, "eth0"),
                                 "addresses": [{"address": "10.22.0.5", "prefix": 24}]}]})
            deadline = time.monotonic() + 15
            while get(guest, "/openstack", max_time=1.0)[0] != 200:
                assert time.monotonic() < deadline, "guest not served"
                time.sleep(0.1)
            yield World(stack, guest)
    finally:
        topo.close()


def _check(world: World, result: dict[str, object]) -> None:
    doc = world.stack.document("i-ci-model")
    assert [k["key"] for k in doc["ssh_keys"]] == [KEYPAIR, OPS_KEY]
    assert result["public_keys"] == sorted([KEYPAIR, OPS_KEY])
    assert api_parts(doc) == [("text/cloud-config", IMAGE_PART),
                              ("text/x-shellscript", SERVER_PART)]
    assert client_parts(result) == api_parts(doc)
    assert [p["filename"] for p in result["userdata_parts"]] == [  # type: ignore[attr-defined]
        "mirror.cfg", "owner.sh"]


@pytest.mark.parametrize("mode", ["token", "tokenless"])
def test_ec2_reader(world: World, mode: str) -> None:
    _check(world, crawl(world.guest, "crawl_ec2.py", mode))


def test_openstack_reader(world: World) -> None:
    result = crawl(world.guest, "crawl_openstack.py")
    _check(world, result)
    assert result["metadata"]["keys"] == [
        {"name": "laptop", "type": "ssh", "data": KEYPAIR},
        {"name": "ops", "type": "ssh", "data": OPS_KEY}]


def test_nocloud_reader(world: World) -> None:
    result = crawl(world.guest, "crawl_nocloud.py")
    _check(world, result)
    assert result["metadata"]["ami-id"] == "img-ci"
