"""Routing, listener and link-watcher pieces the datapaths share (no kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interceptor.common.errors import DatapathError
from interceptor.node.datapath.links import LinkInfo, _links_from, matches
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


def msg(index: int, name: str, kind: str | None = None, master: int = 0,
        operstate: str = "UP", flags: int = 1) -> dict[str, Any]:
    return {"index": index, "ifname": name, "master": master,
            "address": f"02:00:00:00:00:{index:02x}", "operstate": operstate, "flags": flags,
            "IFLA_LINKINFO": {"IFLA_INFO_KIND": kind} if kind else None}


def test_links_filter_by_pattern_and_report_bridges() -> None:
    msgs = [msg(1, "lo"), msg(2, "br0", "bridge"), msg(3, "tap1", "tun", master=2),
            msg(4, "vnet7", "tun", operstate="DOWN", flags=0), msg(5, "eth0", "veth"),
            msg(6, "mdtapx", "veth", master=7), msg(7, "bond0", "bond"),
            msg(8, "tap9", "tun", operstate="UNKNOWN")]
    links = _links_from(msgs, ("tap*", "vnet*", "mdtap*"))
    assert links == {
        "tap1": LinkInfo(3, "br0", "02:00:00:00:00:03", True),
        "vnet7": LinkInfo(4, None, "02:00:00:00:00:04", False),
        "mdtapx": LinkInfo(6, None, "02:00:00:00:00:06", True),  # a bond is no bridge
        "tap9": LinkInfo(8, None, "02:00:00:00:00:08", True),  # tun: UNKNOWN but IFF_UP
    }


def test_pattern_matching_is_case_sensitive_fnmatch() -> None:
    assert matches("tap0", ["tap*"])
    assert not matches("TAP0", ["tap*"])
    assert matches("vnet12", ["tap*", "vnet?2"])
