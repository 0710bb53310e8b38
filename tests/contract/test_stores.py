"""One contract for every storage backend (see conftest for the backends)."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from config.settings import Settings
from idp.db import make_engine, make_sessionmaker
from idp.storage import factory
from idp.storage.base import Backoff, SessionData, StoreUnavailable
from idp.storage.redis_store import CachedSessionStore, RedisFlowStore, RedisOneTimeStore, RedisThrottleStore
from idp.storage.sql import SqlFlowStore, SqlOneTimeStore, SqlSessionStore, SqlThrottleStore
from tests.helpers.concurrency import parallel
from tests.services import free_port, start_private_redis

from .conftest import make_session_backend

# --- one-time values ---------------------------------------------------------------------------


def test_one_time_put_get_overwrite(one_time, key):
    assert one_time.get(key) is None
    one_time.put(key, "a", 60)
    assert one_time.get(key) == "a"
    assert one_time.get(key) == "a"  # get does not consume
    one_time.put(key, "b", 60)
    assert one_time.get(key) == "b"
    one_time.delete(key)
    assert one_time.get(key) is None
    one_time.delete(key)  # deleting an absent key is fine


def test_one_time_add(one_time, key):
    assert one_time.add(key, "first", 60) is True
    assert one_time.add(key, "second", 60) is False
    assert one_time.get(key) == "first"
    assert one_time.consume(key) == "first"
    assert one_time.add(key, "third", 60) is True
    assert one_time.get(key) == "third"


def test_one_time_consume_once(one_time, key):
    assert one_time.consume(key) is None
    one_time.put(key, "v", 60)
    assert one_time.consume(key) == "v"
    assert one_time.consume(key) is None
    assert one_time.get(key) is None


def test_one_time_long_keys_are_distinct(one_time):
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    one_time.put(a, "A", 60)
    one_time.put(b, "B", 60)
    assert (one_time.consume(a), one_time.get(b)) == ("A", "B")


def test_one_time_expiry(one_time, key):
    one_time.put(key + ":put", "v", 1)
    one_time.put(key + ":consume", "v", 1)
    one_time.add(key + ":add", "old", 1)
    one_time.put(key + ":long", "v", 30)
    time.sleep(1.3)
    assert one_time.get(key + ":put") is None
    assert one_time.consume(key + ":consume") is None
    assert one_time.add(key + ":add", "new", 30) is True  # an expired value does not block add
    assert one_time.get(key + ":add") == "new"
    assert one_time.get(key + ":long") == "v"


def test_one_time_rejects_bad_ttl(one_time, key):
    with pytest.raises(ValueError):
        one_time.put(key, "v", 0)


def test_one_time_parallel_consume_has_one_winner(one_time, key):
    for i in range(3):
        k = f"{key}:{i}"
        one_time.put(k, "secret", 60)
        results = parallel(16, lambda k=k: one_time.consume(k))
        assert sorted(r for r in results if r is not None) == ["secret"]


def test_one_time_parallel_add_has_one_winner(one_time, key):
    results = parallel(16, lambda: one_time.add(key, "v", 60))
    assert results.count(True) == 1


# --- throttles ---------------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
BACKOFF = Backoff(free=2, base=1, cap=8, window=100)


def test_throttle_growing_delays(throttle, key):
    assert throttle.state(key, NOW).failures == 0
    assert throttle.state(key, NOW).retry_after(NOW) == 0
    delays = []
    for _ in range(7):
        st = throttle.record_failure(key, NOW, BACKOFF)
        delays.append(st.retry_after(NOW))
    assert delays == [0, 0, 1, 2, 4, 8, 8]
    st = throttle.state(key, NOW)
    assert st.failures == 7
    assert st.blocked_until == NOW + timedelta(seconds=8)
    assert st.retry_after(NOW + timedelta(seconds=3)) == 5
    assert st.retry_after(NOW + timedelta(seconds=8)) == 0


def test_throttle_reset(throttle, key):
    for _ in range(4):
        throttle.record_failure(key, NOW, BACKOFF)
    throttle.reset(key)
    st = throttle.state(key, NOW)
    assert (st.failures, st.blocked_until) == (0, None)
    assert throttle.record_failure(key, NOW, BACKOFF).failures == 1


def test_throttle_window_forgets(throttle, key):
    throttle.record_failure(key, NOW, BACKOFF)
    throttle.record_failure(key, NOW + timedelta(seconds=50), BACKOFF)
    assert throttle.state(key, NOW + timedelta(seconds=140)).failures == 2  # 90 s after the last one
    assert throttle.state(key, NOW + timedelta(seconds=150)).failures == 0  # a full window after it
    st = throttle.record_failure(key, NOW + timedelta(seconds=151), BACKOFF)
    assert (st.failures, st.blocked_until) == (1, None)


def test_throttle_states_reads_several_keys_in_order(throttle, key):
    long_key = key + ":" + "x" * 300  # stored hashed (longer than the column)
    for _ in range(7):
        throttle.record_failure(key + ":a", NOW, BACKOFF)
    throttle.record_failure(long_key, NOW, BACKOFF)
    got = throttle.states([key + ":none", key + ":a", long_key], NOW)
    assert [st.failures for st in got] == [0, 7, 1]
    assert got[1] == throttle.state(key + ":a", NOW) and got[1].retry_after(NOW) > 0
    assert got[0].retry_after(NOW) == 0 and got[2] == throttle.state(long_key, NOW)
    # a window later, all forgotten
    assert [st.failures for st in throttle.states([key + ":a", long_key], NOW + timedelta(days=2))] == [0, 0]


def test_throttle_keys_are_independent(throttle, key):
    for _ in range(5):
        throttle.record_failure(key + ":a", NOW, BACKOFF)
    assert throttle.state(key + ":b", NOW).failures == 0


def test_throttle_parallel_failures_are_all_counted(throttle, key):
    results = parallel(16, lambda: throttle.record_failure(key, NOW, BACKOFF).failures)
    assert sorted(results) == list(range(1, 17))
    st = throttle.state(key, NOW)
    assert st.failures == 16
    assert st.blocked_until == NOW + timedelta(seconds=BACKOFF.delay(16))


def test_throttle_fixed_window_hit(throttle, key):
    start = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)  # a multiple of 60 s
    assert [throttle.hit(key, 3, 60, start + timedelta(seconds=s)) for s in (0, 10, 20, 30, 59)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert throttle.hit(key + ":other", 3, 60, start) is True
    assert throttle.hit(key, 3, 60, start + timedelta(seconds=60)) is True  # next window


def test_throttle_parallel_hits(throttle, key):
    results = parallel(16, lambda: throttle.hit(key, 5, 3600, NOW))
    assert results.count(True) == 5


# --- login flows -------------------------------------------------------------------------------


def test_flow_lifecycle(flows, key):
    data = {"step": "identify", "request": {"app": "a", "scopes": ["openid", "email"]}, "n": 1, "ok": True}
    assert flows.get(key) is None
    flows.create(key, data, 60)
    assert flows.get(key) == data
    assert flows.update(key, {**data, "step": "password"}, 60) is True
    assert flows.get(key)["step"] == "password"
    flows.delete(key)
    assert flows.get(key) is None
    assert flows.update(key, data, 60) is False
    assert flows.get(key) is None  # update does not resurrect


def test_flow_expiry(flows, key):
    flows.create(key + ":a", {"x": 1}, 1)
    flows.create(key + ":b", {"x": 1}, 1)
    flows.create(key + ":long", {"x": 1}, 30)
    time.sleep(1.3)
    assert flows.get(key + ":a") is None
    assert flows.update(key + ":b", {"x": 2}, 30) is False
    assert flows.get(key + ":b") is None
    assert flows.update(key + ":long", {"x": 2}, 30) is True
    assert flows.get(key + ":long") == {"x": 2}


# --- sessions ----------------------------------------------------------------------------------


def new_session(ws_id: str, user_id: str, now: datetime | None = None, **kw) -> SessionData:
    now = now or datetime.now(UTC).replace(microsecond=123456)
    values = dict(
        id=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
        public_id=secrets.token_hex(16),
        workspace_id=ws_id,
        user_id=user_id,
        created_at=now,
        last_active_at=now,
        expires_at=now + timedelta(days=1),
        idle_timeout=3600,
        ip="192.0.2.1",
        user_agent="Mozilla/5.0",
        browser="Firefox",
        os="Linux",
        device="Desktop",
        country="NL",
        city="Amsterdam",
        amr=["pwd", "otp"],
        auth_time=now,
    )
    values.update(kw)
    return SessionData(**values)


def test_session_create_get(sessions):
    ws, user = sessions.new_user()
    data = new_session(ws, user)
    sessions.store.create(data)
    got = sessions.store.get(data.id)
    assert got == data
    assert got.is_active()
    assert sessions.store.get("0" * 64) is None


def test_session_upgrade_renews_the_cookie_of_the_same_record(sessions):
    ws, user = sessions.new_user()
    data = new_session(ws, user, amr=["pwd"])
    sessions.store.create(data)
    new, other = secrets.token_hex(32), secrets.token_hex(32)
    assert sessions.store.get_by_token(new) is None
    later = data.created_at + timedelta(minutes=5)
    up = sessions.store.upgrade(data.id, ["pwd", "totp"], later, new)
    assert (up.id, up.public_id, up.amr, up.auth_time, up.token_hash) == (data.id, data.public_id, ["pwd", "totp"],
                                                                          later, new)
    assert sessions.store.get_by_token(new) == up == sessions.store.get(data.id)
    assert up.matches(new) and not up.matches(data.id)  # the old cookie's hash no longer matches
    assert sessions.store.revoke(data.id, "signed_out") is True
    assert sessions.store.upgrade(data.id, ["pwd"], later, other) is None  # an ended session stays ended
    assert not sessions.store.get_by_token(new).is_active()


def test_session_touch(sessions):
    ws, user = sessions.new_user()
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    data = new_session(ws, user, now=t0)
    sessions.store.create(data)
    sessions.store.get(data.id)  # fills a cache, if any
    t1 = t0 + timedelta(seconds=120)
    sessions.store.touch(data.id, t1)
    assert sessions.store.get(data.id).last_active_at == t1
    t2 = t1 + timedelta(seconds=10)
    sessions.store.touch(data.id, t2)
    assert sessions.store.get(data.id).last_active_at in (t1, t2)
    sessions.store.touch(data.id, t0)  # never backwards
    assert sessions.store.get(data.id).last_active_at in (t1, t2)
    if sessions.sql is not None:  # the database is written at most once a minute
        assert sessions.sql.get(data.id).last_active_at == t1
        t3 = t1 + timedelta(seconds=61)
        sessions.store.touch(data.id, t3)
        assert sessions.sql.get(data.id).last_active_at == t3


def test_session_touch_does_not_revive(sessions):
    ws, user = sessions.new_user()
    data = new_session(ws, user)
    sessions.store.create(data)
    sessions.store.revoke(data.id, "test")
    sessions.store.touch(data.id, data.last_active_at + timedelta(seconds=300))
    got = sessions.store.get(data.id)
    assert got.revoked_at is not None and not got.is_active()


def test_session_revoke(sessions):
    ws, user = sessions.new_user()
    data = new_session(ws, user)
    sessions.store.create(data)
    assert sessions.store.get(data.id).is_active()  # cached, if there is a cache
    assert sessions.store.revoke(data.id, "signed_out") is True
    got = sessions.store.get(data.id)
    assert got.revoked_at is not None and got.revoked_reason == "signed_out"
    assert not got.is_active()
    assert sessions.store.revoke(data.id, "again") is False
    assert sessions.store.get(data.id).revoked_reason == "signed_out"
    assert sessions.store.revoke("f" * 64, "unknown") is False


def test_session_revoke_user(sessions):
    ws, user = sessions.new_user()
    _, other = sessions.new_user()
    mine = [new_session(ws, user) for _ in range(3)]
    theirs = new_session(ws, other)
    for s in [*mine, theirs]:
        sessions.store.create(s)
        sessions.store.get(s.id)
    ended = sessions.store.revoke_user(user, "password_changed", except_id=mine[0].id)
    assert sorted(ended) == sorted([mine[1].id, mine[2].id])
    assert sessions.store.get(mine[0].id).is_active()
    assert not sessions.store.get(mine[1].id).is_active()
    assert sessions.store.get(mine[2].id).revoked_reason == "password_changed"
    assert sessions.store.get(theirs.id).is_active()
    assert sessions.store.revoke_user(user, "again", except_id=mine[0].id) == []
    assert sessions.store.revoke_user(user, "all") == [mine[0].id]
    assert sessions.store.list_user(user) == []


def test_session_list_user(sessions):
    ws, user = sessions.new_user()
    now = datetime.now(UTC)
    old = new_session(ws, user, now=now - timedelta(minutes=30))
    recent = new_session(ws, user, now=now - timedelta(minutes=1))
    middle = new_session(ws, user, now=now - timedelta(minutes=10))
    revoked = new_session(ws, user, now=now)
    expired = new_session(ws, user, now=now - timedelta(days=2))
    idle = new_session(ws, user, now=now - timedelta(hours=2))
    for s in (old, recent, middle, revoked, expired, idle):
        sessions.store.create(s)
    sessions.store.revoke(revoked.id, "test")
    listed = sessions.store.list_user(user, now)
    assert [s.id for s in listed] == [recent.id, middle.id, old.id]
    assert all(isinstance(s, SessionData) for s in listed)


def test_session_get_public_checks_owner(sessions):
    ws, user = sessions.new_user()
    _, other = sessions.new_user()
    data = new_session(ws, user)
    sessions.store.create(data)
    assert sessions.store.get_public(user, data.public_id).id == data.id
    assert sessions.store.get_public(other, data.public_id) is None
    assert sessions.store.get_public(user, "0" * 32) is None


def test_session_is_active_idle_and_absolute(sessions):
    ws, user = sessions.new_user()
    now = datetime.now(UTC)
    idle = new_session(ws, user, now=now - timedelta(seconds=3601))
    absolute = new_session(
        ws, user, now=now - timedelta(seconds=10), expires_at=now - timedelta(seconds=1), idle_timeout=86400
    )
    fresh = new_session(ws, user, now=now - timedelta(seconds=3599))
    for s in (idle, absolute, fresh):
        sessions.store.create(s)
    assert not sessions.store.get(idle.id).is_active(now)
    assert not sessions.store.get(absolute.id).is_active(now)
    assert sessions.store.get(fresh.id).is_active(now)
    assert not sessions.store.get(fresh.id).is_active(now + timedelta(seconds=2))


# --- the Redis session cache -------------------------------------------------------------------


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_cache_revocation_reaches_every_process(request, db):
    a = make_session_backend(request, f"cached-{db}")
    b = make_session_backend(request, f"cached-{db}")  # a second worker: same Redis and database
    ws, user = a.new_user()
    data = new_session(ws, user)
    a.store.create(data)
    assert b.store.get(data.id).is_active()
    assert a.store.revoke(data.id, "signed_out") is True
    assert not b.store.get(data.id).is_active()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_cache_upgrade_reaches_every_process(request, db):
    a = make_session_backend(request, f"cached-{db}")
    b = make_session_backend(request, f"cached-{db}")
    ws, user = a.new_user()
    data = new_session(ws, user, amr=["pwd"])
    a.store.create(data)
    assert b.store.get(data.id).amr == ["pwd"]  # cached on the other worker
    new = secrets.token_hex(32)
    a.store.upgrade(data.id, ["pwd", "totp"], datetime.now(UTC), new)
    assert b.store.get(data.id).amr == ["pwd", "totp"] and not b.store.get(data.id).matches(data.id)
    assert b.store.get_by_token(new).id == data.id
    assert b.store.get_by_token(new).id == data.id  # again, through the cache's alias
    a.store.revoke(data.id, "signed_out")
    assert not b.store.get_by_token(new).is_active()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_cache_fill_cannot_undo_a_revocation(request, db):
    """A reader that loaded the row before a revocation must not cache the stale row after it."""
    backend = make_session_backend(request, f"cached-{db}")
    store: CachedSessionStore = backend.store
    ws, user = backend.new_user()
    data = new_session(ws, user)
    backend.sql.create(data)  # in the database only
    stale = backend.sql.get(data.id)
    store.revoke(data.id, "test")
    store._put(stale)  # the slow reader's fill arrives late
    assert not store.get(data.id).is_active()


@pytest.fixture(params=["sqlite", "postgres"])
def private_cache(request):
    sm = request.getfixturevalue("pg_sm" if request.param == "postgres" else "sqlite_sm")
    with start_private_redis() as server:
        client = factory.redis_client(server.url, timeout=0.5)
        store = CachedSessionStore(SqlSessionStore(sm), client, "idhub-outage:")
        backend = make_session_backend(request, request.param)
        yield server, client, store, backend
        client.close()


def test_cache_outage_falls_back_to_the_database(private_cache):
    server, client, store, backend = private_cache
    ws, user = backend.new_user()
    active, revoked, fresh = (new_session(ws, user) for _ in range(3))
    for s in (active, revoked):
        store.create(s)
        assert store.get(s.id).is_active()
    saved = {s.id: client.dump(store._k(s.id)) for s in (active, revoked)}
    server.stop()

    assert store.get(active.id).is_active()  # still signed in
    assert store.revoke(revoked.id, "ended_by_user") is True
    assert not store.get(revoked.id).is_active()
    store.create(fresh)
    assert store.get(fresh.id).is_active()
    store.touch(active.id, active.last_active_at + timedelta(seconds=90))
    assert backend.sql.get(active.id).last_active_at == active.last_active_at + timedelta(seconds=90)
    assert [s.id for s in store.list_user(user)][0] == active.id
    assert store.breaker.state != "closed"

    server.start()
    # Worst case: the cache survived the outage (a network split rather than a restart) and still holds
    # the pre-revocation state. No process trusts it: the database's change records name the session.
    raw = redis.Redis.from_url(server.url)
    for sid, dump in saved.items():
        raw.restore(store._k(sid), 0, dump, replace=True)
    other_process = CachedSessionStore(store.sql, factory.redis_client(server.url), "idhub-outage:")
    assert not other_process.get(revoked.id).is_active()
    assert other_process.get(active.id).is_active()
    assert not raw.exists(store._k(revoked.id))  # the stale key was deleted, nothing else was
    assert raw.exists(store._k(active.id))
    raw.close()
    store.breaker.success()  # as after its next trial call
    assert not store.get(revoked.id).is_active()
    assert store.get(active.id).is_active()
    assert store.get(fresh.id).is_active()


def test_a_revocation_that_missed_the_cache_is_enforced_by_every_process_within_the_recheck(private_cache):
    """Another process reads the shared cache, which still holds the session (the revoking process could not
    reach Redis): within ``recheck`` seconds of the revocation it refuses the session, with no help from the
    revoking process."""
    server, client, store, backend = private_cache
    ws, user = backend.new_user()
    revoked = new_session(ws, user)
    store.create(revoked)
    now = [1000.0]
    other = CachedSessionStore(store.sql, factory.redis_client(server.url), "idhub-outage:", clock=lambda: now[0])
    assert other.get(revoked.id).is_active()  # cached, and the other process has just looked at the changes
    looks = other.rechecks
    stale = client.dump(store._k(revoked.id))
    server.stop()
    assert store.revoke(revoked.id, "ended_by_user") is True  # the tombstone cannot be written
    server.start()
    raw = redis.Redis.from_url(server.url)
    raw.restore(store._k(revoked.id), 0, stale, replace=True)  # a split, not a restart: the cache kept it
    raw.close()
    assert other.get(revoked.id).is_active()  # within the recheck interval the cached copy may still be served
    assert other.rechecks == looks  # (no database look yet: that is the cost saved)
    now[0] += other.recheck
    assert not other.get(revoked.id).is_active()  # one interval later it is not, whatever the cache says
    assert other.rechecks == looks + 1
    for _ in range(3):  # the next reads within the interval make no further database look
        assert not other.get(revoked.id).is_active()
    assert other.rechecks == looks + 1


def test_a_cached_copy_that_looks_idle_is_checked_against_the_database(private_cache):
    """A node that could not reach Redis recorded the activity in the database only: another node's stale
    cached activity time must not end a live session."""
    _server, client, store, backend = private_cache
    ws, user = backend.new_user()
    data = new_session(ws, user)
    data.idle_timeout = 60
    store.create(data)
    old = data.last_active_at - timedelta(seconds=600)
    client.hset(store._k(data.id), "la", str(int(old.timestamp() * 1_000_000)))
    assert store.get(data.id).is_active()


def test_cache_restart_keeps_revocations(private_cache):
    server, _client, store, backend = private_cache
    ws, user = backend.new_user()
    active, revoked = new_session(ws, user), new_session(ws, user)
    for s in (active, revoked):
        store.create(s)
        store.get(s.id)
    server.stop()
    assert store.revoke_user(user, "compromise_reported", except_id=active.id) == [revoked.id]
    server.restart()
    assert not store.get(revoked.id).is_active()
    assert store.get(active.id).is_active()
    assert store.get(active.id).is_active()  # now from the refilled cache


# --- outages of the fail-closed stores ----------------------------------------------------------


def _closed_redis():
    return factory.redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)


def _calls(store):
    k, now = "k", datetime.now(UTC)
    if isinstance(store, RedisOneTimeStore | SqlOneTimeStore):
        return [
            lambda: store.put(k, "v", 5),
            lambda: store.add(k, "v", 5),
            lambda: store.get(k),
            lambda: store.consume(k),
            lambda: store.delete(k),
        ]
    if isinstance(store, RedisThrottleStore | SqlThrottleStore):
        return [
            lambda: store.state(k, now),
            lambda: store.record_failure(k, now, BACKOFF),
            lambda: store.reset(k),
            lambda: store.hit(k, 1, 60, now),
        ]
    if isinstance(store, RedisFlowStore | SqlFlowStore):
        return [
            lambda: store.create(k, {}, 5),
            lambda: store.get(k),
            lambda: store.update(k, {}, 5),
            lambda: store.delete(k),
        ]
    return [
        lambda: store.get(k),
        lambda: store.create(new_session("w", "u")),
        lambda: store.touch(k, now),
        lambda: store.revoke(k, "r"),
        lambda: store.revoke_user("u", "r"),
        lambda: store.list_user("u"),
        lambda: store.get_public("u", "p"),
    ]


@pytest.mark.parametrize("cls", [RedisOneTimeStore, RedisThrottleStore, RedisFlowStore])
def test_redis_down_fails_closed(cls):
    store = cls(_closed_redis())
    for call in _calls(store):
        with pytest.raises(StoreUnavailable):
            call()


@pytest.mark.parametrize("cls", [SqlOneTimeStore, SqlThrottleStore, SqlFlowStore, SqlSessionStore])
def test_database_down_raises_unavailable(cls):
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    store = cls(make_sessionmaker(engine))
    try:
        for call in _calls(store):
            with pytest.raises(StoreUnavailable):
                call()
    finally:
        engine.dispose()


def test_cached_sessions_need_the_database():
    """Redis up or down, the session store cannot answer without the database."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    store = CachedSessionStore(SqlSessionStore(make_sessionmaker(engine)), _closed_redis(), "x:")
    try:
        with pytest.raises(StoreUnavailable):
            store.get("0" * 64)
    finally:
        engine.dispose()


