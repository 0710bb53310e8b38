"""Interoperability: openid-client (Node) sees the phishing-resistant authentication context after a passkey
sign-in at a real ``idhub serve`` (served as http://localhost:<port>, the passkey's RP ID being ``localhost``):

- a passwordless sign-in: ``acr`` ``urn:idhub:acr:phishing-resistant``, ``amr`` ``hwk``, ``user``, ``mfa``;
- an app registered with ``require_phishing_resistant_mfa``: a session signed in with the password alone is
  stepped up to the passkey before the app gets its code, and its ID token says so.

The browser side is ``requests`` with a software authenticator (tests/helpers/webauthn_soft.py) answering
idhub's WebAuthn options as Chromium's would (the browser suite drives Chromium's own)."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.conftest import ALICE, ALICE_PW
from tests.helpers.webauthn_soft import SoftAuthenticator
from tests.interop.oidc_support import (
    WIKI_CB,
    WIKI_HOME,
    WIKI_SECRET,
    hidden_fields,
    live_oidc_hub,
    oidc_config,
    resume_target,
)
from tests.interop.test_oidc_node import node_peer, run_rp

ACR_PHR = "urn:idhub:acr:phishing-resistant"
VAULT_SECRET = "vault-" + "v" * 40
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def live():
    config = oidc_config()
    config["workspaces"][0]["apps"].append(
        {"slug": "vault", "name": "Vault", "protocol": "oidc", "client_id": "vault", "client_secret": VAULT_SECRET,
         "redirect_uris": [WIKI_CB], "post_logout_redirect_uris": [WIKI_HOME],
         "grant_types": ["authorization_code", "refresh_token"], "require_phishing_resistant_mfa": True})
    with live_oidc_hub(config, host="localhost") as hub:
        yield hub

def csrf(page: str) -> str:
    return CSRF_RE.search(page).group(1)


def register_passkey(base: str, auth: SoftAuthenticator) -> None:
    """Alice signs in with her password and adds a passkey on the security page."""
    s = requests.Session()
    page = s.get(base + "/w/acme/login", timeout=10).text
    r = s.post(base + "/w/acme/login", data={"csrf_token": csrf(page), "email": ALICE, "password": ALICE_PW},
               allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    r = s.get(base + "/w/acme/settings/security/passkeys/new", timeout=10)  # -> "Confirm it's you"
    nxt = hidden_fields(r.text)["next"]
    r = s.post(base + "/w/acme/settings/security/reauth",
               data={"csrf_token": csrf(r.text), "password": ALICE_PW, "next": nxt}, timeout=10)
    assert "Passkey name" in r.text
    token = csrf(r.text)
    opts = s.post(base + "/w/acme/settings/security/passkeys/options", data={"csrf_token": token}, timeout=10)
    r = s.post(base + "/w/acme/settings/security/passkeys/new", timeout=10, data={
        "csrf_token": token, "action": "register", "name": "Laptop", "credential": auth.create(opts.text)})
    assert "Save your backup codes" in r.text, r.text[:500]


def authorize(session: requests.Session, url: str, base: str, auth: SoftAuthenticator, *,
              password: bool = False) -> str:
    """Follow idhub from the authorization URL to the app's callback: at the sign-in page with the passkey alone
    (or the password when ``password``), at a second step with the passkey."""
    r = session.get(url, allow_redirects=False, timeout=10)
    for _ in range(10):
        assert r.status_code in (200, 302), (r.status_code, r.text[:500])
        if r.status_code == 200:  # the resume page after a sign-in
            r = session.get(urljoin(base, resume_target(r.text)), allow_redirects=False, timeout=10)
            continue
        loc = urljoin(r.url, r.headers["Location"])
        if not loc.startswith(base):
            return loc
        path = urlsplit(loc).path
        if path.endswith("/login"):
            page = session.get(loc, timeout=10).text
            fields = {"csrf_token": csrf(page), "next": hidden_fields(page).get("next", "")}
            if password:
                r = session.post(base + "/w/acme/login", data={**fields, "email": ALICE, "password": ALICE_PW},
                                 allow_redirects=False, timeout=10)
            else:
                opts = session.post(base + "/w/acme/login/passkey/options", data=fields, timeout=10)
                r = session.post(base + "/w/acme/login/passkey", data={**fields, "credential": auth.get(opts.text)},
                                 allow_redirects=False, timeout=10)
            continue
        if path.endswith("/login/mfa"):
            page = session.get(loc, timeout=10).text
            assert "Use a passkey" in page, page[:500]
            flow = re.search(r"flow=([\w-]+)", loc).group(1)
            opts = session.post(base + f"/w/acme/login/mfa/passkey-options?flow={flow}",
                                data={"csrf_token": csrf(page)}, timeout=10)
            r = session.post(loc, data={"csrf_token": csrf(page), "action": "verify",
                                        "credential": auth.get(opts.text)}, allow_redirects=False, timeout=10)
            continue
        r = session.get(loc, allow_redirects=False, timeout=10)
    raise AssertionError("too many redirects")


def test_openid_client_sees_phishing_resistant_acr_and_amr(live):
    node = node_peer()
    base = live.base_url
    auth = SoftAuthenticator(origin=base)
    register_passkey(base, auth)
    issuer = live.url("/w/acme")

    # passwordless
    args = {"issuer": issuer, "client_id": "wiki", "client_secret": WIKI_SECRET, "redirect_uri": WIKI_CB,
            "post_logout_redirect_uri": WIKI_HOME}
    started = run_rp(node, "start", args)
    assert ACR_PHR in started["server"]["acr_values_supported"]
    callback = authorize(requests.Session(), started["url"], base, auth)
    assert callback.startswith(WIKI_CB + "?code="), callback
    out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                   "callback": callback})
    claims = out["claims"]
    assert claims["acr"] == ACR_PHR and claims["email"] == ALICE
    assert claims["amr"] == ["hwk", "user", "mfa"]

    # an app that requires phishing-resistant MFA: the password session is stepped up to the passkey
    args = {**args, "client_id": "vault", "client_secret": VAULT_SECRET}
    started = run_rp(node, "start", args)
    callback = authorize(requests.Session(), started["url"], base, auth, password=True)
    assert callback.startswith(WIKI_CB + "?code="), callback
    out = run_rp(node, "finish", {**args, **{k: started[k] for k in ("state", "nonce", "verifier")},
                                   "callback": callback})
    assert out["claims"]["acr"] == ACR_PHR
    assert out["claims"]["amr"] == ["pwd", "hwk", "user", "mfa"]
