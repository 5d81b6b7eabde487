"""The metadata model: validation of what owners write, and the access matrix.

Objects are customers, images, servers and runtime; each carries metadata in
four classes. Who may do what (issue 3)::

                         public  restricted  private  system
    presented to the VM   yes      yes         no      yes
    owner reads           yes      yes         yes     yes
    owner writes          yes      yes         yes     no   (platform/admin only)
    non-owner reads       yes      no          no      no
    non-owner writes      no       no          no      no

The platform (admin token) is the owner of platform images and may do
everything. Validation returns normalised copies and raises BadRequest (400)
or TooLarge (413) with the reason.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from interceptor.backend.errors import BadRequest, TooLarge
from interceptor.backend.limits import MAX_KEY_CHARS, Limits

CLASSES: tuple[str, ...] = ("public", "restricted", "private", "system")
VM_CLASSES: tuple[str, ...] = ("public", "restricted", "system")
VISIBILITIES = ("public", "private")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to: the platform, a customer or a node."""

    kind: str  # "admin" | "customer" | "node"
    subject: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def owns(self, owner: str | None) -> bool:
        """Owner rights over an object owned by ``owner`` (None = the platform)."""
        if self.is_admin:
            return True
        return self.kind == "customer" and owner is not None and owner == self.subject


def can_read(who: Principal, owner: str | None, cls: str) -> bool:
    if who.owns(owner):
        return True
    return who.kind == "customer" and cls == "public"


def can_write(who: Principal, owner: str | None, cls: str) -> bool:
    if who.is_admin:
        return True
    return who.owns(owner) and cls != "system"


def empty_classes() -> dict[str, dict[str, Any]]:
    return {cls: {} for cls in CLASSES}


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise BadRequest(f"{what} must be 1-128 characters [A-Za-z0-9._:-]")
    return value


def check_class(cls: str) -> str:
    if cls not in CLASSES:
        raise BadRequest(f"unknown metadata class {cls!r} (one of {', '.join(CLASSES)})")
    return cls


def check_metadata(values: Any, limits: Limits, what: str = "metadata") -> dict[str, Any]:
    if not isinstance(values, dict):
        raise BadRequest(f"{what} must be a JSON object")
    for key, value in values.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise BadRequest(f"{what} key must be 1-{MAX_KEY_CHARS} characters")
        if json_size(value) > limits.value_bytes:
            raise TooLarge(f"{what} value of {key!r} exceeds {limits.value_bytes} bytes")
    return dict(values)


def check_system(kind: str, values: dict[str, Any]) -> None:
    """The platform facts system metadata carries have fixed shapes."""
    if kind == "customer" and "sshkeys" in values:
        keys = values["sshkeys"]
        if not isinstance(keys, dict) or not all(
                isinstance(u, str) and isinstance(v, list) and all(isinstance(k, str) for k in v)
                for u, v in keys.items()):
            raise BadRequest('customer system "sshkeys" must be {"user": ["key", ...]}')
    if kind == "image" and "default_username" in values and not isinstance(
            values["default_username"], str):
        raise BadRequest('image system "default_username" must be a string')


def check_object_meta(meta: dict[str, dict[str, Any]], limits: Limits) -> None:
    if json_size(meta) > limits.object_metadata_bytes:
        raise TooLarge(f"metadata of this object exceeds {limits.object_metadata_bytes} bytes")


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch (null deletes), on a copy."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def _str(body: dict[str, Any], key: str, default: str | None = None, *,
         max_len: int = 255) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"{key} must be a string of at most {max_len} characters")
    return value


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise BadRequest(f"{key} must be a list")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


SERVER_FIELDS = ("customer_id", "image_id", "hostname", "ssh_keys", "user_data", "files",
                 "network", "metadata_enabled", "require_token", "tags",
                 "tags_visible", "guest_writes", "instance_type", "availability_zone",
                 "launch_index", "key_names")

PLATFORM_FIELDS = ("network", "instance_type", "availability_zone", "launch_index")
"""Server fields only the platform decides (placement, hardware, addressing):
a customer may send them only with the value they already have."""

BINDINGS_FIELD = "bindings"
"""Never part of the server body: bindings have their own platform-only
endpoints (routes_bindings.py)."""


