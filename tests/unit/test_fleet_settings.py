"""The fleet settings: database pool, Redis timeouts, session recheck, refresh grace; defaults fit 2 nodes x 4
workers under PostgreSQL's default max_connections (100)."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError, load_settings
from idp.db import make_engine

KEY = {"IDHUB_SECRET_KEY": "k" * 40}


def test_defaults_fit_a_two_node_fleet_under_postgres_default_limit():
    s = load_settings(dict(KEY))
    assert 2 * 4 * (s.db_pool_size + s.db_max_overflow) <= 100 - 3 - 10  # superuser slots, idhub commands
    assert (s.redis_timeout, s.redis_retry_interval, s.session_recheck, s.oidc_refresh_grace) == (0.5, 5.0, 1.0, 10)


def test_values_are_read_and_checked():
    s = load_settings({**KEY, "IDHUB_DB_POOL_SIZE": "3", "IDHUB_DB_MAX_OVERFLOW": "0", "IDHUB_DB_POOL_TIMEOUT": "2",
                       "IDHUB_DB_POOL_RECYCLE": "600", "IDHUB_REDIS_TIMEOUT": "0.2",
                       "IDHUB_REDIS_RETRY_INTERVAL": "2", "IDHUB_SESSION_RECHECK": "0.5",
                       "IDHUB_OIDC_REFRESH_GRACE": "0"})
    assert (s.db_pool_size, s.db_max_overflow, s.db_pool_timeout, s.db_pool_recycle) == (3, 0, 2, 600)
    assert (s.redis_timeout, s.redis_retry_interval, s.session_recheck, s.oidc_refresh_grace) == (0.2, 2.0, 0.5, 0)
    for name, bad in (("IDHUB_DB_POOL_SIZE", "0"), ("IDHUB_DB_POOL_SIZE", "ten"), ("IDHUB_SESSION_RECHECK", "60"),
                      ("IDHUB_OIDC_REFRESH_GRACE", "3600"), ("IDHUB_REDIS_TIMEOUT", "nan")):
        with pytest.raises(SettingsError, match=name):
            load_settings({**KEY, name: bad})


def test_the_engine_gets_the_pool_settings():
    s = Settings(db_pool_size=3, db_max_overflow=2, db_pool_timeout=7, db_pool_recycle=900)
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool_size=s.db_pool_size,
                         max_overflow=s.db_max_overflow, pool_timeout=s.db_pool_timeout,
                         pool_recycle=s.db_pool_recycle)
    try:
        pool = engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (3, 2, 7, 900)
    finally:
        engine.dispose()


def test_a_pool_with_every_connection_busy_is_an_outage_not_a_bug():
    """Waiting IDHUB_DB_POOL_TIMEOUT seconds for a connection ends in 503 + Retry-After, never a 500."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from idp.outage import is_unavailable

    assert is_unavailable(PoolTimeout("QueuePool limit of size 5 overflow 5 reached"))
    assert not is_unavailable(ValueError("a bug"))
