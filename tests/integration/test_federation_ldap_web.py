"""LDAP connections in the sign-in pages, against a real OpenLDAP slapd: home-realm discovery sends the address
to idhub's password page, the password is checked by a bind (``federation.ldap``), the person is linked on the
entry's UUID, groups follow the directory; failures are generic for the employee and named in the audit log;
the admins' Test connection page runs the directory checks."""

from __future__ import annotations

import copy
import re

import pytest
from sqlalchemy import select

from federation.models import FederationLink
from idp.models import Group, GroupMember, User
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, Browser
from tests.helpers.slapd import PASSWORDS, Slapd
from tests.interop.oidc_upstream.peer import admin_browser, audit_events, make_fed_app

FLOW_RE = re.compile(r'name="flow" value="([^"]+)"')


@pytest.fixture(scope="module")
def slapd():
    server = Slapd().start()
    yield server
    server.stop()


@pytest.fixture
def app(settings, slapd):
    cfg = copy.deepcopy(BASE_CONFIG)
    conn = slapd.conn(domains=["acme.test"])
    conn.pop("user_filter")  # the default: uid or mail, so people type their email
    cfg["workspaces"][0]["connections"] = [conn]
    return make_fed_app(settings, cfg)


def ldap_login(app, email: str, password: str, *, local: bool = False, b: Browser | None = None):
    b = b or Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": email, **({"local": "1"} if local else {})})
    assert r.status_code == 302 and "/login/password" in r.headers["Location"], r.get_data(as_text=True)[:300]
    page = b.get(r.headers["Location"]).get_data(as_text=True)
    flow = FLOW_RE.search(page).group(1)
    return b, b.post("/w/acme/login/password", {"flow": flow, "password": password, "csrf_token": b.csrf(page)})


def test_directory_password_signs_in_and_links_on_the_entry(app):
    hub = app.extensions["idhub"]
    b, r = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert b.security().status_code == 200
    with hub.db() as db:
        ada = db.scalar(select(User).where(User.email_normalized == "ada@acme.test"))
        link = db.scalar(select(FederationLink).where(FederationLink.user_id == ada.id))
        groups = sorted(db.scalars(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                                   .where(GroupMember.user_id == ada.id)))
    assert len(link.subject) == 36 and ada.password_hash is None  # entryUUID; no local password stored
    assert groups == ["admins", "engineers"]
    ok = audit_events(hub, "federation.signin.success")[-1].data
    assert ok["protocol"] == "ldap" and ok["amr"] == ["pwd", "fed"]


def test_wrong_directory_password(app):
    hub = app.extensions["idhub"]
    b, r = ldap_login(app, "ada@acme.test", "not the password")
    assert r.status_code == 401 and "Incorrect email or password." in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "bind"
    _, r = ldap_login(app, "ada@acme.test", "")
    assert r.status_code == 401
    assert b.security().status_code == 302


def test_local_password_of_a_directory_domain_is_still_possible_when_sso_is_optional(app):
    _, r = ldap_login(app, ALICE, ALICE_PW, local=True)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")


def test_ldap_test_connection_page(app):
    b = admin_browser(app)  # alice, an admin, signed in with a second factor
    page = b.get("/w/acme/sso/corp/test")
    assert page.status_code == 200 and "Test connection: Corp directory" in page.get_data(as_text=True)
    r = b.form_post("/w/acme/sso/corp/test", "/w/acme/sso/corp/test", {})
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "Directory checks" in body and "✔" in body


def test_ldap_test_connection_is_audited_with_the_admin(app, slapd):
    hub = app.extensions["idhub"]
    b = admin_browser(app)
    with hub.db() as db:
        alice_id = db.scalar(select(User.id).where(User.email_normalized == ALICE))
    r = b.form_post("/w/acme/sso/corp/test", "/w/acme/sso/corp/test", {})
    assert r.status_code == 200 and "✘" not in r.get_data(as_text=True)
    started = audit_events(hub, "federation.test.started")[-1]
    done = audit_events(hub, "federation.test.succeeded")[-1]
    assert started.actor_id == alice_id and started.data["connection"] == "corp"
    assert done.actor_id == alice_id and done.data["protocol"] == "ldap" and done.data["failed_checks"] == []


