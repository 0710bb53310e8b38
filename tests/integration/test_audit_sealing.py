"""Append, then seal, on PostgreSQL: no lock is held across a request, concurrent writers and a reader that
follows ``seq`` never lose or skip an event, a writer killed (kill -9) between append and seal loses nothing,
and chains written before keyed chains are adopted by the first seal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from idp.audit import GENESIS_HASH, AuditChainHead, AuditEvent, AuditLog, compute_hash, read_sealed
from idp.db import make_engine, make_sessionmaker
from tests.conftest import make_app, make_settings
from tests.services import drop_postgres, postgres_url

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]
SECRET = "s" * 48


@pytest.fixture
def pg(tmp_path):
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url, secret_key=SECRET))
    hub = app.extensions["idhub"]
    hub.audit.stop()
    hub.engine.dispose()
    engine = make_engine(url)
    log = AuditLog(make_sessionmaker(engine), secrets=[SECRET], seal_interval=0.05)
    assert not log.inline  # PostgreSQL appends, a sealer seals
    yield log, engine, url
    log.stop()
    engine.dispose()
    drop_postgres(url)


def count(engine, where: str, **params) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM audit_events WHERE {where}"), params).scalar()


@pytest.mark.timeout(180)
def test_32_concurrent_writers_and_a_streaming_reader_miss_nothing(pg):
    log, engine, _ = pg
    writers, per_writer = 32, 15
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []
    done = threading.Event()
    seen: list[tuple[int, int]] = []  # (seq, id) in the order the reader got them

    def write(n: int) -> None:
        try:
            barrier.wait()  # all start together on a chain without a head row
            for i in range(per_writer):
                if i % 3 == 0:
                    with log.deferred():
                        log.record("policy.decision", workspace_id="ws-hot", actor_id=f"w{n}", data={"i": i})
                        log.record("auth.signin.success", workspace_id="ws-hot", actor_id=f"w{n}", data={"i": i})
                else:
                    log.record("oidc.token.issued", workspace_id="ws-hot", actor_id=f"w{n}", data={"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        cursor = 0
        with log._sm() as db:
            while True:
                finished = done.is_set()
                batch = read_sealed(db, "ws-hot", cursor, 50)
                db.rollback()  # a fresh snapshot for the next read
                for ev in batch:
                    seen.append((ev.seq, ev.id))
                    cursor = ev.seq
                if finished and not batch:
                    return
                if not batch:
                    time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    pool = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors
    log.seal()  # everything committed so far; the background sealer has done most of it already
    done.set()
    reader.join(60)
    total = writers * (per_writer + 5)  # every third iteration writes two events
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(text("SELECT id FROM audit_events WHERE chain = 'ws-hot'"))}
    assert len(ids) == total
    assert [s for s, _ in seen] == list(range(1, total + 1))  # in order, no gap, no repeat
    assert {i for _, i in seen} == ids  # no event skipped by the reader
    result = log.verify("ws-hot")
    assert result.ok and result.checked == total and result.unsealed == 0


@pytest.mark.timeout(60)
def test_an_open_transaction_with_an_event_blocks_no_other_writer(pg):
    """A request appends its event in its own transaction and has not committed: others append, and are sealed,
    meanwhile (the old chain-head lock made them wait for that commit)."""
    log, engine, _ = pg
    log.record("auth.signout", workspace_id="ws-1")
    log.seal()
    sm = log._sm
    with sm() as db:
        db.execute(text("SELECT 1"))
        log.record("scim.user.created", workspace_id="ws-1", subject_id="slow", connection=db.connection())
        finished = threading.Event()

        def other() -> None:
            log.record("auth.signin.success", workspace_id="ws-1", subject_id="fast")
            log.seal("ws-1")
            finished.set()

        t = threading.Thread(target=other)
        t.start()
        assert finished.wait(10), "a second writer waited for the first one's transaction"
        t.join()
        assert [e.subject_id for e in log.read_sealed("ws-1", 0, 10)] == [None, "fast"]
        db.commit()
    log.seal()
    assert [e.subject_id for e in log.read_sealed("ws-1", 0, 10)] == [None, "fast", "slow"]
    assert log.verify().ok


WRITER = """
import sys, time
from idp.audit import AuditLog
from idp.db import make_engine, make_sessionmaker
engine = make_engine(sys.argv[1])
log = AuditLog(make_sessionmaker(engine), secrets=[sys.argv[2]])
log.wake = lambda *chains: None  # no sealer: this process dies between append and seal
for i in range(40):
    log.record("auth.signin.success", workspace_id="ws-crash", data={"i": i})
    print("durable", i + 1, flush=True)
