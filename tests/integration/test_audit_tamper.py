"""Tampering with the audit log by someone who can write to the database (but does not hold IDHUB_SECRET_KEY), on
PostgreSQL: every edit, deletion, reordering, truncation with the head rolled back, fake prune and rewrite with
recomputed hashes fails ``idhub audit verify`` given a checkpoint taken before it; the CLI says where."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from idp.audit import AuditChainHead, AuditEvent, AuditLog, chain_hash, content_mac, verify_checkpoint
from idp.models import Workspace
from tests.conftest import make_app, make_settings
from tests.services import drop_postgres, postgres_url

pytestmark = pytest.mark.services
IDHUB = str(Path(sys.executable).parent / "idhub")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg(tmp_path):
    url = postgres_url()
    settings = make_settings(tmp_path, database_url=url)
    app = make_app(settings)
    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    yield hub, ws_id, settings
    hub.audit.stop()
    hub.engine.dispose()
    drop_postgres(url)


def fill(hub, ws_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        hub.audit.record("auth.signin.success", workspace_id=ws_id, actor_email=f"u{i}@acme.test", ip="203.0.113.7",
                         data={"i": i})
    hub.audit.seal(ws_id)


def sql(hub, stmt: str, **params) -> None:
    """The attacker: straight to the database."""
    with hub.engine.begin() as conn:
        conn.execute(text(stmt), params)


def events(hub, ws_id: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.chain == ws_id, AuditEvent.seq.is_not(None))
                               .order_by(AuditEvent.seq)))


def head(hub, ws_id: str) -> AuditChainHead:
    with hub.db() as db:
        return db.get(AuditChainHead, ws_id)


def seq_of(hub, ws_id: str, i: int) -> int:
    return next(e.seq for e in events(hub, ws_id) if e.data.get("i") == i)


def roll_head_back(hub, ws_id: str, to_seq: int) -> None:
    """Delete every event after ``to_seq`` and point the head at ``to_seq``: the chain looks whole."""
    kept = next(e for e in events(hub, ws_id) if e.seq == to_seq)
    sql(hub, "DELETE FROM audit_events WHERE chain = :c AND seq > :s", c=ws_id, s=to_seq)
    sql(hub, "UPDATE audit_chain_heads SET seq = :s, hash = :h WHERE chain = :c", c=ws_id, s=to_seq, h=kept.hash)


def attacker_rechain(hub, ws_id: str, from_seq: int, mac_fn, hash_fn) -> None:
    """Recompute every MAC and hash from ``from_seq`` on with the attacker's functions, and the head."""
    evs = events(hub, ws_id)
    prev = next(e.hash for e in evs if e.seq == from_seq - 1) if from_seq > 1 else head(hub, ws_id).anchor_hash
    for e in evs:
        if e.seq < from_seq:
            continue
        mac = mac_fn(e)
        h = hash_fn(e.seq, prev, mac)
        sql(hub, "UPDATE audit_events SET mac = :m, prev_hash = :p, hash = :h WHERE id = :id", m=mac, p=prev, h=h,
            id=e.id)
        prev = h
    sql(hub, "UPDATE audit_chain_heads SET hash = :h WHERE chain = :c", h=prev, c=ws_id)


# ---- the baseline ------------------------------------------------------------------------------------------
def test_an_untouched_chain_verifies_with_and_without_its_checkpoint(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 6)
    cp = hub.audit.checkpoint(ws_id, "acme")
    assert verify_checkpoint(hub.audit.keys, cp) == cp
    assert (cp["workspace"], cp["chain"], cp["alg"], cp["key_id"]) == ("acme", ws_id, "Ed25519",
                                                                      hub.audit.keys.current.key_id)
    assert cp["seq"] == head(hub, ws_id).seq and cp["hash"] == head(hub, ws_id).hash
    assert hub.audit.verify(ws_id).ok and hub.audit.verify(ws_id, checkpoint=cp).ok
    fill(hub, ws_id, 3, start=6)  # later events do not spoil an older checkpoint
    assert hub.audit.verify(ws_id, checkpoint=cp).ok


