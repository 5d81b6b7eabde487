"""Build the instance document (``interceptor.formats.document``) of a server.

The document joins the server with its customer, image, runtime,
guest-written data and named keypairs, plus vendor data. Only VM classes (public, restricted,
system) of each object go in; *private* never does. Its ``revision`` is the
highest revision of every record it was built from, so its ETag changes when
anything in it changes (runtime and guest records are never deleted while
the server exists, only emptied, and creating or deleting a keypair bumps
the servers that name it, so that maximum never goes back).

Assembly rules (the contract is ``interceptor/formats/document.py``):

* ``ssh_keys``: the server's own keys, then its named keypairs (in
  ``key_names`` order; a name with no keypair is skipped), then the
  customer's system ``sshkeys``; a key already listed is not repeated.
* ``user_data``: the image's parts, then the server's; a server part named
  like an image part replaces it.
* Consumed keys (``consumed`` of the server record, written by guest
  deletes) are left out of every object's class; the image's
  ``final_keys`` travel as they are.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol

from interceptor.backend.model import VM_CLASSES, bindings_of
from interceptor.backend.store.base import Record, Store
from interceptor.formats.document import (
    SCHEMA_VERSION,
    InstanceDocument,
    SshKey,
    UserDataPart,
    VendorData,
    encode_b64,
)
from interceptor.formats.userdata import Part, multipart


class VendorSource(Protocol):
    """What the builder needs of ``interceptor.backend.vendordata.VendorDataService``."""

    async def get(self, req: Any) -> VendorData: ...

    def invalidate(self, instance_id: str) -> None: ...


@dataclass(frozen=True)
class Sources:
    """Every record one document is built from."""

    server: Record
    customer: Record | None
    image: Record | None
    runtime: Record | None
    guest: Record | None
    keypairs: list[Record] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return max(r.revision for r in (self.server, self.customer, self.image, self.runtime,
                                        self.guest, *self.keypairs) if r is not None)


def keypair_id(customer_id: str, name: str) -> str:
    """Store id of a customer's keypair (names are unique per customer)."""
    return f"{customer_id}/{name}"


async def load_sources(store: Store, server_id: str) -> Sources | None:
    server = await store.get("server", server_id)
    if server is None:
        return None
    spec = server.data["spec"]
    customer = await store.get("customer", spec["customer_id"])
    image = await store.get("image", spec["image_id"]) if spec["image_id"] else None
    runtime = await store.get("runtime", server_id)
    guest = await store.get("guest", server_id)
    ids = [keypair_id(spec["customer_id"], n) for n in spec.get("key_names", [])]
    found = await store.get_many("keypair", ids) if ids else {}
    keypairs = [found[i] for i in ids if i in found]
    return Sources(server, customer, image, runtime, guest, keypairs)


def server_record(server: Record) -> dict[str, Any]:
    """The server's own record, as presented in its ``system`` class."""
    spec = server.data["spec"]
    return {
        "id": server.id,
        "hostname": spec["hostname"],
        "customer_id": spec["customer_id"],
        "image_id": spec["image_id"],
        "instance_type": spec["instance_type"],
        "availability_zone": spec["availability_zone"],
        "launch_index": spec["launch_index"],
    }


def _vm_classes(record: Record | None, consumed: dict[str, list[str]]
                ) -> dict[str, dict[str, Any]]:
    meta = record.data.get("meta", {}) if record is not None else {}
    out = {cls: dict(meta.get(cls, {})) for cls in VM_CLASSES}
    for cls, keys in consumed.items():
        for key in keys:
            out.get(cls, {}).pop(key, None)
    return out


def ssh_keys(src: Sources) -> list[SshKey]:
    keys: list[SshKey] = [{"name": k["name"], "key": k["key"]}
                          for k in src.server.data["spec"]["ssh_keys"]]
    keys += [{"name": r.data["name"], "key": r.data["public_key"]} for r in src.keypairs]
    system = src.customer.data.get("meta", {}).get("system", {}) if src.customer else {}
    by_user = system.get("sshkeys", {})
    for user, lines in (by_user.items() if isinstance(by_user, dict) else ()):
        for index, line in enumerate(lines if isinstance(lines, list) else ()):
            name = f"{user or 'default'}-{index}" if len(lines) > 1 else (user or "default")
            keys.append({"name": name, "key": str(line).strip(), "user": user})
    seen: set[str] = set()
    out: list[SshKey] = []
    for key in keys:
        if key["key"] and key["key"] not in seen:
            seen.add(key["key"])
            out.append(key)
    return out


