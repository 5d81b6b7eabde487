"""Build the test guest: a Debian kernel plus a tiny busybox initramfs.

The initramfs holds static busybox, the virtio network modules and the
CD-ROM modules (IDE CD drive, ISO 9660) of the installed
``linux-image-amd64`` kernel and ``init.sh`` as ``/init``. It is
written to a cache directory keyed by a hash of every input, so it is built
once per change of busybox, kernel or init script. Concurrent builders (other
test processes) are safe: each writes a private temporary file and renames it
into place.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INIT_SCRIPT = Path(__file__).with_name("init.sh")
BUSYBOX = Path("/bin/busybox")
BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
CACHE_ENV = "INTERCEPTOR_GUEST_CACHE"
DEFAULT_CACHE = Path("/var/tmp/interceptor-guest")
STALE_AFTER_S = 24 * 3600

# insmod order: each module after the ones it depends on.
VIRTIO_NET_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
    "virtio_pci", "failover", "net_failover", "virtio_net",
)
# The CD-ROM QEMU's "-cdrom" attaches (PIIX IDE) and the ISO 9660 filesystem.
CDROM_MODULES = ("scsi_common", "scsi_mod", "libata", "ata_piix", "cdrom", "sr_mod", "isofs")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class GuestBuildError(RuntimeError):
    """The guest cannot be built here (missing package or file)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def _find_kernel() -> tuple[Path, str]:
    """Newest /boot/vmlinuz-* whose module tree has virtio_net."""
    candidates = []
    for vmlinuz in BOOT_DIR.glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        if _find_module(version, "virtio_net", required=False) is not None:
            candidates.append((vmlinuz, version))
    if not candidates:
        raise GuestBuildError(
            "no /boot/vmlinuz-* with matching virtio modules under /lib/modules; "
            "install linux-image-amd64 (scripts/setup.sh does)")
    return max(candidates, key=lambda c: [int(p) if p.isdigit() else 0
                                          for p in c[1].replace("-", ".").split(".")])


def _find_module(version: str, name: str, *, required: bool = True) -> Path | None:
    tree = MODULES_ROOT / version / "kernel"
    if tree.is_dir():
        for suffix in MODULE_SUFFIXES:
            # Module file names use "_" or "-" interchangeably.
            for candidate in (name + suffix, name.replace("_", "-") + suffix):
                found = next(iter(sorted(tree.rglob(candidate))), None)
                if found is not None:
                    return found
    if required:
        raise GuestBuildError(f"kernel module {name} not found under {tree}")
    return None


def _module_bytes(path: Path) -> bytes:
    """The uncompressed module: busybox insmod takes plain ELF only."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise GuestBuildError(f"{path} is zstd-compressed; install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return data


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One entry of a cpio "newc" archive (the format the kernel unpacks)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _initramfs(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A gzip-compressed newc archive; ``files`` maps path → (mode, content)."""
    archive = io.BytesIO()
    # Every ancestor directory needs its own entry, parents first.
    dirs = sorted({str(parent) for p in files for parent in Path(p).parents
                   if str(parent) != "."} | {"dev", "proc", "sys", "tmp", "bin", "sbin"})
    ino = 1
    for d in dirs:
        archive.write(_newc_entry(d, 0o040755, b"", ino))
        ino += 1
    for path in sorted(files):
        mode, content = files[path]
        archive.write(_newc_entry(path, mode, content, ino))
        ino += 1
    archive.write(_newc_entry("TRAILER!!!", 0, b"", 0))
    # mtime=0: the same inputs give the same bytes.
    return gzip.compress(archive.getvalue(), compresslevel=6, mtime=0)


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)))


def _atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_guest(cache_dir: Path | None = None) -> GuestImage:
    """Return the kernel and initramfs, building the initramfs if inputs changed."""
    if not BUSYBOX.is_file():
        raise GuestBuildError("/bin/busybox missing; install busybox-static")
    kernel, version = _find_kernel()
    modules = {name: _find_module(version, name)
               for name in (*VIRTIO_NET_MODULES, *CDROM_MODULES)}
    init = INIT_SCRIPT.read_bytes()
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256()
    for part in (init, busybox, kernel.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    module_data: dict[str, bytes] = {}
    for name, path in modules.items():
        assert path is not None
        module_data[name] = _module_bytes(path)
        digest.update(name.encode() + hashlib.sha256(module_data[name]).digest())
    key = digest.hexdigest()[:16]
    out_dir = (cache_dir or _cache_dir()) / key
    out_dir.mkdir(parents=True, exist_ok=True)
    initrd = out_dir / "initrd.gz"
    kernel_copy = out_dir / "vmlinuz"
    if not initrd.exists():
        files: dict[str, tuple[int, bytes]] = {
            "init": (0o100755, init),
            "bin/busybox": (0o100755, busybox),
        }
        for name, data in module_data.items():
            files[f"lib/modules/{name}.ko"] = (0o100644, data)
        _atomic_write(initrd, _initramfs(files))
    if not kernel_copy.exists():
        # A copy next to the initrd keeps the pair consistent if the system
        # kernel is upgraded while tests run.
        _atomic_write(kernel_copy, kernel.read_bytes())
    _prune_stale(out_dir)
    return GuestImage(kernel=kernel_copy, initrd=initrd, kernel_version=version)


def _prune_stale(current: Path) -> None:
    """Drop images of older inputs (unused for a day) so the cache stays small."""
    os.utime(current)
    cutoff = time.time() - STALE_AFTER_S
    for other in current.parent.iterdir():
        if other != current and other.is_dir() and other.stat().st_mtime < cutoff:
            shutil.rmtree(other, ignore_errors=True)
