"""A real ``interceptor serial`` process for end-to-end tests, stopped (SIGTERM) on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class SerialProcess:
    proc: subprocess.Popen[bytes]
    socket_dir: Path
    log: Path

    def socket(self, name: str) -> Path:
        return self.socket_dir / f"{name}.sock"

    def wait_socket(self, name: str, present: bool = True, timeout: float = 15.0) -> Path:
        path = self.socket(name)
        deadline = time.monotonic() + timeout
        while path.exists() != present:
            if self.proc.poll() is not None:
                raise RuntimeError(f"interceptor serial exited: {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} {'never appeared' if present else 'stayed'}; "
                                     f"log:\n{self.logs()}")
            time.sleep(0.05)
        return path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def serial_daemon(socket_dir: Path, log: Path, *args: str,
                  env: dict[str, str] | None = None) -> Iterator[SerialProcess]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPTOR_")}
    environ.update(env or {})
    out = log.open("ab")
    # No operator port unless the test asks: tests of other helpers run at the same time.
    operator = [] if "--operator-port" in args else ["--operator-port", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "interceptor", "serial",
                             "--socket-dir", str(socket_dir), *operator, *args],
                            cwd=REPO, env=environ, stdout=out, stderr=out)
    out.close()
    daemon = SerialProcess(proc, socket_dir, log)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
