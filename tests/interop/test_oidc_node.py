"""Interoperability: the openid-client (Node, v6) relying party against a real ``idhub serve``.

It performs discovery, builds the authorization URL (S256 PKCE, state, nonce); this test signs in through the
real pages with ``requests``; then openid-client redeems the code (checking ``iss`` per RFC 9207, the id_token
signature, nonce and claims), fetches userinfo, refreshes (rotation), replays the old refresh token, revokes,
and builds the end-session URL, which the browser then follows.

The test installs the Node peer into tests/interop/node/node_modules when it is missing, and FAILS (not skips)
when node or npm are missing: interoperability is part of the suite.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from tests.conftest import ALICE, ALICE_PW
from tests.interop.oidc_support import (
    BACK_RE,
    WIKI_CB,
    WIKI_HOME,
    WIKI_SECRET,
    hidden_fields,
    live_oidc_hub,
    oidc_config,
    resume_target,
    sign_in_page,
)

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_peer() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the OIDC interoperability test (Node 20+)")
    if not (NODE_DIR / "node_modules" / "openid-client").is_dir():
        cmd = [npm, "ci" if (NODE_DIR / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed:\n{res.stdout}\n{res.stderr}")
    return node


def run_rp(node: str, phase: str, args: dict) -> dict:
    res = subprocess.run([node, "rp.mjs", phase, json.dumps(args)], cwd=NODE_DIR, capture_output=True, text=True,
                         timeout=60)
    try:
        out = json.loads(res.stdout)
    except ValueError:
        out = {"failure": res.stdout}
    assert res.returncode == 0, f"rp.mjs {phase} failed: {out}\n{res.stderr}"
    return out


ES_CB = "http://127.0.0.1:8083/callback"
ES_SECRET = "es-" + "e" * 40


def es_config() -> dict:
    """The usual apps plus one registered with ``id_token_signed_response_alg: ES256``."""
    cfg = oidc_config()
    cfg["workspaces"][0]["apps"].append(
        {"slug": "es", "name": "ES256 app", "protocol": "oidc", "client_id": "es", "client_secret": ES_SECRET,
         "redirect_uris": [ES_CB], "post_logout_redirect_uris": [WIKI_HOME],
         "id_token_signed_response_alg": "ES256", "grant_types": ["authorization_code", "refresh_token"]})
    return cfg


# rp.mjs replays a rotated refresh token at once: that is reuse detection only without the retry grace (a retry
# within IDHUB_OIDC_REFRESH_GRACE seconds gets the same answer: tests/integration/test_oidc.py)
NO_GRACE = {"IDHUB_OIDC_REFRESH_GRACE": "0"}

@pytest.fixture
def live():
    with live_oidc_hub(es_config(), extra_env=NO_GRACE) as hub:
        yield hub


def sign_in(session: requests.Session, url: str, base: str, email: str = ALICE, password: str = ALICE_PW) -> str:
    """Follow idhub's redirects and sign-in forms until it redirects to the app; return that URL."""
    r = session.get(url, allow_redirects=False, timeout=10)
    for _ in range(8):
        if r.status_code == 403 and BACK_RE.search(r.text):  # the no-access page: the person follows its link
            return html.unescape(BACK_RE.search(r.text).group(1))
        assert r.status_code == 302, (r.status_code, r.text[:500])
        loc = urljoin(r.url, r.headers["Location"])
        if not loc.startswith(base):
            return loc
        path = urlsplit(loc).path
        if path.endswith("/login"):
            page = session.get(loc, timeout=10)
            r = session.post(urljoin(base, path), data={**hidden_fields(page.text), "email": email},
                             allow_redirects=False, timeout=10)
            page = session.get(urljoin(base, r.headers["Location"]), timeout=10)
            r = session.post(urljoin(base, "/w/acme/login/password"),
                             data={**hidden_fields(page.text), "password": password}, allow_redirects=False,
                             timeout=10)
            continue
        r = session.get(loc, allow_redirects=False, timeout=10)
        if r.status_code == 200 and path.endswith("/oauth2/resume"):
            r = session.get(urljoin(base, resume_target(r.text)), allow_redirects=False, timeout=10)
    raise AssertionError("too many redirects")


