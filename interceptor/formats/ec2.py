"""EC2-style metadata: ``/``, ``/{version}/meta-data/…``, ``user-data``, ``dynamic/…``.

What cloud-init needs from it: a version list at ``/``; ``/{ver}/meta-data/``
crawled as listings (directories end with ``/``, ``public-keys/`` lists
``0=name``); a leaf with several lines becomes a list, a leaf shaped like
``{…}`` is parsed as JSON; ``user-data`` is 404 when unset; the identity
document is JSON. Entries appear from the API version that introduced them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from interceptor.formats import userdata
from interceptor.formats.document import InstanceDocument
from interceptor.formats.facts import (
    Nic,
    clean_line,
    key_entries,
    nics_of,
    primary_ipv4,
    region_of_document,
)
from interceptor.formats.rendered import JSON, NOT_FOUND, OCTETS, Rendered, json_bytes, listing
from interceptor.formats.tree import Dir, Lazy, Leaf, Node, lookup

# Chronological; cloud-init probes 2021-03-23 (tags), 2018-09-24, 2016-09-02
# (IPv6), then falls back to 2009-04-04.
VERSIONS: tuple[str, ...] = ("2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23")
LATEST = "latest"
IDENTITY_VERSION = "2017-09-30"
"""The ``version`` field AWS puts in instance identity documents."""

# Tag keys EC2 can show: no "/" (it would be a path), no line breaks, not a
# listing entry cloud-init would read as "N=name" of a public key.
_BAD_TAG_KEY = re.compile(r"[/\x00-\x1f\x7f]|^\d+=|^\.{1,2}$")


@dataclass
class _View:
    """One render's inputs; the parsed interfaces are computed at most once."""

    doc: InstanceDocument
    _nics: list[Nic] | None = field(default=None)

    @property
    def nics(self) -> list[Nic]:
        if self._nics is None:
            self._nics = nics_of(self.doc)
        return self._nics


Builder = Callable[[_View], Node | None]


def _resolve(version: str) -> str | None:
    """The effective API date of a requested version, or None if unknown."""
    if version == LATEST:
        return VERSIONS[-1]
    return version if version in VERSIONS else None


def _public_keys(view: _View) -> Node | None:
    entries = key_entries(view.doc)
    if not entries:
        return None  # EC2 omits the directory when the instance has no key
    children: dict[str, Node] = {
        str(i): Dir({"openssh-key": Leaf.of(key)}) for i, (_, key) in enumerate(entries)
    }
    labels = {str(i): f"{i}={name}" for i, (name, _) in enumerate(entries)}
    return Dir(children, labels)


def _mac_entry(view: _View, number: int, nic: Nic) -> Dir:
    entry: dict[str, Node] = {"device-number": Leaf.of(str(number))}
    if nic.v4:
        entry["local-hostname"] = Leaf.of(clean_line(view.doc["hostname"]))
        entry["local-ipv4s"] = Leaf.of("\n".join(a.ip for a in nic.v4))
    entry["mac"] = Leaf.of(nic.mac)
    entry["owner-id"] = Leaf.of(view.doc["customer_id"])
    if nic.v4:
        entry["subnet-ipv4-cidr-block"] = Leaf.of(nic.v4[0].network)
    if nic.v6:
        entry["ipv6s"] = Leaf.of("\n".join(a.ip for a in nic.v6))
        entry["subnet-ipv6-cidr-blocks"] = Leaf.of("\n".join(dict.fromkeys(a.network
                                                                            for a in nic.v6)))
    return Dir(entry)


def _network(view: _View) -> Node | None:
    macs: dict[str, Node] = {
        nic.mac: _mac_entry(view, number, nic) for number, nic in enumerate(view.nics)
    }
    return Dir({"interfaces": Dir({"macs": Dir(macs)})})


def _tags(view: _View) -> Node | None:
    if not view.doc["tags_visible"]:
        return None
    tags: dict[str, Node] = {
        key: Leaf.of(str(value))
        for key, value in view.doc["tags"].items()
        if key and not _BAD_TAG_KEY.search(key)
    }
    return Dir({"instance": Dir(tags)})


def _placement(view: _View) -> Node | None:
    zone = view.doc["availability_zone"]
    return Dir({"availability-zone": Leaf.of(zone),
                "region": Leaf.of(region_of_document(view.doc))})


def _leaf(get: Callable[[_View], str | None]) -> Builder:
    def build(view: _View) -> Node | None:
        value = get(view)
        return None if value is None else Leaf.of(value)

    return build


