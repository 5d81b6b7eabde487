"""What the node daemon asks of a datapath (nftables or eBPF).

The daemon owns the desired state (which taps exist, which instance each is
bound to, whether it is steered to the proxy) and hands the *whole* desired
state to ``sync`` after every change. Implementations diff it against what is
in the kernel and apply only the difference, as per-tap elements of maps/sets
(nft) or map entries (BPF), never as one rule per tap, so the per-packet cost
does not grow with the number of taps. Every operation is idempotent: apply
twice = apply once; ``install`` after a crash adopts what is already there.
How they must behave beyond the method list (options, tap entries, steering
policy, counter names) is in ``contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

METADATA_ADDRESS = "169.254.169.254"
METADATA_PORT = 80
METADATA_ADDRESSES6 = ("fd00:ec2::254", "fe80::a9fe:a9fe")
"""IPv6 metadata addresses: EC2's for IPv6-only instances (cloud-init's EC2
reader tries it) and OpenStack's link-local one."""
DEFAULT_TABLE = 4711  # policy routing (routing.py)
DEFAULT_PREF = 1000

HEARTBEAT_INTERVAL_S = 1.0
HANDOVER_GRACE_S = 30.0
"""How long a daemon that exits with its listeners handed over (fd store)
keeps the datapath steering to them: the next process's start-up."""

MARK_TAG = 0x4D000000
"""High byte of every mark this project sets; the low 24 bits carry the ifindex
(folded past 2**24), for people reading packet traces."""
MARK_MASK = 0xFF000000
IFINDEX_BITS = 0x00FFFFFF


def mark_for(ifindex: int) -> int:
    """The packet mark for a tap. Only ``MARK_TAG`` under ``MARK_MASK`` is ever
    matched (policy routing, the host-input filter), so the low bits need not
    be unique: identity is the listener socket, never the mark. Any ifindex
    the kernel can hand out (up to 2**31 - 1) gets a mark."""
    if not 0 < ifindex < (1 << 31):
        raise ValueError(f"ifindex {ifindex} is not a Linux ifindex")
    return MARK_TAG | (ifindex & IFINDEX_BITS)


@dataclass(frozen=True)
class TapState:
    """Desired datapath state of one managed tap.

    ``instance_id`` is None for a tap that matches the managed name patterns
    but has no binding: fail closed (no ARP answer, RST/drop for TCP to the
    metadata address). ``steer`` says whether TCP to the metadata address is
    handed to the tap's transparent listener; it is False for an unbound tap
    and for a disabled instance when the disabled action is "reset".
    """

    ifname: str
    ifindex: int
    instance_id: str | None
    steer: bool
    bridge: str | None = None  # the Linux bridge the tap is enslaved to, if any

    @property
    def mark(self) -> int:
        return mark_for(self.ifindex)


@dataclass
class TapCounters:
    """Per-tap packet counters read from the kernel at scrape time. The names
    are fixed and shared (``contract.COUNTERS`` has their meaning); a datapath
    lists the ones it counts in ``Datapath.counted``, the others stay 0."""

    steered_packets: int = 0
    refused_packets: int = 0
    arp_replies: int = 0
    syn_rate_limited: int = 0
    conn_limited: int = 0
    unsteered_dropped: int = 0
    host_input_dropped: int = 0
    malformed: int = 0
    no_listener: int = 0
    arp_refused: int = 0

    def add(self, name: str, packets: int) -> None:
        setattr(self, name, getattr(self, name) + packets)


class Datapath(Protocol):
    """A kernel datapath. All methods are synchronous and may block briefly."""

    name: str
    counted: frozenset[str]  # the TapCounters fields this datapath's kernel side counts

    def install(self) -> None:
        """Create (or adopt) the datapath's global state: tables, programs,
        policy routing, sysctls. Raises DatapathError with one clear line."""

    def sync(self, taps: Mapping[str, TapState]) -> None:
        """Make per-tap kernel state equal ``taps`` (keyed by ifname)."""

    def installed(self) -> bool:
        """True while the datapath's global state is present in the kernel."""

    def counters(self) -> dict[str, TapCounters]:
        """Counters per tap name, for Prometheus."""

    def unsteerable(self) -> dict[str, str]:
        """Taps the last sync was asked to steer but left fail closed, with why."""

    def heartbeat(self, lasting: float | None = None) -> None:
        """Called every HEARTBEAT_INTERVAL_S while the daemon runs: a datapath
        that cannot see whether a tap's listener exists (nft) learns from its
        absence that the daemon is gone, and then refuses instead of steering.
        ``lasting``: the heartbeat counts that long (a daemon handing its
        listeners over to the next process says so as its last act)."""

    def remove(self) -> None:
        """Remove everything this datapath ever made. Safe to call twice."""
