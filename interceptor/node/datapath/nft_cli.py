"""Running the ``nft`` command: the nft datapath's tables and the eBPF
datapath's guard table (ebpf_guard.py) both go through here."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from interceptor.common.errors import DatapathError

NFT_TIMEOUT_S = 30.0


class Nft:
    """``nft`` in the calling thread's network namespace; every failure is a
    DatapathError with nft's first line of complaint."""

    def __init__(self, binary: str = "nft", who: str = "nft") -> None:
        self.binary = binary
        self.who = who

    def run(self, args: Sequence[str], stdin: str | None = None) -> str:
        binary = shutil.which(self.binary)
        if binary is None:
            raise DatapathError(
                f"{self.who}: the {self.binary!r} command is missing (install Debian 'nftables')")
        try:
            proc = subprocess.run([binary, *args], input=stdin, capture_output=True,
                                  text=True, timeout=NFT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise DatapathError(f"{self.who}: nft {' '.join(args)} timed out") from None
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "failed")
            raise DatapathError(f"{self.who}: {first.strip()}")
        return proc.stdout

    def apply(self, batch: str) -> None:
        """One atomic transaction."""
        self.run(["-f", "-"], stdin=batch)

    def table_json(self, family: str, table: str) -> list[dict[str, Any]]:
        data = json.loads(self.run(["-j", "list", "table", family, table]))
        return list(data.get("nftables", []))

    def tables(self) -> set[tuple[str, str]]:
        """(family, name) of every table."""
        out = self.run(["list", "tables"])
        return {(p[1], p[2]) for line in out.splitlines()
                if line.startswith("table") and len(p := line.split()) >= 3}

    @staticmethod
    def drop_tables(family_tables: Sequence[tuple[str, str]]) -> str:
        """Batch lines that delete tables whether or not they exist."""
        return "".join(f"add table {f} {t}\ndelete table {f} {t}\n" for f, t in family_tables)
