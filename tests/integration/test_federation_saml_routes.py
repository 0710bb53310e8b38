"""The SAML routes of a connection (contract URLs) around F2's ``federation.saml_sp``: SP metadata, the start
page (AuthnRequest bound to the login flow through RelayState), the ACS (cross-site POST, validated, parked) and
the same-site resume that checks the browser; plus the admins' Test connection page."""

from __future__ import annotations

import base64
import copy
import re
import zlib
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree
from sqlalchemy import select

from federation.models import FederationLink
from idp.models import User
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, Browser
from tests.helpers import saml_builder as sb
from tests.interop.oidc_upstream.peer import audit_events, make_fed_app, navigate_target

BASE = "http://localhost"
IDP = "http://www.okta.com/exk1test"
SSO = "https://acme.okta.test/app/sso/saml"
ACS = f"{BASE}/w/acme/sso/okta-saml/acs"
SP = f"{BASE}/w/acme/sso/okta-saml/metadata"
ATTRS = {"email": "sam@saml-corp.test", "firstName": "Sam", "lastName": "Saml", "groups": ["sales"]}


def saml_config(**extra) -> dict:
    _, cert = sb.keypair("okta-test-idp")
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [{
        "slug": "okta-saml", "name": "Okta SAML", "protocol": "saml", "preset": "okta",
        "metadata_xml": sb.metadata(IDP, [cert], SSO), "domains": ["saml-corp.test"], **extra}]
    return cfg


@pytest.fixture
def app(settings):
    return make_fed_app(settings, saml_config())


def signed_response(request_id: str | None, **kw) -> str:
    key, cert = sb.keypair("okta-test-idp")
    resp = sb.response(issuer=IDP, acs=ACS, audience=SP, in_response_to=request_id, nameid="00u1sam",
                       attributes=ATTRS, **kw)
    sb.sign(sb.assertion_of(resp), key, cert)
    sb.sign(resp, key, cert)
    return sb.encode(resp)


def start(app, b: Browser | None = None, email: str = "sam@saml-corp.test"):
    """Email step → the start page; returns (browser, RelayState, AuthnRequest ID)."""
    b = b or Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": email})
    assert r.status_code == 302 and "/sso/okta-saml/start" in r.headers["Location"]
    r = b.get(r.headers["Location"])
    assert r.status_code == 200
    return (b, *redirect_params(navigate_target(r.get_data(as_text=True))))


def redirect_params(url: str) -> tuple[str, str]:
    assert url.startswith(SSO + "?")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    xml = zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15)
    req = etree.fromstring(xml)
    assert req.get("AssertionConsumerServiceURL") == ACS
    return q["RelayState"], req.get("ID")


def post_acs(b: Browser, response: str, relay: str | None):
    return b.post("/w/acme/sso/okta-saml/acs", {"SAMLResponse": response, **({"RelayState": relay} if relay else {})})


def test_sp_metadata(app):
    r = Browser(app).get("/w/acme/sso/okta-saml/metadata")
    assert r.status_code == 200 and r.mimetype == "application/samlmetadata+xml"
    body = r.get_data(as_text=True)
    assert f'entityID="{SP}"' in body and ACS in body
    assert Browser(app).get("/w/acme/sso/nope/metadata").status_code == 404


def test_sign_in_through_the_acs_and_resume(app):
    hub = app.extensions["idhub"]
    b, relay, request_id = start(app)
    r = post_acs(b, signed_response(request_id), relay)
    assert r.status_code == 302 and "/sso/okta-saml/resume?r=" in r.headers["Location"]
    r = b.get(r.headers["Location"])
    assert r.status_code == 302 and r.headers["Location"].endswith("/settings/security"), r.get_data(as_text=True)
    assert b.security().status_code == 200
    with hub.db() as db:
        sam = db.scalar(select(User).where(User.email_normalized == "sam@saml-corp.test"))
        assert db.scalar(select(FederationLink.subject).where(FederationLink.user_id == sam.id)) == "00u1sam"
    assert audit_events(hub, "federation.signin.success")[-1].data["protocol"] == "saml"


def test_replayed_response_and_unsolicited_responses(app):
    hub = app.extensions["idhub"]
    b, relay, request_id = start(app)
    response = signed_response(request_id)
    assert post_acs(b, response, relay).status_code == 302
    r = post_acs(b, response, relay)  # the RelayState was used: as if unsolicited, which is not allowed
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "unsolicited"
    r = post_acs(Browser(app), signed_response(None), None)
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "unsolicited"


def test_replay_cache_when_unsolicited_responses_are_allowed(settings):
    app = make_fed_app(settings, saml_config(allow_unsolicited=True))
    hub = app.extensions["idhub"]
    response = signed_response(None)
    b = Browser(app)
    r = post_acs(b, response, None)
    assert r.status_code == 302
    assert b.get(r.headers["Location"]).headers["Location"].endswith("/settings/security")
    r = post_acs(Browser(app), response, None)
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "replay"


