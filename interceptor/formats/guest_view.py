"""The service's own read surface, ``/interceptor/v1/…``: what a guest may read back.

* ``user-data/`` lists the user-data parts by name, in merged order (the
  image's, then the server's); ``user-data/{name}`` is one part's bytes with
  its own content type. The merged document stays at the EC2, OpenStack and
  NoCloud ``user-data`` paths, which is what cloud-init reads.
* ``guest-data/`` lists the guest-written namespace; ``guest-data/{key}`` is
  a value as it was written (the guest's own writes and its owner's).
* ``meta/{public,restricted}/`` lists the merged metadata of that class
  (image < customer < server < runtime, the image's final restricted keys
  kept, consumed keys absent); ``meta/{cls}/{key}`` is a value as text
  (strings as they are, other JSON values as compact JSON).

A name that contains ``/`` is listed but cannot be addressed (a path
segment cannot hold it); the backend's own API reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from interceptor.formats import userdata
from interceptor.formats.document import InstanceDocument, merged_meta
from interceptor.formats.facts import as_text, clean_line
from interceptor.formats.rendered import NOT_FOUND, Rendered, listing
from interceptor.formats.tree import Dir, Lazy, Leaf, Node, lookup

VERSION = "v1"
META_CLASSES: tuple[str, ...] = ("public", "restricted")


def _user_data(doc: InstanceDocument) -> Dir:
    children: dict[str, Node] = {}
    for part in userdata.parts_of(doc):
        name = clean_line(part.name)
        if name and name not in children:
            children[name] = Leaf(part.data, userdata.safe_content_type(part.content_type))
    return Dir(children)


def _guest_data(doc: InstanceDocument) -> Dir:
    return Dir({clean_line(key): Leaf.of(str(value))
                for key, value in doc["guest_data"].items() if key})


def _meta(doc: InstanceDocument) -> Dir:
    classes: dict[str, Node] = {}
    for cls in META_CLASSES:
        values = merged_meta(doc, (cls,))
        classes[cls] = Dir({clean_line(key): Leaf.of(as_text(value))
                            for key, value in values.items() if key})
    return Dir(classes)


def tree(doc: InstanceDocument) -> Dir:
    return Dir({
        "guest-data": Lazy(True, lambda: _guest_data(doc)),
        "meta": Lazy(True, lambda: _meta(doc)),
        "user-data": Lazy(True, lambda: _user_data(doc)),
    })


def render(doc: InstanceDocument, segments: Sequence[str]) -> Rendered:
    """``segments`` follow ``interceptor``: ``()`` lists the versions."""
    if not segments:
        return listing([VERSION])
    if segments[0] != VERSION:
        return NOT_FOUND
    return lookup(tree(doc), segments[1:])
