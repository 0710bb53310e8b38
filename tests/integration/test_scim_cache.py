"""The SCIM token cache (``ScimService._callers``): listings may authenticate from memory, but every one of them
re-checks the token in its own query, so revocation, a plan change or another workspace's URL is refused at once;
writes and single-resource reads always authenticate against the database."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from idp.models import Workspace
from scim.config import apply_scim_tokens
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
