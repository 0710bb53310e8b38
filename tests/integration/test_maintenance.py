"""Housekeeping (idp/maintenance.py, `idhub maintenance`): expired rows and old audit events go, the audit chain
stays verifiable, and one failing job does not stop the others."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from idp import maintenance
from idp.audit import AuditEvent, AuditLog
from idp.models import Workspace
from idp.storage.sql import OneTimeValue
from tests.helpers.live import LiveHub


def _events(hub, ws_id: str) -> int:
    with hub.db() as db:
        return db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.chain == ws_id))


def test_maintenance_removes_expired_rows_and_old_events(hub, caplog):
    with hub.db() as db:
        free = db.scalar(select(Workspace).where(Workspace.slug == "other"))  # plan free: 30 days of audit log
    past = datetime.now(UTC) - timedelta(days=45)
    old_log = AuditLog(hub.db, clock=lambda: past, secrets=[hub.settings.secret_key])
    for _ in range(3):
        old_log.record("auth.signin.success", workspace_id=free.id)
    hub.audit.record("auth.signout", workspace_id=free.id)
    before = _events(hub, free.id)
    hub.stores.one_time.put("maint:gone", "x", ttl=60)
    hub.stores.one_time.put("maint:kept", "y", ttl=3600)
    with hub.db() as db:  # the first one expired an hour ago
        db.execute(update(OneTimeValue).where(OneTimeValue.value == "x").values(expires_at=past))
        db.commit()

    caplog.set_level(logging.INFO, logger="idhub.maintenance")
    result = maintenance.run(hub)

    assert set(result) == {"stores", "audit_seal", "audit", "oidc", "saml_metadata"}
    assert all(isinstance(v, int) for v in result.values()), result
    assert result["audit"] >= 3 and result["stores"] >= 1
    with hub.db() as db:
        assert sorted(db.scalars(select(OneTimeValue.value))) == ["y"]
    assert _events(hub, free.id) == before - 3 + 1  # and the prune's own audit.pruned record
    checkpoints = {r.checkpoint["workspace"]: r.checkpoint for r in caplog.records if r.msg == "audit.checkpoint"}
    assert "other" in checkpoints  # a signed checkpoint of every chain, in the log
    assert hub.audit.verify(free.id, checkpoint=checkpoints["other"]).ok
    assert hub.audit.verify(free.id).ok  # pruning keeps what is left verifiable
    assert maintenance.run(hub)["audit"] == 0  # idempotent


def test_a_failing_job_does_not_stop_the_others(hub):
    ran = []

    def broken(_hub):
        raise ConnectionError("store down")

    result = maintenance.run(hub, {"first": broken, "second": lambda h: ran.append(1) or 7})
    assert result == {"first": "failed: ConnectionError", "second": 7}
    assert ran == [1]


def test_the_command_and_its_setting():
    live = LiveHub({"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise"}]})
    try:
        live.run("db", "upgrade")
        live.run("apply", str(live.write_config(live.config)))
        r = live.run("maintenance")
        assert r.returncode == 0 and "audit: 0" in r.stdout and "stores: " in r.stdout, r.stdout + r.stderr
        live.extra_env["IDHUB_MAINTENANCE_INTERVAL"] = "5"  # below a minute: refused, as every malformed setting is
        r = live.run("maintenance", check=False)
        assert r.returncode == 2 and "IDHUB_MAINTENANCE_INTERVAL" in r.stderr
    finally:
        live.cleanup()
