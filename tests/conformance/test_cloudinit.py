"""cloud-init as a real client (issue 4, acceptance 1).

Debian's cloud-init 22.4 runs with the system Python inside a guest
namespace, against the live product (backend + node daemon, nft datapath,
a veth "tap"): its EC2 crawl with and without IMDSv2 tokens, its OpenStack
crawl and its NoCloud-net seed read. Whatever cloud-init parsed is compared
with what the REST API holds for the instance (``/v1/servers/{id}/document``):
instance id, hostname, SSH keys, user-data (one part, and two named parts as
multipart), vendor data (a static file and a dynamic target served by a real
HTTP server in the node namespace) and the network configuration.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.support import (
    HERE,
    SYSTEM_PYTHON,
    api_network_facts,
    api_parts,
    client_parts,
    crawl,
    unb64,
    v1_facts,
    vendor_target,
)
from tests.e2e.stack import ProductStack, get, metric, product
from tests.lab import Guest, Topology, mac_of

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.conformance]

SERVICE_TOKEN = "vendor-service-token-e2e"
TARGET_PORT = 8799
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConformanceKeyAlice alice@example"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQConformanceKeyBob bob@example"
CLOUD_CONFIG = b"#cloud-config\nhostname: ci-multi\npackages: [htop]\n"
SCRIPT = b"#!/bin/sh\necho 'hello from part two' > /run/part-two\n"
SINGLE = b"#cloud-config\nruncmd:\n- [touch, /run/single]\n"
STATIC_VENDOR = {"cloud-init": "#cloud-config\nbootcmd:\n- [echo, static-vendor]\n",
                 "site": {"name": "e2e", "tier": 2}}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class World:
    stack: ProductStack
    multi: Guest  # two named user-data parts, tokens optional
    single: Guest  # one user-data part, tokens required


def _network(mac: str, ip: str) -> dict[str, Any]:
    return {"interfaces": [{"name": "eth0", "mac": mac, "mtu": 1500,
                            "addresses": [{"address": ip, "prefix": 24}],
                            "gateway4": "10.20.0.1", "nameservers": ["10.20.0.53"],
                            "search": ["ci.example"]}]}


def _wait_served(guest: Guest, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = get(guest, "/openstack", max_time=1.0)[0]
        if status in (200, 401):  # 401: token required, but served
            return
        time.sleep(0.1)
    raise AssertionError(f"guest {guest.netns} not served (last status {status})")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("conformance tests need root (network namespaces, nft)")
    static: Path = tmp_path_factory.mktemp("vendor") / "static.json"
    static.write_text(json.dumps(STATIC_VENDOR))
    topo = Topology()
    try:
        with vendor_target(topo.node, TARGET_PORT, "echo", SERVICE_TOKEN), product(
                topo, datapath="nft", backend_options={
                    "vendordata_static_files": [str(static)],
                    "vendordata_dynamic_targets": [
                        f"dyn@http://127.0.0.1:{TARGET_PORT}/vendor"],
                    "vendordata_service_token": SERVICE_TOKEN}) as stack:
            multi = topo.add_guest(ip="10.20.0.5/24")
            single = topo.add_guest(ip="10.20.0.6/24")
            stack.put_server(
                "i-ci-multi", hostname="ci-multi", ifname=multi.tap,
                ssh_keys=[{"name": "alice", "key": KEY_A}, {"name": "bob", "key": KEY_B}],
                user_data=[
                    {"name": "config.yaml", "content_type": "text/cloud-config",
                     "data": _b64(CLOUD_CONFIG)},
                    {"name": "part-two.sh", "content_type": "text/x-shellscript",
                     "data": _b64(SCRIPT)}],
                files=[{"path": "/etc/ci-motd", "data": _b64(b"injected file\n")}],
                network=_network(mac_of(multi.netns, "eth0"), "10.20.0.5"),
                availability_zone="zone-ci")
            status, body = stack.api("PUT", "/v1/servers/i-ci-multi/metadata/public",
                                     {"role": "db", "tier": "gold"})
            assert status == 200, body
            stack.put_server(
                "i-ci-single", hostname="ci-single", ifname=single.tap,
                ssh_keys=[{"name": "alice", "key": KEY_A}],
                user_data=[{"name": "user", "content_type": "text/cloud-config",
                            "data": _b64(SINGLE)}],
                network=_network(mac_of(single.netns, "eth0"), "10.20.0.6"),
                require_token=True)
            _wait_served(multi)
            _wait_served(single)
            yield World(stack, multi, single)
    finally:
        topo.close()


def _tokens_issued(stack: ProductStack) -> float:
    return metric(stack.node_metrics(), "interceptor_node_tokens_issued_total")


def _check_ec2(result: dict[str, Any], doc: dict[str, Any], guest: Guest) -> None:
    iid = doc["instance_id"]
    assert result["instance_id"] == iid
    assert result["metadata"]["instance-id"] == iid
    assert result["hostname"] == doc["hostname"]
    assert result["local_hostname"] == doc["hostname"]
    assert result["public_keys"] == sorted(k["key"] for k in doc["ssh_keys"])
    assert result["availability_zone"] == doc["availability_zone"]
    assert result["api_version"] == "2021-03-23"
    # Network: cloud-init's IMDS network config matches the guest's NIC by MAC.
    mac = doc["network"]["interfaces"][0]["mac"]
    assert mac == mac_of(guest.netns, "eth0")
    macs = result["metadata"]["network"]["interfaces"]["macs"]
    ip = doc["network"]["interfaces"][0]["addresses"][0]["address"]
    assert macs[mac]["local-ipv4s"] == ip
    assert result["metadata"]["local-ipv4"] == ip
    assert result["network_error"] is None, result["network_error"]
    ethernets = result["network_config"]["ethernets"]
    assert [e["match"]["macaddress"] for e in ethernets.values()] == [mac]


def test_ec2_crawl_with_tokens_required(world: World) -> None:
    """IMDSv2: the instance requires tokens, so every read must carry one."""
    stack = world.stack
    doc = stack.document("i-ci-single")
    assert doc["require_token"] is True
    before = _tokens_issued(stack)
    result = crawl(world.single, "crawl_ec2.py", "token")
    assert result["had_token"] is True
    assert _tokens_issued(stack) >= before + 1
    _check_ec2(result, doc, world.single)
    assert result["identity"]["instanceId"] == "i-ci-single"
    assert result["identity"]["accountId"] == doc["customer_id"]
    assert unb64(result["userdata_b64"]) == SINGLE == api_parts(doc)[0][1]
    assert client_parts(result) == [("text/cloud-config", SINGLE)]


@pytest.mark.parametrize("mode", ["token", "tokenless"])
def test_ec2_crawl_multipart(world: World, mode: str) -> None:
    stack = world.stack
    doc = stack.document("i-ci-multi")
    before = _tokens_issued(stack)
    result = crawl(world.multi, "crawl_ec2.py", mode)
    if mode == "token":
        assert result["had_token"] is True
        assert _tokens_issued(stack) >= before + 1
        assert result["identity"]["instanceId"] == "i-ci-multi"
    else:
        assert result["had_token"] is False
        assert _tokens_issued(stack) == before
    _check_ec2(result, doc, world.multi)
    # Two named parts arrive as one multipart document that cloud-init splits
    # back into the parts, content types and names the API holds.
    assert len(doc["user_data"]) == 2
    assert client_parts(result) == api_parts(doc)
    assert [p["filename"] for p in result["userdata_parts"]] == \
        [p["name"] for p in doc["user_data"]]


def test_openstack_crawl(world: World) -> None:
    stack = world.stack
    doc = stack.document("i-ci-multi")
    result = crawl(world.multi, "crawl_openstack.py")
    assert result["version"] == 2
    assert result["instance_id"] == "i-ci-multi"
    assert result["ec2_instance_id"] == "i-ci-multi"  # its EC2 side crawl
    assert result["hostname"] == doc["hostname"]
    assert result["public_keys"] == sorted(k["key"] for k in doc["ssh_keys"])
    assert result["metadata"]["availability_zone"] == doc["availability_zone"]
    assert result["metadata"]["project_id"] == doc["customer_id"]
    assert result["metadata"]["meta"]["role"] == "db"
    assert result["metadata"]["meta"]["tier"] == "gold"
    assert client_parts(result) == api_parts(doc)
    files = {f["path"]: base64.b64decode(f["data_b64"]) for f in doc["files"]}
    assert {p: unb64(v) for p, v in result["files"].items()} == files
    # Vendor data: the static file as vendor_data.json, each dynamic target
    # under its name in vendor_data2.json, as the API's document has them.
    vendor = doc["vendor_data"]
    assert vendor["static"] == STATIC_VENDOR
    assert result["vendordata_pure"] == vendor["static"]
    assert result["vendordata_raw"] == STATIC_VENDOR["cloud-init"]
    assert result["vendordata2_pure"] == vendor["dynamic"]
    assert result["vendordata2_raw"] is None  # cloud-init reads only a "cloud-init" key
    dyn = vendor["dynamic"]["dyn"]
    assert dyn["instance"] == "i-ci-multi" and dyn["hostname"] == "ci-multi"
    assert dyn["project"] == doc["customer_id"]
    assert dyn["authorized"] is True, "the service bearer token did not reach the target"
    # network_data.json as cloud-init converts it.
    assert v1_facts(result["network_config"]) == api_network_facts(doc)


def test_nocloud_net_seed(world: World) -> None:
    stack = world.stack
    doc = stack.document("i-ci-multi")
    result = crawl(world.multi, "crawl_nocloud.py")
    assert "http://169.254.169.254/nocloud/" in result["seed"]
    assert result["instance_id"] == "i-ci-multi"
    assert result["metadata"]["local-hostname"] == doc["hostname"]
    assert result["hostname"] == doc["hostname"]
    assert result["public_keys"] == sorted(k["key"] for k in doc["ssh_keys"])
    assert client_parts(result) == api_parts(doc)
    # vendor-data carries what cloud-init itself takes from OpenStack's vendor
    # files: the static file's "cloud-init" entry. Dynamic targets' objects sit
    # under the target's name, which cloud-init's convert_vendordata does not
    # read (vendordata2_raw is None above), so NoCloud leaves them out too.
    vendor = doc["vendor_data"]
    assert "cloud-init" in vendor["dynamic"]["dyn"]
    assert client_parts({"userdata_parts": result["vendordata_parts"]}) == \
        [("text/cloud-config", vendor["static"]["cloud-init"].encode())]
    assert v1_facts(result["network_config"]) == api_network_facts(doc)
    mac = doc["network"]["interfaces"][0]["mac"]
    assert [i["mac"] for i in result["network_state"]["interfaces"].values()] == [mac]


@pytest.mark.parametrize("action", ["403", "reset"])
def test_ec2_crawl_of_a_disabled_vm_fails_fast_with_nothing(topology: Topology,
                                                            action: str) -> None:
    """Metadata disabled for the VM: with ``disabled_action = "403"`` cloud-init's
    IMDSv2 token PUT gets a 403 and it gives up at once (as on AWS); with
    ``reset`` every connection is refused and it gives up after its own
    ``max_wait``. Either way it learns nothing."""
    with product(topology, datapath="nft", node_options={"disabled_action": action}) as stack:
        guest = topology.add_guest(ip="10.21.0.5/24")
        stack.put_server("i-ci-off", hostname="ci-off", ifname=guest.tap,
                         user_data=[{"name": "user", "content_type": "text/plain",
                                     "data": _b64(SINGLE)}])
        _wait_served(guest)
        status, body = stack.api("PATCH", "/v1/servers/i-ci-off", {"metadata_enabled": False})
        assert status == 200, body
        deadline = time.monotonic() + 5
        while get(guest, "/latest/meta-data/instance-id", max_time=1.0)[0] == 200:
            assert time.monotonic() < deadline, "still served after the toggle"
            time.sleep(0.05)
        started = time.monotonic()
        r = guest.run([SYSTEM_PYTHON, str(HERE / "crawl_ec2.py"), "token", "3"], timeout=60)
        elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result == {"ok": False}
    assert "i-ci-off" not in r.stderr and "ci-off" not in r.stdout
    print(f"\ncloud-init EC2 crawl of a disabled VM ({action}) gave up after {elapsed:.2f}s")
    if action == "403":
        assert "returned a 403 error" in r.stderr, r.stderr[-3000:]
        assert elapsed < 3.0, elapsed
    else:
        assert elapsed < 3.0 + 5.0, elapsed  # its max_wait (3 s) plus start-up
