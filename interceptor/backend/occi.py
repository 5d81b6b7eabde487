"""OCCI 1.1 HTTP rendering, the part a client creating compute resources needs.

Pure parsing and rendering, no I/O. Two renderings carry the same lines:

* ``text/occi``: in HTTP headers (``Category``, ``X-OCCI-Attribute``,
  ``X-OCCI-Location``); one header may hold several values separated by
  commas, and a header may repeat.
* ``text/plain``: the same ``Name: value`` lines in the body, one per line.

A category is ``term; scheme="…"; class="kind|mixin|action"`` plus optional
``title``, ``rel``, ``location`` and ``attributes``; an attribute is
``name="string"`` (``\\"`` and ``\\\\`` escaped) or ``name=number|true|false``.

Contextualisation, as OpenStack's OCCI interfaces define it:

* ``user_data`` mixin (``http://schemas.openstack.org/compute/instance#``) with
  ``org.openstack.compute.user_data`` (base64) → the server's user-data;
* ``public_key`` mixin (``http://schemas.openstack.org/instance/credentials#``)
  with ``org.openstack.credentials.publickey.data`` (and ``.name``) → a key;
  a name alone names an existing keypair;
* an ``os_tpl`` mixin (``http://schemas.openstack.org/template/os#``, term =
  image id) → the image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

OCCI_TEXT = "text/occi"
PLAIN = "text/plain"

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
CORE = "http://schemas.ogf.org/occi/core#"
OS_INSTANCE = "http://schemas.openstack.org/compute/instance#"
OS_CREDENTIALS = "http://schemas.openstack.org/instance/credentials#"
OS_TPL = "http://schemas.openstack.org/template/os#"

USER_DATA_ATTR = "org.openstack.compute.user_data"
KEY_NAME_ATTR = "org.openstack.credentials.publickey.name"
KEY_DATA_ATTR = "org.openstack.credentials.publickey.data"
HOSTNAME_ATTR = "occi.compute.hostname"
TITLE_ATTR = "occi.core.title"
ID_ATTR = "occi.core.id"

_TERM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_ATTR_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class OcciError(ValueError):
    """The request is not OCCI 1.1 this service understands (→ 400)."""


@dataclass(frozen=True)
class Category:
    term: str
    scheme: str
    cls: str
    title: str = ""
    rel: str = ""
    location: str = ""
    attributes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.scheme + self.term


@dataclass
class Request:
    categories: list[Category] = field(default_factory=list)
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)

    def has(self, scheme: str, term: str | None = None, cls: str | None = None) -> bool:
        return any(c.scheme == scheme and (term is None or c.term == term)
                   and (cls is None or c.cls == cls) for c in self.categories)

    def terms(self, scheme: str) -> list[str]:
        return [c.term for c in self.categories if c.scheme == scheme]


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (backslash escapes inside)."""
    out, buf, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quoted:
        raise OcciError("unterminated quoted string")
    out.append("".join(buf))
    return [part.strip() for part in out if part.strip()]


def _unquote(value: str) -> str:
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        raise OcciError(f"expected a quoted string, got {value[:40]!r}")
    inner = value[1:-1]
    return re.sub(r"\\(.)", r"\1", inner)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_category(text: str) -> Category:
    parts = _split(text, ";")
    if not parts or not _TERM.match(parts[0]):
        raise OcciError(f"invalid category term in {text[:60]!r}")
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if not sep:
            raise OcciError(f"invalid category parameter {part[:40]!r}")
        params[name.strip().lower()] = _unquote(value.strip())
    if "scheme" not in params or "class" not in params:
        raise OcciError("a category needs scheme and class")
    if params["class"] not in ("kind", "mixin", "action"):
        raise OcciError("category class must be kind, mixin or action")
    return Category(parts[0], params["scheme"], params["class"], params.get("title", ""),
                    params.get("rel", ""), params.get("location", ""),
                    tuple(params.get("attributes", "").split()))


def parse_attribute(text: str) -> tuple[str, str | int | float | bool]:
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not _ATTR_NAME.match(name):
        raise OcciError(f"invalid attribute {text[:60]!r}")
    if value.startswith('"'):
        return name, _unquote(value)
    if value in ("true", "false"):
        return name, value == "true"
    if _NUMBER.match(value):
        return name, float(value) if "." in value else int(value)
    raise OcciError(f"attribute {name} has an invalid value")


def parse_lines(lines: Iterable[tuple[str, str]]) -> Request:
    """``(header name, value)`` pairs (headers or ``text/plain`` body lines)."""
    req = Request()
    for name, value in lines:
        lname = name.strip().lower()
        if lname == "category":
            req.categories += [parse_category(v) for v in _split(value, ",")]
        elif lname == "x-occi-attribute":
            for item in _split(value, ","):
                key, parsed = parse_attribute(item)
                if key in req.attributes:
                    raise OcciError(f"attribute {key} given twice")
                req.attributes[key] = parsed
    return req


def parse_plain(body: str) -> Request:
    pairs = []
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise OcciError(f"line {line[:40]!r} is not 'Name: value'")
        pairs.append((name, value))
    return parse_lines(pairs)


def parse_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Request:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return parse_lines(items)


def render_category(cat: Category) -> str:
    out = f'{cat.term}; scheme="{cat.scheme}"; class="{cat.cls}"'
    if cat.title:
        out += f"; title={_quote(cat.title)}"
    if cat.rel:
        out += f'; rel="{cat.rel}"'
    if cat.location:
        out += f'; location="{cat.location}"'
    if cat.attributes:
        out += f'; attributes="{" ".join(cat.attributes)}"'
    return out


def render_attribute(name: str, value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"{name}={value}"
    return f"{name}={_quote(value)}"


def lines_of(categories: Iterable[Category] = (),
             attributes: Mapping[str, str | int | float | bool] | None = None,
             locations: Iterable[str] = ()) -> list[tuple[str, str]]:
    out = [("Category", render_category(c)) for c in categories]
    out += [("X-OCCI-Attribute", render_attribute(k, v)) for k, v in (attributes or {}).items()]
    out += [("X-OCCI-Location", loc) for loc in locations]
    return out


def plain_body(lines: list[tuple[str, str]]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in lines)


COMPUTE = Category("compute", INFRA, "kind", "Compute Resource", CORE + "resource",
                   "/occi1.1/compute/",
                   (ID_ATTR, TITLE_ATTR, HOSTNAME_ATTR, "occi.compute.state"))
USER_DATA = Category("user_data", OS_INSTANCE, "mixin", "Contextualisation extension - user_data",
                     attributes=(USER_DATA_ATTR,))
PUBLIC_KEY = Category("public_key", OS_CREDENTIALS, "mixin",
                      "Contextualisation extension - public_key",
                      attributes=(KEY_NAME_ATTR, KEY_DATA_ATTR))
OS_TPL_BASE = Category("os_tpl", INFRA, "mixin", "OS Template")


def os_template(image_id: str, title: str) -> Category:
    return Category(image_id, OS_TPL, "mixin", title or image_id, INFRA + "os_tpl",
                    f"/occi1.1/os_tpl/{image_id}")


def query_interface(images: Iterable[tuple[str, str]]) -> list[Category]:
    """Every category a client may use: the compute kind, the two
    contextualisation mixins, the os_tpl base and one os_tpl per usable image."""
    return [COMPUTE, USER_DATA, PUBLIC_KEY, OS_TPL_BASE,
            *(os_template(iid, title) for iid, title in images)]
