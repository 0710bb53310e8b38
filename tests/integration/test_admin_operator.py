"""The hub operator in the console: a user with role ``operator`` signed in to their own workspace reaches every
workspace's console (always with a second factor), lists and creates workspaces, and acts as themselves in the
other workspaces' audit logs; nobody else can become one or change one."""

from __future__ import annotations

import html as htmllib
import json
import re

import pytest
from sqlalchemy import select

from admin.api import admin_service
from idp.audit import AuditEvent
from idp.flow import AuthnResult, Client
from idp.models import User, Workspace
from tests.conftest import ALICE, BASE_CONFIG, Browser, make_app

OPERATOR = "root@hq.test"
HQ_ADMIN = "helpdesk@hq.test"
API = "/api/v1"


def text(r) -> str:
    return htmllib.unescape(r.get_data(as_text=True))


def config(hq_policies: dict | None = None) -> dict:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"].append({
        "slug": "hq", "name": "Hub HQ", "plan": "enterprise", "policies": hq_policies or {},
        "users": [{"email": OPERATOR, "name": "Hub Root", "password": "R00t-Operator-Pass!", "role": "operator"},
                  {"email": HQ_ADMIN, "name": "Help Desk", "password": "H3lp-Desk-Pass!", "role": "admin"}]})
    return cfg


@pytest.fixture
def app(settings):
    return make_app(settings, config())


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


def user_id(hub, slug: str, email: str) -> str:
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == slug))
        return db.scalar(select(User.id).where(User.workspace_id == ws.id, User.email_normalized == email))


def session_in(app, slug: str, email: str, amr=("pwd", "totp"), browser: Browser | None = None, ip="127.0.0.1"):
    """``browser`` (a new one by default) with a session of ``email`` in workspace ``slug``."""
    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == slug))
    b = browser or Browser(app, ip=ip)
    token, _ = hub.complete_signin(ws, AuthnResult(ws.id, user_id(hub, slug, email), tuple(amr), hub.clock()),
                                   Client(ip, b.ua, "test"))
    b.client.set_cookie(f"idhub_session_{slug}", token)
    return b


def events(hub, type_: str, workspace: str | None = None) -> list[AuditEvent]:
    with hub.db() as db:
        q = select(AuditEvent).where(AuditEvent.type == type_)
        if workspace:
            ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == workspace))
            q = q.where(AuditEvent.workspace_id == ws_id)
        return list(db.scalars(q.order_by(AuditEvent.id)))


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_the_operator_opens_every_workspaces_console_from_their_own_sign_in(app):
    b = session_in(app, "hq", OPERATOR)
    for slug in ("acme", "other", "hq"):
        for page in ("", "users", "apps", "policies", "audit"):
            r = b.get(f"/w/{slug}/admin/{page}")
            assert r.status_code == 200, (slug, page, r.status_code)
    page = text(b.get("/w/acme/admin/"))
    assert "Hub operator: you are signed in to" in page and "Hub HQ" in page and "Acme Corp" in page
    assert 'href="/w/acme/admin/workspaces"' in page
    # signing out from another workspace's console ends the operator's own session
    assert 'action="/w/hq/logout"' in page
    assert "Hub operator: you are signed in" not in text(b.get("/w/hq/admin/"))  # at home: no banner


def test_what_the_operator_does_elsewhere_is_in_that_workspaces_audit_log_under_their_name(app, hub):
    b = session_in(app, "hq", OPERATOR)
    page = text(b.get("/w/acme/admin/users"))
    r = b.post("/w/acme/admin/users", {"email": "new.hire@acme.test", "name": "New Hire", "role": "admin",
                                       "csrf_token": csrf(page)})
    assert r.status_code == 302, text(r)[:400]
    [ev] = events(hub, "admin.user.invited", "acme")
    assert ev.actor_email == OPERATOR and ev.actor_id == user_id(hub, "hq", OPERATOR)
    assert ev.data["via"] == "console"
    with hub.db() as db:
        made = db.scalar(select(User).where(User.email_normalized == "new.hire@acme.test"))
        assert made.role == "admin" and made.workspace_id != user_id(hub, "hq", OPERATOR)


