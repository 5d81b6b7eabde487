"""Names, commands and network namespaces for tests and the bench.

Every kernel object a test makes gets a name from :func:`unique` (``t`` + 5
hex digits, or a caller's prefix), so tests running at the same time on one
machine never clash; the context managers remove what they made, also when
the body raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def suffix() -> str:
    return secrets.token_hex(3)[:5]


def unique(prefix: str = "t") -> str:
    """A kernel object name no other test uses (≤ 15 characters)."""
    name = prefix + suffix()
    assert len(name) <= 15, name
    return name


def random_mac() -> str:
    """A locally administered unicast MAC address."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def sh(args: Sequence[str], *, netns: str | None = None, timeout: float = 15.0,
       check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``netns`` if given); text output; bounded in time."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(*args: str, netns: str | None = None) -> str:
    """``ip [-n netns] ARGS``; its output, or RuntimeError with ip's complaint."""
    return sh(["ip", *(["-n", netns] if netns else []), *args]).stdout


def ifindex(netns: str, ifname: str) -> int:
    return int(sh(["cat", f"/sys/class/net/{ifname}/ifindex"], netns=netns).stdout)


def mac_of(netns: str, ifname: str) -> str:
    return sh(["cat", f"/sys/class/net/{ifname}/address"], netns=netns).stdout.strip()


def setns_fd(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {what}")


def setns(name: str) -> None:
    """Move the calling thread into the named namespace (``/run/netns/NAME``)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns_fd(fd, name)
    finally:
        os.close(fd)


@contextlib.contextmanager
def netns(name: str | None = None) -> Iterator[str]:
    """A fresh network namespace with ``lo`` up; deleted on exit."""
    name = name or unique()
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        sh(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def entered_netns() -> Iterator[str]:
    """A fresh namespace the calling thread is moved into; moved back and
    the namespace deleted on exit (for code that acts on "its" namespace)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        with netns() as name:
            setns(name)
            try:
                yield name
            finally:
                setns_fd(home, "back home")
    finally:
        os.close(home)


@contextlib.contextmanager
def tap_device(netns_name: str | None, name: str | None = None) -> Iterator[str]:
    """A persistent tap (``ip tuntap add``), up, that QEMU attaches to; deleted on exit.

    It shows NO-CARRIER until QEMU opens it; deleting the netns also removes it.
    """
    name = name or unique("tap")
    ip("tuntap", "add", "dev", name, "mode", "tap", netns=netns_name)
    try:
        ip("link", "set", name, "up", netns=netns_name)
        yield name
    finally:
        sh(["ip", *(["-n", netns_name] if netns_name else []), "link", "del", name],
           check=False)
