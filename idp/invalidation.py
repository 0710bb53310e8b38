"""Cross-node invalidation of the per-process caches.

Every serving process keeps a few small caches (see docs/operations.md for the list): SAML apps, signing keys,
the sign-in page's routing, SCIM token callers. A change made anywhere — in another worker, on another node, by
``idhub apply`` or another command — must drop them everywhere at once. It does so in two ways:

- **Redis pub/sub**: ``publish(kind, key)`` sends ``{"kind", "key"}`` on the channel ``<prefix>invalidate``; every
  process has a subscriber thread that drops its caches of that kind as the message arrives.
- **A version row per kind in the database** (table ``cache_versions``): ``publish`` also bumps it, in its own
  transaction, after the change is committed. Every process reads the few rows at most every ``CHECK_INTERVAL``
  seconds (one small query, made by a request) and drops the caches of each kind whose version moved. This is
  what holds when Redis is down, a message was lost, or a process runs without Redis at all.

So a change is enforced by every node within ``CHECK_INTERVAL`` plus one request, whatever happens to Redis.

Caches do not register callbacks: they keep, with each entry, the *generation* of its kind (``generation(kind)``)
read **before** they loaded it, and use an entry only while the generation is unchanged. A reload racing with an
invalidation therefore never keeps the stale copy. Generations are process-wide (module state), so several hubs
in one process (tests) only ever see extra misses.

Fork safety: nothing starts at import. The subscriber thread starts on the first ``check()`` of a process (a
request), and a forked worker, which has no copy of its parent's thread, starts its own (``os.getpid`` changed).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, String, Table, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from idp.db import Base
from idp.models import UTCDateTime

log = logging.getLogger("idhub.invalidation")

# The kinds of change, each dropping the caches named after it.
SAML_APPS = "saml_apps"  # a SAML service provider registered, changed (assignment, settings) or removed
SAML_KEYS = "saml_keys"  # a SAML signing key staged, rolled over or revoked
OIDC_KEYS = "oidc_keys"  # an OIDC signing key rotated or revoked
CONNECTIONS = "connections"  # an upstream connection added, changed or removed
SCIM_TOKENS = "scim_tokens"  # a SCIM token revoked (or the tokens replaced by apply)
WORKSPACES = "workspaces"  # a workspace's identity (slug) or settings changed
KINDS = (SAML_APPS, SAML_KEYS, OIDC_KEYS, CONNECTIONS, SCIM_TOKENS, WORKSPACES)

CHECK_INTERVAL = 0.5  # seconds: how often a process reads the version rows (at most; only when it serves)
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0  # seconds between two attempts of the subscriber to reach Redis

cache_versions = Table(
    "cache_versions", Base.metadata,
    Column("kind", String(40), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("changed_at", UTCDateTime(), nullable=True),
)

_generations: dict[str, int] = dict.fromkeys(KINDS, 0)
_lock = threading.Lock()


def generation(kind: str) -> int:
    """The process's generation of ``kind``: a cache entry stamped with an older one is stale."""
    return _generations.get(kind, 0)


def drop(kind: str, key: str | None = None) -> None:
    """Drop this process's caches of ``kind`` (all its keys: changes are rare, reloads cheap)."""
    with _lock:
        _generations[kind] = _generations.get(kind, 0) + 1
    log.debug("caches dropped", extra={"kind": kind, "key": key})


