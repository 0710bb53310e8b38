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
from tests.interop.oidc_upstream.peer import audit_events, make_fed_app

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
    assert r.status_code == 302 and r.headers["Location"].endswith("/settings/security")
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
    assert r.status_code == 302 and r.headers["Location"].endswith("/settings/security")


def test_ldap_test_connection_page(app):
    b, r = ldap_login(app, ALICE, ALICE_PW, local=True)  # alice is an admin
    page = b.get("/w/acme/sso/corp/test")
    assert page.status_code == 200 and "Test connection: Corp directory" in page.get_data(as_text=True)
    r = b.form_post("/w/acme/sso/corp/test", "/w/acme/sso/corp/test", {})
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "Directory checks" in body and "✔" in body