# --- factory -----------------------------------------------------------------------------------


def test_factory_sql_only(sqlite_sm):
    stores = factory.build_stores(Settings(), sqlite_sm)
    assert isinstance(stores.sessions, SqlSessionStore)
    assert isinstance(stores.one_time, SqlOneTimeStore)
    assert isinstance(stores.throttle, SqlThrottleStore)
    assert isinstance(stores.flows, SqlFlowStore)
    stores.ping()


def test_factory_with_redis(sqlite_sm):
    with start_private_redis() as server:
        stores = factory.build_stores(Settings(redis_url=server.url, extra={"redis_prefix": "p:"}), sqlite_sm)
        assert isinstance(stores.sessions, CachedSessionStore)
        assert isinstance(stores.one_time.redis, RedisOneTimeStore)
        assert isinstance(stores.throttle.redis, RedisThrottleStore)
        assert isinstance(stores.flows.redis, RedisFlowStore)
        stores.ping()
        stores.one_time.put("a", "b", 5)
        assert redis.Redis.from_url(server.url).get("p:ot:a") == b"b"
        assert stores.health() == {"database": "ok", "redis": "ok"}
        server.stop()
        with pytest.raises(StoreUnavailable):
            stores.ping()
        assert stores.health() == {"database": "ok", "redis": "degraded"}


