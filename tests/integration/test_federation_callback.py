"""Attacks on the upstream OIDC callback ``/w/{ws}/sso/{c}/callback``. The upstream here is a hostile IdP under
the test's control (served to idhub's HTTP client through a ``requests`` transport adapter), so each test can
forge exactly one thing: state, iss, nonce, alg, key, issuer, audience, tenant, time. Every attempt must end on
idhub's error page (an error id, no session, no account) with the failed check in the audit log."""

from __future__ import annotations

import copy
import json
import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from sqlalchemy import select

from idp.models import User
from tests.conftest import BASE_CONFIG, BOB, Browser
from tests.interop.oidc_upstream.peer import audit_events, make_fed_app, navigate_target

A, B, L = "https://idp-a.test", "https://idp-b.test", "https://idp-l.test"
TENANT = "6f1b3a52-0d3c-4a55-9d5e-1c2b3a4d5e6f"
AZ = "https://login.microsoftonline.test"
EVE = "eve@a-corp.test"  # an address of connection a's domain


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class HostileIdP(BaseAdapter):
    """Discovery, JWKS and a token endpoint; ``forge`` decides what the next ID token looks like."""

    def __init__(self, issuer: str, client_id: str, *, advertised_issuer: str | None = None, iss_param=True):
        super().__init__()
        self.issuer, self.client_id = issuer, client_id
        self.advertised = advertised_issuer or issuer
        self.iss_param = iss_param
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.published = [self.key]
        self.codes: dict[str, dict] = {}
        self.jwks_fetches = 0
        self.doc_over: dict = {}  # a hostile discovery document: these values replace the honest ones
        self.app_keys: dict[str, list] = {}  # Azure AD per-app signing keys: appid -> keys at jwks?appid=…
        self.requests: list[str] = []
        self.jwks_body = None  # a hostile JWKS document instead of the published keys

    def doc(self) -> dict:
        return {"issuer": self.advertised, "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "authorization_response_iss_parameter_supported": self.iss_param, **self.doc_over}

    def claims(self, nonce: str, **over) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "sub": "user-1", "aud": self.client_id, "exp": now + 300, "iat": now,
             "nonce": nonce, "email": EVE, "email_verified": True, "name": "Eve", "amr": ["pwd"]}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def sign(self, claims: dict, key=None, alg="RS256", header=None) -> str:
        key = key or self.key
        return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, claims, key, algorithms=[alg])

    def issue_code(self, id_token: str) -> str:
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"id_token": id_token}
        return code

    def send(self, request, **kwargs):
        path, query = urlsplit(request.url).path, parse_qs(urlsplit(request.url).query)
        self.requests.append(request.url)
        status, body = 404, {"error": "not_found"}
        if path.endswith("/.well-known/openid-configuration"):
            status, body = 200, self.doc()
        elif path.endswith("/jwks") and "appid" in query:
            keys = self.app_keys.get(query["appid"][0], [])
            status, body = 200, {"keys": [k.as_dict(private=False) for k in keys]}
        elif path.endswith("/jwks"):
            self.jwks_fetches += 1
            status, body = 200, self.jwks_body if self.jwks_body is not None else \
                {"keys": [k.as_dict(private=False) for k in self.published]}
        elif path.endswith("/token"):
            form = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
            entry = self.codes.pop(form.get("code", [""])[0], None)
            if entry is None or not form.get("code_verifier"):
                status, body = 400, {"error": "invalid_grant"}
            else:
                status, body = 200, {"access_token": "at-" + secrets.token_hex(8), "token_type": "Bearer",
                                     "expires_in": 300, "id_token": entry["id_token"]}
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        resp.url, resp.request, resp.encoding = request.url, request, "utf-8"
        return resp

    def close(self):
        pass


def conn(slug, issuer, client_id, **extra):
    return {"slug": slug, "name": slug.upper(), "protocol": "oidc", "preset": extra.pop("preset", "okta"),
            "issuer": issuer, "client_id": client_id, "client_secret": "c" * 40, **extra}


@pytest.fixture
def idps():
    return {"a": HostileIdP(A, "client-a"), "b": HostileIdP(B, "client-b"), "l": HostileIdP(L, "client-l"),
            "az": HostileIdP(AZ + "/" + TENANT + "/v2.0", "client-az",
                             advertised_issuer=AZ + "/{tenantid}/v2.0", iss_param=False)}


