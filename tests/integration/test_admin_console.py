"""The admin console (``/w/{ws}/admin``): who may enter, that every page works without JavaScript with labelled
inputs and CSRF, and that its actions are the API's (same service, audited as the signed-in admin)."""

from __future__ import annotations

import dataclasses
import html as htmllib
import json
import re
from datetime import timedelta

import lxml.html
import pytest
from sqlalchemy import select

from idp.audit import AuditEvent
from idp.flow import AuthnResult, Client
from idp.models import User, Workspace
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, Browser, make_app

PAGES = ("", "users", "groups", "apps", "connections", "policies", "scim", "keys", "audit")


def text(r) -> str:
    return htmllib.unescape(r.get_data(as_text=True))


def signed_in(app, email: str, amr=("pwd", "totp")) -> Browser:
    """A browser with a session as if ``email`` had signed in with ``amr`` (the real 2FA sign-in is covered by
    tests/browser/test_admin_console.py)."""
    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        uid = db.scalar(select(User.id).where(User.workspace_id == ws.id, User.email_normalized == email))
    b = Browser(app)
    token, _ = hub.complete_signin(ws, AuthnResult(ws.id, uid, tuple(amr), hub.clock()),
                                   Client("127.0.0.1", b.ua, "test"))
    b.client.set_cookie("idhub_session_acme", token)
    return b


def events(hub, prefix: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type.startswith(prefix)).order_by(AuditEvent.id)))


def assert_labelled(page: str) -> None:
    doc = lxml.html.fromstring(page)
    labels = {lab.get("for") for lab in doc.iter("label")}
    for el in doc.xpath("//input[not(@type='hidden')] | //select | //textarea"):
        assert el.get("id") and el.get("id") in labels, f"unlabelled {lxml.html.tostring(el)[:120]!r}"


@pytest.fixture
def admin(app):
    return signed_in(app, ALICE)


def test_anonymous_users_get_the_sign_in_page(app):
    for page in PAGES:
        r = Browser(app).get(f"/w/acme/admin/{page}")
        assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]


def test_members_get_403_and_are_audited(app, hub):
    b = Browser(app)
    assert b.login("acme", BOB, BOB_PW).status_code == 302
    for page in PAGES:
        r = b.get(f"/w/acme/admin/{page}")
        assert r.status_code == 403 and "admin console is for this workspace's admins" in text(r)
    r = b.post("/w/acme/admin/users", {"email": "x@acme.test", "csrf_token": b.csrf(text(b.security()))})
    assert r.status_code == 403
    assert len(events(hub, "admin.console.denied")) == len(PAGES) + 1
    with hub.db() as db:
        assert db.scalar(select(User).where(User.email_normalized == "x@acme.test")) is None


def test_an_admin_of_another_workspace_cannot_enter(app):
    b = signed_in(app, ALICE)
    assert b.get("/w/other/admin/").status_code == 302  # no session in that workspace: sign in there


