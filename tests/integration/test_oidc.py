"""The downstream OpenID Connect provider through the Flask test client and the real sign-in pages."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from authlib.jose import JsonWebKey, JsonWebToken

from tests.conftest import ALICE, BOB, BOB_PW, Browser
from tests.interop.oidc_support import (
    OTHER_SECRET,
    POST_SECRET,
    SPA_CB,
    WIKI_CB,
    WIKI_HOME,
    WIKI_SECRET,
    authorize_path,
    browser_authorize,
    make_oidc_app,
    oidc_config,
    pkce,
    query,
)

ISS = "http://localhost/w/acme"


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


WIKI_AUTH = basic("wiki", WIKI_SECRET)


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


def code_flow(browser, client_id="wiki", redirect_uri=WIKI_CB, scope="openid profile email groups offline_access",
              **kw):
    verifier, challenge = pkce()
    path = authorize_path(client_id=client_id, redirect_uri=redirect_uri, scope=scope, challenge=challenge,
                          state="s-123", nonce="n-456", **kw)
    cb = browser_authorize(browser, path)
    assert cb.startswith(redirect_uri + "?"), cb
    q = query(cb)
    assert q["state"] == "s-123" and q["iss"] == ISS, q
    return q["code"], verifier


def redeem(api, code, verifier, auth=WIKI_AUTH, redirect_uri=WIKI_CB, **extra):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier, **extra}
    return api.post("/w/acme/oauth2/token", data=data, headers=auth)


def jwks(api, ws="acme"):
    return JsonWebKey.import_key_set(api.get(f"/w/{ws}/oauth2/jwks").get_json())


def decode_id_token(api, token, nonce="n-456", aud="wiki"):
    options = {"iss": {"essential": True, "value": ISS}, "aud": {"essential": True, "value": aud},
               "exp": {"essential": True}}
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    claims = JsonWebToken(["RS256"]).decode(token, jwks(api), claims_options=options)
    claims.validate(leeway=5)
    return claims


def test_discovery_and_jwks(api):
    d = api.get("/w/acme/.well-known/openid-configuration").get_json()
    assert d["issuer"] == ISS
    assert d["authorization_endpoint"] == ISS + "/oauth2/authorize"
    assert d["token_endpoint"] == ISS + "/oauth2/token"
    assert d["jwks_uri"] == ISS + "/oauth2/jwks"
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert d["response_types_supported"] == ["code"]
    assert "implicit" not in d["grant_types_supported"] and "password" not in d["grant_types_supported"]
    assert d["authorization_response_iss_parameter_supported"] is True
    assert set(d["scopes_supported"]) == {"openid", "profile", "email", "groups", "offline_access"}
    assert d["end_session_endpoint"] and d["revocation_endpoint"] and d["introspection_endpoint"]
    # the issuer comes from settings, never from the Host header
    d2 = api.get("/w/acme/.well-known/openid-configuration", headers={"Host": "evil.example",
                                                                       "X-Forwarded-Host": "evil.example"}).get_json()
    assert d2["issuer"] == ISS
    assert d["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    keys = api.get("/w/acme/oauth2/jwks").get_json()["keys"]
    assert len(keys) == 2 and keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256" and keys[0]["use"] == "sig"
    assert keys[1]["kty"] == "EC" and keys[1]["crv"] == "P-256" and keys[1]["alg"] == "ES256"
    for k in keys:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(k)
    other = api.get("/w/other/oauth2/jwks").get_json()["keys"]
    assert other[0]["kid"] != keys[0]["kid"]
    assert api.get("/w/nope/.well-known/openid-configuration").status_code == 404


def test_private_key_encrypted_at_rest(hub, api):
    from oidc.models import OidcKey

    api.get("/w/acme/oauth2/jwks")
    with hub.db() as db:
        row = db.query(OidcKey).first()
    assert row.private_enc.startswith("v1:") and "PRIVATE KEY" not in row.private_enc


def test_full_code_flow_with_pkce(browser, api, hub):
    code, verifier = code_flow(browser)
    r = redeem(api, code, verifier)
    assert r.status_code == 200, r.get_json()
    tok = r.get_json()
    assert tok["token_type"] == "Bearer" and tok["refresh_token"] and tok["expires_in"] <= 600
    assert r.headers["Cache-Control"] == "no-store"
    claims = decode_id_token(api, tok["id_token"])
    with hub.db() as db:
        from idp.accounts import user_by_email
        from idp.models import Workspace

        ws = db.query(Workspace).filter_by(slug="acme").one()
        alice = user_by_email(db, ws.id, ALICE)
    assert claims["sub"] == alice.id
    assert claims["email"] == ALICE and claims["email_verified"] is True and claims["name"] == "Alice Example"
    assert claims["groups"] == ["engineering"]
    assert claims["amr"] == ["pwd"] and claims["acr"] == "urn:idhub:acr:pwd"
    assert claims["auth_time"] <= time.time() and claims["sid"]
    # at_hash binds the id_token to the access token
    from oidc.provider import half_hash

    assert claims["at_hash"] == half_hash(tok["access_token"])
    # the access token is an RFC 9068 JWT
    at = JsonWebToken(["RS256"]).decode(tok["access_token"], jwks(api))
    assert at.header["typ"] == "at+jwt" and at["jti"] and at["client_id"] == "wiki" and at["iss"] == ISS
    assert at["exp"] - at["iat"] <= 600
    # userinfo
    r = api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
    assert r.status_code == 200
    assert r.get_json() == {"sub": alice.id, "email": ALICE, "email_verified": True, "name": "Alice Example",
                            "groups": ["engineering"]}
    assert api.get("/w/acme/oauth2/userinfo").status_code == 401
    assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    # a second authorization reuses the idhub session (no sign-in page)
    verifier2, challenge2 = pkce()
    r = browser.get(authorize_path(challenge=challenge2))
    assert r.status_code == 302 and r.headers["Location"].startswith(WIKI_CB + "?code=")


def test_public_client_pkce_only(browser, api):
    code, verifier = code_flow(browser, client_id="spa", redirect_uri=SPA_CB)
    r = redeem(api, code, verifier, auth={}, redirect_uri=SPA_CB, client_id="spa")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["refresh_token"]
    # a public client cannot use client credentials
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials", "client_id": "spa"})
    assert r.status_code in (400, 401)


def test_default_confidential_client_accepts_basic_or_post(browser, api):
    code, verifier = code_flow(browser)
    r = redeem(api, code, verifier, auth={}, client_id="wiki", client_secret=WIKI_SECRET)
    assert r.status_code == 200, r.get_json()


def test_client_secret_post(browser, api):
    code, verifier = code_flow(browser, client_id="poster", redirect_uri="https://poster.example/cb",
                               scope="openid email")
    # basic is not this client's method
    r = redeem(api, code, verifier, auth=basic("poster", POST_SECRET), redirect_uri="https://poster.example/cb")
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    code, verifier = code_flow(browser, client_id="poster", redirect_uri="https://poster.example/cb",
                               scope="openid email")
    r = redeem(api, code, verifier, auth={}, redirect_uri="https://poster.example/cb", client_id="poster",
               client_secret=POST_SECRET)
    assert r.status_code == 200, r.get_json()
    assert "refresh_token" not in r.get_json()  # no refresh_token grant for this app


def test_refresh_rotation_and_reuse_revokes_family(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    rt1 = tok["refresh_token"]
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt1},
                 headers=WIKI_AUTH)
    assert r.status_code == 200, r.get_json()
    tok2 = r.get_json()
    rt2 = tok2["refresh_token"]
    assert rt2 != rt1
    first, again = decode_id_token(api, tok["id_token"]), decode_id_token(api, tok2["id_token"], nonce=None)
    assert again["sub"] == first["sub"] and again["auth_time"] == first["auth_time"] and "nonce" not in again
    # replaying the used refresh token after the retry grace window: refused, and the whole family dies (rt2
    # and its access token)
    later = datetime.now(UTC) + timedelta(seconds=hub.settings.oidc_refresh_grace + 1)
    hub.clock = lambda: later
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt1},
                 headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt2},
                 headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    r = api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok2["access_token"]})
    assert r.status_code == 401
    r = api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
    assert r.status_code == 401


def refresh(api, rt, auth=WIKI_AUTH):
    return api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt}, headers=auth)


def test_a_refresh_retried_within_the_grace_window_gets_the_same_answer(browser, api, hub):
    """The app lost the answer (a timeout, a retry through another node): the same request again within
    IDHUB_OIDC_REFRESH_GRACE seconds gets the same token pair, and the family lives on. The kept answer is
    stored encrypted, never in clear."""
    from oidc.models import OidcRefreshToken
    from oidc.provider import sha256_hex

    code, verifier = code_flow(browser)
    rt1 = redeem(api, code, verifier).get_json()["refresh_token"]
    first = refresh(api, rt1)
    assert first.status_code == 200
    again = refresh(api, rt1)
    assert again.status_code == 200 and again.get_json() == first.get_json()
    with hub.db() as db:
        kept = db.get(OidcRefreshToken, sha256_hex(rt1)).retry_answer
    tok = first.get_json()
    assert kept and tok["refresh_token"] not in kept and tok["access_token"] not in kept
    for secret_part in (tok["refresh_token"], tok["access_token"].split(".")[1]):
        assert secret_part not in kept
    # another client presenting it is refused (and does not get the answer)
    other = refresh(api, rt1, auth={})
    assert other.status_code in (400, 401) and "access_token" not in other.get_json()
    # the app goes on with the new token: the family is intact
    third = refresh(api, tok["refresh_token"])
    assert third.status_code == 200
    # once the new token was used, the old one is a replay even within the window: the family dies
    r = refresh(api, rt1)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert refresh(api, third.get_json()["refresh_token"]).status_code == 400
    assert api.get("/w/acme/oauth2/userinfo",
                   headers={"Authorization": "Bearer " + third.get_json()["access_token"]}).status_code == 401


def test_a_refresh_retry_after_the_grace_window_revokes_the_family(browser, api, hub):
    code, verifier = code_flow(browser)
    rt1 = redeem(api, code, verifier).get_json()["refresh_token"]
    tok = refresh(api, rt1).get_json()
    later = datetime.now(UTC) + timedelta(seconds=hub.settings.oidc_refresh_grace + 1)
    hub.clock = lambda: later
    r = refresh(api, rt1)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert refresh(api, tok["refresh_token"]).status_code == 400


def test_refresh_token_of_another_client_refused(browser, api):
    code, verifier = code_flow(browser)
    rt = redeem(api, code, verifier).get_json()["refresh_token"]
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt,
                                               "client_id": "spa"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_session_end_stops_refresh(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    sent = []
    hub.oidc.backchannel.post = lambda url, token: sent.append((url, token))
    hub.oidc.backchannel.dispatch = lambda fn: fn()
    browser.get("/w/acme/settings/security")
    r = browser.post("/w/acme/logout", {"csrf_token": browser.csrf()})
    assert r.status_code == 302
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    r = api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
    assert r.status_code == 401
    # back-channel logout token to the app
    assert len(sent) == 1 and sent[0][0] == "http://127.0.0.1:8081/backchannel-logout"
    lt = JsonWebToken(["RS256"]).decode(sent[0][1], jwks(api))
    assert lt.header["typ"] == "logout+jwt"
    assert lt["iss"] == ISS and lt["aud"] == "wiki" and "nonce" not in lt
    assert "http://schemas.openid.net/event/backchannel-logout" in lt["events"]
    idt = decode_id_token(api, tok["id_token"])
    assert lt["sid"] == idt["sid"] and lt["sub"] == idt["sub"]


def test_client_credentials(api):
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH)
    assert r.status_code == 200, r.get_json()
    tok = r.get_json()
    assert "refresh_token" not in tok and "id_token" not in tok
    at = JsonWebToken(["RS256"]).decode(tok["access_token"], jwks(api))
    assert at["sub"] == "wiki" and at["client_id"] == "wiki"
    # no user behind it: userinfo refuses
    assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}
                   ).status_code == 401
    r = api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}, headers=WIKI_AUTH)
    assert r.get_json()["active"] is True and r.get_json()["client_id"] == "wiki"
    # strict has no client_credentials grant
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=basic("strict", "x" * 40))
    assert r.status_code == 400 and r.get_json()["error"] == "unauthorized_client"


def test_client_credentials_token_revocation(api, hub):
    """Client credentials tokens are not recorded when issued (the signature is the record); revoking one
    records it, and it is then inactive. Another client cannot revoke or introspect it."""
    from oidc.models import OidcAccessToken

    tok = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH).get_json()
    other = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH).get_json()
    assert _count(hub, OidcAccessToken) == 0
    post_auth = {"client_id": "poster", "client_secret": POST_SECRET}
    assert api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"], **post_auth}
                    ).get_json() == {"active": False}
    assert api.post("/w/acme/oauth2/revoke", data={"token": tok["access_token"], **post_auth}).status_code == 200
    assert api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}, headers=WIKI_AUTH
                    ).get_json()["active"] is True
    assert api.post("/w/acme/oauth2/revoke", data={"token": tok["access_token"]}, headers=WIKI_AUTH
                    ).status_code == 200
    assert api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}, headers=WIKI_AUTH
                    ).get_json() == {"active": False}
    assert api.post("/w/acme/oauth2/revoke", data={"token": tok["access_token"]}, headers=WIKI_AUTH
                    ).status_code == 200  # again: idempotent
    assert _count(hub, OidcAccessToken) == 1
    assert api.post("/w/acme/oauth2/introspect", data={"token": other["access_token"]}, headers=WIKI_AUTH
                    ).get_json()["active"] is True
    # expired: inactive
    from datetime import timedelta

    real = hub.clock
    later = real() + timedelta(minutes=6)
    hub.clock = lambda: later
    try:
        assert api.post("/w/acme/oauth2/introspect", data={"token": other["access_token"]}, headers=WIKI_AUTH
                        ).get_json() == {"active": False}
    finally:
        hub.clock = real
    # another workspace does not know it
    assert api.post("/w/other/oauth2/introspect", data={"token": other["access_token"]},
                    headers=basic("wiki", OTHER_SECRET)).get_json() == {"active": False}


def test_no_implicit_or_password_grant(api, browser):
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "password", "username": ALICE, "password": "x"},
                 headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "unsupported_grant_type"
    _, challenge = pkce()
    browser.get("/w/acme/login")
    r = browser.get(authorize_path(challenge=challenge, response_type="token"))
    assert r.status_code == 302 and query(r.headers["Location"])["error"] == "unsupported_response_type"
    assert r.headers["Location"].startswith(WIKI_CB + "?")


def test_revocation(browser, api):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    # access token revocation
    r = api.post("/w/acme/oauth2/revoke", data={"token": tok["access_token"], "token_type_hint": "access_token"},
                 headers=WIKI_AUTH)
    assert r.status_code == 200
    assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}
                   ).status_code == 401
    # refresh token revocation
    r = api.post("/w/acme/oauth2/revoke", data={"token": tok["refresh_token"]}, headers=WIKI_AUTH)
    assert r.status_code == 200
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400
    # unknown token: 200 (RFC 7009); no client auth: 401
    assert api.post("/w/acme/oauth2/revoke", data={"token": "nope"}, headers=WIKI_AUTH).status_code == 200
    assert api.post("/w/acme/oauth2/revoke", data={"token": "nope"}).status_code in (400, 401)


def test_revocation_by_another_client_does_nothing(browser, api):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    r = api.post("/w/acme/oauth2/revoke", data={"token": tok["refresh_token"]}, headers=basic("strict", "x" * 40))
    assert r.status_code == 200
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 200


def test_introspection(browser, api):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    r = api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}, headers=WIKI_AUTH)
    body = r.get_json()
    assert r.status_code == 200 and body["active"] is True and body["client_id"] == "wiki"
    assert body["sub"] and "openid" in body["scope"] and body["iss"] == ISS
    r = api.post("/w/acme/oauth2/introspect", data={"token": tok["refresh_token"]}, headers=WIKI_AUTH)
    assert r.get_json()["active"] is True
    # another client learns nothing
    r = api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}, headers=basic("strict", "x" * 40))
    assert r.get_json() == {"active": False}
    # client authentication is required; a public client cannot introspect
    assert api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"]}).status_code == 401
    r = api.post("/w/acme/oauth2/introspect", data={"token": tok["access_token"], "client_id": "spa"})
    assert r.status_code in (400, 401)
    assert api.post("/w/acme/oauth2/introspect", data={"token": "garbage"}, headers=WIKI_AUTH
                    ).get_json() == {"active": False}


def test_end_session(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    hub.oidc.backchannel.dispatch = lambda fn: None
    # an unregistered post_logout_redirect_uri: error page, no redirect, still signed in
    r = browser.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=tok["id_token"],
                                                   post_logout_redirect_uri=WIKI_HOME + "x"))
    assert r.status_code == 400 and "Location" not in r.headers
    r = browser.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=tok["id_token"],
                                                   post_logout_redirect_uri=WIKI_HOME.rstrip("/")))
    assert r.status_code == 400
    assert browser.get("/w/acme/settings/security").status_code == 200
    # an access token is not an ID token: whoever holds one (a resource server) cannot sign the user out
    r = browser.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=tok["access_token"],
                                                   post_logout_redirect_uri=WIKI_HOME))
    assert r.status_code == 400 and "Location" not in r.headers
    assert browser.get("/w/acme/settings/security").status_code == 200
    # without a hint: not signed out (logout CSRF), asked to confirm instead
    r = browser.get("/w/acme/oauth2/logout?" + _qs(client_id="wiki", post_logout_redirect_uri=WIKI_HOME))
    assert r.status_code == 200 and "Sign out of idhub?" in r.get_data(as_text=True)
    assert browser.get("/w/acme/settings/security").status_code == 200
    # a valid request: signed out, back to the app with its state
    r = browser.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=tok["id_token"],
                                                   post_logout_redirect_uri=WIKI_HOME, state="bye"))
    assert r.status_code == 302 and r.headers["Location"] == WIKI_HOME + "?state=bye"
    assert browser.get("/w/acme/settings/security").status_code == 302
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400


def test_end_session_without_hint_asks_first(browser, api, hub):
    from tests.interop.oidc_support import hidden_fields

    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    hub.oidc.backchannel.dispatch = lambda fn: None
    url = "/w/acme/oauth2/logout?" + _qs(client_id="wiki", post_logout_redirect_uri=WIKI_HOME, state="bye")
    r = browser.get(url)
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and "Sign out of idhub?" in page and "Wiki" in page
    assert "Location" not in r.headers and r.headers["Cache-Control"] == "no-store"
    fields = hidden_fields(page)
    assert fields["client_id"] == "wiki" and fields["post_logout_redirect_uri"] == WIKI_HOME
    assert fields["state"] == "bye" and fields["confirm"] == "1" and fields["csrf_token"]
    assert browser.get("/w/acme/settings/security").status_code == 200  # still signed in
    # a cross-site POST (no token, or a wrong one) does not sign out
    for bad in ({}, {"csrf_token": "x" * 64}):
        r = browser.post("/w/acme/oauth2/logout", {**fields, **bad, "csrf_token": bad.get("csrf_token", "")})
        assert r.status_code == 400 and "Location" not in r.headers
        assert "Traceback" not in r.get_data(as_text=True)
    # a POST without the confirmation (like a GET) only shows the page
    r = browser.post("/w/acme/oauth2/logout", {"client_id": "wiki"})
    assert r.status_code == 200 and "Sign out of idhub?" in r.get_data(as_text=True)
    assert browser.get("/w/acme/settings/security").status_code == 200
    # the user presses "Sign out": signed out, back to the registered address with the state
    r = browser.post("/w/acme/oauth2/logout", fields)
    # a page that navigates to the app (a redirect after a form POST is blocked by CSP form-action 'self')
    assert r.status_code == 200 and "Location" not in r.headers
    target = WIKI_HOME + "?state=bye"
    assert f'<meta http-equiv="refresh" content="0;url={target}">' in r.get_data(as_text=True)
    assert browser.get("/w/acme/settings/security").status_code == 302
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400
    from sqlalchemy import select

    from idp.audit import AuditEvent

    with hub.db() as db:
        assert "oidc.end_session" in set(db.scalars(select(AuditEvent.type)))
    # signed out already: nothing to confirm
    r = browser.get("/w/acme/oauth2/logout")
    assert r.status_code == 200 and "Signed out" in r.get_data(as_text=True)


def test_end_session_post_logout_redirect_needs_a_registered_client(browser):
    code_flow(browser)
    bad = [{"post_logout_redirect_uri": WIKI_HOME},  # no client named: never redirected
           {"client_id": "nope", "post_logout_redirect_uri": WIKI_HOME},
           {"client_id": "spa", "post_logout_redirect_uri": WIKI_HOME},  # another client's address
           {"client_id": "wiki", "post_logout_redirect_uri": "https://evil.example/"}]
    for params in bad:
        for r in (browser.get("/w/acme/oauth2/logout?" + _qs(**params)),
                  browser.post("/w/acme/oauth2/logout", {**params, "confirm": "1",
                                                        "csrf_token": browser.csrf(
                                                            browser.get("/w/acme/settings/security")
                                                            .get_data(as_text=True))})):
            assert r.status_code == 400 and "Location" not in r.headers, params
    assert browser.get("/w/acme/settings/security").status_code == 200
    # without any redirect: the confirmation, then the "Signed out" page
    r = browser.get("/w/acme/oauth2/logout")
    assert "Sign out of idhub?" in r.get_data(as_text=True)
    r = browser.post("/w/acme/oauth2/logout", {"confirm": "1", "csrf_token": browser.csrf()})
    assert r.status_code == 200 and "You have signed out" in r.get_data(as_text=True)
    assert browser.get("/w/acme/settings/security").status_code == 302


def test_end_session_hint_of_another_session_asks_first(settings):
    app = make_oidc_app(settings)
    hub = app.extensions["idhub"]
    hub.oidc.backchannel.dispatch = lambda fn: None
    first, second = Browser(app), Browser(app)
    code, verifier = code_flow(first)
    tok = redeem(app.test_client(), code, verifier).get_json()
    code_flow(second)
    # the hint is about the first browser's session: the second browser is asked, not signed out
    r = second.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=tok["id_token"], post_logout_redirect_uri=WIKI_HOME))
    assert r.status_code == 200 and "Sign out of idhub?" in r.get_data(as_text=True)
    assert second.get("/w/acme/settings/security").status_code == 200


def _qs(**kw) -> str:
    from urllib.parse import urlencode

    return urlencode(kw)


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_forged_id_token_hints_refused(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    real = decode_id_token(api, tok["id_token"])
    claims = dict(real)
    # alg none
    none_token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."
    # HS256 signed with our public key (alg confusion)
    import hashlib
    import hmac

    pub_pem = JsonWebKey.import_key(api.get("/w/acme/oauth2/jwks").get_json()["keys"][0]).as_pem()
    signing_input = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64(claims)
    sig = base64.urlsafe_b64encode(hmac.new(pub_pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    hs_token = signing_input + "." + sig.decode()
    # a token signed by another workspace's key
    other_key = hub.oidc.keys.signing_key(_ws(hub, "other").id)[1]
    from joserfc import jwt as jose_jwt

    foreign = jose_jwt.encode({"alg": "RS256"}, claims, other_key)
    for bad in (none_token, hs_token, foreign, tok["id_token"][:-4] + "AAAA"):
        r = browser.get("/w/acme/oauth2/logout?" + _qs(id_token_hint=bad, post_logout_redirect_uri=WIKI_HOME))
        assert r.status_code == 400 and "Location" not in r.headers, bad
        assert hub.oidc.verify(_ws(hub, "acme"), bad) is None
    assert browser.get("/w/acme/settings/security").status_code == 200  # still signed in
    # and the same forgeries as bearer tokens
    for bad in (none_token, hs_token, foreign):
        assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + bad}).status_code == 401


def _ws(hub, slug):
    from idp.accounts import workspace_by_slug

    with hub.db() as db:
        return workspace_by_slug(db, slug)


BAD_REDIRECTS = [
    WIKI_CB + "/",
    "http://127.0.0.1:8081/Callback",
    "HTTP://127.0.0.1:8081/callback",
    "http://127.0.0.1:8081/callback/../callback",
    "http://127.0.0.1:8081/x/../callback",
    "http://evil.example@127.0.0.1:8081/callback",
    "http://127.0.0.1:8081@evil.example/callback",
    "http://127.0.0.1:8081.evil.example/callback",
    "http://evil127.0.0.1:8081/callback",
    WIKI_CB + "?x=1",
    WIKI_CB + "#frag",
    WIKI_CB + "%20",
    "http://127.0.0.1:80810/callback",
    "javascript:alert(1)//http://127.0.0.1:8081/callback",
    "",
    "https://evil.example/callback",
]


@pytest.mark.parametrize("redirect_uri", BAD_REDIRECTS)
def test_bad_redirect_uri_never_redirected_to(browser, redirect_uri):
    browser.get("/w/acme/login")
    _, challenge = pkce()
    for signed_in in (False, True):
        if signed_in:
            from tests.conftest import ALICE_PW

            browser.login("acme", ALICE, ALICE_PW)
        r = browser.get(authorize_path(redirect_uri=redirect_uri, challenge=challenge))
        assert r.status_code == 400, (redirect_uri, r.status_code, r.headers.get("Location"))
        assert "Location" not in r.headers
        assert "error" in r.get_data(as_text=True).lower() or "not valid" in r.get_data(as_text=True)


def test_unknown_client_never_redirected_to(browser):
    _, challenge = pkce()
    r = browser.get(authorize_path(client_id="nope", challenge=challenge))
    assert r.status_code == 400 and "Location" not in r.headers
    r = browser.get(authorize_path(ws="other", client_id="spa", redirect_uri=SPA_CB, challenge=challenge))
    assert r.status_code == 400 and "Location" not in r.headers


@pytest.mark.parametrize("method", [None, "plain", "s256", "S512"])
def test_pkce_required_s256_only(browser, method):
    verifier, challenge = pkce()
    browser.login("acme", ALICE, __import__("tests.conftest").conftest.ALICE_PW)
    if method is None:
        paths = [authorize_path(challenge=None), authorize_path(challenge=challenge, method=None)]
    else:
        paths = [authorize_path(challenge=challenge if method != "plain" else verifier, method=method)]
    for path in paths:
        r = browser.get(path)
        assert r.status_code == 302
        q = query(r.headers["Location"])
        assert r.headers["Location"].startswith(WIKI_CB + "?")
        assert q["error"] == "invalid_request" and "code" not in q and q["iss"] == ISS


def test_pkce_verifier_checked(browser, api):
    code, verifier = code_flow(browser)
    r = redeem(api, code, pkce()[0])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    code, verifier = code_flow(browser)
    r = redeem(api, code, "")
    assert r.status_code == 400


def test_code_reuse_revokes_tokens(browser, api):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    r = redeem(api, code, verifier)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}
                   ).status_code == 401
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400


def test_code_bound_to_client_and_redirect_uri(browser, api):
    code, verifier = code_flow(browser)
    r = redeem(api, code, verifier, auth=basic("strict", "x" * 40))
    assert r.status_code == 400 and r.get_json()["error"] in ("invalid_grant", "unauthorized_client")
    r = redeem(api, code, verifier, redirect_uri=WIKI_CB + "/")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_parallel_code_redemption_exactly_one_wins(browser, app):
    code, verifier = code_flow(browser)
    results = []
    barrier = threading.Barrier(16)

    def worker():
        client = app.test_client()
        barrier.wait()
        r = redeem(client, code, verifier)
        results.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [400] * 15, results


def test_wrong_client_authentication(browser, api):
    code, verifier = code_flow(browser)
    for auth in (basic("wiki", "wrong"), basic("wiki", ""), basic("nope", "x"), {"Authorization": "Basic !!!"},
                 {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
                 {"Authorization": "Bearer abc"}, {}):
        r = redeem(api, code, verifier, auth=auth)
        assert r.status_code in (400, 401) and r.get_json()["error"] in ("invalid_client", "invalid_request"), auth
    # two methods at once
    r = redeem(api, code, verifier, client_secret=WIKI_SECRET)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"
    # the confidential client cannot pretend to be public
    r = redeem(api, code, verifier, auth={}, client_id="wiki")
    assert r.status_code == 401
    # after all these failures, the code is still good for the real client
    assert redeem(api, code, verifier).status_code == 200


def test_tokens_of_one_workspace_refused_by_another(browser, api):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    other = basic("wiki", OTHER_SECRET)
    assert api.get("/w/other/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}
                   ).status_code == 401
    r = api.post("/w/other/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=other)
    assert r.status_code == 400
    r = api.post("/w/other/oauth2/introspect", data={"token": tok["access_token"]}, headers=other)
    assert r.get_json() == {"active": False}
    # the acme secret is not the other workspace's
    r = api.post("/w/other/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH)
    assert r.status_code == 401
    # a code of acme at other's token endpoint
    code, verifier = code_flow(browser)
    assert redeem_at(api, "other", code, verifier, other).status_code == 400
    assert redeem(api, code, verifier).status_code == 200


def redeem_at(api, ws, code, verifier, auth):
    return api.post(f"/w/{ws}/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": WIKI_CB, "code_verifier": verifier}, headers=auth)


def test_prompt_none_and_login(browser):
    _, challenge = pkce()
    browser.get("/w/acme/login")
    r = browser.get(authorize_path(challenge=challenge, prompt="none", state="abc"))
    q = query(r.headers["Location"])
    assert r.headers["Location"].startswith(WIKI_CB) and q["error"] == "login_required" and q["state"] == "abc"
    code, _ = code_flow(browser)
    r = browser.get(authorize_path(challenge=challenge, prompt="none"))
    assert "code" in query(r.headers["Location"])
    # prompt=login sends a signed-in browser back to the sign-in page
    r = browser.get(authorize_path(challenge=challenge, prompt="login"))
    assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/login?")
    q = query(r.headers["Location"])
    assert q["prompt"] == "login" and q["app"] == "wiki" and "prompt" not in query(q["next"])
    # max_age=0 too
    r = browser.get(authorize_path(challenge=challenge, max_age="0"))
    assert r.headers["Location"].startswith("/w/acme/login?")
    r = browser.get(authorize_path(challenge=challenge, max_age="3600"))
    assert r.headers["Location"].startswith(WIKI_CB)
    r = browser.get(authorize_path(challenge=challenge, max_age="-1"))
    assert query(r.headers["Location"])["error"] == "invalid_request"


def test_app_requiring_mfa_steps_up(browser):
    code, _ = code_flow(browser)  # signed in with a password only
    _, challenge = pkce()
    r = browser.get(authorize_path(client_id="strict", redirect_uri="https://strict.example/cb", challenge=challenge))
    # straight to the second step of the sign-in (here: setting up a factor), not the password again
    assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/login/enroll?flow="), r.headers
    assert browser.get(r.headers["Location"]).status_code == 200
    from idp.flow import FlowManager

    app = browser.client.application
    flow = FlowManager(app.extensions["idhub"].stores.flows).store.get(query(r.headers["Location"])["flow"])
    assert flow["app"] == "strict" and flow["state"] == "enroll" and flow["next"].startswith("/w/acme/oauth2/resume?")
    r = browser.get(authorize_path(client_id="strict", redirect_uri="https://strict.example/cb", challenge=challenge,
                                   prompt="none"))
    assert query(r.headers["Location"])["error"] == "interaction_required"


def test_policy_deny_ip_allowlist(settings):
    app = make_oidc_app(settings, oidc_config({"ip_allowlist": ["10.0.0.0/8"]}))
    inside = Browser(app, ip="10.1.2.3")
    code, verifier = code_flow(inside)
    # the same session from outside the allowlist
    inside.ip = "192.0.2.7"
    _, challenge = pkce()
    r = inside.get(authorize_path(challenge=challenge, state="zz"))
    assert r.status_code == 302
    q = query(r.headers["Location"])
    assert r.headers["Location"].startswith(WIKI_CB + "?") and q["error"] == "access_denied" and q["state"] == "zz"
    assert "code" not in q


def _refresh(app, refresh_token, ip="127.0.0.1", auth=None):
    client = app.test_client()
    return client.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                       headers=auth or WIKI_AUTH, environ_base={"REMOTE_ADDR": ip})


@pytest.mark.parametrize("where", ["workspace", "app"])
def test_refresh_not_bound_to_the_allowlist_but_authorization_is(settings, where):
    """The app's server refreshes from its own address: the allowlist is a browser rule, not a refresh rule."""
    app = make_oidc_app(settings, oidc_config({"ip_allowlist": ["10.0.0.0/8"]} if where == "workspace" else None))
    if where == "app":
        # the per-app allowlist comes from the app policy look-ups: give wiki one
        hub = app.extensions["idhub"]
        hub.app_policy_lookups.insert(0, lambda ws, a: {"ip_allowlist": ["10.0.0.0/8"]} if a == "wiki" else None)
    inside = Browser(app, ip="10.1.2.3")
    code, verifier = code_flow(inside)
    tok = app.test_client().post("/w/acme/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": WIKI_CB, "code_verifier": verifier},
        headers=WIKI_AUTH, environ_base={"REMOTE_ADDR": "198.51.100.20"}).get_json()
    assert "refresh_token" in tok, tok
    # the app's server, outside the allowlist, refreshes twice (rotation)
    r = _refresh(app, tok["refresh_token"], ip="198.51.100.20")
    assert r.status_code == 200, r.get_json()
    r = _refresh(app, r.get_json()["refresh_token"], ip="198.51.100.20")
    assert r.status_code == 200, r.get_json()
    # the browser outside the allowlist is still refused a new authorization
    inside.ip = "192.0.2.7"
    _, challenge = pkce()
    r = inside.get(authorize_path(challenge=challenge, state="zz"))
    q = query(r.headers["Location"])
    assert q["error"] == "access_denied" and "code" not in q


