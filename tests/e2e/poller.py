"""A guest that polls its metadata on a fixed period, one new connection per
request, until told to stop; shared by the restart tests and ``bench``.

    ip netns exec GUEST python -m tests.e2e.poller PATH PERIOD_S TIMEOUT_S [ADDRESS]

runs until SIGTERM, then prints one JSON object: every request's start
offset, outcome (HTTP status, or the error's name) and seconds taken.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.lab import PYTHON, REPO, Guest

METADATA = "169.254.169.254"


@dataclass(frozen=True)
class PollResult:
    samples: list[tuple[float, str, float]]  # (start offset s, outcome, seconds)

    @property
    def failures(self) -> list[tuple[float, str, float]]:
        return [s for s in self.samples if s[1] != "200"]

    @property
    def slowest(self) -> float:
        return max((s[2] for s in self.samples), default=0.0)


class GuestPoller:
    """Runs the poller in ``guest``'s namespace; ``stop()`` returns the result."""

    def __init__(self, guest: Guest, path: str, period: float = 0.01,
                 timeout: float = 10.0, address: str = METADATA) -> None:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", guest.netns, PYTHON, "-m", "tests.e2e.poller", path,
             str(period), str(timeout), address], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self._timeout = timeout

    def stop(self) -> PollResult:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            out, err = self._proc.communicate(timeout=self._timeout + 10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        if not out.strip():
            raise AssertionError(f"poller printed nothing: {err[-2000:]}")
        data = json.loads(out)
        return PollResult([(float(a), str(b), float(c)) for a, b, c in data["samples"]])

    def __enter__(self) -> GuestPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)


def _one(address: str, path: str, timeout: float) -> str:
    conn = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def _main(path: str, period: float, timeout: float, address: str) -> None:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    samples: list[tuple[float, str, float]] = []
    start = time.monotonic()
    next_at = start
    while not stopping:
        began = time.monotonic()
        outcome = _one(address, path, timeout)
        samples.append((round(began - start, 4), outcome, round(time.monotonic() - began, 4)))
        next_at = max(next_at + period, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))
    json.dump({"samples": samples}, sys.stdout)


if __name__ == "__main__":
    _main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]),
          sys.argv[4] if len(sys.argv) > 4 else METADATA)