def test_admins_need_a_second_factor_by_default(app, tmp_path):
    """An admin without 2FA is led through enrolment inside the sign-in and reaches the console in that same
    session; an admin session without a second factor (promoted after signing in) is stepped up in place, never
    sent away to "sign out and sign in again"."""
    import pyotp

    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["policies"].pop("require_mfa_for_admins")  # the default: true
    settings = dataclasses.replace(app.extensions["idhub"].settings, database_url=f"sqlite:///{tmp_path}/strict.db")
    strict = make_app(settings, cfg)
    h = strict.extensions["idhub"]
    b = Browser(strict)
    r = b.login("acme", ALICE, ALICE_PW)  # alice: admin, no 2FA
    assert r.status_code == 302 and "/login/enroll" in r.headers["Location"]
    enroll = r.headers["Location"]
    page = text(b.get(enroll))
    secret = re.search(r"data-secret>([A-Z2-7 ]+)<", page)[1].replace(" ", "")
    r = b.post(enroll, {"action": "verify", "code": pyotp.TOTP(secret).at(h.clock()), "csrf_token": b.csrf(page)})
    assert r.status_code == 200 and "backup codes" in text(r).lower()
    r = b.post(enroll, {"csrf_token": b.csrf(text(r))})  # "I have saved them": on into the session
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps")
    assert b.get("/w/acme/admin/").status_code == 200  # the same session: no sign-out, no second sign-in
    # a session without the second factor (as if alice had been made an admin after she signed in) steps up
    b2 = signed_in(strict, ALICE, amr=("pwd",))
    r = b2.get("/w/acme/admin/users")
    assert r.status_code == 302 and "/login/step-up" in r.headers["Location"]
    r = b2.get(r.headers["Location"])
    assert r.status_code == 302 and "/login/mfa" in r.headers["Location"]  # she has an app now: a code
    cookie = b2.client.get_cookie("idhub_session_acme").value
    page = text(b2.get(r.headers["Location"]))
    r = b2.post(r.headers["Location"], {"code": pyotp.TOTP(secret).at(h.clock() + timedelta(seconds=30)),
                                        "csrf_token": b2.csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/admin/users"), text(r)[:300]
    renewed = b2.client.get_cookie("idhub_session_acme").value
    assert renewed != cookie  # upgraded in place, with a new cookie: the one from before no longer works
    stale = Browser(strict)
    stale.client.set_cookie("idhub_session_acme", cookie)
    assert stale.security().status_code == 302
    assert b2.get("/w/acme/admin/users").status_code == 200
    with h.db() as db:
        uid = db.scalar(select(User.id).where(User.email_normalized == ALICE))
    assert len(h.sessions.list(uid)) == 2  # the two browsers; nothing stale
    # a workspace can relax it (the config file and the API validate the key alike)
    b3 = Browser(app)
    assert b3.login("acme", ALICE, ALICE_PW).status_code == 302
    assert b3.get("/w/acme/admin/").status_code == 200


def test_every_page_renders_with_labelled_inputs(app, admin):
    for page in PAGES:
        r = admin.get(f"/w/acme/admin/{page}")
        assert r.status_code == 200, (page, text(r)[:300])
        assert_labelled(text(r))
        # no inline script: only the console's own files, as progressive enhancement (every page works without)
        assert not re.search(r'<script(?![^>]*\bsrc="/static/)', text(r))
    hub = app.extensions["idhub"]
    with hub.db() as db:
        bob = db.scalar(select(User.id).where(User.email_normalized == BOB))
    r = admin.get(f"/w/acme/admin/users/{bob}")
    assert r.status_code == 200
    assert_labelled(text(r))
    assert admin.get("/w/acme/admin/users/not-a-user").status_code == 404
    assert admin.get("/w/acme/admin/apps/nope").status_code == 404


def console_post_rules() -> list[str]:
    """Every POST route of the console, read from Flask's url_map (a new route is covered without editing this)."""
    from flask import Flask

    from admin.console import bp

    probe = Flask("probe")
    probe.register_blueprint(bp)
    return sorted(r.rule for r in probe.url_map.iter_rules()
                  if r.endpoint.startswith("admin_console.") and "POST" in (r.methods or ()))


# Values for the routes' variables, and fields that would change something if the form were accepted.
ROUTE_ACTIONS = ("disable", "enable", "reset-2fa", "end-sessions")
FORMS = {
    "/w/<ws_slug>/admin/users": {"email": "mallory@acme.test", "name": "Mallory", "role": "admin"},
    "/w/<ws_slug>/admin/users/<user_id>": {"name": "Renamed", "role": "admin", "groups": "engineering"},
    "/w/<ws_slug>/admin/groups": {"name": "forged"},
    "/w/<ws_slug>/admin/apps": {"protocol": "oidc", "name": "Forged", "slug": "forged",
                                "redirect_uris": "https://evil.test/cb"},
    "/w/<ws_slug>/admin/apps/<app_slug>": {"name": "Forged", "redirect_uris": "https://evil.test/cb"},
    "/w/<ws_slug>/admin/connections": {"protocol": "oidc", "name": "Forged", "slug": "forged",
                                       "issuer": "https://evil.test", "client_id": "x", "domains": "evil.test"},
    "/w/<ws_slug>/admin/connections/<conn_slug>": {"name": "Forged", "issuer": "https://evil.test", "client_id": "x",
                                                   "client_secret": "forged-secret-0123456789", "trust_mfa": "1",
                                                   "domains": "evil.test"},
    "/w/<ws_slug>/admin/policies": {"require_mfa": "1", "ip_allowlist": "127.0.0.0/8"},
    "/w/<ws_slug>/admin/scim": {"name": "forged"},
}


def db_state(hub) -> dict:
    """Every row of every table (the audit log included), to show that a refused form changed nothing."""
    from idp.db import Base

    with hub.db() as db:
        return {t.name: sorted(map(repr, db.execute(t.select()).all())) for t in Base.metadata.sorted_tables}


@pytest.fixture
def csrf_targets(app, hub, admin):
    """A user (bob), a group, an app, a connection and a SCIM token to aim the forged forms at."""
    from admin.api import admin_service
    from admin.tokens import Principal

    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        bob = db.scalar(select(User.id).where(User.email_normalized == BOB))
    p = Principal("token", "setup", False, ws.id)
    with app.app_context():
        svc = admin_service()
        group = svc.create_group(p, "acme", {"name": "target"})["id"]
        svc.create_app(p, "acme", {"slug": "wiki", "name": "Wiki", "protocol": "oidc",
                                   "redirect_uris": ["https://wiki.acme.test/cb"]})
        svc.create_connection(p, "acme", {"slug": "okta", "name": "Okta", "protocol": "oidc",
                                          "issuer": "https://acme.okta.test", "client_id": "0oa1"})
        token = svc.create_scim_token(p, "acme", {"name": "okta"})["id"]
    return {"ws_slug": "acme", "user_id": bob, "group_id": group, "app_slug": "wiki", "conn_slug": "okta",
            "token_id": token, "key_id": "0" * 64}


def urls_for(rule: str, targets: dict) -> list[str]:
    names = re.findall(r"<(?:[a-z]+:)?([a-z_]+)>", rule)
    unknown = [n for n in names if n not in targets and n != "action"]
    assert not unknown, f"add a value for {unknown} of {rule} to this test"
    url = rule
    for n in names:
        if n != "action":
            url = re.sub(rf"<(?:[a-z]+:)?{n}>", targets[n], url)
    return [url.replace("<action>", a) for a in ROUTE_ACTIONS] if "<action>" in url else [url]


def test_the_csrf_test_covers_the_apps_real_routes(app):
    real = sorted(r.rule for r in app.url_map.iter_rules()
                  if r.endpoint.startswith("admin_console.") and "POST" in (r.methods or ()))
    assert real == console_post_rules() and len(real) >= 10


@pytest.mark.parametrize("rule", console_post_rules())
def test_every_console_form_needs_the_csrf_token(app, hub, admin, csrf_targets, rule):
    for url in urls_for(rule, csrf_targets):
        fields = FORMS.get(rule, {})
        before = db_state(hub)
        for forged in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
            r = admin.post(url, {**fields, **forged})
            assert r.status_code in (400, 403), (url, forged, r.status_code)
            assert "<script" not in text(r)
            assert db_state(hub) == before, (url, forged)
        # the right token gets past the check (so the refusal above was the token's doing)
        admin.get("/w/acme/admin/")
        r = admin.post(url, {**fields, "csrf_token": admin.csrf()})
        assert "came from another site" not in text(r), url


def test_invite_user_disable_and_audit_as_the_admin(app, hub, admin, outbox):
    r = admin.form_post("/w/acme/admin/users", "/w/acme/admin/users",
                        {"email": "carol@acme.test", "name": "Carol", "role": "member", "groups": "engineering"})
    assert r.status_code == 302
    page = text(admin.get("/w/acme/admin/users"))
    assert "Invited carol@acme.test" in page and 'data-user="carol@acme.test"' in page
    assert outbox.find(to="carol@acme.test", subject="You're invited to ")
    r = admin.form_post("/w/acme/admin/users", "/w/acme/admin/users", {"email": "carol@acme.test"})
    assert r.status_code == 409 and "already" not in text(r) and "exists" in text(r)
    with hub.db() as db:
        carol = db.scalar(select(User).where(User.email_normalized == "carol@acme.test"))
    r = admin.form_post(f"/w/acme/admin/users/{carol.id}", f"/w/acme/admin/users/{carol.id}/disable", {})
    assert r.status_code == 302
    assert "disabled" in text(admin.get(f"/w/acme/admin/users/{carol.id}"))
    [ev] = events(hub, "admin.user.disabled")
    assert ev.actor_email == ALICE and ev.data["via"] == "console"
    [ev] = events(hub, "admin.user.invited")
    assert ev.actor_email == ALICE
    # search
    page = text(admin.get("/w/acme/admin/users?q=carol"))
    assert 'data-user="carol@acme.test"' in page and f'data-user="{BOB}"' not in page
    page = text(admin.get("/w/acme/admin/users?status=bogus"))
    assert "status must be one of" in page


def test_oidc_app_secret_is_shown_once_with_copy_ready_settings(app, admin):
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {"protocol": "oidc", "name": "Wiki", "slug": "wiki",
                         "redirect_uris": "https://wiki.acme.test/cb\nhttps://wiki.acme.test/cb2"})
    assert r.status_code == 201, text(r)[:500]
    page = text(r)
    secret = re.search(r'id="client-secret" type="text" readonly value="([^"]+)"', page)[1]
    assert "shown only this once" in page
    assert 'value="http://localhost/w/acme/.well-known/openid-configuration"' in page
    assert "https://wiki.acme.test/cb2" in page
    again = text(admin.get("/w/acme/admin/apps/wiki"))
    assert secret not in again and "client-secret" not in again
    assert_labelled(again)
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki",
                        {"name": "Wiki", "redirect_uris": "https://wiki.acme.test/v2"})
    assert r.status_code == 302
    assert "https://wiki.acme.test/v2" in text(admin.get("/w/acme/admin/apps/wiki"))
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki/secret", {})
    assert r.status_code == 200 and "Replace the client secret of Wiki?" in text(r)  # a confirmation first
    assert "client-secret" not in text(r)
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki/secret", {"confirm": "1"})
    assert r.status_code == 201
    rotated = re.search(r'id="client-secret" type="text" readonly value="([^"]+)"', text(r))[1]
    assert rotated != secret
    # public and back, confirmed first; the way back shows a new secret once
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki/client-type", {})
    assert r.status_code == 200 and "Make Wiki a public client?" in text(r)
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki/client-type", {"confirm": "1"})
    assert r.status_code == 302
    page = text(admin.get("/w/acme/admin/apps/wiki"))
    assert "is now a public client" in page and "Public client (no secret, PKCE only)" in page
    assert "New client secret" not in page and "Make it a confidential client" in page
    assert_labelled(page)
    r = admin.form_post("/w/acme/admin/apps/wiki", "/w/acme/admin/apps/wiki/client-type", {"confirm": "1"})
    assert r.status_code == 201 and "shown only this once" in text(r)
    third = re.search(r'id="client-secret" type="text" readonly value="([^"]+)"', text(r))[1]
    assert third not in (secret, rotated)
    assert "Confidential client (with a client secret)" in text(admin.get("/w/acme/admin/apps/wiki"))
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {"protocol": "saml", "name": "CRM", "slug": "crm", "entity_id": "https://crm.test/sp",
                         "acs_url": "https://crm.test/acs"})
    assert r.status_code == 201
    assert 'value="http://localhost/w/acme/saml/metadata"' in text(r)
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {"protocol": "oidc", "name": "Bad", "slug": "bad", "redirect_uris": "not a url"})
    assert r.status_code == 422
    assert "“not a url” is not a full address such as https://app.example.com/callback." in text(r)


