"""SCIM deprovisioning on a Redis-backed fleet (two `idhub serve` nodes, one PostgreSQL, one Redis) logs the user
out of everything: her browser session is ended on every node, the OIDC app gets a back-channel logout token,
its refresh token is refused, and the audit event counts the sessions ended.

Alice signs in on node A, the app (``wiki``, confidential, ``offline_access``) gets her code through A and
redeems it at node B; both nodes serve her session (which also puts it in the shared Redis session cache). Then
the HR system deprovisions her over SCIM on node A: ``DELETE /Users/{id}`` or ``PATCH active=false``.

The app's ``backchannel_logout_uri`` is a small HTTP server run by the test (``Receiver``). Every wait is polled
with a bound (``DEADLINE``); nothing sleeps for a fixed time."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.helpers.live import LiveHub, random_secret
from tests.integration.scim_helpers import PATCH_OP, SCIM_JSON, TOKEN
from tests.integration.test_multinode import ALICE, ALICE_PW, Client
from tests.interop.oidc_support import Receiver, authorize_path, pkce, query, resume_target
from tests.services import drop_postgres, postgres_url, start_private_redis

WIKI_SECRET = "wiki-" + "s" * 40
SCIM = "/w/acme/scim/v2"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DEADLINE = 2.0  # seconds: the session end is synchronous with SCIM's answer; the logout POST runs in a thread
POLL = 0.05


def fleet_config(receiver: Receiver) -> dict:
    return {"workspaces": [{
        "slug": "acme", "name": "Acme", "plan": "enterprise",
        "users": [{"email": ALICE, "password": ALICE_PW}],
        "apps": [{"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki",
                  "client_secret": WIKI_SECRET, "redirect_uris": [receiver.page_url("/wiki/callback")],
                  "backchannel_logout_uri": receiver.url,
                  "grant_types": ["authorization_code", "refresh_token"]}],
        "scim_tokens": [{"name": "okta", "token": TOKEN}],
    }]}


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def fleet(receiver):
    """Nodes A and B (as in test_multinode's ``cluster``), with one public URL (A's): a fleet behind a load
    balancer has one issuer, whichever node signs a token."""
    db = postgres_url()
    with start_private_redis() as redis_server:
        a = LiveHub(fleet_config(receiver), database_url=db, redis_url=redis_server.url, workers=1)
        env = {"IDHUB_SECRET_KEY": random_secret(48), "IDHUB_BASE_URL": a.base_url}
        a.extra_env.update(env)
        b = LiveHub(None, database_url=db, redis_url=redis_server.url, extra_env=env, workers=1)
        try:
            a.start()
            b.start()
            yield a, b
        finally:
            a.cleanup()
            b.cleanup()
    drop_postgres(db)


# ---- helpers -------------------------------------------------------------------------------------------------
def scim(node: LiveHub, method: str, path: str, body: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": SCIM_JSON}
    data = None
    if body is not None:
        headers["Content-Type"] = SCIM_JSON
        data = json.dumps(body)
    return requests.request(method, node.url(SCIM + path), data=data, headers=headers, timeout=10)


def alice_id(node: LiveHub) -> str:
    r = scim(node, "GET", f'/Users?filter=userName eq "{ALICE}"')
    assert r.status_code == 200, r.text
    (user,) = r.json()["Resources"]
    return user["id"]


def authorize(browser: Client, node: LiveHub, redirect_uri: str) -> tuple[str, str]:
    """The app sends the signed-in browser to node A's authorization endpoint (code flow, PKCE S256); returns
    (code, verifier) from the redirect back to the app."""
    verifier, challenge = pkce()
    url = node.url(authorize_path(client_id="wiki", redirect_uri=redirect_uri, scope="openid offline_access",
                                  challenge=challenge, state="st-fleet"))
    for _ in range(6):
        r = browser.s.get(url, allow_redirects=False, timeout=10)
        if r.status_code == 200 and urlsplit(url).path.endswith("/oauth2/resume"):
            url = node.url(resume_target(r.text))
            continue
        assert r.status_code == 302, (r.status_code, r.text[:500])
        location = r.headers["Location"]
        if location.startswith(redirect_uri + "?"):
            q = query(location)
            assert q["state"] == "st-fleet", q
            return q["code"], verifier
        url = location if location.startswith("http") else node.url(location)
    raise AssertionError("the authorization did not come back to the app")


def token(node: LiveHub, **data) -> requests.Response:
    return requests.post(node.url("/w/acme/oauth2/token"), data=data, auth=("wiki", WIKI_SECRET), timeout=10)


def security_page(node: LiveHub, cookies: dict, user_agent: str) -> requests.Response:
    """The security page with the browser's cookies as they were when it signed in: a fresh request each time,
    so a cookie cleared by one node's answer cannot make another node's check vacuous."""
    return requests.get(node.url("/w/acme/settings/security"), cookies=cookies,
                        headers={"User-Agent": user_agent}, allow_redirects=False, timeout=10)


def signed_in_app(receiver: Receiver, a: LiveHub, b: LiveHub):
    """Alice signs in on A, the app gets a code through A and redeems it at B; her session works on both."""
    browser = Client().login(a)
    code, verifier = authorize(browser, a, receiver.page_url("/wiki/callback"))
    r = token(b, grant_type="authorization_code", code=code, redirect_uri=receiver.page_url("/wiki/callback"),
              code_verifier=verifier)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens.get("refresh_token") and tokens.get("id_token"), tokens
    cookies = browser.s.cookies.get_dict()
    ua = browser.s.headers["User-Agent"]
    for node in (a, b):
        r = security_page(node, cookies, ua)
        assert r.status_code == 200, (node.base_url, r.status_code, r.text[:300])
    assert receiver.tokens == []
    return cookies, ua, tokens


def jwks(node: LiveHub) -> KeySet:
    discovery = requests.get(node.url("/w/acme/.well-known/openid-configuration"), timeout=10).json()
    return KeySet.import_key_set(requests.get(discovery["jwks_uri"], timeout=10).json())


def last_error(node: LiveHub) -> str:
    """The last line of the last unhandled error in the node's log (the server logs one JSON object a line)."""
    for line in reversed(node.log_text().splitlines()):
        if '"unhandled error"' in line:
            try:
                return json.loads(line).get("exc", "").strip().splitlines()[-1]
            except ValueError:
                return line[:300]
    return "no unhandled error logged"