def test_refresh_still_checks_session_account_and_app_mfa(settings):
    app = make_oidc_app(settings, oidc_config({"ip_allowlist": ["10.0.0.0/8"]}))
    hub = app.extensions["idhub"]
    inside = Browser(app, ip="10.1.2.3")
    toks = []
    for _ in range(3):
        code, verifier = code_flow(inside)
        toks.append(app.test_client().post("/w/acme/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": WIKI_CB, "code_verifier": verifier},
            headers=WIKI_AUTH, environ_base={"REMOTE_ADDR": "10.1.2.3"}).get_json())
    from sqlalchemy import select, update

    from idp.audit import AuditEvent
    from idp.models import User
    from oidc.models import OidcClient

    def app_mfa(required: bool) -> None:  # the client's row, read at every token request (never cached)
        with hub.db() as db:
            db.execute(update(OidcClient).where(OidcClient.client_id == "wiki").values(require_mfa=required))
            db.commit()

    # the app now requires MFA: a password-only grant cannot be refreshed (nobody to prompt), and it is audited
    app_mfa(True)
    r = _refresh(app, toks[0]["refresh_token"], ip="198.51.100.20")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    app_mfa(False)

    with hub.db() as db:
        types = list(db.scalars(select(AuditEvent.type)))
    assert "oidc.refresh.denied" in types
    # a disabled account cannot refresh from anywhere
    with hub.db() as db:
        db.execute(update(User).where(User.email == ALICE).values(active=False))
        db.commit()
    assert _refresh(app, toks[1]["refresh_token"], ip="10.1.2.3").status_code == 400
    with hub.db() as db:
        db.execute(update(User).where(User.email == ALICE).values(active=True))
        db.commit()
    # the session ended in idhub: no refresh
    r = _refresh(app, toks[2]["refresh_token"], ip="198.51.100.20")
    assert r.status_code == 200, r.get_json()
    with hub.db() as db:
        alice_id = db.scalar(select(User.id).where(User.email == ALICE))
    assert hub.sessions.end_all(alice_id, "test")
    r = _refresh(app, r.get_json()["refresh_token"], ip="198.51.100.20")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_disabled_user_cannot_refresh(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    from sqlalchemy import update

    from idp.models import User

    with hub.db() as db:
        db.execute(update(User).where(User.email == ALICE).values(active=False))
        db.commit()
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400


def test_hostile_input_never_500(browser, api):
    browser.login("acme", BOB, BOB_PW)
    huge = "a" * 5000
    for path in ("/w/acme/oauth2/authorize?client_id=" + huge,
                 "/w/acme/oauth2/authorize?client_id=wiki&client_id=spa&redirect_uri=" + WIKI_CB,
                 "/w/acme/oauth2/authorize?response_type=code&client_id=wiki&redirect_uri=" + WIKI_CB
                 + "&redirect_uri=" + WIKI_CB,
                 "/w/acme/oauth2/authorize?%00=%ff&client_id=%ff%fe",
                 "/w/acme/oauth2/authorize",
                 "/w/acme/oauth2/logout?id_token_hint=" + huge,
                 "/w/acme/oauth2/logout?id_token_hint=a.b.c&post_logout_redirect_uri=javascript:alert(1)",
                 "/w/acme/oauth2/logout?id_token_hint=eyJhbGciOiJub25lIn0.e30.&client_id=wiki"):
        r = browser.get(path)
        assert r.status_code == 400 and "Location" not in r.headers, (path, r.status_code)
    for data in ({"grant_type": "authorization_code", "code": huge},
                 "grant_type=authorization_code&code=%ff%fe%00&redirect_uri=%ED%A0%80&code_verifier=%c0",
                 {"grant_type": ["refresh_token", "client_credentials"]},
                 {"grant_type": "refresh_token", "refresh_token": huge},
                 {"grant_type": "refresh_token"},
                 {"grant_type": "authorization_code"},
                 {"grant_type": huge},
                 {}):
        kw = {"content_type": "application/x-www-form-urlencoded"} if isinstance(data, str) else {}
        r = api.post("/w/acme/oauth2/token", data=data, headers=WIKI_AUTH, **kw)
        assert 400 <= r.status_code < 500 and r.is_json and "error" in r.get_json(), (data, r.status_code)
    r = api.post("/w/acme/oauth2/token", data="{not json", content_type="application/json", headers=WIKI_AUTH)
    assert 400 <= r.status_code < 500 and r.get_json()["error"]
    r = api.post("/w/acme/oauth2/token", data={"x": "y" * 300_000}, headers=WIKI_AUTH)
    assert r.status_code == 413 and r.get_json()["error"]
    assert api.get("/w/acme/oauth2/token").status_code == 405
    for ep in ("revoke", "introspect"):
        r = api.post(f"/w/acme/oauth2/{ep}", data={"token": huge}, headers=WIKI_AUTH)
        assert r.status_code in (200, 400), r.status_code
        r = api.post(f"/w/acme/oauth2/{ep}", data={}, headers=WIKI_AUTH)
        assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"
    r = api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + huge})
    assert r.status_code == 401


