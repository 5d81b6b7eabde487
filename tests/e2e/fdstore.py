"""The part of systemd a node restart relies on, for tests on machines where
systemd is not PID 1: a notification socket (``$NOTIFY_SOCKET``) that takes
``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` and the file-descriptor store
(``FDSTORE=1`` / ``FDSTOREREMOVE=1`` with ``FDNAME=``), and a launcher that
hands the stored descriptors to the next process as systemd does
(``$LISTEN_FDS`` from fd 3 on, ``$LISTEN_FDNAMES``, ``$LISTEN_PID``). The
real systemd is exercised by the Debian VM test (tests/vm/).

Run as a script it is that launcher:

    python -m tests.e2e.fdstore exec COMMAND...   (fds from $FDSTORE_PASS_FDS)
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.lab import PYTHON, REPO

_MAX_FDS = 4096


class FdStore:
    """One service's notification socket and fd store; ``close()`` at the end."""

    def __init__(self, workdir: Path, *, watchdog_usec: int = 1_000_000) -> None:
        self.path = workdir / "notify.sock"
        self.watchdog_usec = watchdog_usec  # WatchdogSec= as $WATCHDOG_USEC
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._lock = threading.Lock()
        self.fds: dict[str, list[int]] = {}
        self.messages: list[dict[str, str]] = []
        self.ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, 65536, 64)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            with self._lock:
                self.messages.append(fields)
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTORE") == "1":
                    self.fds.setdefault(name, []).extend(fds)
                    fds = []
                if fields.get("FDSTOREREMOVE") == "1":
                    for fd in self.fds.pop(name, []):
                        os.close(fd)
                if fields.get("READY") == "1":
                    self.ready.set()
            for fd in fds:  # descriptors sent without FDSTORE=1: systemd closes them
                os.close(fd)

    def count(self, key: str) -> int:
        with self._lock:
            return sum(1 for m in self.messages if key in m)

    def stored(self) -> dict[str, int]:
        with self._lock:
            return {name: len(fds) for name, fds in self.fds.items()}

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str],
              **popen: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` as systemd starts a service: stored fds from 3 on."""
        self.ready.clear()
        with self._lock:
            pairs = [(name, fd) for name, fds in self.fds.items() for fd in fds]
        run_env = {**env, "NOTIFY_SOCKET": str(self.path),
                   "WATCHDOG_USEC": str(self.watchdog_usec),
                   "FDSTORE_PASS_FDS": ",".join(str(fd) for _, fd in pairs),
                   "FDSTORE_PASS_NAMES": ":".join(name for name, _ in pairs),
                   "PYTHONPATH": str(REPO)}
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            [PYTHON, "-m", "tests.e2e.fdstore", "exec", *argv], env=run_env,
            pass_fds=[fd for _, fd in pairs], **popen)
        return proc

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for fds in self.fds.values():
                for fd in fds:
                    os.close(fd)
            self.fds.clear()


def _exec_main(argv: list[str]) -> None:
    """Move the passed fds to 3, 4, … and exec ``argv`` with LISTEN_PID = this
    pid (exec keeps it, through ``ip netns exec`` too)."""
    raw = os.environ.pop("FDSTORE_PASS_FDS", "")
    names = os.environ.pop("FDSTORE_PASS_NAMES", "")
    fds = [int(f) for f in raw.split(",") if f]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, _MAX_FDS // 2) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
        os.close(fd)
    if fds:
        os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names,
                          LISTEN_PID=str(os.getpid()))
    os.execvp(argv[0], argv)  # noqa: S606 - a launcher, as systemd is


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "exec":
        sys.exit(__doc__)
    _exec_main(sys.argv[2:])
