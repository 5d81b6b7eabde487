"""cloud-init over IPv6 (issue 13): Debian's cloud-init with the system
Python, in a guest namespace with no IPv4 address at all, against the live
product on both datapaths. Its EC2 reader runs with its own default
``metadata_urls`` (169.254.169.254 is unreachable, ``http://[fd00:ec2::254]``
answers) with and without IMDSv2 tokens; its OpenStack reader is given the
link-local URL ``http://[fe80::a9fe:a9fe%eth0]``. What it parsed is compared
with what the REST API holds for the instance."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from tests.conformance.support import crawl, unb64
from tests.e2e.datapath_support import EC2, url, v6_guest, wait_no_tentative
from tests.e2e.stack import product
from tests.lab import Guest, Topology

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.conformance]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConformanceKeyIPv6 v6@example"
USER_DATA = b"#cloud-config\nhostname: ci-v6\n"


@pytest.fixture(scope="module", params=["nft", "ebpf"])
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, nft)")
    topo = Topology()
    try:
        with product(topo, datapath=request.param) as stack:
            g = v6_guest(topo, mode="ll")
            assert not g.run(["ip", "-4", "addr", "show", "dev", g.ifname]).stdout
            stack.put_server("i-ci-v6", hostname="ci-v6", ifname=g.tap,
                             ssh_keys=[{"name": "v6", "key": KEY}],
                             user_data=[{"name": "user", "content_type": "text/cloud-config",
                                         "data": base64.b64encode(USER_DATA).decode()}])
            wait_no_tentative(topo, g)
            for _ in range(75):
                r = g.curl(url(EC2, g).replace("meta-data/", "meta-data/instance-id"),
                           max_time=1)
                if r.stdout.startswith("i-ci-v6"):
                    break
            yield g
    finally:
        topo.close()


@pytest.mark.parametrize("mode", ["token", "tokenless"])
def test_ec2_reader_finds_fd00_ec2_254_by_itself(guest: Guest, mode: str) -> None:
    result = crawl(guest, "crawl_ec2.py", mode, "20", url="cloud-init")
    assert result["metadata_address"] == "http://[fd00:ec2::254]"
    assert result["had_token"] is (mode == "token")
    assert result["instance_id"] == "i-ci-v6"
    assert result["local_hostname"] == "ci-v6"
    assert result["public_keys"] == [KEY]
    assert unb64(result["userdata_b64"]) == USER_DATA


def test_openstack_reader_over_the_link_local_url(guest: Guest) -> None:
    # As an OpenStack guest lists it (cloud-init resolves the host part first,
    # which takes the zone as "%eth0", not "%25eth0").
    link_local = f"http://[fe80::a9fe:a9fe%{guest.ifname}]"
    result = crawl(guest, "crawl_openstack.py", url=link_local)
    assert result["metadata_address"] == link_local
    assert result["instance_id"] == "i-ci-v6"
    assert result["hostname"].startswith("ci-v6")
    assert result["public_keys"] == [KEY]
    assert unb64(result["userdata_b64"]) == USER_DATA