def test_key_rotation_keeps_old_key_published(browser, api, hub):
    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    old_kid = api.get("/w/acme/oauth2/jwks").get_json()["keys"][0]["kid"]
    ws = _ws(hub, "acme")
    new_kid = hub.oidc.keys.rotate(ws.id)
    kids = [k["kid"] for k in api.get("/w/acme/oauth2/jwks").get_json()["keys"] if k["alg"] == "RS256"]
    assert kids == [new_kid, old_kid]
    # old tokens still verify; new ones are signed with the new key
    assert api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}
                   ).status_code == 200
    code, verifier = code_flow(browser)
    tok2 = redeem(api, code, verifier).get_json()
    assert JsonWebToken(["RS256"]).decode(tok2["id_token"], jwks(api)).header["kid"] == new_kid
    # after the overlap the old key leaves the JWKS
    from datetime import timedelta

    real = hub.clock
    later = real() + timedelta(days=3)
    hub.clock = lambda: later
    try:
        assert [k["kid"] for k in hub.oidc.keys.jwks(ws.id)["keys"] if k["alg"] == "RS256"] == [new_kid]
    finally:
        hub.clock = real


ES_CB = "https://es.example/cb"


def _es_app(settings):
    from tests.interop.oidc_support import APPS

    cfg = oidc_config()
    cfg["workspaces"][0]["apps"].append(
        {"slug": "es", "name": "ES app", "protocol": "oidc", "client_id": "es", "client_secret": "e" * 40,
         "redirect_uris": [ES_CB], "id_token_signed_response_alg": "ES256",
         "grant_types": ["authorization_code", "refresh_token"]})
    assert all("id_token_signed_response_alg" not in a for a in APPS)
    return make_oidc_app(settings, cfg)


