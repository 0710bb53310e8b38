"""The local sign-in flow through the real app (Flask test client), including the attacks on it."""

from __future__ import annotations

import re

from sqlalchemy import select

from idp.audit import AuditEvent
from tests.conftest import ALICE, ALICE_PW, BOB, FLOW_RE

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"


def events(hub, type_):
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def test_sign_in_sets_a_hardened_session_cookie_and_lands_on_the_security_page(browser_factory, hub):
    b = browser_factory()
    r = b.login("acme", ALICE, ALICE_PW)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/w/acme/apps")
    cookies = [c for c in r.headers.getlist("Set-Cookie") if c.startswith("idhub_session_acme=")]
    assert len(cookies) == 1
    c = cookies[0].lower()
    assert "httponly" in c and "samesite=lax" in c and "path=/" in c
    page = b.security()
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "This session" in html and ALICE in html
    assert len(events(hub, "auth.signin.success")) == 1


def test_secure_cookies_use_the_host_prefix(tmp_path):
    from tests.conftest import Browser, make_app, make_settings

    app = make_app(make_settings(tmp_path, cookie_secure=True, base_url="https://id.example"))
    b = Browser(app)
    b.client.application.config["PREFERRED_URL_SCHEME"] = "https"
    r = b.login("acme", ALICE, ALICE_PW)
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if "idhub_session_acme" in c)
    assert cookie.startswith("__Host-idhub_session_acme=") and "Secure" in cookie
    assert "Strict-Transport-Security" in r.headers


def test_wrong_password_and_unknown_user_get_the_same_answer(browser_factory, hub):
    b = browser_factory()
    r1 = b.login("acme", ALICE, "Wrong-Password-1!")
    r2 = b.login("acme", "nobody@acme.test", "Wrong-Password-1!")
    for r in (r1, r2):
        assert r.status_code == 401
        assert "Incorrect email or password." in r.get_data(as_text=True)
    reasons = [e.data["reason"] for e in events(hub, "auth.signin.failure")]
    assert reasons == ["bad_password", "unknown_user"]
    # neither attempt logged the password
    assert all("Wrong-Password" not in str(e.data) for e in events(hub, "auth.signin.failure"))


def test_email_is_matched_case_and_unicode_insensitively(browser_factory):
    b = browser_factory()
    r = b.login("acme", "  ALICE@ACME.TEST ", ALICE_PW)
    assert r.status_code == 302
    b2 = browser_factory()
    # fullwidth letters normalise (NFKC) to the same address
    r = b2.login("acme", "ａｌｉｃｅ@acme.test", ALICE_PW)
    assert r.status_code == 302


def test_accounts_are_per_workspace(browser_factory):
    b = browser_factory()
    assert b.login("other", ALICE, ALICE_PW).status_code == 401
    assert b.login("other", ALICE, "0ther-Workspace-Pass!").status_code == 302
    # the session of one workspace does not open another
    assert b.security("acme").status_code == 302


def test_csrf_is_required_on_sign_in_and_sign_out(browser_factory):
    b = browser_factory()
    b.get("/w/acme/login")
    r = b.post("/w/acme/login", {"email": ALICE})
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)
    r = b.post("/w/acme/login", {"email": ALICE, "csrf_token": "0" * 64})
    assert r.status_code == 400
    b.login("acme", ALICE, ALICE_PW)
    r = b.post("/w/acme/logout", {})
    assert r.status_code == 400
    assert b.security().status_code == 200  # still signed in


def test_csrf_token_of_another_browser_is_refused(browser_factory):
    a, m = browser_factory(), browser_factory()
    a.get("/w/acme/login")
    token = a.csrf()
    m.get("/w/acme/login")
    assert m.post("/w/acme/login", {"email": ALICE, "csrf_token": token}).status_code == 400


