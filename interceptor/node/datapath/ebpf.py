"""The eBPF datapath: a tc ``clsact`` ingress program on every managed tap.

The program (``bpf/tap_ingress.c``, compiled at run time by BCC) answers ARP
for 169.254.169.254 on enabled taps, hands TCP to 169.254.169.254:80 to the
tap's transparent listener (``bpf_sk_assign``) with the tap's mark, answers
TCP from refused taps with a RST sent straight back out the tap, and drops
anything else addressed to the metadata address. All per-tap state is in
maps keyed by ifindex, pinned under ``<bpffs>/interceptor/<instance>/``:

* ``enabled``    ifindex -> mark; presence means "steer".
* ``stats``      ifindex -> per-CPU counters (read by ``counters``).
* ``syn_bucket`` ifindex -> per-tap SYN token bucket state.
* ``config``     the ARP reply MAC, SYN rate and burst.
* ``bridge_ports`` ifindex -> the bridge's ifindex and MAC, for taps enslaved
  to a bridge (the host input filter judges their frames as the bridge's).
* ``host_allow`` (protocol << 16 | port) -> 1: ports on the node guests may use.

Host services: whatever a tap's guest sends that the node would
deliver to itself (decided by the kernel's own ``bpf_fib_lookup`` from the
tap: any local, broadcast or multicast address, loopback, IPv6 link-local)
is dropped, except ICMP/ICMPv6, replies on connections the host opened, and
``input_allow_udp``/``input_allow_tcp`` ports, as the nft datapath's input
chain does; on bridge ports as described below. Counted as
``host_input_dropped``.

Restart: tc holds the programs and bpffs the maps, so guests keep working
while the daemon is away (an enabled tap's ARP is still answered, a refused
tap is still refused; TCP waits for the listeners, guests retry by SYN
retransmit). A new instance recompiles, adopts the pinned maps (their layout
is checked; a stale layout is replaced), and ``replace``s the filters at a
fixed ``prio``/handle, so nothing is duplicated.

Bridged taps (a tap enslaved to a Linux bridge) are served exactly like
routed ones, through the tap's own listener, as in the nft datapath. tc
ingress on the tap sees the frame before the bridge, so ARP and refusals need
nothing else. But once the program lets a frame go, the bridge takes it:
a steered segment would be flooded or passed up on the *bridge* (where the
socket assigned on the tap is not used: tested), and the guest's answer to
the host's ARP on the tap would reach the bridge's neighbour table. So, on
every enabled tap, steered segments and ARP replies to the tap's own MAC are
readdressed to the IEEE link-local group address that the bridge hands back
as received on the port (bridge.py). The IP layer then sees iif = the tap,
the tap-bound listener takes the segment, and the replies leave through the
tap. Identity is the listener's device; the mark makes the metadata address
local (routing.py). A tap that cannot be steered that way (it has its
bridge's MAC, or its port forwards the group address:
:meth:`bridge.PortFacts.unsteerable`) is left fail closed (refused: RST, no
ARP answer) with one warning, checked at every ``sync``. A bridge-family
input chain with a drop policy must accept the group address.

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
import errno
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.base import TapCounters, TapState
from interceptor.node.datapath.bridge import Link, dump_links, facts_from
from interceptor.node.datapath.ebpf_syscall import pinned_map_info
from interceptor.node.datapath.routing import DEFAULT_PREF, DEFAULT_TABLE, PolicyRouting

log = logging.getLogger(__name__)

SOURCE_NAME = "tap_ingress.c"
TAP_FUNCTION = "tap_ingress"
MAP_NAMES = ("enabled", "stats", "syn_bucket", "config", "bridge_ports", "host_allow")
INGRESS_PARENT = 0xFFFFFFF2  # clsact ingress ("ffff:fff2")
EGRESS_PARENT = 0xFFFFFFF3
FILTER_HANDLE = 1
DEFAULT_ARP_MAC = "02:a9:fe:a9:fe:00"  # same as the nft datapath
FALLBACK_HINT = "use --datapath nft"

# Per-CPU counters in `struct tap_stats`, and where each lands in TapCounters.
STAT_FIELDS: dict[str, str] = {
    "steered": "steered_packets",
    "refused": "refused_packets",
    "arp_replies": "arp_replies",
    "syn_limited": "syn_rate_limited",
    "malformed": "malformed",
    "no_listener": "no_listener",
    "dropped": "unsteered_dropped",
    "arp_refused": "arp_refused",
    "host_input": "host_input_dropped",  # same name as the nft datapath's counter
}
IPPROTO_TCP = 6
IPPROTO_UDP = 17

_INSTANCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class EbpfConfig:
    """Knobs of the eBPF datapath (the node config maps onto these)."""

    instance: str = "default"  # pins live in <bpffs>/interceptor/<instance>/
    bpffs: str = "/sys/fs/bpf"
    bpf_source: str | None = None  # path of tap_ingress.c; None: found next to the package
    arp_reply_mac: str = DEFAULT_ARP_MAC
    arp_when_refused: bool = False  # answer ARP on refused taps too (then RST, not timeout)
    syn_rate_per_s: int = 20  # per tap; 0 = no limit
    syn_burst: int = 40
    # Ports on the node itself that guests may reach (any of its addresses),
    # e.g. (67,) when the host runs their DHCP; as in NftConfig.
    input_allow_udp: tuple[int, ...] = ()
    input_allow_tcp: tuple[int, ...] = ()
    tc_prio: int = 77  # fixed filter priority: replace, never duplicate
    route_table: int = DEFAULT_TABLE
    rule_pref: int = DEFAULT_PREF

    def __post_init__(self) -> None:
        if not _INSTANCE.match(self.instance) or self.instance in (".", ".."):
            raise DatapathError(f"ebpf: invalid instance name {self.instance!r}")
        if not self.bpffs.startswith("/") or any(c in self.bpffs for c in '"\\\n '):
            # (it becomes a C string literal in the program)
            raise DatapathError(f"ebpf: bpffs must be a plain absolute path, not {self.bpffs!r}")
        if not _MAC.match(self.arp_reply_mac):
            raise DatapathError(f"ebpf: invalid ARP reply MAC {self.arp_reply_mac!r}")
        if int(self.arp_reply_mac[:2], 16) & 1:
            raise DatapathError(f"ebpf: ARP reply MAC {self.arp_reply_mac} is multicast")
        if self.syn_rate_per_s < 0 or self.syn_burst < 1:
            raise DatapathError("ebpf: syn_rate_per_s must be >= 0 and syn_burst >= 1")
        for port in (*self.input_allow_udp, *self.input_allow_tcp):
            if not 0 < port < 0x10000:
                raise DatapathError(f"ebpf: port {port} out of range")
        if not 0 < self.tc_prio < 0x10000:
            raise DatapathError(f"ebpf: tc_prio {self.tc_prio} must be in 1..65535")

    @property
    def pin_dir(self) -> Path:
        return Path(self.bpffs) / "interceptor" / self.instance

    @property
    def filter_name(self) -> str:
        """TCA_BPF_NAME of our filters: how a later run recognises them."""
        return f"interceptor:{self.instance}"


def default_source() -> Path:
    """Where ``tap_ingress.c`` is: a copy shipped inside the package wins,
    else the repository's ``bpf/`` beside the package (editable installs)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf" / SOURCE_NAME, here.parents[2] / "bpf" / SOURCE_NAME):
        if candidate.is_file():
            return candidate
    return here.parents[2] / "bpf" / SOURCE_NAME