def user_data_parts(src: Sources) -> list[UserDataPart]:
    server = src.server.data["spec"]["user_data"]
    own = {p["name"] for p in server}
    image = src.image.data.get("user_data", []) if src.image is not None else []
    parts: list[UserDataPart] = [
        {"name": p["name"], "content_type": p["content_type"], "data_b64": p["data"],
         "origin": "image"} for p in image if p["name"] not in own]
    parts += [{"name": p["name"], "content_type": p["content_type"], "data_b64": p["data"],
               "origin": "server"} for p in server]
    return parts


def owner_user_data(spec: dict[str, Any]) -> str | None:
    """The user-data the owner gave, base64 as Nova stores it: one part as is,
    several as the multipart document the guest reads."""
    parts = spec["user_data"]
    if not parts:
        return None
    if len(parts) == 1:
        return str(parts[0]["data"])
    body = multipart([Part(p["name"], p["content_type"], base64.b64decode(p["data"]))
                      for p in parts])
    return encode_b64(body)


def vendor_request(src: Sources) -> dict[str, Any]:
    """The JSON Nova's DynamicJSON posts to each target (keys exactly as Nova's)."""
    spec = src.server.data["spec"]
    meta = src.server.data.get("meta", {})
    user_data = owner_user_data(spec)
    return {
        "project-id": spec["customer_id"],
        "instance-id": src.server.id,
        "image-id": spec["image_id"],
        "user-data": user_data,
        "hostname": spec["hostname"],
        "metadata": {**meta.get("public", {}), **meta.get("restricted", {})},
    }


def assemble(src: Sources, vendor: VendorData, node: str) -> InstanceDocument:
    """A pure function from the records to the document."""
    spec = src.server.data["spec"]
    consumed: dict[str, list[str]] = src.server.data.get("consumed", {})
    meta = {
        "customer": _vm_classes(src.customer, consumed),
        "image": _vm_classes(src.image, consumed),
        "server": _vm_classes(src.server, consumed),
        "runtime": _vm_classes(src.runtime if src.runtime is not None
                               and src.runtime.data.get("running") else None, consumed),
    }
    meta["server"]["system"].update(server_record(src.server))
    if src.runtime is not None and src.runtime.data.get("running"):
        meta["runtime"]["system"].setdefault("started_at", src.runtime.data.get("started_at"))
    guest = src.guest.data if src.guest is not None else {}
    doc: InstanceDocument = {
        "schema": SCHEMA_VERSION,
        "instance_id": src.server.id,
        "revision": src.revision,
        "hostname": spec["hostname"],
        "node": node,
        "customer_id": spec["customer_id"],
        "image_id": spec["image_id"],
        "instance_type": spec["instance_type"],
        "availability_zone": spec["availability_zone"],
        "launch_index": spec["launch_index"],
        "metadata_enabled": spec["metadata_enabled"],
        "require_token": spec["require_token"],
        "tags_visible": spec["tags_visible"],
        "guest_writes": spec["guest_writes"],
        "ssh_keys": ssh_keys(src),
        "user_data": user_data_parts(src),
        "files": [{"path": f["path"], "data_b64": f["data"]} for f in spec["files"]],
        "network": spec["network"],
        "tags": dict(spec["tags"]),
        "meta": meta,
        "vendor_data": {"static": dict(vendor.get("static", {})),
                        "dynamic": dict(vendor.get("dynamic", {}))},
        "password": guest.get("password"),
        "guest_data": dict(guest.get("data", {})),
    }
    final = src.image.data.get("final_keys", []) if src.image is not None else []
    if final:
        doc["final_keys"] = list(final)
    return doc


def default_node(src: Sources) -> str:
    bindings = bindings_of(src.server.data)
    return str(bindings[0]["node"]) if bindings else ""


async def build(store: Store, vendor: VendorSource | None, server_id: str,
                node: str | None = None) -> InstanceDocument | None:
    """The document of ``server_id`` (None when it does not exist)."""
    src = await load_sources(store, server_id)
    if src is None:
        return None
    data: VendorData = {"static": {}, "dynamic": {}}
    if vendor is not None:
        data = await vendor.get(vendor_request(src))
    return assemble(src, data, default_node(src) if node is None else node)