# ---- each tampering ----------------------------------------------------------------------------------------
def test_an_edited_event_fails(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 5)
    cp = hub.audit.checkpoint(ws_id, "acme")
    s = seq_of(hub, ws_id, 2)
    sql(hub, "UPDATE audit_events SET actor_email = 'someone-else@acme.test' WHERE chain = :c AND seq = :s",
        c=ws_id, s=s)
    for result in (hub.audit.verify(ws_id), hub.audit.verify(ws_id, checkpoint=cp)):
        assert (result.ok, result.first_bad_seq) == (False, s) and "MAC" in result.reason


def test_a_deleted_event_fails(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 5)
    cp = hub.audit.checkpoint(ws_id, "acme")
    s = seq_of(hub, ws_id, 2)
    sql(hub, "DELETE FROM audit_events WHERE chain = :c AND seq = :s", c=ws_id, s=s)
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert (result.ok, result.first_bad_seq) == (False, s) and "missing" in result.reason


def test_reordered_events_fail(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 5)
    cp = hub.audit.checkpoint(ws_id, "acme")
    a, b = seq_of(hub, ws_id, 1), seq_of(hub, ws_id, 2)
    sql(hub, "UPDATE audit_events SET seq = -1 WHERE chain = :c AND seq = :s", c=ws_id, s=a)
    sql(hub, "UPDATE audit_events SET seq = :a WHERE chain = :c AND seq = :b", c=ws_id, a=a, b=b)
    sql(hub, "UPDATE audit_events SET seq = :b WHERE chain = :c AND seq = -1", c=ws_id, b=b)
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert (result.ok, result.first_bad_seq) == (False, a)


def test_truncation_with_the_head_rolled_back_fails_given_a_checkpoint(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 8)
    cp = hub.audit.checkpoint(ws_id, "acme")
    roll_head_back(hub, ws_id, cp["seq"] - 3)
    # Without anything outside the database this is undetectable: the chain that is left is whole.
    assert hub.audit.verify(ws_id).ok
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert not result.ok and result.first_bad_seq == cp["seq"] - 2
    assert f"truncated: the checkpoint covers seq {cp['seq']}, the chain ends at {cp['seq'] - 3}" in result.reason


def test_truncation_then_new_events_to_the_same_length_fails(pg):
    """Roll back and let the chain grow again past the checkpoint: the hash at the checkpoint's seq differs."""
    hub, ws_id, _ = pg
    fill(hub, ws_id, 6)
    cp = hub.audit.checkpoint(ws_id, "acme")
    roll_head_back(hub, ws_id, cp["seq"] - 2)
    fill(hub, ws_id, 4, start=100)  # sealed by idhub itself, with the key: a well-formed chain
    assert hub.audit.verify(ws_id).ok
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert (result.ok, result.first_bad_seq) == (False, cp["seq"]) and "rewritten" in result.reason


def test_a_fake_prune_fails_even_without_a_checkpoint(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 6)
    cp = hub.audit.checkpoint(ws_id, "acme")
    evs = events(hub, ws_id)
    through = evs[2]
    sql(hub, "DELETE FROM audit_events WHERE chain = :c AND seq <= :s", c=ws_id, s=through.seq)
    sql(hub, "UPDATE audit_chain_heads SET pruned_through_seq = :s, anchor_hash = :h WHERE chain = :c",
        c=ws_id, s=through.seq, h=through.hash)
    for result in (hub.audit.verify(ws_id), hub.audit.verify(ws_id, checkpoint=cp)):
        assert not result.ok and result.first_bad_seq == through.seq
        assert "removed without a prune record" in result.reason