def _http(idps) -> requests.Session:
    http = requests.Session()
    for origin, key in ((A, "a"), (B, "b"), (L, "l"), (AZ, "az")):
        http.mount(origin, idps[key])
    return http


@pytest.fixture
def fed(settings, idps):
    http = _http(idps)
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [
        conn("a", A, "client-a", domains=["a-corp.test"]),
        conn("b", B, "client-b", domains=["b-corp.test"]),
        conn("az", AZ + "/organizations/v2.0", "client-az", preset="azure_ad", allowed_tenants=[TENANT],
             domains=["az-corp.test"]),
    ]
    return make_fed_app(settings, cfg, http=http)


def begin(app, slug: str, browser=None):
    """Start a sign-in at connection ``slug``; returns (browser, state, nonce) from the authorization URL."""
    b = browser or Browser(app)
    r = b.get(f"/w/acme/sso/{slug}/start")
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    q = {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query).items()}
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    return b, q["state"], q["nonce"]


def callback(b, slug: str, **params):
    return b.get(f"/w/acme/sso/{slug}/callback?" + urlencode(params))


def refused(app, r, check: str, *, nobody: bool = True):
    hub = app.extensions["idhub"]
    assert r.status_code in (400, 403), (r.status_code, r.get_data(as_text=True)[:300])
    page = r.get_data(as_text=True)
    assert "Error id" in page and "Traceback" not in page
    fail = audit_events(hub, "federation.signin.failure")
    assert fail and fail[-1].data["check"] == check, [f.data for f in fail]
    if nobody:
        with hub.db() as db:
            assert db.scalar(select(User).where(User.email_normalized.in_([EVE, "eve@acme.test"]))) is None


def test_the_honest_path_works(fed, idps):
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    r = callback(b, "a", code=code, state=state, iss=A)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert b.security().status_code == 200


def test_missing_or_wrong_state(fed, idps):
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    refused(fed, callback(b, "a", code=code, iss=A), "state")
    refused(fed, callback(b, "a", code=code, state="x" + state[1:], iss=A), "state")


def test_state_is_single_use(fed, idps):
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    assert callback(b, "a", code=code, state=state, iss=A).status_code == 302
    code2 = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    r = callback(Browser(fed), "a", code=code2, state=state, iss=A)
    assert r.status_code == 400 and audit_events(fed.extensions["idhub"],
                                                 "federation.signin.failure")[-1].data["check"] == "state"


def test_callback_in_another_browser_is_refused(fed, idps):
    _, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    refused(fed, callback(Browser(fed), "a", code=code, state=state, iss=A), "state")


def test_nonce_replay(fed, idps):
    """An ID token captured from an earlier sign-in (its nonce) does not work for a new one."""
    b, state, nonce = begin(fed, "a")
    old = idps["a"].sign(idps["a"].claims(nonce))
    assert callback(b, "a", code=idps["a"].issue_code(old), state=state, iss=A).status_code == 302
    b2, state2, _ = begin(fed, "a")
    refused(fed, callback(b2, "a", code=idps["a"].issue_code(old), state=state2, iss=A), "nonce", nobody=False)
    assert b2.security().status_code == 302  # no session for the replaying browser


def test_mix_up_state_of_a_at_b(fed, idps):
    """A code and state from connection A presented at B's callback."""
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    refused(fed, callback(b, "b", code=code, state=state, iss=A), "state")


def test_mix_up_iss_of_a_at_b(fed, idps):
    """RFC 9207: B's state, but the response says it came from A (an honest B would say B)."""
    b, state, nonce = begin(fed, "b")
    code = idps["b"].issue_code(idps["b"].sign(idps["b"].claims(nonce)))
    refused(fed, callback(b, "b", code=code, state=state, iss=A), "issuer")
    b, state, nonce = begin(fed, "b")  # an IdP that advertises RFC 9207 must send iss
    code = idps["b"].issue_code(idps["b"].sign(idps["b"].claims(nonce)))
    refused(fed, callback(b, "b", code=code, state=state), "issuer")


def test_wrong_issuer_in_the_token(fed, idps):
    b, state, nonce = begin(fed, "b")
    token = idps["b"].sign(idps["b"].claims(nonce, iss=A))  # signed by B's key, claiming to be A
    refused(fed, callback(b, "b", code=idps["b"].issue_code(token), state=state, iss=B), "issuer")


