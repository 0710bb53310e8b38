"""SCIM on PostgreSQL: concurrent creates of one userName (in different case) → exactly one 201, the rest 409;
filters, ids and bodies with NUL (which PostgreSQL cannot store or compare) are SCIM errors, never a 500; case-exact
substring filters and the filters on groups, members and meta agree with SQLite."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, func, select

from idp.audit import AuditChainHead, AuditEvent
from idp.models import User, Workspace
from tests.conftest import BASE_CONFIG, make_app, make_settings
from tests.integration.scim_helpers import (
    BASE,
    USER_SCHEMA,
    Scim,
    assert_error,
    check_case_exact_substrings,
    check_control_characters,
    check_control_characters_in_bodies,
    check_rfc_filters,
    install_tokens,
    scim_config,
)
from tests.services import drop_postgres, postgres_url

pytestmark = pytest.mark.services


@pytest.fixture
def pg_app(tmp_path):
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url), scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    yield app
    app.extensions["idhub"].engine.dispose()
    drop_postgres(url)


def test_concurrent_creates_of_one_user_name(pg_app):
    names = ["race@acme.test", "RACE@acme.test", "Race@Acme.Test", "race@ACME.test", "rAcE@acme.TEST",
             "RACE@ACME.TEST", "race@acme.Test", "Race@acme.test"]
    barrier = threading.Barrier(len(names))
    results: list = [None] * len(names)

    def create(i: int) -> None:
        client = Scim(pg_app)
        barrier.wait()
        results[i] = client.post("/Users", {"schemas": [USER_SCHEMA], "userName": names[i]})

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * (len(names) - 1), statuses
    for r in results:
        if r.status_code == 409:
            assert_error(r, 409, "uniqueness")
    with pg_app.extensions["idhub"].db() as db:
        assert db.scalar(select(func.count()).select_from(User).where(User.email_normalized == "race@acme.test")) == 1
        # the create and its audit event commit together: one event for the winner, none for the losers
        created = list(db.scalars(select(AuditEvent).where(AuditEvent.type == "scim.user.created")))
    winner = next(r for r in results if r.status_code == 201).get_json()["id"]
    assert [e.subject_id for e in created] == [winner]
    assert pg_app.extensions["idhub"].audit.verify().ok


def test_concurrent_creates_of_many_users_are_all_audited_in_one_chain(pg_app):
    """Creates append to the workspace's chain inside their own transaction, concurrently and without a lock; the
    sealer creates the head of a workspace without one."""
    hub = pg_app.extensions["idhub"]
    with hub.db() as db:
        ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        db.execute(delete(AuditEvent).where(AuditEvent.chain == ws_id))
        db.execute(delete(AuditChainHead).where(AuditChainHead.chain == ws_id))
        db.commit()
    n = 12
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def create(i: int) -> None:
        client = Scim(pg_app)
        barrier.wait()
        results[i] = client.post("/Users", {"schemas": [USER_SCHEMA], "userName": f"many{i}@acme.test"})

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [201] * n, [r.get_data(as_text=True)[:200] for r in results]
    hub.audit.seal(ws_id)  # the events are durable; a sealer numbers them in the order it sees them
    with hub.db() as db:
        events = list(db.scalars(select(AuditEvent).where(AuditEvent.chain == ws_id).order_by(AuditEvent.seq)))
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert {e.subject_id for e in events} == {r.get_json()["id"] for r in results}
    assert all(e.type == "scim.user.created" and e.actor_email == "scim:okta" for e in events)
    assert hub.audit.verify(ws_id).ok


def test_filters_and_patch_on_postgres(pg_app):
    scim = Scim(pg_app)
    u = scim.create_user("pg@acme.test", emails=[{"value": "PG_1%@work.test", "type": "work"}], title="Boss")
    r = scim.get("/Users", query={"filter": 'emails[type eq "work" and value co "g_1%"] and title eq "boss"'})
    assert [x["id"] for x in r.get_json()["Resources"]] == [u["id"]]
    r = scim.get("/Users", query={"filter": 'emails.value co "g_2"'})
    assert r.get_json()["totalResults"] == 0
    r = scim.patch(f"/Users/{u['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert r.get_json()["active"] is False
    r = scim.get("/Users", query={"filter": "active eq false"})
    assert [x["id"] for x in r.get_json()["Resources"]] == [u["id"]]


def test_nul_and_control_characters_in_filters_and_ids_on_postgres(pg_app):
    check_control_characters(Scim(pg_app))


def test_nul_and_control_characters_in_bodies_on_postgres(pg_app):
    check_control_characters_in_bodies(Scim(pg_app))


def test_case_exact_substrings_on_postgres(pg_app):
    check_case_exact_substrings(Scim(pg_app))


def test_rfc_filters_on_groups_members_complex_attributes_and_meta_on_postgres(pg_app):
    check_rfc_filters(Scim(pg_app), "http://localhost" + BASE)