def test_policies_summary_and_no_self_lockout(app, hub, admin):
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies",
                        {"require_mfa": "1", "require_mfa_for_admins": "1", "ip_allowlist": "10.0.0.0/8",
                         "mfa_methods": "totp"})
    assert r.status_code == 409 and "would be locked out" in text(r)
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies",
                        {"require_mfa": "1", "require_mfa_for_admins": "1", "ip_allowlist": "127.0.0.0/8\n10.0.0.0/8",
                         "mfa_methods": "totp", "session_idle_timeout": "12h"})
    assert r.status_code == 302, text(r)[:500]
    page = text(admin.get("/w/acme/admin/policies"))
    assert "Everyone must use two-factor authentication." in page
    assert "Sign-in only from 127.0.0.0/8, 10.0.0.0/8." in page
    assert "Sessions end after 12 hours without activity." in page
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies", {"ip_allowlist": "10.0.0.1/8"})
    assert r.status_code == 422 and "10.0.0.1/8 has host bits set — did you mean 10.0.0.0/8?" in text(r)
    [ev] = events(hub, "admin.policies.updated")
    assert ev.actor_email == ALICE


def test_scim_tokens_and_provisioning_log(app, hub, admin):
    r = admin.form_post("/w/acme/admin/scim", "/w/acme/admin/scim", {"name": "okta"})
    assert r.status_code == 201
    token = re.search(r'id="scim-token" type="text" readonly value="([^"]+)"', text(r))[1]
    c = app.test_client()
    r = c.post("/w/acme/scim/v2/Users", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                              "userName": "dan@acme.test"},
               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"})
    assert r.status_code == 201
    page = text(admin.get("/w/acme/admin/scim"))
    assert token not in page and "scim.user.created" in page