# (name, first API version that has it, builder → None when not applicable).
# Alphabetical, as EC2 lists them.
META_DATA: tuple[tuple[str, str, Builder], ...] = (
    ("ami-id", "2009-04-04", _leaf(lambda v: v.doc["image_id"])),
    ("ami-launch-index", "2009-04-04", _leaf(lambda v: str(v.doc["launch_index"]))),
    ("hostname", "2009-04-04", _leaf(lambda v: clean_line(v.doc["hostname"]))),
    ("instance-action", "2009-04-04", _leaf(lambda v: "none")),
    ("instance-id", "2009-04-04", _leaf(lambda v: v.doc["instance_id"])),
    ("instance-type", "2009-04-04", _leaf(lambda v: v.doc["instance_type"])),
    ("local-hostname", "2009-04-04", _leaf(lambda v: clean_line(v.doc["hostname"]))),
    ("local-ipv4", "2009-04-04", _leaf(lambda v: primary_ipv4(v.nics))),
    ("mac", "2009-04-04", _leaf(lambda v: v.nics[0].mac if v.nics else None)),
    ("network", "2016-09-02", _network),
    ("placement", "2009-04-04", _placement),
    ("public-keys", "2009-04-04", _public_keys),
    ("tags", "2021-03-23", _tags),
)


def _meta_data_tree(view: _View, version: str) -> Dir:
    children: dict[str, Node] = {}
    for name, since, build in META_DATA:
        if since > version:
            continue
        node = build(view)
        if node is not None:
            children[name] = node
    return Dir(children)


def meta_data_tree(doc: InstanceDocument, version: str) -> Dir:
    """The whole ``meta-data/`` tree of one API version (``version`` a date)."""
    return _meta_data_tree(_View(doc), version)


def identity_document(doc: InstanceDocument) -> dict[str, object]:
    """The ``dynamic/instance-identity/document`` JSON, in AWS's field names.

    There is no ``pendingTime``: the document carries no launch time.
    """
    return {
        "accountId": doc["customer_id"],
        "availabilityZone": doc["availability_zone"],
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": doc["image_id"],
        "instanceId": doc["instance_id"],
        "instanceType": doc["instance_type"],
        "kernelId": None,
        "privateIp": primary_ipv4(nics_of(doc)),
        "ramdiskId": None,
        "region": region_of_document(doc),
        "version": IDENTITY_VERSION,
    }


def _user_data(doc: InstanceDocument) -> Node | None:
    body = userdata.compose(doc)
    return None if body is None else Leaf(body, OCTETS)


def version_tree(doc: InstanceDocument, version: str) -> Dir:
    """``/{version}/``: each branch is built only when a path enters it.

    ``user-data`` is listed when the document has parts (a part the backend
    should have refused as undecodable makes it 404 instead of listing it).
    """
    view = _View(doc)
    children: dict[str, Node] = {
        "meta-data": Lazy(True, lambda: _meta_data_tree(view, version)),
    }
    if doc["user_data"]:
        children["user-data"] = Lazy(False, lambda: _user_data(doc))
    identity = Lazy(False, lambda: Leaf(json_bytes(identity_document(doc)), JSON))
    children["dynamic"] = Dir({"instance-identity": Dir({"document": identity})})
    return Dir(children)


def render(doc: InstanceDocument, segments: Sequence[str]) -> Rendered:
    """``segments`` is the path split on ``/`` without empty parts; ``()`` is ``/``."""
    if not segments:
        return listing([*VERSIONS, LATEST])
    version = _resolve(segments[0])
    if version is None:
        return NOT_FOUND
    return lookup(version_tree(doc, version), segments[1:])


def _as_json(node: Node | None) -> object:
    while isinstance(node, Lazy):
        node = node.build()
    if isinstance(node, Dir):
        return {name: _as_json(child) for name, child in node.children.items()}
    if isinstance(node, Leaf):
        return node.body.decode("utf-8", "replace")
    return None


def meta_data_json(doc: InstanceDocument, version: str) -> dict[str, object]:
    """The ``meta-data/`` tree of ``version`` as one JSON object (directories
    become objects, leaves strings): ``ec2/<version>/meta-data.json`` of an
    OpenStack config drive."""
    resolved = _resolve(version) or VERSIONS[-1]
    out = _as_json(meta_data_tree(doc, resolved))
    return out if isinstance(out, dict) else {}
