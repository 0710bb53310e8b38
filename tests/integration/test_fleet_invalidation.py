"""A fleet enforces every security change at once: two `idhub serve` nodes (A and B) on one PostgreSQL database,
a change made on node A (admin API, the user's own pages, SCIM, the command line run with A's settings) is
enforced by node B within ``BOUND`` (one second).

Each check first makes B use what it may have cached (the old state answers), then makes the change on A and
polls B until it answers the new way; the time from A's answer to B's is asserted, nothing sleeps.

Two fleets, one fresh database each:

- ``pubsub``: A and B share one Redis; the change reaches B over Redis pub/sub.
- ``db-fallback``: A and B each have a Redis of their own, so nothing A publishes reaches B: B learns of the
  change from the database's version rows (checked at most every half second). Browser sessions are not part
  of this variant (each node's session cache is its Redis), only what nodes cache themselves: apps, keys,
  connections, SCIM tokens, policies.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

import psycopg
import pytest
import redis
import requests
from joserfc import jws

from saml.xml import deflate
from tests.helpers.live import LiveHub, random_secret
from tests.integration.scim_helpers import SCIM_JSON, TOKEN
from tests.integration.test_deprovision_fleet import WIKI_SECRET, authorize, token
from tests.integration.test_multinode import ALICE, ALICE_PW, CSRF, FLOW, Client
from tests.interop.oidc_support import Receiver, authorize_path, pkce
from tests.services import drop_postgres, postgres_url, start_private_redis

BOUND = 1.0  # seconds: a change made on A is enforced by B within this
POLL = 0.02
PW = "S3cure-Example!"
BOB, CAROL, DAVE = "bob@acme.test", "carol@acme.test", "dave@acme.test"
PORTAL_SECRET = "portal-" + "p" * 40
PORTAL_CB, PORTAL_CB2 = "https://portal.example.test/cb", "https://portal.example.test/cb2"
SP1, SP2 = "https://crm.example.test/saml/metadata", "https://erp.example.test/saml/metadata"
WS = "/w/acme"
RESPONSE = re.compile(r'name="SAMLResponse" value="([^"]+)"')
OKTA = {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta", "issuer": "https://acme.okta.test",
        "client_id": "0oa1example", "client_secret": "okta-client-secret-0123456789", "domains": ["acme.test"]}


def fleet_config(receiver: Receiver) -> dict:
    return {"workspaces": [{
        "slug": "acme", "name": "Acme", "plan": "enterprise",
        "users": [{"email": e, "password": ALICE_PW if e == ALICE else PW} for e in (ALICE, BOB, CAROL, DAVE)],
        "apps": [
            {"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki", "client_secret": WIKI_SECRET,
             "redirect_uris": [receiver.page_url("/wiki/callback")],
             "grant_types": ["authorization_code", "refresh_token"]},
            {"slug": "portal", "name": "Portal", "protocol": "oidc", "client_id": "portal",
             "client_secret": PORTAL_SECRET, "redirect_uris": [PORTAL_CB, PORTAL_CB2]},
            {"slug": "crm", "name": "CRM", "protocol": "saml", "entity_id": SP1,
             "acs_url": "https://crm.example.test/saml/acs"},
            {"slug": "erp", "name": "ERP", "protocol": "saml", "entity_id": SP2,
             "acs_url": "https://erp.example.test/saml/acs"},
        ],
        "scim_tokens": [{"name": "okta", "token": TOKEN}],
    }]}


class Fleet:
    def __init__(self, a: LiveHub, b: LiveHub, shared: bool, receiver: Receiver):
        self.a, self.b, self.shared, self.receiver = a, b, shared, receiver
        self.api_token = a.run("admin", "token", "create", "--workspace", "acme").stdout.strip().splitlines()[0]

    def api(self, method: str, path: str, body=None) -> requests.Response:
        return requests.request(method, self.a.url("/api/v1/workspaces/acme" + path), json=body, timeout=10,
                                headers={"Authorization": f"Bearer {self.api_token}"})

    def psql(self, sql: str, *args):
        url = self.a.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall() if sql.lstrip().upper().startswith("SELECT") else \
                conn.execute(sql, args)


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module", params=["pubsub", "db-fallback"])
def fleet(request, receiver):
    """Nodes A and B with one public URL (A's); ``db-fallback``: each with a Redis of its own."""
    shared = request.param == "pubsub"
    db = postgres_url()
    with start_private_redis() as red_a, start_private_redis() as red_b:
        a = LiveHub(fleet_config(receiver), database_url=db, redis_url=red_a.url, workers=1)
        env = {"IDHUB_SECRET_KEY": random_secret(48), "IDHUB_BASE_URL": a.base_url}
        a.extra_env.update(env)
        b = LiveHub(None, database_url=db, redis_url=(red_a if shared else red_b).url, extra_env=env, workers=1)
        try:
            a.start()
            b.start()
            yield Fleet(a, b, shared, receiver)
        finally:
            a.cleanup()
            b.cleanup()
    drop_postgres(db)


def sessions_shared(fleet: Fleet) -> None:
    """Browser sessions work in both fleets: in ``db-fallback`` each node caches sessions in its own Redis, and an
    ended session reaches the other node through the database's session changes (``idp.storage``)."""


# ---- the measurement -----------------------------------------------------------------------------------------
def enforced_within(probe, what: str, bound: float = BOUND) -> float:
    """Poll ``probe`` (True once B enforces the change) until it holds; assert that took at most ``bound``."""
    start = time.monotonic()
    answers = []
    while True:
        ok, seen = probe()
        answers.append(seen)
        took = time.monotonic() - start
        if ok:
            assert took <= bound, f"{what}: node B enforced it after {took:.2f}s (bound {bound}s)"
            return took
        if took > bound + 5:
            raise AssertionError(f"{what}: node B does not enforce it {took:.1f}s later (B answered "
                                 f"{answers[:3]} … {answers[-3:]})")
        time.sleep(POLL)


def login(node: LiveHub, email: str, password: str = PW) -> Client:
    c = Client()
    r = c.s.get(node.url(WS + "/login"))
    r = c.s.post(node.url(WS + "/login"), data={"email": email, "csrf_token": CSRF.search(r.text)[1]})
    r = c.s.post(node.url(WS + "/login/password"), data={
        "flow": FLOW.search(r.text)[1], "password": password, "csrf_token": CSRF.search(r.text)[1]},
        allow_redirects=False)
    assert r.status_code == 302, r.text[:300]
    return c


def security_answer(c: Client, node: LiveHub) -> int:
    return c.security(node).status_code


def session_ended_on(c: Client, node: LiveHub):
    """A fresh request with the browser's cookies (a cookie cleared by one answer cannot make the next vacuous)."""
    cookies = c.s.cookies.get_dict()
    def probe():
        r = requests.get(node.url(WS + "/settings/security"), cookies=cookies, allow_redirects=False, timeout=10,
                         headers={"User-Agent": c.s.headers["User-Agent"]})
        return r.status_code == 302, r.status_code
    return probe


def user_id(fleet: Fleet, email: str) -> str:
    r = fleet.api("GET", "/users?" + urlencode({"email": email}))
    assert r.status_code == 200, r.text
    return r.json()["items"][0]["id"]


# ---- sessions ------------------------------------------------------------------------------------------------
def test_signed_out_on_a_is_signed_out_on_b(fleet):
    sessions_shared(fleet)
    c = login(fleet.a, BOB)
    assert c.signed_in(fleet.b)
    page = c.security(fleet.a).text
    r = c.s.post(fleet.a.url(WS + "/logout"), data={"csrf_token": CSRF.search(page)[1]}, allow_redirects=False)
    assert r.status_code in (302, 303), r.status_code
    enforced_within(session_ended_on(c, fleet.b), "sign-out")


def test_a_session_ended_on_a_ends_on_b(fleet):
    sessions_shared(fleet)
    one = Client().login(fleet.a)
    two = Client(ua="Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0").login(fleet.b)
    assert two.signed_in(fleet.b)
    probe = session_ended_on(two, fleet.b)
    one.end_other(fleet.a, two)
    enforced_within(probe, "“End” on the security page")


def test_a_user_disabled_on_a_is_signed_out_on_b(fleet):
    sessions_shared(fleet)
    c = login(fleet.b, DAVE)
    assert c.signed_in(fleet.b)
    uid = user_id(fleet, DAVE)
    assert fleet.api("POST", f"/users/{uid}/disable").status_code == 200
    try:
        enforced_within(session_ended_on(c, fleet.b), "user disabled")
    finally:
        assert fleet.api("POST", f"/users/{uid}/enable").status_code == 200


def test_a_user_deleted_over_scim_on_a_is_signed_out_on_b(fleet):
    sessions_shared(fleet)
    c = login(fleet.b, CAROL)
    assert c.signed_in(fleet.b)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": SCIM_JSON}
    r = requests.get(fleet.a.url(WS + "/scim/v2/Users"), params={"filter": f'userName eq "{CAROL}"'},
                     headers=headers, timeout=10)
    (user,) = r.json()["Resources"]
    assert requests.delete(fleet.a.url(WS + f"/scim/v2/Users/{user['id']}"), headers=headers,
                           timeout=10).status_code == 204
    enforced_within(session_ended_on(c, fleet.b), "SCIM DELETE /Users")


@pytest.mark.parametrize(("policy", "column"), [("session_max_lifetime", "created_at"),
                                                ("session_idle_timeout", "last_active_at")])
def test_a_stricter_session_lifetime_ends_older_sessions_on_b(fleet, policy, column):
    """A session signed in (or last active) two hours ago under the hub's 90-day (30-day idle) limits; the
    workspace's limit becomes one hour."""
    sessions_shared(fleet)
    c = Client().login(fleet.a)
    assert c.signed_in(fleet.b)
    sid = hashlib.sha256(c.s.cookies.get("idhub_session_acme").encode()).hexdigest()
    fleet.psql("UPDATE sessions SET created_at = created_at - interval '2 hours', "
               "last_active_at = last_active_at - interval '2 hours' WHERE id = %s", sid)
    # the Redis session caches hold the copies made at sign-in: empty them, so that B reads the row as it is now
    for url in {fleet.a.redis_url, fleet.b.redis_url}:
        redis.Redis.from_url(url).flushall()
    if column == "created_at":  # (a request now would make it active again: the idle case is not asked)
        assert c.signed_in(fleet.b)  # two hours old: within the hub's 90 days
    try:
        assert fleet.api("PUT", "/policies", {policy: "1h"}).status_code == 200
        enforced_within(session_ended_on(c, fleet.b), f"{policy} 1h ({column} two hours ago)")
        # ended as a timed-out session (its apps are told), not by anything else
        assert fleet.psql("SELECT revoked_reason FROM sessions WHERE id = %s", sid) == [("expired",)]
        fresh = Client().login(fleet.a)
        assert fresh.signed_in(fleet.b)  # a session within the new limit goes on
    finally:
        assert fleet.api("PUT", "/policies", {}).status_code == 200


def test_an_ip_allowlist_set_on_a_applies_on_b(fleet):
    sessions_shared(fleet)
    c = Client().login(fleet.a)
    assert c.signed_in(fleet.b)
    cookies = c.s.cookies.get_dict()
    try:
        assert fleet.api("PUT", "/policies", {"ip_allowlist": ["192.0.2.0/24"]}).status_code == 200

        def probe():
            code = requests.get(fleet.b.url(WS + "/settings/security"), cookies=cookies, allow_redirects=False,
                                timeout=10, headers={"User-Agent": c.s.headers["User-Agent"]}).status_code
            return code == 403, code
        enforced_within(probe, "ip_allowlist")
    finally:
        assert fleet.api("PUT", "/policies", {}).status_code == 200


# ---- OIDC clients --------------------------------------------------------------------------------------------
def portal_token(node: LiveHub, secret: str) -> requests.Response:
    return requests.post(node.url(WS + "/oauth2/token"), auth=("portal", secret), timeout=10,
                         data={"grant_type": "authorization_code", "code": "no-such-code", "redirect_uri": PORTAL_CB})


def test_a_client_secret_rotated_on_a_is_refused_by_b(fleet):
    r = portal_token(fleet.b, PORTAL_SECRET)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text  # the secret is right
    r = fleet.api("POST", "/apps/portal/secret")
    assert r.status_code in (200, 201), r.text
    new = r.json()["client_secret"]

    def probe():
        r = portal_token(fleet.b, PORTAL_SECRET)
        return r.status_code == 401, r.status_code
    enforced_within(probe, "client secret rotated")
    assert portal_token(fleet.b, new).json()["error"] == "invalid_grant"


def test_a_redirect_uri_removed_on_a_is_refused_by_b(fleet):
    _, challenge = pkce()
    path = authorize_path(client_id="portal", redirect_uri=PORTAL_CB2, scope="openid", challenge=challenge,
                          state="st")

    def answer():
        r = requests.get(fleet.b.url(path), allow_redirects=False, timeout=10)
        return r.status_code, r.headers.get("Location", "")
    code, location = answer()
    assert code == 302 and not location.startswith(PORTAL_CB2), (code, location)  # to the sign-in page
    r = fleet.api("PATCH", "/apps/portal", {"redirect_uris": [PORTAL_CB]})
    assert r.status_code == 200, r.text
    try:
        def probe():
            code, location = answer()
            assert not location.startswith(PORTAL_CB2)
            return code == 400, code
        enforced_within(probe, "redirect URI removed")
    finally:
        assert fleet.api("PATCH", "/apps/portal", {"redirect_uris": [PORTAL_CB, PORTAL_CB2]}).status_code == 200


# ---- SAML apps -----------------------------------------------------------------------------------------------
def test_a_saml_app_deleted_on_a_is_unknown_to_b(fleet):
    slug, entity = ("crm", SP1) if fleet.shared else ("erp", SP2)
    r = authn_request(fleet.b, entity)
    assert r.status_code == 302, (r.status_code, r.text[:300])  # known: on to the sign-in page
    assert fleet.api("DELETE", f"/apps/{slug}").status_code == 204

    def probe():
        r = authn_request(fleet.b, entity)
        return r.status_code == 400 and "not registered" in r.text, r.status_code
    enforced_within(probe, "SAML app deleted")


def test_a_saml_app_assignment_changed_on_a_applies_on_b(fleet):
    """The SP's assigned groups are part of B's cached copy of the app."""
    c = Client().login(fleet.a)
    slug, entity = ("erp", SP2) if fleet.shared else ("crm", SP1)

    def answer() -> str:
        """The status of the SAML Response B posts to the app (SAML's own error format: a Response too)."""
        r = c.s.get(fleet.b.url(WS + "/saml/sso?" + authn_query(entity)), allow_redirects=False, timeout=10)
        found = RESPONSE.search(r.text)
        assert r.status_code == 200 and found, (r.status_code, r.text[:300])
        xml = base64.b64decode(html.unescape(found[1])).decode()
        return re.search(r'StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:([A-Za-z]+)"', xml)[1]
    assert answer() == "Success"  # the app is everyone's
    r = fleet.api("POST", "/groups", {"name": f"finance-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    assert fleet.api("PATCH", f"/apps/{slug}", {"assigned_groups": [r.json()["name"]]}).status_code == 200
    try:
        enforced_within(lambda: ((status := answer()) != "Success", status), "SAML app assigned to a group")
    finally:
        assert fleet.api("PATCH", f"/apps/{slug}", {"assigned_groups": None}).status_code == 200


def authn_query(entity: str) -> str:
    xml = (f'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           f'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{uuid.uuid4().hex}" Version="2.0" '
           f'IssueInstant="{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"><saml:Issuer>{entity}</saml:Issuer>'
           f'</samlp:AuthnRequest>').encode()
    return urlencode({"SAMLRequest": base64.b64encode(deflate(xml)).decode()})


def authn_request(node: LiveHub, issuer: str) -> requests.Response:
    return requests.get(node.url(WS + "/saml/sso?" + authn_query(issuer)), allow_redirects=False, timeout=10)


# ---- connections ---------------------------------------------------------------------------------------------
def test_a_connection_added_on_a_changes_b_sign_in_page(fleet):
    def one_page():
        return 'name="password"' in requests.get(fleet.b.url(WS + "/login"), timeout=10).text
    assert one_page()  # no connection claims a domain: email and password on one page
    assert fleet.api("POST", "/connections", OKTA).status_code == 201
    try:
        enforced_within(lambda: (not one_page(), "one page"), "connection added (identifier first)")
    finally:
        assert fleet.api("DELETE", "/connections/okta").status_code == 204
    enforced_within(lambda: (one_page(), "identifier first"), "connection deleted (one page again)")


# ---- SCIM tokens ---------------------------------------------------------------------------------------------
def test_a_scim_token_revoked_on_a_is_refused_by_b(fleet):
    r = fleet.api("POST", "/scim-tokens", {"name": f"hr-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    created = r.json()

    def answer():
        return requests.get(fleet.b.url(WS + "/scim/v2/Users"), timeout=10, headers={
            "Authorization": f"Bearer {created['token']}", "Accept": SCIM_JSON}).status_code
    assert answer() == 200
    assert fleet.api("DELETE", f"/scim-tokens/{created['id']}").status_code == 204
    enforced_within(lambda: ((code := answer()) == 401, code), "SCIM token revoked")


# ---- signing keys --------------------------------------------------------------------------------------------
class Wiki:
    """The wiki app's refresh token, used at node B: every answer carries an access token signed by B."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        browser = Client().login(fleet.a)
        cb = fleet.receiver.page_url("/wiki/callback")
        code, verifier = authorize(browser, fleet.a, cb)
        r = token(fleet.b, grant_type="authorization_code", code=code, redirect_uri=cb, code_verifier=verifier)
        assert r.status_code == 200, r.text
        self.refresh = r.json()["refresh_token"]

    def kid_signing_on_b(self) -> str:
        r = token(self.fleet.b, grant_type="refresh_token", refresh_token=self.refresh)
        assert r.status_code == 200, r.text  # refresh tokens are opaque: a key revocation does not touch them
        self.refresh = r.json()["refresh_token"]
        self.access = r.json()["access_token"]
        return jws.extract_compact(self.access.encode()).protected["kid"]

    def userinfo(self, node: LiveHub, access: str) -> int:
        return requests.get(node.url(WS + "/oauth2/userinfo"), headers={"Authorization": f"Bearer {access}"},
                            timeout=10).status_code


def b_jwks_kids(fleet: Fleet) -> set[str]:
    return {k["kid"] for k in requests.get(fleet.b.url(WS + "/oauth2/jwks"), timeout=10).json()["keys"]}


def test_an_oidc_key_rotated_from_the_cli_signs_on_b_at_once(fleet):
    wiki = Wiki(fleet)
    before = wiki.kid_signing_on_b()
    new = fleet.a.run("oidc", "rotate-keys", "--workspace", "acme").stdout.strip()
    assert new and new != before
    enforced_within(lambda: ((kid := wiki.kid_signing_on_b()) == new, kid), "oidc rotate-keys")


def test_an_oidc_key_revoked_on_a_is_never_used_again_by_b(fleet):
    wiki = Wiki(fleet)
    compromised = wiki.kid_signing_on_b()
    signed_by_it = wiki.access
    assert compromised in b_jwks_kids(fleet) and wiki.userinfo(fleet.b, signed_by_it) == 200
    r = fleet.api("POST", f"/signing-keys/{compromised}/revoke")
    assert r.status_code == 200, r.text

    def probe():
        kid = wiki.kid_signing_on_b()
        return kid != compromised and compromised not in b_jwks_kids(fleet), kid
    enforced_within(probe, "OIDC signing key revoked")
    assert wiki.userinfo(fleet.b, signed_by_it) == 401  # what it signed no longer verifies
    assert wiki.userinfo(fleet.b, wiki.access) == 200
    events = json.loads(fleet.a.run("audit", "export", "--workspace", "acme", "--format", "json",
                                    "--type", "oidc.key.revoked").stdout)
    assert [e["data"]["kid"] for e in events][-1] == compromised


def saml_metadata_certs(node: LiveHub) -> list[str]:
    from lxml import etree

    root = etree.fromstring(requests.get(node.url(WS + "/saml/metadata"), timeout=10).content)
    ns = {"md": "urn:oasis:names:tc:SAML:2.0:metadata", "ds": "http://www.w3.org/2000/09/xmldsig#"}
    return [e.text.strip() for e in root.findall(".//md:IDPSSODescriptor/md:KeyDescriptor//ds:X509Certificate", ns)]


def test_a_saml_key_revoked_from_the_cli_leaves_b_metadata_at_once(fleet):
    (before,) = saml_metadata_certs(fleet.b)
    out = fleet.a.run("saml", "revoke-key", "--workspace", "acme", "--yes").stdout
    assert "revoked" in out, out

    def probe():
        certs = saml_metadata_certs(fleet.b)
        return before not in certs and len(certs) == 1, len(certs)
    enforced_within(probe, "SAML signing key revoked")
    (after,) = saml_metadata_certs(fleet.a)
    assert after != before
