"""SCIM on PostgreSQL: concurrent creates of one userName (in different case) → exactly one 201, the rest 409."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from idp.models import User
from tests.conftest import BASE_CONFIG, make_app, make_settings
from tests.integration.scim_helpers import USER_SCHEMA, Scim, assert_error, install_tokens, scim_config
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
