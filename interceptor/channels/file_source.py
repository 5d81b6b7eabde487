"""The file driver: serial metadata from ``<directory>/<vm-name>.yaml``, no backend at all.

One file per VM, named as its serial endpoint (``vm1.yaml`` serves the
socket ``vm1.sock``); a file that appears or disappears binds or unbinds
that name within ``poll_interval`` seconds. The file::

    metadata:
      instance-id: i-0123          # required
      ami-id: my-image
      region: us-east1
      availability-zone: us-east1-a
      hostname: vm1                # local-hostname wins when both are set
      tags: [a, b]                 # or a mapping key: value
      public-keys: ["ssh-ed25519 AAAA... alice"]
    network:                       # optional; one interface
      mac: "52:54:00:12:34:56"     # required with network: guests match their NIC by MAC
      name: eth0
      address: 192.168.1.10
      netmask: 255.255.255.0
      gateway: 192.168.1.254
      search: example.com          # or a list
      nameservers: [192.168.1.1]
    userdata: |
      #cloud-config
      ...

``document_from_file`` turns it into an instance document
(``interceptor/formats/document.py``), so the answers come from the same
renderers as every other channel. A file that is missing keys, is not
YAML or is larger than ``MAX_FILE_BYTES`` makes that VM's requests answer
``unavailable`` and is logged with the reason; other VMs are unaffected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from interceptor.channels.sources import SerialBinding, SourceUnavailable, valid_name
from interceptor.formats.document import (
    SCHEMA_VERSION,
    InstanceDocument,
    Interface,
    empty_meta,
    encode_b64,
)

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20
SUFFIX = ".yaml"


class FileFormatError(ValueError):
    """The VM file does not have the documented shape."""


def _text(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise FileFormatError(f"{key} must be a string")
    return str(value)


def _strings(section: Mapping[str, Any], key: str) -> list[str]:
    value = section.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FileFormatError(f"{key} must be a string or a list of strings")
    return list(value)


def _tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    value = metadata.get("tags")
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    return dict.fromkeys(_strings(metadata, "tags"), "")


def _interface(network: Mapping[str, Any]) -> Interface:
    mac = _text(network, "mac")
    if not mac:
        raise FileFormatError("network.mac is required (guests match their NIC by MAC)")
    interface: Interface = {"name": _text(network, "name") or "eth0", "mac": mac.lower(),
                            "dhcp4": False, "addresses": []}
    address, netmask = _text(network, "address"), _text(network, "netmask")
    if address:
        try:
            parsed = ipaddress.ip_interface(f"{address}/{netmask or 32}")
        except ValueError as exc:
            raise FileFormatError(f"network.address/netmask: {exc}") from None
        interface["addresses"] = [{"address": str(parsed.ip), "prefix": parsed.network.prefixlen}]
    else:
        interface["dhcp4"] = True
    interface["gateway4"] = _text(network, "gateway")
    interface["nameservers"] = _strings(network, "nameservers")
    interface["search"] = _strings(network, "search")
    return interface


def document_from_file(name: str, data: Any) -> InstanceDocument:
    """The instance document a VM file describes (raises FileFormatError)."""
    if not isinstance(data, dict):
        raise FileFormatError("the file must be a YAML mapping")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise FileFormatError("metadata must be a mapping")
    instance_id = _text(metadata, "instance-id")
    if not instance_id:
        raise FileFormatError("metadata.instance-id is required")
    network = data.get("network")
    if network is not None and not isinstance(network, dict):
        raise FileFormatError("network must be a mapping")
    user = data.get("userdata")
    if user is not None and not isinstance(user, str):
        raise FileFormatError("userdata must be a string")
    keys = _strings(metadata, "public-keys")
    zone = _text(metadata, "availability-zone") or _text(metadata, "region") or ""
    doc: InstanceDocument = {
        "schema": SCHEMA_VERSION, "instance_id": instance_id, "revision": 1,
        "hostname": _text(metadata, "local-hostname") or _text(metadata, "hostname") or name,
        "node": "", "customer_id": "", "image_id": _text(metadata, "ami-id"),
        "instance_type": "", "availability_zone": zone, "launch_index": 0,
        "metadata_enabled": True, "require_token": False, "tags_visible": True,
        "guest_writes": False,
        "ssh_keys": [{"name": f"key-{i}", "key": key} for i, key in enumerate(keys)],
        "user_data": ([{"name": "user", "content_type": "text/plain",
                        "data_b64": encode_b64(user.encode("utf-8"))}] if user else []),
        "files": [], "network": {"interfaces": [_interface(network)] if network else []},
        "tags": _tags(metadata), "meta": empty_meta(),
        "vendor_data": {"static": {}, "dynamic": {}}, "password": None, "guest_data": {},
    }
    region = _text(metadata, "region")
    if region:
        doc["region"] = region
    return doc


class FileSource:
    """``SerialSource`` over a directory of VM files (see the module doc)."""

    def __init__(self, directory: str | Path, *, poll_interval: float = 2.0) -> None:
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self._cache: dict[str, tuple[tuple[int, int, int], InstanceDocument]] = {}
        self._reported: dict[str, str] = {}

    def _names(self) -> list[str]:
        try:
            entries = os.listdir(self.directory)
        except OSError as exc:
            raise SourceUnavailable(f"cannot list {self.directory}: {exc.strerror}") from None
        return sorted(entry[:-len(SUFFIX)] for entry in entries
                      if entry.endswith(SUFFIX) and valid_name(entry[:-len(SUFFIX)]))

    async def bindings(self) -> Mapping[str, SerialBinding]:
        names = await asyncio.to_thread(self._names)
        return {name: SerialBinding(name, name) for name in names}

    def _load(self, name: str) -> InstanceDocument:
        path = self.directory / (name + SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceUnavailable(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceUnavailable(f"{path} is not a regular file")
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
            if st.st_size > MAX_FILE_BYTES:
                raise SourceUnavailable(f"{path} is larger than {MAX_FILE_BYTES} bytes")
            raw = handle.read(MAX_FILE_BYTES + 1)
        try:
            doc = document_from_file(name, yaml.safe_load(raw))
        except yaml.YAMLError as exc:
            raise self._bad(name, path, f"not valid YAML: {exc}".splitlines()[0]) from None
        except FileFormatError as exc:
            raise self._bad(name, path, str(exc)) from None
        self._cache[name] = (key, doc)
        self._reported.pop(name, None)
        return doc

    def _bad(self, name: str, path: Path, reason: str) -> SourceUnavailable:
        if self._reported.get(name) != reason:  # once per distinct problem, not per request
            log.warning("serial file %s: %s", path, reason)
            self._reported[name] = reason
        return SourceUnavailable(f"{path}: {reason}")

    async def document(self, binding: SerialBinding) -> InstanceDocument:
        return await asyncio.to_thread(self._load, binding.name)

    async def follow(self, on_change: Callable[[], Awaitable[None]]) -> None:
        seen: list[str] | None = None
        while True:
            try:
                names = await asyncio.to_thread(self._names)
            except SourceUnavailable as exc:
                log.warning("serial files: %s", exc)
                names = []
            if names != seen:
                for gone in set(seen or []) - set(names):
                    self._cache.pop(gone, None)
                seen = names
                await on_change()
            await asyncio.sleep(self.poll_interval)
