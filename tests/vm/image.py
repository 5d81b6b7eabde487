"""A Debian 12 system for QEMU with systemd as PID 1, for the package test.

The base system comes from Debian's package registry through ``debootstrap``
(minbase plus systemd and what the package depends on) and is cached as a
tarball under ``$INTERCEPTOR_VM_CACHE`` (default /var/cache/interceptor-vm),
keyed by the package list: built once, then reused by every run on this
machine. Each boot unpacks it, adds the kernel modules the datapath needs
(from the host's Debian kernel, which QEMU boots), the package under test
and the in-VM test script, and packs it all as the initramfs: the VM runs
from RAM, needs no disk image, no loop device and no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.guest.image import BOOT_DIR, MODULES_ROOT, GuestBuildError

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "nftables", "iproute2", "python3", "adduser",
            "curl", "procps", "kmod")
# Module trees the nft datapath, veth guests and policy routing load from.
MODULE_TREES = ("kernel/net", "kernel/lib", "kernel/crypto", "kernel/drivers/net/veth.ko")
CACHE_ENV = "INTERCEPTOR_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/interceptor-vm")


@dataclass(frozen=True)
class VmImage:
    kernel: Path
    initrd: Path


def _kernel() -> tuple[Path, str]:
    kernels = sorted(BOOT_DIR.glob("vmlinuz-*-amd64"))
    for vmlinuz in reversed(kernels):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        if (MODULES_ROOT / version / "kernel" / "net" / "netfilter").is_dir():
            return vmlinuz, version
    raise GuestBuildError("no Debian kernel with modules in /boot (install linux-image-amd64)")


def base_tarball(cache: Path | None = None) -> Path:
    """The debootstrapped system, built once per package list."""
    root = cache or Path(os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)))
    key = hashlib.sha256(" ".join((MIRROR, SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    tarball = root / f"debian-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=root))
    try:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(work / "root"), MIRROR], capture_output=True, text=True, timeout=1800,
            check=False)
        if proc.returncode != 0:
            raise GuestBuildError(f"debootstrap failed: {proc.stdout[-2000:]}{proc.stderr}")
        # Package caches are not needed in the VM.
        shutil.rmtree(work / "root/var/cache/apt/archives", ignore_errors=True)
        (work / "root/var/cache/apt/archives/partial").mkdir(parents=True)
        tmp = work / "base.tar"
        subprocess.run(["tar", "-C", str(work / "root"), "-cf", str(tmp), "."], check=True,
                       timeout=600)
        os.replace(tmp, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def build_vm(workdir: Path, files: dict[str, tuple[int, bytes]]) -> VmImage:
    """Kernel and initramfs with ``files`` (path in the VM -> mode, content) added."""
    kernel, version = _kernel()
    tarball = base_tarball()
    root = workdir / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=600)
    modules = root / "lib/modules" / version
    for tree in MODULE_TREES:
        src = MODULES_ROOT / version / tree
        dst = modules / tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (MODULES_ROOT / version / name).exists():
            shutil.copy2(MODULES_ROOT / version / name, modules / name)
    subprocess.run(["depmod", "-b", str(root), version], check=True, timeout=120)
    for path, (mode, content) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    initrd = workdir / "initrd.cpio"
    with initrd.open("wb") as out:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE)
        subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root,
                       stdin=find.stdout, stdout=out, check=True, timeout=600)
        find.wait(60)
    shutil.rmtree(root)
    return VmImage(kernel, initrd)
