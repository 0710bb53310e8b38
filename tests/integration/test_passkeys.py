"""Passkeys (WebAuthn) through the real app (Flask test client) with a software authenticator: registration on the
security page, the second factor, passwordless sign-in, the policies, and every refused response (malformed,
oversized, replayed, cross-origin, unknown, another user's or workspace's, a challenge used twice, a counter that
went backwards) — a clear message on the page and an audit event, never a 500."""

from __future__ import annotations

import copy
import json
import re

import pyotp
import pytest
from sqlalchemy import select

from idp.audit import AuditEvent
from idp.mfa import passkeys as pk
from idp.models import User
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, Browser, make_app, make_settings
from tests.helpers.webauthn_soft import SoftAuthenticator
from tests.integration.test_twofactor import password_step, reauth, signed_in, text

ORIGIN = "http://localhost"


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def user_id(hub, email: str, ws: str = "acme") -> str:
    with hub.db() as db:
        return next(u.id for u in db.scalars(select(User).where(User.email == email))
                    if u.workspace_id == hub_ws(hub, ws))


def hub_ws(hub, slug: str) -> str:
    from idp.models import Workspace

    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == slug))


def confirm_password(b: Browser, target: str, password: str = ALICE_PW):
    r = b.get(target)
    if r.status_code == 302 and "/reauth" in r.headers["Location"]:
        page = b.get(r.headers["Location"])
        nxt = re.search(r'name="next" value="([^"]+)"', text(page))[1]
        ws = target.split("/")[2]
        r = b.post(f"/w/{ws}/settings/security/reauth", {"password": password, "next": nxt, "csrf_token": b.csrf()})
        assert r.status_code == 302
        r = b.get(r.headers["Location"])
    return r


def add_passkey(b: Browser, auth: SoftAuthenticator, name: str = "Work laptop", ws: str = "acme",
                password: str = ALICE_PW):
    r = confirm_password(b, f"/w/{ws}/settings/security/passkeys/new", password)
    assert r.status_code == 200, text(r)[:300]
    page = text(r)
    assert "Passkey name" in page and 'data-passkey="create"' in page
    csrf = b.csrf(page)
    opts = b.post(f"/w/{ws}/settings/security/passkeys/options", {"csrf_token": csrf})
    assert opts.status_code == 200 and opts.headers["Cache-Control"] == "no-store"
    o = opts.get_json()
    assert o["rp"]["id"] == "localhost" and o["attestation"] == "none"
    assert o["authenticatorSelection"]["userVerification"] == "preferred"
    return b.post(f"/w/{ws}/settings/security/passkeys/new",
                  {"action": "register", "name": name, "credential": auth.create(opts.get_data(as_text=True)),
                   "csrf_token": csrf})


def passwordless_options(b: Browser, ws: str = "acme") -> tuple[str, str]:
    page = b.get(f"/w/{ws}/login")
    csrf = b.csrf(text(page))
    opts = b.post(f"/w/{ws}/login/passkey/options", {"csrf_token": csrf})
    assert opts.status_code == 200
    return opts.get_data(as_text=True), csrf


def passwordless(b: Browser, auth: SoftAuthenticator, ws: str = "acme", **kw):
    opts, csrf = passwordless_options(b, ws)
    assert json.loads(opts)["userVerification"] == "required"
    return b.post(f"/w/{ws}/login/passkey", {"credential": auth.get(opts, **kw), "csrf_token": csrf})


def second_factor(b: Browser, loc: str, auth: SoftAuthenticator, **kw):
    page = b.get(loc)
    assert "Use a passkey" in text(page), text(page)[:500]
    csrf = b.csrf(text(page))
    flow = re.search(r"flow=([\w-]+)", loc)[1]
    opts = b.post(f"/w/acme/login/mfa/passkey-options?flow={flow}", {"csrf_token": csrf})
    assert opts.status_code == 200
    o = opts.get_json()
    assert o["userVerification"] == "preferred" and len(o["allowCredentials"]) >= 1
    return b.post(loc, {"action": "verify", "credential": auth.get(opts.get_data(as_text=True), **kw),
                        "csrf_token": csrf})


