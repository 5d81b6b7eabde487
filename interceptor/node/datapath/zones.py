"""Conntrack zones for steered taps, allocated, not derived.

A zone keeps two guests with the same address and port apart in conntrack
(nft.py). Zones are 16 bits and ifindexes 31, so ``ifindex mod 65535`` would
give two live taps the same zone once ifindexes grow past 65535 (they only
ever grow on a busy host). The pool hands each steered tap the lowest free
zone and keeps it for as long as the tap stays steered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ZONES = 0xFFFF  # zone 0 is everyone else's


class ZonePool:
    def __init__(self, size: int = ZONES) -> None:
        self._size = size
        self._of: dict[int, int] = {}

    @property
    def zones(self) -> Mapping[int, int]:
        """ifindex -> zone, for the taps assigned now."""
        return self._of

    def assign(self, ifindexes: Iterable[int]) -> None:
        """Make exactly ``ifindexes`` hold a zone; those that had one keep it."""
        wanted = set(ifindexes)
        if len(wanted) > self._size:
            raise ValueError(f"more than {self._size} steered taps: out of conntrack zones")
        self._of = {i: z for i, z in self._of.items() if i in wanted}
        used = set(self._of.values())
        free = (z for z in range(1, self._size + 1) if z not in used)
        for ifindex in sorted(wanted - set(self._of)):
            self._of[ifindex] = next(free)
