"""Pooled PostgreSQL connections that died while idle (a restart, a firewall's idle timeout) are replaced before
use; ``idp.db`` pings only connections idle for ``PING_AFTER_IDLE`` seconds, not at every checkout."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from idp import db as idp_db
from tests.services import drop_postgres, postgres_url


@pytest.fixture
def pg():
    url = postgres_url()
    yield url
    drop_postgres(url)


def _pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _kill(url: str, pid: int) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def test_an_idle_connection_that_died_is_replaced(pg, monkeypatch):
    monkeypatch.setattr(idp_db, "PING_AFTER_IDLE", 0.0)  # every pooled connection counts as idle
    engine = idp_db.make_engine(pg)
    try:
        first = _pid(engine)
        _kill(pg, first)
        second = _pid(engine)  # the ping at checkout saw the dead connection; no error reached the caller
        assert second != first
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(pg, monkeypatch):
    monkeypatch.setattr(idp_db, "PING_AFTER_IDLE", 3600.0)
    engine = idp_db.make_engine(pg)
    try:
        first = _pid(engine)
        _kill(pg, first)
        # Not pinged: the statement fails (the web layer answers 503), the pool is invalidated ...
        with pytest.raises(OperationalError):
            _pid(engine)
        # ... and the next checkout connects afresh.
        assert _pid(engine) != first
    finally:
        engine.dispose()