def test_result_cannot_be_resumed_in_another_browser(app):
    hub = app.extensions["idhub"]
    b, relay, request_id = start(app)
    r = post_acs(b, signed_response(request_id), relay)
    other = Browser(app)
    r = other.get(r.headers["Location"])
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "state"
    assert other.security().status_code == 302


def test_response_for_another_request_is_refused(app):
    hub = app.extensions["idhub"]
    b, relay, _ = start(app)
    r = post_acs(b, signed_response("_another_request"), relay)
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "in_response_to"


def test_hostile_acs_input(app):
    b = Browser(app)
    assert post_acs(b, "", None).status_code == 400
    assert post_acs(b, "A" * (300 * 1024), None).status_code in (400, 413)
    b2, relay, _ = start(app)
    r = post_acs(b2, base64.b64encode(b"<not-xml").decode(), relay)
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)


# ---- Test connection ---------------------------------------------------------------------------------------------
def test_test_connection_page_is_for_admins(app):
    b = Browser(app)
    r = b.get("/w/acme/sso/okta-saml/test")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    from tests.conftest import BOB, BOB_PW

    b.login("acme", BOB, BOB_PW)
    assert b.get("/w/acme/sso/okta-saml/test").status_code == 403


def test_test_connection_shows_claims_mapping_and_failed_checks(app):
    hub = app.extensions["idhub"]
    b = Browser(app)
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302
    page = b.get("/w/acme/sso/okta-saml/test")
    assert page.status_code == 200 and "Test connection: Okta SAML" in page.get_data(as_text=True)
    assert ACS in page.get_data(as_text=True)
    r = b.form_post("/w/acme/sso/okta-saml/test", "/w/acme/sso/okta-saml/test", {})
    relay, request_id = redirect_params(navigate_target(r.get_data(as_text=True)))
    r = b.get(post_acs(b, signed_response(request_id), relay).headers["Location"])
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "The identity provider signed you in" in body
    assert "00u1sam" in body and "sam@saml-corp.test" in body and "just-in-time" in body
    with hub.db() as db:  # a test changes nothing
        assert db.scalar(select(User).where(User.email_normalized == "sam@saml-corp.test")) is None
    # a failing check is named, with what to change
    r = b.form_post("/w/acme/sso/okta-saml/test", "/w/acme/sso/okta-saml/test", {})
    relay, request_id = redirect_params(navigate_target(r.get_data(as_text=True)))
    old = datetime.now(UTC) - timedelta(hours=2)
    r = post_acs(b, signed_response(request_id, now=old), relay)
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "Failed check:" in body
    check = audit_events(hub, "federation.signin.failure")[-1].data
    assert check["test"] is True and re.search(rf"<code>{re.escape(check['check'])}</code>", body)


def test_expiring_idp_certificate_is_warned_about(settings):
    _, cert = sb.keypair("soon-expiring-idp", days=10)
    cfg = saml_config()
    cfg["workspaces"][0]["connections"][0]["metadata_xml"] = sb.metadata(IDP, [cert], SSO)
    app = make_fed_app(settings, cfg)
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    body = b.get("/w/acme/sso/okta-saml/test").get_data(as_text=True)
    assert "An IdP signing certificate expires on" in body


def test_metadata_url_is_read_at_apply_and_refreshed_daily(settings):
    """An IdP certificate rollover published in its metadata reaches idhub without a new ``idhub apply``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from federation.models import FederationConnection

    served = {"xml": sb.metadata(IDP, [sb.keypair("okta-test-idp")[1]], SSO)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = served["xml"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/samlmetadata+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = saml_config()
        conn = cfg["workspaces"][0]["connections"][0]
        del conn["metadata_xml"]
        conn["metadata_url"] = f"http://127.0.0.1:{server.server_port}/metadata"
        app = make_fed_app(settings, cfg)
        hub = app.extensions["idhub"]
        b, relay, request_id = start(app)  # read at apply time
        assert post_acs(b, signed_response(request_id), relay).status_code == 302
        _, new_cert = sb.keypair("okta-next-idp")
        served["xml"] = sb.metadata(IDP, [new_cert], SSO)
        with hub.db() as db:
            row = db.scalar(select(FederationConnection))
            assert sb.cert_b64(new_cert) not in row.settings["metadata_xml"]
            row.updated_at = datetime.now(UTC) - timedelta(hours=25)
            db.commit()
        start(app)  # the first use after a day re-reads the URL
        with hub.db() as db:
            assert sb.cert_b64(new_cert) in db.scalar(select(FederationConnection)).settings["metadata_xml"]
        assert audit_events(hub, "federation.metadata.refreshed")
    finally:
        server.shutdown()
