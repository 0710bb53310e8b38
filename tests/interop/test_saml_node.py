"""Interoperability: node-saml (``@node-saml/node-saml`` v5, Node) as a SAML service provider of idhub.

node-saml builds the signed HTTP-Redirect AuthnRequest (``getAuthorizeUrlAsync``); the test drives it through
idhub's real sign-in pages; node-saml then validates our Response (``validatePostResponseAsync``: response and
assertion signatures against the certificate from our metadata, audience, InResponseTo, timestamps) and both
directions of Single Logout (``getLogoutUrlAsync``/``validateRedirectAsync``/``getLogoutResponseUrlAsync``).

The peer lives in tests/interop/saml_node (package.json + package-lock.json); the test runs ``npm ci`` there when
node_modules is missing and FAILS (never skips) when node or npm are missing.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from saml.xml import inflate
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    IDP_ENTITY,
    _idp_cert,
    _keypair,
    full_flow,
    post_form,
    register,
)

NODE_DIR = Path(__file__).resolve().parent / "saml_node"
SP = "https://wiki.example.test"
SP_ENTITY = SP + "/saml"
ACS = SP + "/saml/acs"
SP_SLO = SP + "/saml/slo"


def node_peer() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the SAML interoperability test (Node 20+)")
    if not (NODE_DIR / "node_modules" / "@node-saml" / "node-saml").is_dir():
        cmd = [npm, "ci", "--no-audit", "--no-fund"]
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed:\n{res.stdout}\n{res.stderr}")
    return node


class NodeSp:
    def __init__(self, node: str, args: dict):
        self.node = node
        self.args = args

    def run(self, phase: str, ok: bool = True, **extra) -> dict:
        res = subprocess.run([self.node, "sp.mjs", phase, json.dumps({**self.args, **extra})], cwd=NODE_DIR,
                             capture_output=True, text=True, timeout=60)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = {"error": res.stdout}
        if ok:
            assert res.returncode == 0, f"sp.mjs {phase} failed: {out}\n{res.stderr}"
        else:
            assert res.returncode != 0, f"sp.mjs {phase} accepted what it should refuse: {out}"
        return out


def slo_form(resp) -> tuple[str, str, str, str | None]:
    """The page that posts a logout message to the SP (auto-submitted; a Continue button without JavaScript)."""
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    page = resp.get_data(as_text=True)
    assert ">Continue</button>" in page and "/static/saml-post.js" in page
    action = html.unescape(re.search(r'<form id="saml-post" method="post" action="([^"]+)"', page).group(1))
    field, value = re.search(r'name="(SAMLRequest|SAMLResponse)" value="([^"]+)"', page).groups()
    relay = re.search(r'name="RelayState" value="([^"]*)"', page)
    return action, field, html.unescape(value), html.unescape(relay.group(1)) if relay else None


def local(url: str) -> str:
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.netloc == "localhost", url
    return f"{parts.path}?{parts.query}"


@pytest.fixture
def wiki(tmp_path):
    node = node_peer()
    app = make_app(make_settings(tmp_path))
    key_file, cert_file = _keypair(tmp_path, "wiki")
    cert = x509.load_der_x509_certificate(base64.b64decode(_idp_cert(app)))
    args = {"entity_id": SP_ENTITY, "acs": ACS, "sp_slo": SP_SLO, "sso": "http://localhost/w/acme/saml/sso",
            "slo": "http://localhost/w/acme/saml/slo", "idp_entity": IDP_ENTITY,
            "idp_cert": cert.public_bytes(serialization.Encoding.PEM).decode(), "key_file": key_file,
            "cert_file": cert_file, "cache_file": str(tmp_path / "node-saml-cache.json")}
    return app, NodeSp(node, args), tmp_path


def enroll(app, sp: NodeSp, **entry) -> str:
    metadata = sp.run("metadata")["metadata"]
    register(app, [{"slug": "wiki", "name": "Wiki", "protocol": "saml", "metadata_xml": metadata,
                    "sign_response": True, "sign_assertion": True, **entry}])
    return metadata


def sign_in_through(app, b: Browser, sp: NodeSp, relay: str, first: bool = True) -> dict:
    url = sp.run("authorize", relay_state=relay)["url"]
    assert url.startswith("http://localhost/w/acme/saml/sso?SAMLRequest=") and "&Signature=" in url
    if first:
        action, saml_response, relay_back = full_flow(app, b, lambda: b.get(local(url)))
    else:
        action, saml_response, relay_back = post_form(b.get(local(url)))
    assert action == ACS and relay_back == relay
    return {"saml_response": saml_response, "relay_state": relay_back}


def test_node_saml_sso_and_sp_initiated_logout(wiki):
    app, sp, _tmp = wiki
    metadata = enroll(app, sp)
    assert "AuthnRequestsSigned=\"true\"" in metadata  # so idhub requires node-saml's signature
    b = Browser(app)
    posted = sign_in_through(app, b, sp, "wiki-rs")
    out = sp.run("acs", **posted)
    profile = out["profile"]
    assert out["loggedOut"] is False
    assert profile["nameID"] == ALICE
    assert profile["nameIDFormat"] == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    assert profile["issuer"] == IDP_ENTITY and profile["email"] == ALICE and profile["groups"] == "engineering"
    assert profile["sessionIndex"].startswith("_s")
    # node-saml's own checks are real: the same response again (InResponseTo used up), or tampered, is refused
    assert "InResponseTo" in sp.run("acs", ok=False, **posted)["error"]
    posted2 = sign_in_through(app, b, sp, "again", first=False)
    xml = base64.b64decode(posted2["saml_response"]).replace(ALICE.encode(), b"mallory@acme.test")
    refused = sp.run("acs", ok=False, saml_response=base64.b64encode(xml).decode(), relay_state="again")
    assert "signature" in refused["error"].lower()
    # SP-initiated logout: node-saml's signed LogoutRequest, our signed LogoutResponse, checked by node-saml
    url = sp.run("logout", profile=profile, relay_state="bye")["url"]
    assert url.startswith("http://localhost/w/acme/saml/slo?SAMLRequest=") and "&Signature=" in url
    r = b.get(local(url))
    # node-saml's metadata has an HTTP-POST SingleLogoutService: our signed LogoutResponse is posted there
    action, field, value, relay = slo_form(r)
    assert action == SP_SLO and field == "SAMLResponse" and relay == "bye"
    done = sp.run("slo_post", saml_response=value)
    assert done["loggedOut"] is True
    sent = inflate(base64.b64decode(parse_qs(urlsplit(url).query)["SAMLRequest"][0]))
    request_id = re.search(rb' ID="([^"]+)"', sent).group(1).decode()
    assert f'InResponseTo="{request_id}"' in base64.b64decode(value).decode()
    tampered = base64.b64encode(base64.b64decode(value).replace(b"status:Success", b"status:Requester")).decode()
    assert "signature" in sp.run("slo_post", ok=False, saml_response=tampered)["error"].lower()
    assert b.security().status_code == 302  # the idhub session is over


def test_sign_out_of_idhub_logs_node_saml_out(wiki):
    app, sp, _tmp = wiki
    enroll(app, sp)
    b = Browser(app)
    profile = sp.run("acs", **sign_in_through(app, b, sp, "x"))["profile"]
    b.security()
    r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
    assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/saml/logout?h=")
    action, field, value, relay = slo_form(b.get(r.headers["Location"]))
    assert action == SP_SLO and field == "SAMLRequest"
    # node-saml checks our signed LogoutRequest and answers with its own signed LogoutResponse (HTTP-Redirect)
    got = sp.run("slo_post", saml_request=value, relay_state=relay)
    assert got["loggedOut"] is True
    assert got["profile"]["nameID"] == ALICE and got["profile"]["sessionIndex"] == profile["sessionIndex"]
    r = b.get(local(got["response_url"]))
    assert r.status_code == 302 and r.headers["Location"] == "/w/acme/login"
    assert "You have signed out" in b.get("/w/acme/login").get_data(as_text=True)


def test_node_saml_decrypts_our_encrypted_assertion(wiki):
    app, sp, tmp = wiki
    dec_key, dec_cert = _keypair(tmp, "wiki-enc")
    sp.args.update(decryption_key_file=dec_key, decryption_cert_file=dec_cert)
    metadata = enroll(app, sp, encrypt_assertions=True)
    assert 'use="encryption"' in metadata
    b = Browser(app)
    posted = sign_in_through(app, b, sp, "enc")
    xml = base64.b64decode(posted["saml_response"])
    assert b"EncryptedAssertion" in xml and b"aes256-gcm" in xml and ALICE.encode() not in xml
    profile = sp.run("acs", **posted)["profile"]
    assert profile["nameID"] == ALICE and profile["email"] == ALICE
