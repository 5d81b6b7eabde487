"""NoCloud seed files: ``meta-data``, ``user-data``, ``vendor-data``, ``network-config``.

Served over HTTP for ``ds=nocloud;s=http://169.254.169.254/nocloud/`` and
written to a ``cidata`` ISO by the config-drive builder.

Decisions, from what cloud-init's NoCloud source does:

* ``user-data`` is always 200. cloud-init requires the file (a seed without
  it is invalid) and over HTTP it does not skip a 404 (it retries, then
  fails). With no user-data the body is empty, which cloud-init processes
  as "nothing to do" without a warning.
* ``vendor-data`` is always 200 too (a 404 costs retries): the ``cloud-init``
  entries of the static and dynamic vendor data, exactly what an OpenStack
  guest would take from ``vendor_data.json``/``vendor_data2.json``; empty
  when there are none; several become one multipart document.
* ``network-config`` is version 1 (read by every cloud-init that reads the
  file, and what the serial channel speaks). The same seed under
  ``/nocloud/v2/`` (``s=http://169.254.169.254/nocloud/v2/``) serves it as
  version 2 (netplan style), for images that prefer it. With no
  interfaces it is 404 (no
  file on a seed ISO), so the guest keeps its fallback (DHCP on the first
  NIC) instead of an empty configuration that would leave it offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import yaml

from interceptor.formats import userdata
from interceptor.formats.document import InstanceDocument, JSONValue
from interceptor.formats.facts import interfaces_of, key_entries, region_of_document
from interceptor.formats.network import network_config_v1, network_config_v2
from interceptor.formats.rendered import NOT_FOUND, OCTETS, YAML, Rendered, listing

FILES: tuple[str, ...] = ("meta-data", "user-data", "vendor-data", "network-config")


def _scrub(value: Any) -> Any:
    """Lone surrogates (valid in JSON, not in UTF-8) become U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def yaml_bytes(value: Any) -> bytes:
    """Block-style YAML 1.1 that PyYAML's safe_load (cloud-init's) reads back exactly
    (strings with lone surrogates excepted: those cannot be UTF-8)."""
    # libyaml's emitter when PyYAML has it: the pure-Python one is ~20x slower.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    dumped = yaml.dump(_scrub(value), Dumper=dumper, default_flow_style=False, sort_keys=False,
                       allow_unicode=True, width=1 << 30)
    return dumped.encode("utf-8")


def meta_data(doc: InstanceDocument) -> dict[str, Any]:
    """``meta-data``. ``ami-id`` only when the server has an image; ``region``
    (``region_of_document``); ``tags`` in list form (``tag_list``: only when
    the owner shows tags, as on EC2)."""
    out: dict[str, Any] = {
        "instance-id": doc["instance_id"],
        "local-hostname": doc["hostname"],
        "hostname": doc["hostname"],
        "availability-zone": doc["availability_zone"],
        "region": region_of_document(doc),
        "launch-index": doc["launch_index"],
    }
    if doc["image_id"]:
        out["ami-id"] = doc["image_id"]
    keys = [key for _, key in key_entries(doc)]
    if keys:
        out["public-keys"] = keys
    tags = tag_list(doc)
    if tags:
        out["tags"] = tags
    return out


def tag_list(doc: InstanceDocument) -> list[str]:
    """Tags as a list (``key=value``, or ``key`` when the value is empty), and
    only when the owner made tags visible to the VM, as on the EC2 surface."""
    if not doc["tags_visible"]:
        return []
    return [f"{key}={value}" if value else str(key) for key, value in doc["tags"].items()]


def meta_data_json(doc: InstanceDocument) -> dict[str, Any]:
    """The meta-data as the serial channel returns it (JSON, NoCloud keys): the
    values of ``meta_data`` plus ``ami-id``, ``region`` and ``tags``, with
    ``public-keys`` always a list."""
    base = meta_data(doc)
    return {
        "ami-id": doc["image_id"],
        "instance-id": base["instance-id"],
        "region": region_of_document(doc),
        "availability-zone": base["availability-zone"],
        "tags": tag_list(doc),
        "public-keys": list(base.get("public-keys", [])),
        "hostname": base["hostname"],
        "local-hostname": base["local-hostname"],
    }


def _vendor_parts(doc: InstanceDocument) -> list[userdata.Part]:
    parts: list[userdata.Part] = []
    for origin in ("static", "dynamic"):
        section: JSONValue = cast(dict[str, JSONValue], doc["vendor_data"]).get(origin)
        value = section.get("cloud-init") if isinstance(section, dict) else None
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, str) and item:
                name = f"vendor-{origin}-{index}"
                data = item.encode(errors="replace")
                parts.append(userdata.Part(name, userdata.FALLBACK_CONTENT_TYPE, data))
    return parts


def vendor_data(doc: InstanceDocument) -> bytes:
    parts = _vendor_parts(doc)
    if not parts:
        return b""
    if len(parts) == 1:
        return parts[0].data
    return userdata.multipart(parts)


def render(doc: InstanceDocument, segments: Sequence[str]) -> Rendered:
    """``segments`` follow ``nocloud``: ``()`` lists the files; a leading
    ``v2`` selects network-config version 2 for the same seed."""
    network_version = 1
    if segments and segments[0] == "v2":
        network_version, segments = 2, segments[1:]
    if not segments:
        return listing(list(FILES))
    if len(segments) != 1:
        return NOT_FOUND
    name = segments[0]
    if name == "meta-data":
        return Rendered(200, yaml_bytes(meta_data(doc)), YAML)
    if name == "user-data":
        return Rendered(200, userdata.compose(doc) or b"", OCTETS)
    if name == "vendor-data":
        return Rendered(200, vendor_data(doc), OCTETS)
    if name == "network-config" and interfaces_of(doc):
        config = network_config_v2(doc) if network_version == 2 else network_config_v1(doc)
        return Rendered(200, yaml_bytes(config), YAML)
    return NOT_FOUND
