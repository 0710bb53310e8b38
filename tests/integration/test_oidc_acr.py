"""``acr_values`` (and an essential ``acr`` in the ``claims`` parameter): an app that asks for the MFA
authentication context gets it — a session signed in with a password alone is sent through the second-factor
step (or set-up, for a user without one), ``prompt=none`` answers ``interaction_required``, and the ID token
carries ``urn:idhub:acr:mfa``."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pyotp
import pytest
from authlib.jose import jwt
from sqlalchemy import select

from idp.audit import AuditEvent
from tests.conftest import ALICE, ALICE_PW, BOB, BOB_PW, Browser
from tests.integration.test_oidc import code_flow, decode_id_token, redeem
from tests.interop.oidc_support import (
    WIKI_CB,
    authorize_path,
    hidden_fields,
    make_oidc_app,
    pkce,
    query,
    resume_target,
)

ACR_MFA = "urn:idhub:acr:mfa"
ACR_PWD = "urn:idhub:acr:pwd"


@pytest.fixture
def app(settings):
    return make_oidc_app(settings)


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


@pytest.fixture
def browser(app):
    return Browser(app)


@pytest.fixture
def api(app):
    return app.test_client()


def user_id(hub, email=ALICE) -> str:
    from idp.accounts import user_by_email
    from idp.models import Workspace

    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        return user_by_email(db, ws.id, email).id


def add_totp(hub, uid: str) -> pyotp.TOTP:
    """Alice sets up an authenticator app (through the service: her password-only session stays)."""
    setup = hub.mfa.totp_begin(uid, ALICE)
    totp = pyotp.TOTP(setup.secret)
    assert hub.mfa.totp_confirm(uid, totp.at(hub.clock()))
    return totp


def step_up_path(challenge, **kw):
    return authorize_path(challenge=challenge, state="s-123", nonce="n-456",
                          scope="openid email offline_access", **kw)


def follow_to_app(browser, r) -> str:
    """Follow redirects (and the resume page) until one leaves idhub; return it."""
    for _ in range(8):
        assert r.status_code in (200, 302), r.get_data(as_text=True)[:500]
        if r.status_code == 200:
            r = browser.get(resume_target(r.get_data(as_text=True)))
            continue
        loc = r.headers["Location"].removeprefix("http://localhost")
        if not loc.startswith("/"):
            return loc
        r = browser.get(loc)
    raise AssertionError("too many redirects")


def audit_types(hub) -> list[str]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent.type).order_by(AuditEvent.seq)))


def test_discovery_advertises_the_acr_values(api):
    meta = api.get("/w/acme/.well-known/openid-configuration").get_json()
    assert set(meta["acr_values_supported"]) == {ACR_MFA, ACR_PWD, "urn:idhub:acr:phishing-resistant"}


def test_acr_mfa_steps_a_password_session_up_through_the_second_factor(browser, api, hub):
    """Alice signed in with a password, then set up an authenticator app: the app's MFA request (and her own 2FA)
    send her through the second-factor step only — not the password again."""
    code, verifier = code_flow(browser)  # signed in with a password only
    assert decode_id_token(api, redeem(api, code, verifier).get_json()["id_token"])["acr"] == ACR_PWD
    totp = add_totp(hub, user_id(hub))
    verifier, challenge = pkce()
    # prompt=none cannot step up: interaction_required, at the app, with the state
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA, prompt="none"))
    q = query(r.headers["Location"])
    assert r.headers["Location"].startswith(WIKI_CB + "?") and q["error"] == "interaction_required"
    assert q["state"] == "s-123" and "code" not in q
    # otherwise: the second-factor step of idhub's sign-in, for this user, without the password again
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA))
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert loc.startswith("/w/acme/login/mfa?flow="), loc
    assert "oidc.authorize.step_up" in audit_types(hub)
    page = browser.get(loc)
    assert page.status_code == 200 and "code" in page.get_data(as_text=True).lower()
    # a wrong code does not get through
    r = browser.post(loc, {"action": "verify", "code": "000000", "csrf_token": browser.csrf()})
    assert r.status_code == 401
    r = browser.post(loc, {"action": "verify", "code": totp.at(hub.clock() + timedelta(seconds=30)),
                           "csrf_token": browser.csrf()})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    cb = follow_to_app(browser, r)
    assert cb.startswith(WIKI_CB + "?"), cb
    q = query(cb)
    assert q["state"] == "s-123"
    tok = redeem(api, q["code"], verifier).get_json()
    claims = decode_id_token(api, tok["id_token"])
    assert claims["acr"] == ACR_MFA and "otp" in claims["amr"] and "mfa" in claims["amr"]
    # the browser's session now has the second factor: no step-up next time, even with prompt=none
    verifier, challenge = pkce()
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA, prompt="none"))
    q = query(r.headers["Location"])
    assert "code" in q, q
    assert decode_id_token(api, redeem(api, q["code"], verifier).get_json()["id_token"])["acr"] == ACR_MFA


SECRET_RE = re.compile(r"data-secret>([A-Z2-7 ]+)<")


def test_acr_mfa_for_a_user_without_a_second_factor_sets_one_up(app, hub):
    """Bob has no second factor and nothing requires one: only the app's acr_values make him set one up."""
    api = app.test_client()
    b = Browser(app)
    b.login("acme", BOB, BOB_PW)
    verifier, challenge = pkce()
    r = b.get(step_up_path(challenge))  # without acr_values: a code at once, acr pwd
    assert r.headers["Location"].startswith(WIKI_CB + "?code=")
    r = b.get(step_up_path(challenge, acr_values=ACR_MFA, prompt="none"))
    assert query(r.headers["Location"])["error"] == "interaction_required"
    r = b.get(step_up_path(challenge, acr_values=ACR_MFA))
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert r.status_code == 302 and loc.startswith("/w/acme/login/enroll?flow="), loc
    with hub.db() as db:
        step = db.scalars(select(AuditEvent).where(AuditEvent.type == "oidc.authorize.step_up")).one()
    assert step.data["reason"] == "acr" and step.data["step"] == "enroll" and step.data["client"] == "wiki"
    page = html.unescape(b.get(loc).get_data(as_text=True))
    secret = SECRET_RE.search(page)[1].replace(" ", "")
    r = b.post(loc, {"action": "verify", "code": pyotp.TOTP(secret).at(hub.clock()), "csrf_token": b.csrf(page)})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]  # the backup codes, once
    r = b.post(loc, {"csrf_token": b.csrf(r.get_data(as_text=True))})
    cb = follow_to_app(b, r)
    assert cb.startswith(WIKI_CB + "?code="), cb
    claims = decode_id_token(api, redeem(api, query(cb)["code"], verifier).get_json()["id_token"])
    assert claims["acr"] == ACR_MFA and "otp" in claims["amr"]


