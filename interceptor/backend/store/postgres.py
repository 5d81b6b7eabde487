"""PostgreSQL store: the scale-out engine (many backend processes, one database).

Writers take a transaction-scoped advisory lock so revisions (a sequence)
are handed out *and committed* in the same order: a watcher that has seen
revision n can never later meet a commit numbered below n. Each commit
NOTIFYs the revision so every process wakes its watchers (LISTEN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

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

log = logging.getLogger(__name__)

CHANNEL = "interceptor_changes"
WRITE_LOCK = 0x696E7463  # advisory lock id: serialises writers (commit order = revision order)
MIGRATION_LOCK = 0x696E7464
_COLUMNS = "kind, id, owner, parent, shared, data, revision"


def _record(row: Any) -> Record:
    return Record(kind=row["kind"], id=row["id"], owner=row["owner"], parent=row["parent"],
                  shared=bool(row["shared"]), data=load(row["data"]),
                  revision=int(row["revision"]))


class PostgresStore:
    """``Store`` over a PostgreSQL DSN (asyncpg pool + one LISTEN connection)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None
        self._listener: Any = None
        self._callbacks: list[Callable[[int], None]] = []
        self._relisten: asyncio.Task[None] | None = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=10)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await conn.fetchrow("SELECT version FROM schema_version")
            done = int(row["version"]) if row else 0
            if row is None:
                await conn.execute("INSERT INTO schema_version VALUES (0)")
            for steps in MIGRATIONS[done:]:
                for sql in steps:
                    await conn.execute(sql.format(serial="BIGSERIAL"))
            await conn.execute("UPDATE schema_version SET version = $1", len(MIGRATIONS))

    async def close(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relisten
            self._relisten = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def get(self, kind: str, id: str) -> Record | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM records WHERE kind=$1 AND id=$2", kind, id)  # noqa: S608
        return _record(row) if row else None

    async def get_many(self, kind: str, ids: list[str]) -> dict[str, Record]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM records WHERE kind=$1 AND id = ANY($2::text[])",  # noqa: S608
            kind, ids)
        return {r["id"]: _record(r) for r in rows}

    async def scan(self, kind: str, *, owner: str | None = None, parent: str | None = None,
                   after: str | None = None, limit: int = 100,
                   visible_to: str | None = None) -> list[Record]:
        where, args = ["kind=$1"], [kind]
        for column, value in (("owner", owner), ("parent", parent)):
            if value is not None:
                args.append(value)
                where.append(f"{column}=${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"id COLLATE \"C\" > ${len(args)}")
        if visible_to is not None:
            args.append(visible_to)
            where.append(f"(owner=${len(args)} OR shared)")
        sql = (f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} "  # noqa: S608
               f"ORDER BY id COLLATE \"C\" LIMIT {int(limit)}")
        return [_record(r) for r in await self.pool.fetch(sql, *args)]

    async def ids(self, kind: str, *, owner: str | None = None,
                  parent: str | None = None) -> list[str]:
        where, args = ["kind=$1"], [kind]
        for column, value in (("owner", owner), ("parent", parent)):
            if value is not None:
                args.append(value)
                where.append(f"{column}=${len(args)}")
        sql = (f"SELECT id FROM records WHERE {' AND '.join(where)} "  # noqa: S608
               "ORDER BY id COLLATE \"C\"")
        return [r["id"] for r in await self.pool.fetch(sql, *args)]

    async def commit(self, ops: list[Put | Delete], change: Change) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            revision = int(await conn.fetchval(
                "INSERT INTO changes (kind, instances, nodes) VALUES ($1, $2, $3) "
                "RETURNING revision", change.kind, dump(sorted(set(change.instances))),
                dump(sorted(set(change.nodes)))))
            for op in ops:
                await _apply(conn, op, revision)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(revision))
        return revision

    async def revision(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(revision), 0) FROM changes"))

    async def changes_since(self, revision: int, limit: int = 10000) -> list[ChangeRow]:
        rows = await self.pool.fetch(
            "SELECT revision, kind, instances, nodes FROM changes WHERE revision > $1 "
            "ORDER BY revision LIMIT $2", revision, limit)
        return [ChangeRow(int(r["revision"]), r["kind"], load(r["instances"]),
                          load(r["nodes"])) for r in rows]

    async def first_revision(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MIN(revision), 0) FROM changes"))

    async def prune_changes(self, before: int) -> None:
        await self.pool.execute(
            "DELETE FROM changes WHERE revision < $1 AND revision < "
            "(SELECT MAX(revision) FROM changes)", before)

    async def bindings(self, node: str) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT ifname, server_id FROM bindings WHERE node=$1 ORDER BY ifname COLLATE \"C\"",
            node)
        return [(r["ifname"], r["server_id"]) for r in rows]

    async def put_token(self, digest: str, token: Token) -> None:
        await self.pool.execute("INSERT INTO tokens (digest, kind, subject) VALUES ($1, $2, $3)",
                                digest, token.kind, token.subject)

    async def find_token(self, digest: str) -> Token | None:
        row = await self.pool.fetchrow("SELECT kind, subject FROM tokens WHERE digest=$1",
                                       digest)
        return Token(row["kind"], row["subject"]) if row else None

    async def delete_tokens(self, subject: str) -> None:
        await self.pool.execute("DELETE FROM tokens WHERE subject=$1", subject)

    async def subscribe(self, callback: Any) -> None:
        """LISTEN on a dedicated connection; every process's commit reaches ``callback``."""
        self._callbacks.append(callback)
        if self._listener is None:
            await self._listen()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    def _on_lost(self, conn: Any) -> None:
        """The LISTEN connection died: reconnect, then wake everyone to re-read
        (commits made meanwhile sent notifications nobody heard)."""
        if self._pool is None or self._relisten is not None:
            return
        self._listener = None
        self._relisten = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            while self._pool is not None:
                try:
                    await self._listen()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("LISTEN connection lost, retrying: %s", type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                revision = await self.revision()
                for callback in self._callbacks:
                    callback(revision)
                return
        finally:
            self._relisten = None

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            revision = int(payload)
        except ValueError:
            return
        for callback in self._callbacks:
            callback(revision)


async def _apply(conn: Any, op: Put | Delete, revision: int) -> None:
    current = await conn.fetchval("SELECT revision FROM records WHERE kind=$1 AND id=$2",
                                  op.kind, op.id)
    if isinstance(op, Delete):
        if current is None:
            raise Missing(f"{op.kind} {op.id} not found")
        if op.expect is not None and op.expect != current:
            raise Conflict(f"{op.kind} {op.id} changed (revision {current})")
        await conn.execute("DELETE FROM records WHERE kind=$1 AND id=$2", op.kind, op.id)
        if op.kind == "server":
            await conn.execute("DELETE FROM bindings WHERE server_id=$1", op.id)
        return
    if op.expect is not None and op.expect != (current or 0):
        if op.expect > 0 and current is None:
            raise Missing(f"{op.kind} {op.id} not found")
        raise Conflict(f"{op.kind} {op.id} changed")
    await conn.execute(
        "INSERT INTO records (kind, id, owner, parent, shared, data, revision) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, id) DO UPDATE SET "
        "owner=excluded.owner, parent=excluded.parent, shared=excluded.shared, "
        "data=excluded.data, revision=excluded.revision",
        op.kind, op.id, op.owner, op.parent, op.shared, dump(op.data), revision)
    if op.bindings is not None:
        await conn.execute("DELETE FROM bindings WHERE server_id=$1", op.id)
        for node, ifname in op.bindings:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO bindings (node, ifname, server_id) VALUES ($1, $2, $3)",
                        node, ifname, op.id)
            except asyncpg.UniqueViolationError:
                raise BindingInUse(f"{ifname} on {node} is bound to another server") from None