class EbpfDatapath:
    """The ``Datapath`` protocol over a BCC-compiled tc program."""

    name = "ebpf"

    def __init__(self, cfg: EbpfConfig | None = None) -> None:
        self.cfg = cfg or EbpfConfig()
        self.routing = PolicyRouting(self.cfg.route_table, self.cfg.rule_pref)
        self._bpf: Any = None  # bcc.BPF; holds the program and map fds
        self._tap_fd = -1
        self._taps: dict[str, TapState] = {}
        self._blocked: dict[str, str] = {}  # steer wanted, impossible: why (warned once)
        self._attached: set[int] = set()  # ifindexes carrying our filter
        self._reconciled = False  # first sync after install scans every link

    # -- Datapath protocol -----------------------------------------------------

    def install(self) -> None:
        """Compile and load the program, adopt or create the pinned maps, write
        the config map, install policy routing. Filters are attached by sync."""
        self.close()  # install twice = reload once
        _ensure_bpffs(Path(self.cfg.bpffs))
        pin_dir = self.cfg.pin_dir
        try:
            pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatapathError(f"ebpf: cannot create {pin_dir}: {exc.strerror}") from None
        self._bpf = self._compile()
        if self._stale_layout():
            log.warning("ebpf: pinned maps in %s have another layout; recreating them", pin_dir)
            self._bpf.cleanup()
            _unpin(pin_dir, keep_dir=True)
            self._bpf = self._compile()
        self._tap_fd = self._load(TAP_FUNCTION)
        self._write_config()
        self.routing.install()
        self._attached = set()
        self._reconciled = False

    def heartbeat(self, lasting: float | None = None) -> None:
        """Nothing to renew: the program sees for itself that a tap has no
        socket (bpf_skc_lookup_tcp) and answers with a RST."""

    def installed(self) -> bool:
        pins = all((self.cfg.pin_dir / m).exists() for m in MAP_NAMES)
        return pins and self.routing.present()

    def sync(self, taps: Mapping[str, TapState]) -> None:
        """Attach to every tap in ``taps``, set the map entries, detach from
        and forget every ifindex no longer wanted (a bridge an earlier version
        attached to included)."""
        if self._bpf is None:
            raise DatapathError("ebpf: not installed; install() the datapath first")
        for name, tap in taps.items():
            if name != tap.ifname:
                raise DatapathError(f"ebpf: bad tap entry {name!r}")
        links = dump_links() if taps else {}  # one dump: bridges and steerability
        blocked = self._unsteerable(taps, links)
        for name, why in sorted(blocked.items()):
            if self._blocked.get(name) != why:  # once per tap and reason
                log.warning("ebpf: tap %s is not steered (fail closed): %s", name, why)
        with IPRoute() as ipr:
            want = {tap.ifindex for tap in taps.values()}
            # The first sync after install replaces the program on every link
            # (an earlier run's, maybe older, program); later ones touch only
            # links that changed, so a sync costs per change, not per tap.
            first = not self._reconciled
            if first:
                self._attached = self._scan_attached(ipr)
                self._reconciled = True
            self._set_entries(taps, set(blocked), links)
            for ifindex in sorted(self._attached - want):
                self._detach(ipr, ifindex)
            for ifindex in sorted(want if first else want - self._attached):
                try:
                    self._attach(ipr, ifindex, self._tap_fd)
                except _LinkGone:
                    log.info("ebpf: ifindex %d vanished during sync", ifindex)
        self._taps = dict(taps)
        self._blocked = blocked

    def unsteerable(self) -> dict[str, str]:
        """Taps the last sync was asked to steer but left fail-closed, with why
        (see bridge.py); for operators' status output and tests."""
        return dict(self._blocked)

    def _unsteerable(self, taps: Mapping[str, TapState], links: Mapping[int, Link]
                     ) -> dict[str, str]:
        """Taps meant to be steered whose frames cannot reach their listener
        (bridge.py), by name, with the reason."""
        wanted = {tap.ifindex: name for name, tap in taps.items() if tap.steer}
        facts = facts_from(links, set(wanted)) if wanted else {}
        out: dict[str, str] = {}
        for idx, name in wanted.items():
            why = facts[idx].unsteerable() if idx in facts else None
            if why is not None:
                out[name] = why
        return out

    def counters(self) -> dict[str, TapCounters]:
        if self._bpf is None:
            return {}
        by_index = {tap.ifindex: name for name, tap in self._taps.items()}
        out = {name: TapCounters() for name in self._taps}
        for key, per_cpu in self._table("stats").items():
            name = by_index.get(int(key.value))
            if name is None:
                continue
            c = out[name]
            for field_name, target in STAT_FIELDS.items():
                total = sum(int(getattr(v, field_name)) for v in per_cpu)
                if hasattr(c, target):
                    setattr(c, target, getattr(c, target) + total)
                else:
                    c.extra[target] = c.extra.get(target, 0) + total
        return out

    def remove(self) -> None:
        """Detach every filter of ours (any link), delete clsact qdiscs left
        empty, unpin the maps, remove policy routing. Needs neither BCC nor a
        prior install (``--cleanup`` after a crash)."""
        with IPRoute() as ipr:
            for ifindex in sorted(self._scan_attached(ipr) | self._attached):
                self._detach(ipr, ifindex)
        self.close()
        _unpin(self.cfg.pin_dir, keep_dir=False)
        self.routing.remove()
        self._attached = set()
        self._taps = {}
        self._blocked = {}
        self._reconciled = False

    # -- extras for operators and tests ------------------------------------------

    def attached_ifindexes(self) -> set[int]:
        """Links that carry one of our filters right now (scans every link)."""
        with IPRoute() as ipr:
            return self._scan_attached(ipr)

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
        source = Path(self.cfg.bpf_source) if self.cfg.bpf_source else default_source()
        try:
            text = source.read_text()
        except OSError as exc:
            raise DatapathError(
                f"ebpf: cannot read the program source {source}: {exc.strerror} "
                f"(set bpf_source), or {FALLBACK_HINT}") from None
        cflags = [f'-DPIN_DIR="{self.cfg.pin_dir}"']
        try:
            return BPF(text=text.encode(), cflags=cflags)
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

    def _set_entries(self, taps: Mapping[str, TapState], blocked: set[str],
                     links: Mapping[int, Link]) -> None:
        enabled = self._table("enabled")
        want = {tap.ifindex: tap.mark for tap in taps.values()
                if tap.steer and tap.ifname not in blocked}
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
        want_ports = bridges_of(taps, links)
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

    # -- tc plumbing -----------------------------------------------------------------

    def _attach(self, ipr: Any, ifindex: int, fd: int) -> None:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                raise _LinkGone from None
            if exc.code != errno.EEXIST:
                raise DatapathError(f"ebpf: cannot add clsact on ifindex {ifindex}: {exc}") \
                    from None
        try:
            ipr.tc("replace-filter", "bpf", ifindex, f":{FILTER_HANDLE}", fd=fd,
                   name=self.cfg.filter_name, parent=INGRESS_PARENT, prio=self.cfg.tc_prio,
                   classid=1, direct_action=True)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                raise _LinkGone from None
            raise DatapathError(f"ebpf: cannot attach to ifindex {ifindex}: {exc}") from None
        self._attached.add(ifindex)

    def _detach(self, ipr: Any, ifindex: int) -> None:
        """Delete our filter; delete the clsact qdisc when nothing else uses it."""
        self._attached.discard(ifindex)
        try:
            if self._ours_on(ipr, ifindex):
                ipr.tc("del-filter", "bpf", ifindex, f":{FILTER_HANDLE}",
                       parent=INGRESS_PARENT, prio=self.cfg.tc_prio)
            if not any(ipr.get_filters(index=ifindex, parent=parent)
                       for parent in (INGRESS_PARENT, EGRESS_PARENT)):
                ipr.tc("del", "clsact", ifindex)
        except NetlinkError as exc:
            # Gone already: the link (ENODEV), the filter (ENOENT), the qdisc (EINVAL).
            if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                raise DatapathError(f"ebpf: cannot detach from ifindex {ifindex}: {exc}") \
                    from None

    def _ours_on(self, ipr: Any, ifindex: int) -> bool:
        for f in ipr.get_filters(index=ifindex, parent=INGRESS_PARENT):
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME") == self.cfg.filter_name:
                return True
        return False

    def _scan_attached(self, ipr: Any) -> set[int]:
        """Every link whose clsact ingress carries a filter with our name."""
        found: set[int] = set()
        for q in ipr.get_qdiscs():
            if q.get_attr("TCA_KIND") != "clsact":
                continue
            try:
                if self._ours_on(ipr, int(q["index"])):
                    found.add(int(q["index"]))
            except NetlinkError:
                continue
        return found


