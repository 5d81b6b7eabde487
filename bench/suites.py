"""The benchmarks, one function per target of the project brief.

Each returns ``Row``s: the figure, the target, and a verdict computed from a
measurement of this run (ratios are against a baseline measured in the same
run). Every benchmark makes its own namespaces and stack and removes them
before it returns, also when it fails.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

from bench.baseline import baseline
from bench.env import UNLIMITED, Bench, bench_stack, lift_syn_limit
from bench.fleet import Fleet, FleetGuest
from bench.loadgen import LoadResult, crawl, fixed_rate
from bench.netns_client import Connection, fetch, now, percentile, rss_kib
from bench.wrk import WrkResult, wrk

URL = "http://169.254.169.254/latest/meta-data/instance-id"
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
    with bench_stack(datapath, UNLIMITED) as bench:
        guest = bench.topo.add_guest()
        await bench.create_instances([("i-bench-tp", guest.tap)])
        await wait_served(bench, guest.netns, "i-bench-tp")
        body = (await fetch(bench.ns, guest.netns, PATH)).body
        defaults_close = await wrk(guest.netns, URL, seconds=seconds, close=True)
        lifted = lift_syn_limit(bench)
        with baseline({PATH: body}) as base:
            bguest = base.guest()
            results: dict[tuple[str, bool], list[WrkResult]] = {}
            for _ in range(rounds):
                for close in (False, True):
                    for who, ns in (("nginx", bguest.netns), ("node", guest.netns)):
                        r = await wrk(ns, URL, seconds=seconds, close=close)
                        results.setdefault((who, close), []).append(r)
        for close in (False, True):
            mode = "new connection per request" if close else "keep-alive"
            if close:
                mode += (" (per-tap SYN guards lifted)" if lifted
                         else " (SYN limit 20/s in force)")
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
            await bench.create_instances([(f"i-bench-l{i}", g.tap)
                                          for i, g in enumerate(guests)])
            await bench.wait_taps(guests_new)
            for i, g in enumerate(guests):
                await wait_served(bench, g.netns, f"i-bench-l{i}")
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
            await bench.create_instances([(f"i-bench-s{i}", g.tap)
                                          for i, g in enumerate(guests)])
            await bench.wait_taps(count)
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


# -- 4 + 5. many taps: per-request cost, memory --------------------------------------------


async def _per_request(bench: Bench, g: FleetGuest, seconds: float, rounds: int
                       ) -> tuple[list[WrkResult], list[WrkResult], LoadResult]:
    ka, close = [], []
    for _ in range(rounds):
        ka.append(await wrk(g.netns, URL, seconds=seconds))
        lift_syn_limit(bench)
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


# -- 6 + 7. propagation: API change, new taps ----------------------------------------------


async def _first_seen(poll: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """``now()`` when ``poll()`` first returns True (polling every ~5 ms)."""
    deadline = now() + timeout
    while now() < deadline:
        if await poll():
            return now()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"not seen within {timeout}s")


async def propagation(opts: Options) -> list[Row]:
    samples = int(opts.pick(10, 5))
    rows: list[Row] = []
    for datapath in opts.datapaths:
        try:
            with bench_stack(datapath) as bench:
                fleet = Fleet(bench.topo, "p")
                try:
                    rows += await _api_change(bench, fleet, samples)
                    rows += await _new_taps(bench, fleet, samples)
                finally:
                    fleet.close()
        except Exception as exc:  # one datapath failing must not hide the other's figures
            rows.append(Row(f"propagation ({datapath})", f"error: {exc}"[:200], "-", "FAIL"))
    return rows


def _ms_row(name: str, values: list[float], target_s: float, note: str = "") -> Row:
    p50, top = percentile(values, 50), max(values)
    return Row(name, f"p50 {p50 * 1e3:.0f} ms, max {top * 1e3:.0f} ms over {len(values)}"
               + (f"; {note}" if note else ""),
               f"<= {target_s * 1e3:.0f} ms", verdict(top <= target_s),
               {"samples_ms": [round(v * 1e3, 1) for v in values]})


async def _api_change(bench: Bench, fleet: Fleet, samples: int) -> list[Row]:
    (g,) = fleet.add(1)
    iid = "i-bench-api"
    await bench.create_instances([(iid, g.tap)])
    await wait_served(bench, g.netns, iid)
    path = "/latest/meta-data/hostname"
    poll_lat: list[float] = []
    conn = await Connection.open(bench.ns, g.netns, "169.254.169.254")
    try:
        for k in range(samples):
            want = f"poll-{k}"

            async def seen(want: str = want) -> bool:
                reply = await conn.request("GET", path)
                return reply.body.decode() == want

            watcher = asyncio.create_task(_first_seen(seen))
            await bench.set_hostname(iid, want)
            done_api = now()
            poll_lat.append(max(0.0, await watcher - done_api))
    finally:
        conn.close()
    long_lat: list[float] = []
    for k in range(samples):
        want = f"long-{k}"
        conn = await Connection.open(bench.ns, g.netns, "169.254.169.254")
        try:
            waiting = asyncio.create_task(conn.request(
                "GET", path + "?wait_for_change=true&timeout_sec=10", timeout=15))
            await _until_waiting(bench)
            await bench.set_hostname(iid, want)
            done_api = now()
            reply = await waiting
            answered = now()
        finally:
            conn.close()
        if reply.body.decode() != want:
            raise AssertionError(f"long-poll answered {reply.body!r}, wanted {want!r}")
        long_lat.append(max(0.0, answered - done_api))
    dp = bench.stack.datapath
    return [_ms_row(f"API change -> guest sees it, polling every 5 ms ({dp})", poll_lat, 1.0),
            _ms_row(f"API change -> guest long-poll answers ({dp})", long_lat, 1.0)]


async def _until_waiting(bench: Bench) -> None:
    for _ in range(200):
        if await bench.node_metric("interceptor_node_longpoll_waiters") >= 1:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the long-poll never started waiting")


async def _poll_served(bench: Bench, netns: str, iid: str) -> bool:
    try:
        reply = await fetch(bench.ns, netns, PATH, timeout=0.05)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    return reply.status == 200 and reply.body.decode() == iid


async def _new_taps(bench: Bench, fleet: Fleet, samples: int) -> list[Row]:
    rows = []
    for static in (True, False):
        lat: list[float] = []
        for k in range(samples):
            (g,) = fleet.add(1, static_neighbour=static)
            iid = f"i-bench-nb{int(static)}{k}"
            await bench.create_instances([(iid, None)])
            assert not await _poll_served(bench, g.netns, iid)

            async def served(g: FleetGuest = g, iid: str = iid) -> bool:
                return await _poll_served(bench, g.netns, iid)

            watcher = asyncio.create_task(_first_seen(served))
            await bench.bind(iid, g.tap)
            bound = now()
            lat.append(max(0.0, await watcher - bound))
        how = "static neighbour entry" if static else "guest resolving by ARP"
        row = _ms_row(f"bind API (tap exists) -> first guest GET, {how} "
                      f"({bench.stack.datapath})", lat, 0.2)
        if not static:
            # The guest asked before its binding: no ARP answer then, so it waits
            # for its own ARP retry (1 s). The daemon's part is the row above.
            row.verdict = "INFO"
            row.target = "(info: guest ARP retry, 1 s)"
        rows.append(row)
    lat = []
    for k in range(samples):
        (g,) = fleet.add(1, static_neighbour=True, link=False)
        iid = f"i-bench-nt{k}"
        await bench.create_instances([(iid, g.tap)])
        await asyncio.sleep(1.0)  # the node has read the binding (no tap yet)
        created = now()
        fleet.wire([g], static_neighbour=True)

        async def served2(g: FleetGuest = g, iid: str = iid) -> bool:
            return await _poll_served(bench, g.netns, iid)

        lat.append(max(0.0, await _first_seen(served2) - created))
    rows.append(_ms_row(f"tap created (binding exists) -> first guest GET "
                        f"({bench.stack.datapath})", lat, 0.2,
                        "includes ~10 ms of ip commands wiring the guest"))
    return rows


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
