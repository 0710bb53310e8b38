"""Redis stores (redis-py). Every key lives under a prefix (default ``idhub:``).

One-time values, throttles and flows fail closed: a Redis outage raises ``StoreUnavailable``.
Sessions are different: the database is the source of truth and Redis only a cache in front of it
(``CachedSessionStore``), so an outage slows sign-ins down but never signs anyone out or forgets a
revocation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from idp.storage.base import Backoff, SessionData, StoreUnavailable, ThrottleState
from idp.storage.breaker import CLOSED, Breaker
from idp.storage.memory import TOUCH_WRITE_INTERVAL, as_utc, check_ttl, window_start
from idp.storage.sql import SqlSessionStore

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "idhub:"
SESSION_CACHE_TTL = 300
# No node trusts a cached session for longer than this without reading the database's change records: the bound on
# how long a revocation that could not reach Redis can be missed.
SESSION_RECHECK = 1.0
CHANGE_MARGIN = 10.0  # seconds of change records read back (writers' clocks, commit delays)
T = TypeVar("T")
_OUTAGE = (RedisConnectionError, RedisTimeoutError)


def _text(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _micros(dt: datetime) -> int:
    """Exact integer microseconds since the epoch (Lua numbers hold them without loss)."""
    delta = as_utc(dt) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@contextmanager
def redis_guard(what: str, breaker: Breaker | None = None) -> Iterator[None]:
    """Redis errors → ``StoreUnavailable``. With a breaker: an open circuit fails at once without a network call,
    an outage error opens it, a success closes it."""
    if breaker is not None and not breaker.allow():
        raise StoreUnavailable("redis unavailable (circuit open)")
    try:
        yield
    except _OUTAGE as exc:
        if breaker is not None:
            breaker.failure()
        log.warning("redis unavailable (%s): %s", what, type(exc).__name__)
        raise StoreUnavailable(f"redis unavailable ({type(exc).__name__})") from None
    except Exception:
        if breaker is not None:
            breaker.success()  # Redis answered (with an error of ours): it is there
        raise
    except BaseException:  # interrupted (worker shutdown): no verdict, but never leave a trial call hanging
        if breaker is not None:
            breaker.abandon()
        raise
    if breaker is not None:
        breaker.success()


def breaker_of(client: redis.Redis) -> Breaker:
    """The process's breaker for this client (``factory.redis_client`` sets one; else one is made)."""
    found = getattr(client, "idhub_breaker", None)
    if found is None:
        found = Breaker("redis")
        client.idhub_breaker = found
    return found


class _RedisStore:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._r = client
        self._prefix = prefix
        self.breaker = breaker_of(client)

    def _guard(self, what: str):
        return redis_guard(what, self.breaker)


class RedisOneTimeStore(_RedisStore):
    """``SET NX EX`` for ``add``, ``GETDEL`` for ``consume``: atomic in Redis itself."""

    def _k(self, key: str) -> str:
        return f"{self._prefix}ot:{key}"

    def put(self, key: str, value: str, ttl: int) -> None:
        with self._guard("one-time put"):
            self._r.set(self._k(key), value, ex=check_ttl(ttl))

    def add(self, key: str, value: str, ttl: int) -> bool:
        with self._guard("one-time add"):
            return bool(self._r.set(self._k(key), value, ex=check_ttl(ttl), nx=True))

    def get(self, key: str) -> str | None:
        with self._guard("one-time get"):
            return _text(self._r.get(self._k(key)))

    def consume(self, key: str) -> str | None:
        with self._guard("one-time consume"):
            return _text(self._r.getdel(self._k(key)))

    def delete(self, key: str) -> int:
        """How many keys were deleted (0 or 1)."""
        with self._guard("one-time delete"):
            return int(self._r.delete(self._k(key)))


