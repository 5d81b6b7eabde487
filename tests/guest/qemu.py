"""Boot the test guest under QEMU (TCG) on an existing tap device.

The tap must exist before the guest boots (see ``tests.lab.tap_device``):
a persistent tap made with ``ip tuntap add`` appears on netlink before QEMU
starts, so a node daemon can bind it by name and have its datapath ready by
the time the guest sends its first packet. QEMU only attaches to it.

``tap=None`` boots a guest without any NIC (the config-drive and serial
tests); ``qemu_args`` adds devices, e.g. ``cdrom_args(iso)`` or
``serial_socket_args(path)`` (the guest's ttyS1).

Two entry points with the same arguments and result:
* ``boot_guest``: blocking, for tests whose servers run in other processes.
* ``boot_guest_async``: for tests that run the server in the same event loop.
Both always kill QEMU (hard timeout, exceptions, cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Mapping, Sequence

from tests.guest.console import GuestResult, parse_console
from tests.guest.image import GuestImage, build_guest

QEMU = "qemu-system-x86_64"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:,=%+\-~?&]*$")

CmdlineValue = str | int | float | Sequence[str]


class GuestBootError(RuntimeError):
    """QEMU could not be started or the arguments are unusable."""


def kernel_args(cmdline_args: Mapping[str, CmdlineValue]) -> list[str]:
    """``{"ip": "10.0.0.2/24", "paths": ["/a", "/b"]}`` → ``imd.ip=… imd.paths=/a,/b``.

    Keys may be given with or without the ``imd.`` prefix. Values become
    kernel command-line words, so they may hold no blanks or quotes.
    """
    words = []
    for key, value in cmdline_args.items():
        name = key if key.startswith("imd.") else f"imd.{key}"
        text = ",".join(value) if isinstance(value, list | tuple) else str(value)
        if not _SAFE_VALUE.match(text) or not _SAFE_VALUE.match(name):
            raise GuestBootError(f"guest argument {name}={text!r} has unsafe characters")
        words.append(f"{name}={text}")
    return words


def cdrom_args(iso: str) -> list[str]:
    """The ISO as the guest's IDE CD-ROM (``/dev/sr0``), read-only."""
    return ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide,index=2,format=raw"]


def serial_socket_args(path: str, chardev: str = "imdser") -> list[str]:
    """The guest's second serial port (ttyS1) connected to the UNIX socket at ``path``
    (QEMU is the client; it retries every second until the socket exists)."""
    if "," in path:
        raise GuestBootError(f"socket path {path!r} has a comma")
    return ["-chardev", f"socket,id={chardev},path={path},reconnect=1",
            "-device", f"isa-serial,chardev={chardev}"]


def qemu_command(image: GuestImage, netns: str | None, tap: str | None, mac: str,
                 cmdline_args: Mapping[str, CmdlineValue],
                 qemu_args: Sequence[str] = ()) -> list[str]:
    mac = mac.lower()
    if tap is not None and not _MAC.match(mac):
        raise GuestBootError(f"bad MAC address {mac!r}")
    append = " ".join(["console=ttyS0", "panic=-1", "loglevel=4", "rdinit=/init",
                       *kernel_args(cmdline_args)])
    cmd = [
        QEMU, "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
    ]
    if tap is not None:
        cmd += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]
    cmd += list(qemu_args)
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def _check_tap(netns: str | None, tap: str) -> None:
    where = ["ip", "-n", netns] if netns else ["ip"]
    probe = subprocess.run([*where, "link", "show", "dev", tap],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise GuestBootError(
            f"tap {tap} does not exist in netns {netns or '(host)'}; create it first "
            "(tests.lab.tap_device)")


def _result(console: str, returncode: int | None, timed_out: bool,
            started: float) -> GuestResult:
    result = GuestResult(console=console, returncode=returncode, timed_out=timed_out,
                         duration=time.monotonic() - started)
    parse_console(console, result)
    return result


def boot_guest(netns: str | None, tap: str | None, mac: str,
               cmdline_args: Mapping[str, CmdlineValue], timeout: float = 60.0,
               image: GuestImage | None = None, qemu_args: Sequence[str] = ()) -> GuestResult:
    """Boot the guest on ``tap`` in ``netns``; return once it powers off or
    ``timeout`` seconds pass (then QEMU is killed and ``timed_out`` is set)."""
    image = image or build_guest()
    if tap is not None:
        _check_tap(netns, tap)
    cmd = qemu_command(image, netns, tap, mac, cmdline_args, qemu_args)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timed_out = False
    try:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return _result(out.decode("utf-8", "replace"), proc.returncode, timed_out, started)


async def boot_guest_async(netns: str | None, tap: str | None, mac: str,
                           cmdline_args: Mapping[str, CmdlineValue], timeout: float = 60.0,
                           image: GuestImage | None = None,
                           qemu_args: Sequence[str] = ()) -> GuestResult:
    """``boot_guest`` that leaves the event loop free while the guest runs."""
    built = image if image is not None else await asyncio.to_thread(build_guest)
    if tap is not None:
        await asyncio.to_thread(_check_tap, netns, tap)
    cmd = qemu_command(built, netns, tap, mac, cmdline_args, qemu_args)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    chunks: list[bytes] = []

    async def drain() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            chunks.append(chunk)
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            # Shielded so cancellation of the caller still reaps QEMU.
            await asyncio.shield(proc.wait())
    return _result(b"".join(chunks).decode("utf-8", "replace"), proc.returncode,
                   timed_out, started)

