"""``python -m bench.profile``: where the node daemon spends a cache-hit request.

Starts the product with one guest, runs ``wrk`` against a cached path and
samples the daemon with ``py-spy`` (PyPI; ``pip install py-spy``) for the
same seconds. Prints the functions with the most samples on top of the
stack (self time) and in the stack at all (total time), and keeps the
collapsed stacks (``--out``, flamegraph input) for a closer look.

    sudo .venv/bin/python -m bench.profile [--close] [--datapath ebpf] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench.env import UNLIMITED, bench_stack
from bench.suites_base import PATH, URL, wait_served
from bench.wrk import wrk


def summarize(collapsed: str, top: int = 25) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        self_time[frames[-1]] += count
        for frame in set(frames):
            total_time[frame] += count
    out = [f"{samples} samples", "", "self:"]
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    out += ["", "total:"]
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total_time.most_common(top)]
    return "\n".join(out)


async def _run(args: argparse.Namespace) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with bench_stack(args.datapath, UNLIMITED) as bench:
        guest = bench.topo.add_guest()
        await bench.create_instances([("i-bench-prof", guest.tap)])
        await wait_served(bench, guest.netns, "i-bench-prof")
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(bench.node_pid), "--duration", str(args.seconds),
             "--rate", "200", "--format", "raw", "--output", args.out, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            result = await wrk(guest.netns, URL, seconds=args.seconds, close=args.close)
        finally:
            _, err = proc.communicate(timeout=args.seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err[-1000:]}")
        with open(args.out) as f:
            report = summarize(f.read())
        return f"{PATH}: {result.rps:,.0f} req/s under py-spy\n{report}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--datapath", default="nft", choices=("nft", "ebpf"))
    p.add_argument("--close", action="store_true", help="new connection per request")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--out", default="/tmp/interceptor-node-profile.txt")
    args = p.parse_args(argv)
    print(asyncio.run(_run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