def test_not_signed_in_signs_in_then_steps_up(browser, hub):
    totp = add_totp(hub, user_id(hub))
    _, challenge = pkce()
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA))
    assert r.headers["Location"].startswith("/w/acme/login?")  # the usual sign-in first
    # the password step already asks for the code of a user who has one
    page = browser.get(r.headers["Location"]).get_data(as_text=True)
    r = browser.post("/w/acme/login", {**hidden_fields(page), "email": ALICE})
    page = browser.get(r.headers["Location"]).get_data(as_text=True)
    r = browser.post("/w/acme/login/password", {**hidden_fields(page), "password": ALICE_PW})
    mfa = r.headers["Location"].removeprefix("http://localhost")
    assert mfa.startswith("/w/acme/login/mfa?flow="), mfa
    browser.get(mfa)
    r = browser.post(mfa, {"action": "verify", "code": totp.at(hub.clock() + timedelta(seconds=30)),
                           "csrf_token": browser.csrf()})
    cb = follow_to_app(browser, r)
    assert "code" in query(cb)


def test_acr_values_that_a_password_satisfies_do_not_step_up(browser):
    code_flow(browser)
    for values in (ACR_PWD, f"{ACR_MFA} {ACR_PWD}", "urn:example:unknown"):
        _, challenge = pkce()
        r = browser.get(step_up_path(challenge, acr_values=values))
        assert r.headers["Location"].startswith(WIKI_CB + "?code="), (values, r.headers["Location"])