def test_openid_client_interop(live):
    node = node_peer()
    issuer = live.url("/w/acme")
    args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET, "redirect_uri": WIKI_CB,
            "post_logout_redirect_uri": WIKI_HOME}
    started = run_rp(node, "start", args)
    assert started["server"]["issuer"] == issuer
    assert started["url"].startswith(issuer + "/oauth2/authorize?")
    browser = requests.Session()
    callback = sign_in(browser, started["url"], live.base_url)
    assert callback.startswith(WIKI_CB + "?")
    assert parse_qs(urlsplit(callback).query)["iss"] == [issuer]
    out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                   "callback": callback})
    claims = out["claims"]
    assert claims["iss"] == issuer and claims["aud"] == "wiki" and claims["nonce"] == started["nonce"]
    assert claims["email"] == ALICE and claims["amr"] == ["pwd"] and claims["sid"]
    assert out["userinfo"]["sub"] == claims["sub"] and out["userinfo"]["groups"] == ["engineering"]
    assert out["refreshed"]["rotated"] is True and out["refreshed"]["claims"]["sub"] == claims["sub"]
    assert out["replay"] == "invalid_grant"
    assert out["after_replay"] == "invalid_grant"  # the replay revoked the whole family
    assert out["userinfo_after_revocation"] != "accepted"
    # RP-initiated logout with the id_token_hint: signed out, back to the registered URI with the state
    end = out["end_session_url"]
    assert end.startswith(issuer + "/oauth2/logout?")
    r = browser.get(end, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == WIKI_HOME + "?state=bye"
    r = browser.get(live.url("/w/acme/settings/security"), allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_openid_client_es256_client(live):
    """A client registered with ES256: openid-client (configured to require ES256 ID tokens) validates the
    ID token against the EC key of the JWKS — and the same client configured for RS256 refuses it."""
    node = node_peer()
    issuer = live.url("/w/acme")
    args = {"issuer": issuer, "client_id": "es", "client_secret": ES_SECRET, "redirect_uri": ES_CB,
            "post_logout_redirect_uri": WIKI_HOME, "id_token_alg": "ES256"}
    started = run_rp(node, "start", args)
    assert "ES256" in started["server"]["id_token_signing_alg_values_supported"]
    browser = requests.Session()
    callback = sign_in(browser, started["url"], live.base_url)
    assert callback.startswith(ES_CB + "?")
    out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                   "callback": callback})
    assert out["id_token_header"]["alg"] == "ES256"
    jwks = requests.get(live.url("/w/acme/oauth2/jwks"), timeout=10).json()["keys"]
    ec = [k for k in jwks if k["kid"] == out["id_token_header"]["kid"]]
    assert ec and ec[0]["kty"] == "EC" and ec[0]["crv"] == "P-256"
    assert out["claims"]["aud"] == "es" and out["claims"]["nonce"] == started["nonce"]
    assert out["refreshed"]["rotated"] is True and out["refreshed"]["claims"]["sub"] == out["claims"]["sub"]
    # negative control: the peer really checks the algorithm (expecting RS256, it refuses the ES256 ID token)
    args_rs = {**args, "id_token_alg": "RS256"}
    started = run_rp(node, "start", args_rs)
    callback = sign_in(browser, started["url"], live.base_url)
    res = subprocess.run([node, "rp.mjs", "finish", json.dumps({**args_rs, **{k: started[k] for k in (
        "state", "nonce", "verifier")}, "callback": callback})], cwd=NODE_DIR, capture_output=True, text=True,
        timeout=60)
    assert res.returncode != 0 and "alg" in res.stdout, res.stdout


OUTSIDER, OUTSIDER_PW = "ceo@another-company.example", "Quartz-Lantern-Ferry-82"


