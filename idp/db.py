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
    """One INSERT for ``insert_together``: ``INSERT INTO t (columns)`` and the SELECT of its rows (no WHERE, so
    that a guarded statement can add one), with named parameters (names unique across the parts of one statement)
    and the types of those parameters (their bind processors apply: JSON, ``UTCDateTime`` …)."""

    into: str
    rows: str
    types: tuple[tuple[str, Any], ...] = ()

    @property
    def sql(self) -> str:
        return f"{self.into} {self.rows}"

    @classmethod
    def values(cls, table, keys, prefix: str) -> InsertPart:
        """One row: ``INSERT INTO table (keys) SELECT :<prefix><key> …``, typed by the table's columns (PostgreSQL
        gives the parameters of an INSERT … SELECT the target columns' types, as with VALUES)."""
        keys = list(keys)
        return cls(f"INSERT INTO {table.name} ({', '.join(keys)})",
                   f"SELECT {', '.join(':' + prefix + k for k in keys)}",  # noqa: S608 - column names only
                   tuple((prefix + k, table.c[k].type) for k in keys))


_TOGETHER: dict[tuple, TextClause] = {}


def insert_together(conn, parts: list[tuple[InsertPart, dict]],
                    guards: list[tuple[str, dict]] | None = None) -> list[bool] | None:
    """Run several INSERTs on ``conn``. On PostgreSQL as one statement — all but the last as data-modifying CTEs
    (``WITH i0 AS (INSERT …), i1 AS (INSERT …) INSERT …``), which PostgreSQL runs exactly once each, to completion:
    one round trip instead of one per INSERT, and atomic on its own, so that on a connection in autocommit the
    rows commit together without the ``BEGIN`` and ``COMMIT`` round trips of a transaction. Elsewhere one after the
    other, in ``conn``'s transaction. The statement is built once per combination of parts (they are constants
    of their modules).

    ``guards``: conditions (SQL that is true or false, and its parameters) evaluated in the same statement, on its
    snapshot, before anything is written: the first part is inserted only if all of them hold, the others only
    with it (``WHERE EXISTS`` on its ``RETURNING``). Returns each guard's value (nothing was written unless all are
    true); None without guards. Elsewhere than PostgreSQL the guards are read first, in ``conn``'s transaction."""
    if conn.dialect.name != "postgresql":
        if guards:
            held = [bool(conn.execute(text("SELECT " + sql), params).scalar()) for sql, params in guards]
            if not all(held):
                return held
        for part, params in parts:
            conn.execute(_statement((part,)), params)
        return [True] * len(guards) if guards else None
    merged: dict = {}
    for _part, params in parts:
        merged.update(params)
    if not guards:
        conn.execute(_statement(tuple(p for p, _ in parts)), merged)
        return None
    for _sql, params in guards:
        merged.update(params)
    row = conn.execute(_guarded(tuple(p for p, _ in parts), tuple(sql for sql, _ in guards)), merged).one()
    return [bool(v) for v in row]


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


def _guarded(parts: tuple[InsertPart, ...], guards: tuple[str, ...]) -> TextClause:
    """``WITH g AS (SELECT <guard> AS g0, …), i0 AS (INSERT … SELECT … WHERE <all of g> RETURNING 1),
    i1 AS (INSERT … SELECT … WHERE EXISTS (SELECT FROM i0)), … SELECT g0, … FROM g``."""
    key = (parts, guards)
    stmt = _TOGETHER.get(key)
    if stmt is None:
        names = [f"g{n}" for n in range(len(guards))]
        ctes = ["g AS (SELECT " + ", ".join(f"{sql} AS {name}" for sql, name in zip(guards, names, strict=True)) + ")"]
        for n, p in enumerate(parts):
            # (the SQL here is the callers' constants and generated names, never input)
            cond = f"(SELECT {' AND '.join(names)} FROM g)" if n == 0 else "EXISTS (SELECT FROM i0)"  # noqa: S608
            ctes.append(f"i{n} AS ({p.sql} WHERE {cond}{' RETURNING 1' if n == 0 else ''})")
        sql = "WITH " + ", ".join(ctes) + f" SELECT {', '.join(names)} FROM g"  # noqa: S608
        stmt = text(sql).bindparams(*[bindparam(name, type_=t) for p in parts for name, t in p.types])
        _TOGETHER[key] = stmt
    return stmt
