"""Desired per-tap state, computed from links and bindings (pure).

Identity is the tap: a binding names (node, ifname) → instance, and the tap's
ifindex at the time we see it pins that identity. A tap that is deleted and
recreated under the same name gets a new ifindex, hence a new mark and a new
listener: nothing of the old tap's state carries over by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapState


@dataclass(frozen=True)
class Link:
    ifname: str
    ifindex: int
    bridge: str | None = None


def desired_taps(links: Mapping[str, Link], bindings: Mapping[str, Binding],
                 disabled_action: str) -> dict[str, TapState]:
    """Every managed link becomes a TapState; unbound links fail closed.

    With ``disabled_action == "403"`` a disabled instance is still steered to
    its listener, which answers 403 to everything (cloud-init aborts at once);
    with ``"reset"`` the datapath refuses it and no byte reaches the proxy.
    """
    out: dict[str, TapState] = {}
    for name, link in links.items():
        binding = bindings.get(name)
        if binding is None:
            out[name] = TapState(name, link.ifindex, None, False, link.bridge)
            continue
        steer = binding.metadata_enabled or disabled_action == "403"
        out[name] = TapState(name, link.ifindex, binding.instance_id, steer, link.bridge)
    return out