def assert_logged_out_everywhere(a: LiveHub, b: LiveHub, receiver: Receiver, cookies: dict, ua: str) -> None:
    """Within DEADLINE: the security page sends her to the sign-in page (302) on A and on B, and the app has a
    logout token. A 500 ends the wait at once; the failure says what each node answered and what the app got."""
    nodes = {"A": a, "B": b}
    seen: dict[str, list[int]] = {"A": [], "B": []}
    start = time.monotonic()
    while True:
        for name, node in nodes.items():
            r = security_page(node, cookies, ua)
            seen[name].append(r.status_code)
            if r.status_code == 302:
                assert urlsplit(r.headers["Location"]).path == "/w/acme/login", r.headers["Location"]
        last = {name: codes[-1] for name, codes in seen.items()}
        ended = last == {"A": 302, "B": 302}
        if 500 in last.values() or (ended and receiver.tokens) or time.monotonic() - start > DEADLINE:
            break
        time.sleep(POLL)
    summary = (f"security page answers {seen}; {len(receiver.tokens)} logout token(s) after "
               f"{time.monotonic() - start:.2f}s (requests: {receiver.requests})")
    errors = {name: last_error(node) for name, node in nodes.items() if last[name] == 500}
    assert not errors, f"the deprovisioned session answers 500 ({errors}); {summary}"
    assert ended, f"the session still works; {summary}"
    assert receiver.tokens, f"no back-channel logout token; {summary}"


def check_logout_tokens(a: LiveHub, receiver: Receiver, tokens: dict, user_id: str) -> None:
    keys = jwks(a)
    issuer = a.url("/w/acme")
    id_token = jwt.decode(tokens["id_token"], keys, algorithms=["RS256", "ES256"])
    assert id_token.claims["sub"] == user_id
    for raw in receiver.tokens:
        logout = jwt.decode(raw, keys, algorithms=["RS256", "ES256"])
        assert logout.header["typ"] == "logout+jwt"
        claims = logout.claims
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer}, aud={"essential": True, "value": "wiki"},
                              sub={"essential": True, "value": user_id}, iat={"essential": True},
                              exp={"essential": True}, jti={"essential": True}).validate(claims)
        assert claims["sid"] == id_token.claims["sid"]
        assert claims["events"] == {BACKCHANNEL_EVENT: {}}
        assert "nonce" not in claims


def assert_refresh_refused(b: LiveHub, tokens: dict) -> None:
    r = token(b, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert r.status_code == 400 and r.json().get("error") == "invalid_grant", (r.status_code, r.text[:300])


def audit_events(node: LiveHub, event_type: str) -> list[dict]:
    out = node.run("audit", "export", "--workspace", "acme", "--format", "json", "--type", event_type).stdout
    return json.loads(out)


# ---- tests ---------------------------------------------------------------------------------------------------
def test_scim_delete_logs_the_user_out_on_every_node(fleet, receiver):
    a, b = fleet
    cookies, ua, tokens = signed_in_app(receiver, a, b)
    user_id = alice_id(a)

    r = scim(a, "DELETE", f"/Users/{user_id}")
    assert r.status_code == 204, r.text

    assert_logged_out_everywhere(a, b, receiver, cookies, ua)
    check_logout_tokens(a, receiver, tokens, user_id)
    assert_refresh_refused(b, tokens)
    (event,) = [e for e in audit_events(a, "scim.user.deleted") if e["subject_id"] == user_id]
    assert event["data"].get("sessions_ended", 0) >= 1, event


def test_scim_deactivation_logs_the_user_out_on_every_node(fleet, receiver):
    a, b = fleet
    cookies, ua, tokens = signed_in_app(receiver, a, b)
    user_id = alice_id(a)

    r = scim(a, "PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "active", "value": False}]})
    assert r.status_code == 200 and r.json()["active"] is False, r.text

    assert_logged_out_everywhere(a, b, receiver, cookies, ua)
    check_logout_tokens(a, receiver, tokens, user_id)
    assert_refresh_refused(b, tokens)
    (event,) = [e for e in audit_events(a, "scim.user.deactivated") if e["subject_id"] == user_id]
    assert event["data"].get("sessions_ended", 0) >= 1, event
