"""``python -m bench``: run the benchmarks, print figure / target / verdict.

    sudo .venv/bin/python -m bench                 # everything (~10 min)
    sudo .venv/bin/python -m bench --quick         # smaller and shorter (~3 min)
    sudo .venv/bin/python -m bench --only storm --only propagation
    sudo .venv/bin/python -m bench --datapath nft --json out.json

Exit status: 0 when every benchmark ran and met its target, 1 when one
missed, 2 when one could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import traceback

from bench.suites import BENCHMARKS
from bench.suites_base import Options, Row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                   help="run only this benchmark (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="fewer VMs, shorter runs (figures are rougher)")
    p.add_argument("--datapath", action="append", choices=("nft", "ebpf"),
                   help="datapaths for the throughput benchmark (default: both)")
    p.add_argument("--json", metavar="FILE", help="also write every row and detail as JSON")
    return p


def machine() -> str:
    return (f"{os.cpu_count()} cores, kernel {platform.release()}, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def table(rows: list[Row]) -> str:
    headers = ("benchmark", "figure", "target", "verdict")
    cells = [headers] + [(r.name, r.figure, r.target, r.verdict) for r in rows]
    return "\n".join("| " + " | ".join(c) + " |" if i else
                     "| " + " | ".join(c) + " |\n|" + "---|" * len(headers)
                     for i, c in enumerate(cells))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmarks need root (network namespaces, nft)", file=sys.stderr)
        return 2
    opts = Options(quick=args.quick, datapaths=tuple(args.datapath or ("nft", "ebpf")))
    names = args.only or list(BENCHMARKS)
    rows: list[Row] = []
    failed_to_run = False
    print(f"# interceptor benchmarks: {machine()}" + (" (--quick)" if args.quick else ""),
          flush=True)
    for name in names:
        started = time.monotonic()
        got: list[Row]
        try:
            got = asyncio.run(BENCHMARKS[name](opts))
        except Exception as exc:
            traceback.print_exc()
            got = [Row(name, f"did not run: {type(exc).__name__}: {exc}"[:300], "-", "FAIL")]
            failed_to_run = True
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        for row in got:
            row.detail["loadavg_after"] = load
            print(f"[{name} {time.monotonic() - started:.0f}s, load {load}] {row.verdict} "
                  f"{row.name}: {row.figure}", flush=True)
        rows += got
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "quick": args.quick,
                       "rows": [r.__dict__ for r in rows]}, f, indent=2, default=str)
    if failed_to_run:
        return 2
    return 1 if any(r.verdict == "FAIL" for r in rows) else 0