def test_wrong_audience(fed, idps):
    b, state, nonce = begin(fed, "a")
    token = idps["a"].sign(idps["a"].claims(nonce, aud="client-b"))
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "audience")
    b, state, nonce = begin(fed, "a")
    token = idps["a"].sign(idps["a"].claims(nonce, aud=["client-a", "other"], azp="other"))
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "audience")


def test_expired_token(fed, idps):
    b, state, nonce = begin(fed, "a")
    now = int(time.time())
    token = idps["a"].sign(idps["a"].claims(nonce, exp=now - 3600, iat=now - 7200))
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "clock_skew")


def test_alg_none(fed, idps):
    b, state, nonce = begin(fed, "a")
    claims = idps["a"].claims(nonce)
    token = b64(json.dumps({"alg": "none", "kid": "k1"}).encode()) + "." + b64(json.dumps(claims).encode()) + "."
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "algorithm")


def test_hs256_signed_with_the_public_key(fed, idps):
    """Algorithm confusion: HMAC keyed with the IdP's public key (which anyone can fetch)."""
    b, state, nonce = begin(fed, "a")
    import hashlib
    import hmac

    public_pem = idps["a"].key.as_pem(private=False)
    signing_input = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode()) + "." + \
        b64(json.dumps(idps["a"].claims(nonce)).encode())
    token = signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "algorithm")


def test_key_the_idp_does_not_publish(fed, idps):
    b, state, nonce = begin(fed, "a")
    rogue = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, other key
    token = idps["a"].sign(idps["a"].claims(nonce), key=rogue)
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "signature")
    b, state, nonce = begin(fed, "a")
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue"})
    token = idps["a"].sign(idps["a"].claims(nonce), key=rogue, header={"jwk": rogue.as_dict(private=False)})
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "signature")


def test_jwks_refreshed_once_on_an_unknown_kid(fed, idps):
    """Key rotation at the IdP: a new kid makes idhub re-read the JWKS (once), then the token is accepted."""
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    assert callback(b, "a", code=code, state=state, iss=A).status_code == 302
    fetched = idps["a"].jwks_fetches
    new = RSAKey.generate_key(2048, parameters={"kid": "k2", "use": "sig", "alg": "RS256"})
    idps["a"].published = [idps["a"].key, new]
    fed.extensions["idhub.federation"].rp._jwks.clear()  # noqa: SLF001 — as if the cache were older than 10 s
    fed.extensions["idhub.federation"].rp._jwks[A + "/jwks"] = (0.0, _old_keyset(idps["a"]))  # noqa: SLF001
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce), key=new))
    r = callback(b, "a", code=code, state=state, iss=A)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    assert idps["a"].jwks_fetches == fetched + 1


def _old_keyset(idp):
    from joserfc.jwk import KeySet

    return KeySet.import_key_set({"keys": [idp.key.as_dict(private=False)]})


def test_azure_tenant_not_allowed(fed, idps):
    other = "0a0b0c0d-1111-2222-3333-444455556666"
    b, state, nonce = begin(fed, "az")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{other}/v2.0", tid=other, oid="o-1"))
    refused(fed, callback(b, "az", code=idps["az"].issue_code(token), state=state), "tenant")


def test_azure_issuer_of_another_tenant_than_tid(fed, idps):
    other = "0a0b0c0d-1111-2222-3333-444455556666"
    b, state, nonce = begin(fed, "az")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{other}/v2.0", tid=TENANT, oid="o-1"))
    refused(fed, callback(b, "az", code=idps["az"].issue_code(token), state=state), "issuer")


def test_azure_allowed_tenant_signs_in_as_tid_oid(fed, idps):
    b, state, nonce = begin(fed, "az")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-1",
                                              email="eve@az-corp.test"))
    r = callback(b, "az", code=idps["az"].issue_code(token), state=state)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    from federation.models import FederationLink

    with fed.extensions["idhub"].db() as db:
        assert db.scalar(select(FederationLink.subject)) == f"{TENANT}:o-1"


