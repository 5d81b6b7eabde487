"""The Debian package on a real Debian 12 with systemd as PID 1 (issue 16).

Builds the package (scripts/build-deb.sh) and a Debian 12 system
(tests/vm/image.py: debootstrap from Debian's registry, cached per machine),
boots it under QEMU (TCG, no network device: nothing leaves the VM) and
lets tests/vm/inside.sh install and drive it: units active, READY=1 and
watchdog pings seen by systemd, journal fields, a guest namespace inside the
VM reading its metadata, ``systemctl restart`` under 10 ms polling with 0
failures and the listener handed over through systemd's fd store, and
``apt remove`` leaving no nft table, ip rule, BPF pin or listener.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.vm.image import build_vm

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 900

EXPECTED = ("install", "configs-0600", "system-user", "nothing-started", "start",
            "units-active", "notify-ready", "watchdog-pings", "journal-fields",
            "guest-reads-metadata", "fd-store", "restart-0-failures", "restart-handed-over",
            "datapath-while-running", "remove", "no-nft-table", "no-ip-rule", "no-bpf-pin",
            "no-listener", "configs-kept-on-remove")

VMTEST_UNIT = b"""[Unit]
Description=interceptor package test (tests/vm/inside.sh)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/root/inside.sh
"""

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_package_under_systemd_in_a_debian_vm() -> None:
    with tempfile.TemporaryDirectory(prefix="interceptor-vm-") as tmp:
        work = Path(tmp)
        build = subprocess.run(["bash", str(REPO / "scripts/build-deb.sh"), str(work)],
                               capture_output=True, text=True, timeout=600, check=False)
        assert build.returncode == 0, build.stdout + build.stderr
        deb = next(work.glob("interceptor_*.deb"))
        image = build_vm(work, {
            "/root/interceptor.deb": (0o644, deb.read_bytes()),
            "/root/inside.sh": (0o755, (REPO / "tests/vm/inside.sh").read_bytes()),
            "/etc/systemd/system/vmtest.service": (0o644, VMTEST_UNIT),
        })
        console = work / "console.log"
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "3072", "-smp", "2",
               "-display", "none", "-no-reboot", "-nic", "none",
               "-serial", f"file:{console}", "-monitor", "none",
               "-kernel", str(image.kernel), "-initrd", str(image.initrd),
               "-append", "console=ttyS0 rdinit=/sbin/init panic=-1 systemd.wants=vmtest.service "
                          "systemd.show_status=0 loglevel=3"]
        # A hang is judged by what the console shows by then.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(cmd, timeout=BOOT_TIMEOUT_S, check=False, capture_output=True)
        text = console.read_text(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith("VMTEST ")]
    print("\n".join(lines))
    results = {}
    for line in lines:
        parts = line.split(" ", 3)
        if len(parts) >= 3:
            results[parts[1]] = parts[2]
    assert "VMTEST done" in lines, f"the VM test did not finish:\n{text[-6000:]}"
    failed = {name: next(ln for ln in lines if ln.startswith(f"VMTEST {name} "))
              for name, verdict in results.items() if verdict == "FAIL"}
    assert not failed, "\n".join(failed.values())
    missing = [name for name in EXPECTED if results.get(name) != "ok"]
    assert not missing, f"checks that never ran: {missing}\n{text[-4000:]}"