def test_es256_id_tokens_for_the_client_that_asks(settings):
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    app = _es_app(settings)
    api, browser = app.test_client(), Browser(app)
    code, verifier = code_flow(browser, client_id="es", redirect_uri=ES_CB)
    tok = redeem(api, code, verifier, auth=basic("es", "e" * 40), redirect_uri=ES_CB).get_json()
    keyset = KeySet.import_key_set(api.get("/w/acme/oauth2/jwks").get_json())
    es_kid = next(k["kid"] for k in api.get("/w/acme/oauth2/jwks").get_json()["keys"] if k["alg"] == "ES256")
    decoded = jose_jwt.decode(tok["id_token"], keyset, algorithms=["ES256"])
    assert decoded.header["alg"] == "ES256" and decoded.header["kid"] == es_kid
    assert decoded.claims["aud"] == "es" and decoded.claims["iss"] == ISS
    # the RS256 verifier refuses it (no algorithm confusion), and access tokens stay RS256
    with pytest.raises(Exception):
        jose_jwt.decode(tok["id_token"], keyset, algorithms=["RS256"])
    assert jose_jwt.decode(tok["access_token"], keyset, algorithms=["RS256"]).header["alg"] == "RS256"
    # an ES256 ID token is a valid id_token_hint; the other clients still get RS256
    hub = app.extensions["idhub"]
    assert hub.oidc.verify(_ws(hub, "acme"), tok["id_token"], typ="jwt")["aud"] == "es"
    code, verifier = code_flow(browser)
    wiki_id_token = redeem(api, code, verifier).get_json()["id_token"]
    assert jose_jwt.decode(wiki_id_token, keyset, algorithms=["RS256"]).header["alg"] == "RS256"
    # the refreshed ID token is ES256 too
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=basic("es", "e" * 40))
    assert r.status_code == 200, r.get_json()
    assert jose_jwt.decode(r.get_json()["id_token"], keyset, algorithms=["ES256"]).header["alg"] == "ES256"