def test_audit_page_filters_and_exports(app, hub, admin):
    admin.form_post("/w/acme/admin/groups", "/w/acme/admin/groups", {"name": "sales"})
    page = text(admin.get("/w/acme/admin/audit?type=admin.*"))
    assert 'data-type="admin.group.created"' in page and 'data-type="auth.signin.success"' not in page
    page = text(admin.get("/w/acme/admin/audit?since=2999-01-01"))
    assert "No events." in page
    assert admin.get("/w/acme/admin/audit?since=garbage").status_code == 400
    for path in ("/w/acme/admin/audit", "/w/acme/admin/audit/export"):
        for query in ("since=0001-01-01T00:00:00%2B01:00", "until=9999-12-31T23:59:59-01:00", "since=0001-01-01",
                      "until=9999-12-31", "since=1969-12-31"):
            r = admin.get(f"{path}?format=csv&{query}")
            assert r.status_code == 400 and r.mimetype == "text/html", (path, query)
            page = text(r)
            name = query.split("=")[0]
            assert f"{name}: {name} must be a time between the years 1970 and 9998" in page, page[:1500]
            assert 'role="alert"' in page and "<h1>Audit log</h1>" in page
    r = admin.get("/w/acme/admin/audit/export?format=csv&type=admin.group.created")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "admin.group.created" in text(r)
    r = admin.get("/w/acme/admin/audit/export?format=json")
    assert r.mimetype == "application/json" and any(e["type"] == "admin.group.created" for e in r.get_json())
    page = text(admin.get("/w/acme/admin/"))
    assert 'id="stat-signins">1<' in page and 'id="stat-users">' in page


