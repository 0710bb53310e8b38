"""Build the stores from settings: SQL for everything, or, when ``redis_url`` is set, Redis for the short-lived
state (falling back to SQL while Redis is away) plus a Redis-cached SQL session store."""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import sessionmaker as SessionMaker

from idp.storage.base import Stores, StoreUnavailable
from idp.storage.breaker import Breaker
from idp.storage.failover import FailoverFlowStore, FailoverOneTimeStore, FailoverThrottleStore
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


def redis_client(url: str, timeout: float = 0.5, retry_interval: float = 5.0) -> redis.Redis:
    """A client with short timeouts and no retries, behind a circuit breaker (``client.idhub_breaker``): an outage
    turns into StoreUnavailable quickly, and a frozen Redis costs one timeout per ``retry_interval``, not one per
    call."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    client.idhub_breaker = Breaker("redis", period=retry_interval)
    return client


def _redis_ping(client: redis.Redis) -> None:
    with redis_guard("ping", getattr(client, "idhub_breaker", None)):
        if not client.ping():
            raise StoreUnavailable("redis did not answer PING")


def make_ping(sm: SessionMaker, client: redis.Redis | None = None) -> Callable[[], None]:
    """A readiness check: SELECT 1 on the database, PING on Redis; raises StoreUnavailable."""

    def ping() -> None:
        db_ping(sm)
        if client is not None:
            _redis_ping(client)

    return ping


def make_health(sm: SessionMaker, client: redis.Redis | None = None) -> Callable[[], dict[str, str]]:
    """Each backend's state for /readyz: {"database": "ok"|"unavailable", "redis": "ok"|"degraded"}. The database
    is asked (SELECT 1); Redis through its breaker (an open circuit answers "degraded" without a network call)."""

    def health() -> dict[str, str]:
        out = {}
        try:
            db_ping(sm)
            out["database"] = "ok"
        except StoreUnavailable:
            out["database"] = "unavailable"
        if client is not None:
            try:
                _redis_ping(client)
                out["redis"] = "ok"
            except StoreUnavailable:
                out["redis"] = "degraded"
        return out

    return health


def _report_redis(up: bool) -> None:
    from idp import metrics

    metrics.BACKEND_UP.labels(backend="redis").set(1 if up else 0)
    if not up:
        metrics.REDIS_BREAKER_OPENED.inc()


def _report_redis_start() -> None:
    from idp import metrics

    metrics.BACKEND_UP.labels(backend="redis").set(1)  # until a call finds it away


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
            health=make_health(sessionmaker),
        )
    extra = getattr(settings, "extra", None) or {}
    prefix = extra.get("redis_prefix", DEFAULT_PREFIX)
    client = redis_client(url, timeout=getattr(settings, "redis_timeout", 0.5),
                          retry_interval=getattr(settings, "redis_retry_interval", 5.0))
    client.idhub_breaker.listeners.append(_report_redis)
    _report_redis_start()
    return Stores(
        sessions=CachedSessionStore(sql_sessions, client, prefix, recheck=getattr(settings, "session_recheck", 1.0)),
        one_time=FailoverOneTimeStore(RedisOneTimeStore(client, prefix), SqlOneTimeStore(sessionmaker)),
        throttle=FailoverThrottleStore(RedisThrottleStore(client, prefix), SqlThrottleStore(sessionmaker)),
        flows=FailoverFlowStore(RedisFlowStore(client, prefix), SqlFlowStore(sessionmaker)),
        ping=make_ping(sessionmaker, client),
        health=make_health(sessionmaker, client),
    )


def build_memory_stores() -> Stores:
    """Embedded stores for tests and single-process demos."""
    return Stores(
        sessions=MemorySessionStore(),
        one_time=MemoryOneTimeStore(),
        throttle=MemoryThrottleStore(),
        flows=MemoryFlowStore(),
        ping=lambda: None,
        health=lambda: {"database": "ok"},
    )


def purge_expired(stores: Stores) -> int:
    """Periodic cleanup for the SQL stores (Redis expires keys itself; the database also holds what was written
    during a Redis outage); returns rows deleted."""
    total = 0
    for store in (stores.sessions, stores.one_time, stores.throttle, stores.flows):
        store = getattr(store, "sql", store)
        purge = getattr(store, "purge_expired", None)
        if purge is not None:
            total += purge()
    return total
