"""EbpfDatapath against the real kernel (private namespace): attach/detach,
idempotence, restart with pinned maps, removal, and its one-line errors."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from interceptor.common.errors import ConfigError, DatapathError
from interceptor.node.datapath.base import mark_for
from interceptor.node.datapath.ebpf import MAP_NAMES, SOURCE, EbpfConfig, EbpfDatapath
from interceptor.node.datapath.ebpf_syscall import pinned_map_info
from interceptor.node.datapath.ebpf_tc import INGRESS_PARENT
from tests.bpf.lab import PacketLab
from tests.lab import unique

pytestmark = pytest.mark.root


def our_filters(cfg: EbpfConfig, ifindex: int) -> int:
    """Filters on the link's clsact ingress carrying our name."""
    with IPRoute() as ipr:
        n = 0
        for f in ipr.get_filters(index=ifindex, parent=INGRESS_PARENT):
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME") == cfg.filter_name:
                n += 1
        return n


def all_filters(ifindex: int) -> int:
    with IPRoute() as ipr:
        return sum(1 for f in ipr.get_filters(index=ifindex, parent=INGRESS_PARENT)
                   if f.get_attr("TCA_OPTIONS") is not None)


def has_clsact(ifindex: int) -> bool:
    with IPRoute() as ipr:
        return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def enabled_entries(dp: EbpfDatapath) -> dict[int, int]:
    return {int(k.value): int(v.mark) for k, v in dp._table("enabled").items()}


def test_sync_is_idempotent_and_follows_the_taps(lab: PacketLab) -> None:
    dp = lab.datapath()
    assert dp.installed()
    assert all((dp.cfg.pin_dir / m).exists() for m in MAP_NAMES)
    taps = lab.taps({"ena": True, "off": False})
    dp.sync(taps)
    dp.sync(taps)
    for link in ("ena", "off"):
        assert our_filters(dp.cfg, lab.ifindex[link]) == 1
        assert all_filters(lab.ifindex[link]) == 1
    assert enabled_entries(dp) == {lab.ifindex["ena"]: mark_for(lab.ifindex["ena"])}
    assert dp.attached_ifindexes() == {lab.ifindex["ena"], lab.ifindex["off"]}

    # Toggle: ena refused, off steered.
    dp.sync(lab.taps({"ena": False, "off": True}))
    assert enabled_entries(dp) == {lab.ifindex["off"]: mark_for(lab.ifindex["off"])}

    # A tap that leaves: filter and qdisc gone, its entries forgotten.
    dp.sync(lab.taps({"off": True}))
    assert our_filters(dp.cfg, lab.ifindex["ena"]) == 0
    assert not has_clsact(lab.ifindex["ena"])
    assert our_filters(dp.cfg, lab.ifindex["off"]) == 1
    assert set(dp.counters()) == {"off"}
    dp.remove()


def test_restart_adopts_pinned_maps_without_duplicating_filters(lab: PacketLab) -> None:
    first = lab.datapath()
    first.sync(lab.taps({"ena": True, "off": False}))
    stats = first._table("stats")
    key = stats.Key(lab.ifindex["ena"])
    per_cpu = stats.Leaf()
    for cpu_value in per_cpu:
        cpu_value.steered = 7
    stats[key] = per_cpu
    before = first.counters()["ena"].steered_packets
    assert before == 7 * len(per_cpu)
    first.close()  # the loader goes away; tc keeps the program, bpffs the maps

    second = EbpfDatapath(first.cfg)
    lab.datapaths.append(second)
    second.install()
    # Adopted before any sync: the enabled entry and the counters are there.
    assert enabled_entries(second) == {lab.ifindex["ena"]: mark_for(lab.ifindex["ena"])}
    second.sync(lab.taps({"ena": True, "off": False}))
    assert second.counters()["ena"].steered_packets == before
    for link in ("ena", "off"):
        assert our_filters(second.cfg, lab.ifindex[link]) == 1
        assert all_filters(lab.ifindex[link]) == 1
    second.remove()


def test_restart_after_a_tap_vanished_while_down(lab: PacketLab) -> None:
    first = lab.datapath()
    first.sync(lab.taps({"ena": True, "off": True}))
    first.close()
    second = EbpfDatapath(first.cfg)
    lab.datapaths.append(second)
    second.install()
    second.sync(lab.taps({"ena": True}))  # "off" is no longer wanted
    assert our_filters(second.cfg, lab.ifindex["off"]) == 0
    assert not has_clsact(lab.ifindex["off"])
    assert enabled_entries(second) == {lab.ifindex["ena"]: mark_for(lab.ifindex["ena"])}
    second.remove()


def test_upgrade_detaches_an_earlier_versions_bridge_program(lab: PacketLab) -> None:
    """Earlier versions also attached a program to the bridge of bridged taps;
    bridged taps now need nothing on the bridge, so the first sync after a
    restart takes it off (and its clsact qdisc with it)."""
    first = lab.datapath()
    first.sync(lab.taps({"brp": True}, bridge={"brp": "br"}))
    with IPRoute() as ipr:  # what an earlier version left on the bridge
        first.filters.attach(ipr, lab.ifindex["br"], first.tap_program_fd)
    assert our_filters(first.cfg, lab.ifindex["br"]) == 1
    first.close()
    second = EbpfDatapath(first.cfg)
    lab.datapaths.append(second)
    second.install()
    second.sync(lab.taps({"brp": True}, bridge={"brp": "br"}))
    assert second.attached_ifindexes() == {lab.ifindex["brp"]}
    assert not has_clsact(lab.ifindex["br"])
    second.remove()


