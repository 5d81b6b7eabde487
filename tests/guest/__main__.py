"""Boot the test guest by hand (also used by the Vagrant development VM).

    python -m tests.guest --tap tapdemo0 --ip 10.0.0.2/24 \
        --paths /latest/meta-data/instance-id,/openstack/latest/meta_data.json

    python -m tests.guest --iso vm1.iso --files /openstack/latest/user_data
    python -m tests.guest --serial-socket /run/interceptor-serial/vm1.sock \
        --codes REQUEST_METADATA,CLOUDSIGMA/uuid

Prints each response and exits 0 when the guest completed its run. The tap
must exist (``ip tuntap add dev tapdemo0 mode tap && ip link set tapdemo0 up``);
with ``--iso`` or ``--serial-socket`` the guest has no NIC at all.
"""

from __future__ import annotations

import argparse
import sys

from tests.guest.qemu import boot_guest, cdrom_args, serial_socket_args
from tests.lab import random_mac


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netns", default=None, help="network namespace of the tap")
    p.add_argument("--tap", default=None, help="existing tap device (http mode)")
    p.add_argument("--iso", default=None, help="boot with this ISO as CD-ROM and read it")
    p.add_argument("--files", default="/openstack/latest/meta_data.json",
                   help="with --iso: comma-separated files to print")
    p.add_argument("--serial-socket", default=None,
                   help="connect ttyS1 to this UNIX socket and send --codes")
    p.add_argument("--codes", default="REQUEST_METADATA",
                   help="with --serial-socket: comma-separated packet codes")
    p.add_argument("--mac", default=None, help="guest MAC (random when unset)")
    p.add_argument("--ip", default="10.0.0.2/24", help="guest address/prefix")
    p.add_argument("--gw", default="10.0.0.1", help="gateway for --route default")
    p.add_argument("--route", default="onlink", choices=["onlink", "linklocal", "default", "none"])
    p.add_argument("--paths", default="/latest/meta-data/instance-id",
                   help="comma-separated paths to GET")
    p.add_argument("--token", type=int, default=None,
                   help="use an EC2 session token with this TTL (IMDSv2)")
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--console", action="store_true", help="print the whole serial console")
    args = p.parse_args(argv)
    guest_args: dict[str, str | int] = {"ip": args.ip, "gw": args.gw, "route": args.route,
                                        "paths": args.paths}
    if args.token is not None:
        guest_args["token"] = args.token
    qemu_args: list[str] = []
    if args.iso:
        guest_args, qemu_args = {"mode": "cdrom", "files": args.files}, cdrom_args(args.iso)
    elif args.serial_socket:
        guest_args = {"mode": "serial", "codes": args.codes}
        qemu_args = serial_socket_args(args.serial_socket)
    elif args.tap is None:
        p.error("one of --tap, --iso or --serial-socket is required")
    tap = None if qemu_args else args.tap
    result = boot_guest(args.netns, tap, args.mac or random_mac(), guest_args,
                        timeout=args.timeout, qemu_args=qemu_args)
    if args.console:
        print(result.console)
    if tap is not None:
        print(f"# network: {'ok' if result.net_ok else 'FAILED'} {result.net_detail}")
    if result.instance_id is not None:
        print(f"# instance-id read by the guest: {result.instance_id}")
    for r in result.responses:
        raw = r.method in ("FILE", "SERIAL")  # not HTTP: the file, or the answer line
        print(f"# {r.method} {r.path} -> {r.nc_status if raw else r.status}")
        sys.stdout.write((r.raw if raw else r.body).decode("utf-8", "replace") + "\n")
    print(f"# guest reached userspace at {result.init_uptime}s, finished at "
          f"{result.done_uptime}s; {result.duration:.1f}s wall")
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