def test_connections_page_adds_an_oidc_connection_and_links_its_test(app, hub, admin):
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections",
                        {"protocol": "oidc", "name": "Okta", "slug": "okta", "preset": "okta",
                         "issuer": "https://acme.okta.test", "client_id": "0oa1", "client_secret": "s3cret-value-xyz",
                         "domains": "acme.test"})
    assert r.status_code == 302, text(r)[:500]
    page = text(admin.get("/w/acme/admin/connections"))
    assert 'data-connection="okta"' in page and "s3cret-value-xyz" not in page
    assert 'value="http://localhost/w/acme/sso/okta/callback"' in page
    assert 'href="http://localhost/w/acme/sso/okta/test"' in page
    assert_labelled(page)
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections",
                        {"protocol": "oidc", "name": "Bad", "slug": "bad", "issuer": "http://evil.test",
                         "client_id": "x"})
    assert r.status_code == 422 and "Issuer URL must use https" in text(r)
    [ev] = events(hub, "admin.connection.created")
    assert ev.actor_email == ALICE
    assert re.search(r'data-test="never">Last test:\s+<strong>never tested', page)


def test_connections_page_shows_the_last_test_and_its_failed_check(app, hub, admin, monkeypatch):
    """A real Test connection each: an LDAP directory and an OIDC issuer that nothing listens on (on 127.0.0.1,
    which an issuer added in the console may use only when the deployment allows it)."""
    from admin.api import admin_service
    from admin.tokens import Principal
    from tests.helpers.smtp import free_port

    monkeypatch.setenv("IDHUB_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
    port = free_port()
    assert admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections", {
        "protocol": "oidc", "name": "Down", "slug": "down", "issuer": f"http://127.0.0.1:{port}",
        "client_id": "x"}).status_code == 302
    with app.app_context():
        admin_service().create_connection(Principal("token", "setup", False, hub_ws(hub)), "acme", {
            "slug": "dir", "name": "Directory", "protocol": "ldap", "url": f"ldap://127.0.0.1:{port}",
            "bind_dn": "cn=idhub", "bind_password": "secret-bind-password", "user_search_base": "ou=people",
            "timeout": 2})
    for slug in ("down", "dir"):
        r = admin.form_post(f"/w/acme/sso/{slug}/test", f"/w/acme/sso/{slug}/test", {})
        assert r.status_code in (200, 400, 502), (slug, r.status_code)
    page = text(admin.get("/w/acme/admin/connections"))
    for slug in ("down", "dir"):
        card = page[page.index(f'data-connection="{slug}"'):]
        card = card[:card.index("</section>")]
        assert 'data-test="failed"' in card and "failed</strong>" in card, card
        assert f"by {ALICE}" in card
    down = page[page.index('data-connection="down"'):]
    assert re.search(r"failed</strong> \(check <code>[a-z_]+</code>\)", down[:down.index("</section>")])


def hub_ws(hub) -> str:
    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))


def test_long_lists_are_paged_in_the_console(app, hub, admin):
    from admin.api import admin_service
    from admin.tokens import Principal

    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
    p = Principal("token", "setup", False, ws.id)
    with app.app_context():
        for i in range(51):
            admin_service().create_app(p, "acme", {"slug": f"app{i:02d}", "name": f"App {i:02d}", "protocol": "saml",
                                                   "entity_id": f"https://app{i}.acme.test/sp",
                                                   "acs_url": f"https://app{i}.acme.test/acs"})
            admin_service().create_scim_token(p, "acme", {"name": f"token{i:02d}"})
    for path, marker in (("apps", 'data-app="'), ("scim", 'data-token="')):
        page = text(admin.get(f"/w/acme/admin/{path}"))
        assert page.count(marker) == 50 and "1–50 of 51" in page, path
        assert f'href="/w/acme/admin/{path}?offset=50">Next page' in page
        rest = text(admin.get(f"/w/acme/admin/{path}?offset=50"))
        assert rest.count(marker) == 1 and "51–51 of 51" in rest
        assert f'href="/w/acme/admin/{path}">Previous page' in rest
        r = admin.get(f"/w/acme/admin/{path}?offset=lots")
        assert r.status_code == 400 and "offset: offset must be a whole number" in text(r)
        assert text(r).count(marker) == 50