def test_login_flow_cannot_be_continued_by_another_browser(browser_factory):
    """Login CSRF via a shared flow id: the victim's browser must not finish the attacker's flow."""
    attacker, victim = browser_factory(), browser_factory()
    loc = attacker.start_login("acme", BOB)
    victim.get("/w/acme/login")
    r = victim.get(loc)
    assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]
    flow = re.search(r"flow=([^&]+)", loc).group(1)
    victim.get("/w/acme/login")
    r = victim.post("/w/acme/login/password", {"flow": flow, "password": "x", "csrf_token": victim.csrf()})
    assert r.status_code == 302 and "settings" not in r.headers["Location"]


def test_session_id_is_new_at_every_sign_in(browser_factory):
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    first = b.client.get_cookie("idhub_session_acme").value
    b.post("/w/acme/logout", {"csrf_token": b.csrf(b.security().get_data(as_text=True))})
    b.login("acme", ALICE, ALICE_PW)
    second = b.client.get_cookie("idhub_session_acme").value
    assert first != second and len(second) >= 43


def test_sign_out_ends_the_session_server_side(browser_factory, hub):
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    token = b.client.get_cookie("idhub_session_acme").value
    b.post("/w/acme/logout", {"csrf_token": b.csrf(b.security().get_data(as_text=True))})
    # replaying the old cookie after sign-out does not work
    replay = browser_factory()
    replay.client.set_cookie("idhub_session_acme", token)
    r = replay.security()
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert events(hub, "auth.signout")


def test_throttle_grows_and_blocks_even_the_right_password(browser_factory, hub):
    b = browser_factory()
    for _ in range(5):
        assert b.login("acme", BOB, "Wrong-Password-1!").status_code == 401
    r = b.login("acme", BOB, "Wrong-Password-1!")  # 6th failure sets a delay
    assert r.status_code == 401
    r = b.login("acme", BOB, "B0b-Example-Pass!")
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "Too many attempts" in r.get_data(as_text=True)
    # another account from the same address is not locked by Bob's throttle
    assert browser_factory().login("acme", ALICE, ALICE_PW).status_code == 302


def _signed_out_known_browser(browser_factory, email, password):
    """A browser that signed in to ``email`` before (so it holds a device cookie) and then signed out."""
    b = browser_factory()
    assert b.login("acme", email, password).status_code == 302
    b.client.delete_cookie("idhub_session_acme")
    return b


def test_someone_elses_guesses_do_not_lock_out_a_known_browser(browser_factory, hub):
    """OWASP's device cookies: the account-wide delay stops guessing, not the owner's own browser."""
    owner = _signed_out_known_browser(browser_factory, BOB, "B0b-Example-Pass!")
    attacker = browser_factory(ip="203.0.113.9")
    for _ in range(8):
        attacker.login("acme", BOB, "Wrong-Password-1!")
    assert attacker.login("acme", BOB, "B0b-Example-Pass!").status_code == 429
    assert browser_factory().login("acme", BOB, "B0b-Example-Pass!").status_code == 429  # an unknown browser
    assert owner.login("acme", BOB, "B0b-Example-Pass!").status_code == 302


def test_a_device_cookie_is_bound_to_its_account_and_cannot_be_forged(browser_factory, hub):
    alice_browser = _signed_out_known_browser(browser_factory, ALICE, ALICE_PW)
    attacker = browser_factory(ip="203.0.113.9")
    for _ in range(8):
        attacker.login("acme", BOB, "Wrong-Password-1!")
    # Alice's device cookie does not lift Bob's lock
    assert alice_browser.login("acme", BOB, "B0b-Example-Pass!").status_code == 429
    # nor does a made-up one
    forged = browser_factory()
    forged.client.set_cookie("idhub_device_acme", "eyJ3IjoiYWNtZSJ9.forged.sig")
    assert forged.login("acme", BOB, "B0b-Example-Pass!").status_code == 429


def test_guesses_from_a_known_browser_are_throttled_on_their_own(browser_factory, hub):
    """A stolen device cookie buys an attacker a separate, equally strict budget, nothing more."""
    known = _signed_out_known_browser(browser_factory, BOB, "B0b-Example-Pass!")
    for _ in range(6):
        assert known.login("acme", BOB, "Wrong-Password-1!").status_code == 401
    assert known.login("acme", BOB, "B0b-Example-Pass!").status_code == 429
    # the account-wide budget was not spent by them
    assert browser_factory().login("acme", BOB, "B0b-Example-Pass!").status_code == 302