def test_hostile_callback_input(fed, idps):
    b, state, _ = begin(fed, "a")
    r = callback(b, "a", code="c" * 10000, state=state, iss=A)
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)
    r = b.get("/w/acme/sso/a/callback?state=%00%ff&code=%c0")
    assert r.status_code == 400
    r = b.get("/w/acme/sso/nope/callback?state=x")
    assert r.status_code == 404
    b, state, _ = begin(fed, "a")
    r = callback(b, "a", error="access_denied", error_description="<script>x</script>", state=state, iss=A)
    assert r.status_code == 400 and "<script>" not in r.get_data(as_text=True)
    assert audit_events(fed.extensions["idhub"], "federation.signin.failure")[-1].data["check"] == "idp_error"


def test_the_same_subject_at_another_connection_is_another_person(fed, idps):
    """Users are keyed on (connection, subject): IdP B saying sub=user-1 is not A's user-1."""
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    assert callback(b, "a", code=code, state=state, iss=A).status_code == 302
    b, state, nonce = begin(fed, "b")
    code = idps["b"].issue_code(idps["b"].sign(idps["b"].claims(nonce)))  # same sub and email, other IdP
    refused(fed, callback(b, "b", code=code, state=state, iss=B), "email_conflict", nobody=False)
    b, state, nonce = begin(fed, "b")
    code = idps["b"].issue_code(idps["b"].sign(idps["b"].claims(nonce, email="mallory@b-corp.test")))
    r = callback(b, "b", code=code, state=state, iss=B)
    assert r.status_code == 302  # a new account for B's user-1
    with fed.extensions["idhub"].db() as db:
        owners = {u.email for u in db.scalars(select(User).where(User.external_id == "user-1"))}
    assert owners == {EVE, "mallory@b-corp.test"}


# ---- account linking and creation on an email (nOAuth) ------------------------------------------------------------
def app_with(settings, idps, *connections):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = list(connections)
    return make_fed_app(settings, cfg, http=_http(idps))


def linking(**extra) -> dict:
    """Connection l speaks for acme.test (bob's domain) and links accounts by email."""
    return conn("l", L, "client-l", domains=["acme.test"], link_by_email=True, **extra)


def azure_linking(**extra) -> dict:
    return conn("azl", AZ + "/organizations/v2.0", "client-az", preset="azure_ad", allowed_tenants=[TENANT],
                domains=["acme.test"], link_by_email=True, **extra)


def links_of(app, email: str) -> list[str]:
    from federation.models import FederationLink

    with app.extensions["idhub"].db() as db:
        uid = db.scalar(select(User.id).where(User.email_normalized == email))
        return list(db.scalars(select(FederationLink.subject).where(FederationLink.user_id == uid)))


@pytest.mark.parametrize("verified", [None, False, "true", ["true"], 1, "yes"])
def test_link_by_email_needs_the_idp_to_assert_the_email_is_verified(settings, idps, verified):
    """An attacker's account at the IdP with bob's address, but no email_verified: true, is not bob."""
    app = app_with(settings, idps, linking())
    b, state, nonce = begin(app, "l")
    token = idps["l"].sign(idps["l"].claims(nonce, sub="attacker", email=BOB, email_verified=verified))
    r = callback(b, "l", code=idps["l"].issue_code(token), state=state, iss=L)
    refused(app, r, "email_unverified")
    assert r.status_code == 403 and "did not confirm that your email address is verified" in r.get_data(as_text=True)
    assert links_of(app, BOB) == [] and b.security().status_code == 302


def test_link_by_email_with_a_verified_email_links_on_the_subject(settings, idps):
    app = app_with(settings, idps, linking())
    hub = app.extensions["idhub"]
    b, state, nonce = begin(app, "l")
    token = idps["l"].sign(idps["l"].claims(nonce, sub="bob-at-l", email=BOB.upper(), email_verified=True))
    assert callback(b, "l", code=idps["l"].issue_code(token), state=state, iss=L).status_code == 302
    assert links_of(app, BOB) == ["bob-at-l"] and b.security().status_code == 200
    assert audit_events(hub, "federation.user.linked")[-1].data["linked_by"] == "email"
    # from now on the link is the identity: a later token with another email still signs bob in
    b, state, nonce = begin(app, "l")
    token = idps["l"].sign(idps["l"].claims(nonce, sub="bob-at-l", email="renamed@acme.test", email_verified=None))
    assert callback(b, "l", code=idps["l"].issue_code(token), state=state, iss=L).status_code == 302
    assert b.security().status_code == 200 and "Bob Example" in b.security().get_data(as_text=True)


