"""The eBPF datapath's guard for managed taps it has not seen yet.

The tc program runs only on taps ``sync`` attached it to. A tap whose name
matches the managed patterns but was created since (the window before the
daemon's next sync, or while the daemon is away) would otherwise route its
guest's metadata requests like any other packet (to the node's uplink, and
so maybe to the *host's* cloud metadata service) and reach host services.
The contract (contract.py) says such a tap fails closed by name, as the nft
datapath's rules do; tc cannot match names, so this small nft table does:

* the program marks every frame it lets pass (``GUEST_MARK_TAG``, steered
  ones ``MARK_TAG``): what enters the IP layer from a managed name *without*
  either mark was not seen by the program;
* such a packet to the metadata address is dropped at prerouting, and to
  the node itself only ICMP and the allow-listed ports pass.

No ``ct`` expression on purpose: one would switch conntrack on for every
packet of the namespace, which the eBPF datapath otherwise never needs (so
replies to a connection the node opened towards a guest on a tap not synced
yet are dropped too, for the milliseconds until its sync). Constant rules,
no per-tap state: the cost does not grow with the taps.
"""

from __future__ import annotations

from interceptor.node.datapath.base import MARK_MASK, MARK_TAG
from interceptor.node.datapath.contract import DatapathConfig
from interceptor.node.datapath.nft_cli import Nft
from interceptor.node.datapath.nft_ruleset import GUEST_MARK_TAG, quoted


def render_guard(cfg: DatapathConfig, table: str) -> str:
    names = quoted(cfg.patterns)
    unseen = (f"iifname {names} meta mark & 0x{MARK_MASK:08x} != 0x{GUEST_MARK_TAG:08x} "
              f"meta mark & 0x{MARK_MASK:08x} != 0x{MARK_TAG:08x}")
    v6 = ""
    if cfg.metadata_address6:
        v6 = (f"    {unseen} ip6 daddr {{ {', '.join(cfg.metadata_address6)} }} counter drop "
              "comment \"the same for IPv6\"\n")
    allow = ""
    if cfg.input_allow_udp:
        allow += f"    udp dport {{ {', '.join(map(str, cfg.input_allow_udp))} }} accept\n"
    if cfg.input_allow_tcp:
        allow += f"    tcp dport {{ {', '.join(map(str, cfg.input_allow_tcp))} }} accept\n"
    return f"""\
table inet {table} {{
  chain unsynced_pre {{
    type filter hook prerouting priority raw; policy accept;
    {unseen} ip daddr {cfg.metadata_address} counter drop \
comment "a managed tap the tc program has not seen: fail closed"
{v6}  }}

  chain unsynced_input {{
    type filter hook input priority filter; policy accept;
    iifname != {names} return
    meta mark & 0x{MARK_MASK:08x} == {{ 0x{MARK_TAG:08x}, 0x{GUEST_MARK_TAG:08x} }} return
    meta l4proto {{ icmp, ipv6-icmp }} accept
{allow}    counter drop comment "no host service for a guest on a tap not synced yet"
  }}
}}
"""


class UnsyncedGuard:
    """Install (replace) and remove the guard table; idempotent."""

    def __init__(self, cfg: DatapathConfig, table: str, nft: Nft) -> None:
        self.cfg = cfg
        self.table = table
        self.nft = nft

    def install(self) -> None:
        self.nft.apply(Nft.drop_tables([("inet", self.table)])
                       + render_guard(self.cfg, self.table))

    def present(self) -> bool:
        return ("inet", self.table) in self.nft.tables()

    def remove(self) -> None:
        self.nft.apply(Nft.drop_tables([("inet", self.table)]))
