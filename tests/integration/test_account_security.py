"""Sessions, password change, password reset and "This wasn't me", through the real app."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from idp.audit import AuditEvent
from idp.models import PasswordResetToken, User, Workspace
from tests.conftest import ALICE, ALICE_PW, BOB

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
NEW_PW = "N3w-Harder-Pass!"


def session_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-session="([^"]+)"', html)


def signed_in(browser_factory, **kw):
    b = browser_factory(**kw)
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302
    return b


def test_security_page_lists_sessions_with_device_and_marks_the_current_one(browser_factory):
    a = signed_in(browser_factory)
    signed_in(browser_factory, user_agent=FIREFOX, ip="10.1.2.3")
    html = a.security().get_data(as_text=True)
    assert len(session_ids(html)) == 2
    assert html.count("This session") == 1
    assert "Firefox" in html and "Windows" in html and "Chrome" in html and "Linux" in html
    assert "10.1.2.3" in html and "Unknown location" in html  # private address: no geolocation
    assert html.count(">End</button>") == 1  # the current session has no End button


def test_end_one_session_takes_effect_on_its_next_request(browser_factory, hub):
    a = signed_in(browser_factory)
    b = signed_in(browser_factory, user_agent=FIREFOX)
    html = a.security().get_data(as_text=True)
    current = re.search(r'<tr data-session="([^"]+)" class="current"', html).group(1)
    other = next(s for s in session_ids(html) if s != current)
    r = a.post(f"/w/acme/settings/security/sessions/{other}/end", {"csrf_token": a.csrf(html)})
    assert r.status_code == 302
    r = b.security()
    assert r.status_code == 302 and "ended=1" in r.headers["Location"]
    assert "Your session has ended" in b.get(r.headers["Location"]).get_data(as_text=True)
    assert a.security().status_code == 200
    with hub.db() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.type == "session.ended"))


def test_cannot_end_another_users_session(browser_factory):
    a = signed_in(browser_factory)
    bob = browser_factory()
    bob.login("acme", BOB, "B0b-Example-Pass!")
    bob_html = bob.security().get_data(as_text=True)
    bob_session = session_ids(bob_html)[0]
    html = a.security().get_data(as_text=True)
    a.post(f"/w/acme/settings/security/sessions/{bob_session}/end", {"csrf_token": a.csrf(html)})
    assert bob.security().status_code == 200


def test_end_all_sessions_keeps_the_current_one(browser_factory):
    a = signed_in(browser_factory)
    others = [signed_in(browser_factory, user_agent=FIREFOX) for _ in range(2)]
    html = a.security().get_data(as_text=True)
    r = a.post("/w/acme/settings/security/sessions/end-all", {"csrf_token": a.csrf(html)})
    assert r.status_code == 302
    assert "Ended 2 other sessions" in a.security().get_data(as_text=True)
    for o in others:
        assert o.security().status_code == 302
    assert len(session_ids(a.security().get_data(as_text=True))) == 1


def change(b, current, new, confirm=None):
    html = b.security().get_data(as_text=True)
    return b.post("/w/acme/settings/security/password", {
        "current_password": current, "new_password": new, "confirm_password": confirm or new,
        "csrf_token": b.csrf(html)})


def test_password_change_signs_out_other_sessions_and_alerts(browser_factory, outbox, hub):
    a = signed_in(browser_factory)
    b = signed_in(browser_factory, user_agent=FIREFOX)
    r = change(a, ALICE_PW, NEW_PW)
    assert r.status_code == 302
    assert b.security().status_code == 302
    assert a.security().status_code == 200
    assert browser_factory().login("acme", ALICE, ALICE_PW).status_code == 401
    assert browser_factory().login("acme", ALICE, NEW_PW).status_code == 302
    assert outbox.find(to=ALICE, subject="Your password was changed")
    with hub.db() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.type == "password.changed"))


def test_password_change_enforces_the_rules_and_changes_nothing_on_error(browser_factory, hub):
    a = signed_in(browser_factory)
    with hub.db() as db:
        before = db.scalar(select(User).where(User.email == ALICE)).password_hash
    cases = {
        "password": "Not a commonly used password",
        "Sh0rt!": "At least 8 characters",
        "alllowercase1!": "An uppercase letter",
        "NoDigits-Here!": "A number",
        "N0Special1234": "A special character",
        "Password123!": "Not a commonly used password",
        "x" * 129: "At most 128 characters",
    }
    for pw, rule in cases.items():
        r = change(a, ALICE_PW, pw)
        assert r.status_code == 400, pw
        assert rule in r.get_data(as_text=True), pw
    r = change(a, ALICE_PW, NEW_PW, confirm=NEW_PW + "x")
    assert "do not match" in r.get_data(as_text=True)
    r = change(a, "Wrong-Current-1!", NEW_PW)
    assert "current password is incorrect" in r.get_data(as_text=True)
    with hub.db() as db:
        assert db.scalar(select(User).where(User.email == ALICE)).password_hash == before


def request_reset(browser_factory, email):
    b = browser_factory()
    r = b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": email})
    assert r.status_code == 200
    assert "If an account exists for that address" in r.get_data(as_text=True)
    return b


def reset_link(outbox, email, n=-1):
    msgs = outbox.find(to=email, subject="Reset your password")
    assert msgs
    return outbox.link(msgs[n], r"http://localhost/w/acme/password/reset/[A-Za-z0-9_-]+")


def test_password_reset_end_to_end(browser_factory, outbox, hub):
    other = signed_in(browser_factory, user_agent=FIREFOX)
    b = request_reset(browser_factory, ALICE)
    path = reset_link(outbox, ALICE).removeprefix("http://localhost")
    r = b.form_post(path, path, {"new_password": NEW_PW, "confirm_password": NEW_PW})
    assert r.status_code == 302
    assert "Your password has been reset" in b.get(r.headers["Location"]).get_data(as_text=True)
    assert other.security().status_code == 302  # every session ended
    assert browser_factory().login("acme", ALICE, NEW_PW).status_code == 302
    # single use
    r = b.get(path)
    assert r.status_code == 400 and "invalid or has expired" in r.get_data(as_text=True)
    # the token is stored hashed
    token = path.rsplit("/", 1)[1]
    with hub.db() as db:
        assert all(token not in t.token_hash for t in db.scalars(select(PasswordResetToken)))


def test_reset_for_unknown_address_looks_the_same_and_sends_nothing(browser_factory, outbox):
    request_reset(browser_factory, "nobody@acme.test")
    assert outbox.find(to="nobody@acme.test") == []


def test_a_newer_reset_link_kills_the_older_one(browser_factory, outbox):
    request_reset(browser_factory, ALICE)
    request_reset(browser_factory, ALICE)
    old = reset_link(outbox, ALICE, 0).removeprefix("http://localhost")
    new = reset_link(outbox, ALICE, 1).removeprefix("http://localhost")
    assert old != new
    b = browser_factory()
    assert b.get(old).status_code == 400
    assert b.get(new).status_code == 200


def test_reset_link_expires_after_24_hours(browser_factory, outbox, hub):
    request_reset(browser_factory, ALICE)
    path = reset_link(outbox, ALICE).removeprefix("http://localhost")
    real = hub.clock
    hub.clock = lambda: real() + timedelta(hours=24, seconds=1)
    try:
        assert browser_factory().get(path).status_code == 400
    finally:
        hub.clock = real


def test_password_change_kills_outstanding_reset_links(browser_factory, outbox):
    request_reset(browser_factory, ALICE)
    path = reset_link(outbox, ALICE).removeprefix("http://localhost")
    change(signed_in(browser_factory), ALICE_PW, NEW_PW)
    assert browser_factory().get(path).status_code == 400


def test_reset_mail_goes_out_after_the_answer(browser_factory, outbox, hub):
    """The SMTP round trip happens once the page has been sent, so a known address is not answered more slowly
    than an unknown one (account enumeration by timing)."""
    import flask

    seen = []
    real = hub.mailer.send

    def spy(*a, **kw):
        seen.append(flask.has_request_context())
        return real(*a, **kw)

    hub.mailer.send = spy
    try:
        request_reset(browser_factory, ALICE)
        request_reset(browser_factory, "nobody@acme.test")
    finally:
        hub.mailer.send = real
    assert seen == [False]  # one mail, sent outside the request
    assert len(outbox.find(to=ALICE, subject="Reset your password")) == 1


def test_reset_requests_are_rate_limited_per_address(browser_factory, outbox):
    for _ in range(7):
        request_reset(browser_factory, BOB)
    assert len(outbox.find(to=BOB, subject="Reset your password")) == 5


def test_reset_link_is_built_from_the_base_url_not_the_host_header(browser_factory, outbox):
    b = browser_factory()
    b.get("/w/acme/password/forgot", headers={"Host": "evil.example"})
    b.post("/w/acme/password/forgot", {"email": ALICE, "csrf_token": b.csrf()},
           headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
    text = outbox.text(outbox.find(to=ALICE, subject="Reset your password")[0])
    assert "evil.example" not in text and "http://localhost/w/acme/password/reset/" in text


def test_new_device_alert_and_this_wasnt_me(browser_factory, outbox, hub):
    signed_in(browser_factory)  # first sign-in: the device becomes known, no alert
    assert outbox.find(to=ALICE, subject="new device") == []
    signed_in(browser_factory, user_agent=FIREFOX)
    alerts = outbox.find(to=ALICE, subject="new device")
    assert len(alerts) == 1
    text = outbox.text(alerts[0])
    assert "Firefox" in text
    link = outbox.link(alerts[0], r"http://localhost/w/acme/security/not-me/[A-Za-z0-9._-]+")
    path = link.removeprefix("http://localhost")
    victim = signed_in(browser_factory)
    # a mail scanner's GET changes nothing
    scanner = browser_factory()
    assert scanner.get(path).status_code == 200
    assert victim.security().status_code == 200
    r = scanner.post(path, {"csrf_token": scanner.csrf()})
    assert r.status_code == 200 and "Your account is secured" in r.get_data(as_text=True)
    assert victim.security().status_code == 302
    # the old password no longer signs in; a reset link was mailed
    r = browser_factory().login("acme", ALICE, ALICE_PW)
    assert r.status_code == 401 and "must be reset" in r.get_data(as_text=True)
    assert outbox.find(to=ALICE, subject="Your account has been secured")
    with hub.db() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.type == "account.compromise_reported"))


def test_this_wasnt_me_link_works_once(browser_factory, outbox):
    """Whoever gets hold of an alert mail must not be able to lock the account again and again with it."""
    signed_in(browser_factory)
    signed_in(browser_factory, user_agent=FIREFOX)
    alert = outbox.find(to=ALICE, subject="new device")[0]
    path = outbox.link(alert, r"http://localhost/w/acme/security/not-me/[A-Za-z0-9._-]+").removeprefix(
        "http://localhost")
    b = browser_factory()
    b.get(path)
    assert "Your account is secured" in b.post(path, {"csrf_token": b.csrf()}).get_data(as_text=True)
    # the owner resets the password and signs in again
    reset = outbox.link(outbox.find(to=ALICE, subject="Your account has been secured")[0],
                        r"http://localhost/w/acme/password/reset/[A-Za-z0-9_-]+").removeprefix("http://localhost")
    owner = browser_factory()
    owner.get(reset)
    r = owner.post(reset, {"csrf_token": owner.csrf(), "new_password": NEW_PW, "confirm_password": NEW_PW})
    assert r.status_code == 302
    victim = browser_factory()
    assert victim.login("acme", ALICE, NEW_PW).status_code == 302
    # the same link again: refused, nothing changes
    again = browser_factory()
    r = again.get(path)
    assert r.status_code == 400 and "already been used" in r.get_data(as_text=True)
    again.get("/w/acme/login")
    r = again.post(path, {"csrf_token": again.csrf()})
    assert r.status_code == 400 and "already been used" in r.get_data(as_text=True)
    assert victim.security().status_code == 200
    assert browser_factory().login("acme", ALICE, NEW_PW).status_code == 302


def test_tampered_not_me_link_is_refused(browser_factory):
    r = browser_factory().get("/w/acme/security/not-me/eyJ1IjoiYWRtaW4ifQ.forged.sig")
    assert r.status_code == 400 and "invalid or has expired" in r.get_data(as_text=True)


def test_workspace_policy_can_only_shorten_sessions(tmp_path):
    import copy

    from tests.conftest import BASE_CONFIG, Browser, make_app, make_settings

    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"] = {"session_idle_timeout": "2h", "session_max_lifetime": "8h",
                                        "require_mfa_for_admins": False}  # alice is an admin
    app = make_app(make_settings(tmp_path), cfg)
    hub = app.extensions["idhub"]
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    real = hub.clock
    hub.clock = lambda: real() + timedelta(hours=2, minutes=1)
    try:
        assert b.security().status_code == 302
    finally:
        hub.clock = real
    # and the absolute lifetime: active every hour, still ended after 8 hours
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    try:
        for h in range(1, 8):
            hub.clock = lambda h=h: real() + timedelta(hours=h)
            assert b.security().status_code == 200, h
        hub.clock = lambda: real() + timedelta(hours=8, minutes=1)
        assert b.security().status_code == 302
    finally:
        hub.clock = real


def test_no_reset_link_for_an_externally_managed_account(browser_factory, outbox, hub):
    from sqlalchemy import update

    with hub.db() as db:
        db.execute(update(User).where(User.email == ALICE).values(external_id="workday-1234"))
        db.commit()
    request_reset(browser_factory, ALICE)  # the same neutral answer …
    assert outbox.find(to=ALICE, subject="Reset your password") == []  # … and no link


def test_deactivating_a_user_in_the_config_ends_their_sessions(browser_factory, hub):
    import copy

    from idp.configfile import apply_config, validate
    from tests.conftest import BASE_CONFIG

    b = signed_in(browser_factory)
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["users"][0]["active"] = False
    report = apply_config(hub, validate(cfg))  # what `idhub apply` runs
    assert len(report.deactivated) == 1
    assert b.security().status_code == 302
    from sqlalchemy import select

    from idp.audit import AuditEvent

    with hub.db() as db:
        [ev] = db.scalars(select(AuditEvent).where(AuditEvent.type == "config.user.deactivated")).all()
    assert ev.data["sessions_ended"] == 1 and ev.data["channel"] == "config" and ev.actor_email == "config"
    assert browser_factory().login("acme", ALICE, ALICE_PW).status_code in (401, 403)


def test_a_session_that_timed_out_is_ended_so_the_apps_hear_of_it(tmp_path):
    """An idle or absolute timeout is found when the browser comes back: the session is then ended like any other
    (reason ``expired``), so the session-end listeners (OIDC back-channel and SAML logout) run for it."""
    import copy

    from tests.conftest import BASE_CONFIG, Browser, make_app, make_settings

    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"] = {"session_idle_timeout": "2h", "require_mfa_for_admins": False}
    app = make_app(make_settings(tmp_path), cfg)
    hub = app.extensions["idhub"]
    heard = []
    hub.sessions.end_listeners.append(lambda ids, reason: heard.append((list(ids), reason)))
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    (sess,) = [s for s in hub.sessions.store.list_user(_alice_id(hub), hub.clock())]
    real = hub.clock
    hub.clock = lambda: real() + timedelta(hours=2, minutes=1)
    try:
        assert b.security().status_code == 302
        assert b.security().status_code == 302  # ended once, not at every visit
    finally:
        hub.clock = real
    assert heard == [([sess.id], "expired")]
    assert hub.sessions.store.get(sess.id).revoked_reason == "expired"



def _alice_id(hub) -> str:
    with hub.db() as db:
        return db.scalar(select(User.id).join(Workspace, Workspace.id == User.workspace_id)
                         .where(User.email == ALICE, Workspace.slug == "acme"))


def test_idhub_apply_deactivating_a_user_tells_the_apps(tmp_path):
    """`idhub apply` ends a deactivated user's sessions in a CLI hub: it must carry the same session-end listeners
    as the server (OIDC back-channel logout, SAML logout), posting before the command exits."""
    from config.settings import Settings
    from idp.app import build_hub
    from idp.cli import _session_end_listeners

    cli_hub = build_hub(Settings(database_url=f"sqlite:///{tmp_path}/x.db", secret_key="k" * 40))
    assert cli_hub.sessions.end_listeners == []
    _session_end_listeners(cli_hub)
    owners = {getattr(fn, "__self__", None).__class__.__name__ for fn in cli_hub.sessions.end_listeners}
    assert {"BackchannelLogout", "SingleLogout"} <= owners, owners
    ran = []
    cli_hub.oidc.backchannel.dispatch(lambda: ran.append(1))
    assert ran == [1]  # synchronous: nothing is left in a daemon thread when the process exits
