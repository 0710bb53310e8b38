"""idp.invalidation on a real PostgreSQL database and a real Redis: the version rows, the subscriber (its
reconnection after a Redis restart, its start after a fork), and that nothing starts before it is needed.

One process plays several: the generations are process-wide, so "another process" is observed through what it
reads (``poll``'s answer) or through the generation moving when only the other side's channel carried the news."""

from __future__ import annotations

import gc
import json
import multiprocessing
import threading
import time

import pytest
import redis
from sqlalchemy import create_engine

from idp import invalidation
from idp.invalidation import CONNECTIONS, OIDC_KEYS, SAML_APPS, SAML_KEYS, Invalidation, generation
from idp.schema import upgrade
from tests.services import drop_postgres, postgres_url, start_private_redis

DEADLINE = 5.0


@pytest.fixture(scope="module")
def engine():
    url = postgres_url()
    upgrade(url)
    eng = create_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()
        drop_postgres(url)


@pytest.fixture
def red():
    with start_private_redis() as server:
        yield server


def wait_for(cond, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > DEADLINE:
            raise AssertionError(f"{what}: not within {DEADLINE}s")
        time.sleep(0.01)
    return time.monotonic() - start


def subscriber_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "idhub-invalidation" and t.is_alive()]


def test_a_change_bumps_its_version_row_and_other_processes_see_it(engine):
    writer, reader = Invalidation(engine), Invalidation(engine)
    assert reader.poll() == []  # the first read is the baseline
    writer.publish(SAML_APPS, "crm")
    writer.publish(SAML_APPS, "crm")
    writer.publish(OIDC_KEYS, "ws")
    assert sorted(reader.poll()) == [OIDC_KEYS, SAML_APPS]
    assert reader.poll() == []  # nothing new
    with engine.connect() as conn:
        rows = dict(conn.exec_driver_sql("SELECT kind, version FROM cache_versions").all())
    assert rows[SAML_APPS] >= 2 and rows[OIDC_KEYS] >= 1


def test_reading_the_version_rows_drops_the_caches_of_the_kinds_that_moved(engine):
    reader = Invalidation(engine, interval=0.0)
    reader.check()
    before = {k: generation(k) for k in (SAML_KEYS, CONNECTIONS)}
    Invalidation(engine)._bump(SAML_KEYS)  # another process's change: its row only, no local drop here
    assert generation(SAML_KEYS) == before[SAML_KEYS]
    reader.check()
    assert generation(SAML_KEYS) == before[SAML_KEYS] + 1
    assert generation(CONNECTIONS) == before[CONNECTIONS]


def test_the_rows_are_read_at_most_every_interval(engine):
    now = [100.0]
    reader = Invalidation(engine, interval=0.5, clock=lambda: now[0])
    reader.check()
    Invalidation(engine)._bump(CONNECTIONS)
    before = generation(CONNECTIONS)
    now[0] += 0.4
    reader.check()
    assert generation(CONNECTIONS) == before  # not read yet
    now[0] += 0.1
    reader.check()
    assert generation(CONNECTIONS) == before + 1


def test_a_message_drops_the_caches_at_once_and_the_subscriber_survives_a_redis_restart(engine, red):
    listener = Invalidation(engine, red.url, prefix="t1:")
    assert not subscriber_threads()  # nothing runs before the first request
    listener.check()
    try:
        wait_for(listener.subscribed.is_set, "subscribed")
        client = redis.Redis.from_url(red.url)
        before = generation(SAML_APPS)
        client.publish("t1:invalidate", json.dumps({"kind": SAML_APPS, "key": "crm"}))
        wait_for(lambda: generation(SAML_APPS) > before, "the message dropped the SAML app caches")
        client.publish("t1:invalidate", b"not json")  # ignored, the subscriber goes on
        client.publish("t1:invalidate", json.dumps({"kind": "nonsense"}))

        red.restart()  # the subscriber's connection breaks; it reconnects by itself
        before = generation(SAML_APPS)
        client = redis.Redis.from_url(red.url)

        def heard() -> bool:  # messages sent before it is back are lost (the version rows cover those)
            client.publish("t1:invalidate", json.dumps({"kind": SAML_APPS, "key": "x"}))
            return generation(SAML_APPS) > before
        wait_for(heard, "a message after the restart")
        assert listener.subscribed.is_set()
        assert len(subscriber_threads()) == 1
    finally:
        listener.stop()
        wait_for(lambda: not subscriber_threads(), "stopped")


def test_publishing_without_redis_still_reaches_every_process_through_the_database(engine, red):
    url = red.url
    red.stop()  # Redis is down: the publish is logged, the row bumped
    writer, reader = Invalidation(engine, url, prefix="t2:"), Invalidation(engine)
    reader.poll()
    writer.publish(SAML_KEYS, "ws")
    assert reader.poll() == [SAML_KEYS]


def _child(inv: Invalidation, out) -> None:
    inv.check()
    alive = [t.name for t in threading.enumerate() if t.name == "idhub-invalidation"]
    ok = inv.subscribed.wait(DEADLINE)
    out.put((alive, ok))
    inv.stop()


def test_a_forked_worker_starts_a_subscriber_of_its_own(engine, red):
    parent = Invalidation(engine, red.url, prefix="t3:")
    parent.check()
    try:
        wait_for(parent.subscribed.is_set, "parent subscribed")
        engine.dispose()  # as gunicorn's workers must not share the parent's pooled connections
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        proc = ctx.Process(target=_child, args=(parent, out))
        proc.start()
        alive, ok = out.get(timeout=DEADLINE + 5)
        proc.join(10)
        assert alive == ["idhub-invalidation"] and ok, (alive, ok)
    finally:
        parent.stop()


def test_an_unknown_kind_is_a_programming_error(engine):
    with pytest.raises(ValueError):
        Invalidation(engine).publish("everything")
    assert set(invalidation.KINDS) >= {SAML_APPS, SAML_KEYS, OIDC_KEYS, CONNECTIONS}


def test_a_subscriber_ends_with_its_hub(engine, red):
    """A hub thrown away (as tests do, hundreds of times) does not leave a thread and a Redis connection behind."""
    listener = Invalidation(engine, red.url, prefix="t4:")
    listener.check()
    wait_for(listener.subscribed.is_set, "subscribed")
    assert len(subscriber_threads()) == 1
    del listener
    gc.collect()
    wait_for(lambda: not subscriber_threads(), "the subscriber ended")
