"""What every benchmark shares: the result row, the options, the verdict,
and waiting until the node serves a guest (suites.py, suites_scale.py,
suites_propagation.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bench.env import Bench
from bench.netns_client import fetch, now

URL = "http://169.254.169.254/latest/meta-data/instance-id"
URL6 = "http://[fd00:ec2::254]/latest/meta-data/instance-id"
PATH = "/latest/meta-data/instance-id"


@dataclass
class Row:
    name: str
    figure: str
    target: str
    verdict: str  # PASS, FAIL or INFO
    detail: dict[str, object] = field(default_factory=dict)


@dataclass
class Options:
    quick: bool = False
    datapaths: tuple[str, ...] = ("nft", "ebpf")

    def pick(self, full: float, quick: float) -> float:
        return quick if self.quick else full


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def wait_served(bench: Bench, netns: str, iid: str, timeout: float = 20.0) -> float:
    """Poll until the guest gets its own instance id; seconds it took."""
    start = now()
    last = ""
    while now() - start < timeout:
        try:
            reply = await fetch(bench.ns, netns, PATH, timeout=0.5)
            if reply.status == 200 and reply.body.decode() == iid:
                return now() - start
            last = f"HTTP {reply.status}"
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            last = type(exc).__name__
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{netns} not served {iid} within {timeout}s (last: {last})")


async def add_ipv6_route(netns: str, ifname: str, timeout: float = 10.0) -> None:
    """An on-link route to fd00:ec2::254 in the guest, once its link-local
    address has left duplicate address detection (bounded)."""
    async def run(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} in {netns}: {out.decode().strip()}")
        return out.decode()
    await run("ip", "-6", "route", "replace", "fd00:ec2::254/128", "dev", ifname)
    deadline = asyncio.get_running_loop().time() + timeout
    while await run("ip", "-6", "addr", "show", "dev", ifname, "tentative"):
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{netns}: {ifname} still tentative after {timeout}s")
        await asyncio.sleep(0.1)
