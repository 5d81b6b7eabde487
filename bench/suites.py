"""The benchmarks, one function per target of the project brief: 1-3 here,
4-5 in suites_scale.py, 6-7 in suites_propagation.py; ``BENCHMARKS`` names
them all (suites_base.py has what they share).

Each returns ``Row``s: the figure, the target, and a verdict computed from a
measurement of this run (ratios are against a baseline measured in the same
run). Every benchmark makes its own namespaces and stack and removes them
before it returns, also when it fails.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Coroutine

from bench.baseline import baseline
from bench.env import NO_VM_LIMIT, UNLIMITED, bench_stack
from bench.fleet import Fleet
from bench.loadgen import LoadResult, crawl, fixed_rate
from bench.netns_client import fetch, percentile
from bench.suites_base import (
    PATH,
    URL,
    URL6,
    Options,
    Row,
    add_ipv6_route,
    verdict,
    wait_served,
)
from bench.suites_propagation import propagation
from bench.suites_scale import scale
from bench.wrk import WrkResult, wrk

# -- 1. cache-hit throughput vs nginx -----------------------------------------------------


async def throughput(opts: Options) -> list[Row]:
    rows: list[Row] = []
    for datapath in opts.datapaths:
        try:
            rows += await _throughput(opts, datapath)
        except Exception as exc:  # one datapath failing must not hide the other's figures
            rows.append(Row(f"throughput ({datapath})", f"error: {exc}"[:200],
                            ">= 0.5 x nginx", "FAIL"))
    return rows


async def _throughput(opts: Options, datapath: str) -> list[Row]:
    seconds = opts.pick(5, 2)
    rounds = int(opts.pick(3, 1))
    rows: list[Row] = []
    with bench_stack(datapath, NO_VM_LIMIT) as bench:  # the default per-tap guards
        guest = bench.topo.add_guest()
        await bench.create_instances([("i-bench-tp", guest.tap)])
        await wait_served(bench, guest.netns, "i-bench-tp")
        defaults_close = await wrk(guest.netns, URL, seconds=seconds, close=True)
    with bench_stack(datapath, UNLIMITED) as bench:
        guest = bench.topo.add_guest()
        await bench.create_instances([("i-bench-tp", guest.tap)])
        await wait_served(bench, guest.netns, "i-bench-tp")
        body = (await fetch(bench.ns, guest.netns, PATH)).body
        await add_ipv6_route(guest.netns, guest.ifname)  # the same guest over IPv6 too
        with baseline({PATH: body}) as base:
            bguest = base.guest()
            results: dict[tuple[str, bool], list[WrkResult]] = {}
            for _ in range(rounds):
                for close in (False, True):
                    for who, ns, url in (("nginx", bguest.netns, URL), ("node", guest.netns, URL),
                                         ("node6", guest.netns, URL6)):
                        r = await wrk(ns, url, seconds=seconds, close=close)
                        results.setdefault((who, close), []).append(r)
        for close in (False, True):
            mode = "new connection per request" if close else "keep-alive"
            if close:
                mode += " (per-tap SYN guards lifted)"
            node = statistics.median(r.rps for r in results[("node", close)])
            nginx = statistics.median(r.rps for r in results[("nginx", close)])
            errors = sum(r.non_2xx + r.socket_errors for r in results[("node", close)])
            ratio = node / nginx if nginx else 0.0
            rows.append(Row(
                f"cache-hit throughput, {mode} ({datapath})",
                f"{node:,.0f} req/s vs nginx {nginx:,.0f} req/s = {ratio:.2f}x"
                + (f" ({errors} errors)" if errors else ""),
                ">= 0.50x nginx", verdict(ratio >= 0.5 and errors == 0),
                {"node_rps": node, "nginx_rps": nginx, "ratio": ratio,
                 "node_p99_ms": statistics.median(r.p99_ms for r in results[("node", close)]),
                 "nginx_p99_ms": statistics.median(r.p99_ms for r in results[("nginx", close)]),
                 "errors": errors}))
            node6 = statistics.median(r.rps for r in results[("node6", close)])
            errors6 = sum(r.non_2xx + r.socket_errors for r in results[("node6", close)])
            ratio6 = node6 / node if node else 0.0
            rows.append(Row(
                f"cache-hit throughput over IPv6 [fd00:ec2::254], {mode} ({datapath})",
                f"{node6:,.0f} req/s vs IPv4 {node:,.0f} req/s = {ratio6:.2f}x"
                + (f" ({errors6} errors)" if errors6 else ""),
                "(info: ratio to IPv4, same run and guest)",
                "INFO" if errors6 == 0 else "FAIL",
                {"node6_rps": node6, "node_rps": node, "ratio_to_ipv4": ratio6,
                 "errors": errors6}))
        rows.append(Row(
            f"new connections/s with the default per-tap SYN limit ({datapath})",
            f"{defaults_close.rps:,.0f} req/s, {defaults_close.socket_errors} socket errors",
            "(info: limit 20 SYN/s, burst 40 per tap)", "INFO",
            {"rps": defaults_close.rps}))
    return rows


# -- 2. p99 at a fixed 1,000 req/s --------------------------------------------------------


async def latency(opts: Options) -> list[Row]:
    rate = 1000.0
    seconds = opts.pick(10, 4)
    guests_ka, guests_new = 8, 64
    rows: list[Row] = []
    with bench_stack("nft") as bench:  # product defaults, per-VM limits included
        fleet = Fleet(bench.topo, "l")
        try:
            guests = fleet.add(guests_new)
            iids = await bench.serve_fleet([g.tap for g in guests], "l")
            for iid, g in zip(iids, guests, strict=True):
                await wait_served(bench, g.netns, iid)
            with baseline({PATH: b"x"}) as base:
                bguests = base.add_fleet(guests_new)
                for mode, count, keep in (("keep-alive", guests_ka, True),
                                          ("new connection per request", guests_new, False)):
                    floor = await fixed_rate(bench.ns, bguests[:count], PATH, rate=rate,
                                             duration=seconds, keepalive=keep)
                    node = await fixed_rate(bench.ns, [g.netns for g in guests[:count]], PATH,
                                            rate=rate, duration=seconds, keepalive=keep)
                    rows.append(_latency_row(mode, count, node, floor))
        finally:
            fleet.close()
    return rows


def _latency_row(mode: str, guests: int, node: LoadResult, floor: LoadResult) -> Row:
    s, f = node.summary(), floor.summary()
    clean = s["errors"] == 0 and s["dropped"] == 0
    return Row(
        f"latency at 1,000 req/s, {mode}, {guests} guests (nft)",
        f"p50 {s['p50_ms']:.2f} / p99 {s['p99_ms']:.2f} / max {s['max_ms']:.1f} ms "
        f"(from connect: p99 {s['service_p99_ms']:.2f}) at {s['achieved_rps']:.0f} "
        f"req/s; nginx, same generator and load: p99 {f['p99_ms']:.2f} ms"
        + ("" if clean else f"; {s['errors']:.0f} errors, {s['dropped']:.0f} dropped"),
        "p99 <= 5 ms", verdict(s["p99_ms"] <= 5.0 and clean),
        {"node": s, "nginx": f, "node_errors": dict(node.errors)})


# -- 3. cold boot storm --------------------------------------------------------------------


async def storm(opts: Options) -> list[Row]:
    count = int(opts.pick(200, 50))
    with bench_stack("nft") as bench:
        fleet = Fleet(bench.topo, "s")
        try:
            guests = fleet.add(count)
            await bench.serve_fleet([g.tap for g in guests], "s")
            before = await bench.backend_documents()
            misses0 = await bench.node_metric("interceptor_node_cache_misses")
            result = await crawl(bench.ns, [g.netns for g in guests], max_paths=40)
            await asyncio.sleep(0.5)  # let the last counters land
            fetches = await bench.backend_documents() - before
            misses = await bench.node_metric("interceptor_node_cache_misses") - misses0
            joins = await bench.node_metric("interceptor_node_cache_singleflight_joins")
        finally:
            fleet.close()
    errors = sum(result.errors.values())
    per_guest = result.requests / count
    return [Row(
        f"cold boot storm, {count} VMs x ~40 paths (nft)",
        f"{fetches:.0f} backend document fetches for {result.requests} requests "
        f"({per_guest:.1f}/VM) in {result.elapsed:.1f}s; {errors} errors; "
        f"slowest VM {max(result.guest_seconds):.1f}s",
        f"exactly {count} fetches", verdict(fetches == count and errors == 0),
        {"fetches": fetches, "requests": result.requests, "statuses": dict(result.statuses),
         "errors": dict(result.errors), "node_cache_misses": misses, "joins": joins,
         "elapsed_s": result.elapsed,
         "p50_vm_s": percentile(result.guest_seconds, 50),
         "max_vm_s": max(result.guest_seconds)})]


BENCHMARKS: dict[str, Callable[[Options], Coroutine[object, object, list[Row]]]] = {
    "throughput": throughput,
    "latency": latency,
    "storm": storm,
    "scale": scale,
    "propagation": propagation,
}


def _register_hostile() -> None:
    """Issue 15's figures live in their own modules (they import this one)."""
    from bench.hostile import attack
    from bench.isolation import isolation
    from bench.parser import parser

    BENCHMARKS["isolation"] = isolation
    BENCHMARKS["parser"] = parser
    BENCHMARKS["attack"] = attack


_register_hostile()


def _operations(opts: Options) -> Coroutine[object, object, list[Row]]:
    from bench.operations import operations  # imports the e2e/backend test harness

    return operations(opts)


BENCHMARKS["operations"] = _operations