def test_throttle_is_temporary(browser_factory, hub):
    """An attacker cannot lock the victim out for long: the delay is bounded and expires."""
    from datetime import UTC, datetime, timedelta

    b = browser_factory()
    for _ in range(7):
        b.login("acme", BOB, "Wrong-Password-1!")
    assert b.login("acme", BOB, "B0b-Example-Pass!").status_code == 429
    real = hub.clock
    hub.clock = lambda: real() + timedelta(minutes=16)
    try:
        assert b.login("acme", BOB, "B0b-Example-Pass!").status_code == 302
    finally:
        hub.clock = real
    assert datetime.now(UTC)


def test_multiple_failed_attempts_send_an_alert(browser_factory, outbox):
    b = browser_factory()
    for _ in range(5):
        b.login("acme", BOB, "Wrong-Password-1!")
    msgs = outbox.find(to=BOB, subject="Failed sign-in")
    assert len(msgs) == 1
    assert "/security/not-me/" in outbox.text(msgs[0])


def test_next_only_accepts_paths_inside_the_workspace(browser_factory):
    for bad in ("//evil.example/x", "https://evil.example/", "/w/other/settings/security", "/\\evil.example",
                "javascript:alert(1)"):
        b = browser_factory()
        r = b.login("acme", ALICE, ALICE_PW, next_url=bad)
        assert r.headers["Location"].endswith("/w/acme/apps"), bad
    b = browser_factory()
    r = b.login("acme", ALICE, ALICE_PW, next_url="/w/acme/settings/security#sessions")
    assert r.headers["Location"].endswith("/w/acme/settings/security#sessions")


def test_security_headers_on_every_page(browser_factory):
    b = browser_factory()
    for url in ("/", "/w/acme/login", "/w/acme/password/forgot", "/w/nope/login"):
        r = b.get(url)
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_label_every_input(browser_factory):
    b = browser_factory()
    loc = b.start_login("acme", ALICE)
    pages = [b.get("/w/acme/login"), b.get(loc), b.get("/w/acme/password/forgot")]
    b2 = browser_factory()
    b2.login("acme", ALICE, ALICE_PW)
    pages.append(b2.security())
    for r in pages:
        html = r.get_data(as_text=True)
        ids = re.findall(r'<input id="([^"]+)"', html)
        assert ids
        for i in ids:
            assert f'<label for="{i}">' in html, i
    assert ">Email or username</label>" in pages[0].get_data(as_text=True)
    assert ">Password</label>" in pages[1].get_data(as_text=True)


def test_password_page_shows_the_email_and_a_way_back(browser_factory):
    b = browser_factory()
    loc = b.start_login("acme", ALICE)
    html = b.get(loc).get_data(as_text=True)
    assert ALICE in html and "Use another account" in html and FLOW_RE.search(html)


def test_a_signed_in_browser_can_sign_in_again_with_prompt_login(browser_factory):
    """Step-up and prompt=login: the form a signed-in browser gets must be accepted when posted."""
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    first = b.client.get_cookie("idhub_session_acme").value
    r = b.get("/w/acme/login?prompt=login")
    assert r.status_code == 200 and ">Email or username</label>" in r.get_data(as_text=True)
    r = b.post("/w/acme/login", {"email": ALICE, "csrf_token": b.csrf()})
    assert r.status_code == 302 and "/login/password" in r.headers["Location"]
    page = b.get(r.headers["Location"])
    html = page.get_data(as_text=True)
    r = b.post("/w/acme/login/password", {"flow": FLOW_RE.search(html).group(1), "password": ALICE_PW,
                                          "csrf_token": b.csrf(html)})
    # the same person signed in again: the session is upgraded in place — a new cookie, the same record (its
    # authentication time is now), so the apps that took part in it keep it and nothing stale stays listed
    renewed = b.client.get_cookie("idhub_session_acme").value
    assert r.status_code == 302 and renewed != first
    from idp.sessions import token_hash

    hub = b.client.application.extensions["idhub"]
    stepped = hub.sessions.store.get(token_hash(first))  # the record keeps its id
    assert [s.id for s in hub.sessions.list(stepped.user_id)] == [stepped.id]
    assert stepped.auth_time > stepped.created_at and stepped.matches(token_hash(renewed))
    assert hub.sessions.load(first, stepped.workspace_id) is None  # the old cookie no longer signs in


