"""Benchmarks 4 and 5: one guest's per-request cost with many bound taps,
and the daemon's memory."""

from __future__ import annotations

import asyncio
import statistics

from bench.env import UNLIMITED, Bench, bench_stack
from bench.fleet import Fleet, FleetGuest
from bench.loadgen import LoadResult, crawl, fixed_rate
from bench.netns_client import now, rss_kib
from bench.suites_base import PATH, URL, Options, Row, verdict, wait_served
from bench.wrk import WrkResult, wrk

# -- 4 + 5. many taps: per-request cost, memory --------------------------------------------


async def _per_request(bench: Bench, g: FleetGuest, seconds: float, rounds: int
                       ) -> tuple[list[WrkResult], list[WrkResult], LoadResult]:
    ka, close = [], []
    for _ in range(rounds):
        ka.append(await wrk(g.netns, URL, seconds=seconds))
        close.append(await wrk(g.netns, URL, seconds=seconds, close=True))
    fixed = await fixed_rate(bench.ns, [g.netns], PATH, rate=500, duration=seconds,
                             keepalive=True)
    return ka, close, fixed


def _median_rps(results: list[WrkResult]) -> float:
    return statistics.median(r.rps for r in results)


async def scale(opts: Options) -> list[Row]:
    """One guest's per-request cost with 10 bound taps, then with ``total``
    bound (and their documents cached), then with 10 bound again (the
    sandwich controls for drift of a shared machine); memory on the way."""
    total = int(opts.pick(1000, 200))
    small = 10
    seconds = opts.pick(3, 2)
    rounds = int(opts.pick(3, 1))
    reconcile = opts.pick(30.0, 10.0)  # the product default is 30 s
    rows: list[Row] = []
    with bench_stack("nft", {**UNLIMITED, "reconcile_interval": reconcile}) as bench:
        rss_start = rss_kib(bench.node_pid)
        fleet = Fleet(bench.topo, "m")
        try:
            t0 = now()
            guests = fleet.add(total, static_neighbour=True)
            made = now() - t0
            iids = [f"i-bench-m{i}" for i in range(total)]
            await bench.create_instances(list(zip(iids[:small],
                                                  [g.tap for g in guests[:small]],
                                                  strict=True)))
            await bench.wait_taps(small)
            for iid, g in zip(iids[:small], guests, strict=False):
                await wait_served(bench, g.netns, iid)
            before = await _per_request(bench, guests[0], seconds, rounds)
            t0 = now()
            await bench.create_instances(list(zip(iids[small:],
                                                  [g.tap for g in guests[small:]],
                                                  strict=True)))
            created = now() - t0
            converge = await bench.wait_taps(total, timeout=600)
            rss_bound = rss_kib(bench.node_pid)
            docs0 = await bench.backend_documents()
            crawled = await crawl(bench.ns, [g.netns for g in guests], max_paths=40)
            fetches = await bench.backend_documents() - docs0
            rss_cached = rss_kib(bench.node_pid)
            cached = (await bench.readyz())["cached_documents"]
            many = await _per_request(bench, guests[0], seconds, rounds)
            # A window longer than the periodic link reconcile: its stall shows.
            stall = await fixed_rate(bench.ns, [guests[0].netns], PATH, rate=200,
                                     duration=reconcile + 2, keepalive=True)
            rss_end = rss_kib(bench.node_pid)
            sem = asyncio.Semaphore(8)

            async def unbind(iid: str) -> None:
                async with sem:
                    await bench.unbind(iid)

            await asyncio.gather(*(unbind(iid) for iid in iids[small:]))
            for _ in range(600):
                if await bench.node_metric("interceptor_node_managed_taps") <= small:
                    break
                await asyncio.sleep(0.2)
            after = await _per_request(bench, guests[0], seconds, rounds)
        finally:
            fleet.close()
    series = (("keep-alive req/s (wrk)", before[0], many[0], after[0]),
              ("new-connection req/s (wrk)", before[1], many[1], after[1]))
    for name, b, m, a in series:
        few_b, few_a, lots = _median_rps(b), _median_rps(a), _median_rps(m)
        few = (few_b + few_a) / 2
        ratio = lots / few if few else 0.0
        clean = all(r.clean for r in (*b, *m, *a))
        rows.append(Row(
            f"per-request cost, {total} vs {small} bound taps: {name} (nft)",
            f"{lots:,.0f} vs {few:,.0f} = {ratio:.2f}x (10 taps before/after: "
            f"{few_b:,.0f}/{few_a:,.0f})",
            ">= 0.90x (within 10 %)", verdict(ratio >= 0.9 and clean),
            {"few_before": few_b, "few_after": few_a, "many": lots, "ratio": ratio}))
    fa, fb, fc = before[2].summary(), many[2].summary(), after[2].summary()
    rows.append(Row(
        f"per-request latency at 500 req/s keep-alive, {total} vs {small} bound taps (nft)",
        f"p50 {fb['p50_ms']:.2f} vs {fa['p50_ms']:.2f}/{fc['p50_ms']:.2f} ms, p99 "
        f"{fb['p99_ms']:.2f} vs {fa['p99_ms']:.2f}/{fc['p99_ms']:.2f} ms",
        "p50 within 10 %",
        verdict(fb["p50_ms"] <= min(fa["p50_ms"], fc["p50_ms"]) * 1.1 + 0.05),
        {"few_before": fa, "many": fb, "few_after": fc}))
    st = stall.summary()
    rows.append(Row(
        f"longest guest wait over {reconcile + 2:.0f}s at 200 req/s, {total} bound taps "
        f"(one periodic link reconcile every {reconcile:.0f}s) (nft)",
        f"max {st['max_ms']:.0f} ms, p99 {st['p99_ms']:.2f} ms, p50 {st['p50_ms']:.2f} ms",
        "(info; see README: link dump blocks the event loop)", "INFO", {"stall": st}))
    crawl_errors = sum(crawled.errors.values())
    rows.append(Row(
        f"daemon memory (VmRSS) with {total} bound taps, {cached} cached documents (nft)",
        f"{rss_cached / 1024:.0f} MiB (at start {rss_start / 1024:.0f}, {total} bound "
        f"before any request {rss_bound / 1024:.0f}, after the load runs "
        f"{rss_end / 1024:.0f})",
        "< 200 MB" + ("" if total >= 1000 else f" (at 1,000; measured at {total})"),
        verdict(rss_cached * 1024 < 200e6 and rss_end * 1024 < 200e6 and crawl_errors == 0
                and cached == total),
        {"rss_kib": {"start": rss_start, "bound": rss_bound, "cached": rss_cached,
                     "end": rss_end}, "cached_documents": cached}))
    rows.append(Row(
        f"{total}-VM warm-up crawl (nft)",
        f"{crawled.requests} requests in {crawled.elapsed:.1f}s, {fetches:.0f} backend "
        f"fetches for {total - small} cold VMs, {crawl_errors} errors; guest namespaces "
        f"made in {made:.1f}s, {total - small} bindings created in {created:.1f}s, "
        f"node serving all {total} taps {converge:.1f}s after the last API call",
        f"exactly {total - small} fetches", verdict(fetches == total - small
                                                    and crawl_errors == 0),
        {"statuses": dict(crawled.statuses), "errors": dict(crawled.errors)}))
    return rows
