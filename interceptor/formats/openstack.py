"""OpenStack-style metadata under ``/openstack``.

cloud-init reads ``/openstack`` (the version list), picks the newest version
it knows, then reads ``meta_data.json`` (required), ``user_data``,
``vendor_data.json``, ``vendor_data2.json`` and ``network_data.json`` from it,
and every injected file at ``/openstack`` + its ``content_path``. The same
functions build the ``openstack/<ver>/`` tree of a config drive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from interceptor.formats import userdata
from interceptor.formats.document import DocumentError, InstanceDocument, decode_b64, merged_meta
from interceptor.formats.facts import as_text, key_entries
from interceptor.formats.network import network_data_json
from interceptor.formats.rendered import (
    NOT_FOUND,
    Rendered,
    json_body,
    listing,
    octets,
    text,
)

# Chronological, as Nova names them; the comment says what each added.
VERSIONS: tuple[str, ...] = (
    "2012-08-10",  # Folsom: meta_data.json, user_data
    "2013-04-04",  # Grizzly: password
    "2013-10-17",  # Havana: vendor_data.json
    "2015-10-15",  # Liberty: network_data.json
    "2016-06-30",  # Newton: devices in meta_data.json
    "2016-10-06",  # Newton: vendor_data2.json (dynamic vendordata)
    "2017-02-22",  # Ocata: vif in devices
    "2018-08-27",  # Rocky: vf_trusted in devices
)
LATEST = "latest"
_CONTENT = re.compile(r"^\d{4}$")


def content_path(index: int) -> str:
    return f"/content/{index:04d}"


def _file_contents(doc: InstanceDocument) -> dict[int, bytes]:
    """Injected files that have a path and decodable content, by position."""
    out: dict[int, bytes] = {}
    for index, entry in enumerate(doc["files"]):
        try:
            if isinstance(entry["path"], str) and entry["path"]:
                out[index] = decode_b64(entry["data_b64"])
        except (DocumentError, KeyError, TypeError):
            continue
    return out


def meta_data(doc: InstanceDocument) -> dict[str, Any]:
    """``meta_data.json``. ``meta`` is the VM-visible public and restricted
    metadata merged image < customer < server < runtime, values as strings
    (Nova's ``meta`` is string to string). No ``random_seed``: a pure
    renderer cannot give fresh randomness, and a fixed seed would be worse."""
    keys = key_entries(doc)
    return {
        "uuid": doc["instance_id"],
        "name": doc["hostname"],
        "hostname": doc["hostname"],
        "launch_index": doc["launch_index"],
        "availability_zone": doc["availability_zone"],
        "project_id": doc["customer_id"],
        "public_keys": dict(keys),
        "keys": [{"name": name, "type": "ssh", "data": key} for name, key in keys],
        "meta": {key: as_text(value) for key, value in merged_meta(doc).items()},
        # A file whose content cannot be served is not announced: cloud-init
        # fails the whole datasource on a content_path it cannot read.
        "files": [
            {"path": doc["files"][index]["path"], "content_path": content_path(index)}
            for index in sorted(_file_contents(doc))
        ],
        "devices": [],
    }


def _user_data(doc: InstanceDocument) -> Rendered:
    """404 when there is no user-data (cloud-init then has none)."""
    body = userdata.compose(doc)
    return NOT_FOUND if body is None else octets(body)


def _password(doc: InstanceDocument) -> Rendered:
    return text(doc["password"] or "")


def _always(doc: InstanceDocument) -> bool:
    return True


# (file, first version that has it, listed?, renderer). Only what is listed is served.
FILES: tuple[tuple[str, str, Callable[[InstanceDocument], bool],
                   Callable[[InstanceDocument], Rendered]], ...] = (
    ("meta_data.json", "2012-08-10", _always, lambda d: json_body(meta_data(d))),
    ("network_data.json", "2015-10-15", _always, lambda d: json_body(network_data_json(d))),
    ("password", "2013-04-04", _always, _password),
    ("user_data", "2012-08-10", lambda d: bool(d["user_data"]), _user_data),
    ("vendor_data.json", "2013-10-17", _always,
     lambda d: json_body(d["vendor_data"].get("static", {}))),
    ("vendor_data2.json", "2016-10-06", _always,
     lambda d: json_body(d["vendor_data"].get("dynamic", {}))),
)


def _resolve(version: str) -> str | None:
    if version == LATEST:
        return VERSIONS[-1]
    return version if version in VERSIONS else None


def _content(doc: InstanceDocument, name: str) -> Rendered:
    if not _CONTENT.match(name):
        return NOT_FOUND
    data = _file_contents(doc).get(int(name))
    return NOT_FOUND if data is None else octets(data)


def render(doc: InstanceDocument, segments: Sequence[str]) -> Rendered:
    """``segments`` follow ``openstack``: ``()``, ``("latest",)``,
    ``("2018-08-27", "meta_data.json")``, ``("content", "0000")``."""
    if not segments:
        return listing([*VERSIONS, LATEST])
    if segments[0] == "content":
        return _content(doc, segments[1]) if len(segments) == 2 else NOT_FOUND
    version = _resolve(segments[0])
    if version is None or len(segments) > 2:
        return NOT_FOUND
    available = [(name, fn) for name, since, listed, fn in FILES
                 if since <= version and listed(doc)]
    if len(segments) == 1:
        return listing([name for name, _ in available])
    for name, fn in available:
        if name == segments[1]:
            return fn(doc)
    return NOT_FOUND
