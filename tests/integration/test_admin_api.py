"""The admin API (``/api/v1``): tokens, scope, users, groups, apps, policies, SCIM tokens, the audit log, hostile
input, and parity with the config file (``idhub apply``)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from admin.api import admin_service
from admin.models import AdminToken
from admin.openapi import OPERATIONS
from idp.audit import AuditEvent
from idp.configfile import apply, validate
from idp.models import Group, User, Workspace
from oidc.models import OidcClient
from tests.conftest import ALICE, BASE_CONFIG, BOB, BOB_PW, Browser, make_app

API = "/api/v1"


def ws_id(hub, slug: str) -> str:
    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == slug))


def user_id(hub, slug: str, email: str) -> str:
    with hub.db() as db:
        return db.scalar(select(User.id).where(User.workspace_id == ws_id(hub, slug),
                                               User.email_normalized == email.casefold()))


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


class Api:
    def __init__(self, app, token: str | None):
        self.client = app.test_client()
        self.token = token

    def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None,
             query: dict | None = None):
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(headers or {})
        kw: dict = {"headers": h, "query_string": query, "environ_base": {"REMOTE_ADDR": "192.0.2.10"}}
        if raw is not None:
            kw["data"] = raw
            h.setdefault("Content-Type", "application/json")
        elif body is not None:
            kw["json"] = body
        return self.client.open(API + path, method=method.upper(), **kw)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)


def assert_error(r, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:400])
    assert r.mimetype == "application/json"
    err = r.get_json()["error"]
    assert set(err) == ({"code", "message", "field", "errors"} if status == 422 else {"code", "message", "field"})
    if status == 422:  # every invalid field, the first as field and message
        assert err["errors"][0] == {"field": err["field"], "message": err["message"]}
    if code:
        assert err["code"] == code, err
    if field is not None:
        assert err["field"] == field, err
    assert "Traceback" not in r.get_data(as_text=True)
    return err


@pytest.fixture
def app(settings):
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][1]["groups"] = [{"name": "finance"}]
    cfg["workspaces"][1]["users"][0]["groups"] = ["finance"]
    return make_app(settings, cfg)


@pytest.fixture
def tokens(app):
    hub = app.extensions["idhub"]
    with app.app_context():
        svc = admin_service()
        acme, _ = svc.tokens.create("acme-ci", workspace_id=ws_id(hub, "acme"))
        other, _ = svc.tokens.create("other-ci", workspace_id=ws_id(hub, "other"))
        operator, _ = svc.tokens.create("operator", workspace_id=None, operator=True)
    return {"acme": acme, "other": other, "operator": operator}


@pytest.fixture
def api(app, tokens):
    return Api(app, tokens["acme"])


# ---- tokens ---------------------------------------------------------------------------------------------------
def test_tokens_are_stored_as_keyed_hashes_and_refused_when_missing_unknown_expired_or_revoked(app, hub, tokens):
    with hub.db() as db:
        rows = list(db.scalars(select(AdminToken)))
    stored = " ".join(f"{r.token_hash} {r.name}" for r in rows)
    assert tokens["acme"] not in stored and all(len(r.token_hash) == 64 for r in rows)
    import hashlib

    assert hashlib.sha256(tokens["acme"].encode()).hexdigest() not in stored  # keyed, not a bare digest

    assert_error(Api(app, None).get("/workspaces/acme/users"), 401, "unauthorized")
    assert_error(Api(app, tokens["acme"] + "x").get("/workspaces/acme/users"), 401)
    assert_error(Api(app, "idhub_adm_" + "A" * 43).get("/workspaces/acme/users"), 401)
    r = Api(app, tokens["acme"]).get("/workspaces/acme/users", headers={"Authorization": f"Basic {tokens['acme']}"})
    assert_error(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")

    with app.app_context():
        svc = admin_service()
        t, row = svc.tokens.create("short", workspace_id=ws_id(hub, "acme"), ttl=timedelta(minutes=10))
        assert Api(app, t).get("/workspaces/acme/users").status_code == 200
        real = hub.clock
        svc.tokens.clock = lambda: real() + timedelta(minutes=11)
        try:
            assert_error(Api(app, t).get("/workspaces/acme/users"), 401)
        finally:
            svc.tokens.clock = real
        assert svc.tokens.revoke(row.id)
    assert_error(Api(app, t).get("/workspaces/acme/users"), 401)
    reasons = [e.data["reason"] for e in events(hub, "admin.api.auth_failed")]
    assert {"malformed", "unknown", "expired", "revoked"} <= set(reasons)
    assert all(tokens["acme"] not in json.dumps(e.data) for e in events(hub, "admin.api.auth_failed"))


def test_guessing_tokens_is_throttled_and_does_not_flood_the_audit_log(app, hub, tokens):
    guesser = Api(app, "idhub_adm_" + "B" * 43)
    codes = [guesser.get("/workspaces/acme/users").status_code for _ in range(25)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert len(events(hub, "admin.api.auth_failed")) == 20
    r = guesser.get("/workspaces/acme/users")
    assert_error(r, 429, "too_many_requests")
    assert r.headers["Retry-After"] == "60"


def test_a_session_cookie_does_not_authenticate_the_api(app):
    b = Browser(app)
    assert b.login("acme", ALICE, "S3cure-Example!").status_code == 302  # alice is an admin
    r = b.get(API + "/workspaces/acme/users")
    assert_error(r, 401)


# ---- scope: a workspace token never reaches another workspace, through any operation -------------------------
def _fill(path: str, ids: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def _sample_body(op) -> dict | None:
    return {"createWorkspace": {"slug": "evil", "name": "Evil"}, "createUser": {"email": "x@other.test"},
            "updateUser": {"role": "admin"}, "createGroup": {"name": "pwned"}, "updateGroup": {"name": "pwned"},
            "createApp": {"slug": "evil", "name": "Evil", "protocol": "oidc", "redirect_uris": ["https://e.test/"]},
            "putPolicies": {"require_mfa": False}, "createScimToken": {"name": "evil"},
            "createConnection": {**OKTA, "domains": ["evil.test"]},
            "updateConnection": {"client_secret": "stolen-" + "x" * 40, "domains": ["evil.test"]},
            "updateApp": {"redirect_uris": ["https://evil.test/"]}}.get(op.op_id)


def test_every_operation_refuses_another_workspace(app, hub, tokens):
    doc = Api(app, None).get("/openapi.json").get_json()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented == {(op.method, op.path) for op in OPERATIONS}
    with hub.db() as db:
        other = ws_id(hub, "other")
        ids = {"ws": "other", "user_id": user_id(hub, "other", ALICE),
               "group_id": db.scalar(select(Group.id).where(Group.workspace_id == other)),
               "token_id": "00000000-0000-4000-8000-000000000000", "app": "evil", "conn": "evil",
               "key_id": "evil", "session_id": "0" * 22}
        before = db.scalar(select(Workspace).where(Workspace.id == other)).policies
    n_events = len(events(hub, "admin.access.denied"))
    acme = Api(app, tokens["acme"])
    checked = 0
    for path, item in doc["paths"].items():
        for method, spec in item.items():
            r = acme.call(method, _fill(path, ids), _sample_body(spec and next(
                o for o in OPERATIONS if o.op_id == spec["operationId"])))
            assert_error(r, 403, "forbidden")
            assert "other" not in json.dumps(r.get_json()["error"]["message"]).replace("another", "")
            checked += 1
    assert checked == len(OPERATIONS)
    # nothing changed in the other workspace
    with hub.db() as db:
        assert db.scalar(select(Workspace).where(Workspace.id == ws_id(hub, "other"))).policies == before
        assert db.scalar(select(Workspace.id).where(Workspace.slug == "evil")) is None
        assert db.scalar(select(User).where(User.id == ids["user_id"])).role == "member"
        assert db.scalar(select(Group.name).where(Group.id == ids["group_id"])) == "finance"
    assert len(events(hub, "admin.access.denied")) > n_events
    # a workspace that does not exist answers the same as one that does (no existence oracle)
    assert_error(acme.get("/workspaces/nope/users"), 403)
    # and the operator sees everything
    op = Api(app, tokens["operator"])
    assert op.get("/workspaces/other/users").get_json()["total"] == 1
    assert {w["slug"] for w in op.get("/workspaces").get_json()["items"]} == {"acme", "other"}
    assert_error(op.get("/workspaces/nope/users"), 404)


def test_ids_of_another_workspace_are_not_found_in_ones_own(app, hub, api):
    other_alice = user_id(hub, "other", ALICE)
    assert_error(api.get(f"/workspaces/acme/users/{other_alice}"), 404)
    assert_error(api.post(f"/workspaces/acme/users/{other_alice}/disable"), 404)
    with hub.db() as db:
        other_group = db.scalar(select(Group.id).where(Group.workspace_id == ws_id(hub, "other")))
        assert db.get(User, other_alice).active
    assert_error(api.call("PUT", f"/workspaces/acme/groups/{other_group}/members/{user_id(hub, 'acme', BOB)}"), 404)
    assert_error(api.get("/workspaces/acme/users/not-a-uuid"), 404)


def test_operator_only_operations(app, tokens):
    acme = Api(app, tokens["acme"])
    assert_error(acme.get("/workspaces"), 403)
    assert_error(acme.post("/workspaces", {"slug": "new", "name": "New"}), 403)
    assert acme.get("/workspaces/acme").get_json()["slug"] == "acme"
    op = Api(app, tokens["operator"])
    r = op.post("/workspaces", {"slug": "new-co", "name": "New Co", "plan": "pro"})
    assert r.status_code == 201 and r.get_json()["plan"] == "pro"
    assert_error(op.post("/workspaces", {"slug": "new-co", "name": "Again"}), 409, field="slug")
    assert_error(op.post("/workspaces", {"slug": "Bad Slug!", "name": "x"}), 422, field="slug")
    assert_error(op.post("/workspaces", {"slug": "x", "name": "x", "plan": "gold"}), 422, field="plan")


# ---- users ----------------------------------------------------------------------------------------------------
def test_users_create_invite_list_filter_and_page(app, hub, api, outbox):
    r = api.post("/workspaces/acme/users", {"email": "Carol@Acme.test", "name": "Carol", "role": "member",
                                            "groups": ["engineering"], "password": "Quartz-Lantern-Ferry-82"})
    assert r.status_code == 201, r.get_data(as_text=True)
    carol = r.get_json()
    assert carol["status"] == "active" and carol["groups"] == ["engineering"] and "password" not in carol
    assert_error(api.post("/workspaces/acme/users", {"email": "carol@ACME.test"}), 409, "conflict", "email")

    r = api.post("/workspaces/acme/users", {"email": "dave@acme.test", "name": "Dave"})
    assert r.status_code == 201 and r.get_json()["status"] == "invited"
    [mail] = outbox.find(to="dave@acme.test")
    assert mail["Subject"].startswith("You're invited to ")
    link = outbox.link(mail, r"http://localhost/w/acme/invite/\S+")
    b = Browser(app)
    assert b.get(link.removeprefix("http://localhost")).status_code == 200  # the set-password page

    page = api.get("/workspaces/acme/users", query={"limit": 2}).get_json()
    assert page["total"] == 4 and len(page["items"]) == 2 and page["next_offset"] == 2
    rest = api.get("/workspaces/acme/users", query={"limit": 2, "offset": 2}).get_json()
    assert rest["next_offset"] is None
    assert len({u["id"] for u in page["items"] + rest["items"]}) == 4
    assert [u["email"] for u in api.get("/workspaces/acme/users", query={"email": "CAROL@acme.test"})
            .get_json()["items"]] == ["Carol@Acme.test"]
    assert [u["email"] for u in api.get("/workspaces/acme/users", query={"status": "invited"})
            .get_json()["items"]] == ["dave@acme.test"]
    assert [u["email"] for u in api.get("/workspaces/acme/users", query={"q": "ALI"}).get_json()["items"]] == [ALICE]
    assert_error(api.get("/workspaces/acme/users", query={"status": "weird"}), 400, field="status")
    assert_error(api.get("/workspaces/acme/users", query={"limit": "0"}), 400, field="limit")
    assert_error(api.get("/workspaces/acme/users", query={"offset": "-1"}), 400, field="offset")
    assert_error(api.get("/workspaces/acme/users", query={"limit": "1e9"}), 400, field="limit")
    types = [e.type for e in events(hub, "admin.user.created") + events(hub, "admin.user.invited")]
    assert types == ["admin.user.created", "admin.user.invited"]
    assert all(e.actor_email == "token:acme-ci" and e.ip == "192.0.2.10" for e in events(hub, "admin.user.created"))


def test_user_fields_are_validated_like_the_config_file(api):
    cases = [({"email": "not-an-address"}, "email"), ({"email": "e@acme.test", "role": "root"}, "role"),
             ({"email": "e@acme.test", "groups": ["nope"]}, "groups[0]"),
             ({"email": "e@acme.test", "password": "short"}, "password"),
             ({"email": "e@acme.test", "name": "x" * 201}, "name"), ({"email": "e@acme.test", "name": 5}, "name"),
             ({"email": "e@acme.test", "active": False}, "active"), ({"email": "e@acme.test", "groups": "x"}, "groups"),
             ({"name": "no email"}, "email")]
    for body, field in cases:
        assert_error(api.post("/workspaces/acme/users", body), 422, "invalid", field)


def test_disable_ends_every_session_like_deprovisioning_and_enable_restores(app, hub, api):
    b = Browser(app)
    assert b.login("acme", BOB, BOB_PW).status_code == 302
    assert b.security().status_code == 200
    bob = user_id(hub, "acme", BOB)
    r = api.post(f"/workspaces/acme/users/{bob}/disable")
    assert r.status_code == 200 and r.get_json()["status"] == "disabled"
    assert b.security().status_code == 302  # the session is gone
    [ev] = events(hub, "admin.user.disabled")
    assert ev.data["sessions_ended"] == 1 and ev.subject_id == bob and ev.actor_email == "token:acme-ci"
    assert Browser(app).login("acme", BOB, BOB_PW).status_code != 302  # cannot sign in
    assert api.post(f"/workspaces/acme/users/{bob}/enable").get_json()["status"] == "active"
    assert Browser(app).login("acme", BOB, BOB_PW).status_code == 302


def test_update_reset_2fa_and_end_sessions(app, hub, api):
    bob = user_id(hub, "acme", BOB)
    r = api.call("PATCH", f"/workspaces/acme/users/{bob}", {"name": "Robert", "role": "admin",
                                                            "groups": ["engineering"]})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert (r.get_json()["name"], r.get_json()["role"], r.get_json()["groups"]) == ("Robert", "admin",
                                                                                    ["engineering"])
    # bob is an admin now: another admin's address is theirs or the hub operator's to change (idp.lifecycle)
    assert_error(api.call("PATCH", f"/workspaces/acme/users/{bob}", {"email": "x@acme.test"}), 403, "forbidden",
                 field="email")
    assert api.call("PATCH", f"/workspaces/acme/users/{bob}", {"groups": []}).get_json()["groups"] == []
    [ev, _] = events(hub, "admin.user.updated")
    assert sorted(ev.data["changed"]) == ["groups", "name", "role"]

    hub.mfa.backup_generate(bob)
    assert hub.mfa.enrolled(bob).backup_codes_left == 10
    b = Browser(app)
    b.login("acme", BOB, BOB_PW)
    r = api.post(f"/workspaces/acme/users/{bob}/reset-2fa")
    assert r.status_code == 200 and r.get_json()["removed"] == ["backup_codes"]
    assert hub.mfa.enrolled(bob).backup_codes_left == 0
    b2 = Browser(app)
    assert b2.login("acme", BOB, BOB_PW).status_code == 302
    assert api.post(f"/workspaces/acme/users/{bob}/end-sessions").get_json()["sessions_ended"] >= 1
    assert b2.security().status_code == 302
    assert events(hub, "admin.user.mfa_reset") and events(hub, "admin.user.sessions_ended")


# ---- groups ---------------------------------------------------------------------------------------------------
def test_groups_crud_and_members(app, hub, api):
    r = api.post("/workspaces/acme/groups", {"name": "sales"})
    assert r.status_code == 201
    gid = r.get_json()["id"]
    assert_error(api.post("/workspaces/acme/groups", {"name": "sales"}), 409, field="name")
    assert_error(api.post("/workspaces/acme/groups", {"name": "   "}), 422, field="name")
    assert_error(api.post("/workspaces/acme/groups", {"name": ["x"]}), 422, field="name")
    bob = user_id(hub, "acme", BOB)
    assert api.call("PUT", f"/workspaces/acme/groups/{gid}/members/{bob}").get_json()["members"] == 1
    assert api.call("PUT", f"/workspaces/acme/groups/{gid}/members/{bob}").get_json()["members"] == 1  # idempotent
    assert [u["email"] for u in api.get(f"/workspaces/acme/groups/{gid}/members").get_json()["items"]] == [BOB]
    api.call("PUT", f"/workspaces/acme/groups/{gid}/members/{user_id(hub, 'acme', ALICE)}")
    members = api.get(f"/workspaces/acme/groups/{gid}/members", query={"limit": 1, "offset": 1}).get_json()
    assert (members["total"], [u["email"] for u in members["items"]], members["next_offset"]) == (2, [BOB], None)
    api.call("DELETE", f"/workspaces/acme/groups/{gid}/members/{user_id(hub, 'acme', ALICE)}")
    page = api.get("/workspaces/acme/groups", query={"limit": 1}).get_json()
    assert (page["total"], [g["name"] for g in page["items"]], page["next_offset"]) == (2, ["engineering"], 1)
    assert_error(api.get("/workspaces/acme/groups", query={"limit": 500}), 400, field="limit")
    assert api.call("PATCH", f"/workspaces/acme/groups/{gid}", {"name": "sales-emea"}).get_json()["name"] == \
        "sales-emea"
    assert api.call("DELETE", f"/workspaces/acme/groups/{gid}/members/{bob}").get_json()["members"] == 0
    assert api.call("DELETE", f"/workspaces/acme/groups/{gid}").status_code == 204
    assert_error(api.get(f"/workspaces/acme/groups/{gid}"), 404)
    assert [e.type for e in events(hub, "admin.group.created")] == ["admin.group.created"]
    assert events(hub, "admin.group.member_added") and events(hub, "admin.group.deleted")


# ---- apps -----------------------------------------------------------------------------------------------------
def test_an_oidc_client_switches_between_public_and_confidential_in_place(app, hub, api):
    """An admin who registered a server-side app as public (or the other way round) changes its client
    authentication without deleting it (its client id, assignments and tile stay). Becoming confidential issues
    a secret, shown once; becoming public drops the secret and the client credentials grant and revokes every
    token issued to the client (they were issued to a client that had to prove a secret)."""
    import base64
    from datetime import UTC, datetime

    from oidc.config import check_secret
    from oidc.models import OidcRefreshToken

    body = {"slug": "jobs", "name": "Jobs", "protocol": "oidc", "redirect_uris": ["https://jobs.acme.test/cb"],
            "scopes": ["openid"], "grant_types": ["authorization_code", "refresh_token", "client_credentials"]}
    created = api.post("/workspaces/acme/apps", body).get_json()
    client_id, secret = created["settings"]["client_id"], created["client_secret"]

    def cc(client_secret):
        auth = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        return app.test_client().post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                                      headers={"Authorization": "Basic " + auth})

    assert cc(secret).status_code == 200
    now = datetime.now(UTC)
    with hub.db() as db:
        ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        alice = db.scalar(select(User.id).where(User.email == ALICE, User.workspace_id == ws_id))
        db.add(OidcRefreshToken(token_hash="h" * 64, family_id="f", workspace_id=ws_id, client_id=client_id,
                                user_id=alice, session_id="s" * 36, scope="openid", auth_time=now, amr=["pwd"],
                                created_at=now, expires_at=now + timedelta(days=1)))
        db.commit()
    r = api.call("PATCH", "/workspaces/acme/apps/jobs", {"token_endpoint_auth_method": "none"})
    assert r.status_code == 200, r.get_data(as_text=True)
    out = r.get_json()
    assert out["settings"]["token_endpoint_auth_method"] == "none" and "client_secret" not in out
    assert out["settings"]["client_id"] == client_id
    with hub.db() as db:
        row = db.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
        assert row.secret_hash is None and "client_credentials" not in row.grant_types
        assert db.get(OidcRefreshToken, "h" * 64).revoked_at is not None
    assert cc(secret).status_code in (400, 401)  # the old secret is worth nothing
    [ev] = events(hub, "admin.app.updated")
    assert ev.data["changed"] == ["token_endpoint_auth_method"] and ev.data["revoked"] == 1
    # and back: a new secret, shown once, never in the audit log
    r = api.call("PATCH", "/workspaces/acme/apps/jobs", {"token_endpoint_auth_method": "client_secret_post"})
    assert r.status_code == 200, r.get_data(as_text=True)
    new_secret = r.get_json()["client_secret"]
    assert "client_secret" not in api.get("/workspaces/acme/apps/jobs").get_json()
    with hub.db() as db:
        row = db.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
    assert row.token_endpoint_auth_method == "client_secret_post" and check_secret(row.secret_hash, new_secret)
    assert not check_secret(row.secret_hash, secret)
    last = events(hub, "admin.app.updated")[-1]
    assert last.data["new_credential"] == "client secret" and new_secret not in json.dumps(last.data)
    # private_key_jwt needs keys: not a switch made in place
    assert_error(api.call("PATCH", "/workspaces/acme/apps/jobs", {"token_endpoint_auth_method": "private_key_jwt"}),
                 422, field="token_endpoint_auth_method")
    for bad in (123, ["none"], "NONE", ""):
        assert_error(api.call("PATCH", "/workspaces/acme/apps/jobs", {"token_endpoint_auth_method": bad}), 422,
                     field="token_endpoint_auth_method")


def test_oidc_app_secret_is_shown_once_and_matches_the_config_file_state(app, hub, api, tmp_path):
    body = {"slug": "wiki", "name": "Wiki", "protocol": "oidc", "redirect_uris": ["https://wiki.acme.test/cb"],
            "scopes": ["openid", "email"]}
    r = api.post("/workspaces/acme/apps", body)
    assert r.status_code == 201, r.get_data(as_text=True)
    created = r.get_json()
    secret, client_id = created["client_secret"], created["settings"]["client_id"]
    assert len(secret) >= 43
    assert created["settings"]["issuer"] == "http://localhost/w/acme"
    assert created["settings"]["discovery_url"] == "http://localhost/w/acme/.well-known/openid-configuration"
    again = api.get("/workspaces/acme/apps/wiki").get_json()
    assert "client_secret" not in again and secret not in json.dumps(again)
    assert secret not in json.dumps([e.data for e in events(hub, "admin.app.created")])
    assert_error(api.post("/workspaces/acme/apps", body), 409, field="slug")
    with hub.db() as db:
        row = db.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
        assert row.secret_hash and secret not in row.secret_hash
        api_state = {k: getattr(row, k) for k in ("slug", "name", "redirect_uris", "grant_types", "scopes",
                                                   "token_endpoint_auth_method", "require_mfa")}
    # the same entry through `idhub apply` gives the same row
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["apps"] = [{**body, "client_id": client_id, "client_secret": secret}]
    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher)
        db.commit()
        row = db.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
        assert {k: getattr(row, k) for k in api_state} == api_state
    # the client authenticates with the secret it was shown
    from oidc.config import check_secret

    assert check_secret(row.secret_hash, secret)
    # a new secret: shown once, the old one stops working
    r = api.post("/workspaces/acme/apps/wiki/secret")
    assert r.status_code == 201
    new_secret = r.get_json()["client_secret"]
    with hub.db() as db:
        row = db.scalar(select(OidcClient).where(OidcClient.client_id == client_id))
    assert check_secret(row.secret_hash, new_secret) and not check_secret(row.secret_hash, secret)
    assert events(hub, "admin.app.secret_rotated")
    # redirect URIs and the rest change through the config file's validation; the secret stays
    r = api.call("PATCH", "/workspaces/acme/apps/wiki", {"redirect_uris": ["https://wiki.acme.test/new"],
                                                         "require_mfa": True})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["settings"]["redirect_uris"] == ["https://wiki.acme.test/new"]
    assert r.get_json()["require_mfa"] is True and "client_secret" not in r.get_json()
    with hub.db() as db:
        assert check_secret(db.scalar(select(OidcClient.secret_hash).where(OidcClient.client_id == client_id)),
                            new_secret)
    assert_error(api.call("PATCH", "/workspaces/acme/apps/wiki", {"redirect_uris": ["nope"]}), 422,
                 field="redirect_uris[0]")
    assert_error(api.call("PATCH", "/workspaces/acme/apps/wiki", {"require_mfa": "yes"}), 422, field="require_mfa")
    assert_error(api.call("PATCH", "/workspaces/acme/apps/wiki", {"client_id": "x"}), 422, field="client_id")


def test_metadata_urls_to_internal_addresses_are_refused_and_never_fetched(api, monkeypatch):
    """A SAML app or connection from a metadata URL is fetched through idp.netfetch: a URL that points inward
    (loopback, private, cloud metadata) is refused with a 422 naming metadata_url, unless the deployment's
    IDHUB_OUTBOUND_ALLOW_CIDRS allows it (tests/integration/test_admin_metadata_url.py). A local server shows nothing
    was fetched. So is an OIDC app's jwks_uri or backchannel_logout_uri that points inward
    (tests/integration/test_admin_outbound.py)."""
    import http.server
    import threading

    monkeypatch.delenv("IDHUB_OUTBOUND_ALLOW_CIDRS", raising=False)
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        for url, reason in ((f"http://127.0.0.1:{port}/metadata", "loopback address (127.0.0.1)"),
                            (f"http://localhost:{port}/metadata", "loopback address"),
                            ("https://10.0.0.5/metadata", "private address (10.0.0.5)"),
                            ("https://169.254.169.254/latest/meta-data/", "link-local address (169.254.169.254)"),
                            ("https://[::ffff:127.0.0.1]/metadata", "loopback address")):
            for path, body in (("/workspaces/acme/apps", {"slug": "sp", "name": "SP", "protocol": "saml",
                                                          "metadata_url": url}),
                               ("/workspaces/acme/connections", {"slug": "idp", "name": "IdP", "protocol": "saml",
                                                                 "metadata_url": url})):
                err = assert_error(api.post(path, body), 422, "invalid", field="metadata_url")
                assert reason in err["message"], (url, err)
        err = assert_error(api.post("/workspaces/acme/apps", {
            "slug": "k", "name": "K", "protocol": "oidc", "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": f"http://127.0.0.1:{port}/jwks"}), 422, "invalid", field="jwks_uri")
        assert "loopback address (127.0.0.1)" in err["message"]
        err = assert_error(api.post("/workspaces/acme/apps", {
            "slug": "b", "name": "B", "protocol": "oidc", "redirect_uris": ["https://b.test/cb"],
            "backchannel_logout_uri": "https://169.254.169.254/logout"}), 422, "invalid",
            field="backchannel_logout_uri")
        assert "link-local address (169.254.169.254)" in err["message"]
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []
    assert api.get("/workspaces/acme/apps").get_json()["total"] == 0
    assert api.get("/workspaces/acme/connections").get_json()["total"] == 0


def test_app_validation_names_the_field_and_refuses_server_paths(api):
    assert_error(api.post("/workspaces/acme/apps", {"slug": "a", "name": "A", "protocol": "oidc",
                                                   "redirect_uris": ["not a url"]}), 422, field="redirect_uris[0]")
    assert_error(api.post("/workspaces/acme/apps", {"slug": "a", "name": "A", "protocol": "ldap"}), 422,
                 field="protocol")
    assert_error(api.post("/workspaces/acme/apps", {"slug": "a", "name": "A", "protocol": "saml",
                                                   "metadata_file": "/etc/passwd"}), 422, field="metadata_file")
    assert_error(api.post("/workspaces/acme/apps", {"slug": "a", "name": "A", "protocol": "oidc",
                                                   "client_secret": "x" * 40}), 422, field="client_secret")
    assert_error(api.post("/workspaces/acme/apps", {"slug": "a", "name": "A", "protocol": "saml",
                                                   "metadata_xml": "<not-xml"}), 422)


def test_saml_app_and_public_oidc_client(api):
    r = api.post("/workspaces/acme/apps", {"slug": "crm", "name": "CRM", "protocol": "saml",
                                          "entity_id": "https://crm.test/sp", "acs_url": "https://crm.test/acs"})
    assert r.status_code == 201, r.get_data(as_text=True)
    s = r.get_json()["settings"]
    assert s["sso_url"] == "http://localhost/w/acme/saml/sso" and s["acs_urls"] == ["https://crm.test/acs"]
    assert "client_secret" not in r.get_json()
    r = api.post("/workspaces/acme/apps", {"slug": "spa", "name": "SPA", "protocol": "oidc",
                                          "token_endpoint_auth_method": "none",
                                          "redirect_uris": ["https://spa.test/cb"]})
    assert r.status_code == 201 and "client_secret" not in r.get_json()
    assert {a["slug"] for a in api.get("/workspaces/acme/apps").get_json()["items"]} == {"crm", "spa"}
    assert api.call("DELETE", "/workspaces/acme/apps/spa").status_code == 204
    assert_error(api.get("/workspaces/acme/apps/spa"), 404)


# ---- policies -------------------------------------------------------------------------------------------------
def test_policies_are_validated_like_the_config_file_and_summarised(app, hub, api, tokens):
    r = api.call("PUT", "/workspaces/acme/policies", {"require_mfa": True, "ip_allowlist": ["10.0.0.0/8"],
                                                      "session_idle_timeout": "12h"})
    assert r.status_code == 200, r.get_data(as_text=True)
    view = r.get_json()
    assert view["policies"] == {"require_mfa": True, "ip_allowlist": ["10.0.0.0/8"], "session_idle_timeout": 43200}
    assert "Everyone must use two-factor authentication." in view["summary"]
    assert "Sign-in only from 10.0.0.0/8." in view["summary"]
    # the same policies through the config file store the same value
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["policies"] = {"require_mfa": True, "ip_allowlist": ["10.0.0.0/8"],
                                        "session_idle_timeout": "12h"}
    assert validate(cfg)[0]["policies"] == view["policies"]
    assert_error(api.call("PUT", "/workspaces/acme/policies", {"ip_allowlist": ["10.0.0.1/8"]}), 422,
                 field="ip_allowlist[0]")
    assert_error(api.call("PUT", "/workspaces/acme/policies", {"ip_allowlist": ["0.0.0.0/0"]}), 422,
                 field="ip_allowlist[0]")
    assert_error(api.call("PUT", "/workspaces/acme/policies", {"require_mfa": "yes"}), 422, field="require_mfa")
    assert_error(api.call("PUT", "/workspaces/acme/policies", {"surprise": 1}), 422, field="surprise")
    other = Api(app, tokens["other"])  # free plan: no IP allowlists, as in the config file
    assert_error(other.call("PUT", "/workspaces/other/policies", {"ip_allowlist": ["10.0.0.0/8"]}), 422,
                 field="ip_allowlist")
    assert api.get("/workspaces/acme/policies").get_json()["policies"] == view["policies"]
    [ev] = events(hub, "admin.policies.updated")
    # PUT replaces: the 90d session_max_lifetime (and require_mfa_for_admins) of BASE_CONFIG are gone
    assert ev.data["changed"] == ["ip_allowlist", "require_mfa", "require_mfa_for_admins", "session_idle_timeout",
                                  "session_max_lifetime"]


# ---- SCIM tokens ----------------------------------------------------------------------------------------------
def test_scim_token_is_shown_once_works_and_can_be_revoked(app, hub, api):
    r = api.post("/workspaces/acme/scim-tokens", {"name": "okta"})
    assert r.status_code == 201
    token, tid = r.get_json()["token"], r.get_json()["id"]
    assert token not in json.dumps(api.get("/workspaces/acme/scim-tokens").get_json())
    c = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/w/acme/scim/v2/Users", headers=h).status_code == 200
    assert_error(api.post("/workspaces/acme/scim-tokens", {"name": "okta"}), 409, field="name")
    assert_error(api.post("/workspaces/acme/scim-tokens", {"name": "bad/name"}), 422, field="name")
    assert api.call("DELETE", f"/workspaces/acme/scim-tokens/{tid}").status_code == 204
    assert c.get("/w/acme/scim/v2/Users", headers=h).status_code == 401
    assert [t["revoked_at"] is not None for t in api.get("/workspaces/acme/scim-tokens").get_json()["items"]] == \
        [True]
    assert events(hub, "admin.scim_token.created") and events(hub, "admin.scim_token.revoked")


# ---- audit ----------------------------------------------------------------------------------------------------
def test_audit_search_filters_pages_and_exports(app, hub, api):
    for name in ("a", "b", "c"):
        api.post("/workspaces/acme/groups", {"name": name})
    hub.audit.record("auth.signin.failure", workspace_id=ws_id(hub, "acme"), actor_email=BOB)
    page = api.get("/workspaces/acme/audit/events", query={"type": "admin.group.created", "limit": 2}).get_json()
    assert [e["data"]["name"] for e in page["items"]] == ["c", "b"] and page["next_before"]
    rest = api.get("/workspaces/acme/audit/events", query={"type": "admin.group.created",
                                                           "before": page["next_before"]}).get_json()
    assert [e["data"]["name"] for e in rest["items"]] == ["a"] and rest["next_before"] is None
    assert {e["type"] for e in api.get("/workspaces/acme/audit/events", query={"type": "admin.*"})
            .get_json()["items"]} == {"admin.group.created"}
    assert [e["type"] for e in api.get("/workspaces/acme/audit/events", query={"actor": BOB})
            .get_json()["items"]] == ["auth.signin.failure"]
    assert api.get("/workspaces/acme/audit/events", query={"since": "2999-01-01T00:00:00Z"}).get_json()["items"] == []
    assert_error(api.get("/workspaces/acme/audit/events", query={"since": "yesterday"}), 400, field="since")
    assert_error(api.get("/workspaces/acme/audit/events", query={"type": "DROP TABLE"}), 400, field="type")
    r = api.get("/workspaces/acme/audit/export", query={"format": "csv", "type": "admin.group.created"})
    assert r.status_code == 200 and r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [json.loads(x["data"])["name"] for x in rows] == ["a", "b", "c"]
    r = api.get("/workspaces/acme/audit/export")
    assert r.mimetype == "application/json" and any(e["type"] == "auth.signin.failure" for e in r.get_json())
    assert_error(api.get("/workspaces/acme/audit/export", query={"format": "xml"}), 400, field="format")
    # the other workspace's events never appear
    hub.audit.record("auth.signin.failure", workspace_id=ws_id(hub, "other"), actor_email="secret@other.test")
    assert "secret@other.test" not in api.get("/workspaces/acme/audit/export").get_data(as_text=True)


HOSTILE_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
                 "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "0001-01-01",
                 "9999-12-31T23:59:59.999999-14:00"]


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", HOSTILE_TIMES)
def test_audit_times_outside_the_sane_range_are_a_400_naming_the_field(app, hub, api, name, value):
    for path in ("/workspaces/acme/audit/events", "/workspaces/acme/audit/export"):
        err = assert_error(api.get(path, query={name: value}), 400, "bad_parameter", field=name)
        assert "1970" in err["message"] and "9998" in err["message"]
    # the edges themselves are fine
    edge = {"since": "1970-01-01T00:00:00Z", "until": "9998-12-31T23:59:59+14:00"}
    assert api.get("/workspaces/acme/audit/events", query=edge).status_code == 200
    assert api.get("/workspaces/acme/audit/export", query={**edge, "format": "csv"}).status_code == 200


# ---- hostile input --------------------------------------------------------------------------------------------
def test_malformed_oversized_and_odd_requests_get_json_errors(app, api):
    assert_error(api.post("/workspaces/acme/groups", raw=b"{not json"), 400, "bad_request")
    assert_error(api.post("/workspaces/acme/groups", raw=b"[1, 2]"), 400)
    assert_error(api.post("/workspaces/acme/groups", raw=b"\xff\xfe"), 400)
    assert_error(api.post("/workspaces/acme/groups", raw=b"[" * 50000 + b"]" * 50000), 413)
    assert_error(api.post("/workspaces/acme/groups", raw=b'{"name": "' + b"x" * 70000 + b'"}'), 413)
    assert_error(api.post("/workspaces/acme/groups", raw=b"[" * 20000 + b"]" * 20000), 400)
    assert_error(api.post("/workspaces/acme/groups", raw=b"name=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}), 400)
    assert_error(api.call("DELETE", "/workspaces/acme/users"), 405)
    assert_error(api.get("/workspaces/acme/nothing-here"), 404)
    assert_error(api.get("/workspaces/acme/users/" + "a" * 5000), 404)
    assert_error(api.post("/workspaces/acme/users", {"email": "e@acme.test", "name": "a\x00b"}), 422, field="name")
    assert_error(api.post("/workspaces/acme/users", {"email": "e@acme.test", "groups": [{"$ne": 1}]}), 422)


# ---- CLI --------------------------------------------------------------------------------------------------------
def test_cli_creates_a_token_once_that_the_api_accepts(tmp_path):
    from tests.integration.test_cli import run, write

    assert run(["db", "upgrade"], tmp_path).returncode == 0
    assert run(["apply", write(tmp_path, "c.yaml", BASE_CONFIG)], tmp_path).returncode == 0
    r = run(["admin", "token", "create", "--workspace", "acme", "--expires", "2d", "--name", "terraform"], tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert re.fullmatch(r"idhub_adm_[A-Za-z0-9_-]{43}", token) and "shown only this once" in r.stderr
    bad = run(["admin", "token", "create", "--workspace", "acme", "--expires", "forever"], tmp_path)
    assert bad.returncode == 2 and "--expires" in bad.stderr
    assert run(["admin", "token", "create"], tmp_path).returncode == 2
    assert run(["admin", "token", "create", "--workspace", "nope"], tmp_path).returncode == 2
    op = run(["admin", "token", "create", "--operator"], tmp_path)
    assert op.returncode == 0
    listed = run(["admin", "token", "list"], tmp_path).stdout
    assert "terraform" in listed and token not in listed

    from config.settings import Settings
    from idp.app import build_hub, create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path}/cli.db", secret_key="k" * 48,
                        outbox_dir=str(tmp_path / "outbox"), cookie_secure=False, base_url="http://localhost",
                        log_level="WARNING")
    web = create_app(settings, hub=build_hub(settings))
    assert Api(web, token).get("/workspaces/acme/users").get_json()["total"] == 2
    assert_error(Api(web, token).get("/workspaces/other/users"), 403)
    assert Api(web, op.stdout.strip()).get("/workspaces").status_code == 200
    token_id = re.search(r"token (\S+) \(acme\)", r.stderr)[1]
    assert run(["admin", "token", "revoke", token_id], tmp_path).returncode == 0
    assert_error(Api(web, token).get("/workspaces/acme/users"), 401)


def test_console_principal_cannot_lock_itself_out(app, hub):
    """The console acts as the signed-in admin: the allowlist must include the admin's own address."""
    from admin.service import AdminError
    from admin.tokens import Principal

    alice = user_id(hub, "acme", ALICE)
    p = Principal("user", ALICE, False, ws_id(hub, "acme"), actor_id=alice, ip="192.0.2.7")
    with app.app_context():
        svc = admin_service()
        with pytest.raises(AdminError) as e:
            svc.put_policies(p, "acme", {"ip_allowlist": ["10.0.0.0/8"]})
        assert e.value.status == 409 and e.value.field == "ip_allowlist"
        assert svc.put_policies(p, "acme", {"ip_allowlist": ["192.0.2.0/24"]})["policies"]["ip_allowlist"]
        with pytest.raises(AdminError):
            svc.set_active(p, "acme", alice, False)
        with pytest.raises(AdminError):
            svc.update_user(p, "acme", alice, {"role": "member"})


