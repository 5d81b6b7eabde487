"""SQLite store: embedded default for one machine.

One connection, used by one worker thread, so the event loop never blocks on
disk and writes are serialised (which also makes revisions commit-ordered).
WAL with ``synchronous=FULL``: a commit is on disk before ``commit`` returns,
so every 2xx write survives a kill -9 or a power cut.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from interceptor.backend.store.base import (
    BindingInUse,
    Change,
    ChangeRow,
    Conflict,
    Delete,
    Missing,
    Put,
    Record,
    Token,
)
from interceptor.backend.store.sql import MIGRATIONS, dump, load
from interceptor.common.errors import ConfigError

T = TypeVar("T")

_COLUMNS = "kind, id, owner, parent, shared, data, revision"


def _record(row: tuple[Any, ...]) -> Record:
    return Record(kind=row[0], id=row[1], owner=row[2], parent=row[3], shared=bool(row[4]),
                  data=load(row[5]), revision=int(row[6]))


class SqliteStore:
    """``Store`` over one SQLite file (created on first start)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, conn)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, self._connect)
        await self._run(self._migrate)

    def _connect(self) -> sqlite3.Connection:
        path = Path(self._path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"config: database {self._path}: {exc}") from None
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            done = int(row[0]) if row else 0
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (0)")
            for steps in MIGRATIONS[done:]:
                for sql in steps:
                    conn.execute(sql.format(serial="INTEGER"))
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def get(self, kind: str, id: str) -> Record | None:
        def q(c: sqlite3.Connection) -> Record | None:
            row = c.execute(f"SELECT {_COLUMNS} FROM records WHERE kind=? AND id=?",  # noqa: S608
                            (kind, id)).fetchone()
            return _record(row) if row else None
        return await self._run(q)

    async def get_many(self, kind: str, ids: list[str]) -> dict[str, Record]:
        def q(c: sqlite3.Connection) -> dict[str, Record]:
            out: dict[str, Record] = {}
            for id in ids:
                row = c.execute(f"SELECT {_COLUMNS} FROM records WHERE kind=? AND id=?",  # noqa: S608
                                (kind, id)).fetchone()
                if row:
                    out[id] = _record(row)
            return out
        return await self._run(q)

    async def scan(self, kind: str, *, owner: str | None = None, parent: str | None = None,
                   after: str | None = None, limit: int = 100,
                   visible_to: str | None = None) -> list[Record]:
        where, args = _filters(kind, owner, parent)
        if after is not None:
            where.append("id>?")
            args.append(after)
        if visible_to is not None:
            where.append("(owner=? OR shared)")
            args.append(visible_to)
        sql = (f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} "  # noqa: S608
               f"ORDER BY id LIMIT {int(limit)}")
        return await self._run(lambda c: [_record(r) for r in c.execute(sql, args).fetchall()])

    async def ids(self, kind: str, *, owner: str | None = None,
                  parent: str | None = None) -> list[str]:
        where, args = _filters(kind, owner, parent)
        sql = f"SELECT id FROM records WHERE {' AND '.join(where)} ORDER BY id"  # noqa: S608
        return await self._run(lambda c: [r[0] for r in c.execute(sql, args).fetchall()])

    async def commit(self, ops: list[Put | Delete], change: Change) -> int:
        def tx(c: sqlite3.Connection) -> int:
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute("INSERT INTO changes (kind, instances, nodes) VALUES (?, ?, ?)",
                                (change.kind, dump(sorted(set(change.instances))),
                                 dump(sorted(set(change.nodes)))))
                revision = int(cur.lastrowid or 0)
                for op in ops:
                    _apply(c, op, revision)
                c.execute("COMMIT")
                return revision
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return await self._run(tx)

    async def revision(self) -> int:
        return await self._run(
            lambda c: int(c.execute("SELECT COALESCE(MAX(revision), 0) FROM changes")
                          .fetchone()[0]))

    async def changes_since(self, revision: int, limit: int = 10000) -> list[ChangeRow]:
        def q(c: sqlite3.Connection) -> list[ChangeRow]:
            rows = c.execute("SELECT revision, kind, instances, nodes FROM changes "
                             "WHERE revision > ? ORDER BY revision LIMIT ?",
                             (revision, limit)).fetchall()
            return [ChangeRow(int(r[0]), r[1], load(r[2]), load(r[3])) for r in rows]
        return await self._run(q)

    async def first_revision(self) -> int:
        return await self._run(
            lambda c: int(c.execute("SELECT COALESCE(MIN(revision), 0) FROM changes")
                          .fetchone()[0]))

    async def prune_changes(self, before: int) -> None:
        await self._run(lambda c: c.execute(
            "DELETE FROM changes WHERE revision < ? AND revision < "
            "(SELECT MAX(revision) FROM changes)", (before,)))

    async def bindings(self, node: str) -> list[tuple[str, str]]:
        return await self._run(lambda c: [
            (r[0], r[1]) for r in c.execute(
                "SELECT ifname, server_id FROM bindings WHERE node=? ORDER BY ifname",
                (node,)).fetchall()])

    async def put_token(self, digest: str, token: Token) -> None:
        await self._run(lambda c: c.execute(
            "INSERT INTO tokens (digest, kind, subject) VALUES (?, ?, ?)",
            (digest, token.kind, token.subject)))

    async def find_token(self, digest: str) -> Token | None:
        def q(c: sqlite3.Connection) -> Token | None:
            row = c.execute("SELECT kind, subject FROM tokens WHERE digest=?",
                            (digest,)).fetchone()
            return Token(row[0], row[1]) if row else None
        return await self._run(q)

    async def delete_tokens(self, subject: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM tokens WHERE subject=?", (subject,)))

    async def subscribe(self, callback: Any) -> None:
        """Only this process writes an SQLite store: local notification suffices."""


def _apply(c: sqlite3.Connection, op: Put | Delete, revision: int) -> None:
    row = c.execute("SELECT revision FROM records WHERE kind=? AND id=?",
                    (op.kind, op.id)).fetchone()
    current = int(row[0]) if row else 0
    if isinstance(op, Delete):
        if row is None:
            raise Missing(f"{op.kind} {op.id} not found")
        if op.expect is not None and op.expect != current:
            raise Conflict(f"{op.kind} {op.id} changed (revision {current})")
        c.execute("DELETE FROM records WHERE kind=? AND id=?", (op.kind, op.id))
        if op.kind == "server":
            c.execute("DELETE FROM bindings WHERE server_id=?", (op.id,))
        return
    if op.expect is not None and op.expect != current:
        if op.expect > 0 and row is None:
            raise Missing(f"{op.kind} {op.id} not found")
        raise Conflict(f"{op.kind} {op.id} changed (revision {current})"
                       if row else f"{op.kind} {op.id} changed")
    c.execute("INSERT INTO records (kind, id, owner, parent, shared, data, revision) "
              "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET "
              "owner=excluded.owner, parent=excluded.parent, shared=excluded.shared, "
              "data=excluded.data, revision=excluded.revision",
              (op.kind, op.id, op.owner, op.parent, op.shared, dump(op.data), revision))
    if op.bindings is not None:
        c.execute("DELETE FROM bindings WHERE server_id=?", (op.id,))
        for node, ifname in op.bindings:
            try:
                c.execute("INSERT INTO bindings (node, ifname, server_id) VALUES (?, ?, ?)",
                          (node, ifname, op.id))
            except sqlite3.IntegrityError:
                raise BindingInUse(f"{ifname} on {node} is bound to another server") from None


def _filters(kind: str, owner: str | None, parent: str | None) -> tuple[list[str], list[str]]:
    """WHERE terms and arguments shared by ``scan`` and ``ids``."""
    where, args = ["kind=?"], [kind]
    if owner is not None:
        where.append("owner=?")
        args.append(owner)
    if parent is not None:
        where.append("parent=?")
        args.append(parent)
    return where, args
