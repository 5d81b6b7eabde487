"""The store interface: versioned JSON records, bindings, tokens and a change log.

Both implementations (``sqlite``, ``postgres``) satisfy ``Store`` and run the
same test suite. The model lives above this layer: a record is an opaque JSON
object of a *kind* (customer, image, server, runtime, guest, keypair) with an owner
and a parent (a server's image), so the two SQL dialects stay small.

Every ``commit`` is one transaction that gets the next **revision** (strictly
increasing, in commit order), records a change row naming the affected
instances and nodes, and is durable before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

KINDS = ("customer", "image", "server", "runtime", "guest", "keypair")


class StoreError(Exception):
    """Base of store failures the API maps to HTTP statuses."""


class Conflict(StoreError):
    """An expected revision did not match (412) or a record already exists."""


class BindingInUse(StoreError):
    """A (node, ifname) pair is already bound to another server (409)."""


class Missing(StoreError):
    """A record the commit expected to exist is gone (404)."""


@dataclass(frozen=True)
class Record:
    kind: str
    id: str
    owner: str | None
    parent: str | None
    data: dict[str, Any]
    revision: int
    shared: bool = False


@dataclass(frozen=True)
class Put:
    """Create or replace a record.

    ``expect``: None = no check; 0 = must not exist; n > 0 = must be at revision n.
    ``bindings``: for servers, the (node, ifname) pairs to record (replacing old ones).
    """

    kind: str
    id: str
    data: dict[str, Any]
    owner: str | None = None
    parent: str | None = None
    shared: bool = False
    expect: int | None = None
    bindings: list[tuple[str, str]] | None = None


@dataclass(frozen=True)
class Delete:
    """Delete a record (and a server's bindings); ``expect`` as in Put (0 not allowed)."""

    kind: str
    id: str
    expect: int | None = None


@dataclass(frozen=True)
class Change:
    """What a commit affects, for the change feed."""

    instances: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    kind: str = ""


@dataclass(frozen=True)
class ChangeRow:
    revision: int
    kind: str
    instances: list[str]
    nodes: list[str]


@dataclass(frozen=True)
class Token:
    kind: str  # "admin" | "customer" | "node"
    subject: str  # customer id or node name ("" for admin)


class Store(Protocol):
    """What the API needs from a database."""

    async def open(self) -> None:
        """Connect, create the schema if needed and run migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the database cannot be reached."""

    async def get(self, kind: str, id: str) -> Record | None: ...

    async def get_many(self, kind: str, ids: list[str]) -> dict[str, Record]: ...

    async def scan(self, kind: str, *, owner: str | None = None, parent: str | None = None,
                   after: str | None = None, limit: int = 100,
                   visible_to: str | None = None) -> list[Record]:
        """Records ordered by id, at most ``limit``, ids > ``after``.
        ``visible_to``: only records owned by that customer or marked shared."""

    async def ids(self, kind: str, *, owner: str | None = None,
                  parent: str | None = None) -> list[str]: ...

    async def commit(self, ops: list[Put | Delete], change: Change) -> int:
        """Apply ``ops`` atomically; return the new revision. Raises Conflict/Missing."""

    async def revision(self) -> int:
        """The latest committed revision (0 for an empty store)."""

    async def changes_since(self, revision: int, limit: int = 10000) -> list[ChangeRow]: ...

    async def first_revision(self) -> int:
        """The oldest revision still in the change log (0 when it is empty)."""

    async def prune_changes(self, before: int) -> None:
        """Forget change rows older than ``before`` (never the latest one)."""

    async def bindings(self, node: str) -> list[tuple[str, str]]:
        """(ifname, server id) pairs of ``node``, ordered by ifname."""

    async def put_token(self, digest: str, token: Token) -> None: ...

    async def find_token(self, digest: str) -> Token | None: ...

    async def delete_tokens(self, subject: str) -> None: ...

    async def subscribe(self, callback: Any) -> None:
        """Call ``callback(revision)`` (in the event loop) for commits of other
        processes. No-op where only one process can write (SQLite)."""
