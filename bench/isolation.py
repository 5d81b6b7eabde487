"""One VM's flood must not hurt another (issue 15): the isolation figure.

A flooding guest runs at its full capacity — ``wrk`` keep-alive (32
connections) and ``wrk`` with a new connection per request (32), both at
once, in its own namespace — while a second guest crawls at a fixed rate
(open loop, ``bench/loadgen.py``: its latency is measured from the
scheduled send time). The figure is the crawler's p99 with the flood ÷
its p99 without it, rounds interleaved in the same run (latencies of all
rounds pooled: at 15 req/s one round has too few samples for a p99).
Product defaults: the flood meets the per-VM request limit (429) and the
per-tap SYN and connection limits, as a real hostile VM would.
"""

from __future__ import annotations

import asyncio

from bench.env import bench_stack
from bench.fleet import Fleet
from bench.loadgen import LoadResult, fixed_rate
from bench.netns_client import percentile
from bench.suites_base import PATH, URL, Options, Row, verdict, wait_served
from bench.wrk import wrk

TARGET_RATIO = 2.0


async def _flood(netns: str, seconds: float) -> None:
    await asyncio.gather(wrk(netns, URL, seconds=seconds, connections=32),
                         wrk(netns, URL, seconds=seconds, connections=32, close=True),
                         return_exceptions=True)


MODES = (("keep-alive", 100.0, True), ("new connection per request", 15.0, False))
"""Crawler modes: rate within the per-VM limits (200 req/s; 20 new connections/s)."""


async def isolation(opts: Options) -> list[Row]:
    seconds = opts.pick(10, 4)
    rounds = int(opts.pick(3, 1))
    results: dict[str, tuple[list[LoadResult], list[LoadResult]]] = {
        mode: ([], []) for mode, _, _ in MODES}
    with bench_stack("nft") as bench:
        fleet = Fleet(bench.topo, "i")
        try:
            crawler, flooder = fleet.add(2)
            await bench.create_instances([("i-bench-crawl", crawler.tap),
                                          ("i-bench-flood", flooder.tap)])
            await bench.wait_taps(2)
            await wait_served(bench, crawler.netns, "i-bench-crawl")
            await wait_served(bench, flooder.netns, "i-bench-flood")
            for _ in range(rounds):
                for mode, rate, keep in MODES:
                    quiet, loud = results[mode]
                    quiet.append(await fixed_rate(bench.ns, [crawler.netns], PATH, rate=rate,
                                                  duration=seconds, keepalive=keep))
                    flood = asyncio.create_task(_flood(flooder.netns, seconds + 2))
                    await asyncio.sleep(1.0)  # the flood is at full speed before we measure
                    loud.append(await fixed_rate(bench.ns, [crawler.netns], PATH, rate=rate,
                                                 duration=seconds, keepalive=keep))
                    await flood
        finally:
            fleet.close()
    return [_row(mode, rate, rounds, *results[mode]) for mode, rate, _ in MODES]


def _row(mode: str, rate: float, rounds: int, quiet: list[LoadResult],
         loud: list[LoadResult]) -> Row:
    q = percentile([x for r in quiet for x in r.latencies], 99) * 1e3
    f = percentile([x for r in loud for x in r.latencies], 99) * 1e3
    errors = sum(sum(r.errors.values()) + r.dropped for r in quiet + loud)
    ratio = f / q if q else float("inf")
    return Row(f"isolation, {mode}: crawler p99 with a neighbour flooding / without (nft)",
               f"ratio {ratio:.2f} (p99 {f:.2f} ms flooded vs {q:.2f} ms quiet at "
               f"{rate:.0f} req/s, {len(quiet)} rounds pooled)"
               + (f"; {errors} crawler errors" if errors else ""),
               f"<= {TARGET_RATIO:.0f}x", verdict(ratio <= TARGET_RATIO and errors == 0),
               {"quiet": [r.summary() for r in quiet], "flooded": [r.summary() for r in loud],
                "ratio": ratio})