def test_essential_acr_in_the_claims_parameter(app, hub):
    b = Browser(app)
    b.login("acme", BOB, BOB_PW)  # no second factor, none required
    essential = json.dumps({"id_token": {"acr": {"essential": True, "values": [ACR_MFA]}}})
    _, challenge = pkce()
    r = b.get(step_up_path(challenge, claims=essential))
    assert r.headers["Location"].removeprefix("http://localhost").startswith("/w/acme/login/enroll?flow=")
    r = b.get(step_up_path(challenge, claims=essential, prompt="none"))
    assert query(r.headers["Location"])["error"] == "interaction_required"
    # not essential, or a password is acceptable too: a code at once
    for ok in ({"id_token": {"acr": {"values": [ACR_MFA]}}},
               {"id_token": {"acr": {"essential": True, "values": [ACR_MFA, ACR_PWD]}}},
               {"id_token": {"acr": {"essential": True, "value": ACR_PWD}}},
               {"id_token": {"acr": None, "email": {"essential": True}}}, {"userinfo": {"name": None}}):
        r = b.get(step_up_path(challenge, claims=json.dumps(ok)))
        assert r.headers["Location"].startswith(WIKI_CB + "?code="), ok
    # an essential acr we cannot give: a failed authentication (OIDC Core 5.5.1.1)
    impossible = json.dumps({"id_token": {"acr": {"essential": True, "value": "urn:example:loa4"}}})
    r = b.get(step_up_path(challenge, claims=impossible))
    assert query(r.headers["Location"])["error"] == "access_denied"
    assert "oidc.authorize.denied" in audit_types(hub)
    # malformed: an OAuth error at the app, never a 500
    for bad in ("{", "[]", '{"id_token": 3}', '{"id_token": {"acr": "x"}}', "[" * 2000,
                '{"id_token": {"acr": {"essential": true, "values": "x"}}}',
                '{"id_token": {"acr": {"essential": "yes", "value": "x"}}}'):
        r = b.get(step_up_path(challenge, claims=bad))
        assert r.status_code == 302 and query(r.headers["Location"])["error"] == "invalid_request", bad
        assert query(r.headers["Location"])["state"] == "s-123"


def test_step_up_keeps_the_request_but_not_prompt(browser, hub):
    code_flow(browser)
    add_totp(hub, user_id(hub))
    _, challenge = pkce()
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA, max_age="100000"))
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert browser.get(loc).status_code == 200
    from idp.flow import FlowManager

    flow_id = query(loc)["flow"]
    data = FlowManager(hub.stores.flows, hub.clock).store.get(flow_id)
    nxt = html.unescape(data["next"])
    assert nxt.startswith("/w/acme/oauth2/resume?")
    q = query(nxt)
    assert q["acr_values"] == ACR_MFA and q["code_challenge"] == challenge and "max_age" not in q
    assert data["app"] == "wiki" and data["state"] == "mfa" and data["user_id"] == user_id(hub)


# ---- one step-up (idp.signin): the session the app's earlier tokens came from is upgraded in place --------------
def test_acr_step_up_upgrades_the_session_in_place_and_logout_still_reaches_the_earlier_app(browser, api, hub):
    posted = []
    hub.oidc.backchannel.dispatch = lambda fn: fn()
    hub.oidc.backchannel.post = lambda url, token, guarded=False: posted.append(token)
    code, verifier = code_flow(browser)  # a password session; the app gets its tokens
    before = decode_id_token(api, redeem(api, code, verifier).get_json()["id_token"])
    uid = user_id(hub)
    [session] = hub.sessions.list(uid)
    totp = add_totp(hub, uid)
    verifier, challenge = pkce()
    r = browser.get(step_up_path(challenge, acr_values=ACR_MFA))
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert loc.startswith("/w/acme/login/mfa?flow="), loc
    browser.get(loc)
    r = browser.post(loc, {"code": totp.at(hub.clock() + timedelta(seconds=30)), "csrf_token": browser.csrf()})
    cb = follow_to_app(browser, r)
    after = decode_id_token(api, redeem(api, query(cb)["code"], verifier).get_json()["id_token"])
    assert after["acr"] == ACR_MFA and before["acr"] != ACR_MFA
    assert after["sid"] == before["sid"]  # the same idhub session, upgraded
    [upgraded] = hub.sessions.list(uid)
    assert upgraded.id == session.id and "totp" in upgraded.amr  # nothing stale listed
    # signing out ends it; the app that signed in before the step-up hears of it, with the sid it knows
    r = browser.get("/w/acme/settings/security")
    browser.post("/w/acme/logout", {"csrf_token": browser.csrf(r.get_data(as_text=True))})
    assert posted, "no logout token was sent"
    claims = jwt.decode(posted[0], api.get("/w/acme/oauth2/jwks").get_json())
    assert claims["sid"] == before["sid"] and claims["aud"] == "wiki" and claims["sub"] == uid