def test_the_verification_covers_the_email_claim_only(settings, idps):
    """attribute_map takes the address from another claim: email_verified says nothing about that one."""
    app = app_with(settings, idps, linking(attribute_map={"upn": "email"}))
    b, state, nonce = begin(app, "l")
    token = idps["l"].sign(idps["l"].claims(nonce, sub="attacker", email="mallory@acme.test", upn=BOB,
                                            email_verified=True))
    refused(app, callback(b, "l", code=idps["l"].issue_code(token), state=state, iss=L), "email_unverified")
    assert links_of(app, BOB) == []


def test_azure_ad_email_is_unverified_unless_the_connection_says_so(settings, idps):
    """Azure AD's email is an editable attribute (nOAuth): even with email_verified: true it does not link..."""
    app = app_with(settings, idps, azure_linking())
    b, state, nonce = begin(app, "azl")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-evil",
                                              email=BOB, email_verified=True, aud="client-az"))
    refused(app, callback(b, "azl", code=idps["az"].issue_code(token), state=state), "email_unverified")
    assert links_of(app, BOB) == []
    # ...unless the admins declare that their tenant's addresses are managed (email_verified_by_idp)
    app = app_with(settings, idps, azure_linking(email_verified_by_idp=True))
    b, state, nonce = begin(app, "azl")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-bob",
                                              email=BOB, email_verified=None, aud="client-az"))
    assert callback(b, "azl", code=idps["az"].issue_code(token), state=state).status_code == 302
    assert links_of(app, BOB) == [f"{TENANT}:o-bob"]  # keyed on tid:oid, not on the email


def test_link_by_email_only_for_the_connections_domains(settings, idps):
    """IdP a speaks for a-corp.test: even a verified acme.test address from it does not link to bob."""
    app = app_with(settings, idps, conn("a", A, "client-a", domains=["a-corp.test"], link_by_email=True))
    b, state, nonce = begin(app, "a")
    token = idps["a"].sign(idps["a"].claims(nonce, sub="x", email=BOB, email_verified=True))
    refused(app, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "email_domain")
    assert links_of(app, BOB) == []


def test_just_in_time_creation_only_inside_the_connections_domains(fed, idps):
    hub = fed.extensions["idhub"]
    for email in ("mallory@elsewhere.test", "mallory@sub.a-corp.test", "mallory@a-corp.test.evil.test",
                  "mallory@acme.test"):
        b, state, nonce = begin(fed, "a")
        token = idps["a"].sign(idps["a"].claims(nonce, sub="m-" + email, email=email))
        r = callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A)
        refused(fed, r, "email_domain")
        page = r.get_data(as_text=True)
        assert "does not cover" in page and "a-corp.test" in page
        assert "email_domain" in audit_events(hub, "federation.signin.failure")[-1].data["check"]
        with hub.db() as db:
            assert db.scalar(select(User).where(User.email_normalized == email)) is None
    b, state, nonce = begin(fed, "a")  # the same IdP for an address of its domain: created
    token = idps["a"].sign(idps["a"].claims(nonce, sub="m-ok", email="Mallory@A-Corp.test"))
    assert callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A).status_code == 302


# ---- hostile discovery documents and JWKS -------------------------------------------------------------------------
HOSTILE_DISCOVERY = [
    ("id_token_signing_alg_values_supported", 5),
    ("id_token_signing_alg_values_supported", [5, None]),
    ("id_token_signing_alg_values_supported", {"RS256": 1}),
    ("token_endpoint_auth_methods_supported", "client_secret_basic"),
    ("authorization_endpoint", 5),
    ("authorization_endpoint", "http://idp-a.test/authorize"),  # plain http across a network
    ("token_endpoint", "https://[::1/token"),
    ("jwks_uri", ["https://idp-a.test/jwks"]),
    ("authorization_response_iss_parameter_supported", "yes"),
]


@pytest.mark.parametrize("field,value", HOSTILE_DISCOVERY)
def test_a_hostile_discovery_document_ends_on_the_error_page(fed, idps, field, value):
    idps["a"].doc_over = {field: value}
    r = Browser(fed).get("/w/acme/sso/a/start")
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert "Error id" in r.get_data(as_text=True)
    assert audit_events(fed.extensions["idhub"], "federation.signin.failure")[-1].data["check"] == "discovery"