def test_a_fake_prune_record_fails(pg):
    """Copying a real ``audit.pruned`` record's contents into a forged one does not help: no key, no MAC."""
    hub, ws_id, _ = pg
    fill(hub, ws_id, 6)
    evs = events(hub, ws_id)
    through = evs[2]
    sql(hub, "DELETE FROM audit_events WHERE chain = :c AND seq <= :s", c=ws_id, s=through.seq)
    sql(hub, "UPDATE audit_chain_heads SET pruned_through_seq = :s, anchor_hash = :h WHERE chain = :c",
        c=ws_id, s=through.seq, h=through.hash)
    last = evs[-1]
    sql(hub, "UPDATE audit_events SET type = 'audit.pruned', data = :d WHERE id = :id", id=last.id,
        d=json.dumps({"through_seq": through.seq, "anchor_hash": through.hash}))
    result = hub.audit.verify(ws_id)
    assert not result.ok and result.first_bad_seq == last.seq and "MAC" in result.reason


def test_a_real_prune_verifies_against_an_older_checkpoint(pg):
    hub, ws_id, _ = pg
    with hub.db() as db:
        db.execute(text("DELETE FROM audit_events WHERE chain = :c"), {"c": ws_id})
        db.execute(text("DELETE FROM audit_chain_heads WHERE chain = :c"), {"c": ws_id})
        db.commit()
    now = hub.clock()
    old = AuditLog(hub.db, clock=lambda: now - timedelta(days=1000), secrets=[hub.settings.secret_key])
    for i in range(4):
        old.record("auth.signin.success", workspace_id=ws_id, data={"i": i})
    old.seal(ws_id)
    old.stop()
    cp_early = hub.audit.checkpoint(ws_id, "acme")  # covers exactly what the prune will remove
    fill(hub, ws_id, 2, start=10)
    cp = hub.audit.checkpoint(ws_id, "acme")
    assert hub.audit.prune(ws_id, 730, now) == 4
    assert hub.audit.verify(ws_id).ok
    assert hub.audit.verify(ws_id, checkpoint=cp).ok
    record = events(hub, ws_id)[-1]
    assert record.type == "audit.pruned" and record.data["through_seq"] == 4
    assert hub.audit.verify(ws_id, checkpoint=cp_early).ok  # its last event is the prune's anchor


def test_a_rewrite_with_every_later_hash_recomputed_fails(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 6)
    cp = hub.audit.checkpoint(ws_id, "acme")
    s = seq_of(hub, ws_id, 2)
    sql(hub, "UPDATE audit_events SET actor_email = 'attacker@evil.test' WHERE chain = :c AND seq = :s", c=ws_id, s=s)
    # The old unkeyed scheme: SHA-256 over the contents and the links.
    sha = hashlib.sha256
    attacker_rechain(hub, ws_id, s,
                     lambda e: sha(json.dumps([e.type, e.actor_email, e.data], sort_keys=True).encode()).hexdigest(),
                     lambda seq, prev, mac: sha(f"{ws_id}|{seq}|{prev}|{mac}".encode()).hexdigest())
    for result in (hub.audit.verify(ws_id), hub.audit.verify(ws_id, checkpoint=cp)):
        assert (result.ok, result.first_bad_seq) == (False, s) and "MAC" in result.reason
    # The same scheme as idhub's, with a guessed secret (and its own key id): an unknown key.
    guess = AuditLog(hub.db, secrets=["a guessed secret, not IDHUB_SECRET_KEY"]).keys.current
    sql(hub, "UPDATE audit_events SET key_id = :k WHERE chain = :c AND seq >= :s", k=guess.key_id, c=ws_id, s=s)
    attacker_rechain(hub, ws_id, s, lambda e: content_mac(guess, e),
                     lambda seq, prev, mac: chain_hash(guess, ws_id, seq, prev, mac))
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert (result.ok, result.first_bad_seq) == (False, s) and "unknown key" in result.reason
    # ... or claiming idhub's key id: the MAC does not verify.
    real = hub.audit.keys.current.key_id
    sql(hub, "UPDATE audit_events SET key_id = :k WHERE chain = :c AND seq >= :s", k=real, c=ws_id, s=s)
    attacker_rechain(hub, ws_id, s, lambda e: content_mac(guess, e),
                     lambda seq, prev, mac: chain_hash(guess, ws_id, seq, prev, mac))
    result = hub.audit.verify(ws_id, checkpoint=cp)
    assert (result.ok, result.first_bad_seq) == (False, s) and "MAC" in result.reason


