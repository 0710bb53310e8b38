"""Interoperability: authlib's OAuth 2.0 *client* (requests integration) against a real ``idhub serve``.

A second, independent relying-party library next to openid-client (test_oidc_node.py): discovery is read by
hand, ``OAuth2Session`` builds the authorization URL with S256 PKCE, this test signs in through the real pages
with ``requests``, then authlib redeems the code from the callback URL, the id_token is verified with joserfc
against our JWKS with an explicit ``algorithms=["RS256"]``, and userinfo, refresh (rotation), revocation and the
end-session URL are exercised.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.conftest import ALICE
from tests.interop.oidc_support import WIKI_CB, WIKI_HOME, WIKI_SECRET, live_oidc_hub
from tests.interop.test_oidc_node import sign_in

SCOPE = "openid profile email groups offline_access"


@pytest.fixture
def live():
    with live_oidc_hub() as hub:
        yield hub


def verify_id_token(token: str, jwks: dict, issuer: str, nonce: str | None) -> dict:
    tok = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert tok.header["alg"] == "RS256" and tok.header["kid"] in {k["kid"] for k in jwks["keys"]}
    claims_registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": "wiki"},
        sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
        **({"nonce": {"essential": True, "value": nonce}} if nonce else {}))
    claims_registry.validate(tok.claims)
    return tok.claims


def test_authlib_client_interop(live):
    issuer = live.url("/w/acme")
    meta = requests.get(issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == issuer and "S256" in meta["code_challenge_methods_supported"]
    jwks = requests.get(meta["jwks_uri"], timeout=10).json()

    client = OAuth2Session("wiki", WIKI_SECRET, scope=SCOPE, redirect_uri=WIKI_CB, code_challenge_method="S256",
                           token_endpoint_auth_method="client_secret_basic",
                           revocation_endpoint_auth_method="client_secret_basic")
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                                 nonce=nonce)
    q = parse_qs(urlsplit(url).query)
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"][0] != verifier

    browser = requests.Session()
    callback = sign_in(browser, url, live.base_url)
    assert callback.startswith(WIKI_CB + "?")
    cq = parse_qs(urlsplit(callback).query)
    assert cq["state"] == [state] and cq["iss"] == [issuer]  # RFC 9207: checked here, authlib does not

    # the callback is plain http on 127.0.0.1: authlib's transport check allows loopback addresses
    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    assert token["token_type"].lower() == "bearer" and token["refresh_token"] and token["id_token"]
    claims = verify_id_token(token["id_token"], jwks, issuer, nonce)
    assert claims["email"] == ALICE and claims["amr"] == ["pwd"] and claims["sid"]
    assert claims["exp"] > time.time() and claims["azp"] == "wiki"

    # a token signed with an algorithm outside the allowlist is not accepted by the same verification
    with pytest.raises(JoseError):
        jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["ES256"])

    info = client.get(meta["userinfo_endpoint"], timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == claims["sub"] and info.json()["groups"] == ["engineering"]

    old = dict(token)
    new = client.refresh_token(meta["token_endpoint"], refresh_token=old["refresh_token"])
    assert new["refresh_token"] != old["refresh_token"]  # rotated
    assert verify_id_token(new["id_token"], jwks, issuer, None)["sub"] == claims["sub"]
    assert client.get(meta["userinfo_endpoint"], timeout=10).status_code == 200  # the session uses the new one

    # revoke the new access token: userinfo refuses it afterwards
    r = client.revoke_token(meta["revocation_endpoint"], token=new["access_token"],
                            token_type_hint="access_token")
    assert r.status_code == 200, r.text
    assert client.get(meta["userinfo_endpoint"], timeout=10).status_code == 401
    # revoke the refresh token: its family is gone, a refresh fails with invalid_grant
    r = client.revoke_token(meta["revocation_endpoint"], token=new["refresh_token"],
                            token_type_hint="refresh_token")
    assert r.status_code == 200, r.text
    with pytest.raises(OAuthError) as err:
        client.refresh_token(meta["token_endpoint"], refresh_token=new["refresh_token"])
    assert err.value.error == "invalid_grant"

    # RP-initiated logout: the end-session URL built from discovery, followed by the signed-in browser
    end = meta["end_session_endpoint"] + "?" + urlencode(
        {"id_token_hint": old["id_token"], "post_logout_redirect_uri": WIKI_HOME, "state": "bye"})
    r = browser.get(end, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == WIKI_HOME + "?state=bye"
    r = browser.get(live.url("/w/acme/settings/security"), allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