# and now it starts sealing, and dies inside the seal's transaction
conn = engine.connect()
conn.begin()
print("sealed-uncommitted", log._seal_chain_in(conn, "ws-crash"), flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_a_writer_killed_between_append_and_seal_loses_nothing(pg):
    log, engine, url = pg
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, SECRET], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("sealed-uncommitted"):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert lines[39] == "durable 40" and lines[40] == "sealed-uncommitted 40", lines[-3:]
    time.sleep(0.5)  # PostgreSQL notices the dead backend and rolls its transaction back
    assert count(engine, "chain = 'ws-crash' AND seq IS NULL") == 40  # appended, durable, not sealed
    result = log.verify("ws-crash")
    assert result.ok and result.unsealed == 40 and result.checked == 0
    assert log.seal("ws-crash") == 40  # any sealer on any node
    assert [e.data["i"] for e in log.read_sealed("ws-crash", 0, 100)] == list(range(40))
    result = log.verify("ws-crash")
    assert result.ok and result.checked == 40 and result.unsealed == 0


def test_the_background_sealer_seals_on_its_own(pg):
    log, engine, _ = pg
    for i in range(5):
        log.record("auth.signout", workspace_id="ws-bg", data={"i": i})
    deadline = time.monotonic() + 10
    while count(engine, "chain = 'ws-bg' AND seq IS NULL") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(engine, "chain = 'ws-bg' AND seq IS NOT NULL") == 5
    assert log.verify("ws-bg").ok


def test_a_chain_written_before_keyed_chains_is_adopted_by_the_first_seal(pg):
    log, engine, _ = pg
    # what the previous release wrote: unkeyed SHA-256 links, a head with an anchor left by a prune
    prev, anchor = "a" * 64, "a" * 64
    rows = []
    for seq in range(4, 8):
        ev = AuditEvent(chain="ws-old", seq=seq, workspace_id="ws-old", occurred_at=log._clock(), type="auth.signout",
                        data={"seq": seq}, prev_hash=prev)
        ev.hash = compute_hash(ev)
        prev = ev.hash
        rows.append(ev)
    with log._sm() as db:
        db.add_all(rows)
        db.add(AuditChainHead(chain="ws-old", seq=7, hash=prev, pruned_through_seq=3, anchor_hash=anchor, keyed=False))
        db.commit()
    result = log.verify("ws-old")
    assert not result.ok and "not keyed yet" in result.reason and result.first_bad_seq == 4
    log.record("auth.signin.success", workspace_id="ws-old")
    log.seal("ws-old")
    result = log.verify("ws-old")
    assert result.ok and result.checked == 6, result
    types = [e.type for e in log.read_sealed("ws-old", 0, 10)]
    assert sorted(types[4:]) == ["audit.chain.keyed", "auth.signin.success"] and types[:4] == ["auth.signout"] * 4
    keyed = next(e for e in log.read_sealed("ws-old", 0, 10) if e.type == "audit.chain.keyed")
    assert keyed.data == {"through_seq": 3, "anchor_hash": anchor, "legacy_through_seq": 7}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.key_id.is_(None))).scalar() == 0
    assert GENESIS_HASH not in {e.prev_hash for e in log.read_sealed("ws-old", 0, 10)}