# ---- connections --------------------------------------------------------------------------------------------
OKTA = {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta", "issuer": "https://acme.okta.test",
        "client_id": "0oa1example", "client_secret": "okta-client-secret-0123456789", "domains": ["acme.test"]}
LDAP = {"slug": "ad", "name": "Active Directory", "protocol": "ldap", "url": "ldaps://dc.acme.test",
        "bind_dn": "cn=idhub,dc=acme,dc=test", "bind_password": "ldap-bind-password-0123",
        "user_search_base": "dc=acme,dc=test", "domains": ["corp.acme.test"]}


def test_a_connection_claiming_domains_turns_the_sign_in_page_identifier_first_at_once(app, api):
    """The page's form is cached per process for a few seconds; a change made here drops that at once."""
    def page() -> str:
        return Browser(app).get("/w/acme/login").get_data(as_text=True)

    assert 'name="password"' in page()  # one page: no connection yet
    assert api.post("/workspaces/acme/connections", OKTA).status_code == 201
    assert 'name="password"' not in page() and ">Continue</button>" in page()
    assert api.call("DELETE", "/workspaces/acme/connections/okta").status_code == 204
    assert 'name="password"' in page()


def test_connections_are_validated_and_stored_like_the_config_file_and_keep_their_secrets(app, hub, api, tokens):
    from federation.config import connection_settings
    from federation.models import FederationConnection

    r = api.post("/workspaces/acme/connections", OKTA)
    assert r.status_code == 201, r.get_data(as_text=True)
    created = r.get_json()
    assert OKTA["client_secret"] not in r.get_data(as_text=True)
    assert created["secrets_set"] == ["client_secret"]
    assert created["urls"]["redirect_uri"] == "http://localhost/w/acme/sso/okta/callback"
    with hub.db() as db:
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        sealed = dict(row.secrets)
        api_settings = dict(row.settings)
    assert OKTA["client_secret"] not in json.dumps(sealed)  # encrypted at rest
    # adding another keeps the first one exactly as it was
    assert api.post("/workspaces/acme/connections", LDAP).status_code == 201
    with hub.db() as db:
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        assert row.secrets == sealed and row.settings == api_settings
        assert connection_settings(row, hub.settings.secret_key)["client_secret"] == OKTA["client_secret"]
    assert [c["slug"] for c in api.get("/workspaces/acme/connections").get_json()["items"]] == ["ad", "okta"]
    assert LDAP["bind_password"] not in api.get("/workspaces/acme/connections/ad").get_data(as_text=True)

    assert_error(api.post("/workspaces/acme/connections", OKTA), 409, field="slug")
    assert_error(api.post("/workspaces/acme/connections", {**OKTA, "slug": "okta2"}), 409, field="domains")
    assert_error(api.post("/workspaces/acme/connections", {**OKTA, "slug": "x", "domains": [],
                                                           "issuer": "http://evil.test"}), 422, field="issuer")
    assert_error(api.post("/workspaces/acme/connections", {"slug": "s", "name": "S", "protocol": "saml",
                                                           "metadata_url": "http://169.254.169.254/"}), 422,
                 field="metadata_url")
    assert_error(api.post("/workspaces/acme/connections", {**LDAP, "slug": "l2", "domains": [],
                                                           "ca_file": "/etc/shadow"}), 422, field="ca_file")
    assert_error(Api(app, tokens["other"]).post("/workspaces/other/connections", {**OKTA, "domains": []}), 422)

    # the same entry through `idhub apply` stores the same settings; the operator's file declares it from then on
    # (an API-added connection is marked, so that its fetches get idp.netfetch's checks)
    assert api_settings.pop("registered_via") == "api"
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["connections"] = [OKTA, LDAP]
    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher, secret_key=hub.settings.secret_key)
        db.commit()
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        assert row.settings == api_settings and row.secrets == sealed

    assert api.call("DELETE", "/workspaces/acme/connections/ad").status_code == 204
    assert_error(api.get("/workspaces/acme/connections/ad"), 404)
    assert [e.subject_id for e in events(hub, "admin.connection.created")] == ["okta", "ad"]
    assert events(hub, "admin.connection.deleted")


