"""Python objects and tap pumps in other namespaces: the helper processes
the lab starts, and their entry point.

    python -m tests.lab rpc MODULE:FACTORY JSON_ARGS   (see NetnsRpc)
    python -m tests.lab pump NODE_NS TAP GUEST_NS IFNAME   (see Topology.add_guest)
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import selectors
import struct
import subprocess
import sys
import time
import traceback
from typing import Any

from tests.lab.netns import PYTHON, REPO, setns


class RpcError(RuntimeError):
    pass


class NetnsRpc:
    """Runs ``factory(*args)`` in a child process inside ``netns`` and calls
    its methods over JSON lines: ``rpc.call("sync", {...})``. Arguments and
    results must be JSON. The child exits when stdin closes."""

    def __init__(self, netns: str, target: str, *args: Any, timeout: float = 20.0) -> None:
        self.netns = netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PYTHON, "-m", "tests.lab", "rpc", target,
             json.dumps(list(args))],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        line = readline(self.proc, timeout)
        if line.strip() != "ready":
            raise RpcError(f"{target} did not start: {line!r} {stderr_tail(self.proc)}")

    def call(self, method: str, *args: Any, timeout: float = 30.0) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"method": method, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        line = readline(self.proc, timeout)
        if not line:
            raise RpcError(f"{method}: child exited: {stderr_tail(self.proc)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        stop(self.proc)


def readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise RpcError(f"no answer within {timeout}s")
        return proc.stdout.readline()
    finally:
        sel.close()


def stderr_tail(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return ""
    return proc.stderr.read()[-2000:]


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop(proc: subprocess.Popen[str]) -> None:
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


def rpc_main(target: str, raw_args: str) -> None:
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


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def pump_main(node: str, tap: str, guest_ns: str, ifname: str) -> None:
    """Real tap ``tap`` in the node, a tap ``ifname`` in the guest namespace,
    and this process copying frames between the two file descriptors (the
    part QEMU plays for a real VM). Ends when stdin/stdout close."""
    setns(node)
    host_fd = _open_tap(tap)
    setns(guest_ns)
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
