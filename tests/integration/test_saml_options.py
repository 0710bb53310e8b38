"""Per-app SAML options against pysaml2 as the SP (its own code validates every response): a signed Response
around an unsigned assertion (``sign_response: true, sign_assertion: false``), and SP metadata from a
``metadata_file`` next to the config file, applied by the real ``idhub apply``."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lxml import etree
from saml2 import BINDING_HTTP_POST
from saml2.sigver import SignatureError
from sqlalchemy import select

from saml.models import SamlServiceProvider
from tests.conftest import ALICE, BASE_CONFIG, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    ACS,
    SP_ENTITY,
    full_flow,
    idp_metadata,
    post_form,
    redirect_request,
    register,
    sp_client,
    sp_metadata,
)

NS = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
      "ds": "http://www.w3.org/2000/09/xmldsig#"}
IDHUB = str(Path(sys.executable).parent / "idhub")


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def test_response_signed_assertion_unsigned_validated_by_pysaml2(env):
    app, tmp = env
    client = sp_client(tmp, idp_metadata(app), want_response_signed=True, want_assertions_signed=False)
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client),
                    "sign_response": True, "sign_assertion": False}])
    with app.extensions["idhub"].db() as db:
        row = db.scalar(select(SamlServiceProvider))
        assert row.sign_response is True and row.sign_assertion is False
    b = Browser(app)
    reqid, url = redirect_request(client)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    root = etree.fromstring(base64.b64decode(saml_response))
    assertion = root.find("saml:Assertion", NS)
    assert len(root.findall("ds:Signature", NS)) == 1  # the Response's own, a direct child after the Issuer
    assert root[1].tag == f"{{{NS['ds']}}}Signature"
    assert assertion is not None and assertion.find("ds:Signature", NS) is None
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE and resp.ava["email"] == [ALICE] and resp.in_response_to == reqid
    # Controls: pysaml2 checks the Response signature (tampering is caught), and an SP that wants signed
    # assertions refuses this response (so the assertion really is unsigned).
    reqid2, url2 = redirect_request(client)
    _a, saml_response2, _r = post_form(b.get(url2))
    forged = base64.b64decode(saml_response2).replace(ALICE.encode(), b"mallory@acme.test")
    with pytest.raises(SignatureError):
        client.parse_authn_request_response(base64.b64encode(forged).decode(), BINDING_HTTP_POST,
                                            outstanding={reqid2: "/"})
    strict = sp_client(tmp, idp_metadata(app), cn="strict", want_response_signed=True)
    with pytest.raises(SignatureError, match="Signature missing for assertion"):
        strict.parse_authn_request_response(saml_response2, BINDING_HTTP_POST, outstanding={reqid2: "/"})


def _idhub(args, tmp: Path, cwd: Path, secret: str):
    env = {**os.environ, "IDHUB_DATABASE_URL": f"sqlite:///{tmp}/idhub.db", "IDHUB_SECRET_KEY": secret,
           "IDHUB_OUTBOX_DIR": str(tmp / "outbox"), "IDHUB_LOG_LEVEL": "WARNING"}
    return subprocess.run([IDHUB, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_metadata_file_is_relative_to_the_config_file(tmp_path):
    """``metadata_file: sp/payroll.xml`` in conf/acme.yaml reads conf/sp/payroll.xml, whatever the working
    directory of ``idhub apply`` (which here holds a decoy at the same relative path); pysaml2 then signs in."""
    secret = "s" * 48
    conf, work = tmp_path / "conf", tmp_path / "work"
    (conf / "sp").mkdir(parents=True)
    (work / "sp").mkdir(parents=True)
    settings = make_settings(tmp_path, secret_key=secret)
    app = make_app(settings)  # migrates the database and applies the users
    client = sp_client(tmp_path, idp_metadata(app))
    (conf / "sp" / "payroll.xml").write_text(sp_metadata(client))
    decoy = sp_client(tmp_path, None, cn="decoy", entity="https://decoy.test/metadata", acs="https://decoy.test/acs")
    (work / "sp" / "payroll.xml").write_text(sp_metadata(decoy))
    doc = {"workspaces": [dict(BASE_CONFIG["workspaces"][0], apps=[
        {"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_file": "sp/payroll.xml"}])]}
    (conf / "acme.yaml").write_text(yaml.safe_dump(doc))
    r = _idhub(["apply", str(conf / "acme.yaml")], tmp_path, work, secret)
    assert r.returncode == 0, r.stderr
    hub = app.extensions["idhub"]
    with hub.db() as db:
        rows = db.scalars(select(SamlServiceProvider)).all()
    assert [(row.entity_id, row.acs[0]["url"]) for row in rows] == [(SP_ENTITY, ACS)]
    b = Browser(app)
    reqid, url = redirect_request(client)
    action, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    assert action == ACS
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE
    # A file that is not there: named, resolved against the config file's directory, and nothing is applied.
    doc["workspaces"][0]["apps"][0]["metadata_file"] = "sp/missing.xml"
    (conf / "acme.yaml").write_text(yaml.safe_dump(doc))
    r = _idhub(["apply", str(conf / "acme.yaml")], tmp_path, work, secret)
    assert r.returncode == 2
    assert f"workspaces[0].apps[0]: metadata_file: cannot read {conf / 'sp' / 'missing.xml'}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
