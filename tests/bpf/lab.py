"""A private network namespace to load and test-run the tc program in.

The program runs through ``BPF_PROG_TEST_RUN``, which needs real ifindexes
(and sockets, for the listener lookup) in the calling thread's network
namespace. So the tests here run with the main thread moved into a private
namespace (``pushns``) holding a few veth pairs; the namespace, the pins and
everything else are removed afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import netns

from interceptor.node.datapath.base import TapState
from interceptor.node.datapath.ebpf import EbpfConfig, EbpfDatapath

# Host ends of veth pairs made in the private namespace.
LINKS = ("ena", "enb", "rate", "off", "brp")


def unique(prefix: str = "t") -> str:
    return prefix + secrets.token_hex(3)[:5]


@dataclass
class PacketLab:
    """A private namespace with links, where datapaths can be loaded."""

    netns: str
    ifindex: dict[str, int]
    datapaths: list[EbpfDatapath] = field(default_factory=list)

    def datapath(self, **overrides: Any) -> EbpfDatapath:
        """An installed datapath with its own pin directory."""
        dp = EbpfDatapath(EbpfConfig(instance=unique(), **overrides))
        self.datapaths.append(dp)
        dp.install()
        return dp

    def taps(self, steer: dict[str, bool], bridge: dict[str, str] | None = None
             ) -> dict[str, TapState]:
        bridge = bridge or {}
        return {name: TapState(name, self.ifindex[name], f"i-{name}" if on else None, on,
                               bridge.get(name))
                for name, on in steer.items()}


@contextlib.contextmanager
def private_netns() -> Iterator[str]:
    """Move the calling thread into a new namespace; undo and delete it after."""
    name = unique()
    netns.create(name)
    try:
        netns.pushns(name)
        try:
            yield name
        finally:
            netns.popns()
    finally:
        netns.remove(name)
