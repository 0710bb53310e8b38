"""Back-channel logout to a real receiver, with the sessions driven in real headless Chromium.

The app (``wiki``) registers ``backchannel_logout_uri`` pointing at a small HTTP server run by this test. The
user signs in to the app in one browser context; in another context the same user signs in to the security page
and ends the app's session (its row's **End** button, or **End all sessions**). The receiver must get a logout
token that validates against our JWKS (OpenID Connect Back-Channel Logout 1.0, section 2.4), and the app's
refresh token must stop working.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import ALICE, ALICE_PW
from tests.interop.oidc_support import WIKI_CB, WIKI_SECRET, authorize_path, live_oidc_hub, oidc_config, pkce

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
pytestmark = pytest.mark.browser


class Receiver:
    """An app's back-channel logout endpoint: records every POSTed ``logout_token``."""

    def __init__(self):
        self.tokens: list[str] = []
        self.requests: list[dict] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                outer.requests.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": body})
                outer.tokens += parse_qs(body).get("logout_token", [])
                self.send_response(200)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.got.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/backchannel-logout"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def sign_in_page(page, email=ALICE, password=ALICE_PW):
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


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
