"""One step-up (idp.signin): OIDC ``acr_values`` upgrades the session the app's earlier tokens came from, in place —
one session listed, the same ``sid`` — so a back-channel logout after the step-up still reaches the app that
signed in before it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from authlib.jose import jwt

from tests.conftest import Browser
from tests.integration.test_oidc import code_flow, decode_id_token, redeem
from tests.integration.test_oidc_acr import ACR_MFA, add_totp, follow_to_app, step_up_path, user_id
from tests.interop.oidc_support import make_oidc_app, pkce, query


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
