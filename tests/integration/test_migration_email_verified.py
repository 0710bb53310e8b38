"""Revision e3a1fed00001 (``users.email_verified_via``): ``idhub db upgrade`` adds the column to an existing
database, on SQLite and on PostgreSQL, keeps the rows (NULL: nothing vouched for so far), goes back down, and the
models match the migrations afterwards (no autogenerate diff)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from idp import schema
from idp.db import Base
from tests.integration.test_cli import run

BEFORE = "c7d1e0a0b004"
REVISION = "e3a1fed00001"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/cli.db"
        return
    from tests.services import drop_postgres, postgres_url

    pg = postgres_url()
    try:
        yield pg
    finally:
        drop_postgres(pg)


def upgrade(tmp_path, url: str, *revision: str) -> None:
    r = run(["db", "upgrade", *(("--revision", revision[0]) if revision else ())], tmp_path,
            env={"IDHUB_DATABASE_URL": url})
    assert r.returncode == 0, r.stderr


def columns(engine, table: str) -> dict:
    return {c["name"]: c for c in sa.inspect(engine).get_columns(table)}


def seed_user(engine) -> str:
    """A workspace and a user as a database before this revision holds them (reflected: the old columns only)."""
    md = sa.MetaData()
    ws, users = (sa.Table(t, md, autoload_with=engine) for t in ("workspaces", "users"))
    now = datetime.now(UTC).replace(tzinfo=None)
    ws_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    defaults = {sa.JSON: {}, sa.Boolean: False, sa.Integer: 0, sa.DateTime: now}

    def row(table, **given):
        out = dict(given)
        for c in table.columns:
            if c.name in out or c.nullable or c.server_default is not None:
                continue
            out[c.name] = next((v for t, v in defaults.items() if isinstance(c.type, t)), "x")
        return out

    with engine.begin() as conn:
        conn.execute(ws.insert().values(row(ws, id=ws_id, slug="acme", name="Acme", plan="free", domains=[],
                                            policies={}, created_at=now)))
        conn.execute(users.insert().values(row(users, id=user_id, workspace_id=ws_id, email="ceo@elsewhere.example",
                                               email_normalized="ceo@elsewhere.example", name="Chief",
                                               role="member", active=True, created_at=now, updated_at=now)))
    return user_id


def test_db_upgrade_adds_email_verified_via_to_an_existing_database(tmp_path, url):
    upgrade(tmp_path, url, BEFORE)  # a deployment of the release before
    engine = sa.create_engine(url)
    try:
        assert "email_verified_via" not in columns(engine, "users")
        user_id = seed_user(engine)

        upgrade(tmp_path, url)  # what the operator runs after updating
        col = columns(engine, "users")["email_verified_via"]
        assert col["nullable"] is True and isinstance(col["type"], sa.String) and col["type"].length == 100
        with engine.connect() as conn:
            head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            script = ScriptDirectory.from_config(schema.alembic_config(url))
            assert REVISION in {r.revision for r in script.iterate_revisions(head, BEFORE)}
            assert conn.execute(sa.text("SELECT email, email_verified_via FROM users WHERE id = :i"),
                                {"i": user_id}).one() == ("ceo@elsewhere.example", None)
            # the models match the migrations: autogenerate finds nothing to do
            schema.import_all_models()
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []

        command.downgrade(schema.alembic_config(url), BEFORE)
        assert "email_verified_via" not in columns(engine, "users")
        upgrade(tmp_path, url)
        assert "email_verified_via" in columns(engine, "users")
    finally:
        engine.dispose()
