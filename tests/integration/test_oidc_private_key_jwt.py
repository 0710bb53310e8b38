"""``private_key_jwt`` client authentication (RFC 7523 section 2.2, OpenID Connect Core section 9).

Apps register public keys inline (``jwks``) or by URL (``jwks_uri``); the token, revocation and introspection
endpoints accept a signed ``client_assertion`` instead of a secret. The algorithm list is explicit (RS256, ES256):
``none``, HS256 keyed with a public key, and keys carried in the token's header (``jwk``/``jku``/``x5u``) are
refused, ``exp`` is at most 5 minutes ahead, and each ``jti`` is accepted once.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from idp.configfile import ConfigError, validate
from tests.conftest import Browser
from tests.interop.oidc_support import (
    apply_apps,
    authorize_path,
    browser_authorize,
    make_oidc_app,
    oidc_config,
    pkce,
    query,
)

ISS = "http://localhost/w/acme"
TOKEN_URL = ISS + "/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CB = "https://signer.example/cb"

RSA = RSAKey.generate_key(2048, private=True, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", private=True, parameters={"kid": "ec-1"})
OTHER = RSAKey.generate_key(2048, private=True, parameters={"kid": "rsa-1"})  # same kid, not registered
REMOTE = RSAKey.generate_key(2048, private=True, parameters={"kid": "remote-1"})


def public_jwks(*keys) -> dict:
    return {"keys": [{**k.as_dict(private=False), "use": "sig"} for k in keys]}


class JwksServer:
    """A client's jwks_uri."""

    def __init__(self, jwks: dict):
        self.jwks = jwks
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def jwks_server():
    srv = JwksServer(public_jwks(REMOTE))
    yield srv
    srv.close()


def pkj_config(jwks_uri: str) -> dict:
    cfg = oidc_config()
    cfg["workspaces"][0]["apps"] += [
        {"slug": "signer", "name": "Signer", "protocol": "oidc", "client_id": "signer",
         "token_endpoint_auth_method": "private_key_jwt", "jwks": public_jwks(RSA, EC), "redirect_uris": [CB],
         "grant_types": ["authorization_code", "refresh_token", "client_credentials"]},
        {"slug": "remote", "name": "Remote", "protocol": "oidc", "client_id": "remote",
         "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": jwks_uri,
         "grant_types": ["client_credentials"]},
    ]
    return cfg


@pytest.fixture
def app(settings, jwks_server):
    # The base config first: ``oidc_client_jwks`` is made by ensure_oidc_tables until the lead's migration has it.
    app = make_oidc_app(settings)
    with app.extensions["idhub"].db() as db:
        apply_apps(db, pkj_config(jwks_server.url))
    return app


@pytest.fixture
def api(app):
    return app.test_client()


