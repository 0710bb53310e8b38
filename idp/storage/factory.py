"""Build the stores from settings: SQL for everything, or Redis for the short-lived state plus a
Redis-cached SQL session store when ``redis_url`` is set."""

from __future__ import annotations

from collections.abc import Callable

import redis
from sqlalchemy.orm import sessionmaker as SessionMaker

from idp.storage.base import Stores, StoreUnavailable
from idp.storage.memory import MemoryFlowStore, MemoryOneTimeStore, MemorySessionStore, MemoryThrottleStore
from idp.storage.redis_store import (
    DEFAULT_PREFIX,
    CachedSessionStore,
    RedisFlowStore,
    RedisOneTimeStore,
    RedisThrottleStore,
    redis_guard,
)
from idp.storage.sql import (
    SqlFlowStore,
    SqlOneTimeStore,
    SqlSessionStore,
    SqlThrottleStore,
    db_ping,
)


def redis_client(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client with short timeouts, so an outage turns into StoreUnavailable quickly."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


def _redis_ping(client: redis.Redis) -> None:
    with redis_guard("ping"):
        if not client.ping():
            raise StoreUnavailable("redis did not answer PING")


def make_ping(sm: SessionMaker, client: redis.Redis | None = None) -> Callable[[], None]:
    """A readiness check: SELECT 1 on the database, PING on Redis; raises StoreUnavailable."""

    def ping() -> None:
        db_ping(sm)
        if client is not None:
            _redis_ping(client)

    return ping


def build_stores(settings, sessionmaker: SessionMaker) -> Stores:
    """SQL stores, or Redis ones (sessions: SQL behind a Redis cache) when ``settings.redis_url`` is set.

    The key prefix comes from ``settings.extra["redis_prefix"]`` (default ``idhub:``).
    """
    sql_sessions = SqlSessionStore(sessionmaker)
    url = getattr(settings, "redis_url", None)
    if not url:
        return Stores(
            sessions=sql_sessions,
            one_time=SqlOneTimeStore(sessionmaker),
            throttle=SqlThrottleStore(sessionmaker),
            flows=SqlFlowStore(sessionmaker),
            ping=make_ping(sessionmaker),
        )
    extra = getattr(settings, "extra", None) or {}
    prefix = extra.get("redis_prefix", DEFAULT_PREFIX)
    client = redis_client(url)
    return Stores(
        sessions=CachedSessionStore(sql_sessions, client, prefix),
        one_time=RedisOneTimeStore(client, prefix),
        throttle=RedisThrottleStore(client, prefix),
        flows=RedisFlowStore(client, prefix),
        ping=make_ping(sessionmaker, client),
    )


def build_memory_stores() -> Stores:
    """Embedded stores for tests and single-process demos."""
    return Stores(
        sessions=MemorySessionStore(),
        one_time=MemoryOneTimeStore(),
        throttle=MemoryThrottleStore(),
        flows=MemoryFlowStore(),
        ping=lambda: None,
    )


def purge_expired(stores: Stores) -> int:
    """Periodic cleanup for the SQL stores (Redis expires keys itself); returns rows deleted."""
    total = 0
    for store in (stores.sessions, stores.one_time, stores.throttle, stores.flows):
        store = getattr(store, "sql", store)
        purge = getattr(store, "purge_expired", None)
        if purge is not None:
            total += purge()
    return total