def patch(api: Api, slug: str, body, **kw):
    return api.call("PATCH", f"/workspaces/acme/connections/{slug}", body, **kw)


def stored_connection(hub, slug: str, ws: str = "acme") -> dict:
    from federation.config import connection_settings
    from federation.models import FederationConnection

    with hub.db() as db:
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == slug,
                                                           FederationConnection.workspace_id == ws_id(hub, ws)))
        return {**connection_settings(row, hub.settings.secret_key), "_sealed": dict(row.secrets or {}),
                "_settings": dict(row.settings or {})}


def test_editing_an_oidc_connection_rotates_its_secret_and_merges_over_its_settings(app, hub, api):
    assert api.post("/workspaces/acme/connections", OKTA).status_code == 201
    before = stored_connection(hub, "okta")
    new_secret = "rotated-okta-secret-9876543210"
    r = patch(api, "okta", {"client_secret": new_secret, "trust_mfa": True, "sso_required": True,
                            "attribute_map": {"upn": "email"}})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert new_secret not in r.get_data(as_text=True) and OKTA["client_secret"] not in r.get_data(as_text=True)
    out = r.get_json()
    assert out["changed"] == ["attribute_map", "client_secret", "sso_required", "trust_mfa"]
    assert out["settings"]["trust_mfa"] is True and out["secrets_set"] == ["client_secret"]
    after = stored_connection(hub, "okta")
    assert after["client_secret"] == new_secret and after["_sealed"] != before["_sealed"]
    assert new_secret not in json.dumps(after["_sealed"])  # encrypted at rest
    # everything not in the body is as it was (issuer, client id, the okta preset's scopes, domains)
    for k in ("issuer", "client_id", "scopes", "domains", "preset", "jit", "link_by_email"):
        assert after[k] == before[k], k
    # omitted secret = unchanged; the ciphertext is not even re-encrypted
    r = patch(api, "okta", {"domains": ["acme.test", "eng.acme.test"], "name": "Okta (prod)"})
    assert r.status_code == 200 and r.get_json()["changed"] == ["domains", "name"]
    again = stored_connection(hub, "okta")
    assert again["_sealed"] == after["_sealed"] and again["client_secret"] == new_secret
    assert api.get("/workspaces/acme/connections/okta").get_json()["name"] == "Okta (prod)"
    # null removes a key: no client secret is a public client (PKCE only)
    r = patch(api, "okta", {"client_secret": None})
    assert r.status_code == 200 and r.get_json()["secrets_set"] == []
    assert "client_secret" not in stored_connection(hub, "okta")
    # the same state as `idhub apply` of the entry an admin would write
    from admin.export import connection_entry
    from federation.models import FederationConnection

    with hub.db() as db:
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        entry, settings = connection_entry(row), dict(row.settings)
    assert settings.pop("registered_via") == "api"  # added over the API; the config file's entry is the operator's
    assert settings.pop("trust_set_via") == "api"  # its domains were an admin's choice, until the operator applies
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["connections"] = [entry]
    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher, secret_key=hub.settings.secret_key)
        db.commit()
    assert stored_connection(hub, "okta")["_settings"] == settings
    # audited with the admin identity and the changed keys, never a secret's value
    evs = events(hub, "admin.connection.updated")
    assert [e.data["changed"] for e in evs] == [["attribute_map", "client_secret", "sso_required", "trust_mfa"],
                                                ["domains", "name"], ["client_secret"]]
    assert all(e.actor_email == "token:acme-ci" and e.data["via"] == "api" and e.subject_id == "okta" for e in evs)
    assert all(ev.ip == "192.0.2.10" and ev.request_id for ev in evs)
    assert new_secret not in json.dumps([e.data for e in events(hub, "admin.connection.updated")])


