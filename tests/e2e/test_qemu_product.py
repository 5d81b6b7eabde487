"""A real virtual machine (QEMU, Debian kernel, busybox initramfs) on a real
tap device reads its own metadata through the node daemon — both datapaths."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.stack import ProductStack, product
from tests.guest import boot_guest
from tests.lab import Topology, random_mac, tap_device

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(params=["nft", "ebpf"])
def stack(request: pytest.FixtureRequest, topology: Topology) -> Iterator[ProductStack]:
    with product(topology, datapath=request.param) as s:
        yield s


@pytest.mark.parametrize(("route", "taps"), [("onlink", "routed"), ("default", "routed"),
                                             ("default", "bridged")])
def test_qemu_guest_prints_its_instance_id(stack: ProductStack, route: str, taps: str) -> None:
    from tests.lab import sh

    with tap_device(stack.netns, name=f"tap{stack.topo.prefix}") as tap:
        gateway_dev = tap
        if taps == "bridged":  # as libvirt does: the tap is a port of a bridge
            gateway_dev = stack.topo.add_bridge()
            sh(["ip", "link", "set", tap, "master", gateway_dev], netns=stack.netns)
        stack.create_instance("i-qemu-0001", hostname="qemu-vm", ifname=tap,
                              keys={"ops": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIQemu ops@x"})
        args: dict[str, object] = {"ip": "10.77.0.2/24", "route": "onlink",
                                   "paths": ["/latest/meta-data/instance-id",
                                             "/latest/meta-data/hostname",
                                             "/latest/meta-data/public-keys/0/openssh-key"]}
        if route == "default":
            # The gateway address sits on the tap (routed) or the bridge.
            sh(["ip", "addr", "add", "10.77.0.1/24" if taps == "bridged" else "10.77.0.1/32",
                "dev", gateway_dev], netns=stack.netns)
            args.update(route="default", gw="10.77.0.1")
        result = boot_guest(stack.netns, tap, random_mac(), args, timeout=120)  # type: ignore[arg-type]
        assert result.completed, result.tail()
        assert result.body("/latest/meta-data/instance-id") == b"i-qemu-0001", result.tail()
        assert result.body("/latest/meta-data/hostname") == b"qemu-vm"
        assert result.body("/latest/meta-data/public-keys/0/openssh-key").startswith(
            b"ssh-ed25519 ")


def test_ipv6_only_qemu_guest_reads_from_fd00_ec2_254(stack: ProductStack) -> None:
    """No IPv4 in the guest: eth0 has its link-local address only, an on-link
    route to fd00:ec2::254, and the node's neighbour advertisement is all it
    needs to reach the service."""
    with tap_device(stack.netns, name=f"tap{stack.topo.prefix}") as tap:
        stack.create_instance("i-qemu-v6", hostname="qemu-v6", ifname=tap,
                              keys={"ops": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIQemu ops@x"})
        args: dict[str, object] = {"ip": "none", "route": "ip6onlink", "host": "fd00:ec2::254",
                                   "paths": ["/latest/meta-data/instance-id"]}
        result = boot_guest(stack.netns, tap, random_mac(), args, timeout=120)  # type: ignore[arg-type]
        assert result.completed, result.tail()
        assert result.body("/latest/meta-data/instance-id") == b"i-qemu-v6", result.tail()
        assert result.net_ok and "fe80:" in result.net_detail, result.net_detail
        assert not re.search(r"\d+\.\d+\.\d+\.\d+", result.net_detail)  # no IPv4 at all