def test_the_operator_lists_and_creates_workspaces(app, hub):
    b = session_in(app, "hq", OPERATOR)
    r = b.get("/w/hq/admin/workspaces")
    page = text(r)
    assert r.status_code == 200
    for slug in ("acme", "other", "hq"):
        assert f'data-workspace="{slug}"' in page and f'href="/w/{slug}/admin/"' in page
    for label in ("Name", "Address", "Plan", "Email domains"):
        assert f">{label}" in page
    bad = b.post("/w/hq/admin/workspaces", {"name": "Bad", "slug": "Not A Slug!", "plan": "free",
                                            "csrf_token": csrf(page)})
    assert bad.status_code == 422 and "Address may only use lowercase letters, digits and hyphens" in text(bad)
    assert 'value="Not A Slug!"' in text(bad)  # kept, to be corrected
    dup = b.post("/w/hq/admin/workspaces", {"name": "Acme again", "slug": "acme", "plan": "free",
                                            "csrf_token": csrf(page)})
    assert dup.status_code == 409 and "Another workspace already uses this address." in text(dup)
    r = b.post("/w/hq/admin/workspaces", {"name": "Globex", "slug": "globex", "plan": "enterprise",
                                          "domains": "globex.test", "csrf_token": csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/globex/admin/users")
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "globex"))
        assert ws.plan == "enterprise" and ws.domains == ["globex.test"]
    [ev] = events(hub, "admin.workspace.created")
    assert ev.actor_email == OPERATOR and ev.data["slug"] == "globex"
    # its first admin is invited from its (empty) console
    assert b.get("/w/globex/admin/users").status_code == 200


def test_the_operator_always_needs_a_second_factor(settings):
    app = make_app(settings, config({"require_mfa_for_admins": False}))
    b = session_in(app, "hq", OPERATOR, amr=("pwd",))
    r = b.get("/w/hq/admin/")  # their own workspace: the session is stepped up in place
    assert r.status_code == 302 and "/w/hq/login/step-up" in r.headers["Location"]
    r = b.get("/w/acme/admin/")  # another one: the way to step up their own session
    assert r.status_code == 403 and "two-factor authentication" in text(r) and "/w/hq/login/step-up" in text(r)
    # while the workspace's own admins may go without, as the workspace decided
    assert session_in(app, "hq", HQ_ADMIN, amr=("pwd",)).get("/w/hq/admin/").status_code == 200


def test_the_operators_own_workspace_policies_hold_elsewhere(settings):
    app = make_app(settings, config({"ip_allowlist": ["10.0.0.0/8"]}))
    inside = session_in(app, "hq", OPERATOR, ip="10.1.2.3")
    assert inside.get("/w/acme/admin/").status_code == 200
    outside = session_in(app, "hq", OPERATOR, ip="198.51.100.7")
    r = outside.get("/w/acme/admin/")
    assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]  # no usable operator session


def test_an_ended_session_or_a_disabled_operator_opens_nothing(app, hub):
    b = session_in(app, "hq", OPERATOR)
    assert b.get("/w/acme/admin/").status_code == 200
    hub.sessions.end_all(user_id(hub, "hq", OPERATOR), "test")
    assert b.get("/w/acme/admin/").status_code == 302
    b = session_in(app, "hq", OPERATOR)
    with hub.db() as db:
        db.get(User, user_id(hub, "hq", OPERATOR)).active = False
        db.commit()
    assert b.get("/w/acme/admin/").status_code == 302