def check_server(body: Any, limits: Limits) -> dict[str, Any]:
    """Validate a server specification; return it normalised with defaults filled."""
    body = _obj(body, "server")
    unknown = set(body) - set(SERVER_FIELDS) - {"id", "revision", "running",
                                                   "disabled_by_guest", "consumed_keys"}
    if unknown:
        raise BadRequest(f"unknown server field {sorted(unknown)[0]!r}")
    spec: dict[str, Any] = {}
    spec["customer_id"] = check_id(body.get("customer_id"), "customer_id")
    image = body.get("image_id")
    spec["image_id"] = None if image is None else check_id(image, "image_id")
    hostname = body.get("hostname")
    if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
        raise BadRequest("hostname must be a valid DNS name")
    spec["hostname"] = hostname
    keys = []
    for item in _list(body, "ssh_keys"):
        item = _obj(item, "ssh_keys item")
        name, key = _str(item, "name"), _str(item, "key", max_len=16384)
        if not name or not key.strip() or "\n" in key:
            raise BadRequest("ssh_keys items need a name and a one-line key")
        keys.append({"name": name, "key": key.strip()})
    spec["ssh_keys"] = keys
    spec["user_data"] = check_user_data(_list(body, "user_data"), limits)
    spec["key_names"] = check_key_names(_list(body, "key_names"))
    files, total = [], 0
    for item in _list(body, "files"):
        item = _obj(item, "files item")
        path = _str(item, "path", max_len=1024)
        if not path.startswith("/"):
            raise BadRequest("files path must be absolute")
        total += len(_b64(item.get("data"), f"file {path!r} data"))
        files.append({"path": path, "data": item["data"]})
    if total > limits.files_bytes:
        raise TooLarge(f"files exceed {limits.files_bytes} bytes")
    spec["files"] = files
    spec["network"] = check_network(body.get("network", {"interfaces": []}))
    spec["metadata_enabled"] = _bool(body, "metadata_enabled", True)
    spec["require_token"] = _bool(body, "require_token", False)
    spec["tags_visible"] = _bool(body, "tags_visible", False)
    spec["guest_writes"] = _bool(body, "guest_writes", False)
    tags = _obj(body.get("tags", {}), "tags")
    for key, value in tags.items():
        if not key or len(key) > MAX_KEY_CHARS or not isinstance(value, str) \
                or len(value) > MAX_KEY_CHARS:
            raise BadRequest("tags must map names to strings (each ≤ 255 characters)")
    spec["tags"] = dict(tags)
    spec["instance_type"] = _str(body, "instance_type", "m1.small")
    spec["availability_zone"] = _str(body, "availability_zone", "nova")
    index = body.get("launch_index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise BadRequest("launch_index must be a non-negative integer")
    spec["launch_index"] = index
    return spec


def check_network(value: Any) -> dict[str, Any]:
    net = _obj(value, "network")
    out = []
    for item in _list(net, "interfaces"):
        item = _obj(item, "network interface")
        iface: dict[str, Any] = {"name": _str(item, "name")}
        mac = item.get("mac")
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise BadRequest("network interface mac must look like 52:54:00:12:34:56")
        iface["mac"] = mac.lower()
        if "mtu" in item:
            mtu = item["mtu"]
            if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
                raise BadRequest("network interface mtu must be 68-65535")
            iface["mtu"] = mtu
        iface["dhcp4"] = _bool(item, "dhcp4", False)
        addresses = []
        for addr in _list(item, "addresses"):
            addr = _obj(addr, "address")
            try:
                ip = ipaddress.ip_address(addr.get("address"))  # type: ignore[arg-type]
            except ValueError:
                raise BadRequest("address must be an IP address") from None
            prefix = addr.get("prefix")
            if not isinstance(prefix, int) or isinstance(prefix, bool) \
                    or not 0 <= prefix <= ip.max_prefixlen:
                raise BadRequest("address prefix out of range")
            addresses.append({"address": str(ip), "prefix": prefix})
        iface["addresses"] = addresses
        gateway = item.get("gateway4")
        if gateway is not None:
            try:
                iface["gateway4"] = str(ipaddress.IPv4Address(gateway))
            except ValueError:
                raise BadRequest("gateway4 must be an IPv4 address") from None
        for key in ("nameservers", "search"):
            if key in item:
                values = _list(item, key)
                if not all(isinstance(v, str) for v in values):
                    raise BadRequest(f"{key} must be a list of strings")
                iface[key] = list(values)
        out.append(iface)
    return {"interfaces": out}


def check_name(body: dict[str, Any], default: str = "") -> str:
    return _str(body, "name", default)


def check_visibility(body: dict[str, Any], default: str = "private") -> str:
    value = body.get("visibility", default)
    if value not in VISIBILITIES:
        raise BadRequest("visibility must be public or private")
    return str(value)


_SERIAL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SERIAL_PREFIX = "serial/"
"""Store key of a serial-socket binding: ``serial/<name>`` never collides with
an interface name (a ``/`` is not allowed in one)."""


def check_binding(item: Any) -> dict[str, Any]:
    """One binding as the platform writes it, normalised.

    A tap: ``{"node", "ifname", "mac"?}`` (``mac`` is the tap's own MAC as the
    kernel shows it; with it the node serves the tap only while the MAC
    matches). A serial socket: ``{"node", "serial"}``. Unknown fields are
    refused so a typo cannot silently drop the MAC check.
    """
    item = _obj(item, "binding")
    unknown = set(item) - {"node", "ifname", "mac", "serial"}
    if unknown:
        raise BadRequest(f"unknown binding field {sorted(unknown)[0]!r}")
    node = item.get("node")
    if not isinstance(node, str) or not _ID.match(node):
        raise BadRequest("binding node must be 1-128 characters [A-Za-z0-9._:-]")
    if ("ifname" in item) == ("serial" in item):
        raise BadRequest("a binding names either an ifname (tap) or a serial socket")
    if "serial" in item:
        name = item["serial"]
        if not isinstance(name, str) or not _SERIAL.match(name):
            raise BadRequest("binding serial must be 1-64 characters [A-Za-z0-9_.-]")
        if "mac" in item:
            raise BadRequest("a serial binding has no mac")
        return {"node": node, "serial": name}
    ifname = item["ifname"]
    if not isinstance(ifname, str) or not _IFNAME.match(ifname):
        raise BadRequest("binding ifname must be an interface name (1-15 characters)")
    mac = item.get("mac")
    if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac)):
        raise BadRequest("binding mac must look like fe:54:00:12:34:56")
    return {"node": node, "ifname": ifname, "mac": None if mac is None else mac.lower()}