def test_an_edited_unsealed_event_fails_and_is_never_sealed(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 2)
    hub.audit.stop()  # no sealer: the next event stays appended, unsealed
    hub.audit.record("auth.signin.failure", workspace_id=ws_id, actor_email="bob@acme.test")
    assert hub.audit.verify(ws_id).unsealed == 1
    sql(hub, "UPDATE audit_events SET actor_email = 'nobody@acme.test' WHERE chain = :c AND seq IS NULL", c=ws_id)
    result = hub.audit.verify(ws_id)
    assert not result.ok and "unsealed event" in result.reason and "MAC" in result.reason
    assert hub.audit.seal(ws_id) == 0  # the sealer will not chain a forgery
    assert not hub.audit.verify(ws_id).ok


def test_a_forged_or_foreign_checkpoint_is_refused(pg):
    hub, ws_id, _ = pg
    fill(hub, ws_id, 3)
    cp = hub.audit.checkpoint(ws_id, "acme")
    result = hub.audit.verify(ws_id, checkpoint={**cp, "seq": cp["seq"] - 1})
    assert not result.ok and "signature" in result.reason
    result = hub.audit.verify(None, checkpoint=cp)
    assert not result.ok and "another workspace" in result.reason
    other = AuditLog(hub.db, secrets=["some other deployment's secret key"])
    result = other.verify(ws_id, checkpoint=cp)
    assert not result.ok and "unknown key" in result.reason


def test_events_and_checkpoints_under_the_previous_secret_verify_after_a_rotation(pg):
    hub, ws_id, settings = pg
    fill(hub, ws_id, 3)
    cp = hub.audit.checkpoint(ws_id, "acme")
    rotated = AuditLog(hub.db, secrets=["n" * 48, settings.secret_key])
    rotated.record("auth.signout", workspace_id=ws_id)
    rotated.seal(ws_id)
    assert rotated.verify(ws_id, checkpoint=cp).ok
    assert {e.key_id for e in events(hub, ws_id)} == {hub.audit.keys.current.key_id, rotated.keys.current.key_id}
    assert not AuditLog(hub.db, secrets=["n" * 48]).verify(ws_id).ok  # the previous secret is needed
    rotated.stop()


# ---- the command line --------------------------------------------------------------------------------------
def idhub(settings, *args):
    env = {**os.environ, "IDHUB_DATABASE_URL": settings.database_url, "IDHUB_SECRET_KEY": settings.secret_key,
           "IDHUB_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "idp.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def test_the_cli_checkpoint_and_verify(pg, tmp_path):
    hub, ws_id, settings = pg
    fill(hub, ws_id, 5)
    r = idhub(settings, "audit", "checkpoint", "--workspace", "acme")
    assert r.returncode == 0, r.stderr
    cp = json.loads(r.stdout)
    assert cp["workspace"] == "acme" and cp["seq"] == head(hub, ws_id).seq
    path = tmp_path / "cp.json"
    path.write_text(r.stdout)
    r = idhub(settings, "audit", "verify", "--workspace", "acme", "--checkpoint", str(path))
    assert r.returncode == 0 and "intact" in r.stdout, r.stderr
    roll_head_back(hub, ws_id, cp["seq"] - 2)
    assert idhub(settings, "audit", "verify", "--workspace", "acme").returncode == 0
    r = idhub(settings, "audit", "verify", "--workspace", "acme", "--checkpoint", str(path))
    assert r.returncode == 1
    assert f"TAMPERED: first bad event seq {cp['seq'] - 1}: truncated" in r.stderr
    # a whole `audit.checkpoint` log line is accepted too, and names its workspace
    path.write_text(json.dumps({"message": "audit.checkpoint", "checkpoint": cp}))
    r = idhub(settings, "audit", "verify", "--checkpoint", str(path))
    assert r.returncode == 1 and "truncated" in r.stderr
    path.write_text("not json")
    r = idhub(settings, "audit", "verify", "--workspace", "acme", "--checkpoint", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