def test_editing_a_connection_refuses_bad_input_naming_the_field_and_changes_nothing(app, hub, api):
    assert api.post("/workspaces/acme/connections", OKTA).status_code == 201
    assert api.post("/workspaces/acme/connections", LDAP).status_code == 201
    before = stored_connection(hub, "okta")
    for body, status, field in (
            ({"protocol": "saml"}, 422, "protocol"),
            ({"slug": "okta2"}, 422, "slug"),
            ({"slug": 5}, 422, "slug"),
            ({"nonsense": 1}, 422, "nonsense"),
            ({"bind_password": "x" * 20}, 422, "bind_password"),  # not an OIDC key
            ({"trust_mfa": "yes"}, 422, "trust_mfa"),
            ({"jit": 1}, 422, "jit"),
            ({"domains": "acme.test"}, 422, "domains"),
            ({"domains": ["not a domain"]}, 422, "domains[0]"),
            ({"domains": ["corp.acme.test"]}, 409, "domains"),  # the LDAP connection's domain
            ({"client_secret": 12345}, 422, "client_secret"),
            ({"client_secret": ["a"]}, 422, "client_secret"),
            ({"issuer": "http://evil.test"}, 422, "issuer"),
            ({"issuer": None}, 422, "issuer"),  # required
            ({"name": None}, 422, "name"),
            ({"scopes": ["email"]}, 422, "scopes"),
            ({"attribute_map": {"upn": "password"}}, 422, "attribute_map.upn"),
            ({"attribute_map": ["upn"]}, 422, "attribute_map"),
            ({"sso_required": True, "domains": []}, 422, "sso_required"),
            ({"allowed_tenants": ["t1"]}, 422, "allowed_tenants"),  # only for azure_ad
            ({"client_secret_env": "OKTA_SECRET"}, 422, "client_secret_env"),
            ({"metadata_url": "http://169.254.169.254/"}, 422, "metadata_url"),
            ({"ca_file": "/etc/shadow"}, 422, "ca_file")):
        r = patch(api, "okta", body)
        err = assert_error(r, status, field=field)
        assert OKTA["client_secret"] not in json.dumps(err), body
    for raw in (b"[]", b'"x"', b"null", b"{"):
        assert_error(patch(api, "okta", None, raw=raw), 400)
    assert_error(patch(api, "okta", {"timeout": 5}), 422, field="timeout")
    assert_error(patch(api, "ad", {"timeout": 0}), 422, field="timeout")
    assert_error(patch(api, "ad", {"url": "https://dc.acme.test"}), 422, field="url")
    assert_error(patch(api, "ad", {"bind_password": None}), 422, field="bind_password")
    assert_error(patch(api, "ad", {"user_filter": "(uid=*)"}), 422, field="user_filter")
    assert_error(patch(api, "nope", {"name": "x"}), 404)
    assert_error(patch(api, "Bad Slug", {"name": "x"}), 404)
    after = stored_connection(hub, "okta")
    assert after == before
    assert not events(hub, "admin.connection.updated")


