"""Latches on disk: atomic, private, and void after a reboot."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from interceptor.common.errors import ConfigError
from interceptor.node.latches import NEVER, FileLatches


def test_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    store = FileLatches(str(tmp_path / "state"), "node-a", boot_id="boot-1")
    store.check()
    assert store.load() == {}
    store.save({("vnet0", 7): 12, ("tap1", 9): 40})
    assert FileLatches(str(tmp_path / "state"), "node-a", boot_id="boot-1").load() == {
        ("vnet0", 7): 12, ("tap1", 9): 40}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert not list(store.path.parent.glob("*.tmp"))


def test_after_a_reboot_nothing_latched_matches(tmp_path: Path) -> None:
    FileLatches(str(tmp_path), "n", boot_id="boot-1").save({("vnet0", 7): 12})
    assert FileLatches(str(tmp_path), "n", boot_id="boot-2").load() == {("vnet0", 7): NEVER}


def test_an_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    store = FileLatches(str(tmp_path), "n", boot_id="b")
    store.path.write_text("{not json")
    assert store.load() == {}
    assert store.path.with_name(store.path.name + ".bad").exists()
    store.path.write_text(json.dumps({"latches": [["x"]]}))
    assert store.load() == {}


def test_an_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="state_dir"):
        FileLatches(str(blocker / "sub"), "n").check()
