"""The identity attack matrix as a benchmark row (issue 15): the same scene
and requests as ``tests/e2e/test_hostile_guests.py`` (``tests/e2e/hostile.py``),
reported as "cross-instance reads: 0 of N" with the request rate it ran at."""

from __future__ import annotations

import asyncio
import time

from bench.suites_base import Options, Row, verdict
from tests.e2e.hostile import LIFTED, attack_matrix, scene


def _run(minimum: int) -> tuple[int, int, int, float]:
    with scene(LIFTED) as sc:
        started = time.monotonic()
        result = attack_matrix(sc.sockets, sc.victim, [sc.attacker, sc.twin, sc.spoofer],
                               min_requests=minimum)
        seconds = time.monotonic() - started
    return (result.requests, len(result.cross_reads), len(result.identity_errors), seconds)


async def attack(opts: Options) -> list[Row]:
    minimum = int(opts.pick(20_000, 10_000))
    requests, leaks, identity, seconds = await asyncio.to_thread(_run, minimum)
    return [Row("attack matrix: forged identity headers, other VMs' tokens, spoofed source, "
                "twin IP+MAC (nft)",
                f"cross-instance reads: {leaks} of {requests} ({requests / seconds:.0f} req/s)"
                + (f"; {identity} identity errors" if identity else ""),
                "0 cross-instance reads", verdict(leaks == 0 and identity == 0),
                {"requests": requests, "cross_reads": leaks, "identity_errors": identity})]
