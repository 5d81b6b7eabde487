"""Latches on disk: which tap incarnation each binding was first served on.

desired_state.py decides; this module only keeps its ``Latches`` across
restarts, so a daemon restarted after a tap was deleted and recreated does
not latch the old binding onto the new tap. The file is small JSON, written
atomically (temporary file, fsync, rename). It records the kernel's boot id:
after a reboot every ifindex is meaningless, so every loaded latch becomes
one that nothing matches (those taps wait for the platform to bind again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Protocol

from interceptor.common.errors import ConfigError
from interceptor.node.desired_state import Latches

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
NEVER = -1
FORMAT = 1


class LatchStore(Protocol):
    def load(self) -> Latches: ...

    def save(self, latches: Latches) -> None: ...


class MemoryLatches:
    """For tests: keeps latches in memory."""

    def __init__(self, latches: Latches | None = None) -> None:
        self.latches: Latches = dict(latches or {})

    def load(self) -> Latches:
        return dict(self.latches)

    def save(self, latches: Latches) -> None:
        self.latches = dict(latches)


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class FileLatches:
    """``<state_dir>/latches-<node>.json``; the directory is made 0700."""

    def __init__(self, state_dir: str, node: str, boot_id: str | None = None) -> None:
        self.path = Path(state_dir) / f"latches-{node}.json"
        self._boot = _boot_id() if boot_id is None else boot_id

    def check(self) -> None:
        """Fail at start, with one line, if the state directory is unusable."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.path.parent / f".probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"config: state_dir {self.path.parent} is not writable: "
                              f"{exc.strerror or exc}") from None

    def load(self) -> Latches:
        try:
            data = json.loads(self.path.read_text())
            entries = data["latches"]
            boot = str(data.get("boot_id", ""))
            latches = {(str(name), int(gen)): int(ifindex) for name, gen, ifindex in entries}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Kept aside for the operator; the node then starts as on a new
            # host (bindings latch onto the taps present now).
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_name(self.path.name + ".bad"))
            log.error("latches file %s is unreadable (%s); moved aside, starting afresh",
                      self.path, exc)
            return {}
        if boot != self._boot:
            log.info("host rebooted since %s was written: %d latched bindings wait for the "
                     "platform to bind them again", self.path, len(latches))
            return dict.fromkeys(latches, NEVER)
        return latches

    def save(self, latches: Latches) -> None:
        body = json.dumps({"format": FORMAT, "boot_id": self._boot,
                           "latches": sorted([n, g, i] for (n, g), i in latches.items())})
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
