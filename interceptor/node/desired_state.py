"""Desired per-tap state, computed from links, bindings and latches (pure).

Identity is the tap, and a binding is for **one incarnation** of it. A tap
name alone is not enough (libvirt hands ``vnetN`` to the next VM at once), so:

* a binding with a ``mac`` is served only while the tap has that MAC (the
  platform gave it; a guest cannot change the host side of its tap);
* a binding without one is *latched*: its generation is pinned to the ifindex
  of the first tap it is served on. A tap deleted and recreated under the same
  name has a new ifindex and is refused until the platform binds it again
  (a new generation). An ifindex latched by one binding is never latched by
  another (a tap renamed to another bound name stays refused).

Latches are the only state that must outlive the process (``latches.py``
keeps them on disk), so a restart cannot re-latch onto a tap recreated while
the daemon was down.

Refused taps still appear (``instance_id`` None): the datapath fails them
closed and fast. ``refused`` says why, for logs and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from interceptor.node.backend_client import Binding
from interceptor.node.datapath.base import TapState

LatchKey = tuple[str, int]
"""(ifname, generation) of a binding."""

Latches = dict[LatchKey, int]
"""Binding → the ifindex it was first served on (-1: nothing may match)."""

UNBOUND = "unbound"
MAC_MISMATCH = "mac_mismatch"
RECREATED = "recreated"
TAKEN = "ifindex_taken"
NO_LISTENER = "no_listener"
REASONS = (UNBOUND, MAC_MISMATCH, RECREATED, TAKEN, NO_LISTENER)


@dataclass(frozen=True)
class Link:
    ifname: str
    ifindex: int
    bridge: str | None = None
    mac: str = ""


@dataclass
class Desired:
    taps: dict[str, TapState]
    latches: Latches
    refused: dict[str, str] = field(default_factory=dict)  # ifname -> reason


def _latch_key(binding: Binding) -> LatchKey:
    return binding.ifname, binding.generation


def desired_taps(links: Mapping[str, Link], bindings: Mapping[str, Binding],
                 disabled_action: str, latches: Mapping[LatchKey, int] | None = None,
                 unlistened: Set[str] = frozenset(), *, bindings_known: bool = True
                 ) -> Desired:
    """Every managed link becomes a TapState; anything doubtful fails closed.

    With ``disabled_action == "403"`` a disabled instance is still steered to
    its listener, which answers 403 to everything (cloud-init aborts at once);
    with ``"reset"`` the datapath refuses it and no byte reaches the proxy.
    ``unlistened`` names taps whose listener could not be opened: they are not
    steered (a SYN steered to no socket would hang the guest) until it opens.
    Until the bindings are known (``bindings_known``, after a start and before
    the backend answered) every latch is kept as it was.
    """
    old = dict(latches or {})
    # Latches of bindings that no longer exist are forgotten: a new binding
    # comes with a new generation and latches afresh.
    live = {_latch_key(b) for b in bindings.values() if b.mac is None}
    new: Latches = {k: v for k, v in old.items() if k in live or not bindings_known}
    taken = {ifindex: key for key, ifindex in new.items()}
    out: dict[str, TapState] = {}
    refused: dict[str, str] = {}

    def refuse(name: str, link: Link, reason: str) -> None:
        out[name] = TapState(name, link.ifindex, None, False, link.bridge)
        refused[name] = reason

    for name in sorted(links):
        link = links[name]
        binding = bindings.get(name)
        if binding is None:
            refuse(name, link, UNBOUND)
            continue
        if binding.mac is not None:
            if link.mac.lower() != binding.mac:
                refuse(name, link, MAC_MISMATCH)
                continue
        else:
            key = _latch_key(binding)
            if key in new:
                if new[key] != link.ifindex:
                    refuse(name, link, RECREATED)
                    continue
            elif link.ifindex in taken:
                refuse(name, link, TAKEN)
                continue
            else:
                new[key] = link.ifindex
                taken[link.ifindex] = key
        if name in unlistened:
            refuse(name, link, NO_LISTENER)
            continue
        steer = binding.metadata_enabled or disabled_action == "403"
        out[name] = TapState(name, link.ifindex, binding.instance_id, steer, link.bridge)
    return Desired(out, new, refused)
