"""The eBPF datapath: a tc ``clsact`` ingress program on every managed tap.

The program (``interceptor/node/datapath/bpf/tap_ingress.c``, compiled at run
time by BCC with the metadata address and port as constants) answers ARP for
the metadata address on enabled taps, hands TCP to it to the
tap's transparent listener (``bpf_sk_assign``) with the tap's mark, answers
TCP from refused taps with a RST sent straight back out the tap, and drops
anything else addressed to the metadata address. All per-tap state is in
maps keyed by ifindex, pinned under ``<bpffs>/interceptor/<instance>/``:

* ``enabled``    ifindex -> mark; presence means "steer".
* ``stats``      ifindex -> per-CPU counters (read by ``counters``).
* ``syn_bucket`` ifindex -> per-tap SYN token bucket state.
* ``config``     the ARP reply MAC, SYN rate and burst (rate 0: no limit).
* ``bridge_ports`` ifindex -> the bridge's ifindex and MAC, for taps enslaved
  to a bridge (the host input filter judges their frames as the bridge's).
* ``host_allow`` (protocol << 16 | port) -> 1: ports on the node guests may use.

Host services: whatever a tap's guest sends that the node would
deliver to itself (decided by the kernel's own ``bpf_fib_lookup`` from the
tap: any local, broadcast or multicast address, loopback, IPv6 link-local)
is dropped, except ICMP/ICMPv6, replies on connections the host opened, and
``input_allow_udp``/``input_allow_tcp`` ports, as the nft datapath's input
chain does; on bridge ports as described below. Counted as
``host_input_dropped``. ``max_connections`` is enforced by the guest HTTP
server (503) on both datapaths; this one has no kernel connection count.

Restart: tc holds the programs and bpffs the maps, so guests keep working
while the daemon is away (an enabled tap's ARP is still answered, a refused
tap is still refused; TCP waits for the listeners, guests retry by SYN
retransmit). A new instance recompiles, adopts the pinned maps (their layout
is checked; a stale layout is replaced), and ``replace``s the filters at a
fixed ``prio``/handle, so nothing is duplicated.

Bridged taps are served exactly like routed ones, through the tap's own
listener: bridge.py explains how (steered frames readdressed so the bridge
hands them back to the tap) for both datapaths, and contract.py decides
which taps can be steered that way. A bridge-family input chain with a drop
policy must accept the group address.

Managed taps not synced yet fail closed by name through a small nft table
(ebpf_guard.py): the eBPF datapath needs the ``nft`` command for it.

The host input filter applies to bridge ports too, to what the bridge would
pass up to the node: unicast to the bridge's MAC or the tap's own, and
broadcast and multicast. Those are judged by a FIB lookup as if they entered
on the bridge (so its addresses and every other local one count), and
unicast to other stations (guest to guest) is left alone. A refused
broadcast or multicast frame is not dropped but made ``PACKET_OTHERHOST``:
the bridge still floods it to the other guests, the node's IP layer drops
its copy. Each sync records the bridge (ifindex and MAC) of every tap the
kernel reports enslaved, from one link dump; a bridge whose MAC changes
between syncs (one without an address of its own, gaining a port) leaves
unicast to the new MAC unfiltered until the next sync, so give bridges a
fixed address (libvirt does; bridge.py needs it for steering too).

Everything acts in the network namespace of the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.datapath.base import TapCounters, TapState
from interceptor.node.datapath.contract import DatapathConfig, SteeringPolicy, check_taps
from interceptor.node.datapath.ebpf_guard import UnsyncedGuard
from interceptor.node.datapath.ebpf_pins import ensure_bpffs, unpin
from interceptor.node.datapath.ebpf_syscall import pinned_map_info
from interceptor.node.datapath.ebpf_tc import LinkGone, TcFilters
from interceptor.node.datapath.netlink import dump_links
from interceptor.node.datapath.nft_cli import Nft
from interceptor.node.datapath.routing import PolicyRouting

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "bpf" / "tap_ingress.c"
TAP_FUNCTION = "tap_ingress"
MAP_NAMES = ("enabled", "stats", "syn_bucket", "config", "bridge_ports", "host_allow")
FALLBACK_HINT = "use --datapath nft"

# Per-CPU counters in `struct tap_stats` -> the contract's counter names.
STAT_FIELDS: dict[str, str] = {
    "steered": "steered_packets",
    "refused": "refused_packets",
    "arp_replies": "arp_replies",
    "syn_limited": "syn_rate_limited",
    "malformed": "malformed",
    "no_listener": "no_listener",
    "dropped": "unsteered_dropped",
    "arp_refused": "arp_refused",
    "host_input": "host_input_dropped",
}
IPPROTO_TCP = 6
IPPROTO_UDP = 17

_INSTANCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class EbpfConfig(DatapathConfig):
    """The shared options plus what only the eBPF datapath has."""

    instance: str = "default"  # pins live in <bpffs>/interceptor/<instance>/
    bpffs: str = "/sys/fs/bpf"
    bpf_source: str | None = None  # path of tap_ingress.c; None: the package's
    tc_prio: int = 77  # fixed filter priority: replace, never duplicate
    guard_table: str = "interceptor_ebpf"  # nft table for unsynced taps (ebpf_guard.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _INSTANCE.match(self.instance) or self.instance in (".", ".."):
            raise ConfigError(f"config: invalid eBPF instance name {self.instance!r}")
        if not self.bpffs.startswith("/") or any(c in self.bpffs for c in '"\\\n '):
            # (it becomes a C string literal in the program)
            raise ConfigError(f"config: bpffs must be a plain absolute path, not {self.bpffs!r}")
        if not 0 < self.tc_prio < 0x10000:
            raise ConfigError(f"config: tc_prio {self.tc_prio} must be in 1..65535")

    @property
    def pin_dir(self) -> Path:
        return Path(self.bpffs) / "interceptor" / self.instance

    @property
    def filter_name(self) -> str:
        """TCA_BPF_NAME of our filters: how a later run recognises them."""
        return f"interceptor:{self.instance}"

    def cflags(self) -> list[str]:
        """The program's compile-time constants (tap_ingress.c's header)."""
        return [f'-DPIN_DIR="{self.pin_dir}"',
                f"-DMETADATA_ADDR_HOST={self.metadata_address_int:#x}u",
                f"-DMETADATA_PORT={self.metadata_port}", *self._md6_flags()]

    def _md6_flags(self) -> list[str]:
        addrs = [ipaddress.IPv6Address(a).packed for a in self.metadata_address6]
        if not addrs:
            return []
        first, second = addrs[0], addrs[-1]
        return [f"-DMD6_COUNT={len(addrs)}",
                *(f"-DMD6_{name}{i}={int.from_bytes(a[4 * i:4 * i + 4], 'big'):#x}u"
                  for name, a in (("A", first), ("B", second)) for i in range(4))]


class EbpfDatapath:
    """The ``Datapath`` protocol over a BCC-compiled tc program."""

    name = "ebpf"
    counted = frozenset(STAT_FIELDS.values())

    def __init__(self, cfg: EbpfConfig | None = None) -> None:
        self.cfg = cfg or EbpfConfig()
        self.routing = PolicyRouting(self.cfg.route_table, self.cfg.rule_pref,
                                     ipv6=bool(self.cfg.metadata_address6),
                                     sources6=self.cfg.global6)
        self.guard = UnsyncedGuard(self.cfg, self.cfg.guard_table, Nft(who="ebpf"))
        self.policy = SteeringPolicy("ebpf")
        self.filters = TcFilters(self.cfg.filter_name, self.cfg.tc_prio)
        self._bpf: Any = None  # bcc.BPF; holds the program and map fds
        self._tap_fd = -1
        self._taps: dict[str, TapState] = {}
        self._reconciled = False  # first sync after install scans every link

    # -- Datapath protocol -----------------------------------------------------

    def install(self) -> None:
        """Compile and load the program, adopt or create the pinned maps, write
        the config map, install the guard and policy routing. Filters are
        attached by sync."""
        self.close()  # install twice = reload once
        ensure_bpffs(Path(self.cfg.bpffs))
        pin_dir = self.cfg.pin_dir
        try:
            pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatapathError(f"ebpf: cannot create {pin_dir}: {exc.strerror}") from None
        self._bpf = self._compile()
        if self._stale_layout():
            log.warning("ebpf: pinned maps in %s have another layout; recreating them", pin_dir)
            self._bpf.cleanup()
            unpin(pin_dir, keep_dir=True)
            self._bpf = self._compile()
        self._tap_fd = self._load(TAP_FUNCTION)
        self._write_config()
        self.guard.install()
        self.routing.install()
        self.filters.attached = set()
        self._reconciled = False

    def heartbeat(self, lasting: float | None = None) -> None:
        """Nothing to renew: the program sees for itself that a tap has no
        socket (bpf_skc_lookup_tcp) and answers with a RST."""

    def installed(self) -> bool:
        pins = all((self.cfg.pin_dir / m).exists() for m in MAP_NAMES)
        return pins and self.guard.present() and self.routing.present()

    def sync(self, taps: Mapping[str, TapState]) -> None:
        """Attach to every tap in ``taps``, set the map entries, detach from
        and forget every ifindex no longer wanted (a bridge an earlier version
        attached to included)."""
        if self._bpf is None:
            raise DatapathError("ebpf: not installed; install() the datapath first")
        check_taps(taps, "ebpf")
        plan = self.policy.plan(taps, dump_links() if taps else {})  # one dump
        with IPRoute() as ipr:
            want = {tap.ifindex for tap in taps.values()}
            # The first sync after install replaces the program on every link
            # (an earlier run's, maybe older, program); later ones touch only
            # links that changed, so a sync costs per change, not per tap.
            first = not self._reconciled
            if first:
                self.filters.attached = self.filters.scan(ipr)
                self._reconciled = True
            self._set_entries(taps, plan.steered, plan.ports)
            if self.cfg.metadata_address6:
                self.routing.sync_scoped(self.cfg.link_local6, set(plan.steered))
            for ifindex in sorted(self.filters.attached - want):
                self.filters.detach(ipr, ifindex)
            for ifindex in sorted(want if first else want - self.filters.attached):
                try:
                    self.filters.attach(ipr, ifindex, self._tap_fd)
                except LinkGone:
                    log.info("ebpf: ifindex %d vanished during sync", ifindex)
        self._taps = dict(taps)

    def unsteerable(self) -> dict[str, str]:
        return self.policy.blocked

    def counters(self) -> dict[str, TapCounters]:
        if self._bpf is None:
            return {}
        by_index = {tap.ifindex: name for name, tap in self._taps.items()}
        out = {name: TapCounters() for name in self._taps}
        for key, per_cpu in self._table("stats").items():
            name = by_index.get(int(key.value))
            if name is None:
                continue
            for field_name, target in STAT_FIELDS.items():
                out[name].add(target, sum(int(getattr(v, field_name)) for v in per_cpu))
        return out

    def remove(self) -> None:
        """Detach every filter of ours (any link), delete clsact qdiscs left
        empty, unpin the maps, remove the guard and policy routing. Needs
        neither BCC nor a prior install (``--cleanup`` after a crash)."""
        with IPRoute() as ipr:
            for ifindex in sorted(self.filters.scan(ipr) | self.filters.attached):
                self.filters.detach(ipr, ifindex)
        self.close()
        unpin(self.cfg.pin_dir, keep_dir=False)
        self.guard.remove()
        self.routing.remove()
        self.filters.attached = set()
        self._taps = {}
        self.policy.forget()
        self._reconciled = False

    # -- extras for operators and tests ------------------------------------------

    def attached_ifindexes(self) -> set[int]:
        """Links that carry one of our filters right now (scans every link)."""
        with IPRoute() as ipr:
            return self.filters.scan(ipr)

    @property
    def tap_program_fd(self) -> int:
        """fd of the loaded tap program (-1 before install), e.g. for BPF_PROG_TEST_RUN."""
        return self._tap_fd

    def close(self) -> None:
        """Drop the loader's fds; programs stay attached and maps pinned."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        self._tap_fd = -1

    # -- compiling and loading ---------------------------------------------------

    def _compile(self) -> Any:
        try:
            from bcc import BPF
        except ImportError:
            raise DatapathError(
                "ebpf: BCC is not importable (install Debian python3-bpfcc and use a "
                f"virtualenv with system site packages), or {FALLBACK_HINT}") from None
        release = os.uname().release
        build = Path("/lib/modules") / release / "build"
        if not build.exists():
            raise DatapathError(
                f"ebpf: no kernel headers at {build} for BCC (see scripts/setup.sh), "
                f"or {FALLBACK_HINT}")
        source = Path(self.cfg.bpf_source) if self.cfg.bpf_source else SOURCE
        try:
            text = source.read_text()
        except OSError as exc:
            raise DatapathError(
                f"ebpf: cannot read the program source {source}: {exc.strerror} "
                f"(set bpf_source), or {FALLBACK_HINT}") from None
        try:
            return BPF(text=text.encode(), cflags=self.cfg.cflags())
        except Exception as exc:  # BCC raises bare Exception; clang's errors went to stderr
            raise DatapathError(
                f"ebpf: BCC could not compile {source.name} ({_one_line(exc)}); "
                f"kernel headers or BCC may not match this kernel, or {FALLBACK_HINT}") from None

    def _load(self, function: str) -> int:
        from bcc import BPF

        try:
            return int(self._bpf.load_func(function.encode(), BPF.SCHED_CLS).fd)
        except Exception as exc:  # the verifier's log went to stderr
            raise DatapathError(
                f"ebpf: the kernel refused program {function} ({_one_line(exc)}), "
                f"or {FALLBACK_HINT}") from None

    def _stale_layout(self) -> bool:
        """True if any pinned map differs in shape from what the program needs."""
        for name in MAP_NAMES:
            table = self._table(name)
            try:
                info = pinned_map_info(str(self.cfg.pin_dir / name))
            except OSError:
                return True
            leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: one CPU's value
            if (info.key_size, info.value_size) != (_sizeof(table.Key), _sizeof(leaf)):
                return True
        return False

    def _write_config(self) -> None:
        table = self._table("config")
        key = table.Key(0)
        leaf = table.Leaf()
        mac = bytes.fromhex(self.cfg.arp_reply_mac.replace(":", ""))
        leaf.arp_mac = (ctypes.c_ubyte * 6)(*mac)
        leaf.arp_when_refused = 1 if self.cfg.arp_when_refused else 0
        rate = self.cfg.syn_rate_per_s
        leaf.syn_interval_ns = 1_000_000_000 // rate if rate else 0
        leaf.syn_burst = self.cfg.syn_burst
        table[key] = leaf
        self._write_host_allow()

    def _write_host_allow(self) -> None:
        """Make the allow-list map equal the configuration (an adopted map may
        hold an earlier run's ports)."""
        table = self._table("host_allow")
        want = {(IPPROTO_UDP << 16) | p for p in self.cfg.input_allow_udp}
        want |= {(IPPROTO_TCP << 16) | p for p in self.cfg.input_allow_tcp}
        for key in [int(k.value) for k in table]:
            if key not in want:
                _delete(table, table.Key(key))
        for key in sorted(want):
            table[table.Key(key)] = table.Leaf(1)

    # -- map entries ---------------------------------------------------------------

    def _table(self, name: str) -> Any:
        return self._bpf[name.encode()]  # BCC wants bytes for names

    def _set_entries(self, taps: Mapping[str, TapState], steered: Mapping[int, TapState],
                     want_ports: Mapping[int, tuple[int, bytes]]) -> None:
        enabled = self._table("enabled")
        want = {ifindex: tap.mark for ifindex, tap in steered.items()}
        have = {int(k.value): int(v.mark) for k, v in enabled.items()}
        for ifindex in have.keys() - want.keys():
            _delete(enabled, enabled.Key(ifindex))
        for ifindex, mark in want.items():
            if have.get(ifindex) != mark:
                leaf = enabled.Leaf()
                leaf.mark = mark
                enabled[enabled.Key(ifindex)] = leaf
        # Bridge ports: the host input filter judges them as their bridge.
        ports = self._table("bridge_ports")
        have_ports = {int(k.value): (int(v.bridge_ifindex), bytes(v.bridge_mac))
                      for k, v in ports.items()}
        for ifindex in have_ports.keys() - want_ports.keys():
            _delete(ports, ports.Key(ifindex))
        for ifindex, (bridge, mac) in want_ports.items():
            if have_ports.get(ifindex) != (bridge, mac):
                leaf = ports.Leaf()
                leaf.bridge_ifindex = bridge
                leaf.bridge_mac = (ctypes.c_ubyte * 6)(*mac)
                ports[ports.Key(ifindex)] = leaf
        # Counters and buckets of taps that are gone (their ifindex never returns).
        keep = {tap.ifindex for tap in taps.values()}
        for name in ("stats", "syn_bucket"):
            table = self._table(name)
            for key in [int(k.value) for k in table]:
                if key not in keep:
                    _delete(table, table.Key(key))


def _delete(table: Any, key: Any) -> None:
    with contextlib.suppress(KeyError):
        del table[key]


def _sizeof(ctype: Any) -> int:
    return ctypes.sizeof(ctype)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