def binding_key(binding: dict[str, Any]) -> tuple[str, str]:
    """(node, store key) of a binding: the pair that is unique across servers."""
    if "serial" in binding:
        return binding["node"], SERIAL_PREFIX + binding["serial"]
    return binding["node"], binding["ifname"]


def check_bindings(body: Any) -> list[dict[str, Any]]:
    body = _obj(body, "bindings body")
    unknown = set(body) - {"bindings"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} (expected bindings)")
    out, seen = [], set()
    for item in _list(body, "bindings"):
        binding = check_binding(item)
        key = binding_key(binding)
        if key in seen:
            raise BadRequest(f"binding {key[0]}/{key[1]} given twice")
        seen.add(key)
        out.append(binding)
    return out


def spec_of(server: dict[str, Any]) -> dict[str, Any]:
    """The owner-visible specification of a server record's data (records
    written before bindings moved out of it still carry them there: never
    shown, never written back)."""
    return {k: v for k, v in server["spec"].items() if k != BINDINGS_FIELD}


def bindings_of(server: dict[str, Any]) -> list[dict[str, Any]]:
    """The platform's bindings of a server record's data (routes_bindings.py)."""
    if BINDINGS_FIELD in server:
        return list(server[BINDINGS_FIELD])
    legacy = server["spec"].get(BINDINGS_FIELD, [])
    return [{"node": b["node"], "ifname": b["ifname"], "mac": None, "generation": 0}
            for b in legacy]


def check_user_data(items: list[Any], limits: Limits) -> list[dict[str, Any]]:
    """User-data parts (of a server or an image): unique names, base64 data."""
    parts, total, names = [], 0, set()
    for item in items:
        item = _obj(item, "user_data part")
        name = _str(item, "name", "user")
        if not name or name in names:
            raise BadRequest(f"user_data part names must be unique and non-empty ({name!r})")
        names.add(name)
        ctype = _str(item, "content_type", "text/plain")
        data = _b64(item.get("data"), f"user_data part {name!r} data")
        total += len(data)
        parts.append({"name": name, "content_type": ctype, "data": item["data"]})
    if total > limits.user_data_bytes:
        raise TooLarge(f"user_data exceeds {limits.user_data_bytes} bytes")
    return parts


_KEYPAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,254}$")
_KEY_TYPES = ("ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")


def check_keypair_name(value: Any) -> str:
    if not isinstance(value, str) or not _KEYPAIR_NAME.match(value) or value != value.strip():
        raise BadRequest("keypair name must be 1-255 characters [A-Za-z0-9 ._@-]")
    return value


def check_key_names(items: list[Any]) -> list[str]:
    names = [check_keypair_name(item) for item in items]
    if len(set(names)) != len(names):
        raise BadRequest("key_names must not repeat a name")
    return names


def check_public_key(value: Any) -> tuple[str, bytes]:
    """An OpenSSH public key line ``type base64 [comment]``: (the line, the key blob)."""
    if not isinstance(value, str) or "\n" in value.strip() or len(value) > 16384:
        raise BadRequest("public_key must be one OpenSSH public key line")
    fields = value.strip().split(None, 2)
    if len(fields) < 2 or fields[0] not in _KEY_TYPES:
        raise BadRequest(f"public_key must start with a key type ({', '.join(_KEY_TYPES[:3])}…)")
    blob = _b64(fields[1], "public_key")
    # The blob starts with the key type as an SSH string: a mismatch is not a key.
    kind = fields[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4:4 + len(kind)] != kind:
        raise BadRequest("public_key blob does not match its key type")
    return value.strip(), blob