def test_factory_ping_database_down():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    stores = factory.build_stores(Settings(), make_sessionmaker(engine))
    with pytest.raises(StoreUnavailable):
        stores.ping()
    engine.dispose()


def test_memory_stores():
    stores = factory.build_memory_stores()
    stores.ping()
    stores.one_time.put("a", "b", 5)
    assert stores.one_time.consume("a") == "b"


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_purge_expired(request, db):
    sm = request.getfixturevalue("pg_sm" if db == "postgres" else "sqlite_sm")
    backend = make_session_backend(request, db)
    ws, user = backend.new_user()
    gone = new_session(ws, user, now=datetime.now(UTC) - timedelta(days=3))
    kept = new_session(ws, user)
    backend.store.create(gone)
    backend.store.create(kept)
    throttle = SqlThrottleStore(sm)
    throttle.record_failure("purge", NOW - timedelta(days=400), BACKOFF)
    stores = factory.build_stores(Settings(), sm)
    assert factory.purge_expired(stores) >= 2
    assert backend.store.get(gone.id) is None
    assert backend.store.get(kept.id) is not None


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_session_changes_are_recorded_with_the_change_and_purged_after_a_day(request, db):
    from sqlalchemy import insert

    from idp.storage.sql import SessionChange

    backend = make_session_backend(request, db)
    ws, user = backend.new_user()
    one, two, three = (new_session(ws, user) for _ in range(3))
    for s in (one, two, three):
        backend.sql.create(s)
    since = datetime.now(UTC) - timedelta(seconds=1)
    backend.sql.revoke(one.id, "signed_out")
    backend.sql.upgrade(two.id, ["pwd", "totp"], datetime.now(UTC), secrets.token_hex(32))
    assert backend.sql.revoke(one.id, "again") is False  # nothing changed: nothing recorded
    mine = {one.id, two.id, three.id}  # the database is shared with other tests
    assert mine & set(backend.sql.changes_since(since)) == {one.id, two.id}
    with backend.sm() as s, s.begin():
        s.execute(insert(SessionChange),
                  [{"session_id": "0ld" + three.id[3:], "at": datetime.now(UTC) - timedelta(days=2)}])
    assert "0ld" + three.id[3:] in backend.sql.changes_since(datetime.now(UTC) - timedelta(days=3))
    backend.sql.purge_expired()
    assert "0ld" + three.id[3:] not in backend.sql.changes_since(datetime.now(UTC) - timedelta(days=3))
    assert mine & set(backend.sql.changes_since(since)) == {one.id, two.id}
