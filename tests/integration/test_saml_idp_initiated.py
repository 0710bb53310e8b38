"""IdP-initiated SSO from the app launcher (``/w/{ws}/apps``): per app, off by default; an unsolicited Response
to the SP's default ACS after the policy engine, accepted by pysaml2 with ``allow_unsolicited``."""

from __future__ import annotations

import re

import pytest
from saml2 import BINDING_HTTP_POST
from saml2.response import UnsolicitedResponse

from tests.conftest import ALICE, ALICE_PW, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    ACS,
    assert_refused,
    idp_metadata,
    post_form,
    register,
    sp_client,
    sp_metadata,
)

LAUNCH = "/w/acme/apps/payroll/launch"


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def enrol(app, tmp, *, allow_unsolicited=True, **entry):
    client = sp_client(tmp, idp_metadata(app), allow_unsolicited=allow_unsolicited)
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client),
                    **entry}])
    return client


def signed_in(app) -> Browser:
    b = Browser(app)
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302
    return b


def test_launcher_opens_the_app_with_an_unsolicited_response(env):
    app, tmp = env
    client = enrol(app, tmp, idp_initiated=True)
    b = signed_in(app)
    page = b.get("/w/acme/apps")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Payroll" in text and f'action="{LAUNCH}"' in text
    action, saml_response, relay = post_form(b.post(LAUNCH, {"csrf_token": b.csrf()}))
    assert action == ACS and relay is None
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={})
    assert resp.name_id.text == ALICE and resp.in_response_to is None
    assert resp.ava["email"] == [ALICE]
    # an SP that does not accept unsolicited responses refuses it (pysaml2's own check)
    strict = sp_client(tmp, idp_metadata(app), allow_unsolicited=False)
    with pytest.raises(UnsolicitedResponse):
        strict.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={})


def test_off_by_default(env):
    app, tmp = env
    enrol(app, tmp)
    b = signed_in(app)
    text = b.get("/w/acme/apps").get_data(as_text=True)
    assert "Payroll" not in text and "No apps can be opened from here" in text
    b.get("/w/acme/apps")
    assert_refused(b.post(LAUNCH, {"csrf_token": b.csrf()}), "cannot be opened from idhub")


def test_launch_needs_csrf_and_a_session(env):
    app, tmp = env
    enrol(app, tmp, idp_initiated=True)
    b = signed_in(app)
    r = b.post(LAUNCH, {})
    assert r.status_code == 400 and "SAMLResponse" not in r.get_data(as_text=True)
    anon = Browser(app)
    r = anon.get("/w/acme/apps")
    assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]
    r = anon.post(LAUNCH, {})
    assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]


def test_app_policy_applies_to_launches(env):
    """An app that requires a second factor: listed with a note; the launch steps the session up (in place)."""
    app, tmp = env
    enrol(app, tmp, idp_initiated=True, require_mfa=True)
    b = signed_in(app)
    text = b.get("/w/acme/apps").get_data(as_text=True)
    assert "asks for your second factor first" in text
    r = b.post(LAUNCH, {"csrf_token": b.csrf()})
    assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/login/step-up?")
    assert re.search(r"app=payroll", r.headers["Location"])