def test_editing_connections_of_another_workspace(app, hub, tokens):
    op = Api(app, tokens["operator"])
    assert op.post("/workspaces", {"slug": "beta", "name": "Beta", "plan": "enterprise"}).status_code == 201
    assert op.post("/workspaces/beta/connections", {**OKTA, "slug": "beta-okta"}).status_code == 201
    before = stored_connection(hub, "beta-okta", "beta")
    acme = Api(app, tokens["acme"])
    assert_error(acme.call("PATCH", "/workspaces/beta/connections/beta-okta", {"client_secret": "y" * 40}), 403)
    assert_error(acme.call("PATCH", "/workspaces/other/connections/beta-okta", {"name": "x"}), 403)
    assert_error(acme.call("PATCH", "/workspaces/acme/connections/beta-okta", {"name": "x"}), 404)
    assert stored_connection(hub, "beta-okta", "beta") == before
    r = op.call("PATCH", "/workspaces/beta/connections/beta-okta", {"name": "Beta Okta"})
    assert r.status_code == 200 and r.get_json()["changed"] == ["name"]
    assert events(hub, "admin.connection.updated")[-1].actor_email == "token:operator"


def saml_sign_in(app, nameid: str, key_cn: str) -> tuple[int, str]:
    """An SP-initiated SAML sign-in through connection ``idp``: the response signed by ``key_cn``'s key. Returns
    the ACS answer's status and the failed check (or "")."""
    import base64
    import zlib
    from urllib.parse import parse_qs, urlsplit

    from lxml import etree

    from tests.helpers import saml_builder as sb
    from tests.interop.oidc_upstream.peer import audit_events, navigate_target

    hub = app.extensions["idhub"]
    b = Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": "sam@saml-corp.test"})
    assert r.status_code == 302 and "/sso/idp/start" in r.headers["Location"]
    url = navigate_target(b.get(r.headers["Location"]).get_data(as_text=True))
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    request_id = etree.fromstring(zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15)).get("ID")
    key, cert = sb.keypair(key_cn)
    resp = sb.response(issuer=SAML_IDP, acs="http://localhost/w/acme/sso/idp/acs", in_response_to=request_id,
                       audience="http://localhost/w/acme/sso/idp/metadata", nameid=nameid,
                       attributes={"email": "sam@saml-corp.test"})
    sb.sign(sb.assertion_of(resp), key, cert)
    sb.sign(resp, key, cert)
    n = len(audit_events(hub, "federation.signin.failure"))
    r = b.post("/w/acme/sso/idp/acs", {"SAMLResponse": sb.encode(resp), "RelayState": q["RelayState"]})
    failures = audit_events(hub, "federation.signin.failure")
    return r.status_code, (failures[-1].data["check"] if len(failures) > n else "")