def test_openid_client_reads_access_denied_for_an_unassigned_user_and_a_code_for_an_assigned_one():
    """``apps[].assigned_groups``: the wiki is assigned to engineering. Bob (no group) signs in at idhub and is
    sent back to the app with ``error=access_denied`` (which openid-client reads as the authorization server's
    refusal); alice (engineering) gets a normal code flow."""
    from tests.conftest import BOB, BOB_PW

    config = oidc_config()
    wiki = next(a for a in config["workspaces"][0]["apps"] if a["slug"] == "wiki")
    wiki["assigned_groups"] = ["engineering"]
    node = node_peer()
    with live_oidc_hub(config, extra_env=NO_GRACE) as hub:
        issuer = hub.url("/w/acme")
        args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET, "redirect_uri": WIKI_CB,
                "post_logout_redirect_uri": WIKI_HOME}
        started = run_rp(node, "start", args)
        callback = sign_in(requests.Session(), started["url"], hub.base_url, BOB, BOB_PW)
        assert callback.startswith(WIKI_CB + "?") and "code=" not in callback
        out = run_rp(node, "callback", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                         "callback": callback})
        assert out["granted"] is False and out["error"] == "access_denied", out
        assert "assign it to you" in out["error_description"]
        started = run_rp(node, "start", args)
        callback = sign_in(requests.Session(), started["url"], hub.base_url)
        out = run_rp(node, "callback", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                         "callback": callback})
        assert out["granted"] is True and out["sub"], out


def test_openid_client_sees_email_verified_only_for_what_idhub_knows():
    """The ID token openid-client validates says ``email_verified: true`` for alice@acme.test (acme claims
    acme.test) and ``false`` for an address outside the workspace's domains that nobody verified — an app that
    links accounts by verified e-mail must not take it for the real owner's. userinfo and the refreshed ID token
    say the same."""
    config = oidc_config()
    config["workspaces"][0]["users"].append({"email": OUTSIDER, "name": "Not the CEO", "password": OUTSIDER_PW})
    node = node_peer()
    with live_oidc_hub(config, extra_env=NO_GRACE) as hub:
        issuer = hub.url("/w/acme")
        args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET, "redirect_uri": WIKI_CB,
                "post_logout_redirect_uri": WIKI_HOME}
        seen = {}
        for email, password in ((ALICE, ALICE_PW), (OUTSIDER, OUTSIDER_PW)):
            started = run_rp(node, "start", args)
            callback = sign_in(requests.Session(), started["url"], hub.base_url, email, password)
            out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                           "callback": callback})
            assert out["claims"]["email"] == out["userinfo"]["email"] == email
            seen[email] = (out["claims"]["email_verified"], out["userinfo"]["email_verified"],
                           out["refreshed"]["claims"]["email_verified"])
    assert seen == {ALICE: (True, True, True), OUTSIDER: (False, False, False)}


