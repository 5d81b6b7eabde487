"""Runs ``wrk`` (Debian) inside a guest namespace and parses its report."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass


@dataclass
class WrkResult:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    raw: str

    @property
    def clean(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse(text: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     text)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{text[-1500:]}")
    return WrkResult(float(rps.group(1)), int(total.group(1)),
                     int(non2xx.group(1)) if non2xx else 0,
                     sum(int(x) for x in sock.groups()) if sock else 0,
                     _latency(text, "50"), _latency(text, "99"), text)


async def wrk(netns: str, url: str, *, seconds: float, connections: int = 32,
              threads: int = 1, close: bool = False) -> WrkResult:
    args = ["ip", "netns", "exec", netns, "wrk", f"-t{threads}", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "2s"]
    if close:
        args += ["-H", "Connection: close"]
    proc = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode()[-1500:]}")
    return parse(out.decode())