def test_es256_key_rotation_with_overlap(settings):
    app = _es_app(settings)
    hub = app.extensions["idhub"]
    api, browser = app.test_client(), Browser(app)
    ws = _ws(hub, "acme")
    old = [k["kid"] for k in api.get("/w/acme/oauth2/jwks").get_json()["keys"] if k["alg"] == "ES256"]
    rsa_before = [k["kid"] for k in api.get("/w/acme/oauth2/jwks").get_json()["keys"] if k["alg"] == "RS256"]
    new = hub.oidc.keys.rotate(ws.id, "ES256")
    keys = api.get("/w/acme/oauth2/jwks").get_json()["keys"]
    assert [k["kid"] for k in keys if k["alg"] == "ES256"] == [new, *old]
    assert [k["kid"] for k in keys if k["alg"] == "RS256"] == rsa_before  # RSA untouched
    from oidc.models import OidcKey

    with hub.db() as db:
        row = db.get(OidcKey, new)
        assert row.alg == "ES256" and row.private_enc.startswith("v1:") and "PRIVATE" not in row.private_enc
    code, verifier = code_flow(browser, client_id="es", redirect_uri=ES_CB)
    tok = redeem(api, code, verifier, auth=basic("es", "e" * 40), redirect_uri=ES_CB).get_json()
    assert json.loads(base64.urlsafe_b64decode(tok["id_token"].split(".")[0] + "=="))["kid"] == new


