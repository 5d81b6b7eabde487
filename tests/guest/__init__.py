"""A real QEMU guest for tests: busybox initramfs that fetches metadata paths.

    from tests.guest import boot_guest
    from tests.lab import netns, random_mac, tap_device
    with netns() as ns, tap_device(ns) as tap:
        result = boot_guest(ns, tap, random_mac(),
                            {"ip": "10.0.0.2/24", "route": "onlink",
                             "paths": ["/latest/meta-data/instance-id"]}, timeout=60)
        assert result.response("/latest/meta-data/instance-id").status == 200
"""

from tests.guest.console import GuestResponse, GuestResult
from tests.guest.image import GuestBuildError, GuestImage, build_guest
from tests.guest.qemu import (
    GuestBootError,
    boot_guest,
    boot_guest_async,
    cdrom_args,
    kernel_args,
    serial_socket_args,
)

__all__ = [
    "GuestBootError", "GuestBuildError", "GuestImage", "GuestResponse", "GuestResult",
    "boot_guest", "boot_guest_async", "build_guest", "cdrom_args", "kernel_args",
    "serial_socket_args",
]
