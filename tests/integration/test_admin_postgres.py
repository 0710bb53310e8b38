"""The admin API on PostgreSQL with Redis sessions: racing creates give one 201 and 409s (never a 500), searches
escape LIKE wildcards, and disabling a user ends sessions held in Redis."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from admin.api import admin_service
from idp.models import User, Workspace
from tests.conftest import ALICE, BOB, BOB_PW, Browser, make_app, make_settings
from tests.integration.test_admin_api import Api, assert_error, events
from tests.services import drop_postgres, postgres_url, redis_url

pytestmark = pytest.mark.services


@pytest.fixture
def pg(tmp_path):
    url = postgres_url()
    redis, _prefix = redis_url()
    app = make_app(make_settings(tmp_path, database_url=url, redis_url=redis))
    hub = app.extensions["idhub"]
    with hub.db() as db:
        acme = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    with app.app_context():
        token, _ = admin_service().tokens.create("pg", workspace_id=acme)
    try:
        yield app, token
    finally:
        hub.engine.dispose()
        drop_postgres(url)


def race(app, token, n, method, path, bodies):
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        api = Api(app, token)
        barrier.wait()
        results[i] = api.call(method, path, bodies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_creates_give_one_201_and_409s(pg):
    app, token = pg
    emails = ["race@acme.test", "RACE@acme.test", "Race@Acme.Test", "race@ACME.test", "rAcE@acme.test",
              "RaCe@acme.test"]
    results = race(app, token, len(emails), "POST", "/workspaces/acme/users",
                   [{"email": e, "password": "Quartz-Lantern-Ferry-82"} for e in emails])
    assert sorted(r.status_code for r in results) == [201] + [409] * (len(emails) - 1)
    for r in results:
        if r.status_code == 409:
            assert_error(r, 409, "conflict", "email")
    hub = app.extensions["idhub"]
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(User).where(User.email_normalized == "race@acme.test")) == 1
    results = race(app, token, 6, "POST", "/workspaces/acme/groups", [{"name": "ops"}] * 6)
    assert sorted(r.status_code for r in results) == [201] + [409] * 5
    assert len(events(hub, "admin.group.created")) == 1
    assert hub.audit.verify().ok


def test_searches_escape_wildcards_on_postgres(pg):
    app, token = pg
    api = Api(app, token)
    assert api.post("/workspaces/acme/users", {"email": "under_score@acme.test"}).status_code == 201
    assert [u["email"] for u in api.get("/workspaces/acme/users", query={"q": "_"}).get_json()["items"]] == \
        ["under_score@acme.test"]
    assert api.get("/workspaces/acme/users", query={"q": "%"}).get_json()["items"] == []
    assert [u["email"] for u in api.get("/workspaces/acme/users", query={"q": "ALICE"}).get_json()["items"]] == [ALICE]
    page = api.get("/workspaces/acme/audit/events", query={"type": "admin.user.*"}).get_json()
    assert [e["type"] for e in page["items"]] == ["admin.user.invited"]
    assert api.get("/workspaces/acme/audit/events", query={"type": "admin_*"}).get_json()["items"] == []


def test_disable_ends_redis_backed_sessions(pg):
    app, token = pg
    b = Browser(app)
    assert b.login("acme", BOB, BOB_PW).status_code == 302
    assert b.security().status_code == 200
    api = Api(app, token)
    bob = next(u for u in api.get("/workspaces/acme/users").get_json()["items"] if u["email"] == BOB)
    assert api.post(f"/workspaces/acme/users/{bob['id']}/disable").get_json()["status"] == "disabled"
    assert b.security().status_code == 302
