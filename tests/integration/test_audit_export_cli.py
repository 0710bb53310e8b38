"""``idhub audit export --readable``: the console's columns (docs/events.md) from the command line — the actor's
e-mail also where the event recorded only the user's id — while the default stays the events as recorded."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from idp.audit import AuditLog
from idp.eventcatalog import EXPORT_COLUMNS
from tests.conftest import BASE_CONFIG, BOB
from tests.integration.test_cli import run, write


def test_readable_export_has_the_consoles_columns_and_the_actors_email(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    assert run(["apply", write(tmp_path, "c.yaml", BASE_CONFIG)], tmp_path).returncode == 0
    engine = create_engine(f"sqlite:///{tmp_path}/cli.db")
    with engine.connect() as conn:
        ws_id = conn.execute(text("SELECT id FROM workspaces WHERE slug = 'acme'")).scalar()
        bob = conn.execute(text("SELECT id FROM users WHERE email_normalized = :e"), {"e": BOB}).scalar()
    AuditLog(sessionmaker(bind=engine), secrets=["k" * 48]).record(  # the CLI's IDHUB_SECRET_KEY (test_cli.run)
        "auth.mfa.failure", workspace_id=ws_id, actor_id=bob, data={"method": "totp"})
    engine.dispose()

    r = run(["audit", "export", "--workspace", "acme", "--format", "csv", "--readable",
             "--type", "auth.mfa.failure"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == list(EXPORT_COLUMNS) and len(rows) == 1
    assert rows[0]["actor_email"] == BOB and rows[0]["outcome"] == "failure" and rows[0]["details"] == "method: totp"
    r = run(["audit", "export", "--workspace", "acme", "--readable"], tmp_path)
    assert {e["type"] for e in json.loads(r.stdout)} == {"admin.config.applied", "auth.mfa.failure"}
    # without --readable: the events exactly as recorded (the e-mail was not recorded)
    r = run(["audit", "export", "--workspace", "acme", "--format", "csv", "--type", "auth.mfa.failure"], tmp_path)
    raw = list(csv.DictReader(io.StringIO(r.stdout)))
    assert raw[0]["actor_email"] == "" and "description" not in raw[0]
