"""Read an ISO image back in tests: volume label and every file by its Rock Ridge path."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pycdlib


@dataclass(frozen=True)
class IsoContents:
    label: str
    files: dict[str, bytes]
    """Rock Ridge path (``/openstack/latest/meta_data.json``) → content."""
    modes: dict[str, int]
    """Rock Ridge path → POSIX mode (files and directories)."""
    joliet: set[str]
    """Every path in the Joliet tree (what Windows guests see)."""


def read_iso(image: bytes) -> IsoContents:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode("ascii").strip()
        files: dict[str, bytes] = {}
        modes: dict[str, int] = {}
        for root, dirs, names in iso.walk(rr_path="/"):
            for d in dirs:
                path = root.rstrip("/") + "/" + d
                modes[path] = _mode(iso, path)
            for name in names:
                path = root.rstrip("/") + "/" + name
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                files[path] = out.getvalue()
                modes[path] = _mode(iso, path)
        joliet: set[str] = set()
        for root, dirs, names in iso.walk(joliet_path="/"):
            joliet.update(root.rstrip("/") + "/" + n for n in [*dirs, *names])
        return IsoContents(label, files, modes, joliet)
    finally:
        iso.close()


def _mode(iso: Any, path: str) -> int:
    """The Rock Ridge file mode of ``path`` (the image always has Rock Ridge)."""
    record = iso.get_record(rr_path=path)
    return int(record.rock_ridge.get_file_mode())
