"""The whole path in real Chromium against real peers: a downstream app (node openid-client) asks idhub
(``idhub serve``) to sign someone in → idhub's email page → the upstream IdP's own sign-in page (node
``oidc-provider`` shaped like Okta) → back to idhub → idhub's second factor when the workspace requires it
→ the app redeems the code and gets an ID token whose ``amr`` says how the person signed in."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pyotp
import pytest
from playwright.sync_api import expect

from tests.helpers.live import LiveHub
from tests.helpers.smtp import free_port
from tests.interop.oidc_support import WIKI_CB, WIKI_HOME, WIKI_SECRET, oidc_config
from tests.interop.oidc_upstream.peer import CLIENT_SECRET, PASSWORD, Upstream, okta_shape
from tests.interop.test_oidc_node import node_peer, run_rp

pytestmark = pytest.mark.browser


def hub_config(up_issuer: str, *, trust_mfa: bool) -> dict:
    cfg = oidc_config({"require_mfa": True, "mfa_methods": ["totp", "backup_codes"]})
    cfg["workspaces"][0]["connections"] = [{
        "slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta", "issuer": up_issuer,
        "client_id": "okta-idhub", "client_secret": CLIENT_SECRET, "domains": ["acme.test"],
        "trust_mfa": trust_mfa}]
    return cfg


@pytest.fixture(scope="module")
def peers():
    node = node_peer()
    hub_port, up_port = free_port(), free_port()
    callback = f"http://127.0.0.1:{hub_port}/w/acme/sso/okta/callback"
    with Upstream(okta_shape(up_port, [callback])) as up:
        yield node, hub_port, up


def run(browser, node, hub: LiveHub, *, mfa_upstream: bool, shots: str | None = None) -> tuple[dict, list]:
    issuer = hub.url("/w/acme")
    args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET, "redirect_uri": WIKI_CB,
            "post_logout_redirect_uri": WIKI_HOME}
    started = run_rp(node, "start", args)
    context = browser.new_context()
    hits: list[str] = []
    try:
        page = context.new_page()
        page.route("http://127.0.0.1:8081/**",
                   lambda route: (hits.append(route.request.url), route.fulfill(status=200, body="app")))
        page.goto(started["url"])
        page.get_by_label("Email").fill("ada@acme.test")
        page.get_by_role("button", name="Continue").click()
        # the upstream IdP's own page
        expect(page.get_by_role("heading", name="Okta sign-in")).to_be_visible()
        assert urlsplit(page.url).port != hub.port
        page.get_by_label("Username").fill("ada")
        page.get_by_label("Password").fill(PASSWORD)
        if mfa_upstream:
            page.get_by_label("I confirmed with my second factor").check()
        page.get_by_role("button", name="Sign in upstream").click()
        steps = []
        if not mfa_upstream:  # idhub's own second factor: the workspace requires 2FA, the IdP did none
            expect(page.get_by_role("heading", name=re.compile("authenticator app", re.I))).to_be_visible()
            if shots:
                page.screenshot(path=f"{shots}-idhub-2fa.png", full_page=True)
            secret = page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", "")
            page.get_by_label("Verification code").fill(pyotp.TOTP(secret).now())
            page.get_by_role("button", name="Verify", exact=True).click()
            expect(page.get_by_label("Backup codes")).to_be_visible()
            page.get_by_role("button", name="Continue").click()
            steps.append("totp")
        for _ in range(100):
            if hits:
                break
            page.wait_for_timeout(100)
        assert len(hits) == 1, (hits, page.url, page.content()[:800])
    finally:
        context.close()
    out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                   "callback": hits[0]})
    return out["claims"], steps


def test_okta_then_idhub_2fa_then_the_app(browser, peers, tmp_path):
    node, hub_port, up = peers
    with LiveHub(hub_config(up.issuer, trust_mfa=False), port=hub_port) as hub:
        claims, steps = run(browser, node, hub, mfa_upstream=False, shots=str(tmp_path / "fed"))
        assert steps == ["totp"]
        assert claims["email"] == "ada@acme.test" and claims["aud"] == "wiki"
        assert claims["amr"] == ["pwd", "otp", "mfa"], claims
        assert claims["acr"] == "urn:idhub:acr:mfa"


def test_okta_mfa_trusted_satisfies_require_mfa(browser, peers):
    node, hub_port, up = peers
    with LiveHub(hub_config(up.issuer, trust_mfa=True), port=hub_port) as hub:
        claims, steps = run(browser, node, hub, mfa_upstream=True)
        assert steps == []  # no idhub 2FA: the IdP did MFA and the connection is trusted for it
        assert claims["amr"] == ["pwd", "mfa"], claims
        assert claims["acr"] == "urn:idhub:acr:mfa"


def test_okta_user_confirms_with_okta_then_sets_up_totp(browser, peers):
    """"Confirm it's you" through Okta in a real browser: a plain form (CSP form-action 'self', no JavaScript of
    ours), Okta's own page asks for the password again although Okta still has a session, then idhub's setup."""
    _, hub_port, up = peers
    cfg = oidc_config()
    cfg["workspaces"][0]["connections"] = [{
        "slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta", "issuer": up.issuer,
        "client_id": "okta-idhub", "client_secret": CLIENT_SECRET, "domains": ["acme.test"], "sso_required": True}]
    with LiveHub(cfg, port=hub_port) as hub:
        context = browser.new_context(java_script_enabled=False)
        try:
            page = context.new_page()
            page.goto(hub.url("/w/acme/login"))
            page.get_by_label("Email").fill("ada@acme.test")
            page.get_by_role("button", name="Continue").click()
            expect(page.get_by_role("heading", name="Okta sign-in")).to_be_visible()
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in upstream").click()
            expect(page.get_by_role("heading", name="Apps")).to_be_visible()  # signed in: the app launcher
            page.get_by_role("link", name="Security settings").click()
            expect(page.get_by_text("ada@acme.test").first).to_be_visible()
            page.goto(hub.url("/w/acme/settings/security/2fa/totp"))
            expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
            expect(page.get_by_label("Password")).to_have_count(0)  # SSO required, no idhub password
            page.get_by_role("button", name="Continue with Okta").click()
            expect(page.get_by_role("heading", name="Okta sign-in")).to_be_visible()  # prompt=login
            assert urlsplit(page.url).port != hub.port
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in upstream").click()
            expect(page.get_by_role("heading", name="Set up an authenticator app")).to_be_visible()
            assert urlsplit(page.url).path == "/w/acme/settings/security/2fa/totp"
        finally:
            context.close()
