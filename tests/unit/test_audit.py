"""The hash-chained audit log, on SQLite and PostgreSQL: appends, redaction, tamper detection, export, pruning."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import select, text

from idp.audit import (
    GENESIS_HASH,
    REDACTED,
    RETENTION_DAYS,
    AuditChainHead,
    AuditEvent,
    AuditLog,
    chain_hash,
    content_mac,
    redact,
    retention_days,
)
from idp.db import Base, make_engine, make_sessionmaker

# The admin database to create throwaway databases from (a libpq conninfo, as in tests/services.py).
PG_ADMIN = os.environ.get("IDHUB_TEST_PG", "host=127.0.0.1 port=5432 dbname=test user=postgres")
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture(scope="module")
def pg_url():
    """A throwaway PostgreSQL database ``idhub_audit_<random>`` for this module, dropped afterwards.

    A missing PostgreSQL is an error, not a skip (as in tests/services.py).
    """
    name = f"idhub_audit_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        user, host, port = conn.info.user, conn.info.host, conn.info.port
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url)
    Base.metadata.create_all(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def log(engine, clock):
    return AuditLog(make_sessionmaker(engine), clock=clock, secrets=["k" * 32], seal="inline")


def raw(engine, sql: str, **params) -> None:
    """Tamper with the table behind the log's back."""
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def rows(engine, chain: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM audit_events WHERE chain = :c ORDER BY seq"), {"c": chain}))


def fill(log: AuditLog, clock: Clock, n: int, ws: str = "ws-1") -> list[AuditEvent]:
    out = []
    for i in range(n):
        out.append(log.record("auth.signin.success", workspace_id=ws, actor_id=f"u{i}", actor_email=f"u{i}@acme.test",
                              ip="203.0.113.7", user_agent="Firefox", request_id=f"r{i}", data={"i": i}))
        clock.advance(minutes=1)
    return out


# ---- appending ----------------------------------------------------------------------------------------------
def test_deferred_events_are_written_together_at_the_end_of_the_block(log, engine):
    log.record("auth.signout", workspace_id="ws-a")
    with log.deferred():
        e1 = log.record("policy.decision", workspace_id="ws-a", data={"effect": "allow"})
        e2 = log.record("auth.signin.success", workspace_id="ws-a", actor_id="u1")
        e3 = log.record("auth.signin.success", workspace_id="ws-b", actor_id="u2")
        with log.deferred():  # nested blocks join the outer one
            e4 = log.record("session.ended", workspace_id="ws-a")
        assert len(rows(engine, "ws-a")) == 1  # nothing written yet
    assert [r.seq for r in rows(engine, "ws-a")] == [1, 2, 3, 4]
    assert [r.type for r in rows(engine, "ws-a")][1:] == ["policy.decision", "auth.signin.success", "session.ended"]
    assert (e1.seq, e2.seq, e4.seq, e3.seq) == (2, 3, 4, 1)
    assert e2.prev_hash == e1.hash and e4.prev_hash == e2.hash
    assert log.verify().ok and log.verify().checked == 5


def test_deferred_events_survive_an_exception_in_the_block(log, engine):
    with pytest.raises(RuntimeError), log.deferred():
        log.record("auth.signin.failure", workspace_id="ws-a", data={"reason": "bad_password"})
        raise RuntimeError("the request failed after the event")
    assert [r.type for r in rows(engine, "ws-a")] == ["auth.signin.failure"]
    assert log.verify().ok


def test_deferral_is_per_thread(log, engine):
    seen = []
    with log.deferred():
        t = threading.Thread(target=lambda: seen.append(log.record("auth.signout", workspace_id="ws-a")))
        t.start()
        t.join()
        assert len(rows(engine, "ws-a")) == 1  # the other thread's event was written at once
    assert seen[0].seq == 1


def test_events_are_chained_per_workspace(log, clock, engine):
    a1 = log.record("auth.signin.success", workspace_id="ws-a", actor_id="u1", data={"amr": ["pwd"]})
    b1 = log.record("auth.signout", workspace_id="ws-b", actor_id="u2")
    a2 = log.record("session.ended", workspace_id="ws-a", actor_id="u1")
    hub = log.record("admin.config.applied")

    assert (a1.chain, a1.seq, a1.prev_hash) == ("ws-a", 1, GENESIS_HASH)
    assert (a2.chain, a2.seq, a2.prev_hash) == ("ws-a", 2, a1.hash)
    assert (b1.chain, b1.seq, b1.prev_hash) == ("ws-b", 1, GENESIS_HASH)
    assert (hub.chain, hub.seq, hub.workspace_id) == ("_hub", 1, None)
    assert len(a1.hash) == 64 and a1.hash != a2.hash
    stored = rows(engine, "ws-a")
    assert [r.hash for r in stored] == [a1.hash, a2.hash]
    with make_sessionmaker(engine)() as db:
        assert db.get(AuditChainHead, "ws-a").seq == 2
        assert db.get(AuditChainHead, "ws-a").hash == a2.hash
        got = db.scalar(select(AuditEvent).where(AuditEvent.chain == "ws-a", AuditEvent.seq == 1))
        assert got.occurred_at == T0 and got.occurred_at.tzinfo is not None
        key = log.keys.current  # what came back from the database MACs and hashes the same
        assert got.mac == content_mac(key, got) == a1.mac and got.key_id == key.key_id
        assert chain_hash(key, "ws-a", 1, GENESIS_HASH, got.mac) == a1.hash
    assert log.verify() == log.verify(None)
    assert log.verify().ok and log.verify().checked == 4


def test_mac_covers_every_field_and_the_hash_links_seq_and_previous(log):
    ev = log.record("auth.signin.failure", workspace_id="ws-1", actor_email="a@acme.test", ip="198.51.100.1")
    key = log.keys.current
    for field, value in [("ip", "198.51.100.2"), ("type", "auth.signin.success"), ("data", {"x": 1}),
                         ("occurred_at", T0 + timedelta(microseconds=1)), ("chain", "ws-2"), ("key_id", "x"),
                         ("user_agent", "x"), ("actor_id", "u"), ("subject_id", "s"), ("request_id", "r"),
                         ("workspace_id", "ws-2"), ("actor_email", "b@acme.test")]:
        copy = AuditEvent(**{c: getattr(ev, c) for c in ("chain", "workspace_id", "occurred_at", "type", "key_id",
                                                         "actor_id", "actor_email", "subject_id", "ip",
                                                         "user_agent", "request_id", "data")})
        assert content_mac(key, copy) == ev.mac
        setattr(copy, field, value)
        assert content_mac(key, copy) != ev.mac, field
    assert chain_hash(key, "ws-1", 1, GENESIS_HASH, ev.mac) == ev.hash
    assert chain_hash(key, "ws-1", 2, GENESIS_HASH, ev.mac) != ev.hash
    assert chain_hash(key, "ws-1", 1, "1" * 64, ev.mac) != ev.hash
    other = AuditLog(log._sm, secrets=["other-secret-" * 3], seal="inline").keys.current
    assert chain_hash(other, "ws-1", 1, GENESIS_HASH, ev.mac) != ev.hash  # keyed: no key, no hash


def test_invalid_type_is_refused(log):
    for bad in ["", "Auth.Signin", "auth signin", "a" * 65, "auth..x", "auth.signin;drop"]:
        with pytest.raises(ValueError):
            log.record(bad, workspace_id="ws-1")


def test_long_values_are_clipped_before_hashing(log, engine):
    ev = log.record("auth.signin.failure", workspace_id="ws-1", user_agent="U" * 5000, ip="1" * 200)
    assert len(ev.user_agent) == 512 and len(ev.ip) == 64
    assert log.verify("ws-1").ok


# ---- secrets never stored -----------------------------------------------------------------------------------
def test_secrets_in_data_are_redacted(log, engine):
    data = {
        "password": "hunter2-pw", "newPassword": "hunter3-pw", "client_secret": "s3cr3t-value",
        "access_token": "tok-value", "otp": "918273", "recovery": {"backup_codes": ["bk-1", "bk-2"],
                                                                     "TOTP_Code": "654321"},
        "steps": [{"sms_code": "777888"}, {"kept": "visible"}], "reason": "bad_password", "failures": 3,
    }
    ev = log.record("auth.signin.failure", workspace_id="ws-1", data=data)
    assert ev.data["password"] == REDACTED and ev.data["newPassword"] == REDACTED
    assert ev.data["recovery"] == {"backup_codes": REDACTED, "TOTP_Code": REDACTED}
    assert ev.data["steps"] == [{"sms_code": REDACTED}, {"kept": "visible"}]
    assert ev.data["reason"] == "bad_password" and ev.data["failures"] == 3
    stored = str(rows(engine, "ws-1")[0])
    for secret in ["hunter2-pw", "hunter3-pw", "s3cr3t-value", "tok-value", "918273", "bk-1", "654321", "777888"]:
        assert secret not in stored
    assert data["password"] == "hunter2-pw"  # the caller's dict is left alone
    assert log.verify().ok


def test_redact_is_pure_and_recursive():
    assert redact({"a": [{"Refresh_Token": "x", "b": ({"otp_secret": 1},)}]}) == {
        "a": [{"Refresh_Token": REDACTED, "b": [{"otp_secret": REDACTED}]}]
    }
    assert redact("password") == "password"  # values are not keys


# ---- concurrency --------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_concurrent_appends_serialise(log, engine):
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()  # all start together on a chain without a head row: the insert race
            for i in range(per_thread):
                log.record("policy.decision", workspace_id="ws-race", actor_id=f"t{n}", data={"i": i})
                if i % 5 == 0:
                    log.record("auth.signout", workspace_id="ws-other", actor_id=f"t{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    race = rows(engine, "ws-race")
    assert [r.seq for r in race] == list(range(1, threads * per_thread + 1))
    assert all(r.prev_hash == p.hash for p, r in zip(race, race[1:], strict=False))
    assert [r.seq for r in rows(engine, "ws-other")] == list(range(1, threads * 5 + 1))
    result = log.verify()
    assert result.ok, result
    assert result.checked == threads * per_thread + threads * 5
    assert log.verify("ws-race").checked == threads * per_thread


# ---- tamper detection ---------------------------------------------------------------------------------------
def test_verify_detects_an_edited_field(log, clock, engine):
    fill(log, clock, 5)
    raw(engine, "UPDATE audit_events SET actor_email = 'someone-else@acme.test' WHERE chain = 'ws-1' AND seq = 3")
    result = log.verify()
    assert (result.ok, result.first_bad_seq, result.chain) == (False, 3, "ws-1")
    assert "MAC" in result.reason and result.checked == 2


def test_verify_detects_edited_data(log, clock, engine):
    fill(log, clock, 3)
    raw(engine, "UPDATE audit_events SET data = :d WHERE chain = 'ws-1' AND seq = 2", d=json.dumps({"i": 99}))
    assert log.verify("ws-1").first_bad_seq == 2


def test_verify_detects_a_deleted_event(log, clock, engine):
    fill(log, clock, 5)
    raw(engine, "DELETE FROM audit_events WHERE chain = 'ws-1' AND seq = 2")
    result = log.verify("ws-1")
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "missing" in result.reason


def test_verify_detects_a_deleted_last_event(log, clock, engine):
    fill(log, clock, 4)
    raw(engine, "DELETE FROM audit_events WHERE chain = 'ws-1' AND seq = 4")
    result = log.verify("ws-1")
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_verify_detects_reordered_events(log, clock, engine):
    fill(log, clock, 5)
    raw(engine, "UPDATE audit_events SET seq = -1 WHERE chain = 'ws-1' AND seq = 2")
    raw(engine, "UPDATE audit_events SET seq = 2 WHERE chain = 'ws-1' AND seq = 3")
    raw(engine, "UPDATE audit_events SET seq = 3 WHERE chain = 'ws-1' AND seq = -1")
    result = log.verify("ws-1")
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_verify_detects_swapped_timestamps(log, clock, engine):
    fill(log, clock, 3)
    with engine.connect() as conn:
        t1, t2 = [r[0] for r in conn.execute(text("SELECT occurred_at FROM audit_events ORDER BY seq LIMIT 2"))]
    raw(engine, "UPDATE audit_events SET occurred_at = :t WHERE seq = 1", t=t2)
    raw(engine, "UPDATE audit_events SET occurred_at = :t WHERE seq = 2", t=t1)
    assert log.verify().first_bad_seq == 1


def test_verify_detects_a_forged_hash(log, clock, engine, ):
    events = fill(log, clock, 5)
    forged = events[2]
    forged.actor_id = "attacker"
    wrong = AuditLog(log._sm, secrets=["a-guessed-secret" * 2], seal="inline").keys.current
    forged.key_id = log.keys.current.key_id
    mac = content_mac(wrong, forged)  # an attacker without the key MACs and hashes with one of their own
    raw(engine, "UPDATE audit_events SET actor_id = 'attacker', mac = :m, hash = :h WHERE chain = 'ws-1' AND seq = 3",
        m=mac, h=chain_hash(wrong, "ws-1", 3, forged.prev_hash, mac))
    result = log.verify("ws-1")
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "MAC" in result.reason


def test_verify_detects_an_inserted_event(log, clock, engine):
    fill(log, clock, 2)
    raw(engine, "INSERT INTO audit_events (chain, seq, workspace_id, occurred_at, type, data, prev_hash, hash) "
                "VALUES ('ws-1', 3, 'ws-1', :t, 'auth.signout', '{}', :p, :h)", t=T0, p="f" * 64, h="e" * 64)
    assert log.verify("ws-1").first_bad_seq == 3


def test_verify_detects_an_event_moved_between_workspaces(log, clock, engine):
    fill(log, clock, 2, ws="ws-1")
    fill(log, clock, 2, ws="ws-2")
    raw(engine, "UPDATE audit_events SET workspace_id = 'ws-2' WHERE chain = 'ws-1' AND seq = 2")
    assert log.verify("ws-1").first_bad_seq == 2
    assert log.verify("ws-2").ok


def test_verify_one_workspace_only_checks_its_chain(log, clock, engine):
    fill(log, clock, 3, ws="ws-1")
    fill(log, clock, 2, ws="ws-2")
    raw(engine, "UPDATE audit_events SET ip = '10.0.0.1' WHERE chain = 'ws-1' AND seq = 1")
    assert log.verify("ws-2") == log.verify("ws-2").__class__(True, 2)
    assert not log.verify("ws-1").ok
    assert not log.verify().ok


def test_verify_detects_a_missing_head(log, clock, engine):
    fill(log, clock, 2)
    raw(engine, "DELETE FROM audit_chain_heads")
    result = log.verify()
    assert not result.ok and result.first_bad_seq == 1


# ---- export -------------------------------------------------------------------------------------------------
def test_export_json_is_a_streamed_array(log, clock):
    fill(log, clock, 1200)
    log.record("auth.signout", workspace_id="ws-other")
    chunks = log.export("ws-1", fmt="json")
    assert iter(chunks) is chunks  # a generator, not a string
    chunks = list(chunks)
    assert len(chunks) > 3  # streamed in batches
    events = json.loads("".join(chunks))
    assert len(events) == 1200
    assert [e["seq"] for e in events] == list(range(1, 1201))
    first = events[0]
    assert first["occurred_at"] == "2025-03-01T12:00:00.123456Z"
    assert first["type"] == "auth.signin.success" and first["data"] == {"i": 0}
    assert first["workspace_id"] == "ws-1" and len(first["hash"]) == 64


def test_export_empty_json(log):
    assert json.loads("".join(log.export("nobody"))) == []


def test_export_filters(log, clock):
    fill(log, clock, 10)  # one a minute from T0
    log.record("password.changed", workspace_id="ws-1")
    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=5)
    got = json.loads("".join(log.export("ws-1", since=since, until=until)))
    assert [e["data"]["i"] for e in got] == [2, 3, 4]
    got = json.loads("".join(log.export("ws-1", types=["password.changed"])))
    assert [e["type"] for e in got] == ["password.changed"]


def test_export_csv_has_a_header_and_defuses_formulas(log):
    log.record("auth.signin.failure", workspace_id="ws-1", actor_email="=HYPERLINK(\"http://evil\")",
               user_agent="+cmd|' /C calc'!A0", request_id="-2+3", subject_id="@SUM(A1)", ip="203.0.113.9",
               data={"reason": "bad_password"})
    text_out = "".join(log.export("ws-1", fmt="csv"))
    reader = csv.DictReader(io.StringIO(text_out))
    assert reader.fieldnames[:3] == ["seq", "occurred_at", "type"]
    (row,) = list(reader)
    assert row["actor_email"] == "'=HYPERLINK(\"http://evil\")"
    assert row["user_agent"] == "'+cmd|' /C calc'!A0"
    assert row["request_id"] == "'-2+3"
    assert row["subject_id"] == "'@SUM(A1)"
    assert row["ip"] == "203.0.113.9"
    assert row["occurred_at"] == "2025-03-01T12:00:00.123456Z"
    assert json.loads(row["data"]) == {"reason": "bad_password"}
    assert row["actor_id"] == ""


def test_export_rejects_unknown_format(log):
    with pytest.raises(ValueError):
        log.export("ws-1", fmt="xml")


# ---- retention ----------------------------------------------------------------------------------------------
def test_retention_by_plan():
    assert RETENTION_DAYS == {"free": 30, "pro": 180, "enterprise": 730}
    assert retention_days("pro") == 180 and retention_days("mystery") == 30


def test_prune_keeps_the_chain_verifiable(log, clock, engine):
    for days_ago in (100, 60, 45, 20, 1):
        clock.now = T0 - timedelta(days=days_ago)
        log.record("auth.signin.success", workspace_id="ws-1", data={"days_ago": days_ago})
    log.record("auth.signin.success", workspace_id="ws-2")
    clock.now = T0

    assert log.prune("ws-1", 30, now=T0) == 3
    assert [r.seq for r in rows(engine, "ws-1")] == [4, 5, 6]
    assert rows(engine, "ws-1")[-1].type == "audit.pruned"  # the prune's own sealed record
    with make_sessionmaker(engine)() as db:
        head = db.get(AuditChainHead, "ws-1")
        assert head.pruned_through_seq == 3 and head.anchor_hash == rows(engine, "ws-1")[0].prev_hash
    assert log.verify("ws-1") == log.verify("ws-1").__class__(True, 3)
    assert len(rows(engine, "ws-2")) == 1  # other workspaces untouched

    assert log.prune("ws-1", 30, now=T0) == 0  # idempotent
    ev = log.record("auth.signout", workspace_id="ws-1")
    assert ev.seq == 7
    assert log.verify().ok

    # Still tamper-evident after pruning: removing the oldest remaining event is noticed.
    raw(engine, "DELETE FROM audit_events WHERE chain = 'ws-1' AND seq = 4")
    assert log.verify("ws-1").first_bad_seq == 4


def test_prune_everything_then_continue(log, clock):
    fill(log, clock, 3)
    assert log.prune("ws-1", 0, now=clock.now + timedelta(seconds=1)) == 3
    assert log.verify("ws-1").ok and log.verify("ws-1").checked == 1  # the audit.pruned record
    log.record("auth.signout", workspace_id="ws-1")
    assert log.verify("ws-1") == log.verify("ws-1").__class__(True, 2)


def test_prune_only_removes_a_contiguous_prefix(log, clock, engine):
    clock.now = T0 - timedelta(days=90)
    log.record("auth.signout", workspace_id="ws-1")
    clock.now = T0 - timedelta(days=1)
    log.record("auth.signout", workspace_id="ws-1")
    clock.now = T0 - timedelta(days=95)  # a clock that went backwards
    log.record("auth.signout", workspace_id="ws-1")
    assert log.prune("ws-1", 30, now=T0) == 1
    assert [r.seq for r in rows(engine, "ws-1")] == [2, 3, 4]
    assert log.verify().ok


def test_prune_unknown_workspace_is_a_no_op(log):
    assert log.prune("nobody", 30, now=T0) == 0