ACR_PHR = "urn:idhub:acr:phishing-resistant"


def test_requested_acr_understands_the_phishing_resistant_value():
    from oidc.provider import ACR_UNSUPPORTED, requested_acr

    assert requested_acr(ACR_PHR, None) == ACR_PHR
    assert requested_acr(f"{ACR_PHR} {ACR_MFA}", None) == ACR_MFA  # either will do: MFA is enough
    assert requested_acr(f"{ACR_PHR} {ACR_PWD}", None) is None
    essential = json.dumps({"id_token": {"acr": {"essential": True, "values": [ACR_PHR]}}})
    assert requested_acr(None, essential) == ACR_PHR
    unknown = json.dumps({"id_token": {"acr": {"essential": True, "values": ["urn:other"]}}})
    assert requested_acr(None, unknown) == ACR_UNSUPPORTED


def test_acr_phishing_resistant_steps_a_totp_session_up_to_the_passkey(browser, api, hub):
    """An app that asks for urn:idhub:acr:phishing-resistant: alice (authenticator app and a passkey) signed in
    with her password and a code is sent through the second step again, where only her passkey (or a backup code
    to recover) is offered; the ID token then says phishing-resistant, with amr hwk and user."""
    from tests.helpers.webauthn_soft import SoftAuthenticator

    uid = user_id(hub)
    totp = add_totp(hub, uid)
    auth = SoftAuthenticator()
    binding = "test-registration"
    hub.mfa.passkeys.register(user_id=uid, workspace_id=hub_ws_id(hub), binding=binding, name="Laptop",
                              response=auth.create(hub.mfa.passkeys.registration_options(
                                  user_id=uid, user_name=ALICE, display_name="Alice", binding=binding)))
    verifier, challenge = pkce()
    r = browser.get(step_up_path(challenge))  # sign in: password, then (her own 2FA) the authenticator app
    loc = r.headers["Location"].removeprefix("http://localhost")
    page = browser.get(loc)
    r = browser.post("/w/acme/login", {
        **hidden_fields(page.get_data(as_text=True)), "email": ALICE, "password": ALICE_PW})
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert loc.startswith("/w/acme/login/mfa"), loc
    r = browser.post(loc + "&method=totp", {"action": "verify", "code": totp.at(hub.clock() + timedelta(seconds=30)),
                                            "csrf_token": browser.csrf(browser.get(loc + "&method=totp")
                                                                       .get_data(as_text=True))})
    cb = follow_to_app(browser, r)
    q = query(cb)
    assert decode_id_token(api, redeem(api, q["code"], verifier).get_json()["id_token"])["acr"] == ACR_MFA
    # the app now asks for a passkey
    verifier, challenge = pkce()
    r = browser.get(step_up_path(challenge, acr_values=ACR_PHR))
    loc = r.headers["Location"].removeprefix("http://localhost")
    assert loc.startswith("/w/acme/login/mfa?flow="), loc
    page = browser.get(loc).get_data(as_text=True)
    assert "Use a passkey" in page and "Authenticator app" not in page
    flow = re.search(r"flow=([\w-]+)", loc)[1]
    opts = browser.post(f"/w/acme/login/mfa/passkey-options?flow={flow}", {"csrf_token": browser.csrf(page)})
    r = browser.post(loc, {"action": "verify", "credential": auth.get(opts.get_data(as_text=True)),
                           "csrf_token": browser.csrf(page)})
    cb = follow_to_app(browser, r)
    q = query(cb)
    claims = decode_id_token(api, redeem(api, q["code"], verifier).get_json()["id_token"])
    assert claims["acr"] == ACR_PHR and {"hwk", "user", "mfa", "otp", "pwd"} <= set(claims["amr"])
    # with prompt=none the phishing-resistant session needs no step-up (and satisfies urn:idhub:acr:mfa too)
    for acr in (ACR_PHR, ACR_MFA):
        verifier, challenge = pkce()
        r = browser.get(step_up_path(challenge, acr_values=acr, prompt="none"))
        assert "code" in query(r.headers["Location"])


def hub_ws_id(hub) -> str:
    from idp.models import Workspace

    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