# ---- editing connections, and LDAP directories ------------------------------------------------------------------
def stored(hub, slug: str) -> dict:
    from federation.config import connection_settings
    from federation.models import FederationConnection

    with hub.db() as db:
        row = db.scalar(select(FederationConnection).where(FederationConnection.slug == slug))
        return connection_settings(row, hub.settings.secret_key)


def setup_connections(app, hub) -> dict:
    """An OIDC, a SAML and an LDAP connection, added through the service as the API would."""
    from admin.api import admin_service
    from admin.tokens import Principal
    from tests.helpers import saml_builder as sb

    _, cert = sb.keypair("console-old")
    xml = sb.metadata("https://idp.saml.test", [cert], "https://idp.saml.test/sso")
    with app.app_context():
        svc, p = admin_service(), Principal("token", "setup", False, hub_ws(hub))
        svc.create_connection(p, "acme", {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta",
                                          "issuer": "https://acme.okta.test", "client_id": "0oa1",
                                          "client_secret": "first-okta-secret-0123456789", "domains": ["acme.test"]})
        svc.create_connection(p, "acme", {"slug": "corp-saml", "name": "Corp SAML", "protocol": "saml",
                                          "metadata_xml": xml, "domains": ["saml.test"]})
        svc.create_connection(p, "acme", {"slug": "dir", "name": "Directory", "protocol": "ldap",
                                          "url": "ldaps://dc.acme.test", "bind_dn": "cn=idhub,dc=acme,dc=test",
                                          "bind_password": "first-bind-password-42",
                                          "user_search_base": "ou=people,dc=acme,dc=test"})
    return {"cert": cert, "xml": xml}


def edit_form(admin, slug: str) -> dict:
    """The edit page's form fields as a browser would submit them unchanged (checked boxes, selected options)."""
    page = admin.get(f"/w/acme/admin/connections/{slug}")
    assert page.status_code == 200, text(page)[:500]
    doc = lxml.html.fromstring(text(page))
    [form] = doc.xpath("//form[@data-edit-connection]")
    fields = {}
    for el in form.xpath(".//input | .//textarea | .//select"):
        name = el.get("name")
        if not name or name == "csrf_token":
            continue
        if el.tag == "select":
            chosen = el.xpath("./option[@selected]") or el.xpath("./option")
            fields[name] = chosen[0].get("value")
        elif el.get("type") == "checkbox":
            if el.get("checked") is not None:
                fields[name] = el.get("value")
        elif el.tag == "textarea":
            fields[name] = el.text or ""
        else:
            fields[name] = el.get("value") or ""
    return fields


def save(admin, slug: str, fields: dict):
    return admin.form_post(f"/w/acme/admin/connections/{slug}", f"/w/acme/admin/connections/{slug}", fields)


def test_every_connection_has_an_edit_page_that_never_shows_its_secret(app, hub, admin):
    setup_connections(app, hub)
    page = text(admin.get("/w/acme/admin/connections"))
    for slug in ("okta", "corp-saml", "dir"):
        assert f'href="/w/acme/admin/connections/{slug}"' in page
        r = admin.get(f"/w/acme/admin/connections/{slug}")
        assert r.status_code == 200
        body = text(r)
        assert_labelled(body)
        assert "<script" not in body and 'aria-current="page" class="badge">Connections' in body
        assert "first-okta-secret" not in body and "first-bind-password" not in body
    assert 'value="https://acme.okta.test"' in text(admin.get("/w/acme/admin/connections/okta"))
    saml = text(admin.get("/w/acme/admin/connections/corp-saml"))
    assert "identity provider <code>https://idp.saml.test</code>" in saml and "expires" in saml
    assert 'value="ldaps://dc.acme.test"' in text(admin.get("/w/acme/admin/connections/dir"))
    # submitting a page unchanged changes nothing (a default stays a default)
    before = {s: stored(hub, s) for s in ("okta", "corp-saml", "dir")}
    for slug in before:
        r = save(admin, slug, edit_form(admin, slug))
        assert r.status_code == 302, (slug, text(r)[:800])
        assert "(nothing changed)" in text(admin.get(r.headers["Location"])), slug
        assert stored(hub, slug) == before[slug]
    assert admin.get("/w/acme/admin/connections/nope").status_code == 404
    assert admin.get("/w/other/admin/connections/okta").status_code == 302  # no session there: sign in


