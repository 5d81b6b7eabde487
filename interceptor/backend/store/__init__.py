"""Stores: pick one from the ``database`` option."""

from __future__ import annotations

from interceptor.backend.store.base import Store


def sqlite_path(database: str) -> str | None:
    """The file of an SQLite ``database`` option, or None for PostgreSQL."""
    if database.startswith(("postgresql://", "postgres://")):
        return None
    return database.removeprefix("sqlite://") if database.startswith("sqlite://") else database


def open_store(database: str) -> Store:
    """A (not yet opened) store for the ``database`` option."""
    path = sqlite_path(database)
    if path is None:
        from interceptor.backend.store.postgres import PostgresStore
        return PostgresStore(database)
    from interceptor.backend.store.sqlite import SqliteStore
    return SqliteStore(path)