def test_id_token_alg_validated_in_the_config_file():
    from idp.configfile import ConfigError, validate

    cfg = oidc_config()
    cfg["workspaces"][0]["apps"][0]["id_token_signed_response_alg"] = "HS256"
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert any("apps[0].id_token_signed_response_alg: must be RS256 or ES256" in e for e in exc.value.errors)
    cfg["workspaces"][0]["apps"][0]["id_token_signed_response_alg"] = "none"
    with pytest.raises(ConfigError):
        validate(cfg)
    cfg["workspaces"][0]["apps"][0]["id_token_signed_response_alg"] = "ES256"
    validate(cfg)


def test_apply_oidc_apps_upserts(hub):
    from sqlalchemy import select

    from oidc.config import apply_oidc_apps, check_secret
    from oidc.models import OidcClient

    ws = _ws(hub, "acme")
    with hub.db() as db:
        apply_oidc_apps(db, ws, [{"slug": "wiki", "name": "Wiki 2", "protocol": "oidc", "client_id": "wiki",
                                  "client_secret": "new-" + "n" * 40, "redirect_uris": ["https://w/cb"]}])
        db.commit()
        rows = {r.client_id: r for r in db.scalars(select(OidcClient).where(OidcClient.workspace_id == ws.id))}
    assert set(rows) == {"wiki", "spa", "poster", "strict"}  # removed apps are left alone
    wiki = rows["wiki"]
    assert wiki.name == "Wiki 2" and wiki.redirect_uris == ["https://w/cb"]
    assert check_secret(wiki.secret_hash, "new-" + "n" * 40) and not check_secret(wiki.secret_hash, WIKI_SECRET)
    assert "n" * 40 not in (wiki.secret_hash or "")
    assert rows["spa"].secret_hash is None and rows["spa"].token_endpoint_auth_method == "none"
    assert hub.app_policies(ws, "strict") == {"require_mfa": True}
    assert hub.app_policies(ws, "wiki") == {}