def test_ldap_test_connection_with_a_failing_check_is_audited(settings, slapd):
    cfg = copy.deepcopy(BASE_CONFIG)
    conn = slapd.conn(domains=["acme.test"], user_search_base="ou=nobody,dc=nowhere")
    cfg["workspaces"][0]["connections"] = [conn]
    app = make_fed_app(settings, cfg)
    hub = app.extensions["idhub"]
    r = admin_browser(app).form_post("/w/acme/sso/corp/test", "/w/acme/sso/corp/test", {})
    assert r.status_code == 200 and "✘" in r.get_data(as_text=True)
    failed = audit_events(hub, "federation.test.failed")[-1].data
    assert failed["protocol"] == "ldap" and failed["failed_checks"]
    assert not audit_events(hub, "federation.test.succeeded")


def test_ldap_test_connection_needs_an_admin_with_a_second_factor(settings, slapd):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"].pop("require_mfa_for_admins")  # the default: admins need a second factor
    conn = slapd.conn(domains=["acme.test"])
    conn.pop("user_filter")
    cfg["workspaces"][0]["connections"] = [conn]
    app = make_fed_app(settings, cfg)
    b, r = ldap_login(app, ALICE, ALICE_PW, local=True)  # alice is an admin without 2FA: she sets it up first
    assert r.status_code == 302 and "/login/enroll" in r.headers["Location"]
    b = admin_browser(app, amr=("pwd",))  # an admin session with a password only
    r = b.get("/w/acme/sso/corp/test")
    assert r.status_code == 302 and "/w/acme/login/step-up" in r.headers["Location"]
    r = b.post("/w/acme/sso/corp/test", {"csrf_token": b.csrf(b.security().get_data(as_text=True))})
    assert r.status_code == 302 and "/w/acme/login/step-up" in r.headers["Location"]
    assert not audit_events(app.extensions["idhub"], "federation.test.started")


# ---- re-authentication with the directory password ----------------------------------------------------------------
NXT = "/w/acme/settings/security/2fa"
NEXT_RE = re.compile(r'name="next" value="([^"]+)"')


def reauth_post(b: Browser, password: str):
    r = b.get(NXT)
    assert "/settings/security/reauth" in r.headers["Location"]
    page = b.get(r.headers["Location"]).get_data(as_text=True)
    assert ">Corp directory password</label>" in page and "Continue with" not in page
    return b.post("/w/acme/settings/security/reauth", {"password": password, "next": NEXT_RE.search(page)[1],
                                                       "csrf_token": b.csrf(page)})


def test_directory_user_confirms_with_the_directory_password(app):
    hub = app.extensions["idhub"]
    b, _ = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])  # JIT: no idhub password exists
    r = reauth_post(b, "not the password")
    assert r.status_code == 401 and "Incorrect password." in r.get_data(as_text=True)
    fail = audit_events(hub, "federation.signin.failure")[-1].data
    assert fail["check"] == "bind" and fail["reauth"] is True
    r = reauth_post(b, PASSWORDS["ada"])  # a bind as ada's entry
    assert r.status_code == 302 and r.headers["Location"].endswith(NXT)
    assert b.get(NXT).status_code == 200
    ok = audit_events(hub, "auth.reauth.success")[-1].data
    assert ok["method"] == "ldap" and ok["connection"] == "corp"


def test_directory_password_of_an_entry_not_linked_to_the_user_is_refused(app):
    hub = app.extensions["idhub"]
    b, _ = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])
    with hub.db() as db:  # e.g. the directory entry with ada's address is not the one her account is linked to
        ada_id = db.scalar(select(User.id).where(User.email_normalized == "ada@acme.test"))
        db.scalar(select(FederationLink).where(FederationLink.user_id == ada_id)).subject = "another-entry"
        db.commit()
    r = reauth_post(b, PASSWORDS["ada"])
    assert r.status_code == 401 and "another Corp directory account" in r.get_data(as_text=True)
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "identity_mismatch"
    assert "/reauth" in b.get(NXT).headers["Location"]


def test_a_connection_claiming_domains_makes_the_sign_in_page_identifier_first(app):
    """The email decides where the password goes, so the page does not ask for it up front; a password posted
    with the email anyway is never tried (not against the directory, not against idhub)."""
    hub = app.extensions["idhub"]
    b = Browser(app)
    page = b.get("/w/acme/login").get_data(as_text=True)
    assert '<label for="email">Email or username</label>' in page and 'name="password"' not in page
    assert ">Continue</button>" in page
    r = b.post("/w/acme/login", {"email": "ada@acme.test", "password": PASSWORDS["ada"], "csrf_token": b.csrf(page)})
    assert r.status_code == 302 and "/login/password?flow=" in r.headers["Location"]
    assert b.security().status_code == 302
    assert not audit_events(hub, "federation.signin.success") and not audit_events(hub, "federation.signin.failure")
    assert not audit_events(hub, "auth.signin.failure")
