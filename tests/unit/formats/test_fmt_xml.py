"""``/metadata`` XML: always well-formed, exact round trip, private never present."""

# ruff: noqa: S314 - parses only what the renderer under test produced

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest

from interceptor.formats.document import OBJECTS, VM_CLASSES, InstanceDocument
from interceptor.formats.router import render_path
from interceptor.formats.xml_metadata import decode_xml, plain_name, render_xml


def expected_meta(doc: InstanceDocument) -> dict[str, dict[str, dict[str, object]]]:
    return {obj: {cls: doc["meta"].get(obj, {}).get(cls, {}) for cls in VM_CLASSES}
            for obj in OBJECTS}


def test_round_trip_every_doc(any_doc: InstanceDocument) -> None:
    body = render_path(any_doc, "/metadata").body
    ET.fromstring(body)  # well-formed
    assert decode_xml(body) == expected_meta(any_doc)


def test_shape(load_doc: Callable[[str], InstanceDocument]) -> None:
    root = ET.fromstring(render_xml(load_doc("normal")))
    assert root.tag == "CONFIG"
    meta = root.find("meta")
    assert meta is not None
    assert [o.tag for o in meta] == ["customer", "server", "image", "runtime"]
    for obj in meta:
        assert [c.tag for c in obj] == ["public", "restricted", "system"]
    users = root.findall("./meta/customer/system/sshkeys/user")
    assert [(u.get("name"), [k.text for k in u.findall("key")]) for u in users] == [
        ("alice", ["ssh-ed25519 AAAAC3 alice@example"]), ("", ["ssh-rsa AAAAB3 default@example"])]
    assert root.findtext("./meta/image/system/default_username") == "debian"
    assert root.findtext("./meta/server/public/role") == "server-role"


def test_private_never_rendered(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("normal")
    doc["meta"]["server"]["private"] = {"leak": "PRIVATE-VALUE"}  # a buggy backend
    body = render_xml(doc)
    assert b"PRIVATE-VALUE" not in body and b"<private" not in body


HOSTILE_STRINGS = [
    "", " ", "]]>", "<![CDATA[", "&", "&amp;", "<a>", '"', "'", "\r", "\r\n", "\n", "\t",
    "\x00", "\x01\x02\x1f", "\x7f", "\ud800", "\udfff", "\ufffe", "\uffff", "é", "☃", "🚀",
    "\u2028", "xml", "XmlFoo", "item", "key", "a b", "a:b", ":", "-", ".", "1", "_", "a" * 1000,
    "<?xml version='1.0'?>", "<!DOCTYPE x [<!ENTITY e 'boom'>]>", "&e;",
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_hostile_keys_and_values_round_trip(load_doc: Callable[[str], InstanceDocument],
                                            text: str) -> None:
    doc = load_doc("empty")
    doc["meta"]["customer"]["public"] = {text: text, "v": text, text + "k": [text, {text: text}]}
    doc["meta"]["customer"]["system"] = {"sshkeys": {text: [text, text]}, text: text}
    doc["meta"]["runtime"]["restricted"] = {"sshkeys": text}
    body = render_xml(doc)
    ET.fromstring(body)
    assert decode_xml(body) == expected_meta(doc)


def test_plain_names() -> None:
    assert plain_name("role") and plain_name("a-b.c_d") and plain_name("_x")
    for name in ("", "1a", "a b", "a:b", "xml", "XMLx", "item", "é", "-a", ".a"):
        assert not plain_name(name)


def test_sshkeys_other_shapes_are_marked_json(load_doc: Callable[[str], InstanceDocument]
                                              ) -> None:
    doc = load_doc("empty")
    values: list[object] = ["text", [], {"u": "not-a-list"}, {"u": [1]}, None, {}]
    for value in values:
        doc["meta"]["customer"]["system"] = {"sshkeys": copy.deepcopy(value)}
        body = render_xml(doc)
        assert decode_xml(body)["customer"]["system"]["sshkeys"] == value


def test_values_are_escaped_not_interpreted(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("hostile")
    body = render_xml(doc)
    root = ET.fromstring(body)
    assert root.findtext("./meta/customer/public/cdata") == "]]> and <![CDATA[ x ]]>"
    assert root.findtext("./meta/customer/public/crlf") == "line1\r\nline2\rline3\n"
    items = {i.get("key"): i.text for i in root.iter("item") if i.get("key") is not None}
    assert items["amp&"] == "&amp;"
    assert items["item"] == "literal item key"
    assert items[""] == "empty key"


def test_large_values(load_doc: Callable[[str], InstanceDocument]) -> None:
    doc = load_doc("max")
    assert decode_xml(render_xml(doc))["customer"]["public"]["big"] == "y" * 65536