@pytest.mark.browser
def test_openid_client_with_chromium(browser):
    """openid-client builds the authorization URL (S256 PKCE, state, nonce); real Chromium signs in at idhub and
    lands on the app's redirect_uri (a real local page); openid-client redeems the code (iss, id_token signature,
    nonce), fetches userinfo, refreshes, revokes and builds the end-session URL, which Chromium follows back to
    the app's registered post-logout page — signed out of idhub."""
    from tests.interop.oidc_support import Receiver

    node = node_peer()
    with Receiver() as app_pages:
        callback_url, home_url = app_pages.page_url("/callback"), app_pages.page_url("/")
        config = oidc_config()
        wiki = next(a for a in config["workspaces"][0]["apps"] if a["slug"] == "wiki")
        wiki["redirect_uris"].append(callback_url)
        wiki["post_logout_redirect_uris"].append(home_url)
        with live_oidc_hub(config, extra_env=NO_GRACE) as hub:
            issuer = hub.url("/w/acme")
            args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET,
                    "redirect_uri": callback_url, "post_logout_redirect_uri": home_url}
            started = run_rp(node, "start", args)
            q = parse_qs(urlsplit(started["url"]).query)
            assert q["code_challenge_method"] == ["S256"] and q["state"] == [started["state"]]
            assert q["nonce"] == [started["nonce"]] and q["redirect_uri"] == [callback_url]
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(started["url"])
                sign_in_page(page, ALICE, ALICE_PW)
                page.wait_for_url(callback_url + "?**")
                assert len(app_pages.pages) == 1, app_pages.pages
                callback = app_pages.pages[0]
                assert parse_qs(urlsplit(callback).query)["iss"] == [issuer]

                out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                               "callback": callback})
                claims = out["claims"]
                assert claims["iss"] == issuer and claims["aud"] == "wiki" and claims["nonce"] == started["nonce"]
                assert claims["email"] == ALICE and claims["amr"] == ["pwd"] and claims["sid"]
                assert out["userinfo"]["sub"] == claims["sub"] and out["userinfo"]["email"] == ALICE
                assert out["refreshed"]["rotated"] is True and out["refreshed"]["claims"]["sub"] == claims["sub"]
                assert out["replay"] == "invalid_grant" and out["after_replay"] == "invalid_grant"
                assert out["userinfo_after_revocation"] != "accepted"

                # the browser follows openid-client's end-session URL: signed out at once (id_token_hint of
                # this very session), back on the app's registered page with the state
                end = out["end_session_url"]
                assert end.startswith(issuer + "/oauth2/logout?")
                app_pages.pages.clear()
                page.goto(end)
                page.wait_for_url(home_url + "?**")
                assert app_pages.pages == [home_url + "?state=bye"], app_pages.pages
                page.goto(hub.url("/w/acme/settings/security"))
                assert "/w/acme/login" in page.url
            finally:
                context.close()


@pytest.mark.browser
def test_openid_client_acr_mfa_step_up_in_chromium(browser):
    """openid-client asks for ``acr_values=urn:idhub:acr:mfa``. Bob has no second factor and nothing requires
    one: in Chromium he signs in with his password, is sent on to set up an authenticator app (the code comes
    from the secret on the page), sees his backup codes, continues — and lands on the app, whose ID token (checked
    by openid-client) carries the MFA acr, also after a refresh."""
    import re

    import pyotp

    from tests.conftest import BOB, BOB_PW
    from tests.interop.oidc_support import Receiver

    node = node_peer()
    with Receiver() as app_pages:
        callback_url = app_pages.page_url("/callback")
        config = oidc_config()
        wiki = next(a for a in config["workspaces"][0]["apps"] if a["slug"] == "wiki")
        wiki["redirect_uris"].append(callback_url)
        with live_oidc_hub(config, extra_env=NO_GRACE) as hub:
            args = {"issuer": hub.url("/w/acme"), "client_id": "wiki", "client_secret": WIKI_SECRET,
                    "redirect_uri": callback_url, "post_logout_redirect_uri": WIKI_HOME}
            started = run_rp(node, "start", {**args, "acr_values": "urn:idhub:acr:mfa"})
            assert parse_qs(urlsplit(started["url"]).query)["acr_values"] == ["urn:idhub:acr:mfa"]
            assert "urn:idhub:acr:mfa" in started["server"]["acr_values_supported"]
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(started["url"])
                sign_in_page(page, BOB, BOB_PW)
                page.wait_for_url(re.compile(r".*/w/acme/login/enroll\?flow="))
                assert page.get_by_role("heading", name="Set up an authenticator app").is_visible()
                secret = page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", "")
                page.get_by_label("Verification code").fill(pyotp.TOTP(secret).now())
                page.get_by_role("button", name="Verify", exact=True).click()
                page.get_by_role("heading", name="Save your backup codes").wait_for()
                assert not app_pages.pages
                page.get_by_role("button", name="Continue").click()
                page.wait_for_url(callback_url + "?**")
                assert len(app_pages.pages) == 1, app_pages.pages
                out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                               "callback": app_pages.pages[0]})
            finally:
                context.close()
    claims = out["claims"]
    assert claims["acr"] == "urn:idhub:acr:mfa" and "otp" in claims["amr"] and "mfa" in claims["amr"]
    assert claims["email"] == BOB and claims["nonce"] == started["nonce"]
    assert out["refreshed"]["claims"]["acr"] == "urn:idhub:acr:mfa"