def test_register_then_second_factor_and_passwordless(app, hub, outbox):
    other = signed_in(app)  # another session of alice's: adding a passkey ends it
    b = signed_in(app)
    auth = SoftAuthenticator()
    r = add_passkey(b, auth)
    assert r.status_code == 200 and "Save your backup codes" in text(r)  # the recovery path
    page = text(b.security())
    assert "Work laptop" in page and "Never" in page
    assert events(hub, "mfa.webauthn.added")[-1].data["sessions_ended"] == 1
    assert outbox.find(to=ALICE, subject="Two-factor authentication settings changed")
    assert other.security().status_code == 302
    uid = user_id(hub, ALICE)
    assert hub.mfa.enrolled(uid).methods()[0] == "webauthn"

    # password, then the passkey as the second factor
    b2, loc = password_step(app)
    assert "/login/mfa" in loc
    r = second_factor(b2, loc, auth)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), text(r)[:500]
    success = events(hub, "auth.signin.success")[-1]
    assert success.data["amr"] == ["pwd", "webauthn"]

    # passwordless: the passkey alone (user verified)
    b3 = Browser(app)
    r = passwordless(b3, auth)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), text(r)[:500]
    assert events(hub, "auth.signin.success")[-1].data["amr"] == ["webauthn"]
    assert events(hub, "auth.passkey.success")[-1].actor_id == uid
    assert "Never" not in text(b3.security()).split('id="passkeys"')[1].split("</section>")[0]


def refused(r, message: str):
    assert r.status_code == 401, (r.status_code, text(r)[:300])
    assert message in text(r), text(r)[:1500]


def test_bad_responses_are_refused_on_the_page_and_audited(app, hub):
    b = signed_in(app)
    auth = SoftAuthenticator()
    add_passkey(b, auth)
    c = Browser(app)
    cases = {
        "malformed": ("{not json", pk.MSG_MALFORMED),
        "empty": ("", pk.MSG_MALFORMED),
        "not_an_object": ("[1, 2]", pk.MSG_MALFORMED),
        "oversized": ('{"id": "' + "A" * 20000 + '"}', pk.MSG_MALFORMED),
        "bad_id": (json.dumps({"id": "../../etc", "response": {}}), pk.MSG_MALFORMED),
    }
    for name, (body, message) in cases.items():
        _opts, csrf = passwordless_options(c)
        r = c.post("/w/acme/login/passkey", {"credential": body, "csrf_token": csrf})
        refused(r, message)
    reasons = [e.data["reason"] for e in events(hub, "auth.passkey.failure")]
    assert reasons == ["malformed", "malformed", "malformed", "oversized", "malformed"]

    # an unknown credential id
    stranger = SoftAuthenticator()
    refused(passwordless(c, stranger), pk.MSG_UNKNOWN)
    # another origin (a phishing site relaying the assertion): the exact origin is checked, port included
    refused(passwordless(c, auth, origin="http://localhost:8443"), pk.MSG_ORIGIN)
    refused(passwordless(c, auth, origin="https://login.acme.test.evil.example"), pk.MSG_ORIGIN)
    # a broken signature
    refused(passwordless(c, auth, tamper=True), pk.MSG_INVALID)
    # a user handle naming someone else
    refused(passwordless(c, auth, user_handle=b"someone-else"), pk.MSG_UNKNOWN)
    reasons = [e.data["reason"] for e in events(hub, "auth.passkey.failure")][5:]
    assert reasons == ["unknown_credential", "origin", "origin", "invalid", "other_user"]

    # a replayed assertion: its challenge was consumed by the first use
    opts, csrf = passwordless_options(c)
    answer = auth.get(opts)
    r = c.post("/w/acme/login/passkey", {"credential": answer, "csrf_token": csrf})
    assert r.status_code == 302
    c2 = Browser(app)
    _opts, csrf2 = passwordless_options(c2)  # even with a fresh challenge of its own
    refused(c2.post("/w/acme/login/passkey", {"credential": answer, "csrf_token": csrf2}), pk.MSG_INVALID)
    # a challenge used twice: a first (wrong) answer consumes it, and the right answer then finds none
    opts, csrf = passwordless_options(c2)
    wrong, right = auth.get(opts, tamper=True), auth.get(opts)
    refused(c2.post("/w/acme/login/passkey", {"credential": wrong, "csrf_token": csrf}), pk.MSG_INVALID)
    refused(c2.post("/w/acme/login/passkey", {"credential": right, "csrf_token": csrf}), pk.MSG_EXPIRED)
    assert events(hub, "auth.passkey.failure")[-1].data["reason"] == "challenge"
    # without any options at all
    refused(Browser(app).form_post("/w/acme/login", "/w/acme/login/passkey", {"credential": auth.get(opts)}),
            pk.MSG_EXPIRED)