def _count(hub, model) -> int:
    from sqlalchemy import func, select

    with hub.db() as db:
        return db.scalar(select(func.count()).select_from(model))


def test_purge_removes_expired_rows_and_keeps_what_detects_replays(browser, api, hub):
    from datetime import timedelta

    from oidc.models import OidcAccessToken, OidcCode, OidcKey, OidcRefreshToken

    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    new = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                   headers=WIKI_AUTH).get_json()  # the first refresh token is now used
    assert api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                    headers=WIKI_AUTH).status_code == 200
    ws = _ws(hub, "acme")
    new_kid = hub.oidc.keys.rotate(ws.id)
    hub.stores.one_time.add("oidc-jti:test", "1", 60)
    # now: nothing is expired yet, nothing goes (the used refresh token stays: replay detection)
    counts = hub.oidc.purge()
    assert counts["refresh_tokens"] == 0 and counts["keys"] == 0 and counts["codes"] == 0
    assert counts["access_tokens"] == 0
    # 2 hours later: the code (1 h after its expiry) and the access tokens (5 min) have expired
    real = hub.clock
    later = real() + timedelta(hours=2)
    hub.clock = lambda: later
    try:
        counts = hub.oidc.purge()
        assert counts["codes"] == 1 and counts["access_tokens"] == 2 and counts["refresh_tokens"] == 0
        assert _count(hub, OidcCode) == 0 and _count(hub, OidcAccessToken) == 0
        assert _count(hub, OidcRefreshToken) == 2
        # the used refresh token is still there: presenting it again still revokes the family
        r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": tok["refresh_token"]}, headers=WIKI_AUTH)
        assert r.status_code == 400
        r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": new["refresh_token"]}, headers=WIKI_AUTH)
        assert r.status_code == 400  # revoked by the replay
    finally:
        hub.clock = real
    # 3 days later: the revoked family (kept a day) and the retired key (2-day overlap) go
    later = real() + timedelta(days=3)
    hub.clock = lambda: later
    try:
        counts = hub.oidc.purge()
        assert counts["refresh_tokens"] == 2 and _count(hub, OidcRefreshToken) == 0
        assert counts["keys"] == 1
        with hub.db() as db:
            kids = [k.kid for k in db.query(OidcKey).filter(OidcKey.workspace_id == ws.id)]
        assert kids == [new_kid]  # the current key stays
    finally:
        hub.clock = real
    from sqlalchemy import select

    from idp.audit import AuditEvent

    with hub.db() as db:
        assert "oidc.purge" in set(db.scalars(select(AuditEvent.type)))


