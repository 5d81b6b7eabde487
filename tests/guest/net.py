"""Kernel objects for guest tests: a private netns and a persistent tap.

Both are context managers that remove what they made, also when the body
raises. Names come from ``unique_name`` so parallel tests never clash.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def unique_name(prefix: str = "t") -> str:
    """``t`` + 5 random hex chars: short enough for netns and link names."""
    return prefix + secrets.token_hex(3)[:5]


def random_mac() -> str:
    """A locally administered unicast MAC address."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", "-n", netns, *args] if netns else ["ip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def netns(name: str | None = None) -> Iterator[str]:
    """A fresh network namespace with ``lo`` up; deleted on exit."""
    name = name or unique_name()
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextmanager
def tap_device(netns_name: str | None, name: str | None = None) -> Iterator[str]:
    """A persistent tap (``ip tuntap add``), up, that QEMU attaches to; deleted on exit.

    It shows NO-CARRIER until QEMU opens it; deleting the netns also removes it.
    """
    name = name or unique_name("tap")
    ip("tuntap", "add", "dev", name, "mode", "tap", netns=netns_name)
    try:
        ip("link", "set", name, "up", netns=netns_name)
        yield name
    finally:
        cmd = ["ip", "-n", netns_name] if netns_name else ["ip"]
        subprocess.run([*cmd, "link", "del", name], capture_output=True, check=False)
