"""Redis first, the database when Redis is away: one-time values, throttles and login flows keep working (and keep
protecting) through a Redis outage, so sign-in does not depend on Redis.

Security checks never fail open: while Redis is away (its circuit breaker open, ``idp.storage.breaker``) the same
checks run against the database tables the SQL-only deployment uses. What changes across the switch:

- one-time values written during the outage live in the database; reads that miss in Redis look there too, so a
  code or login flow issued during the outage still works afterwards, and replay caches (``add``) check both
  places, so a value used during the outage cannot be used again after it;
- failure counters (``record_failure``) are kept where they were counted; a check adds the two counts and takes
  the later block, so an outage never lets an attacker start from zero;
- fixed-window rate limits (``hit``) count in one place at a time: across a switch a window may admit up to twice
  its limit once.

A value written to Redis just before it froze may be lost (a login flow: the user starts again; a code: the app
retries the sign-in). Nothing is acknowledged from a store that failed.
"""

from __future__ import annotations

from datetime import datetime

from idp.storage.base import Backoff, StoreUnavailable, ThrottleState
from idp.storage.redis_store import RedisFlowStore, RedisOneTimeStore, RedisThrottleStore
from idp.storage.sql import SqlFlowStore, SqlOneTimeStore, SqlThrottleStore


class FailoverOneTimeStore:
    def __init__(self, redis: RedisOneTimeStore, sql: SqlOneTimeStore) -> None:
        self.redis, self.sql = redis, sql

    def put(self, key: str, value: str, ttl: int) -> None:
        try:
            self.redis.put(key, value, ttl)
        except StoreUnavailable:
            self.sql.put(key, value, ttl)

    def add(self, key: str, value: str, ttl: int) -> bool:
        """Taken if it is taken in either place (a replay cache must remember what the outage saw)."""
        try:
            added = self.redis.add(key, value, ttl)
        except StoreUnavailable:
            return self.sql.add(key, value, ttl)
        if not added:
            return False
        if self.sql.get(key) is not None:
            self.redis.delete(key)  # only the first of the two writers wins; ours was the second
            return False
        return True

    def get(self, key: str) -> str | None:
        try:
            found = self.redis.get(key)
        except StoreUnavailable:
            found = None
        return found if found is not None else self.sql.get(key)

    def consume(self, key: str) -> str | None:
        try:
            found = self.redis.consume(key)
        except StoreUnavailable:
            found = None
        return found if found is not None else self.sql.consume(key)

    def delete(self, key: str) -> None:
        try:
            if self.redis.delete(key):
                return
        except StoreUnavailable:
            pass
        self.sql.delete(key)


def _combine(a: ThrottleState, b: ThrottleState) -> ThrottleState:
    blocked = [t for t in (a.blocked_until, b.blocked_until) if t is not None]
    return ThrottleState(a.failures + b.failures, max(blocked) if blocked else None)


class FailoverThrottleStore:
    def __init__(self, redis: RedisThrottleStore, sql: SqlThrottleStore) -> None:
        self.redis, self.sql = redis, sql

    def state(self, key: str, now: datetime) -> ThrottleState:
        return self.states([key], now)[0]

    def states(self, keys: list[str], now: datetime) -> list[ThrottleState]:
        in_sql = self.sql.states(keys, now)
        try:
            in_redis = self.redis.states(keys, now)
        except StoreUnavailable:
            return in_sql
        return [_combine(r, s) for r, s in zip(in_redis, in_sql, strict=True)]

    def record_failure(self, key: str, now: datetime, backoff: Backoff) -> ThrottleState:
        try:
            counted = self.redis.record_failure(key, now, backoff)
        except StoreUnavailable:
            return self.sql.record_failure(key, now, backoff)
        return _combine(counted, self.sql.state(key, now))

    def reset(self, key: str) -> None:
        try:
            self.redis.reset(key)
        except StoreUnavailable:
            pass
        self.sql.reset(key)

    def hit(self, key: str, limit: int, window: int, now: datetime) -> bool:
        try:
            return self.redis.hit(key, limit, window, now)
        except StoreUnavailable:
            return self.sql.hit(key, limit, window, now)


class FailoverFlowStore:
    def __init__(self, redis: RedisFlowStore, sql: SqlFlowStore) -> None:
        self.redis, self.sql = redis, sql

    def create(self, flow_id: str, data: dict, ttl: int) -> None:
        try:
            self.redis.create(flow_id, data, ttl)
        except StoreUnavailable:
            self.sql.create(flow_id, data, ttl)

    def get(self, flow_id: str) -> dict | None:
        try:
            found = self.redis.get(flow_id)
        except StoreUnavailable:
            found = None
        return found if found is not None else self.sql.get(flow_id)

    def update(self, flow_id: str, data: dict, ttl: int) -> bool:
        """Where the flow lives: Redis, else the database (a flow started during an outage)."""
        try:
            if self.redis.update(flow_id, data, ttl):
                return True
        except StoreUnavailable:
            pass
        return self.sql.update(flow_id, data, ttl)

    def delete(self, flow_id: str) -> None:
        try:
            if self.redis.delete(flow_id):
                return
        except StoreUnavailable:
            pass
        self.sql.delete(flow_id)