def test_editing_an_oidc_connection_rotates_the_secret_and_is_audited_as_the_admin(app, hub, admin):
    setup_connections(app, hub)
    fields = edit_form(admin, "okta")
    assert "trust_mfa" not in fields and fields["client_secret"] == ""
    r = save(admin, "okta", {**fields, "client_secret": "rotated-okta-secret-987654", "trust_mfa": "1",
                             "attribute_map": "upn = email\nroles = groups"})
    assert r.status_code == 302, text(r)[:800]
    page = text(admin.get(r.headers["Location"]))
    assert "changed: attribute_map, client_secret, trust_mfa" in page and "rotated-okta-secret" not in page
    conn = stored(hub, "okta")
    assert conn["client_secret"] == "rotated-okta-secret-987654" and conn["trust_mfa"] is True
    assert conn["attribute_map"] == {"upn": "email", "roles": "groups"}
    assert conn["scopes"] == ["openid", "email", "profile", "groups"]  # the okta preset's default, unchanged
    assert "upn = email" in page
    [ev] = events(hub, "admin.connection.updated")
    assert ev.actor_email == ALICE and ev.data["via"] == "console" and ev.subject_id == "okta"
    assert ev.data["changed"] == ["attribute_map", "client_secret", "trust_mfa"]
    assert "rotated-okta-secret" not in json.dumps(ev.data)
    # an empty secret field keeps the secret; bad input is refused naming the field, keeps what was typed (but
    # never a secret), and changes nothing
    fields = edit_form(admin, "okta")
    r = save(admin, "okta", {**fields, "issuer": "http://evil.test", "client_secret": "typed-but-refused-0123456",
                             "domains": "acme.test\nother.acme.test"})
    assert r.status_code == 422 and "Issuer URL must use https" in text(r)
    assert 'value="http://evil.test"' in text(r) and "typed-but-refused" not in text(r)
    assert "other.acme.test" in text(r)
    assert_labelled(text(r))
    r = save(admin, "okta", {**fields, "attribute_map": "upn = password"})
    assert r.status_code == 422 and "Attribute mapping: upn must be one of" in text(r)
    r = save(admin, "okta", {**fields, "domains": "saml.test"})
    assert r.status_code == 409 and "saml.test already belongs to connection 'corp-saml'" in text(r)
    assert stored(hub, "okta") == conn
    r = save(admin, "okta", {**fields, "remove_client_secret": "1"})
    assert r.status_code == 302 and "client_secret" not in stored(hub, "okta")


def test_replacing_saml_metadata_in_the_console_pins_the_new_certificate(app, hub, admin):
    from federation import saml_sp
    from tests.helpers import saml_builder as sb

    setup_connections(app, hub)
    _, new_cert = sb.keypair("console-new")
    _, next_cert = sb.keypair("console-next")
    fields = edit_form(admin, "corp-saml")
    assert fields["metadata_xml"] == ""  # empty: keep the metadata
    new_xml = sb.metadata("https://idp.saml.test", [new_cert], "https://idp.saml.test/sso")
    r = save(admin, "corp-saml", {**fields, "metadata_xml": new_xml, "certs": next_cert + "\n" + new_cert,
                                  "clock_skew": "60", "require_signed_assertion": "yes"})
    assert r.status_code == 302, text(r)[:800]
    conn = stored(hub, "corp-saml")
    assert conn["metadata_xml"] == new_xml and conn["clock_skew"] == 60 and conn["require_signed_assertion"] is True
    assert [c.strip() for c in conn["certs"]] == [next_cert.strip(), new_cert.strip()]
    pinned = "".join(saml_sp.pinned_certs(conn)).replace("\n", "")
    assert sb.cert_b64(new_cert) in pinned and sb.cert_b64(next_cert) in pinned
    assert sb.cert_b64(sb.keypair("console-old")[1]) not in pinned
    fields = edit_form(admin, "corp-saml")
    assert fields["require_signed_assertion"] == "yes" and fields["clock_skew"] == "60"
    for bad, message in (({"clock_skew": "500"}, "Clock skew must be a whole number from 0 to 300"),
                         ({"clock_skew": "soon"}, "Clock skew must be a whole number from 0 to 300"),
                         ({"certs": "not a certificate"}, "Pinned certificates must be a PEM certificate"),
                         ({"metadata_xml": "<nope"}, "Not usable IdP metadata")):
        r = save(admin, "corp-saml", {**fields, **bad})
        assert r.status_code == 422 and message in text(r), (bad, text(r)[:1500])
    assert stored(hub, "corp-saml") == conn


@pytest.fixture(scope="module")
def slapd():
    from tests.helpers.slapd import Slapd

    server = Slapd().start()
    yield server
    server.stop()