def test_counter_going_backwards_is_refused_and_alerts(app, hub, outbox):
    bob = signed_in_as(app, BOB, BOB_PW)
    auth = SoftAuthenticator()
    add_passkey(bob, auth, name="Bob's key", password=BOB_PW)
    assert passwordless(Browser(app), auth).status_code == 302  # counter 1
    assert passwordless(Browser(app), auth).status_code == 302  # counter 2
    r = passwordless(Browser(app), auth, count=1)  # a copy of the key that signed once
    refused(r, pk.MSG_CLONE)
    clone = events(hub, "auth.passkey.clone")[-1]
    assert clone.actor_id == user_id(hub, BOB) and clone.data["passkey"] == "Bob's key"
    assert outbox.find(to=BOB, subject="A passkey of your account may have been copied")
    assert outbox.find(to=ALICE, subject="A passkey may have been copied")  # alice is acme's admin
    refused(passwordless(Browser(app), auth, count=0), pk.MSG_CLONE)  # a counter that drops to 0
    assert passwordless(Browser(app), auth, count=5).status_code == 302  # the genuine key goes on


def signed_in_as(app, email: str, password: str) -> Browser:
    b = Browser(app)
    r = b.login("acme", email, password)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), r.headers.get("Location")
    return b


def test_credential_of_another_user_or_workspace_is_refused(app, hub):
    alice_key, bob_key = SoftAuthenticator(), SoftAuthenticator()
    add_passkey(signed_in(app), alice_key)
    add_passkey(signed_in_as(app, BOB, BOB_PW), bob_key, password=BOB_PW)
    # bob's second step answered with alice's passkey
    b, loc = Browser(app), None
    r = b.login("acme", BOB, BOB_PW)
    loc = r.headers["Location"]
    refused(second_factor(b, loc, alice_key), pk.MSG_UNKNOWN)
    assert events(hub, "auth.passkey.failure")[-1].data["reason"] == "other_user"
    assert second_factor(b, loc, bob_key).status_code == 302
    # acme-alice's passkey at the "other" workspace (which has an alice of its own)
    refused(passwordless(Browser(app), alice_key, ws="other"), pk.MSG_UNKNOWN)
    # registering a credential id that is already registered (to another account, another workspace) is refused
    b = Browser(app)
    assert b.login("other", ALICE, "0ther-Workspace-Pass!").status_code == 302
    dup = SoftAuthenticator()
    dup.credential_id, dup.key = bob_key.credential_id, bob_key.key
    r = add_passkey(b, dup, name="Copy", ws="other", password="0ther-Workspace-Pass!")
    assert r.status_code == 400 and pk.MSG_DUPLICATE in text(r)
    assert events(hub, "mfa.webauthn.refused")[-1].data["reason"] == "duplicate"


def test_registration_bad_inputs(app, hub):
    b = signed_in(app)
    r = reauth(b, "/w/acme/settings/security/passkeys/new")
    csrf = b.csrf(text(r))
    auth = SoftAuthenticator()

    def attempt(name="Laptop", origin=None, body=None):
        opts = b.post("/w/acme/settings/security/passkeys/options", {"csrf_token": csrf}).get_data(as_text=True)
        cred = body if body is not None else auth.create(opts, origin=origin)
        return b.post("/w/acme/settings/security/passkeys/new",
                      {"action": "register", "name": name, "credential": cred, "csrf_token": csrf})

    for kwargs, message in (({"name": ""}, pk.MSG_NAME), ({"name": "x" * 65}, pk.MSG_NAME),
                            ({"origin": "http://localhost:9999"}, pk.MSG_ORIGIN), ({"body": "{}"}, pk.MSG_MALFORMED),
                            ({"body": "x" * 20000}, pk.MSG_MALFORMED)):
        r = attempt(**kwargs)
        assert r.status_code == 400 and message in text(r), (kwargs, text(r)[:300])
    assert [e.data["reason"] for e in events(hub, "mfa.webauthn.refused")] == ["name", "name", "origin", "malformed",
                                                                               "oversized"]
    assert hub.mfa.passkeys.count(user_id(hub, ALICE)) == 0
    # options without having confirmed it's you: refused
    fresh = signed_in(app)
    r = fresh.post("/w/acme/settings/security/passkeys/options", {"csrf_token": fresh.csrf(text(fresh.security()))})
    assert r.status_code == 403


