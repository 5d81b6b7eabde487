"""``GET /metadata``: the VM-visible metadata of every object as one XML document.

Shape::

    <?xml version="1.0" encoding="UTF-8"?>
    <CONFIG>
      <meta>
        <customer>
          <public>…</public>
          <restricted>…</restricted>
          <system>
            <sshkeys><user name="alice"><key>ssh-ed25519 …</key></user></sshkeys>
          </system>
        </customer>
        <server>…</server>
        <image>…</image>
        <runtime>…</runtime>
      </meta>
      <public-keys>
        <key name="alice">ssh-ed25519 …</key>
        <key name="ops" user="ops">ssh-rsa …</key>
      </public-keys>
    </CONFIG>

``public-keys`` is the document's ``ssh_keys`` (the server's keys, its named
keypairs and the customer's ``sshkeys``), as EC2 and OpenStack list them;
``user`` is present for keys from ``sshkeys``; a key XML cannot carry (a
control character) is left out. ``decode_keys`` reads it back.

Encoding of one ``key: value`` (``decode_xml`` reverses it exactly):

* key: an element named after the key when the key is a plain ASCII XML
  name (``[A-Za-z_][A-Za-z0-9._-]*``, not starting with ``xml``, not
  ``item``); otherwise ``<item key="…">`` with the key as an attribute, or
  ``<item key-b64="…">`` (base64 of UTF-8) when the key holds characters XML
  cannot carry at all (most control characters, lone surrogates).
* value: a string is the element's text (``&``, ``<``, ``>`` and CR
  escaped), or base64 of its UTF-8 with ``encoding="base64"`` when it holds
  characters XML cannot carry; any other JSON value is its JSON text with
  ``type="json"``.
* customer ``system`` ``sshkeys`` (``{"user": ["key", …]}``, ``""`` = the
  image's default user) is ``<user name="…"><key>…</key></user>`` elements;
  any other shape of it falls back to ``type="json"``.

Private metadata is never in the document, so never here.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from interceptor.formats.document import ClassedMetadata, InstanceDocument, JSONValue, Metadata
from interceptor.formats.facts import key_entries

XML_OBJECTS: tuple[str, ...] = ("customer", "server", "image", "runtime")
XML_CLASSES: tuple[str, ...] = ("public", "restricted", "system")
ITEM = "item"

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(value: str) -> bool:
    return _NOT_XML_CHAR.search(value) is None


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")


def _unb64(value: str) -> str:
    return base64.b64decode(value, validate=True).decode("utf-8", "surrogatepass")


def _escape_text(value: str) -> str:
    # CR would be normalised to LF by every parser; a character reference keeps it.
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


def _escape_attr(value: str) -> str:
    # Attribute values are whitespace-normalised by parsers: keep TAB/LF/CR as references.
    return (_escape_text(value).replace('"', "&quot;").replace("\t", "&#9;")
            .replace("\n", "&#10;"))


def plain_name(key: str) -> bool:
    """True when ``key`` can be the element name itself."""
    return bool(_PLAIN_NAME.match(key)) and not key.lower().startswith("xml") and key != ITEM


def _open_tag(key: str, attrs: dict[str, str]) -> tuple[str, str]:
    """(opening tag without ``>``, element name) for a key."""
    if plain_name(key):
        name, head = key, key
    elif _xml_safe(key):
        name, head = ITEM, f'{ITEM} key="{_escape_attr(key)}"'
    else:
        name, head = ITEM, f'{ITEM} key-b64="{_b64(key)}"'
    for attr, value in attrs.items():
        head += f' {attr}="{value}"'
    return "<" + head, name


def _value_xml(key: str, value: JSONValue, *, force_json: bool = False) -> str:
    if isinstance(value, str) and not force_json:
        if _xml_safe(value):
            attrs, body = {}, _escape_text(value)
        else:
            attrs, body = {"encoding": "base64"}, _b64(value)
    else:
        # ensure_ascii: JSON text is then always plain printable XML content.
        attrs = {"type": "json"}
        body = _escape_text(json.dumps(value, ensure_ascii=True, sort_keys=True))
    head, name = _open_tag(key, attrs)
    return f"{head}/>" if body == "" else f"{head}>{body}</{name}>"


def _sshkeys_shape(value: JSONValue) -> bool:
    return isinstance(value, dict) and all(
        isinstance(user, str) and _xml_safe(user) and isinstance(keys, list)
        and all(isinstance(k, str) and _xml_safe(k) for k in keys)
        for user, keys in value.items()
    )


def _sshkeys_xml(value: dict[str, list[str]], indent: str) -> str:
    if not value:
        return f"{indent}<sshkeys/>"
    lines = [f"{indent}<sshkeys>"]
    for user, keys in value.items():
        inner = "".join(f"<key>{_escape_text(k)}</key>" for k in keys)
        lines.append(f'{indent}  <user name="{_escape_attr(user)}">{inner}</user>')
    lines.append(f"{indent}</sshkeys>")
    return "\n".join(lines)


def _class_xml(obj: str, cls: str, data: Metadata, indent: str) -> str:
    if not data:
        return f"{indent}<{cls}/>"
    lines = [f"{indent}<{cls}>"]
    for key, value in data.items():
        if obj == "customer" and cls == "system" and key == "sshkeys":
            # Any other shape is marked type="json" so the decoder cannot mistake it.
            if _sshkeys_shape(value):
                lines.append(_sshkeys_xml(value, indent + "  "))
            else:
                lines.append(indent + "  " + _value_xml(key, value, force_json=True))
        else:
            lines.append(indent + "  " + _value_xml(key, value))
    lines.append(f"{indent}</{cls}>")
    return "\n".join(lines)


def render_xml(doc: InstanceDocument) -> bytes:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<CONFIG>", "  <meta>"]
    for obj in XML_OBJECTS:
        per_class = doc["meta"].get(obj)
        if not isinstance(per_class, dict):
            per_class = {}
        lines.append(f"    <{obj}>")
        for cls in XML_CLASSES:
            data = per_class.get(cls, {})
            lines.append(_class_xml(obj, cls, data if isinstance(data, dict) else {}, "      "))
        lines.append(f"    </{obj}>")
    lines.append("  </meta>")
    lines += _keys_xml(doc)
    lines += ["</CONFIG>", ""]
    return "\n".join(lines).encode("utf-8")


def _keys_xml(doc: InstanceDocument) -> list[str]:
    users = [str(k.get("user")) if "user" in k else None for k in doc["ssh_keys"]]
    entries = key_entries(doc)
    if not entries:
        return ["  <public-keys/>"]
    lines = ["  <public-keys>"]
    for (name, key), user in zip(entries, users, strict=True):
        if not (_xml_safe(name) and _xml_safe(key)):
            continue
        attrs = f' name="{_escape_attr(name)}"'
        if user is not None and _xml_safe(user):
            attrs += f' user="{_escape_attr(user)}"'
        lines.append(f"    <key{attrs}>{_escape_text(key)}</key>")
    lines.append("  </public-keys>")
    return lines


def decode_keys(body: bytes) -> list[dict[str, str]]:
    """The ``public-keys`` entries of a ``render_xml`` document, in order."""
    root = ET.fromstring(body)  # noqa: S314 - expat resolves no external entities
    keys = root.find("public-keys")
    if keys is None:
        return []
    return [{k: v for k, v in (("name", el.get("name", "")), ("key", el.text or ""),
                                ("user", el.get("user"))) if v is not None}
            for el in keys.findall("key")]


def _decode_key(element: ET.Element) -> str:
    if element.tag != ITEM:
        return element.tag
    if "key-b64" in element.attrib:
        return _unb64(element.attrib["key-b64"])
    return element.attrib["key"]


def _decode_value(element: ET.Element) -> JSONValue:
    body = element.text or ""
    if element.get("type") == "json":
        return json.loads(body)
    if element.get("encoding") == "base64":
        return _unb64(body)
    return body


def _decode_sshkeys(element: ET.Element) -> dict[str, list[str]]:
    return {
        user.attrib["name"]: [key.text or "" for key in user.findall("key")]
        for user in element.findall("user")
    }


def decode_xml(body: bytes) -> dict[str, ClassedMetadata]:
    """The ``meta`` mapping that ``render_xml`` encoded (object → class → key → value).

    Raises ``xml.etree.ElementTree.ParseError`` or ``ValueError`` on input it
    did not produce.
    """
    root = ET.fromstring(body)  # noqa: S314 - expat resolves no external entities
    meta = root.find("meta")
    if root.tag != "CONFIG" or meta is None:
        raise ValueError("not a /metadata document")
    out: dict[str, ClassedMetadata] = {}
    for obj_el in meta:
        classes: ClassedMetadata = {}
        for cls_el in obj_el:
            values: dict[str, Any] = {}
            for item in cls_el:
                key = _decode_key(item)
                if (obj_el.tag == "customer" and cls_el.tag == "system" and key == "sshkeys"
                        and "type" not in item.attrib):
                    values[key] = _decode_sshkeys(item)
                else:
                    values[key] = _decode_value(item)
            classes[cls_el.tag] = values
        out[obj_el.tag] = classes
    return out
