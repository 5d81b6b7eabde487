"""End to end, datapath-agnostic pieces both datapaths rely on: the link
watcher (links.py) and the per-tap listeners (listeners.py)."""

from __future__ import annotations

import pytest

from tests.e2e.datapath_support import AGENT, PATTERNS
from tests.lab import Topology, ifindex, sh

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def test_link_watcher_follows_tap_churn(topology: Topology) -> None:
    watcher = topology.rpc(AGENT, None)
    assert watcher.call("watch", PATTERNS) == {}
    tap = topology.tap_name()
    sh(["ip", "tuntap", "add", "mode", "tap", "name", tap], netns=topology.node)
    old = ifindex(topology.node, tap)
    watcher.call("wait_links", {tap: old}, 5)
    sh(["ip", "link", "del", tap], netns=topology.node)
    sh(["ip", "tuntap", "add", "mode", "tap", "name", tap], netns=topology.node)
    new = ifindex(topology.node, tap)
    assert new != old
    history = watcher.call("wait_links", {tap: new}, 5)
    assert history[-1][tap] == new  # the consumer sees the new ifindex
    sh(["ip", "link", "add", "other0x", "type", "veth", "peer", "name", "other0y"],
       netns=topology.node)  # not a managed name: no change reported for it
    sh(["ip", "link", "del", tap], netns=topology.node)
    history = watcher.call("wait_links", {tap: None}, 5)
    assert all("other0x" not in h for h in history)
    assert watcher.call("unwatch") >= 3


def test_listener_on_missing_device_is_a_clear_error(topology: Topology) -> None:
    node = topology.rpc(AGENT, None)
    assert node.call("listen_error", "nosuch0").startswith(
        "TapGoneError: listener: interface nosuch0 does not exist")
    guest = topology.add_guest()
    node.call("listen", guest.tap)
    err = node.call("listen_error", guest.tap)  # same address, port and device
    assert err.startswith("TapListenerError:") and "already bound" in err