def test_rename_remove_and_last_factor(app, hub, outbox):
    b = signed_in(app)
    auth = SoftAuthenticator()
    add_passkey(b, auth)
    uid = user_id(hub, ALICE)
    [p] = hub.mfa.passkeys.list(uid)
    page = reauth_with_passkey(b, auth, f"/w/acme/settings/security/passkeys/{p.id}")
    assert "Rename" in text(page) and "Remove passkey" in text(page)
    r = b.post(f"/w/acme/settings/security/passkeys/{p.id}",
               {"action": "rename", "name": "Old laptop", "csrf_token": b.csrf(text(page))})
    assert r.status_code == 302
    assert hub.mfa.passkeys.list(uid)[0].name == "Old laptop"
    assert events(hub, "mfa.webauthn.renamed")[-1].data["to"] == "Old laptop"
    r = b.post(f"/w/acme/settings/security/passkeys/{p.id}", {"action": "remove", "csrf_token": b.csrf(text(page))})
    assert r.status_code == 302 and hub.mfa.passkeys.count(uid) == 0
    assert events(hub, "mfa.webauthn.removed")
    assert len(outbox.find(to=ALICE, subject="Two-factor authentication settings changed")) == 2


@pytest.fixture
def pr_app(tmp_path):
    """acme requires phishing-resistant MFA."""
    config = copy.deepcopy(BASE_CONFIG)
    config["workspaces"][0]["policies"]["require_phishing_resistant_mfa"] = True
    return make_app(make_settings(tmp_path), config)