def claims_for(client_id="signer", **over) -> dict:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "iat": now, "exp": now + 120,
              "jti": secrets.token_urlsafe(16)}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def assertion(key=RSA, alg="RS256", header=None, **over) -> str:
    hdr = {"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}
    return jwt.encode(hdr, claims_for(**over), key, algorithms=[alg])


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_jws(header: dict, claims: dict, key) -> str:
    """Sign without any header validation (the attacker's side)."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    if header["alg"] == "none":
        return signing_input + "."
    if header["alg"] == "HS256":  # the public key's bytes used as an HMAC secret (alg confusion)
        return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[header["alg"]])


def token(api, client_assertion, grant="client_credentials", **data):
    return api.post("/w/acme/oauth2/token", data={"grant_type": grant, "client_assertion_type": JWT_BEARER,
                                                  "client_assertion": client_assertion, **data})


def test_discovery_lists_private_key_jwt(api):
    d = api.get("/w/acme/.well-known/openid-configuration").get_json()
    assert "private_key_jwt" in d["token_endpoint_auth_methods_supported"]
    assert d["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert "private_key_jwt" in d["introspection_endpoint_auth_methods_supported"]


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256")])
def test_client_credentials_with_an_assertion(api, key, alg):
    r = token(api, assertion(key, alg))
    assert r.status_code == 200, r.get_json()
    at = jwt.decode(r.get_json()["access_token"], KeySet.import_key_set(api.get("/w/acme/oauth2/jwks").get_json()),
                    algorithms=["RS256"]).claims
    assert at["sub"] == "signer" and at["client_id"] == "signer"


def test_audience_may_be_the_issuer(api):
    assert token(api, assertion(aud=ISS)).status_code == 200
    assert token(api, assertion(aud=["https://elsewhere.example", TOKEN_URL])).status_code == 200


def test_jti_is_single_use(api):
    a = assertion()
    assert token(api, a).status_code == 200
    r = token(api, a)
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"


def test_code_flow_refresh_revocation_introspection(app, api):
    verifier, challenge = pkce()
    cb = browser_authorize(Browser(app), authorize_path(client_id="signer", redirect_uri=CB, challenge=challenge,
                                                        scope="openid email offline_access"))
    code = query(cb)["code"]
    data = {"code": code, "redirect_uri": CB, "code_verifier": verifier}
    # without any client authentication the confidential client is refused
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "authorization_code", "client_id": "signer", **data})
    assert r.status_code in (400, 401) and r.get_json()["error"] == "invalid_client"
    r = token(api, assertion(EC, "ES256"), grant="authorization_code", **data)
    assert r.status_code == 200, r.get_json()
    tok = r.get_json()
    assert tok["id_token"] and tok["refresh_token"]
    r = token(api, assertion(), grant="refresh_token", refresh_token=tok["refresh_token"])
    assert r.status_code == 200, r.get_json()
    new = r.get_json()
    r = api.post("/w/acme/oauth2/introspect", data={
        "token": new["access_token"], "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(aud=ISS + "/oauth2/introspect")})
    assert r.status_code == 200 and r.get_json()["active"] is True and r.get_json()["client_id"] == "signer"
    r = api.post("/w/acme/oauth2/revoke", data={"token": new["refresh_token"], "client_assertion_type": JWT_BEARER,
                                                "client_assertion": assertion()})
    assert r.status_code == 200
    r = token(api, assertion(), grant="refresh_token", refresh_token=new["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"


def test_jwks_uri_client(api, jwks_server):
    before = jwks_server.hits
    assert token(api, assertion(REMOTE, client_id="remote")).status_code == 200
    assert token(api, assertion(REMOTE, client_id="remote")).status_code == 200
    assert jwks_server.hits == before + 1  # cached
    # a key that is not in the client's JWKS: refused (after one re-fetch, which finds nothing new)
    r = token(api, assertion(RSA, client_id="remote", header={"kid": "remote-1"}))
    assert r.status_code == 401


def our_public_pem(api) -> bytes:
    key = KeySet.import_key_set(api.get("/w/acme/oauth2/jwks").get_json()).keys[0]
    return key.as_pem(private=False)


@pytest.mark.parametrize("attack", [
    "alg_none", "hs256_our_public_key", "hs256_client_public_key", "jwk_header", "jku_header", "x5u_header",
    "unregistered_key", "wrong_aud", "iss_not_sub", "exp_too_far", "expired", "no_exp", "no_jti", "future_iat",
    "wrong_assertion_type", "client_id_mismatch", "secret_client", "unknown_client",
])
def test_bad_assertions_refused(api, attack):
    data = {}
    kind = JWT_BEARER
    if attack == "alg_none":
        a = raw_jws({"alg": "none", "typ": "JWT"}, claims_for(), None)
    elif attack == "hs256_our_public_key":
        a = raw_jws({"alg": "HS256", "typ": "JWT"}, claims_for(), our_public_pem(api))
    elif attack == "hs256_client_public_key":
        a = raw_jws({"alg": "HS256", "kid": "rsa-1"}, claims_for(), RSA.as_pem(private=False))
    elif attack in ("jwk_header", "jku_header", "x5u_header"):
        extra = {"jwk_header": {"jwk": OTHER.as_dict(private=False)},
                 "jku_header": {"jku": "https://attacker.example/jwks"},
                 "x5u_header": {"x5u": "https://attacker.example/cert.pem"}}[attack]
        # signed by the registered key, so only the header makes it unacceptable
        a = raw_jws({"alg": "RS256", "kid": "rsa-1", **extra}, claims_for(), RSA)
    elif attack == "unregistered_key":
        a = assertion(OTHER)
    elif attack == "wrong_aud":
        a = assertion(aud="https://other.example/token")
    elif attack == "iss_not_sub":
        a = assertion(sub="wiki")
    elif attack == "exp_too_far":
        a = assertion(exp=int(time.time()) + 600)
    elif attack == "expired":
        a = assertion(exp=int(time.time()) - 5)
    elif attack == "no_exp":
        a = assertion(exp=None)
    elif attack == "no_jti":
        a = assertion(jti=None)
    elif attack == "future_iat":
        a = assertion(iat=int(time.time()) + 120)
    elif attack == "wrong_assertion_type":
        a, kind = assertion(), "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    elif attack == "client_id_mismatch":
        a, data = assertion(), {"client_id": "remote"}
    elif attack == "secret_client":
        a = assertion(client_id="wiki")  # wiki authenticates with its secret, not with assertions
    else:
        a = assertion(client_id="nobody")
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials", "client_assertion_type": kind,
                                               "client_assertion": a, **data})
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client", (r.status_code, r.get_json())
    assert "access_token" not in r.get_json()


def test_assertion_with_a_secret_or_basic_auth_refused(api):
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
                                               "client_assertion": assertion(), "client_secret": "x" * 40})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
                                               "client_assertion": assertion()},
                 headers={"Authorization": "Basic " + base64.b64encode(b"signer:whatever").decode()})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request"


def _app(**over) -> dict:
    cfg = copy.deepcopy(oidc_config())
    app = {"slug": "signer", "name": "Signer", "protocol": "oidc", "client_id": "signer",
           "token_endpoint_auth_method": "private_key_jwt", "redirect_uris": [CB], **over}
    cfg["workspaces"][0]["apps"].append({k: v for k, v in app.items() if v is not None})
    return cfg


@pytest.mark.parametrize(("over", "message"), [
    ({}, "exactly one of jwks or jwks_uri"),
    ({"jwks": public_jwks(RSA), "jwks_uri": "https://signer.example/jwks"}, "exactly one of jwks or jwks_uri"),
    ({"jwks": {"keys": [RSA.as_dict(private=True)]}}, "must be a public key"),
    ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "must be a public key"),
    ({"jwks": {"keys": []}}, "non-empty list of keys"),
    ({"jwks": {"keys": [{**RSA.as_dict(private=False), "alg": "HS256"}]}}, "alg must be RS256 or ES256"),
    ({"jwks": {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}}, "not a valid JWK"),
    ({"jwks_uri": "ftp://signer.example/jwks"}, "not an absolute URL"),
    ({"jwks": public_jwks(RSA), "client_secret": "s" * 40}, "has no secret"),
    ({"token_endpoint_auth_method": "client_secret_basic", "client_secret": "s" * 40, "jwks": public_jwks(RSA)},
     "jwks and jwks_uri are for"),
])
def test_config_validation(over, message):
    with pytest.raises(ConfigError) as err:
        validate(_app(**over))
    assert message in str(err.value)


def test_config_accepts_a_private_key_jwt_app():
    validate(_app(jwks=public_jwks(RSA, EC)))
    validate(_app(jwks_uri="https://signer.example/jwks"))