def test_a_workspace_admin_is_not_an_operator(app, hub):
    alice = session_in(app, "acme", ALICE)
    r = alice.get("/w/acme/admin/workspaces")
    assert r.status_code == 403
    assert alice.get("/w/other/admin/").status_code == 302  # another workspace: sign in there
    helpdesk = session_in(app, "hq", HQ_ADMIN)
    assert helpdesk.get("/w/hq/admin/").status_code == 200
    assert helpdesk.get("/w/acme/admin/").status_code == 302  # an admin of the operator's workspace is no operator
    # an admin session of another workspace plus a member session here: still no console
    both = session_in(app, "acme", "bob@acme.test", amr=("pwd", "totp"), browser=session_in(app, "hq", HQ_ADMIN))
    assert both.get("/w/acme/admin/").status_code == 403


def test_nobody_but_the_operator_makes_or_changes_an_operator(app, hub):
    alice = session_in(app, "acme", ALICE)
    page = text(alice.get("/w/acme/admin/users"))
    assert 'value="operator"' not in page  # not offered
    r = alice.post("/w/acme/admin/users", {"email": "sneaky@acme.test", "role": "operator", "csrf_token": csrf(page)})
    assert r.status_code == 403 and "only the hub operator" in text(r)
    bob = user_id(hub, "acme", "bob@acme.test")
    r = alice.post(f"/w/acme/admin/users/{bob}", {"name": "Bob", "role": "operator", "csrf_token": csrf(page)})
    assert r.status_code == 403
    # the operator's own workspace admin can neither demote, disable, reset nor log out the operator
    helpdesk = session_in(app, "hq", HQ_ADMIN)
    op = user_id(hub, "hq", OPERATOR)
    page = text(helpdesk.get(f"/w/hq/admin/users/{op}"))
    r = helpdesk.post(f"/w/hq/admin/users/{op}", {"name": "Demoted", "role": "member", "csrf_token": csrf(page)})
    assert r.status_code == 403
    for action in ("disable", "reset-2fa", "end-sessions"):
        r = helpdesk.post(f"/w/hq/admin/users/{op}/{action}", {"csrf_token": csrf(page)})
        assert r.status_code == 302
        assert "only the hub operator" in text(helpdesk.get(r.headers["Location"]))
    with hub.db() as db:
        row = db.get(User, op)
        assert row.role == "operator" and row.active and row.name == "Hub Root"
        assert db.scalar(select(User.role).where(User.email_normalized == "sneaky@acme.test")) is None
        assert db.get(User, bob).role == "member"
    # the operator can: make bob an operator, and undo it
    root = session_in(app, "hq", OPERATOR)
    page = text(root.get(f"/w/acme/admin/users/{bob}"))
    assert 'value="operator"' in page
    assert root.post(f"/w/acme/admin/users/{bob}", {"name": "Bob", "role": "operator",
                                                    "csrf_token": csrf(page)}).status_code == 302
    with hub.db() as db:
        assert db.get(User, bob).role == "operator"


def test_the_api_refuses_operator_roles_to_workspace_tokens(app, hub):
    with app.app_context():
        svc = admin_service()
        acme, _ = svc.tokens.create("acme-ci", workspace_id=hub_ws(hub, "acme"))
        root, _ = svc.tokens.create("root", workspace_id=None, operator=True)
    c = app.test_client()

    def call(token, method, path, body):
        return c.open(API + path, method=method, json=body, headers={"Authorization": f"Bearer {token}"})

    r = call(acme, "POST", "/workspaces/acme/users", {"email": "x@acme.test", "role": "operator"})
    assert r.status_code == 403 and r.get_json()["error"]["field"] == "role"
    bob = user_id(hub, "acme", "bob@acme.test")
    assert call(acme, "PATCH", f"/workspaces/acme/users/{bob}", {"role": "operator"}).status_code == 403
    r = call(root, "PATCH", f"/workspaces/acme/users/{bob}", {"role": "operator"})
    assert r.status_code == 200 and r.get_json()["role"] == "operator"
    # now a workspace token cannot touch bob any more
    assert call(acme, "PATCH", f"/workspaces/acme/users/{bob}", {"role": "member"}).status_code == 403
    assert call(acme, "POST", f"/workspaces/acme/users/{bob}/disable", None).status_code == 403


def hub_ws(hub, slug: str) -> str:
    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == slug))