def test_a_hostile_discovery_document_on_the_test_page(fed, idps):
    from tests.interop.oidc_upstream.peer import admin_browser

    idps["a"].doc_over = {"id_token_signing_alg_values_supported": 5}
    b = admin_browser(fed)
    r = b.form_post("/w/acme/sso/a/test", "/w/acme/sso/a/test", {})
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "Failed check:" in body and "<code>discovery</code>" in body
    assert audit_events(fed.extensions["idhub"], "federation.signin.failure")[-1].data["test"] is True


@pytest.mark.parametrize("jwks", [{"keys": 5}, {"keys": "abc"}, {"keys": [5, None, {"kty": 5}]}])
def test_a_hostile_jwks_fails_closed(fed, idps, jwks):
    b, state, nonce = begin(fed, "a")
    idps["a"].jwks_body = jwks
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    r = callback(b, "a", code=code, state=state, iss=A)
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)
    assert audit_events(fed.extensions["idhub"], "federation.signin.failure")[-1].data["check"] in ("jwks",
                                                                                                     "signature")


def test_group_names_sharing_a_200_character_prefix_are_one_group(fed, idps):
    from idp.models import Group, GroupMember

    long = "g" * 200
    for _ in range(2):  # the first sign-in creates, the second finds
        b, state, nonce = begin(fed, "a")
        token = idps["a"].sign(idps["a"].claims(nonce, groups=[long + "-a", long + "-b", "short", long + " "]))
        r = callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A)
        assert r.status_code == 302, r.get_data(as_text=True)[:300]
    with fed.extensions["idhub"].db() as db:
        uid = db.scalar(select(User.id).where(User.email_normalized == EVE))
        names = sorted(db.scalars(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                                  .where(GroupMember.user_id == uid)))
    assert names == [long, "short"]


# ---- Azure AD per-app signing keys ---------------------------------------------------------------------------------
def test_azure_per_app_signing_key_is_read_from_jwks_appid(fed, idps):
    """An app with custom signing keys (claims mapping): Azure AD signs its tokens with a key published only at
    ``jwks_uri?appid={client_id}``."""
    app_key = RSAKey.generate_key(2048, parameters={"kid": "app-k", "use": "sig", "alg": "RS256"})
    idps["az"].app_keys["client-az"] = [app_key]
    b, state, nonce = begin(fed, "az")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-1",
                                              email="eve@az-corp.test"), key=app_key)
    r = callback(b, "az", code=idps["az"].issue_code(token), state=state)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    assert any(u.endswith("/jwks?appid=client-az") for u in idps["az"].requests)
    # a key of another app is still unknown
    other = RSAKey.generate_key(2048, parameters={"kid": "other-app", "use": "sig", "alg": "RS256"})
    idps["az"].app_keys["another-client"] = [other]
    b, state, nonce = begin(fed, "az")
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-1",
                                              email="eve@az-corp.test"), key=other)
    refused(fed, callback(b, "az", code=idps["az"].issue_code(token), state=state), "signature", nobody=False)


def test_other_presets_never_read_per_app_keys(fed, idps):
    app_key = RSAKey.generate_key(2048, parameters={"kid": "app-k", "use": "sig", "alg": "RS256"})
    idps["a"].app_keys["client-a"] = [app_key]
    b, state, nonce = begin(fed, "a")
    token = idps["a"].sign(idps["a"].claims(nonce), key=app_key)
    refused(fed, callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A), "signature")
    assert not any("appid=" in u for u in idps["a"].requests)


# ---- open redirects, Host headers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("nxt", ["https://evil.test/", "//evil.test/x", "/\\evil.test", "javascript:alert(1)",
                                 "/w/other/settings/security"])
def test_next_at_start_never_redirects_elsewhere(fed, idps, nxt):
    b = Browser(fed)
    r = b.get("/w/acme/sso/a/start?" + urlencode({"next": nxt}))
    q = {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query).items()}
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(q["nonce"])))
    r = callback(b, "a", code=code, state=q["state"], iss=A)
    assert r.status_code == 302
    loc = r.headers["Location"]
    assert urlsplit(loc).netloc in ("", "localhost") and urlsplit(loc).path.startswith("/w/acme/"), loc


