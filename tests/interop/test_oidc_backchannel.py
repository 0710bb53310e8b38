"""Back-channel logout to a real receiver, with the sessions driven in real headless Chromium.

The app (``wiki``) registers ``backchannel_logout_uri`` pointing at a small HTTP server run by this test. The
user signs in to the app in one browser context; in another context the same user signs in to the security page
and ends the app's session (its row's **End** button, or **End all sessions**). The receiver must get a logout
token that validates against our JWKS (OpenID Connect Back-Channel Logout 1.0, section 2.4), and the app's
refresh token must stop working.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import ALICE, ALICE_PW
from tests.interop.oidc_support import (
    WIKI_CB,
    WIKI_SECRET,
    Receiver,
    authorize_path,
    live_oidc_hub,
    oidc_config,
    pkce,
)

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
pytestmark = pytest.mark.browser


def sign_in_page(page, email=ALICE, password=ALICE_PW):
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


@pytest.mark.parametrize("how", ["End", "End all sessions"])
def test_ending_the_session_notifies_the_app(how, browser):
    with Receiver() as receiver:
        config = oidc_config()
        wiki = next(a for a in config["workspaces"][0]["apps"] if a["slug"] == "wiki")
        wiki["backchannel_logout_uri"] = receiver.url
        with live_oidc_hub(config) as hub:
            contexts = []
            try:
                # 1. the user signs in to the app (context A) and the app redeems the code
                app_ctx = browser.new_context()
                contexts.append(app_ctx)
                page = app_ctx.new_page()
                hits = []
                page.route(WIKI_CB + "**",
                           lambda route: (hits.append(route.request.url), route.fulfill(status=200, body="app")))
                verifier, challenge = pkce()
                page.goto(hub.url(authorize_path(challenge=challenge, state="bcl", nonce="n-bcl",
                                                 scope="openid email offline_access")))
                sign_in_page(page)
                for _ in range(100):
                    if hits:
                        break
                    page.wait_for_timeout(100)
                assert len(hits) == 1, hits
                code = parse_qs(urlsplit(hits[0]).query)["code"][0]
                tokens = requests.post(hub.url("/w/acme/oauth2/token"), auth=("wiki", WIKI_SECRET), timeout=10,
                                       data={"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": WIKI_CB, "code_verifier": verifier}).json()
                assert tokens.get("refresh_token") and tokens.get("id_token"), tokens
                jwks = KeySet.import_key_set(requests.get(hub.url("/w/acme/oauth2/jwks"), timeout=10).json())
                id_claims = jwt.decode(tokens["id_token"], jwks, algorithms=["RS256"]).claims
                assert not receiver.tokens

                # 2. in another context, the user ends that session from the security page
                sec_ctx = browser.new_context()
                contexts.append(sec_ctx)
                sec = sec_ctx.new_page()
                sec.goto(hub.url("/w/acme/settings/security"))
                sign_in_page(sec)
                sec.wait_for_url("**/settings/security**")
                other = sec.locator("tr[data-session]:not(.current)")
                assert other.count() == 1
                if how == "End":
                    other.get_by_role("button", name="End").click()
                else:
                    sec.get_by_role("button", name="End all sessions").click()
                sec.wait_for_load_state()
                assert sec.locator("tr[data-session]:not(.current)").count() == 0

                # 3. the receiver got a valid logout token
                assert receiver.got.wait(10), hub.log_tail()
                time.sleep(0.3)  # nothing else is coming
                assert len(receiver.tokens) == 1, receiver.requests
                assert receiver.requests[0]["type"] == "application/x-www-form-urlencoded"
                logout = jwt.decode(receiver.tokens[0], jwks, algorithms=["RS256"])
                assert logout.header["typ"] == "logout+jwt" and logout.header["alg"] == "RS256"
                claims = logout.claims
                jwt.JWTClaimsRegistry(iss={"essential": True, "value": hub.url("/w/acme")},
                                      aud={"essential": True, "value": "wiki"}, iat={"essential": True},
                                      exp={"essential": True}, jti={"essential": True}).validate(claims)
                assert claims["events"] == {BACKCHANNEL_EVENT: {}}
                assert claims["sid"] == id_claims["sid"] and claims["sub"] == id_claims["sub"]
                assert "nonce" not in claims
                assert claims["exp"] - claims["iat"] <= 300

                # 4. the app's refresh token no longer works
                r = requests.post(hub.url("/w/acme/oauth2/token"), auth=("wiki", WIKI_SECRET), timeout=10,
                                  data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
                assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
                # and the browser of context A is signed out of idhub
                page.goto(hub.url("/w/acme/settings/security"))
                assert "/login" in page.url
            finally:
                for ctx in contexts:
                    ctx.close()



def test_logout_reaches_apps_whose_access_tokens_were_purged(browser):
    """Access tokens live 5 minutes and ``idhub oidc purge`` deletes them once expired; the apps of the session
    must still get their logout tokens: wiki (which holds only a refresh token by then) and poster (which only
    ever got an ID token and an access token, no refresh token)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select, update
    from sqlalchemy.orm import sessionmaker

    from idp.db import make_engine
    from oidc.models import OidcAccessToken
    from tests.interop.oidc_support import POST_SECRET

    with Receiver() as receiver:
        config = oidc_config()
        apps = {a["slug"]: a for a in config["workspaces"][0]["apps"]}
        apps["wiki"]["backchannel_logout_uri"] = receiver.url + "?app=wiki"
        apps["poster"]["backchannel_logout_uri"] = receiver.url + "?app=poster"
        poster_cb = receiver.page_url("/poster/cb")  # a real page of the app, added to its redirect URIs
        apps["poster"]["redirect_uris"].append(poster_cb)
        wiki_home = receiver.page_url("/wiki/")
        apps["wiki"]["post_logout_redirect_uris"].append(wiki_home)
        with live_oidc_hub(config) as hub:
            context = browser.new_context()
            try:
                page = context.new_page()
                hits = []
                page.route(WIKI_CB + "**", lambda route: (hits.append(route.request.url),
                                                          route.fulfill(status=200, body="app")))

                def code_for(client_id, redirect_uri, scope, sign_in):
                    hits.clear()
                    receiver.pages.clear()
                    verifier, challenge = pkce()
                    page.goto(hub.url(authorize_path(client_id=client_id, redirect_uri=redirect_uri, scope=scope,
                                                     challenge=challenge)))
                    if sign_in:
                        sign_in_page(page)
                    landed = hits if redirect_uri == WIKI_CB else receiver.pages
                    for _ in range(100):
                        if landed:
                            break
                        page.wait_for_timeout(100)
                    assert len(landed) == 1 and landed[0].startswith(redirect_uri + "?"), landed
                    return parse_qs(urlsplit(landed[0]).query)["code"][0], verifier

                code, verifier = code_for("wiki", WIKI_CB, "openid email offline_access", sign_in=True)
                wiki = requests.post(hub.url("/w/acme/oauth2/token"), auth=("wiki", WIKI_SECRET), timeout=10,
                                     data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": WIKI_CB, "code_verifier": verifier}).json()
                assert wiki.get("refresh_token") and wiki.get("id_token"), wiki
                code, verifier = code_for("poster", poster_cb, "openid email", sign_in=False)
                poster = requests.post(hub.url("/w/acme/oauth2/token"), timeout=10, data={
                    "grant_type": "authorization_code", "code": code, "redirect_uri": poster_cb,
                    "code_verifier": verifier, "client_id": "poster", "client_secret": POST_SECRET}).json()
                assert poster.get("id_token") and "refresh_token" not in poster, poster

                # the access tokens expire (as 5 minutes later) and the operator's purge removes them
                engine = make_engine(hub.database_url)
                try:
                    with sessionmaker(bind=engine)() as db:
                        db.execute(update(OidcAccessToken).values(
                            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
                        db.commit()
                    out = hub.run("oidc", "purge").stdout
                    assert "access tokens: 2" in out, out
                    with sessionmaker(bind=engine)() as db:
                        assert db.scalar(select(func.count()).select_from(OidcAccessToken)) == 0
                finally:
                    engine.dispose()

                # the user signs out through wiki (RP-initiated logout with its id_token_hint)
                receiver.pages.clear()
                page.goto(hub.url("/w/acme/oauth2/logout?" + urlencode(
                    {"id_token_hint": wiki["id_token"], "post_logout_redirect_uri": wiki_home})))
                assert receiver.pages == [wiki_home], receiver.pages

                for _ in range(100):
                    if len(receiver.tokens) >= 2:
                        break
                    time.sleep(0.1)
                time.sleep(0.3)  # nothing else is coming
                assert sorted(r["path"] for r in receiver.requests) == [
                    "/backchannel-logout?app=poster", "/backchannel-logout?app=wiki"], hub.log_tail()
                jwks = KeySet.import_key_set(requests.get(hub.url("/w/acme/oauth2/jwks"), timeout=10).json())
                sid = jwt.decode(wiki["id_token"], jwks, algorithms=["RS256"]).claims["sid"]
                assert jwt.decode(poster["id_token"], jwks, algorithms=["RS256"]).claims["sid"] == sid
                for token in receiver.tokens:
                    logout = jwt.decode(token, jwks, algorithms=["RS256"])
                    assert logout.header["typ"] == "logout+jwt"
                    aud = logout.claims["aud"]
                    assert aud in ("wiki", "poster")
                    jwt.JWTClaimsRegistry(iss={"essential": True, "value": hub.url("/w/acme")},
                                          aud={"essential": True, "value": aud}, iat={"essential": True},
                                          exp={"essential": True}, jti={"essential": True}).validate(logout.claims)
                    assert logout.claims["events"] == {BACKCHANNEL_EVENT: {}} and logout.claims["sid"] == sid
                r = requests.post(hub.url("/w/acme/oauth2/token"), auth=("wiki", WIKI_SECRET), timeout=10,
                                  data={"grant_type": "refresh_token", "refresh_token": wiki["refresh_token"]})
                assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
            finally:
                context.close()