def test_the_ldap_form_adds_a_directory_and_the_edit_page_replaces_its_bind_password(app, hub, admin, slapd,
                                                                                    monkeypatch):
    """Against a real slapd: a directory added with a wrong bind password fails its test; after the new password
    is saved on the edit page, the test succeeds. (The slapd is on loopback: the operator allows it, as an
    admin-chosen LDAP server goes through the outbound checks.)"""
    monkeypatch.setenv("IDHUB_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
    real = slapd.conn()
    form = {"protocol": "ldap", "name": "Corp directory", "slug": "corp-ldap", "url": real["url"],
            "bind_dn": real["bind_dn"], "bind_password": "wrong-password", "user_search_base": real["user_search_base"],
            "group_search_base": real.get("group_search_base", ""), "user_filter": "(uid={username})",
            "domains": "ldap.acme.test"}
    for bad, message in (({"url": "https://dc.acme.test"}, "“https://dc.acme.test” is not a full address such as ldaps://ldap.example.com"),
                         ({"bind_password": ""}, "Bind password is required."),
                         ({"user_filter": "uid=x"}, "User filter must be an LDAP filter")):
        r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections", {**form, **bad})
        assert r.status_code == 422 and message in text(r), (bad, text(r)[:800])
        assert "wrong-password" not in text(r)
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections", form)
    assert r.status_code == 302, text(r)[:800]
    page = text(admin.get("/w/acme/admin/connections"))
    assert 'data-connection="corp-ldap"' in page and "wrong-password" not in page
    assert_labelled(page)
    conn = stored(hub, "corp-ldap")
    assert conn["protocol"] == "ldap" and conn["domains"] == ["ldap.acme.test"] and conn["start_tls"] is False
    assert conn["user_filter"] == "(uid={username})" and conn["bind_password"] == "wrong-password"
    [ev] = events(hub, "admin.connection.created")
    assert ev.actor_email == ALICE and ev.data["protocol"] == "ldap"

    r = admin.form_post("/w/acme/sso/corp-ldap/test", "/w/acme/sso/corp-ldap/test", {})
    assert "✘" in text(r)
    r = save(admin, "corp-ldap", {**edit_form(admin, "corp-ldap"), "bind_password": real["bind_password"]})
    assert r.status_code == 302, text(r)[:800]
    assert "(changed: bind_password)." in text(admin.get(r.headers["Location"]))
    assert stored(hub, "corp-ldap")["bind_password"] == real["bind_password"]
    r = admin.form_post("/w/acme/sso/corp-ldap/test", "/w/acme/sso/corp-ldap/test", {})
    assert r.status_code == 200 and "✘" not in text(r), text(r)[:1500]
    page = text(admin.get("/w/acme/admin/connections"))
    card = page[page.index('data-connection="corp-ldap"'):]
    assert 'data-test="succeeded"' in card[:card.index("</section>")]


def test_members_cannot_edit_connections(app, hub):
    b = Browser(app)
    assert b.login("acme", BOB, BOB_PW).status_code == 302
    setup_connections(app, hub)  # after bob's sign-in: acme.test addresses now go to Okta
    assert b.get("/w/acme/admin/connections/okta").status_code == 403
    r = b.post("/w/acme/admin/connections/okta", {"name": "Mine", "csrf_token": b.csrf(text(b.security()))})
    assert r.status_code == 403
    assert stored(hub, "okta")["name"] == "Okta" and not events(hub, "admin.connection.updated")


def test_the_policy_form_keeps_every_policy_it_saves(app, hub, admin):
    """The form PUTs the whole policy: passkeys stay an allowed method and the phishing-resistant requirements can
    be set, shown and kept by a save that does not touch them."""
    page = text(admin.get("/w/acme/admin/policies"))
    assert 'name="mfa_methods" value="webauthn" checked' in page  # the default allows every method
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies",
                        {"require_mfa_for_admins": "1", "require_phishing_resistant_mfa_for_admins": "1",
                         "mfa_methods": ["webauthn", "totp", "backup_codes"]})
    assert r.status_code == 302, text(r)[:500]
    page = text(admin.get("/w/acme/admin/policies"))
    assert "Admins sign in with a passkey or security key (phishing-resistant)." in page
    assert ('name="require_phishing_resistant_mfa_for_admins" value="1" checked' in page
            and 'name="require_phishing_resistant_mfa" value="1" checked' not in page)
    with hub.db() as db:
        from idp.accounts import workspace_by_slug

        pol = workspace_by_slug(db, "acme").policies
    assert pol["require_phishing_resistant_mfa_for_admins"] is True
    assert pol["mfa_methods"] == ["webauthn", "totp", "backup_codes"]
    # passkeys required for everyone without passkeys allowed: refused under the field, nothing saved
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies",
                        {"require_phishing_resistant_mfa": "1", "mfa_methods": ["totp"]})
    assert r.status_code == 422
    assert "webauthn" in text(r).lower() or "passkey" in text(r).lower()
