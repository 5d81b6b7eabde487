"""Fixtures for the packet-level and lifecycle tests of the eBPF datapath
(see lab.py for why they run in a private network namespace)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from tests.bpf.lab import BRIDGE_MAC, LINKS, PacketLab, routed_node
from tests.lab import entered_netns


@pytest.fixture(scope="module")
def lab() -> Iterator[PacketLab]:
    if os.geteuid() != 0:
        pytest.fail("BPF packet tests need root (bpf(2), network namespaces)")
    with entered_netns() as name:
        with IPRoute() as ipr:
            ipr.link("set", index=1, state="up")
            for link in LINKS:
                ipr.link("add", ifname=link, kind="veth", peer=f"{link}p")
            ifindex = {link: int(ipr.link_lookup(ifname=link)[0]) for link in LINKS}
            # brp is a port of br, which has an address and a MAC of its own.
            ipr.link("add", ifname="br", kind="bridge", address=BRIDGE_MAC)
            ifindex["br"] = int(ipr.link_lookup(ifname="br")[0])
            ipr.link("set", index=ifindex["brp"], master=ifindex["br"])
            for link in (*LINKS, "br"):
                ipr.link("set", index=ifindex[link], state="up")
        routed_node(name, ifindex)
        lab = PacketLab(name, ifindex)
        try:
            yield lab
        finally:
            errors = []
            for dp in lab.datapaths:  # every one, even if one fails
                try:
                    dp.remove()
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
