"""Test harness: a "compute node" network namespace with guests attached by
veth pairs or real tap devices, plus a way to run Python objects inside a
namespace. Shared by the end-to-end tests of every datapath.

Everything made here gets a per-test unique name (``t`` + 5 hex digits, or
a caller's prefix) and is removed by ``Topology.close()`` (the pytest fixture
``topology`` calls it) also when the test fails. Traffic only ever goes
between namespaces made here.

Run as a script it provides the helpers that must live in another namespace:

    python -m tests.e2e.netns rpc MODULE:FACTORY JSON_ARGS   (see NetnsRpc)
    python -m tests.e2e.netns pump NODE_NS TAP GUEST_NS IFNAME   (see add_tap_guest)
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CLONE_NEWNET = 0x40000000


def suffix() -> str:
    return secrets.token_hex(3)[:5]


def unique(prefix: str = "t") -> str:
    """A kernel object name no other test uses (≤ 15 characters)."""
    name = prefix + suffix()
    assert len(name) <= 15, name
    return name


def sh(args: Sequence[str], *, netns: str | None = None, timeout: float = 15.0,
       check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``netns`` if given); text output; bounded in time."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ifindex(netns: str, ifname: str) -> int:
    return int(sh(["cat", f"/sys/class/net/{ifname}/ifindex"], netns=netns).stdout)


def mac_of(netns: str, ifname: str) -> str:
    return sh(["cat", f"/sys/class/net/{ifname}/address"], netns=netns).stdout.strip()


@dataclass
class Guest:
    """A guest: its own namespace, ``ifname`` inside it, ``tap`` in the node."""

    netns: str
    tap: str
    ifname: str
    ip: str  # with prefix length, e.g. 10.0.0.2/24
    route: str  # "onlink" (ip route add 169.254.169.254 dev eth0) or "gateway"
    gateway: str | None
    kind: str  # "veth" or "tap"
    bridge: str | None = None  # the node's Linux bridge the tap is a port of

    def run(self, args: Sequence[str], *, timeout: float = 15.0,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh(args, netns=self.netns, timeout=timeout, check=check)

    def curl(self, url: str, *extra: str, max_time: float = 3.0
             ) -> subprocess.CompletedProcess[str]:
        """curl with ``-w`` printing ``\\n<code> <seconds>`` after the body."""
        return self.run(["curl", "-sS", "--max-time", str(max_time), "-w",
                         "\n%{http_code} %{time_total}", *extra, url],
                        timeout=max_time + 5)


@dataclass
class Topology:
    """A node namespace and its guests; ``close()`` removes everything."""

    prefix: str = field(default_factory=lambda: "t" + suffix())
    node: str = ""
    guests: list[Guest] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _count: int = 0

    def __post_init__(self) -> None:
        self.node = self.add_netns("n")

    def add_netns(self, role: str) -> str:
        name = f"{self.prefix}{role}{len(self._namespaces)}"
        sh(["ip", "netns", "add", name])
        self._namespaces.append(name)
        sh(["ip", "link", "set", "lo", "up"], netns=name)
        return name

    def tap_name(self) -> str:
        self._count += 1
        return f"mdtap{self.prefix[1:]}{self._count}"[:15]

    def add_bridge(self, mac: str | None = "02:b0:00:00:00:01") -> str:
        """A Linux bridge in the node namespace (gone with the namespace).
        ``mac`` gives it an address of its own, as libvirt does; None lets it
        adopt its lowest port's MAC, as a bare ``ip link add type bridge`` does."""
        self._count += 1
        name = f"br{self.prefix[1:]}{self._count}"[:15]
        sh(["ip", "link", "add", name, "type", "bridge"], netns=self.node)
        if mac:
            sh(["ip", "link", "set", name, "address", mac], netns=self.node)
        sh(["ip", "link", "set", name, "up"], netns=self.node)
        return name

    def add_guest(self, *, ip: str = "10.0.0.2/24", mac: str | None = None,
                  route: str = "onlink", gateway: str = "10.0.0.1",
                  kind: str = "veth", tap: str | None = None,
                  bridge: str | None = None, index: int | None = None) -> Guest:
        """A guest namespace wired to the node by a veth pair (host end = the
        "tap") or by a real tap device whose frames a pump process carries to
        a tap inside the guest namespace. ``route="gateway"`` gives the guest
        a default route via ``gateway`` and puts ``gateway/32`` on the host
        end, so the host answers ARP for it (as a routed-tap setup does).
        ``bridge`` (from ``add_bridge``) makes the tap a port of that bridge
        instead; the gateway address then goes on the bridge, with the
        guest's prefix length. ``index`` picks the host end's ifindex (veth)."""
        if route not in ("onlink", "gateway"):
            raise ValueError(route)
        netns = self.add_netns("g")
        tap = tap or self.tap_name()
        ifname = "eth0"
        if kind == "veth":
            at = ["index", str(index)] if index is not None else []
            sh(["ip", "link", "add", tap, *at, "type", "veth", "peer", "name", ifname,
                "netns", netns], netns=self.node)
        elif kind == "tap":
            self._start_pump(tap, netns, ifname)
        else:
            raise ValueError(kind)
        if mac:
            sh(["ip", "link", "set", ifname, "address", mac], netns=netns)
        if bridge:
            sh(["ip", "link", "set", tap, "master", bridge], netns=self.node)
        sh(["ip", "link", "set", tap, "up"], netns=self.node)
        sh(["ip", "link", "set", ifname, "up"], netns=netns)
        sh(["ip", "addr", "add", ip, "dev", ifname], netns=netns)
        if route == "onlink":
            sh(["ip", "route", "add", "169.254.169.254", "dev", ifname], netns=netns)
        else:
            self._add_gateway(tap, bridge, gateway, ip)
            sh(["ip", "route", "add", "default", "via", gateway, "dev", ifname, "onlink"],
               netns=netns)
        guest = Guest(netns, tap, ifname, ip, route, gateway if route == "gateway" else None,
                      kind, bridge)
        self.guests.append(guest)
        return guest

    def _add_gateway(self, tap: str, bridge: str | None, gateway: str, ip: str) -> None:
        if bridge:  # shared by the bridge's guests: add once
            prefix = ip.partition("/")[2] or "32"
            sh(["ip", "addr", "replace", f"{gateway}/{prefix}", "dev", bridge],
               netns=self.node)
        else:
            sh(["ip", "addr", "add", f"{gateway}/32", "dev", tap], netns=self.node)

    def _start_pump(self, tap: str, netns: str, ifname: str) -> None:
        proc = subprocess.Popen(
            [PYTHON, "-m", "tests.e2e.netns", "pump", self.node, tap, netns, ifname],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._procs.append(proc)
        line = _readline(proc, 10.0)
        if line.strip() != "ready":
            raise RuntimeError(f"tap pump failed: {line} {_stderr(proc)}")

    def delete_link(self, ifname: str) -> None:
        sh(["ip", "link", "del", ifname], netns=self.node)

    def recreate_veth(self, guest: Guest) -> int:
        """Delete the guest's host end and make a new one with the same name
        (a new ifindex); returns the new ifindex."""
        sh(["ip", "link", "del", guest.tap], netns=self.node)
        sh(["ip", "link", "add", guest.tap, "type", "veth", "peer", "name", guest.ifname,
            "netns", guest.netns], netns=self.node)
        if guest.bridge:
            sh(["ip", "link", "set", guest.tap, "master", guest.bridge], netns=self.node)
        sh(["ip", "link", "set", guest.tap, "up"], netns=self.node)
        sh(["ip", "link", "set", guest.ifname, "up"], netns=guest.netns)
        sh(["ip", "addr", "add", guest.ip, "dev", guest.ifname], netns=guest.netns)
        if guest.route == "onlink":
            sh(["ip", "route", "add", "169.254.169.254", "dev", guest.ifname], netns=guest.netns)
        else:
            self._add_gateway(guest.tap, guest.bridge, str(guest.gateway), guest.ip)
            sh(["ip", "route", "add", "default", "via", str(guest.gateway), "dev",
                guest.ifname, "onlink"], netns=guest.netns)
        return ifindex(self.node, guest.tap)

    def rpc(self, target: str, *args: Any, netns: str | None = None) -> NetnsRpc:
        """A Python object made by ``target`` ("module:factory") in ``netns``
        (the node by default); closed with the topology."""
        r = NetnsRpc(netns or self.node, target, *args)
        self._procs.append(r.proc)
        return r

    def close(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            sh(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


# -- running Python objects inside a namespace --------------------------------


class RpcError(RuntimeError):
    pass


class NetnsRpc:
    """Runs ``factory(*args)`` in a child process inside ``netns`` and calls
    its methods over JSON lines: ``rpc.call("sync", {...})``. Arguments and
    results must be JSON. The child exits when stdin closes."""

    def __init__(self, netns: str, target: str, *args: Any, timeout: float = 20.0) -> None:
        self.netns = netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PYTHON, "-m", "tests.e2e.netns", "rpc", target,
             json.dumps(list(args))],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        line = _readline(self.proc, timeout)
        if line.strip() != "ready":
            raise RpcError(f"{target} did not start: {line!r} {_stderr(self.proc)}")

    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"method": method, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        line = _readline(self.proc, timeout)
        if not line:
            raise RpcError(f"{method}: child exited: {_stderr(self.proc)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        _stop(self.proc)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise RpcError(f"no answer within {timeout}s")
        return proc.stdout.readline()
    finally:
        sel.close()


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return ""
    return proc.stderr.read()[-2000:]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        if proc.stdin is None:
            proc.terminate()
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        with contextlib.suppress(OSError, ValueError):
            if stream:
                stream.close()


def _rpc_main(target: str, raw_args: str) -> None:
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    obj = factory(*json.loads(raw_args))
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                result = getattr(obj, req["method"])(*req["args"])
                out = {"result": result}
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc()[-1500:]}
            print(json.dumps(out), flush=True)
    finally:
        close = getattr(obj, "close", None)
        if callable(close):
            close()


# -- real tap devices ----------------------------------------------------------

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def _open_tap(name: str) -> int:
    import fcntl
    import struct
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _pump_main(node: str, tap: str, guest_ns: str, ifname: str) -> None:
    """Real tap ``tap`` in the node, a tap ``ifname`` in the guest namespace,
    and this process copying frames between the two file descriptors (the
    part QEMU plays for a real VM). Ends when stdin/stdout close."""
    _setns(node)
    host_fd = _open_tap(tap)
    _setns(guest_ns)
    guest_fd = _open_tap(ifname)
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(host_fd, selectors.EVENT_READ, guest_fd)
    sel.register(guest_fd, selectors.EVENT_READ, host_fd)
    deadline = time.monotonic() + 600  # bounded: a test never needs longer
    while time.monotonic() < deadline:
        if os.getppid() == 1:
            break
        for key, _ in sel.select(0.5):
            try:
                frame = os.read(key.fd, 65536)
                os.write(key.data, frame)
            except OSError:
                continue


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1] == "rpc":
        _rpc_main(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pump":
        _pump_main(*sys.argv[2:6])
    else:
        raise SystemExit(f"unknown helper {sys.argv[1]!r}")