def test_parallel_guesses_cannot_exceed_the_free_allowance(hub):
    """N guesses fired together all read 'not blocked'; only those that move the counter in turn are checked."""
    from idp.flow import Client
    from tests.helpers.concurrency import parallel

    with hub.db() as db:
        from idp.accounts import workspace_by_slug

        ws = workspace_by_slug(db, "acme")
    checked = []
    real_verify = hub.hasher.verify

    def counting_verify(stored, password):
        checked.append(1)
        return real_verify(stored, password)

    hub.hasher.verify = counting_verify
    try:
        results = parallel(14, lambda: hub.check_password(ws, BOB, "Wrong-Password-1!", Client("203.0.113.5", "t")))
    finally:
        hub.hasher.verify = real_verify
    assert not any(r.ok for r in results)
    assert len(checked) <= 6, len(checked)  # at most the free allowance (5) plus one


def test_changing_the_password_is_throttled_like_sign_in(browser_factory):
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    statuses = []
    for _ in range(8):
        html = b.security().get_data(as_text=True)
        r = b.post("/w/acme/settings/security/password", {
            "current_password": "Wrong-Guess-1!", "new_password": "N3w-Harder-Pass!",
            "confirm_password": "N3w-Harder-Pass!", "csrf_token": b.csrf(html)})
        statuses.append("Too many attempts" in r.get_data(as_text=True))
    assert statuses[-1] is True


def test_two_sign_ins_at_once_from_a_new_device_remember_it_once(browser_factory, hub):
    """Both read "no such device" before either wrote it: the second write is not an error (no 500)."""
    from idp.models import KnownDevice, User

    with hub.db() as db:
        alice = db.scalar(select(User).where(User.email == ALICE))
    info = hub.describe_ua(FIREFOX)
    loc = hub.geo.locate("127.0.0.1")
    for _ in range(2):
        with hub.connect() as conn:
            hub._remember_device(conn, alice, set(), info, loc)
    with hub.db() as db:
        rows = db.scalars(select(KnownDevice).where(KnownDevice.user_id == alice.id, KnownDevice.kind == "device"))
        assert len(list(rows)) == 1


def test_flash_messages_use_a_signed_cookie_only_when_there_is_one(browser_factory):
    """Flask's cookie session carries the flash messages: set when one is flashed, shown once, then removed; a
    page that flashes nothing sets no such cookie, and a forged one is ignored."""
    b = browser_factory()
    r = b.get("/w/acme/login")
    assert not any(c.startswith("idhub_flash=") for c in r.headers.getlist("Set-Cookie"))
    r = b.get("/w/acme/login/password?flow=not-a-flow")  # the flow is gone: flashed, back to the sign-in page
    assert r.status_code == 302
    assert any(c.startswith("idhub_flash=") for c in r.headers.getlist("Set-Cookie"))
    page = b.get("/w/acme/login")
    assert "took too long" in page.get_data(as_text=True)
    assert any(c.startswith("idhub_flash=;") for c in page.headers.getlist("Set-Cookie"))  # removed once shown
    assert "took too long" not in b.get("/w/acme/login").get_data(as_text=True)
    b.client.set_cookie("idhub_flash", "eyJfZmxhc2hlcyI6W1siZXJyb3IiLCJmb3JnZWQiXV19.Zm9yZ2Vk.c2lnbmF0dXJl")
    assert "forged" not in b.get("/w/acme/login").get_data(as_text=True)
