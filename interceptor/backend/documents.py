"""Build the instance document (``interceptor.formats.document``) of a server.

The document joins the server with its customer, image, runtime and
guest-written data, plus vendor data. Only VM classes (public, restricted,
system) of each object go in; *private* never does. Its ``revision`` is the
highest revision of every record it was built from, so its ETag changes when
anything in it changes (runtime and guest records are never deleted while
the server exists, only emptied, so that maximum never goes back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from interceptor.backend.model import VM_CLASSES, bindings_of
from interceptor.backend.store.base import Record, Store
from interceptor.formats.document import (
    SCHEMA_VERSION,
    InstanceDocument,
    VendorData,
)


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

    @property
    def revision(self) -> int:
        return max(r.revision for r in (self.server, self.customer, self.image, self.runtime,
                                        self.guest) if r is not None)


async def load_sources(store: Store, server_id: str) -> Sources | None:
    server = await store.get("server", server_id)
    if server is None:
        return None
    spec = server.data["spec"]
    customer = await store.get("customer", spec["customer_id"])
    image = await store.get("image", spec["image_id"]) if spec["image_id"] else None
    runtime = await store.get("runtime", server_id)
    guest = await store.get("guest", server_id)
    return Sources(server, customer, image, runtime, guest)


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


def _vm_classes(record: Record | None) -> dict[str, dict[str, Any]]:
    meta = record.data.get("meta", {}) if record is not None else {}
    return {cls: dict(meta.get(cls, {})) for cls in VM_CLASSES}


def vendor_request(src: Sources) -> dict[str, Any]:
    """The JSON Nova's DynamicJSON posts to each target (keys exactly as Nova's)."""
    spec = src.server.data["spec"]
    meta = src.server.data.get("meta", {})
    user_data = spec["user_data"][0]["data"] if len(spec["user_data"]) == 1 else None
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
    meta = {
        "customer": _vm_classes(src.customer),
        "image": _vm_classes(src.image),
        "server": _vm_classes(src.server),
        "runtime": _vm_classes(src.runtime if src.runtime is not None
                               and src.runtime.data.get("running") else None),
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
        "ssh_keys": [{"name": k["name"], "key": k["key"]} for k in spec["ssh_keys"]],
        "user_data": [{"name": p["name"], "content_type": p["content_type"],
                       "data_b64": p["data"]} for p in spec["user_data"]],
        "files": [{"path": f["path"], "data_b64": f["data"]} for f in spec["files"]],
        "network": spec["network"],
        "tags": dict(spec["tags"]),
        "meta": meta,
        "vendor_data": {"static": dict(vendor.get("static", {})),
                        "dynamic": dict(vendor.get("dynamic", {}))},
        "password": guest.get("password"),
        "guest_data": dict(guest.get("data", {})),
    }
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

