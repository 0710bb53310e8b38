"""The SCIM token cache (``ScimService._callers``): listings may authenticate from memory, but every one of them
re-checks the token in its own query, so revocation, a plan change or another workspace's URL is refused at once;
writes and single-resource reads always authenticate against the database (a user's create on PostgreSQL in the
statement that writes it)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from idp.models import Workspace
from scim.config import apply_scim_tokens
from scim.models import ScimToken
from tests.conftest import ALICE, BASE_CONFIG, make_app, make_settings
from tests.integration.scim_helpers import (
    OTHER_TOKEN,
    RO_TOKEN,
    TOKEN,
    USER_SCHEMA,
    Scim,
    assert_error,
    install_tokens,
    scim_config,
)
from tests.services import drop_postgres, postgres_url

SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"


@pytest.fixture
def app(settings):
    app = make_app(settings, scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    return app


def service(app):
    from scim.web import _service

    with app.app_context():
        return _service()


def listings(scim):
    """Every request that may be served with a cached caller; each must find alice when allowed."""
    return [
        lambda: scim.get("/Users", query={"filter": f'userName eq "{ALICE}"'}),
        lambda: scim.get("/Users"),
        lambda: scim.get("/Groups"),
        lambda: scim.post("/Users/.search", {"schemas": [SEARCH], "filter": f'userName eq "{ALICE}"'}),
        lambda: scim.post("/Groups/.search", {"schemas": [SEARCH]}),
        lambda: scim.post("/.search", {"schemas": [SEARCH]}),
        lambda: scim.get("/Users", query={"filter": 'userName eq "nobody@acme.test"'}),  # an empty result
    ]


def warm(scim) -> None:
    for call in listings(scim):
        assert call().status_code == 200
    assert service(scim.client.application)._callers, "the listings did not fill the cache"


def set_tokens(hub, slug: str, tokens: list[dict]) -> None:
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == slug))
        apply_scim_tokens(db, ws, tokens)
        db.commit()


def check_revocation(app) -> None:
    hub = app.extensions["idhub"]
    scim = Scim(app)
    warm(scim)
    # revoked in the database (as `idhub apply` in another process does): no invalidation of the cache at all
    set_tokens(hub, "acme", [{"name": "auditor", "token": RO_TOKEN, "read_only": True}])
    for call in listings(scim):
        assert_error(call(), 401)
    assert not any(c.token_name == "okta" for c, _exp in service(app)._callers.values())
    # the other token of the workspace is unaffected
    assert Scim(app, RO_TOKEN).get("/Users").status_code == 200
    # restored: works again
    set_tokens(hub, "acme", [{"name": "okta", "token": TOKEN}, {"name": "auditor", "token": RO_TOKEN,
                                                                 "read_only": True}])
    assert scim.get("/Users").status_code == 200


def test_a_revoked_token_is_refused_at_once_by_every_cached_path(app):
    check_revocation(app)


def test_revocation_at_once_on_postgres(tmp_path):
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url), scim_config(BASE_CONFIG))
    try:
        install_tokens(app.extensions["idhub"])
        check_revocation(app)
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)


def test_a_plan_change_is_honoured_at_once(app):
    hub = app.extensions["idhub"]
    scim = Scim(app)
    warm(scim)
    with hub.db() as db:
        db.scalar(select(Workspace).where(Workspace.slug == "acme")).plan = "pro"
        db.commit()
    for call in listings(scim):
        assert_error(call(), 403)


def test_a_token_is_never_served_from_another_workspaces_entry(app):
    acme, beta = Scim(app), Scim(app, OTHER_TOKEN, "/w/beta/scim/v2")
    warm(acme)
    assert beta.get("/Users").get_json()["totalResults"] == 1
    # each token on the other workspace's URL: 404 (cross-workspace), however warm the cache is
    for _ in range(2):
        for call in listings(Scim(app, TOKEN, "/w/beta/scim/v2")):
            assert_error(call(), 404)
        for call in listings(Scim(app, OTHER_TOKEN)):
            assert_error(call(), 404)
    # beta's listings never show acme's users and vice versa
    assert [u["userName"] for u in beta.get("/Users").get_json()["Resources"]] == ["carol@beta.test"]
    assert "carol@beta.test" not in {u["userName"] for u in acme.get("/Users").get_json()["Resources"]}
    keys = set(service(app)._callers)
    assert {slug for slug, _hash in keys} == {"acme", "beta"}
    assert all(c.workspace_slug == slug for (slug, _h), (c, _e) in service(app)._callers.items())


def test_writes_and_single_reads_never_use_the_cache(app):
    hub = app.extensions["idhub"]
    scim = Scim(app)
    warm(scim)
    alice_id = scim.get("/Users", query={"filter": f'userName eq "{ALICE}"'}).get_json()["Resources"][0]["id"]
    # made read-only in the database: the next write is refused although the cached caller may still write
    set_tokens(hub, "acme", [{"name": "okta", "token": TOKEN, "read_only": True},
                             {"name": "auditor", "token": RO_TOKEN, "read_only": True}])
    assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "new@acme.test"}), 403)
    assert scim.get("/Users").status_code == 200  # reads are still allowed
    set_tokens(hub, "acme", [{"name": "auditor", "token": RO_TOKEN, "read_only": True}])
    assert_error(scim.get(f"/Users/{alice_id}"), 401)
    assert_error(scim.get("/ServiceProviderConfig"), 401)


def test_only_valid_tokens_enter_the_cache_and_it_expires(app):
    svc = service(app)
    clock = [1000.0]
    svc._clock = lambda: clock[0]
    for i in range(50):
        assert_error(Scim(app, f"wrong-token-{i:04d}-0123456789abcdefghijkl").get("/Users"), 401)
    assert svc._callers == {}
    scim = Scim(app)
    assert scim.get("/Users").status_code == 200
    (caller, expiry), = svc._callers.values()
    assert caller.cached and caller.token_name == "okta" and expiry == 1000.0 + 30
    clock[0] += 31  # expired: authenticated against the database again, and remembered anew
    assert scim.get("/Users").status_code == 200
    assert next(iter(svc._callers.values()))[1] == 1031.0 + 30


def test_a_users_create_on_postgres_checks_a_cached_token_in_its_own_statement(tmp_path):
    """On PostgreSQL a user's create may start from a cached caller: its one statement checks the token again
    before it writes, and every error answer checks it first — so what the database says about the token wins,
    at once, and nothing is written for a token that no longer may."""
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url), scim_config(BASE_CONFIG))
    try:
        hub = app.extensions["idhub"]
        install_tokens(hub)
        scim = Scim(app)

        def new(name: str, **extra):
            return scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": name, **extra})

        def created(name: str) -> bool:
            return scim.get("/Users", query={"filter": f'userName eq "{name}"'}).get_json()["totalResults"] == 1

        assert new("first@acme.test").status_code == 201  # the token is cached from here on
        assert new("second@acme.test").status_code == 201
        assert service(app)._callers
        # the account service's "taken" check, made by the same statement: refused, nothing written
        assert new("zed", emails=[{"value": "zed@acme.test", "primary": True}]).status_code == 201
        svc, full = service(app), []
        authenticate_db = svc._authenticate_db
        svc._authenticate_db = lambda *a: full.append(a) or authenticate_db(*a)
        assert_error(new("zed@acme.test"), 409, "uniqueness")  # the address (the unique constraint)
        assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA]}), 400)  # no userName
        assert full == []  # the token still may: these answers stand, the create is not redone
        del svc._authenticate_db
        body = assert_error(new("zed", emails=[{"value": "zed2@acme.test"}]), 409, "uniqueness")
        assert "already in use" in body["detail"]  # the username
        body = assert_error(new("zed@acme.test", emails=[{"value": "zed3@acme.test"}]), 409, "uniqueness")
        assert "another user's e-mail address" in body["detail"]  # a username that is another user's address
        body = assert_error(new("zed4@acme.test", emails=[{"value": "Zed@acme.test"}]), 409, "uniqueness")
        # read-only in the database (no invalidation): refused by the statement, then by the full check
        def read_only(value: bool) -> None:
            with hub.db() as db:
                db.scalar(select(ScimToken).where(ScimToken.name == "okta")).read_only = value
                db.commit()

        read_only(True)
        assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA]}), 403)  # the token's verdict before the body's
        assert_error(new("third@acme.test"), 403)
        read_only(False)
        hub.changed("scim_tokens")  # as the console does: the refusal above cached the token as read-only
        assert new("fourth@acme.test").status_code == 201
        # a plan change: 403, also for a body that is invalid (the token's error comes first, as before)
        with hub.db() as db:
            db.scalar(select(Workspace).where(Workspace.slug == "acme")).plan = "pro"
            db.commit()
        assert_error(new("fifth@acme.test"), 403)
        assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA]}), 403)
        with hub.db() as db:
            db.scalar(select(Workspace).where(Workspace.slug == "acme")).plan = "enterprise"
            db.commit()
        assert new("sixth@acme.test").status_code == 201
        set_tokens(hub, "acme", [{"name": "auditor", "token": RO_TOKEN, "read_only": True}])  # revoked
        assert_error(new("seventh@acme.test"), 401)
        assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA]}), 401)  # no userName: still the token first
        set_tokens(hub, "acme", [{"name": "okta", "token": TOKEN}, {"name": "auditor", "token": RO_TOKEN,
                                                                     "read_only": True}])
        for name in ("third@acme.test", "fifth@acme.test", "seventh@acme.test"):
            assert not created(name), name
        for name in ("first@acme.test", "second@acme.test", "fourth@acme.test", "sixth@acme.test"):
            assert created(name), name
        hub.audit.seal()
        assert hub.audit.verify().ok
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)