def test_redirect_uri_comes_from_the_base_url_not_the_host_header(fed, idps):
    b = Browser(fed)
    r = b.get("/w/acme/sso/a/start", headers={"X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https",
                                             "Forwarded": "host=evil.test"},
              environ_overrides={"HTTP_HOST": "evil.test"})
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    q = parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query)
    base = fed.extensions["idhub"].settings.base_url.rstrip("/")
    assert q["redirect_uri"] == [f"{base}/w/acme/sso/a/callback"] and "evil" not in base


# ---- re-authentication where SSO is required ----------------------------------------------------------------------
def test_reauthentication_refuses_local_passwords_where_sso_is_required(settings, idps):
    from tests.conftest import BOB_PW
    from tests.interop.oidc_upstream.peer import admin_browser

    nxt = "/w/acme/settings/security/2fa"
    relaxed = app_with(settings, idps, linking())  # SSO optional: bob's idhub password confirms it's him
    b = admin_browser(relaxed, BOB, amr=("pwd",))
    page = b.get(f"/w/acme/settings/security/reauth?next={nxt}").get_data(as_text=True)
    r = b.post("/w/acme/settings/security/reauth", {"password": BOB_PW, "next": nxt, "csrf_token": b.csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith(nxt)

    app = app_with(settings, idps, linking(sso_required=True))
    hub = app.extensions["idhub"]
    b = admin_browser(app, BOB, amr=("pwd",))  # e.g. a session from before SSO became required
    assert "/reauth" in b.get(nxt).headers["Location"]
    page = b.get(f"/w/acme/settings/security/reauth?next={nxt}").get_data(as_text=True)
    r = b.post("/w/acme/settings/security/reauth", {"password": BOB_PW, "next": nxt, "csrf_token": b.csrf(page)})
    body = r.get_data(as_text=True)
    assert r.status_code == 401 and "requires single sign-on with L" in body
    event = audit_events(hub, "auth.reauth.failure")[-1]
    assert event.data["reason"] == "sso_required" and event.actor_email == BOB
    assert "/reauth" in b.get(nxt).headers["Location"]  # still not confirmed


# ---- re-authentication at the upstream IdP ------------------------------------------------------------------------
NXT = "/w/acme/settings/security/2fa"
NEXT_RE = __import__("re").compile(r'name="next" value="([^"]+)"')


def link_bob(app, slug: str = "l", subject: str = "bob-at-l") -> None:
    from federation.models import FederationConnection, FederationLink

    with app.extensions["idhub"].db() as db:
        conn_id = db.scalar(select(FederationConnection.id).where(FederationConnection.slug == slug))
        uid = db.scalar(select(User.id).where(User.email_normalized == BOB))
        if db.scalar(select(FederationLink.id).where(FederationLink.connection_id == conn_id,
                                                     FederationLink.subject == subject)) is None:
            db.add(FederationLink(connection_id=conn_id, subject=subject, user_id=uid))
            db.commit()


def reauth_page(b) -> str:
    r = b.get(NXT)
    assert r.status_code == 302 and "/settings/security/reauth" in r.headers["Location"]
    return b.get(r.headers["Location"]).get_data(as_text=True)


def reauth_begin(b, slug: str = "l"):
    """"Continue with <IdP>" on the re-authentication page; returns the authorization URL's parameters."""
    page = reauth_page(b)
    r = b.post(f"/w/acme/sso/{slug}/reauth", {"next": NEXT_RE.search(page)[1], "csrf_token": b.csrf(page)})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    return {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query).items()}


def bob_reauth_app(settings, idps, **extra):
    from tests.interop.oidc_upstream.peer import admin_browser

    app = app_with(settings, idps, linking(**extra))
    link_bob(app)
    return app, admin_browser(app, BOB, amr=("fed",))


def test_reauthentication_page_offers_the_linked_idp(settings, idps):
    from tests.conftest import BOB_PW

    app, b = bob_reauth_app(settings, idps, sso_required=True)
    page = reauth_page(b)
    assert "Continue with L" in page and 'action="/w/acme/sso/l/reauth"' in page and 'name="password"' not in page
    assert "<script" not in page.split("<main", 1)[-1]  # a plain form: no JavaScript needed
    r = b.post("/w/acme/settings/security/reauth", {"password": BOB_PW, "next": NXT, "csrf_token": b.csrf(page)})
    assert r.status_code == 401 and "Use “Continue with L” instead" in r.get_data(as_text=True)
    # SSO optional and a local password: both ways
    app, b = bob_reauth_app(settings, idps)
    page = reauth_page(b)
    assert "Continue with L" in page and 'name="password"' in page
    r = b.post("/w/acme/settings/security/reauth", {"password": BOB_PW, "next": NXT, "csrf_token": b.csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith(NXT)
    assert audit_events(app.extensions["idhub"], "auth.reauth.success")[-1].data["method"] == "pwd"


def test_reauthentication_asks_for_a_fresh_sign_in_and_checks_auth_time(settings, idps):
    app, b = bob_reauth_app(settings, idps, sso_required=True)
    hub = app.extensions["idhub"]
    q = reauth_begin(b)
    assert q["prompt"] == "login" and q["max_age"] == "0" and q["login_hint"] == BOB
    token = idps["l"].sign(idps["l"].claims(q["nonce"], sub="bob-at-l", email=BOB))  # no auth_time
    r = callback(b, "l", code=idps["l"].issue_code(token), state=q["state"], iss=L)
    assert r.status_code == 403 and "did not ask you to sign in again" in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "auth_time"
    q = reauth_begin(b)
    future = int(time.time()) + 3600
    token = idps["l"].sign(idps["l"].claims(q["nonce"], sub="bob-at-l", email=BOB, auth_time=future))
    r = callback(b, "l", code=idps["l"].issue_code(token), state=q["state"], iss=L)
    assert r.status_code == 403 and audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "auth_time"
    assert "/reauth" in b.get(NXT).headers["Location"]
    q = reauth_begin(b)
    token = idps["l"].sign(idps["l"].claims(q["nonce"], sub="bob-at-l", email=BOB, auth_time=int(time.time())))
    r = callback(b, "l", code=idps["l"].issue_code(token), state=q["state"], iss=L)
    assert r.status_code == 302 and r.headers["Location"].endswith(NXT)
    assert b.get(NXT).status_code == 200
    ok = audit_events(hub, "auth.reauth.success")[-1].data
    assert ok["connection"] == "l" and ok["method"] == "oidc"


def test_reauthentication_answer_in_another_browser_or_after_the_session_ended(settings, idps):
    app, b = bob_reauth_app(settings, idps)
    hub = app.extensions["idhub"]
    q = reauth_begin(b)
    token = idps["l"].sign(idps["l"].claims(q["nonce"], sub="bob-at-l", email=BOB, auth_time=int(time.time())))
    other = Browser(app)
    r = callback(other, "l", code=idps["l"].issue_code(token), state=q["state"], iss=L)
    assert r.status_code == 400 and audit_events(hub, "federation.signin.failure")[-1].data["check"] == "state"
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "state"
    assert other.security().status_code == 302  # nobody signed in there
    q = reauth_begin(b)
    with hub.db() as db:
        bob_id = db.scalar(select(User.id).where(User.email_normalized == BOB))
    hub.sessions.end_all(bob_id, "ended_by_user")  # e.g. "End" from another device
    token = idps["l"].sign(idps["l"].claims(q["nonce"], sub="bob-at-l", email=BOB, auth_time=int(time.time())))
    r = callback(b, "l", code=idps["l"].issue_code(token), state=q["state"], iss=L)
    assert r.status_code == 403 and "session ended or changed" in r.get_data(as_text=True)
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "session_changed"
    assert b.security().status_code == 302 and not audit_events(hub, "auth.reauth.success")


def test_reauthentication_with_a_connection_the_account_is_not_linked_to(settings, idps):
    from tests.interop.oidc_upstream.peer import admin_browser

    app = app_with(settings, idps, linking(), conn("b", B, "client-b", domains=["b-corp.test"]))
    link_bob(app)
    b = admin_browser(app, BOB, amr=("fed",))
    page = reauth_page(b)
    assert "Continue with B" not in page
    r = b.post("/w/acme/sso/b/reauth", {"next": NXT, "csrf_token": b.csrf(page)})
    assert r.status_code == 403 and "not connected to B" in r.get_data(as_text=True)
    assert audit_events(app.extensions["idhub"], "auth.reauth.failure")[-1].data["reason"] == "not_linked"
    assert b.post("/w/acme/sso/l/reauth", {"next": NXT}).status_code == 400  # CSRF
    assert Browser(app).post("/w/acme/sso/l/reauth", {"next": NXT}).status_code == 302  # signed-in users only