def test_stale_pinned_layout_is_replaced(lab: PacketLab) -> None:
    from bcc import BPF

    cfg = EbpfConfig(instance=unique())
    cfg.pin_dir.mkdir(parents=True)
    # An older version left its `enabled` map under our name: a mark and the
    # bridge's MAC per tap (12 bytes; now it is the mark alone).
    old = BPF(text=(b"struct old_target { u32 mark; u8 l2_dst[6]; u16 pad; };\n"
                    + f'BPF_TABLE_PINNED("hash", u32, struct old_target, enabled, 16, '
                      f'"{cfg.pin_dir}/enabled");'.encode()))
    old.cleanup()
    assert pinned_map_info(str(cfg.pin_dir / "enabled")).value_size == 12
    dp = EbpfDatapath(cfg)
    lab.datapaths.append(dp)
    dp.install()
    assert ctypes.sizeof(dp._table("enabled").Leaf) == 4
    assert pinned_map_info(str(cfg.pin_dir / "enabled")).value_size == 4
    dp.sync(lab.taps({"ena": True}))
    assert enabled_entries(dp) == {lab.ifindex["ena"]: mark_for(lab.ifindex["ena"])}
    dp.remove()


def test_remove_leaves_nothing_and_needs_no_install(lab: PacketLab) -> None:
    dp = lab.datapath()
    dp.sync(lab.taps({"ena": True, "off": False}, ))
    dp.close()  # as after a crash: a fresh object cleans up
    cleaner = EbpfDatapath(dp.cfg)
    cleaner.remove()
    for link in ("ena", "off"):
        assert all_filters(lab.ifindex[link]) == 0
        assert not has_clsact(lab.ifindex[link])
    assert not dp.cfg.pin_dir.exists()
    assert not cleaner.installed()
    cleaner.remove()  # twice is fine


def test_remove_keeps_foreign_filters_and_their_qdisc(lab: PacketLab) -> None:
    dp = lab.datapath()
    dp.sync(lab.taps({"ena": True}))
    other = lab.datapath(tc_prio=99)  # someone else's filter on the same qdisc
    other.sync(lab.taps({"ena": True}))
    dp.remove()
    assert our_filters(other.cfg, lab.ifindex["ena"]) == 1
    assert has_clsact(lab.ifindex["ena"])
    other.remove()
    assert not has_clsact(lab.ifindex["ena"])


# -- one-line errors ---------------------------------------------------------------


def one_line_with_hint(exc: DatapathError) -> str:
    text = str(exc)
    assert "\n" not in text
    assert "--datapath nft" in text
    return text


def test_missing_source_is_one_clear_line(lab: PacketLab, tmp_path: Path) -> None:
    dp = EbpfDatapath(EbpfConfig(instance=unique(), bpf_source=str(tmp_path / "nope.c")))
    lab.datapaths.append(dp)
    with pytest.raises(DatapathError) as err:
        dp.install()
    assert "nope.c" in one_line_with_hint(err.value)


def test_compile_error_is_one_clear_line(lab: PacketLab, tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text(SOURCE.read_text() + "\nthis is not C;\n")
    dp = EbpfDatapath(EbpfConfig(instance=unique(), bpf_source=str(bad)))
    lab.datapaths.append(dp)
    with pytest.raises(DatapathError) as err:
        dp.install()
    assert "could not compile" in one_line_with_hint(err.value)


def test_verifier_refusal_is_one_clear_line(lab: PacketLab, tmp_path: Path) -> None:
    src = SOURCE.read_text()
    # Unbounded read of packet memory: the verifier must refuse it.
    src = src.replace("int tap_ingress(struct __sk_buff *skb)\n{",
                      "int tap_ingress(struct __sk_buff *skb)\n{\n"
                      "    if (*(__u8 *)(long)skb->data == 1) return 1;", 1)
    bad = tmp_path / "unsafe.c"
    bad.write_text(src)
    dp = EbpfDatapath(EbpfConfig(instance=unique(), bpf_source=str(bad)))
    lab.datapaths.append(dp)
    with pytest.raises(DatapathError) as err:
        dp.install()
    assert "refused" in one_line_with_hint(err.value)


def test_missing_bcc_is_one_clear_line(lab: PacketLab, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    dp = EbpfDatapath(EbpfConfig(instance=unique()))
    lab.datapaths.append(dp)
    with pytest.raises(DatapathError) as err:
        dp.install()
    assert "BCC" in one_line_with_hint(err.value)


def test_bad_options_are_refused() -> None:
    for kw in ({"instance": "../x"}, {"arp_reply_mac": "01:00:00:00:00:01"},
               {"arp_reply_mac": "nope"}, {"syn_burst": 0}, {"tc_prio": 0},
               {"bpffs": "relative"}, {"bpffs": '/sys/fs/bpf"; x'}):
        with pytest.raises(ConfigError):
            EbpfConfig(**kw)
