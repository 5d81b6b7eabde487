"""bpffs for the eBPF datapath: mounting it when needed, and unpinning."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from pathlib import Path

from interceptor.common.errors import DatapathError

log = logging.getLogger(__name__)

BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: Path) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def ensure_bpffs(root: Path) -> None:
    """Mount bpffs at ``root`` unless it is one already.

    In a private mount namespace (``ip netns exec`` makes one, with its own
    /sys) a bpffs mounted here is a new, empty instance that dies with the
    process, so nothing pinned would survive a restart: point ``bpffs`` at the
    host's instance instead (``/proc/<pid in the host mount namespace>/root/
    sys/fs/bpf``)."""
    if is_bpffs(root):
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


def unpin(pin_dir: Path, *, keep_dir: bool) -> None:
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
