"""Invitations and the admin's user page over the API, on PostgreSQL with Redis: an invitation mail of its own,
a 7-day single-use link stored hashed and consumed atomically, resend and revoke (the old link dies, "Forgot
password?" is no way around a revoked invitation), activation that signs in (2FA set-up first where required) and
verifies the address; a user's sessions (end one: that browser is signed out, the other stays), their second
factors, and the admin's "Send password reset"."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from admin.api import admin_service
from idp import emailverify
from idp.audit import AuditEvent
from idp.models import Invitation, User, Workspace
from tests.conftest import ALICE, BOB, BOB_PW, Browser, make_app, make_settings
from tests.integration.test_admin_api import Api, assert_error
from tests.services import drop_postgres, postgres_url, redis_url

pytestmark = pytest.mark.services

NEW = "new.hire@acme.test"
PW = "Harbour-Violet-Kettle-61"
LINK = r"http://localhost/w/acme/invite/[A-Za-z0-9_-]+"


@pytest.fixture
def pg(tmp_path):
    url = postgres_url()
    redis, _prefix = redis_url()
    app = make_app(make_settings(tmp_path, database_url=url, redis_url=redis))
    hub = app.extensions["idhub"]
    with hub.db() as db:
        acme = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    with app.app_context():
        token, _ = admin_service().tokens.create("hr-onboarding", workspace_id=acme)
    try:
        yield app, Api(app, token)
    finally:
        hub.engine.dispose()
        drop_postgres(url)


def evs(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def invite(api, email=NEW, **body) -> dict:
    r = api.post("/workspaces/acme/users", {"email": email, "name": "Nina Hire", **body})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def link_in(outbox, email=NEW, index=-1) -> str:
    mails = outbox.find(to=email, subject="You're invited to")
    assert mails, "no invitation mail"
    return outbox.link(mails[index], LINK).removeprefix("http://localhost")


def activate(app, path: str, password: str = PW) -> tuple[Browser, object]:
    b = Browser(app)
    return b, b.form_post(path, path, {"new_password": password, "confirm_password": password})


def test_the_invitation_mail_is_its_own_and_its_link_is_stored_hashed(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    user = invite(api)
    assert user["status"] == "invited" and user["invitation"]["status"] == "pending"
    [mail] = outbox.find(to=NEW)
    body = outbox.text(mail)
    assert mail["Subject"] == "You're invited to Acme Corp"
    assert "reset" not in body.lower() and "Someone asked" not in body
    assert "Acme Corp" in body and NEW in body and "Accept the invitation" in body and "7 days" in body
    path = link_in(outbox)
    token = path.rsplit("/", 1)[1]
    with hub.db() as db:
        [row] = db.scalars(select(Invitation))
        dump = " ".join(str(v) for v in db.execute(text("SELECT * FROM invitations")).one())
    assert token not in dump and len(row.token_hash) == 64
    assert row.expires_at - row.created_at == timedelta(days=7) and row.invited_by == "token:hr-onboarding"
    # the list shows who is invited and until when
    [listed] = api.get("/workspaces/acme/users", query={"status": "invited"}).get_json()["items"]
    assert listed["invitation"]["expires_at"] == user["invitation"]["expires_at"]


def test_a_console_invitation_names_the_admin_who_sent_it(pg, outbox):
    app, _api = pg
    from tests.integration.test_admin_console import signed_in

    admin = signed_in(app, ALICE)
    r = admin.form_post("/w/acme/admin/users", "/w/acme/admin/users", {"email": NEW, "name": "Nina", "role": "member"})
    assert r.status_code == 302
    body = outbox.text(outbox.find(to=NEW)[0])
    assert "Alice Example (alice@acme.test) invited you to join Acme Corp" in " ".join(body.split())
    page = admin.get("/w/acme/admin/users").get_data(as_text=True)
    assert re.search(r'data-user="new.hire@acme.test".*?Invited.*?expires', page, re.S)


def test_accepting_sets_the_password_verifies_the_address_and_signs_in_once(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    uid = invite(api)["id"]
    path = link_in(outbox)
    b = Browser(app)
    page = b.get(path)
    assert page.status_code == 200 and "Join Acme Corp" in page.get_data(as_text=True)
    weak = b.post(path, {"new_password": "short", "confirm_password": "short", "csrf_token": b.csrf()})
    assert weak.status_code == 400 and "Password rule not met" in weak.get_data(as_text=True)
    r = b.post(path, {"new_password": PW, "confirm_password": PW, "csrf_token": b.csrf(page.get_data(as_text=True))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps")
    assert b.get("/w/acme/apps").status_code == 200  # signed in, on the launcher
    with hub.db() as db:
        u = db.get(User, uid)
        assert u.password_hash and u.email_verified_via == emailverify.MAIL
    assert api.get(f"/workspaces/acme/users/{uid}").get_json()["status"] == "active"
    [ev] = evs(hub, "account.invitation.accepted")
    assert ev.subject_id == uid and ev.data["email_verified"] is True
    assert len(evs(hub, "auth.signin.success")) == 1
    # the link worked once
    assert Browser(app).get(path).status_code == 400
    b2 = Browser(app)
    b2.get("/w/acme/password/forgot")  # a CSRF token of this browser: the POST itself is refused for the link
    again = b2.post(path, {"new_password": "Another-Harbour-Pass-62", "confirm_password": "Another-Harbour-Pass-62",
                           "csrf_token": b2.csrf()})
    assert again.status_code == 400 and "cannot be used" in again.get_data(as_text=True)
    # and the password signs in
    assert Browser(app).sign_in("acme", NEW, PW).status_code == 302
    # nothing left to resend
    assert_error(api.post(f"/workspaces/acme/users/{uid}/invitation"), 409, "not_invited")


def test_parallel_submissions_of_one_link_activate_once(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    invite(api)
    path = link_in(outbox)
    browsers = [Browser(app) for _ in range(5)]
    tokens = []
    for b in browsers:
        b.get(path)
        tokens.append(b.csrf())
    barrier = threading.Barrier(len(browsers))
    codes: list = [None] * len(browsers)

    def go(i):
        barrier.wait()
        pw = f"Harbour-Violet-Kettle-{70 + i}"
        codes[i] = browsers[i].post(path, {"new_password": pw, "confirm_password": pw,
                                           "csrf_token": tokens[i]}).status_code

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(browsers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [302] + [400] * (len(browsers) - 1)
    assert len(evs(hub, "account.invitation.accepted")) == 1


def test_resend_kills_the_old_link_and_revoke_kills_every_way_in(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    uid = invite(api)["id"]
    first = link_in(outbox)
    r = api.post(f"/workspaces/acme/users/{uid}/invitation")
    assert r.status_code == 200 and r.get_json()["invitation"]["status"] == "pending"
    second = link_in(outbox)
    assert first != second
    assert Browser(app).get(first).status_code == 400
    assert Browser(app).get(second).status_code == 200
    [ev] = evs(hub, "admin.user.invitation_resent")
    assert ev.subject_id == uid and ev.actor_email == "token:hr-onboarding"

    r = api.call("DELETE", f"/workspaces/acme/users/{uid}/invitation")
    assert r.status_code == 200 and r.get_json()["invitation"]["status"] == "revoked"
    assert r.get_json()["status"] == "invited"
    assert Browser(app).get(second).status_code == 400
    [ev] = evs(hub, "admin.user.invitation_revoked")
    assert ev.data["link_was_valid"] is True
    # "Forgot password?" is no way around a revoked (or pending) invitation: the same answer, no mail
    before = len(outbox.find(to=NEW))
    b = Browser(app)
    assert b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": NEW}).status_code == 200
    assert len(outbox.find(to=NEW)) == before
    assert evs(hub, "password.reset.requested")[-1].data["reason"] == "invitation_not_accepted"
    # the admin's reset button says what to do instead
    assert_error(api.post(f"/workspaces/acme/users/{uid}/password-reset"), 409, "invited")
    # a new invitation brings the user in
    api.post(f"/workspaces/acme/users/{uid}/invitation")
    assert activate(app, link_in(outbox))[1].status_code == 302


def test_an_expired_link_is_refused(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    uid = invite(api)["id"]
    path = link_in(outbox)
    real = hub.clock
    hub.clock = lambda: real() + timedelta(days=7, seconds=1)
    try:
        assert Browser(app).get(path).status_code == 400
        assert api.get(f"/workspaces/acme/users/{uid}").get_json()["invitation"]["status"] == "expired"
    finally:
        hub.clock = real


def test_activation_sets_up_2fa_where_the_workspace_requires_it(pg, outbox):
    app, api = pg
    assert api.call("PUT", "/workspaces/acme/policies", {"require_mfa": True}).status_code == 200
    invite(api)
    assert "two-factor authentication" in outbox.text(outbox.find(to=NEW)[0])
    b, r = activate(app, link_in(outbox))
    assert r.status_code == 302 and "/w/acme/login/enroll" in r.headers["Location"]
    assert b.get("/w/acme/apps").status_code == 302  # no session until 2FA is set up


def test_sessions_of_a_user_end_one_and_the_other_survives(pg):
    app, api = pg
    hub = app.extensions["idhub"]
    laptop, phone = Browser(app), Browser(app, user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
                                                         "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
                                                         "Mobile/15E148 Safari/604.1", ip="198.51.100.7")
    for b in (laptop, phone):
        assert b.sign_in("acme", BOB, BOB_PW).status_code == 302
    with hub.db() as db:
        bob = db.scalar(select(User.id).where(User.email_normalized == BOB))
    sessions = api.get(f"/workspaces/acme/users/{bob}/sessions").get_json()["items"]
    assert len(sessions) == 2 and {s["ip"] for s in sessions} == {"127.0.0.1", "198.51.100.7"}
    assert all(set(s) >= {"id", "browser", "os", "started_at", "last_seen_at"} for s in sessions)
    iphone = next(s for s in sessions if s["ip"] == "198.51.100.7")
    assert iphone["os"].startswith("iOS")
    assert api.call("DELETE", f"/workspaces/acme/users/{bob}/sessions/{iphone['id']}").status_code == 204
    r = phone.get("/w/acme/settings/security")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert laptop.get("/w/acme/settings/security").status_code == 200
    assert_error(api.call("DELETE", f"/workspaces/acme/users/{bob}/sessions/{iphone['id']}"), 404)
    [ev] = evs(hub, "admin.user.session_ended")
    assert ev.subject_id == bob and ev.data["session"] == iphone["id"]
    # another user's session is not reachable through this user
    with hub.db() as db:
        alice = db.scalar(select(User.id).where(User.email_normalized == ALICE))
    laptop_session = api.get(f"/workspaces/acme/users/{bob}/sessions").get_json()["items"][0]["id"]
    assert_error(api.call("DELETE", f"/workspaces/acme/users/{alice}/sessions/{laptop_session}"), 404)


def test_send_password_reset_is_the_normal_mail_audited_and_limited(pg, outbox):
    app, api = pg
    hub = app.extensions["idhub"]
    with hub.db() as db:
        bob = db.scalar(select(User.id).where(User.email_normalized == BOB))
    r = api.post(f"/workspaces/acme/users/{bob}/password-reset")
    assert r.status_code == 200 and r.get_json() == {"sent": True, "email": BOB}
    [mail] = outbox.find(to=BOB, subject="Reset your password")
    assert "/w/acme/password/reset/" in outbox.text(mail)
    [ev] = evs(hub, "admin.user.password_reset_sent")
    assert ev.subject_id == bob and ev.actor_email == "token:hr-onboarding"
    codes = [api.post(f"/workspaces/acme/users/{bob}/password-reset").status_code for _ in range(5)]
    assert codes == [200] * 4 + [429]
