"""Facts derived from an instance document that several formats share.

Every function here is pure and tolerant: a value the backend should have
rejected (a malformed address, an odd key name) is skipped or replaced, never
raised, so one bad field cannot take the whole metadata service down for a VM.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from interceptor.formats.document import InstanceDocument, Interface, JSONValue

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AWS_ZONE = re.compile(r"^(.*\d)[a-z]$")


def clean_line(value: str) -> str:
    """A value safe for one line of a listing: control characters become ``_``."""
    return _CONTROL.sub("_", value)


def key_entries(doc: InstanceDocument) -> list[tuple[str, str]]:
    """(name, public key) pairs with unique, single-line, non-empty names.

    Names are unique because OpenStack keys them in a dict and EC2 lists them
    as ``N=name``; a later duplicate gets a ``-N`` suffix instead of
    silently replacing an earlier key.
    """
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for index, entry in enumerate(doc["ssh_keys"]):
        name = clean_line(str(entry.get("name") or "")).strip() or f"key-{index}"
        if name in seen:
            name = f"{name}-{index}"
        seen.add(name)
        out.append((name, str(entry.get("key", "")).strip()))
    return out


def region_of(zone: str) -> str:
    """EC2 region of an availability zone: ``us-east-1a`` → ``us-east-1``.

    The document has no region; a zone not in AWS style is its own region.
    """
    match = _AWS_ZONE.match(zone)
    return match.group(1) if match else zone


def region_of_document(doc: InstanceDocument) -> str:
    """The document's own ``region`` when its source set one, else ``region_of`` its zone."""
    region = doc.get("region")
    return region if isinstance(region, str) and region else region_of(doc["availability_zone"])


@dataclass(frozen=True)
class IfaceAddr:
    """One valid address of an interface, parsed."""

    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface

    @property
    def version(self) -> int:
        return self.iface.version

    @property
    def ip(self) -> str:
        return str(self.iface.ip)

    @property
    def netmask(self) -> str:
        return str(self.iface.netmask)

    @property
    def cidr(self) -> str:
        return self.iface.with_prefixlen

    @property
    def network(self) -> str:
        return str(self.iface.network)


def addresses_of(interface: Interface) -> list[IfaceAddr]:
    """The interface's valid addresses; malformed ones are skipped."""
    out: list[IfaceAddr] = []
    for addr in interface.get("addresses", []):
        try:
            out.append(IfaceAddr(ipaddress.ip_interface(f"{addr['address']}/{addr['prefix']}")))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def interfaces_of(doc: InstanceDocument) -> list[Interface]:
    """Interfaces with a usable MAC, first occurrence of each MAC only."""
    seen: set[str] = set()
    out: list[Interface] = []
    for interface in doc["network"].get("interfaces", []):
        mac = str(interface.get("mac", "")).lower()
        if not mac or mac in seen:
            continue
        seen.add(mac)
        out.append(interface)
    return out


@dataclass(frozen=True)
class Nic:
    """One interface with its addresses parsed once (parsing dominates render time)."""

    name: str
    mac: str
    source: Interface
    addresses: tuple[IfaceAddr, ...]
    gateway4: str | None

    @property
    def v4(self) -> list[IfaceAddr]:
        return [a for a in self.addresses if a.version == 4]

    @property
    def v6(self) -> list[IfaceAddr]:
        return [a for a in self.addresses if a.version == 6]


def nics_of(doc: InstanceDocument) -> list[Nic]:
    """The usable interfaces (see ``interfaces_of``), parsed, with unique names
    (a repeated or empty name gets a positional one)."""
    out: list[Nic] = []
    names: set[str] = set()
    for index, interface in enumerate(interfaces_of(doc)):
        name = str(interface.get("name") or "") or f"iface{index}"
        if name in names:
            name = f"{name}-{index}"
        names.add(name)
        out.append(Nic(name, str(interface["mac"]).lower(), interface,
                       tuple(addresses_of(interface)), valid_gateway4(interface)))
    return out


def primary_ipv4(nics: list[Nic]) -> str | None:
    """The first static IPv4 address of the first interface that has one."""
    for nic in nics:
        if nic.v4:
            return nic.v4[0].ip
    return None


def valid_gateway4(interface: Interface) -> str | None:
    gateway = interface.get("gateway4")
    if not gateway:
        return None
    try:
        return str(ipaddress.IPv4Address(gateway))
    except ValueError:
        return None


def as_text(value: JSONValue) -> str:
    """A metadata value as a string: strings as they are, others as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
