"""Assertion encryption (AES-256-GCM content, RSA-OAEP key transport, python-xmlsec), per SP: pysaml2 as the SP
decrypts with its own key (through xmlsec1) and checks the signature inside."""

from __future__ import annotations

import base64

import pytest
from lxml import etree
from saml2 import BINDING_HTTP_POST

from saml.config import SamlConfigError, apply_saml_apps
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    full_flow,
    idp_metadata,
    redirect_request,
    register,
    sp_client,
    sp_metadata,
)

NS = {"saml": "urn:oasis:names:tc:SAML:2.0:assertion", "xenc": "http://www.w3.org/2001/04/xmlenc#",
      "ds": "http://www.w3.org/2000/09/xmldsig#"}


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def enrol(app, tmp, encrypt: bool, **entry):
    client = sp_client(tmp, idp_metadata(app), encrypt=True)
    meta = sp_metadata(client)
    assert 'use="encryption"' in meta
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": meta,
                    "encrypt_assertions": encrypt, **entry}])
    return client


@pytest.mark.parametrize("sign_response", [False, True])
def test_encrypted_assertion_is_decrypted_by_pysaml2(env, sign_response):
    app, tmp = env
    client = enrol(app, tmp, True, sign_response=sign_response)
    reqid, url = redirect_request(client)
    b = Browser(app)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    xml = base64.b64decode(saml_response)
    root = etree.fromstring(xml)
    assert root.find("saml:Assertion", NS) is None
    enc = root.find("saml:EncryptedAssertion/xenc:EncryptedData", NS)
    assert enc is not None
    assert enc.find("xenc:EncryptionMethod", NS).get("Algorithm") == "http://www.w3.org/2009/xmlenc11#aes256-gcm"
    assert enc.find("ds:KeyInfo/xenc:EncryptedKey/xenc:EncryptionMethod", NS).get("Algorithm").startswith(
        "http://www.w3.org/2001/04/xmlenc#rsa-oaep")
    assert ALICE.encode() not in xml and b"engineering" not in xml
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE and resp.ava["groups"] == ["engineering"]
    assert resp.assertion.signature is not None  # signed, then encrypted


def test_not_encrypted_unless_asked(env):
    app, tmp = env
    client = enrol(app, tmp, False)
    reqid, url = redirect_request(client)
    b = Browser(app)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    assert b"EncryptedAssertion" not in base64.b64decode(saml_response)
    assert client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})


def test_encryption_needs_a_certificate(env):
    app, _tmp = env
    hub = app.extensions["idhub"]
    from idp.accounts import workspace_by_slug

    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
        with pytest.raises(SamlConfigError, match="encryption certificate"):
            apply_saml_apps(db, ws, [{"slug": "x", "protocol": "saml", "entity_id": "https://x.test",
                                      "acs_url": "https://x.test/acs", "encrypt_assertions": True}])