def test_appends_alone_and_in_batches_keep_their_order_and_all_their_fields(pg):
    """On PostgreSQL one event appended alone, and a batch (``deferred()``) of up to ``ONE_STATEMENT_MAX``, is one
    autocommitted statement, a larger batch one transaction: the rows come back in the order they were recorded,
    with every field as given (the MACs verify), and one failing row of a batch writes none."""
    from idp.audit import ONE_STATEMENT_MAX

    log, engine, _ = pg
    log.record("auth.signout", workspace_id="ws-order", actor_id="alone", ip="2001:db8::1", user_agent="UA ✓",
               data={"nested": {"k": ["v", 1.5, True]}})
    with log.deferred():
        for i in range(12):
            log.record("auth.signin.succeeded", workspace_id="ws-order", actor_id=f"u{i}", actor_email=f"u{i}@x.test",
                       ip="203.0.113.7", user_agent="UA é ✓", request_id=f"r{i}", data={"i": i, "ü": [1, None]})
    few = ONE_STATEMENT_MAX  # a few events: one multi-row statement
    assert few >= 2
    with log.deferred():
        for i in range(few):
            log.record("saml.sso", workspace_id="ws-order", actor_id=f"s{i}", subject_id=f"sub{i}",
                       data={"s": i, "sp": "https://sp.example/ ✓"})
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT actor_id, subject_id, data, occurred_at FROM audit_events "
                                 "WHERE chain = 'ws-order' ORDER BY id")).all()
    assert [r.actor_id for r in rows] == ["alone"] + [f"u{i}" for i in range(12)] + [f"s{i}" for i in range(few)]
    assert rows[0].data == {"nested": {"k": ["v", 1.5, True]}} and rows[0].occurred_at.tzinfo is not None
    assert rows[4].data == {"i": 3, "ü": [1, None]}
    assert rows[-1].subject_id == f"sub{few - 1}" and rows[-1].data == {"s": few - 1, "sp": "https://sp.example/ ✓"}
    log.seal("ws-order")
    result = log.verify("ws-order")
    assert result.ok and result.checked == 13 + few
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error: a value too long for its column
        with log.deferred():
            log.record("auth.signout", workspace_id="ws-order", data={"i": 12})
            log.record("auth.signout", workspace_id="ws-order", data={"i": 13})
            log._local.pending[-1].chain = "c" * 65  # a row PostgreSQL refuses (varchar(64))
    assert count(engine, "chain = 'ws-order'") == 13 + few  # all or nothing (one statement of two rows)


def test_a_sealer_busy_with_its_own_chain_still_seals_what_a_dead_process_left(pg, monkeypatch):
    """Woken by its own appends, a sealer seals the chains it appended to (no scan of the whole table per round);
    the unsealed events of a process that died before sealing them are still sealed within FULL_SCAN_INTERVAL."""
    import idp.audit

    log, engine, _ = pg
    monkeypatch.setattr(idp.audit, "FULL_SCAN_INTERVAL", 0.5)
    log.seal_interval = 30.0  # never idle: the sealer is always woken by appends
    log.record("auth.signout", workspace_id="ws-busy", data={"i": -1})  # its first round (a full scan) is past
    deadline = time.monotonic() + 10
    while count(engine, "chain = 'ws-busy' AND seq IS NULL") and time.monotonic() < deadline:
        time.sleep(0.01)
    with engine.begin() as conn:  # what a process killed after its append left: durable, MACed, unsealed
        idp.audit.AuditLog._insert(conn, [log._event("auth.signout", "ws-orphan", {"n": i}) for i in range(3)])
    assert count(engine, "chain = 'ws-orphan' AND seq IS NULL") == 3
    deadline = time.monotonic() + 10
    i = 0
    while count(engine, "chain = 'ws-orphan' AND seq IS NULL") and time.monotonic() < deadline:
        log.record("auth.signout", workspace_id="ws-busy", data={"i": i})
        i += 1
        time.sleep(0.02)
    assert count(engine, "chain = 'ws-orphan' AND seq IS NOT NULL") == 3
    assert log.verify("ws-orphan").ok and log.verify("ws-busy").ok
