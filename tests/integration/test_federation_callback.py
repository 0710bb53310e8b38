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
from tests.conftest import BASE_CONFIG, Browser
from tests.interop.oidc_upstream.peer import audit_events, make_fed_app, navigate_target

A, B = "https://idp-a.test", "https://idp-b.test"
TENANT = "6f1b3a52-0d3c-4a55-9d5e-1c2b3a4d5e6f"
AZ = "https://login.microsoftonline.test"


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

    def doc(self) -> dict:
        return {"issuer": self.advertised, "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "authorization_response_iss_parameter_supported": self.iss_param}

    def claims(self, nonce: str, **over) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "sub": "user-1", "aud": self.client_id, "exp": now + 300, "iat": now,
             "nonce": nonce, "email": "eve@acme.test", "name": "Eve", "amr": ["pwd"]}
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
        path = urlsplit(request.url).path
        status, body = 404, {"error": "not_found"}
        if path.endswith("/.well-known/openid-configuration"):
            status, body = 200, self.doc()
        elif path.endswith("/jwks"):
            self.jwks_fetches += 1
            status, body = 200, {"keys": [k.as_dict(private=False) for k in self.published]}
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
    return {"a": HostileIdP(A, "client-a"), "b": HostileIdP(B, "client-b"),
            "az": HostileIdP(AZ + "/" + TENANT + "/v2.0", "client-az",
                             advertised_issuer=AZ + "/{tenantid}/v2.0", iss_param=False)}


@pytest.fixture
def fed(settings, idps):
    http = requests.Session()
    http.mount(A, idps["a"])
    http.mount(B, idps["b"])
    http.mount(AZ, idps["az"])
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
            assert db.scalar(select(User).where(User.email_normalized == "eve@acme.test")) is None


def test_the_honest_path_works(fed, idps):
    b, state, nonce = begin(fed, "a")
    code = idps["a"].issue_code(idps["a"].sign(idps["a"].claims(nonce)))
    r = callback(b, "a", code=code, state=state, iss=A)
    assert r.status_code == 302 and r.headers["Location"].endswith("/settings/security")
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
    token = idps["az"].sign(idps["az"].claims(nonce, iss=f"{AZ}/{TENANT}/v2.0", tid=TENANT, oid="o-1"))
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
    assert owners == {"eve@acme.test", "mallory@b-corp.test"}
