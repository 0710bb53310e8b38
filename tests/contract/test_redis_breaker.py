"""The Redis circuit breaker bounds what an outage costs, counted in calls that reach Redis (not in time), and the
stores behind it fall back to the database without ever skipping a check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from idp.storage import factory
from idp.storage.base import Backoff, StoreUnavailable
from idp.storage.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from idp.storage.failover import FailoverFlowStore, FailoverOneTimeStore, FailoverThrottleStore
from idp.storage.redis_store import RedisFlowStore, RedisOneTimeStore, RedisThrottleStore
from idp.storage.sql import SqlFlowStore, SqlOneTimeStore, SqlThrottleStore
from tests.helpers.concurrency import parallel
from tests.services import start_private_redis

BACKOFF = Backoff(free=2, base=1, cap=8, window=100)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def counted(client):
    """Count the commands that reach the client (each one a network round trip, or a timeout when frozen)."""
    calls = [0]
    real = client.execute_command

    def execute_command(*args, **kw):
        calls[0] += 1
        return real(*args, **kw)

    client.execute_command = execute_command
    return calls


def test_breaker_states():
    clock = Clock()
    b = Breaker("x", period=5, clock=clock)
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    clock.t += 5
    assert b.state == HALF_OPEN
    assert b.allow()  # the one trial …
    assert not b.allow() and not b.allow()  # … and nobody else
    b.failure()
    assert not b.allow()
    clock.t += 5
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow() and b.allow()
    assert b.opened == 1


@pytest.fixture
def frozen_setup(tmp_path):
    with start_private_redis() as server:
        client = factory.redis_client(server.url, timeout=0.3, retry_interval=5)
        clock = Clock()
        client.idhub_breaker._clock = clock
        yield server, client, clock
        server.thaw()
        client.close()


def test_a_frozen_redis_costs_one_call_per_breaker_period(frozen_setup):
    server, client, clock = frozen_setup
    store = RedisOneTimeStore(client, "brk:")
    store.put("k", "v", 60)
    calls = counted(client)
    server.freeze()

    for _ in range(50):
        with pytest.raises(StoreUnavailable):
            store.get("k")
    assert calls[0] == 1  # the first call paid the timeout; the other 49 did not touch the network

    clock.t += 4.9
    for _ in range(20):
        with pytest.raises(StoreUnavailable):
            store.get("k")
    assert calls[0] == 1

    clock.t += 0.1  # one period: a single trial call, of all the callers
    results = parallel(8, lambda: _try(store.get, "k"))
    assert calls[0] == 2 and all(r == "unavailable" for r in results)

    server.thaw()
    clock.t += 5
    assert store.get("k") == "v"  # the trial succeeds: closed again
    for _ in range(10):
        assert store.get("k") == "v"
    assert calls[0] == 2 + 11
    assert client.idhub_breaker.state == CLOSED


def _try(fn, *args):
    try:
        return fn(*args)
    except StoreUnavailable:
        return "unavailable"


@pytest.fixture
def failover(sqlite_sm):
    with start_private_redis() as server:
        client = factory.redis_client(server.url, timeout=0.3, retry_interval=5)
        clock = Clock()
        client.idhub_breaker._clock = clock
        stores = (FailoverOneTimeStore(RedisOneTimeStore(client, "fo:"), SqlOneTimeStore(sqlite_sm)),
                  FailoverThrottleStore(RedisThrottleStore(client, "fo:"), SqlThrottleStore(sqlite_sm)),
                  FailoverFlowStore(RedisFlowStore(client, "fo:"), SqlFlowStore(sqlite_sm)))
        yield server, client, clock, stores
        server.thaw()
        client.close()


def _outage(server, clock, client):
    """Redis hangs (it keeps its data: a split or a stall, the harder case than a restart)."""
    server.freeze()
    clock.t += 10


def _back(server, clock, client):
    server.thaw()
    clock.t += 10


def test_replay_caches_remember_across_an_outage(failover):
    server, client, clock, (one_time, _throttle, _flows) = failover
    key = "used:" + datetime.now(UTC).isoformat()
    _outage(server, clock, client)
    assert one_time.add(key, "1", 60) is True  # recorded in the database during the outage
    assert one_time.add(key, "1", 60) is False
    _back(server, clock, client)
    assert one_time.add(key, "1", 60) is False  # Redis was empty for it; the database remembers
    fresh = key + ":after"
    assert one_time.add(fresh, "1", 60) is True
    assert one_time.add(fresh, "1", 60) is False


def test_codes_and_flows_written_during_an_outage_work_after_it(failover):
    server, client, clock, (one_time, _throttle, flows) = failover
    _outage(server, clock, client)
    one_time.put("code:x", "payload", 60)
    flows.create("flow-x", {"step": 1}, 60)
    assert flows.update("flow-x", {"step": 2}, 60)
    _back(server, clock, client)
    assert flows.get("flow-x") == {"step": 2}
    assert flows.update("flow-x", {"step": 3}, 60) and flows.get("flow-x") == {"step": 3}
    assert one_time.consume("code:x") == "payload"
    assert one_time.consume("code:x") is None  # consumed once, wherever it lived
    flows.delete("flow-x")
    assert flows.get("flow-x") is None


def test_throttles_never_start_from_zero_across_an_outage(failover):
    server, client, clock, (_one_time, throttle, _flows) = failover
    now = datetime.now(UTC)
    key = "thr:" + now.isoformat()
    throttle.record_failure(key, now, BACKOFF)
    throttle.record_failure(key, now, BACKOFF)
    _outage(server, clock, client)
    state = throttle.record_failure(key, now, BACKOFF)  # counted in the database
    assert state.failures == 1
    _back(server, clock, client)
    state = throttle.record_failure(key, now, BACKOFF)
    # 3 in Redis + 1 in the database; the failure whose answer timed out may also have reached the frozen Redis
    # (it runs the command once thawed): counted twice, never lost
    assert state.failures in (4, 5)
    assert throttle.state(key, now).failures == state.failures
    assert throttle.state(key, now).blocked_until is not None
    throttle.reset(key)
    assert throttle.state(key, now).failures == 0


def test_the_session_cache_repair_never_wedges_the_breaker(sqlite_sm):
    """A process that saw session changes while Redis was away deletes their cache keys once Redis is back; the
    repair must not take the breaker's one trial call (else the breaker would stay half-open for good)."""
    import uuid
    from datetime import timedelta

    from idp.models import User, Workspace
    from idp.storage.base import SessionData
    from idp.storage.redis_store import CachedSessionStore
    from idp.storage.sql import SqlSessionStore

    ws_id, uid = str(uuid.uuid4()), str(uuid.uuid4())
    with sqlite_sm() as s, s.begin():
        s.add(Workspace(id=ws_id, slug="ws-" + ws_id[:8], name="Breaker"))
        s.flush()
        s.add(User(id=uid, workspace_id=ws_id, email=f"{uid}@example.test", email_normalized=f"{uid}@example.test"))
    with start_private_redis() as server:
        client = factory.redis_client(server.url, timeout=0.3, retry_interval=5)
        clock = Clock()
        client.idhub_breaker._clock = clock
        store = CachedSessionStore(SqlSessionStore(sqlite_sm), client, "wedge:", clock=clock)
        now = datetime.now(UTC)
        data = SessionData(id=uuid.uuid4().hex * 2, public_id=uuid.uuid4().hex[:16], workspace_id=ws_id, user_id=uid,
                           created_at=now, last_active_at=now, expires_at=now + timedelta(hours=1), idle_timeout=600)
        store.create(data)
        server.freeze()
        try:
            assert store.get(data.id).is_active()  # opens the breaker (one timeout), answered from the database
            assert store.revoke(data.id, "signed_out")
            clock.t += 5  # half-open; the change record is due to be read and its key deleted
            assert not store.get(data.id).is_active()
        finally:
            server.thaw()
        assert not client.idhub_breaker._trial  # no trial call left hanging
        clock.t += 5
        other = SessionData(id=uuid.uuid4().hex * 2, public_id=uuid.uuid4().hex[:16], workspace_id=ws_id,
                            user_id=uid, created_at=now, last_active_at=now, expires_at=now + timedelta(hours=1),
                            idle_timeout=600)
        store.create(other)  # the next Redis call is the trial; Redis answers: closed
        assert client.idhub_breaker.state == CLOSED
        clock.t += store.recheck
        assert not store.get(data.id).is_active()
        assert store.get(other.id).is_active()
        raw = redis.Redis.from_url(server.url)
        assert not raw.exists(store._k(data.id))  # repaired: the changed session's key, and only it
        assert raw.exists(store._k(other.id))
        raw.close()
        client.close()