def test_policy_requires_a_passkey_totp_users_are_led_to_add_one(pr_app, tmp_path):
    hub = pr_app.extensions["idhub"]
    uid = user_id(hub, ALICE)
    # alice has an authenticator app (set up before the policy): she proves it, then must add a passkey
    secret = pyotp.random_base32()
    from idp.mfa.models import MfaTotp

    with hub.db() as db:
        db.add(MfaTotp(user_id=uid, secret_enc=hub.mfa.box.encrypt(secret), confirmed_at=hub.clock(), last_step=-1))
        db.commit()
    hub.mfa.backup_generate(uid)
    b, loc = password_step(pr_app)
    assert "/login/mfa" in loc
    page = b.get(loc)
    assert "Open your authenticator app" in text(page)
    r = b.post(loc, {"action": "verify", "code": pyotp.TOTP(secret).at(hub.clock()), "csrf_token": b.csrf(text(page))})
    assert r.status_code == 302 and "/login/enroll" in r.headers["Location"], r.headers.get("Location")
    loc = r.headers["Location"]
    page = text(b.get(loc))
    assert "Add a passkey" in page and "requires a passkey or security key" in page
    assert "Authenticator app" not in page  # no other method to choose
    flow = re.search(r"flow=([\w-]+)", loc)[1]
    csrf = b.csrf(page)
    opts = b.post(f"/w/acme/login/enroll/passkey-options?flow={flow}", {"csrf_token": csrf})
    auth = SoftAuthenticator()
    r = b.post(loc, {"action": "register", "name": "Laptop", "credential": auth.create(opts.get_data(as_text=True)),
                     "csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), text(r)[:500]
    assert events(hub, "auth.signin.success")[-1].data["amr"] == ["pwd", "totp", "webauthn"]
    decisions = [e.data["rule"] for e in events(hub, "policy.decision")]
    assert "phishing_resistant_mfa" in decisions

    # the next sign-in asks for the passkey (a code is no longer enough)
    b, loc = password_step(pr_app)
    page = text(b.get(loc))
    assert "Use a passkey" in page and "Authenticator app" not in page and "Backup code" in page
    assert second_factor(b, loc, auth).status_code == 302
    # and the last passkey cannot be removed while the policy requires one
    [p] = hub.mfa.passkeys.list(uid)
    b2 = signed_in_passwordless(pr_app, auth)
    r = reauth_with_passkey(b2, auth, f"/w/acme/settings/security/passkeys/{p.id}")
    r = b2.post(f"/w/acme/settings/security/passkeys/{p.id}", {"action": "remove", "csrf_token": b2.csrf(text(r))})
    assert r.status_code == 400 and "this is your last one" in text(r)
    assert hub.mfa.passkeys.count(uid) == 1
    assert events(hub, "mfa.webauthn.remove_refused")[-1].data["rule"] == "phishing_resistant_mfa"


def signed_in_passwordless(app, auth) -> Browser:
    b = Browser(app)
    assert passwordless(b, auth).status_code == 302
    return b


def reauth_with_passkey(b: Browser, auth: SoftAuthenticator, target: str):
    r = b.get(target)
    assert r.status_code == 302 and "/reauth" in r.headers["Location"]
    page = text(b.get(r.headers["Location"]))
    assert 'data-passkey="get"' in page
    nxt = re.search(r'name="next" value="([^"]+)"', page)[1]
    csrf = b.csrf(page)
    opts = b.post("/w/acme/settings/security/passkeys/confirm-options?for=reauth", {"csrf_token": csrf})
    r = b.post("/w/acme/settings/security/reauth?method=webauthn",
               {"password": ALICE_PW, "next": nxt, "credential": auth.get(opts.get_data(as_text=True)),
                "csrf_token": csrf})
    assert r.status_code == 302, text(r)[:800]
    return b.get(r.headers["Location"])


def test_user_without_factor_enrols_a_passkey_inside_the_sign_in(pr_app):
    hub = pr_app.extensions["idhub"]
    b, loc = password_step(pr_app)
    assert "/login/enroll" in loc
    flow = re.search(r"flow=([\w-]+)", loc)[1]
    page = text(b.get(loc))
    csrf = b.csrf(page)
    opts = b.post(f"/w/acme/login/enroll/passkey-options?flow={flow}", {"csrf_token": csrf})
    r = b.post(loc, {"action": "register", "name": "Phone", "credential": SoftAuthenticator().create(
        opts.get_data(as_text=True)), "csrf_token": csrf})
    assert r.status_code == 200 and "Save your backup codes" in text(r)  # her first factor: codes to recover with
    r = b.post(loc, {"csrf_token": b.csrf(text(r))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert hub.mfa.enrolled(user_id(hub, ALICE)).webauthn


def test_reset_2fa_and_deprovisioning_remove_passkeys(app, hub):
    a, bk = SoftAuthenticator(), SoftAuthenticator()
    add_passkey(signed_in(app), a)
    add_passkey(signed_in_as(app, BOB, BOB_PW), bk, password=BOB_PW)
    alice, bob = user_id(hub, ALICE), user_id(hub, BOB)
    methods, _ended = hub.accounts.reset_mfa(hub_ws(hub, "acme"), alice)
    assert "webauthn" in methods and hub.mfa.passkeys.count(alice) == 0
    refused(passwordless(Browser(app), a), pk.MSG_UNKNOWN)

    def deactivate():
        with hub.db() as db:
            db.get(User, bob).active = False
            db.commit()

    hub.accounts.deprovision([(hub_ws(hub, "acme"), bob)], "deprovisioned", deactivate)
    assert hub.mfa.passkeys.count(bob) == 0
    refused(passwordless(Browser(app), bk), pk.MSG_UNKNOWN)


def test_disable_2fa_with_the_passkey_and_the_pages_without_javascript(app, hub, outbox):
    b = signed_in(app)
    auth = SoftAuthenticator()
    add_passkey(b, auth)
    uid = user_id(hub, ALICE)
    # the sign-in page: password sign-in needs no script; the passkey button says why it needs one
    page = text(Browser(app).get("/w/acme/login"))
    assert "<noscript>" in page and "Passkeys need JavaScript" in page and 'name="password"' in page
    assert "<script>" not in page and 'src="/static/passkeys.js' in page  # no inline script (CSP script-src 'self')
    # "Disable 2FA", confirmed with the passkey: everything goes, passkeys included
    page = text(b.get("/w/acme/settings/security/2fa/disable?method=webauthn"))
    assert 'data-passkey="get"' in page
    csrf = b.csrf(page)
    opts = b.post("/w/acme/settings/security/passkeys/confirm-options?for=disable", {"csrf_token": csrf})
    r = b.post("/w/acme/settings/security/2fa/disable?method=webauthn",
               {"action": "verify", "credential": auth.get(opts.get_data(as_text=True)), "csrf_token": csrf})
    assert r.status_code == 302, text(r)[:500]
    assert hub.mfa.passkeys.count(uid) == 0 and not hub.mfa.enrolled(uid).any
    assert events(hub, "mfa.disabled")


def test_refused_passwordless_answers_slow_down_their_address(app, hub):
    c = Browser(app, ip="198.51.100.7")
    csrf = c.csrf(text(c.get("/w/acme/login")))
    for _ in range(31):
        refused(c.post("/w/acme/login/passkey", {"credential": "{broken", "csrf_token": csrf}), pk.MSG_MALFORMED)
    r = c.post("/w/acme/login/passkey", {"credential": "{broken", "csrf_token": csrf})
    assert r.status_code == 429 and "Too many attempts" in text(r)
    assert events(hub, "auth.passkey.throttled")
    # another address is not held up
    other = Browser(app, ip="203.0.113.9")
    refused(other.form_post("/w/acme/login", "/w/acme/login/passkey", {"credential": "{broken"}), pk.MSG_MALFORMED)