def test_purge_of_expired_one_time_values(hub):
    from datetime import UTC, datetime, timedelta

    hub.stores.one_time.add("oidc-jti:a", "1", 60)
    assert hub.oidc.purge()["one_time_values"] == 0
    from oidc.purge import purge

    counts = purge(hub.db, datetime.now(UTC) + timedelta(minutes=5), hub.stores.one_time)
    assert counts["one_time_values"] == 1


def test_opportunistic_purge_from_the_token_endpoint(browser, api, hub):
    from datetime import timedelta

    from oidc.models import OidcAccessToken

    code, verifier = code_flow(browser)
    assert redeem(api, code, verifier).status_code == 200  # a user's access token: recorded
    runs = []
    hub.oidc.purge_runner = lambda fn: (runs.append(1), fn())
    real = hub.clock
    later = real() + timedelta(hours=1)
    hub.clock = lambda: later
    try:
        # not due yet: nothing runs
        assert api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                        headers=WIKI_AUTH).status_code == 200
        assert runs == [] and _count(hub, OidcAccessToken) == 1
        hub.oidc._next_purge = 0  # the interval has passed
        assert api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                        headers=WIKI_AUTH).status_code == 200
        assert runs == [1]
        assert _count(hub, OidcAccessToken) == 0  # the user's token had expired "later"
        # and not again at the next request
        api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH)
        assert runs == [1]
    finally:
        hub.clock = real


def test_purge_cli(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    env = {**os.environ, "IDHUB_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "IDHUB_SECRET_KEY": "k" * 48,
           "IDHUB_OUTBOX_DIR": str(tmp_path / "outbox"), "IDHUB_LOG_LEVEL": "WARNING"}
    idhub = str(Path(sys.executable).parent / "idhub")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(oidc_config()))
    for args in (["db", "upgrade"], ["apply", str(tmp_path / "c.yaml")]):
        r = subprocess.run([idhub, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([idhub, "oidc", "purge"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "codes: 0" in r.stdout and "refresh tokens: 0" in r.stdout and "one time values: 0" in r.stdout


def test_a_changed_client_secret_stops_working_at_once(api, hub):
    """No per-process cache of clients: a secret rotated (admin API, config file) is refused on the next request."""
    from sqlalchemy import update

    from oidc.config import secret_hash
    from oidc.models import OidcClient

    assert api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                    headers=WIKI_AUTH).status_code == 200
    new = "new-" + "n" * 40
    with hub.db() as db:
        db.execute(update(OidcClient).where(OidcClient.client_id == "wiki").values(secret_hash=secret_hash(new)))
        db.commit()
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"}, headers=WIKI_AUTH)
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    assert api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                    headers=basic("wiki", new)).status_code == 200


def test_refresh_reads_the_workspace_policies_fresh(browser, api, hub):
    """The token endpoint remembers a workspace's identity for a few seconds, never its policies."""
    from sqlalchemy import update

    from idp.models import Workspace

    code, verifier = code_flow(browser)
    tok = redeem(api, code, verifier).get_json()
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 200  # the workspace is now cached by the token endpoint
    ws = _ws(hub, "acme")
    with hub.db() as db:
        db.execute(update(Workspace).where(Workspace.id == ws.id).values(
            policies={**(ws.policies or {}), "require_mfa": True}))
        db.commit()
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token",
                                               "refresh_token": r.get_json()["refresh_token"]}, headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"  # a password-only grant
