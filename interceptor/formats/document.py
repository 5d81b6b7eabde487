"""The instance document: everything a guest may learn about itself.

This is the one contract between the backend (which builds it, see
``interceptor.backend.documents``) and the node daemon and config-drive
builder (which render guest surfaces from it with the pure functions in this
package). It travels as JSON; binary values (user-data parts, injected
files) are base64 so the document stays valid JSON.

Only VM-visible data is ever in it: *private* metadata never is. Classes in
``meta`` are therefore ``public``, ``restricted`` and ``system`` only.

Shape (keys marked * are always present; keys marked + were added to schema 1
later and are optional, so a node reads documents of an older backend and an
older node ignores them)::

    {
      "schema": 1,                                   *
      "instance_id": "i-0123",                       *
      "revision": 42,                                * backend revision of this document
      "hostname": "vm1",                             *
      "node": "node-a",                              * node the instance is bound to
      "customer_id": "c-1",                          * owner (OpenStack project_id)
      "image_id": "img-1" | null,                    *
      "instance_type": "m1.small",                   *
      "availability_zone": "zone-a",                 *
      "launch_index": 0,                             *
      "metadata_enabled": true,                      * per-VM toggle (datapath enforces it)
      "require_token": false,                        * EC2 IMDSv2 "required" mode
      "tags_visible": false,                         * expose tags under meta-data/tags/instance
      "guest_writes": false,                         * guest may write its guest-data namespace
      "ssh_keys": [{"name": "alice", "key": "ssh-ed25519 AAAA... alice"}],   *
                                                     every key the VM gets, in order: the
                                                     server's own keys, its named keypairs,
                                                     then the customer's system "sshkeys"
                                                     (those carry + "user": the account,
                                                     "" = the image's default user)
      "user_data": [                                 * empty list = no user-data (404)
        {"name": "user", "content_type": "text/cloud-config", "data_b64": "...",
         "origin": "server"}                         + "image" | "server"
      ],                                             merged order: the image's parts, then
                                                     the server's; a server part named like
                                                     an image part replaces that part
      "files": [{"path": "/etc/motd", "data_b64": "..."}],                   *
      "network": {                                   *
        "interfaces": [{
          "name": "eth0", "mac": "52:54:00:12:34:56", "mtu": 1500,
          "dhcp4": false,
          "addresses": [{"address": "10.0.0.5", "prefix": 24}],
          "gateway4": "10.0.0.1",
          "nameservers": ["10.0.0.1"], "search": ["example.internal"]
        }]
      },
      "tags": {"role": "web"},                       *
      "meta": {                                      * classes x objects visible to the VM
        "customer": {"public": {...}, "restricted": {...}, "system": {...}},
        "image":    {"public": {...}, "restricted": {...}, "system": {...}},
        "server":   {"public": {...}, "restricted": {...}, "system": {...}},
        "runtime":  {"public": {...}, "restricted": {...}, "system": {...}}
      },                                             keys the guest consumed are already
                                                     left out of every object (see below)
      "final_keys": ["mirror"],                      + image restricted keys no other object
                                                     overrides in the merged view
      "vendor_data": {"static": {...}, "dynamic": {"target-name": {...}}},   *
      "password": "..." | null,                      * set once by the guest (OpenStack)
      "guest_data": {"key": "value"},                * the guest-writable namespace
      "region": "us-east1"                           optional: only a source that knows it
    }                                                (the serial file driver); else the
                                                     region is derived from the zone

Consumed keys: a guest ``DELETE /interceptor/v1/meta/{cls}/{key}`` removes the
key from the server's class and *shadows* it for this instance: the backend
leaves that key of that class out of every object (customer, image, server,
runtime) when it builds the document, so no surface shows it. The shadow
lasts until the key is written to the server's class again (by the owner or
by a guest ``PUT``).

Metadata values are JSON values (usually strings). System metadata holds the
platform's facts: customer ``sshkeys`` (``{"user": ["key", ...]}``, ``""`` =
the image's default user), image ``default_username``, and the server's own
record under the server's ``system`` class.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal, NotRequired, TypedDict, cast

SCHEMA_VERSION = 1

OBJECTS: tuple[str, ...] = ("image", "customer", "server", "runtime")
"""Metadata objects in the order a guest should merge them (later wins)."""

VM_CLASSES: tuple[str, ...] = ("public", "restricted", "system")
"""Metadata classes presented to the VM; ``private`` never is."""

JSONValue = Any
Metadata = dict[str, JSONValue]
ClassedMetadata = dict[str, Metadata]  # class name -> key -> value


class SshKey(TypedDict):
    name: str
    key: str
    user: NotRequired[str]


class UserDataPart(TypedDict):
    name: str
    content_type: str
    data_b64: str
    origin: NotRequired[Literal["image", "server"]]


class InjectedFile(TypedDict):
    path: str
    data_b64: str


class Address(TypedDict):
    address: str
    prefix: int


class Interface(TypedDict):
    name: str
    mac: str
    mtu: NotRequired[int]
    dhcp4: bool
    addresses: list[Address]
    gateway4: NotRequired[str | None]
    nameservers: NotRequired[list[str]]
    search: NotRequired[list[str]]


class Network(TypedDict):
    interfaces: list[Interface]


class VendorData(TypedDict):
    static: dict[str, JSONValue]
    dynamic: dict[str, JSONValue]


class InstanceDocument(TypedDict):
    schema: int
    instance_id: str
    revision: int
    hostname: str
    node: str
    customer_id: str
    image_id: str | None
    instance_type: str
    availability_zone: str
    launch_index: int
    metadata_enabled: bool
    require_token: bool
    tags_visible: bool
    guest_writes: bool
    ssh_keys: list[SshKey]
    user_data: list[UserDataPart]
    files: list[InjectedFile]
    network: Network
    tags: dict[str, str]
    meta: dict[str, ClassedMetadata]
    vendor_data: VendorData
    password: str | None
    guest_data: dict[str, str]
    region: NotRequired[str]
    final_keys: NotRequired[list[str]]


class DocumentError(ValueError):
    """The document does not have the documented shape."""


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "instance_id": str,
    "revision": int,
    "hostname": str,
    "node": str,
    "customer_id": str,
    "image_id": (str, type(None)),
    "instance_type": str,
    "availability_zone": str,
    "launch_index": int,
    "metadata_enabled": bool,
    "require_token": bool,
    "tags_visible": bool,
    "guest_writes": bool,
    "ssh_keys": list,
    "user_data": list,
    "files": list,
    "network": dict,
    "tags": dict,
    "meta": dict,
    "vendor_data": dict,
    "password": (str, type(None)),
    "guest_data": dict,
}


def validate_document(obj: object) -> InstanceDocument:
    """Check the top-level shape of a decoded document and return it typed.

    Raises DocumentError naming the first problem. Deep validation is the
    backend's job when it builds the document; this guards the node against
    a backend of another version.
    """
    if not isinstance(obj, dict):
        raise DocumentError("document is not a JSON object")
    for key, typ in _REQUIRED.items():
        if key not in obj:
            raise DocumentError(f"document lacks {key!r}")
        if not isinstance(obj[key], typ):
            raise DocumentError(f"document field {key!r} has the wrong type")
    if not isinstance(obj.get("final_keys", []), list):
        raise DocumentError("document field 'final_keys' has the wrong type")
    if obj["schema"] != SCHEMA_VERSION:
        raise DocumentError(f"document schema {obj['schema']} is not {SCHEMA_VERSION}")
    return cast(InstanceDocument, obj)


def decode_b64(data_b64: str) -> bytes:
    """Decode a base64 field of the document (user-data part, file)."""
    try:
        return base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError("invalid base64 in document") from exc


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def empty_meta() -> dict[str, ClassedMetadata]:
    return {obj: {cls: {} for cls in VM_CLASSES} for obj in OBJECTS}


def merged_meta(doc: InstanceDocument, classes: tuple[str, ...] = ("public", "restricted")
                ) -> Metadata:
    """Flatten VM-visible metadata, image < customer < server < runtime, except
    that the image's ``final_keys`` (restricted) keep the image's value."""
    out: Metadata = {}
    for obj in OBJECTS:
        per_class = doc["meta"].get(obj, {})
        for cls in classes:
            out.update(per_class.get(cls, {}))
    if "restricted" in classes:
        image_restricted = doc["meta"].get("image", {}).get("restricted", {})
        for key in doc.get("final_keys", []):
            if isinstance(key, str) and key in image_restricted:
                out[key] = image_restricted[key]
    return out


MetaObject = Literal["customer", "image", "server", "runtime"]
