"""The one-page sign-in (email and password in one POST to ``/w/{ws}/login``), where no connection claims an
email domain: the same checks, in the same order, as the identifier-first pages, and no login flow stored unless
the sign-in goes on to another step."""

from __future__ import annotations

import copy
import re

import pyotp
from sqlalchemy import func, select

from idp.audit import AuditEvent
from idp.storage.sql import LoginFlow as LoginFlowRow
from idp.storage.sql import Throttle
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, Browser, make_app, make_settings

PASSWORD_INPUT = re.compile(r'<input id="password" name="password" type="password"')


def events(hub, type_):
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def stored_flows(hub) -> int:
    with hub.db() as db:
        return db.scalar(select(func.count()).select_from(LoginFlowRow))


def test_the_page_asks_for_email_and_password_and_one_post_signs_in(browser_factory, hub):
    b = browser_factory()
    page = b.get("/w/acme/login").get_data(as_text=True)
    assert '<label for="email">Email or username</label>' in page and '<label for="password">Password</label>' in page
    assert PASSWORD_INPUT.search(page) and ">Sign in</button>" in page and ">Continue</button>" not in page
    r = b.sign_in("acme", ALICE, ALICE_PW)
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps")
    assert any(c.startswith("idhub_session_acme=") for c in r.headers.getlist("Set-Cookie"))
    assert any(c.startswith("idhub_device_acme=") for c in r.headers.getlist("Set-Cookie"))
    assert b.security().status_code == 200
    assert len(events(hub, "auth.signin.success")) == 1
    assert stored_flows(hub) == 0  # nothing left behind, nothing written for a flow that ended at once


def test_next_is_kept(browser_factory):
    r = browser_factory().sign_in("acme", ALICE, ALICE_PW, next_url="/w/acme/settings/security?tab=sessions")
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/settings/security?tab=sessions")


def test_the_email_alone_goes_on_to_the_password_page(browser_factory):
    b = browser_factory()
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": ALICE, "password": ""})
    assert r.status_code == 302 and "/w/acme/login/password?flow=" in r.headers["Location"]
    assert ALICE in b.get(r.headers["Location"]).get_data(as_text=True)


def test_a_wrong_password_shows_the_page_again_with_the_email_and_no_session(browser_factory, hub):
    b = browser_factory()
    r = b.sign_in("acme", ALICE, "Wrong-Password-1!")
    html = r.get_data(as_text=True)
    assert r.status_code == 401 and "Incorrect email or password." in html
    assert f'value="{ALICE}"' in html and PASSWORD_INPUT.search(html)
    assert 'value="Wrong-Password-1!"' not in html  # the password is never echoed back
    assert b.security().status_code == 302
    assert [e.data["reason"] for e in events(hub, "auth.signin.failure")] == ["bad_password"]
    assert all("Wrong-Password" not in str(e.data) for e in events(hub, "auth.signin.failure"))
    # the page it showed signs in (its CSRF token is good)
    r = b.post("/w/acme/login", {"email": ALICE, "password": ALICE_PW, "csrf_token": b.csrf(html)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")


def test_the_throttle_is_the_password_pages_throttle(browser_factory, hub):
    b = browser_factory()
    for _ in range(6):
        assert b.sign_in("acme", BOB, "Wrong-Password-1!").status_code == 401
    r = b.sign_in("acme", BOB, BOB_PW)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "Too many attempts" in r.get_data(as_text=True)
    # and the identifier-first pages see the same block
    assert b.login("acme", BOB, BOB_PW).status_code == 429
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(Throttle)) >= 1


def test_csrf_is_required(browser_factory, hub):
    b = browser_factory()
    b.get("/w/acme/login")
    r = b.post("/w/acme/login", {"email": ALICE, "password": ALICE_PW})
    assert r.status_code == 400 and b.security().status_code == 302
    assert events(hub, "auth.signin.success") == [] and events(hub, "auth.signin.failure") == []


def test_hostile_and_oversized_values_get_the_page_and_change_nothing(browser_factory, hub):
    b = browser_factory()
    for email, password in [("", ALICE_PW), ("not-an-email", ALICE_PW), ("a" * 1_000_000, ALICE_PW),
                            (ALICE, "x" * 1_000_000), ("<script>@acme.test", "\x00\u202e"), (ALICE, "\x00"),
                            (ALICE + "\r\nBcc: x@evil.test", ALICE_PW)]:
        page = b.get("/w/acme/login").get_data(as_text=True)
        r = b.post("/w/acme/login", {"email": email, "password": password, "csrf_token": b.csrf(page)})
        assert r.status_code in (400, 401, 413), (email[:20], r.status_code)  # 413: over the body limit
        assert "<script>@" not in r.get_data(as_text=True)
    assert b.security().status_code == 302
    assert events(hub, "auth.signin.success") == []


def test_the_ip_allowlist_refuses_before_the_password_is_looked_at(tmp_path):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"] = {"ip_allowlist": ["192.0.2.0/24"]}
    app = make_app(make_settings(tmp_path), cfg)
    hub = app.extensions["idhub"]
    outside = Browser(app, ip="198.51.100.7")
    for password in (ALICE_PW, "Wrong-Password-1!"):  # the same answer: nothing to learn about the password
        r = outside.sign_in("acme", ALICE, password)
        assert r.status_code == 403 and "not one of them" in r.get_data(as_text=True)
    assert events(hub, "auth.signin.failure") == [] and events(hub, "auth.signin.success") == []
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(Throttle)) == 0  # no attempt counted: none was made
    assert Browser(app, ip="192.0.2.10").sign_in("acme", ALICE, ALICE_PW).status_code == 302


def test_a_second_factor_continues_on_a_stored_flow(tmp_path):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"] = {"require_mfa": True}
    app = make_app(make_settings(tmp_path), cfg)
    hub = app.extensions["idhub"]
    b = Browser(app)
    r = b.sign_in("acme", ALICE, ALICE_PW)
    assert r.status_code == 302 and "/w/acme/login/enroll?flow=" in r.headers["Location"]
    assert stored_flows(hub) == 1
    loc = r.headers["Location"]
    flow = loc.split("flow=")[1]
    # another browser cannot take the stored flow over
    other = Browser(app)
    other.get("/w/acme/login")
    assert other.get(loc).status_code == 302
    page = b.get(loc).get_data(as_text=True)
    secret = re.search(r"data-secret>([A-Z2-7 ]+)<", page)[1].replace(" ", "")
    r = b.post(loc, {"action": "verify", "code": pyotp.TOTP(secret).at(hub.clock()), "csrf_token": b.csrf(page)})
    assert r.status_code == 200 and b.security().status_code == 302  # the backup codes come first
    r = b.post(loc, {"csrf_token": b.csrf(r.get_data(as_text=True))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert b.security().status_code == 200
    assert stored_flows(hub) == 0 and flow