class Invalidation:
    """The publisher and the listener of one process. ``engine``: the database's; ``redis_url``: None without
    Redis (then the database rows alone carry changes between processes)."""

    def __init__(self, engine, redis_url: str | None = None, prefix: str = "idhub:",
                 interval: float = CHECK_INTERVAL, clock=time.monotonic):
        self.engine = engine
        self.redis_url = redis_url
        self.channel = f"{prefix}invalidate"
        self.interval = interval
        self.clock = clock
        self._pid = None
        self._seen: dict[str, int] | None = None
        self._next_check = 0.0
        self._check_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._publisher = None
        self.subscribed = threading.Event()  # set while the subscriber listens (for tests and /metrics)

    # ---- the writer's side -------------------------------------------------------------------------------
    def publish(self, kind: str, key: str | None = None) -> None:
        """After a change of ``kind`` is committed: drop this process's caches, bump the kind's version row,
        tell every process over Redis. Never raises: the change is made; a node that missed the message reads
        the version row, and one that cannot read it cannot serve either."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind of change {kind!r}")
        drop(kind, key)
        try:
            self._bump(kind)
        except SQLAlchemyError as exc:
            log.warning("cache version not bumped", extra={"kind": kind, "error": type(exc).__name__})
        if self.redis_url:
            try:
                self._redis().publish(self.channel, json.dumps({"kind": kind, "key": key, "pid": os.getpid()}))
            except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; the database row carries it
                log.warning("invalidation not published", extra={"kind": kind, "error": type(exc).__name__})
                self._publisher = None

    def _bump(self, kind: str) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            done = conn.execute(update(cache_versions).where(cache_versions.c.kind == kind)
                                .values(version=cache_versions.c.version + 1, changed_at=now)).rowcount
        if not done:
            try:
                with self.engine.begin() as conn:
                    conn.execute(cache_versions.insert().values(kind=kind, version=1, changed_at=now))
            except IntegrityError:  # another process made the row meanwhile
                with self.engine.begin() as conn:
                    conn.execute(update(cache_versions).where(cache_versions.c.kind == kind)
                                 .values(version=cache_versions.c.version + 1, changed_at=now))

    def _redis(self):
        if self._publisher is None:
            import redis

            self._publisher = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=1)
        return self._publisher

    # ---- the reader's side -------------------------------------------------------------------------------
    def check(self) -> None:
        """At the start of a request: start this process's subscriber if needed, and read the version rows if
        the last read is older than ``interval``. Cheap: a clock read, mostly."""
        if self._pid != os.getpid():
            self._forked()
        now = self.clock()
        if now < self._next_check or not self._check_lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.interval
            self.poll()
        finally:
            self._check_lock.release()

    def poll(self) -> list[str]:
        """Read the version rows; drop the caches of every kind whose version moved. The kinds dropped."""
        try:
            with self.engine.connect() as conn:
                rows = dict(conn.execute(select(cache_versions.c.kind, cache_versions.c.version)).all())
        except SQLAlchemyError as exc:  # the request will meet the outage itself; try again next time
            log.debug("cache versions unreadable", extra={"error": type(exc).__name__})
            return []
        seen, self._seen = self._seen, rows
        if seen is None:  # the first read: whatever a racing request cached before it is dropped
            for kind in KINDS:
                drop(kind)
            return []
        moved = [k for k, v in rows.items() if seen.get(k) != v]
        for kind in moved:
            drop(kind)
        return moved

    def _forked(self) -> None:
        """A new process (the first call, or a gunicorn worker forked from a parent that had started): its own
        state, its own subscriber; the parent's thread and connections are not ours."""
        self._pid = os.getpid()
        self._publisher = None
        self._thread = None
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._seen = None
        self._next_check = 0.0
        if self.redis_url:
            # the thread holds the object weakly: a hub thrown away (tests) lets its subscriber end
            self._thread = threading.Thread(target=_listen, name="idhub-invalidation", daemon=True,
                                            args=(weakref.ref(self), self.redis_url, self.channel, self._stop,
                                                  self.subscribed))
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _handle(data) -> None:
        try:
            msg = json.loads(data)
            kind = msg["kind"]
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable invalidation message")
            return
        if kind in KINDS:
            drop(kind, msg.get("key"))


def _listen(ref, url: str, channel: str, stop: threading.Event, subscribed: threading.Event) -> None:
    """The subscriber loop of one process: listen on ``channel``, drop caches per message; on any Redis failure
    reconnect after a pause (doubling up to ``RECONNECT_MAX``) and make the owner read the version rows (messages
    sent meanwhile are lost). Ends when stopped or when its ``Invalidation`` is gone."""
    import redis

    def owner_alive() -> bool:
        return not stop.is_set() and ref() is not None

    def read_versions_soon() -> None:
        inv = ref()
        if inv is not None:
            inv._next_check = 0.0

    wait = RECONNECT_MIN
    while owner_alive():
        client = pubsub = None
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(channel)
            msg = pubsub.get_message(timeout=0.5)  # reads the subscription's confirmation: connected for real
            subscribed.set()
            read_versions_soon()
            wait = RECONNECT_MIN
            while True:
                if msg is not None and msg.get("type") == "message":
                    Invalidation._handle(msg.get("data"))
                if not owner_alive():
                    break
                msg = pubsub.get_message(timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: reconnect after a pause
            if subscribed.is_set():
                log.warning("invalidation subscriber lost redis; reconnecting", extra={"error": type(exc).__name__})
            subscribed.clear()
            read_versions_soon()
        finally:
            for closable in (pubsub, client):
                try:
                    if closable is not None:
                        closable.close()
                except Exception:  # noqa: BLE001, S110 - closing a broken connection
                    pass
        stop.wait(wait)
        wait = min(RECONNECT_MAX, wait * 2)
    subscribed.clear()