def bridges_of(taps: Mapping[str, TapState], links: Mapping[int, Link]
               ) -> dict[int, tuple[int, bytes]]:
    """tap ifindex -> (bridge ifindex, bridge MAC) for every tap the kernel
    (the link dump) shows enslaved to a bridge. Its word wins over
    ``TapState.bridge``, which may be a sync old: a tap enslaved since is
    judged as a port at once, one released since as a routed tap."""
    out: dict[int, tuple[int, bytes]] = {}
    for tap in taps.values():
        link = links.get(tap.ifindex)
        master = links.get(link.master) if link is not None and link.master else None
        if link is None or master is None or master.kind != "bridge":
            continue
        mac = bytes.fromhex(master.mac.replace(":", "")) if master.mac else bytes(6)
        out[tap.ifindex] = (link.master, mac)
    return out


class _LinkGone(Exception):
    """The link disappeared while we worked on it (tap churn)."""


def _delete(table: Any, key: Any) -> None:
    with contextlib.suppress(KeyError):
        del table[key]


def _sizeof(ctype: Any) -> int:
    return ctypes.sizeof(ctype)


BPF_FS_MAGIC = 0xCAFE4A11


def _is_bpffs(path: Path) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def _ensure_bpffs(root: Path) -> None:
    """Mount bpffs at ``root`` unless it is one already.

    In a private mount namespace (``ip netns exec`` makes one, with its own
    /sys) a bpffs mounted here is a new, empty instance that dies with the
    process, so nothing pinned would survive a restart: point ``bpffs`` at the
    host's instance instead (``/proc/<pid in the host mount namespace>/root/
    sys/fs/bpf``)."""
    if _is_bpffs(root):
        return
    try:
        private = os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        private = False
    if private:
        log.warning("ebpf: %s is no bpffs in this private mount namespace; mounting one "
                    "here, but pins will not outlive this process (set bpffs to the "
                    "host's, e.g. /proc/<pid>/root/sys/fs/bpf)", root)
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DatapathError(
            f"ebpf: {root} is not a bpffs and mounting one failed: "
            f"{proc.stderr.strip() or proc.returncode}")


def _unpin(pin_dir: Path, *, keep_dir: bool) -> None:
    try:
        entries = list(pin_dir.iterdir())
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatapathError(f"ebpf: cannot list {pin_dir}: {exc.strerror}") from None
    for entry in entries:
        entry.unlink(missing_ok=True)
    if keep_dir:
        return
    for d in (pin_dir, pin_dir.parent):
        try:
            d.rmdir()
        except OSError:
            break  # not empty (another instance) or gone


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
