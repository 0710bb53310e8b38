"""Database engine and the declarative base. No Flask here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, bindparam, create_engine, event, exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.sql.elements import TextClause

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5, pool_timeout: int = 10,
                pool_recycle: int = 1800) -> Engine:
    """An engine; for PostgreSQL a pool of ``pool_size`` connections kept open plus ``max_overflow`` opened under
    load, per process (``IDHUB_DB_POOL_SIZE`` …): a fleet holds nodes × workers × (size + overflow) at most."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: no fsync per commit
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # hide_parameters: an error message must never carry a bound value (codes, token hashes, e-mail addresses)
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout,
                           pool_recycle=pool_recycle if pool_recycle > 0 else -1, hide_parameters=True)
    ping_idle_connections(engine)
    return engine


# A pooled connection that sat idle this long is pinged before use; one used a moment ago is not.
PING_AFTER_IDLE = 5.0  # seconds


def ping_idle_connections(engine: Engine, after: float | None = None) -> None:
    """Pessimistic disconnect handling, only where it pays: ``pool_pre_ping`` costs a ``SELECT 1`` round trip at
    every checkout (several per request), while a connection that was in use moments ago is almost never dead. A
    connection idle for ``PING_AFTER_IDLE`` seconds or more (a database restart, a firewall's idle timeout) is
    pinged at checkout; if the ping fails, the pool throws it away and hands out a fresh one. A connection that
    died in the last few seconds fails its statement instead: the request answers 503 and SQLAlchemy invalidates
    the whole pool, so the next request reconnects."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn, record):
        record.info["idhub_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy):
        since = record.info.pop("idhub_idle_since", None)
        if since is None or time.monotonic() - since < (PING_AFTER_IDLE if after is None else after):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception:
            # one idle connection gone usually means all of them (a restart): drop the pool, retry with a new one
            raise exc.InvalidatePoolError("idle connection is gone") from None


def read_engine(engine: Engine) -> Engine:
    """The same engine and pool, for statements that only read: on PostgreSQL its connections run in autocommit,
    so a read is one round trip (psycopg sends ``BEGIN`` and ``ROLLBACK`` as round trips of their own around a
    read-only transaction: three for one ``SELECT``). Nothing is lost: under READ COMMITTED, PostgreSQL's
    default, every statement takes its own snapshot inside a transaction too. Never write through it (each
    statement would commit on its own). SQLite's driver opens no transaction for a read: the engine itself."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)


@dataclass(frozen=True)
class InsertPart:
    """One INSERT for ``insert_together``: its SQL with named parameters (names unique across the parts of one
    statement) and the types of those parameters (their bind processors apply: JSON, ``UTCDateTime`` …)."""

    sql: str
    types: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def values(cls, table, keys, prefix: str) -> InsertPart:
        """``INSERT INTO table (keys) VALUES (:<prefix><key> …)``, typed by the table's columns."""
        keys = list(keys)
        return cls(f"INSERT INTO {table.name} ({', '.join(keys)}) VALUES "  # noqa: S608 - column names only
                   f"({', '.join(':' + prefix + k for k in keys)})",
                   tuple((prefix + k, table.c[k].type) for k in keys))


_TOGETHER: dict[tuple[InsertPart, ...], TextClause] = {}


def insert_together(conn, parts: list[tuple[InsertPart, dict]]) -> None:
    """Run several INSERTs on ``conn``. On PostgreSQL as one statement — all but the last as data-modifying CTEs
    (``WITH i0 AS (INSERT …), i1 AS (INSERT …) INSERT …``), which PostgreSQL runs exactly once each, to completion:
    one round trip instead of one per INSERT, and atomic on its own, so that on a connection in autocommit the
    rows commit together without the ``BEGIN`` and ``COMMIT`` round trips of a transaction. Elsewhere one after the
    other, in ``conn``'s transaction. The statement is built once per combination of parts (they are constants
    of their modules)."""
    key = tuple(p for p, _ in parts)
    if conn.dialect.name != "postgresql":
        for part, params in parts:
            conn.execute(_statement((part,)), params)
        return
    merged: dict = {}
    for _part, params in parts:
        merged.update(params)
    conn.execute(_statement(key), merged)


def _statement(key: tuple[InsertPart, ...]) -> TextClause:
    stmt = _TOGETHER.get(key)
    if stmt is None:
        *ctes, last = key
        sql = last.sql
        if ctes:
            sql = "WITH " + ", ".join(f"i{n} AS ({p.sql})" for n, p in enumerate(ctes)) + " " + sql
        stmt = text(sql).bindparams(*[bindparam(name, type_=t) for p in key for name, t in p.types])
        _TOGETHER[key] = stmt
    return stmt
