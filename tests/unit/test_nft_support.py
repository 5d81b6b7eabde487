"""Routing, listener and link-watcher pieces the datapaths share (no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.bridge import Link as RawLink
from interceptor.node.datapath.links import LinkInfo, _managed, matches
from interceptor.node.datapath.listeners import TapListenerError, open_tap_listener
from interceptor.node.datapath.routing import (
    FR_ACT_GOTO,
    FR_ACT_NOP,
    FR_ACT_TO_TBL,
    PolicyRouting,
    rp_filter_blocks,
)


def test_rules_are_constant_and_exclude_local_traffic() -> None:
    rules = PolicyRouting(table=4711, pref=900)._rules()
    assert [r["priority"] for r in rules] == [900, 901, 902]
    skip, lookup, nop = rules
    assert skip["iifname"] == "lo" and skip["action"] == FR_ACT_GOTO and skip["goto"] == 902
    assert (skip["fwmark"], skip["fwmask"]) == (0x4D000000, 0xFF000000)
    assert lookup["action"] == FR_ACT_TO_TBL and lookup["table"] == 4711
    assert "iifname" not in lookup  # no per-tap rules
    assert nop["action"] == FR_ACT_NOP


@pytest.mark.parametrize("kwargs", [{"table": 254}, {"table": 0}, {"pref": 0},
                                    {"pref": 32765}])
def test_routing_refuses_reserved_numbers(kwargs: dict[str, int]) -> None:
    with pytest.raises(DatapathError, match=r"^routing: "):
        PolicyRouting(**kwargs)


def test_rp_filter_mode_is_the_stricter_of_all_and_device(tmp_path: Path) -> None:
    for dev, value in (("all", "0"), ("tap1", "1"), ("tap2", "0")):
        (tmp_path / dev).mkdir()
        (tmp_path / dev / "rp_filter").write_text(value + "\n")
    assert rp_filter_blocks("tap1", tmp_path) == 1
    assert rp_filter_blocks("tap2", tmp_path) == 0
    (tmp_path / "all" / "rp_filter").write_text("2\n")
    assert rp_filter_blocks("tap2", tmp_path) == 2
    assert rp_filter_blocks("missing", tmp_path) == 2


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a\0b"])
def test_listener_refuses_bad_names(name: str) -> None:
    with pytest.raises(TapListenerError, match="invalid interface name"):
        open_tap_listener(name)


def test_links_filter_by_pattern_and_report_bridges() -> None:
    raw = {1: RawLink("lo", "00:00:00:00:00:00"), 2: RawLink("br0", "02:00:00:00:00:02",
                                                             kind="bridge"),
           3: RawLink("tap1", "02:00:00:00:00:03", master=2, kind="tun"),
           4: RawLink("vnet7", "02:00:00:00:00:04", kind="tun"),
           5: RawLink("eth0", "02:00:00:00:00:05", kind="veth"),
           6: RawLink("mdtapx", "02:00:00:00:00:06", master=7, kind="veth"),
           7: RawLink("bond0", "02:00:00:00:00:07", kind="bond")}
    links = _managed(raw, ("tap*", "vnet*", "mdtap*"))
    assert links == {
        "tap1": LinkInfo(3, "br0", "02:00:00:00:00:03"),
        "vnet7": LinkInfo(4, None, "02:00:00:00:00:04"),
        "mdtapx": LinkInfo(6, None, "02:00:00:00:00:06"),  # a bond is no bridge
    }


def test_pattern_matching_is_case_sensitive_fnmatch() -> None:
    assert matches("tap0", ["tap*"])
    assert not matches("TAP0", ["tap*"])
    assert matches("vnet12", ["tap*", "vnet?2"])
