"""CloudSigma's server context, as cloud-init's CloudSigma datasource reads it.

The guest asks over its serial port (``interceptor/channels/cloudsigma.py``
speaks the framing) and gets JSON. The datasource takes the instance id from
``uuid``, the hostname from ``name``, the SSH key from
``meta.ssh_public_key``, user-data from ``meta.cloudinit-user-data`` (base64
when ``base64_fields`` names it) and vendor data from
``vendor_data.cloudinit``. ``meta`` also carries the VM's public and
restricted metadata as strings (as CloudSigma's own meta is string to
string); the keys the datasource reads are set last, so metadata cannot
replace them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from interceptor.formats import nocloud, userdata
from interceptor.formats.document import InstanceDocument, merged_meta
from interceptor.formats.facts import as_text, key_entries

USER_DATA_KEY = "cloudinit-user-data"


def server_context(doc: InstanceDocument) -> dict[str, Any]:
    meta = {key: as_text(value) for key, value in merged_meta(doc).items()}
    meta["ssh_public_key"] = "\n".join(key for _, key in key_entries(doc))
    meta[USER_DATA_KEY] = base64.b64encode(userdata.compose(doc) or b"").decode("ascii")
    meta["base64_fields"] = USER_DATA_KEY
    context: dict[str, Any] = {
        "name": doc["hostname"],
        "uuid": doc["instance_id"],
        "meta": meta,
        "vendor_data": {},
    }
    vendor = nocloud.vendor_data(doc)
    if vendor:
        context["vendor_data"]["cloudinit"] = vendor.decode("utf-8", "replace")
    return context


def lookup(context: dict[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (``("meta", "ssh_public_key")``), or None when absent."""
    value: Any = context
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
