"""SCIM userNames that are not e-mail addresses (RFC 7643 allows any string; HR systems send employee ids), on
PostgreSQL with Redis: the address is ``emails[primary]``; sign-in takes the address or the userName (one lookup
rule); a userName never equals another user's address (nor the other way round); hostile identifiers are refused;
a user with neither an address-shaped userName nor emails has no address and gets no mail; and names an admin gave
reach SCIM as displayName and name.formatted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from admin.api import admin_service
from idp.models import User, Workspace
from tests.conftest import BASE_CONFIG, BOB, Browser, make_app, make_settings
from tests.integration.scim_helpers import USER_SCHEMA, Scim, install_tokens, scim_config
from tests.integration.test_admin_api import Api, assert_error
from tests.services import drop_postgres, postgres_url, redis_url

pytestmark = pytest.mark.services

PW = "Harbour-Violet-Kettle-61"


@pytest.fixture
def pg(tmp_path):
    url = postgres_url()
    redis, _prefix = redis_url()
    app = make_app(make_settings(tmp_path, database_url=url, redis_url=redis), scim_config(BASE_CONFIG))
    hub = app.extensions["idhub"]
    install_tokens(hub)
    with hub.db() as db:
        acme = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    with app.app_context():
        token, _ = admin_service().tokens.create("ops", workspace_id=acme)
    try:
        yield app, Scim(app), Api(app, token)
    finally:
        hub.engine.dispose()
        drop_postgres(url)


def create(scim, user_name: str, **attrs):
    return scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": user_name, **attrs})


def scim_error(r, status: int, scim_type: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:400])
    body = r.get_json()
    if scim_type:
        assert body.get("scimType") == scim_type, body
    return body


def test_an_hr_system_user_signs_in_with_the_employee_id_or_the_address(pg):
    app, scim, _api = pg
    r = create(scim, "E-10442", emails=[{"value": "dana.hr@acme.test", "type": "work", "primary": True}],
               password=PW, name={"givenName": "Dana", "familyName": "Hr"})
    assert r.status_code == 201, r.get_data(as_text=True)
    user = r.get_json()
    assert user["userName"] == "E-10442" and user["emails"][0]["value"] == "dana.hr@acme.test"
    hub = app.extensions["idhub"]
    with hub.db() as db:
        row = db.get(User, user["id"])
        assert (row.email, row.username, row.username_normalized) == ("dana.hr@acme.test", "E-10442", "e-10442")
    for typed in ("E-10442", "e-10442", "dana.hr@acme.test", "DANA.HR@acme.test"):
        r = Browser(app).sign_in("acme", typed, PW)
        assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), typed
    assert Browser(app).sign_in("acme", "E-10442", "Wrong-Password-99!").status_code == 401
    # the lookup finds it case-insensitively, and a second one with that userName is refused
    found = scim.get("/Users", query={"filter": 'userName eq "e-10442"'}).get_json()
    assert [u["id"] for u in found["Resources"]] == [user["id"]]
    found = scim.get("/Users", query={"filter": 'userName sw "E-104"'}).get_json()
    assert [u["id"] for u in found["Resources"]] == [user["id"]]
    scim_error(create(scim, "e-10442", emails=[{"value": "other@acme.test", "primary": True}]), 409, "uniqueness")


def test_a_username_is_never_another_users_address_nor_the_other_way_round(pg):
    app, scim, api = pg
    # a userName equal to Bob's address: refused (sign-in could not tell them apart)
    body = scim_error(create(scim, BOB.upper(), emails=[{"value": "imposter@acme.test", "primary": True}]), 409,
                      "uniqueness")
    assert "e-mail address" in body["detail"]
    assert create(scim, "jdoe", emails=[{"value": "jdoe@acme.test", "primary": True}]).status_code == 201
    # an address equal to someone's userName: refused over SCIM and in the admin API
    assert create(scim, "jdoe@example.org", emails=[{"value": "jd2@acme.test", "primary": True}]).status_code == 201
    scim_error(create(scim, "x-2", emails=[{"value": "JDOE@example.org", "primary": True}]), 409, "uniqueness")
    assert_error(api.post("/workspaces/acme/users", {"email": "jdoe@example.org"}), 409, "conflict")
    # nobody got in twice
    hub = app.extensions["idhub"]
    with hub.db() as db:
        acme = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        keys = [k for row in db.execute(select(User.email_normalized, User.username_normalized)
                                        .where(User.workspace_id == acme)) for k in row if k]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("hostile", ["jdoe\u200b", "\u202eeod j", "j doe", "jdoe\x00", "j\u2028doe", "\u2800",
                                     "jdo\u0065\u200d", "x" * 255, "", "bob@acme.test.", "bob\uff20acme..test"])
def test_hostile_user_names_are_refused(pg, hostile):
    app, scim, _api = pg
    r = create(scim, hostile, emails=[{"value": "fine@acme.test", "primary": True}])
    assert r.status_code == 400, (hostile, r.get_data(as_text=True)[:300])
    hub = app.extensions["idhub"]
    with hub.db() as db:
        assert db.scalar(select(User.id).where(User.email_normalized == "fine@acme.test")) is None


def test_a_user_with_no_address_has_none_and_gets_no_mail(pg, outbox):
    app, scim, api = pg
    r = create(scim, "contractor-7", password=PW)
    assert r.status_code == 201, r.get_data(as_text=True)
    uid = r.get_json()["id"]
    hub = app.extensions["idhub"]
    with hub.db() as db:
        row = db.get(User, uid)
        assert row.email == "" and row.email_normalized is None and row.username == "contractor-7"
    assert Browser(app).sign_in("acme", "contractor-7", PW).status_code == 302
    b = Browser(app)
    assert b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot",
                       {"email": "contractor-7"}).status_code == 200
    from idp.audit import AuditEvent

    with hub.db() as db:
        [ev] = db.scalars(select(AuditEvent).where(AuditEvent.type == "password.reset.requested"))
    assert ev.actor_id == uid and ev.data["reason"] == "no_email" and not outbox.messages()
    assert api.get(f"/workspaces/acme/users/{uid}").get_json()["username"] == "contractor-7"
    # a second user without an address is fine too (no address is no collision)
    assert create(scim, "contractor-8").status_code == 201


def test_names_an_admin_gave_reach_scim(pg):
    _app, scim, api = pg
    r = api.post("/workspaces/acme/users", {"email": "named@acme.test", "name": "Noor Named", "password": PW})
    assert r.status_code == 201
    uid = r.get_json()["id"]
    body = scim.get(f"/Users/{uid}").get_json()
    assert body["displayName"] == "Noor Named" and body["name"]["formatted"] == "Noor Named"
    assert api.call("PATCH", f"/workspaces/acme/users/{uid}", {"name": "Noor Renamed"}).status_code == 200
    body = scim.get(f"/Users/{uid}").get_json()
    assert body["displayName"] == "Noor Renamed" and body["name"]["formatted"] == "Noor Renamed"
    # the SCIM client's own names win when it writes them
    r = scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "displayName", "value": "Noor (HR)"}])
    assert r.status_code == 200 and r.get_json()["displayName"] == "Noor (HR)"