SAML_IDP = "http://www.okta.com/exkrotation"


def test_replacing_saml_metadata_pins_the_new_certificate(app, hub, api):
    """A certificate rollover at the IdP: responses signed with the new key are refused until the admin pastes the
    new metadata (or pins the next certificate under certs), then accepted; the old key then is refused."""
    from federation import saml_sp
    from tests.helpers import saml_builder as sb

    _, old_cert = sb.keypair("rotation-old")
    _, new_cert = sb.keypair("rotation-new")
    _, next_cert = sb.keypair("rotation-next")
    sso = "https://idp.saml-corp.test/sso"
    r = api.post("/workspaces/acme/connections", {"slug": "idp", "name": "Corp SAML", "protocol": "saml",
                                                  "metadata_xml": sb.metadata(SAML_IDP, [old_cert], sso),
                                                  "domains": ["saml-corp.test"]})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert saml_sign_in(app, "u1", "rotation-old") == (302, "")
    status, check = saml_sign_in(app, "u1", "rotation-new")
    assert status == 400 and check == "certificate"  # not a pinned certificate

    r = patch(api, "idp", {"metadata_xml": sb.metadata(SAML_IDP, [new_cert], sso)})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["changed"] == ["metadata_xml"]
    conn = stored_connection(hub, "idp")
    pinned = "".join(saml_sp.pinned_certs(conn)).replace("\n", "")
    assert sb.cert_b64(new_cert) in pinned and sb.cert_b64(old_cert) not in pinned
    assert saml_sign_in(app, "u1", "rotation-new") == (302, "")
    assert saml_sign_in(app, "u1", "rotation-old")[1] == "certificate"

    # the next certificate, pinned ahead of the rollover; settings not in the body stay
    assert patch(api, "idp", {"allow_unsolicited": True}).status_code == 200
    r = patch(api, "idp", {"certs": [next_cert]})
    assert r.status_code == 200 and r.get_json()["changed"] == ["certs"]
    conn = stored_connection(hub, "idp")
    assert conn["allow_unsolicited"] is True and conn["metadata_xml"] == sb.metadata(SAML_IDP, [new_cert], sso)
    assert saml_sign_in(app, "u1", "rotation-next") == (302, "")
    # metadata without a signing certificate, or not metadata at all, is refused naming the field
    assert_error(patch(api, "idp", {"metadata_xml": "<not-xml"}), 422, field="metadata_xml")
    assert_error(patch(api, "idp", {"certs": ["not a pem"]}), 422, field="certs[0]")
    assert_error(patch(api, "idp", {"clock_skew": 301}), 422, field="clock_skew")
    assert_error(patch(api, "idp", {"client_id": "x"}), 422, field="client_id")