# Hash fields: n = failures, forget = microseconds at which they are forgotten, delay = seconds blocked
# after the last failure, last = microseconds of the last failure.
_RECORD_FAILURE = """
local now = tonumber(ARGV[1])
local n = 0
local forget = tonumber(redis.call('HGET', KEYS[1], 'forget') or '0')
if forget > now then n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0') end
n = n + 1
local free, base, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local delay = 0
if n > free then delay = math.min(cap, base * 2 ^ math.min(n - free - 1, 30)) end
redis.call('HSET', KEYS[1], 'n', n, 'last', ARGV[1], 'forget', now + tonumber(ARGV[2]) * 1000000,
           'delay', delay)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + delay + 60)
return n
"""

_HIT = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return c
"""


class RedisThrottleStore(_RedisStore):
    """Failure counting and blocking in one Lua script; fixed windows with INCR + EXPIRE."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._record = client.register_script(_RECORD_FAILURE)
        self._hit = client.register_script(_HIT)

    def _k(self, key: str) -> str:
        return f"{self._prefix}thr:{key}"

    def state(self, key: str, now: datetime) -> ThrottleState:
        with self._guard("throttle state"):
            found = self._r.hmget(self._k(key), ["n", "last", "forget", "delay"])
        return self._state(found, now)

    @staticmethod
    def _state(found, now: datetime) -> ThrottleState:
        n, last, forget, delay = found
        if n is None or int(float(forget)) <= _micros(now):
            return ThrottleState(0, None)
        delay = int(float(delay))
        blocked = _from_micros(int(last)) + timedelta(seconds=delay) if delay else None
        return ThrottleState(int(n), blocked)

    def states(self, keys: list[str], now: datetime) -> list[ThrottleState]:
        with self._guard("throttle state"):
            pipe = self._r.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self._k(key), ["n", "last", "forget", "delay"])
            found = pipe.execute()
        return [self._state(f, now) for f in found]

    def record_failure(self, key: str, now: datetime, backoff: Backoff) -> ThrottleState:
        now = as_utc(now)
        args = [_micros(now), backoff.window, backoff.free, backoff.base, backoff.cap]
        with self._guard("throttle record_failure"):
            failures = int(self._record(keys=[self._k(key)], args=args))
        delay = backoff.delay(failures)
        return ThrottleState(failures, now + timedelta(seconds=delay) if delay else None)

    def reset(self, key: str) -> None:
        with self._guard("throttle reset"):
            self._r.delete(self._k(key))

    def hit(self, key: str, limit: int, window: int, now: datetime) -> bool:
        start = window_start(now, window)
        with self._guard("throttle hit"):
            hits = int(self._hit(keys=[f"{self._prefix}rate:{key}:{start}"], args=[window + 60]))
        return hits <= limit


class RedisFlowStore(_RedisStore):
    """Flows as JSON strings with ``EX``; ``update`` uses ``SET XX`` so a gone flow stays gone."""

    def _k(self, flow_id: str) -> str:
        return f"{self._prefix}flow:{flow_id}"

    def create(self, flow_id: str, data: dict, ttl: int) -> None:
        with self._guard("flow create"):
            self._r.set(self._k(flow_id), json.dumps(data), ex=check_ttl(ttl))

    def get(self, flow_id: str) -> dict | None:
        with self._guard("flow get"):
            raw = self._r.get(self._k(flow_id))
        return json.loads(raw) if raw is not None else None

    def update(self, flow_id: str, data: dict, ttl: int) -> bool:
        with self._guard("flow update"):
            return bool(self._r.set(self._k(flow_id), json.dumps(data), ex=check_ttl(ttl), xx=True))

    def delete(self, flow_id: str) -> int:
        """How many keys were deleted (0 or 1)."""
        with self._guard("flow delete"):
            return int(self._r.delete(self._k(flow_id)))


