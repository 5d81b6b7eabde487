"""Schema and migrations shared by the SQL stores (dialect differences kept tiny).

Migrations are a list; ``schema_version`` holds how many have run. Append,
never edit, a migration once released.
"""

from __future__ import annotations

import json
from typing import Any

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE records (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            owner TEXT,
            parent TEXT,
            shared BOOLEAN NOT NULL DEFAULT FALSE,
            data TEXT NOT NULL,
            revision BIGINT NOT NULL,
            PRIMARY KEY (kind, id))""",
        "CREATE INDEX records_owner ON records (kind, owner, id)",
        "CREATE INDEX records_parent ON records (kind, parent, id)",
        """CREATE TABLE bindings (
            node TEXT NOT NULL,
            ifname TEXT NOT NULL,
            server_id TEXT NOT NULL,
            PRIMARY KEY (node, ifname))""",
        "CREATE INDEX bindings_server ON bindings (server_id)",
        """CREATE TABLE tokens (
            digest TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL)""",
        "CREATE INDEX tokens_subject ON tokens (subject)",
        # The change log: one row per commit, its id is the revision.
        """CREATE TABLE changes (
            revision {serial} PRIMARY KEY,
            kind TEXT NOT NULL,
            instances TEXT NOT NULL,
            nodes TEXT NOT NULL)""",
    ],
]


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def load(text: str) -> Any:
    return json.loads(text)