def test_a_metadata_url_connection_keeps_its_url_and_nothing_is_fetched(app, hub, api, tmp_path):
    """A SAML connection the config file registered by metadata_url: editing another key checks the copy idhub has
    (no request to the URL) and keeps the URL; pasted metadata_xml replaces it."""
    import http.server
    import threading

    from tests.helpers import saml_builder as sb

    _, cert = sb.keypair("rotation-old")
    xml = sb.metadata(SAML_IDP, [cert], "https://idp.saml-corp.test/sso")
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            body = xml.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metadata"
        cfg = json.loads(json.dumps(BASE_CONFIG))
        cfg["workspaces"][0]["connections"] = [{"slug": "idp", "name": "IdP", "protocol": "saml",
                                                "metadata_url": url, "domains": ["saml-corp.test"]}]
        with hub.db() as db:
            apply(db, validate(cfg), hub.hasher, secret_key=hub.settings.secret_key)
            db.commit()
        fetched = len(hits)
        r = patch(api, "idp", {"trust_mfa": True})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.get_json()["changed"] == ["trust_mfa"] and len(hits) == fetched
        conn = stored_connection(hub, "idp")
        assert conn["metadata_url"] == url and conn["metadata_xml"] == xml
        _, new_cert = sb.keypair("rotation-new")
        new_xml = sb.metadata(SAML_IDP, [new_cert], "https://idp.saml-corp.test/sso")
        r = patch(api, "idp", {"metadata_xml": new_xml})
        assert r.status_code == 200 and r.get_json()["changed"] == ["metadata_url", "metadata_xml"]
        conn = stored_connection(hub, "idp")
        assert "metadata_url" not in conn and conn["metadata_xml"] == new_xml
        assert len(hits) == fetched
    finally:
        server.shutdown()
        server.server_close()