# Cached sessions are hashes: data = SessionData JSON, la = last activity (µs), db = last activity the
# database is known to hold (µs), exp = absolute expiry (µs), idle = idle timeout (s).
# A revocation replaces the hash by a tombstone {tomb = 1}: readers then go to the database, and a fill
# racing with the revocation cannot put the old state back (fills only write absent keys).
_FILL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'la', ARGV[2], 'db', ARGV[2], 'exp', ARGV[3], 'idle', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Returns -1 when not cached (or a tombstone), -2 when the cached session is no longer active,
# 1 when the database should be written, 0 when the database write can wait.
_TOUCH = """
local v = redis.call('HMGET', KEYS[1], 'la', 'db', 'exp', 'idle')
if not v[1] then return -1 end
local now, la, db = tonumber(ARGV[1]), tonumber(v[1]), tonumber(v[2])
if now >= tonumber(v[3]) or now >= la + tonumber(v[4]) * 1000000 then return -2 end
if now > la then redis.call('HSET', KEYS[1], 'la', ARGV[1]) end
if now - db >= tonumber(ARGV[2]) * 1000000 then
  redis.call('HSET', KEYS[1], 'db', ARGV[1])
  return 1
end
return 0
"""


class CachedSessionStore:
    """Sessions in SQL with a Redis read cache.

    The database is the authority. Ending or renewing a session writes the session row and a ``session_changes``
    record in one transaction, then tombstones the cached copy (at once, for every node, when Redis answers).
    Because the tombstone may not arrive (this node cannot reach Redis, or Redis froze), no node trusts a cached
    copy for longer than ``recheck`` seconds without asking the database which sessions changed since its last
    look (one indexed query per process per ``recheck`` seconds, not per request). A session listed there is read
    from the database for as long as a cached copy made before the change could live (the cache TTL), and its
    cache key is deleted. So a change committed at time T is honoured by every node for every request that starts
    after T + ``recheck``, whatever Redis does. A Redis outage never wipes the cache: there is nothing to repair
    beyond the keys the change records name.
    """

    def __init__(
        self,
        sql: SqlSessionStore,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = SESSION_CACHE_TTL,
        recheck: float = SESSION_RECHECK,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sql = sql
        self._r = client
        self._prefix = prefix
        self._ttl = ttl
        self.recheck = recheck
        self.breaker = breaker_of(client)
        self._fill = client.register_script(_FILL)
        self._touch = client.register_script(_TOUCH)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._checked_at: float | None = None  # monotonic time of the last look at the change records
        self._since: datetime | None = None  # the next look reads changes from here on
        self._stale: dict[str, float] = {}  # session id -> monotonic time until which its cached copy is not used
        self._undeleted: set[str] = set()  # stale ids whose cache key could not be deleted yet
        self.rechecks = 0  # looks at the change records (for tests)

    def _k(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    # -- the change records ---------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Read the change records when the last look is ``recheck`` seconds old (one thread does, the others of
        the process wait for it). Raises StoreUnavailable when the database cannot be read: a node that cannot
        know about revocations does not serve cached sessions."""
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self.recheck:
            return
        with self._lock:
            now = self._clock()
            if self._checked_at is not None and now - self._checked_at < self.recheck:
                return
            started, wall = now, self._wall()
            # Writers stamp changes with their own clock, in transactions that may commit a moment after the
            # stamp: read back CHANGE_MARGIN seconds (ids already known cost nothing).
            since = (self._since or wall - timedelta(seconds=self._ttl)) - timedelta(seconds=CHANGE_MARGIN)
            ids = self.sql.changes_since(since)
            self.rechecks += 1
            until = started + self._ttl + CHANGE_MARGIN
            for sid in ids:
                if sid not in self._stale:
                    self._undeleted.add(sid)
                self._stale[sid] = max(self._stale.get(sid, 0.0), until)
            if len(self._stale) > 1024:
                self._stale = {k: v for k, v in self._stale.items() if v > started}
            self._since, self._checked_at = wall, started
        self._drop_stale_keys()

    def _drop_stale_keys(self) -> None:
        """Delete the cache keys of sessions changed elsewhere (hygiene: they are not trusted anyway)."""
        if not self._undeleted or self.breaker.state != CLOSED:  # never the breaker's trial call: requests make it
            return
        with self._lock:
            batch, self._undeleted = list(self._undeleted), set()
        try:
            with redis_guard("session cache repair", self.breaker):
                for i in range(0, len(batch), 500):
                    self._r.delete(*(self._k(sid) for sid in batch[i:i + 500]))
        except StoreUnavailable:
            with self._lock:
                self._undeleted.update(batch)

    def _trusted(self, session_id: str) -> bool:
        until = self._stale.get(session_id)
        return until is None or until <= self._clock()

    # -- Redis access, through the breaker ------------------------------------------------------------------
    def _cache(self, what: str, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run ``fn`` against Redis; (False, None) when Redis is away (the caller uses the database)."""
        try:
            with redis_guard(what, self.breaker):
                return True, fn()
        except StoreUnavailable:
            return False, None

    def _put(self, data: SessionData) -> None:
        args = [
            json.dumps(data.to_dict()),
            _micros(data.last_active_at),
            _micros(data.expires_at),
            data.idle_timeout,
            self._ttl,
        ]
        self._cache("fill", lambda: self._fill(keys=[self._k(data.id)], args=args))

    def _tombstone(self, ids: list[str]) -> None:
        if not ids:
            return

        def write() -> None:
            pipe = self._r.pipeline(transaction=True)
            for sid in ids:
                pipe.delete(self._k(sid))
                pipe.hset(self._k(sid), "tomb", "1")
                pipe.expire(self._k(sid), self._ttl)
            pipe.execute()

        self._cache("revoke", write)  # if Redis is away, the change records tell every node

    # -- the store ------------------------------------------------------------------------------------------
    def create(self, data: SessionData) -> None:
        self.sql.create(data)
        self._put(data)

    def get(self, session_id: str) -> SessionData | None:
        self._refresh()
        trusted = self._trusted(session_id)
        ok, cached = self._cache("get", lambda: self._r.hgetall(self._k(session_id))) if trusted else (False, None)
        if ok and cached:
            cached = {_text(k): _text(v) for k, v in cached.items()}
            if "data" in cached:
                data = SessionData.from_dict(json.loads(cached["data"]))
                data.last_active_at = _from_micros(int(cached["la"]))
                if data.is_active():
                    return data
                # an inactive copy (idle by the cache's activity time): the database may know better
            return self.sql.get(session_id)  # tombstone: the database has the revocation
        data = self.sql.get(session_id)
        if data is not None and ok:
            self._put(data)
        return data

    def touch(self, session_id: str, now: datetime) -> None:
        args = [_micros(now), TOUCH_WRITE_INTERVAL]
        ok, result = self._cache("touch", lambda: self._touch(keys=[self._k(session_id)], args=args))
        if not ok or int(result) in (-1, 1):
            self.sql.touch(session_id, now)

    def revoke(self, session_id: str, reason: str) -> bool:
        was_active = self.sql.revoke(session_id, reason)
        self._tombstone([session_id])
        return was_active

    def get_by_token(self, token_hash: str) -> SessionData | None:
        """A renewed cookie: the cache keeps an alias from its hash to the session's id (the session itself is
        cached, and tombstoned, under its id); on a miss, the database."""
        alias = self._k("tok:" + token_hash)
        ok, sid = self._cache("get", lambda: self._r.get(alias))
        if ok and sid:
            data = self.get(_text(sid))
            if data is not None and data.token_hash == token_hash:
                return data
        data = self.sql.get_by_token(token_hash)
        if data is not None:
            self._put(data)
            self._cache("fill", lambda: self._r.set(alias, data.id, ex=self._ttl))
        return data

    def upgrade(self, session_id: str, amr: list[str], auth_time: datetime, token_hash: str) -> SessionData | None:
        """In the database (with a change record), then the cached copy dropped (every node reads the upgrade, and
        refuses the old cookie, from there)."""
        data = self.sql.upgrade(session_id, amr, auth_time, token_hash)
        self._cache("upgrade", lambda: self._r.delete(self._k(session_id)))
        return data

    def revoke_user(self, user_id: str, reason: str, except_id: str | None = None) -> list[str]:
        ended, revoked = self.sql.revoke_user_all(user_id, reason, except_id)
        self._tombstone(revoked)
        return ended

    def list_user(self, user_id: str, now: datetime | None = None) -> list[SessionData]:
        return self.sql.list_user(user_id, now)

    def get_public(self, user_id: str, public_id: str) -> SessionData | None:
        return self.sql.get_public(user_id, public_id)
