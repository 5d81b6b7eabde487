"""A read-only tree of listings and leaves, the shape of EC2-style metadata.

A path is looked up segment by segment; a directory renders as its listing
(one entry per line, sub-directories with a trailing ``/``), a leaf as its
bytes. A directory answers with and without a trailing slash, as EC2 does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from interceptor.formats.rendered import NOT_FOUND, TEXT, Rendered, listing


@dataclass(frozen=True)
class Leaf:
    body: bytes
    content_type: str = TEXT

    @classmethod
    def of(cls, value: str) -> Leaf:
        return cls(value.encode("utf-8", errors="replace"))


@dataclass(frozen=True)
class Lazy:
    """A child built only when a path goes through it (user-data, the identity
    document and the meta-data subtree are not built for each other's requests).
    ``build`` may return None: then the path is 404 although it is listed."""

    is_dir: bool
    build: Callable[[], Node | None]


@dataclass(frozen=True)
class Dir:
    children: Mapping[str, Node]
    # Listing text that replaces "name/" for a child (EC2 public keys: "0=alice").
    labels: Mapping[str, str] = field(default_factory=dict)

    def listing(self) -> list[str]:
        out: list[str] = []
        for name, child in self.children.items():
            if name in self.labels:
                out.append(self.labels[name])
            else:
                is_dir = child.is_dir if isinstance(child, Lazy) else isinstance(child, Dir)
                out.append(name + "/" if is_dir else name)
        return out


Node = Leaf | Dir | Lazy


def lookup(root: Node, segments: Sequence[str]) -> Rendered:
    node: Node | None = root
    for segment in segments:
        while isinstance(node, Lazy):
            node = node.build()
        if not isinstance(node, Dir) or segment not in node.children:
            return NOT_FOUND
        node = node.children[segment]
    while isinstance(node, Lazy):
        node = node.build()
    if node is None:
        return NOT_FOUND
    if isinstance(node, Dir):
        return listing(node.listing())
    return Rendered(200, node.body, node.content_type)
