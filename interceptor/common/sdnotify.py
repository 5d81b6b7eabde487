"""The service manager's notification and socket-passing protocols, spoken directly.

systemd (``Type=notify``) reads datagrams on ``$NOTIFY_SOCKET``: ``READY=1``,
``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``, and ``FDSTORE=1`` with file
descriptors attached (``SCM_RIGHTS``), which it keeps across a restart of the
service and passes back to the next process as ``$LISTEN_FDS`` (fds 3, 4, …,
named by ``$LISTEN_FDNAMES``, meant for ``$LISTEN_PID``). Outside systemd
every call is a no-op that returns False, so the daemons run the same way
under any supervisor or none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3
_FDNAME_MAX = 255


def valid_fdname(name: str) -> bool:
    """What systemd accepts as FDNAME: 1..255 printable ASCII characters, no ':'."""
    return 0 < len(name) <= _FDNAME_MAX and all(33 <= ord(c) < 127 and c != ":" for c in name)


def notify(message: str, fds: Sequence[int] = (),
           environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification; True when a service manager socket took it."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            if fds:
                socket.send_fds(sock, [message.encode()], list(fds))
            else:
                sock.send(message.encode())
        except OSError as exc:
            log.warning("service manager notification failed: %s", exc)
            return False
    return True


@dataclass(frozen=True)
class Watchdog:
    """``WatchdogSec=`` as the manager passed it: ping at least every ``interval_s``."""

    interval_s: float

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Watchdog | None:
        env = os.environ if environ is None else environ
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        # Half the timeout, as sd_watchdog_enabled(3) recommends.
        return cls(int(usec) / 2e6)

    async def run(self) -> None:
        """Ping until cancelled, from the event loop itself: a blocked or
        wedged loop stops the pings, and the manager restarts the service."""
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(self.interval_s)


def listen_fds(environ: dict[str, str] | None = None, *, unset: bool = True
               ) -> dict[str, list[int]]:
    """File descriptors passed to this process (``$LISTEN_FDS``), by name.

    Unnamed ones are listed under ``"unknown"`` (systemd's default name).
    With ``unset`` the variables are removed, so no child process inherits
    them. Every fd returned is set close-on-exec.
    """
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not count.isdigit() or pid != str(os.getpid()):
        return {}
    split = names.split(":") if names else []
    out: dict[str, list[int]] = {}
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = split[i] if i < len(split) and split[i] else "unknown"
        out.setdefault(name, []).append(fd)
    return out