def test_editing_an_ldap_connection_replaces_its_bind_password(app, hub, api):
    assert api.post("/workspaces/acme/connections", LDAP).status_code == 201
    before = stored_connection(hub, "ad")
    r = patch(api, "ad", {"bind_password": "new-bind-password-4567", "start_tls": False, "timeout": 10,
                          "group_search_base": "ou=groups,dc=acme,dc=test"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert "new-bind-password-4567" not in r.get_data(as_text=True)
    assert r.get_json()["changed"] == ["bind_password", "group_search_base", "timeout"]
    after = stored_connection(hub, "ad")
    assert after["bind_password"] == "new-bind-password-4567" and after["url"] == before["url"]
    r = patch(api, "ad", {"group_search_base": None, "url": "ldap://dc.acme.test:389", "start_tls": True})
    assert r.status_code == 200 and r.get_json()["changed"] == ["group_search_base", "start_tls", "url"]
    assert "group_search_base" not in stored_connection(hub, "ad")


@pytest.mark.parametrize("path, base, key", [
    ("apps", {"slug": "s", "name": "S", "protocol": "saml", "entity_id": "https://sp.test", "acs_url": "https://sp.test/a"},
     "certificate"),
    ("apps", {"slug": "s", "name": "S", "protocol": "saml", "entity_id": "https://sp.test", "acs_url": "https://sp.test/a"},
     "slo_binding"),
    ("apps", {"slug": "s", "name": "S", "protocol": "saml", "entity_id": "https://sp.test", "acs_url": "https://sp.test/a"},
     "acs_url"),
    ("apps", {"slug": "o", "name": "O", "protocol": "oidc", "redirect_uris": ["https://o.test/cb"]}, "slug"),
    ("apps", {"slug": "o", "name": "O", "protocol": "oidc", "redirect_uris": ["https://o.test/cb"]}, "name"),
    ("connections", OKTA, "slug"),
    ("users", {"email": "z@acme.test"}, "email"),
])
@pytest.mark.parametrize("value", [5, True, ["x"], {"a": 1}])
def test_values_of_the_wrong_type_are_named_never_a_500(api, path, base, key, value):
    r = api.post(f"/workspaces/acme/{path}", {**base, key: value})
    assert_error(r, 422, "invalid", key)


# ---- pagination -----------------------------------------------------------------------------------------------
def walk(api: Api, path: str, limit: int) -> tuple[list[dict], list[dict]]:
    """Every item of a list endpoint, a page at a time; and the pages."""
    pages, offset = [], 0
    while offset is not None:
        page = api.get(path, query={"limit": limit, "offset": offset}).get_json()
        assert set(page) == {"items", "total", "limit", "offset", "next_offset"} and page["limit"] == limit
        assert len(page["items"]) <= limit
        pages.append(page)
        offset = page["next_offset"]
    return [i for p in pages for i in p["items"]], pages


def test_every_list_paginates_like_users(app, hub, api, tokens):
    for i in range(5):
        assert api.post("/workspaces/acme/apps", {"slug": f"app{i}", "name": f"App {i}", "protocol": "oidc",
                                                  "redirect_uris": [f"https://app{i}.acme.test/cb"]}).status_code == 201
        assert api.post("/workspaces/acme/apps", {"slug": f"saml{i}", "name": f"SAML {i}", "protocol": "saml",
                                                  "entity_id": f"https://saml{i}.acme.test/sp",
                                                  "acs_url": f"https://saml{i}.acme.test/acs"}).status_code == 201
        assert api.post("/workspaces/acme/connections", {**OKTA, "slug": f"okta{i}", "domains": [],
                                                         "name": f"Okta {i}"}).status_code == 201
        assert api.post("/workspaces/acme/scim-tokens", {"name": f"token{i}"}).status_code == 201
    op = Api(app, tokens["operator"])
    for i in range(3):
        assert op.post("/workspaces", {"slug": f"ws{i}", "name": f"WS {i}"}).status_code == 201
    for client, path, total, key in ((api, "/workspaces/acme/apps", 10, "slug"),
                                     (api, "/workspaces/acme/connections", 5, "slug"),
                                     (api, "/workspaces/acme/scim-tokens", 5, "id"),
                                     (op, "/workspaces", 5, "slug")):
        everything = client.get(path).get_json()
        assert everything["total"] == total and everything["next_offset"] is None and everything["limit"] == 50
        items, pages = walk(client, path, 2)
        assert [i[key] for i in items] == [i[key] for i in everything["items"]], path  # same order, no repeats
        assert len(pages) == (total + 1) // 2 and all(p["total"] == total for p in pages)
        assert pages[0]["next_offset"] == 2 and pages[-1]["next_offset"] is None
        assert client.get(path, query={"offset": total}).get_json()["items"] == []
        for bad, field in (({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"), ({"offset": "-1"}, "offset"),
                           ({"offset": "x"}, "offset"), ({"limit": "1.5"}, "limit")):
            assert_error(client.get(path, query=bad), 400, "bad_parameter", field=field)
    assert [a["slug"] for a in api.get("/workspaces/acme/apps", query={"limit": 3}).get_json()["items"]] == \
        ["app0", "app1", "app2"]

    # the OpenAPI document says so
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    for path, schema in (("/workspaces", "WorkspacePage"), ("/workspaces/{ws}/apps", "AppPage"),
                         ("/workspaces/{ws}/connections", "ConnectionPage"),
                         ("/workspaces/{ws}/scim-tokens", "ScimTokenPage")):
        get = doc["paths"][path]["get"]
        assert {"limit", "offset"} <= {q["name"] for q in get["parameters"] if q["in"] == "query"}
        assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + schema)
        assert set(doc["components"]["schemas"][schema]["required"]) == {"items", "total", "limit", "offset",
                                                                         "next_offset"}
