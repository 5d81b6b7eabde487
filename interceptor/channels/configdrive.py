"""Config-drive ISO images (ISO 9660 + Joliet + Rock Ridge) built from an instance document.

``build_iso(doc, "openstack")`` gives an OpenStack config drive (label
``config-2``): ``openstack/<version>/`` for every version (and ``latest``)
with ``meta_data.json``, ``network_data.json``, ``vendor_data.json``,
``vendor_data2.json`` and ``user_data`` (when there is user-data),
``openstack/content/NNNN`` for injected files, and ``ec2/<version>/``
``meta-data.json`` (+ ``user-data``). ``build_iso(doc, "nocloud")`` gives a
NoCloud seed (label ``cidata``): ``meta-data``, ``user-data``,
``vendor-data`` and ``network-config`` (when there are interfaces).

Every byte comes from the pure renderers in ``interceptor.formats``, the same
ones the node serves over HTTP, so the drive and 169.254.169.254 agree. The
OpenStack ``password`` file is left out: the guest sets it over HTTP, a drive
built before that could only hold nothing or a stale value.

The same document always gives the same bytes (the image can be cached by
revision): pycdlib stamps records with the current time, so the build runs
with pycdlib's clock pinned to ``FIXED_TIME`` in UTC. Files are read-only
(Rock Ridge mode 0444, directories 0555); nothing but the VM-visible
document goes in, so private metadata never does.
"""

from __future__ import annotations

import io
import re
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.utils

from interceptor.formats import ec2, nocloud, openstack
from interceptor.formats.document import InstanceDocument
from interceptor.formats.rendered import json_bytes

Format = Literal["openstack", "nocloud"]
FORMATS: tuple[Format, ...] = ("openstack", "nocloud")
LABELS: dict[Format, str] = {"openstack": "config-2", "nocloud": "cidata"}
MEDIA_TYPE = "application/x-iso9660-image"
FIXED_TIME = 946684800.0
"""2000-01-01T00:00:00Z, every timestamp on the image."""

_ISO_CHARS = re.compile(r"[^A-Z0-9_]")
_SKIPPED_OPENSTACK = frozenset({"password"})
# pycdlib modules that read the clock; they are patched only while building.
_CLOCK_USERS = (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates, pycdlib.utils)
_clock_lock = threading.Lock()


class ConfigDriveError(ValueError):
    """The requested format is unknown."""


def drive_files(doc: InstanceDocument, fmt: Format) -> dict[str, bytes]:
    """Path on the drive (``/openstack/latest/meta_data.json``) → content."""
    if fmt == "openstack":
        return _openstack_files(doc)
    if fmt == "nocloud":
        return _nocloud_files(doc)
    raise ConfigDriveError(f"unknown config-drive format {fmt!r} (openstack or nocloud)")


def _openstack_files(doc: InstanceDocument) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for version in (*openstack.VERSIONS, openstack.LATEST):
        names = openstack.render(doc, (version,)).body.decode().splitlines()
        for name in names:
            if name in _SKIPPED_OPENSTACK:
                continue
            rendered = openstack.render(doc, (version, name))
            if rendered.status == 200:
                files[f"/openstack/{version}/{name}"] = rendered.body
    for entry in openstack.meta_data(doc)["files"]:
        segments = tuple(p for p in entry["content_path"].split("/") if p)
        rendered = openstack.render(doc, segments)
        if rendered.status == 200:
            files["/openstack" + entry["content_path"]] = rendered.body
    for version in (*ec2.VERSIONS, ec2.LATEST):
        meta = ec2.meta_data_json(doc, version)
        files[f"/ec2/{version}/meta-data.json"] = json_bytes(meta)
        user = ec2.render(doc, (version, "user-data"))
        if user.status == 200:
            files[f"/ec2/{version}/user-data"] = user.body
    return files


def _nocloud_files(doc: InstanceDocument) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in nocloud.FILES:
        rendered = nocloud.render(doc, (name,))
        if rendered.status == 200:
            files["/" + name] = rendered.body
    return files


def _iso_name(name: str, is_dir: bool) -> str:
    """A level-3 ISO 9660 name (``A-Z0-9_``, one dot, ``;1`` for files).

    Guests read the Rock Ridge (Linux) or Joliet (Windows) names; this one
    only has to be valid and unique in its directory.
    """
    if is_dir:
        return _ISO_CHARS.sub("_", name.upper())[:31]
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = _ISO_CHARS.sub("_", stem.upper())[:24] or "_"
    ext = _ISO_CHARS.sub("_", ext.upper())[:5]
    return f"{stem}.{ext};1"


class _FixedClock(types.SimpleNamespace):
    """The subset of ``time`` pycdlib uses, frozen at ``FIXED_TIME`` and in UTC."""

    def __init__(self) -> None:
        super().__init__(time=lambda: FIXED_TIME, localtime=time.gmtime, gmtime=time.gmtime,
                         strftime=time.strftime, mktime=time.mktime, timezone=0, altzone=0,
                         daylight=0)


@contextmanager
def _fixed_clock() -> Iterator[None]:
    with _clock_lock:
        saved = [module.time for module in _CLOCK_USERS]
        try:
            for module in _CLOCK_USERS:
                module.time = _FixedClock()  # type: ignore[attr-defined]
            yield
        finally:
            for module, original in zip(_CLOCK_USERS, saved, strict=True):
                module.time = original  # type: ignore[attr-defined]


def _add_tree(iso: pycdlib.PyCdlib, files: dict[str, bytes]) -> None:
    made: dict[str, str] = {"": ""}  # drive path → ISO path of each directory
    used: set[str] = set()
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            drive_dir = "/".join(parts[:depth])
            if drive_dir in made:
                continue
            iso_dir = made["/".join(parts[:depth - 1])] + "/" + _iso_name(parts[depth - 1], True)
            if iso_dir in used:
                raise ConfigDriveError(f"two directories map to {iso_dir}")
            used.add(iso_dir)
            iso.add_directory(iso_dir, rr_name=parts[depth - 1], joliet_path="/" + drive_dir)
            made[drive_dir] = iso_dir
        iso_path = made["/".join(parts[:-1])] + "/" + _iso_name(parts[-1], False)
        if iso_path in used:
            raise ConfigDriveError(f"two files map to {iso_path}")
        used.add(iso_path)
        data = files[path]
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1], joliet_path=path)


def build_iso(doc: InstanceDocument, fmt: Format) -> bytes:
    """The ISO image of ``doc`` in ``fmt``; raises ConfigDriveError on an unknown format."""
    files = drive_files(doc, fmt)
    out = io.BytesIO()
    with _fixed_clock():
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, vol_ident=LABELS[fmt], sys_ident="LINUX",
                app_ident_str="interceptor", rock_ridge="1.09", joliet=3)
        try:
            _add_tree(iso, files)
            iso.write_fp(out)
        finally:
            iso.close()
    return out.getvalue()
