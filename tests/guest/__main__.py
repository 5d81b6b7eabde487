"""Boot the test guest by hand (also used by the Vagrant development VM).

    python -m tests.guest --tap tapdemo0 --ip 10.0.0.2/24 \
        --paths /latest/meta-data/instance-id,/openstack/latest/meta_data.json

Prints each response and exits 0 when the guest completed its run. The tap
must exist (``ip tuntap add dev tapdemo0 mode tap && ip link set tapdemo0 up``).
"""

from __future__ import annotations

import argparse
import sys

from tests.guest.net import random_mac
from tests.guest.qemu import boot_guest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netns", default=None, help="network namespace of the tap")
    p.add_argument("--tap", required=True, help="existing tap device")
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
    result = boot_guest(args.netns, args.tap, args.mac or random_mac(), guest_args,
                        timeout=args.timeout)
    if args.console:
        print(result.console)
    print(f"# network: {'ok' if result.net_ok else 'FAILED'} {result.net_detail}")
    for r in result.responses:
        print(f"# {r.method} {r.path} -> {r.status}")
        sys.stdout.write(r.body.decode("utf-8", "replace") + "\n")
    print(f"# guest reached userspace at {result.init_uptime}s, finished at "
          f"{result.done_uptime}s; {result.duration:.1f}s wall")
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
