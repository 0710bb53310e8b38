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
from tests.conftest import BASE_CONFIG, Browser
from tests.helpers import saml_builder as sb
from tests.interop.oidc_upstream.peer import admin_browser, audit_events, make_fed_app, navigate_target

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
    kw.setdefault("acs", ACS)
    kw.setdefault("audience", SP)
    kw.setdefault("nameid", "00u1sam")
    kw.setdefault("attributes", ATTRS)
    resp = sb.response(issuer=IDP, in_response_to=request_id, **kw)
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


def post_acs(b: Browser, response: str, relay: str | None, ws: str = "acme"):
    return b.post(f"/w/{ws}/sso/okta-saml/acs", {"SAMLResponse": response, **({"RelayState": relay} if relay else {})})


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
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), r.get_data(as_text=True)
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
    assert b.get(r.headers["Location"]).headers["Location"].endswith("/apps")
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
    b = admin_browser(app)  # an admin signed in with a second factor
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
    body = admin_browser(app).get("/w/acme/sso/okta-saml/test").get_data(as_text=True)
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


# ---- helpers for the tests below ------------------------------------------------------------------------------------
def sam_link(app, email: str) -> list[str]:
    with app.extensions["idhub"].db() as db:
        uid = db.scalar(select(User.id).where(User.email_normalized == email))
        return list(db.scalars(select(FederationLink.subject).where(FederationLink.user_id == uid)))


def failed_check(app) -> str:
    return audit_events(app.extensions["idhub"], "federation.signin.failure")[-1].data["check"]


def two_workspaces(**extra) -> dict:
    """acme and globex, both enterprise, each with a connection ``okta-saml`` to the very same IdP."""
    cfg = saml_config(**extra)
    cfg["workspaces"][1].update(plan="enterprise", slug="globex", name="Globex", domains=["globex.test"])
    cfg["workspaces"][1]["users"] = [
        {"email": "gina@globex.test", "name": "Gina", "password": "Gl0bex-Example-Pass!", "role": "admin"}]
    cfg["workspaces"][1]["connections"] = [{**cfg["workspaces"][0]["connections"][0], "domains": ["globex.test"]}]
    return cfg


# ---- account linking and creation on an email (nOAuth) ------------------------------------------------------------
@pytest.mark.parametrize("flag", [None, ["true"], ["false"], ["1"]])
def test_saml_email_is_unverified_unless_the_connection_says_so(settings, flag):
    """SAML has no email_verified: an attribute saying "true" (or "false") is whatever the IdP's app sends."""
    from tests.conftest import BOB

    app = make_fed_app(settings, saml_config(domains=["acme.test"], link_by_email=True))
    attrs = {**ATTRS, "email": BOB, **({"email_verified": flag} if flag else {})}
    b, relay, request_id = start(app, email=BOB)
    r = b.get(post_acs(b, signed_response(request_id, attributes=attrs), relay).headers["Location"])
    assert r.status_code == 403 and "did not confirm that your email address is verified" in r.get_data(as_text=True)
    assert failed_check(app) == "email_unverified" and sam_link(app, BOB) == []
    assert b.security().status_code == 302


def test_saml_email_verified_by_idp_links_on_the_nameid(settings):
    from tests.conftest import BOB

    app = make_fed_app(settings, saml_config(domains=["acme.test"], link_by_email=True, email_verified_by_idp=True))
    b, relay, request_id = start(app, email=BOB)
    r = b.get(post_acs(b, signed_response(request_id, attributes={**ATTRS, "email": BOB}), relay).headers["Location"])
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert sam_link(app, BOB) == ["00u1sam"]


def test_saml_just_in_time_creation_only_inside_the_connections_domains(app):
    hub = app.extensions["idhub"]
    b, relay, request_id = start(app)
    attrs = {**ATTRS, "email": "sam@elsewhere.test"}
    r = b.get(post_acs(b, signed_response(request_id, attributes=attrs), relay).headers["Location"])
    page = r.get_data(as_text=True)
    assert r.status_code == 403 and "does not cover" in page and "saml-corp.test" in page
    assert failed_check(app) == "email_domain"
    with hub.db() as db:
        assert db.scalar(select(User).where(User.email_normalized == "sam@elsewhere.test")) is None


# ---- metadata_url: https only, and any fetch failure keeps the old metadata ----------------------------------------
class MetadataServer:
    """A raw socket server for the IdP's metadata that can misbehave the way urllib3 (not requests) reports:
    a body shorter than its Content-Length (ProtocolError) or a body that is not the gzip it claims (DecodeError)."""

    def __init__(self, xml: str):
        import socket
        import threading

        self.xml, self.mode = xml, "ok"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/metadata"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.recv(65536)
                body = self.xml.encode()
                if self.mode == "short":
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 1000) + body[:50])
                elif self.mode == "gzip":
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n" + b"x" * 20)
                else:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode", ["short", "gzip"])
def test_a_broken_metadata_fetch_keeps_the_old_metadata_and_is_audited(settings, mode):
    from federation.models import FederationConnection

    server = MetadataServer(sb.metadata(IDP, [sb.keypair("okta-test-idp")[1]], SSO))
    try:
        cfg = saml_config()
        conn = cfg["workspaces"][0]["connections"][0]
        del conn["metadata_xml"]
        conn["metadata_url"] = server.url
        app = make_fed_app(settings, cfg)
        hub = app.extensions["idhub"]
        with hub.db() as db:
            row = db.scalar(select(FederationConnection))
            old = row.settings["metadata_xml"]
            row.updated_at = datetime.now(UTC) - timedelta(hours=25)
            db.commit()
        server.mode = mode
        b, relay, request_id = start(app)  # the refresh fails; the sign-in goes on with the pinned metadata
        r = b.get(post_acs(b, signed_response(request_id), relay).headers["Location"])
        assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
        with hub.db() as db:
            assert db.scalar(select(FederationConnection)).settings["metadata_xml"] == old
        failed = audit_events(hub, "federation.metadata.refresh_failed")
        assert len(failed) == 1 and failed[0].data["reason"] in ("ProtocolError", "DecodeError")
        start(app)  # retried in an hour, not on every request
        assert len(audit_events(hub, "federation.metadata.refresh_failed")) == 1
        # and at `idhub apply`: a config error naming the key, not a traceback
        from idp.configfile import ConfigError, validate

        with pytest.raises(ConfigError) as exc:
            validate(cfg)
        assert any(e.startswith("workspaces[0].connections[0].metadata_url: could not be fetched")
                   for e in exc.value.errors), exc.value.errors
    finally:
        server.close()


# ---- certificates --------------------------------------------------------------------------------------------------
def test_expiring_extra_pinned_certificate_is_warned_about(settings):
    _, soon = sb.keypair("soon-expiring-next-idp", days=12)
    _, gone = sb.keypair("expired-idp", days=0)  # expires as it is made
    app = make_fed_app(settings, saml_config(certs=[soon, gone]))
    body = admin_browser(app).get("/w/acme/sso/okta-saml/test").get_data(as_text=True)
    assert "The pinned certificate certs[0] expires on" in body
    assert "The pinned certificate certs[1] expired on" in body
    assert "An IdP signing certificate expires" not in body  # the metadata's certificate has a year left


# ---- Test connection: who may, and what is audited ----------------------------------------------------------------
def test_test_connection_needs_an_admin_with_a_second_factor(settings):
    from tests.conftest import ALICE, ALICE_PW, BOB, BOB_PW

    cfg = saml_config()
    cfg["workspaces"][0]["policies"].pop("require_mfa_for_admins")  # the default: admins need a second factor
    app = make_fed_app(settings, cfg)
    b = Browser(app)
    r = b.login("acme", ALICE, ALICE_PW)  # an admin without 2FA: led to set it up inside the sign-in
    assert r.status_code == 302 and "/login/enroll" in r.headers["Location"]
    b = admin_browser(app, ALICE, amr=("pwd",))  # an admin session with the password only
    r = b.get("/w/acme/sso/okta-saml/test")
    assert r.status_code == 302 and "/w/acme/login/step-up" in r.headers["Location"]  # a second factor first
    r = b.post("/w/acme/sso/okta-saml/test", {"csrf_token": b.csrf(b.security().get_data(as_text=True))})
    assert r.status_code == 302 and "/w/acme/login/step-up" in r.headers["Location"]
    assert not audit_events(app.extensions["idhub"], "federation.test.started")
    member = admin_browser(app, BOB, amr=("pwd", "totp"))  # a member, even with 2FA
    assert member.get("/w/acme/sso/okta-saml/test").status_code == 403
    b = Browser(app)
    b.login("acme", BOB, BOB_PW)
    assert b.get("/w/acme/sso/okta-saml/test").status_code == 403
    assert admin_browser(app).get("/w/acme/sso/okta-saml/test").status_code == 200


def test_test_connection_without_admin_second_factor_when_the_workspace_relaxes_it(settings):
    from tests.conftest import ALICE, ALICE_PW

    cfg = saml_config()
    cfg["workspaces"][0]["policies"]["require_mfa_for_admins"] = False
    app = make_fed_app(settings, cfg)
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    assert b.get("/w/acme/sso/okta-saml/test").status_code == 200


def test_an_admin_of_one_workspace_cannot_test_anothers_connections(settings):
    app = make_fed_app(settings, two_workspaces())
    hub = app.extensions["idhub"]
    alice = admin_browser(app)  # acme's admin, with 2FA
    r = alice.get("/w/globex/sso/okta-saml/test")
    assert r.status_code == 302 and "/w/globex/login" in r.headers["Location"]
    # acme's session cookie presented as globex's
    token = alice.client.get_cookie("idhub_session_acme").value
    alice.client.set_cookie("idhub_session_globex", token)
    assert alice.get("/w/globex/sso/okta-saml/test").status_code in (302, 403)
    r = alice.post("/w/globex/sso/okta-saml/test", {"csrf_token": alice.csrf(alice.security().get_data(as_text=True))})
    assert r.status_code in (302, 403)
    assert not audit_events(hub, "federation.test.started")
    assert admin_browser(app, "gina@globex.test", ws_slug="globex").get("/w/globex/sso/okta-saml/test") \
        .status_code == 200


def test_test_connection_events_name_the_admin(app):
    hub = app.extensions["idhub"]
    b = admin_browser(app)
    with hub.db() as db:
        from tests.conftest import ALICE

        alice_id = db.scalar(select(User.id).where(User.email_normalized == ALICE))
    r = b.form_post("/w/acme/sso/okta-saml/test", "/w/acme/sso/okta-saml/test", {})
    relay, request_id = redirect_params(navigate_target(r.get_data(as_text=True)))
    assert b.get(post_acs(b, signed_response(request_id), relay).headers["Location"]).status_code == 200
    assert audit_events(hub, "federation.test.started")[-1].actor_id == alice_id
    assert audit_events(hub, "federation.test.succeeded")[-1].actor_id == alice_id


def test_an_unusable_login_flow_at_start_is_audited(app):
    b = Browser(app)
    b.get("/w/acme/login")
    r = b.get("/w/acme/sso/okta-saml/start?flow=not-a-flow")
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/login")
    fail = audit_events(app.extensions["idhub"], "federation.signin.failure")[-1].data
    assert fail["check"] == "state" and fail["connection"] == "okta-saml"


# ---- cross-workspace ACS, RelayState, Host headers -----------------------------------------------------------------
def test_a_response_for_workspace_a_is_refused_at_workspace_bs_acs(settings):
    """The same IdP serves both workspaces; acme's answer must not sign anyone in at globex."""
    app = make_fed_app(settings, two_workspaces())
    hub = app.extensions["idhub"]
    b, relay, request_id = start(app)  # acme's sign-in
    response = signed_response(request_id)  # for acme's ACS and audience
    r = post_acs(b, response, relay, ws="globex")  # acme's RelayState at globex's ACS
    assert r.status_code == 400 and failed_check(app) == "in_response_to"
    # globex's own sign-in in this browser, answered with acme's response
    r = b.form_post("/w/globex/login", "/w/globex/login", {"email": "sam@globex.test"})
    page = b.get(r.headers["Location"]).get_data(as_text=True)
    q = {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(page)).query).items()}
    g_request = etree.fromstring(zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15)).get("ID")
    r = post_acs(b, signed_response(g_request), q["RelayState"], ws="globex")
    assert r.status_code == 400 and failed_check(app) in ("destination", "recipient", "audience")
    with hub.db() as db:
        assert db.scalar(select(User).where(User.email_normalized == "sam@saml-corp.test")) is None
    assert b.get("/w/globex/settings/security").status_code == 302


@pytest.mark.parametrize("relay", ["https://evil.test/", "//evil.test", "/\\evil.test", "javascript:alert(1)"])
def test_relaystate_is_never_a_redirect_target(settings, relay):
    app = make_fed_app(settings, saml_config(allow_unsolicited=True))
    b = Browser(app)
    r = post_acs(b, signed_response(None), relay)  # unsolicited, with a hostile RelayState
    assert r.status_code == 302 and urlsplit(r.headers["Location"]).path == "/w/acme/sso/okta-saml/resume"
    r = b.get(r.headers["Location"])
    loc = r.headers["Location"]
    assert r.status_code == 302 and urlsplit(loc).netloc in ("", "localhost") and "evil" not in loc, loc
    assert urlsplit(loc).path.startswith("/w/acme/")
    # and where IdP-initiated responses are off, the RelayState is just unknown
    app = make_fed_app(settings, saml_config())
    r = post_acs(Browser(app), signed_response(None), relay)
    assert r.status_code == 400 and "evil" not in r.headers.get("Location", "") and failed_check(app) == "unsolicited"


def test_acs_url_and_entity_id_come_from_the_base_url_not_the_host_header(app):
    hostile = {"headers": {"X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https",
                           "Forwarded": "host=evil.test;proto=https"},
               "environ_overrides": {"HTTP_HOST": "evil.test"}}
    b = Browser(app)
    r = b.get("/w/acme/sso/okta-saml/start", **hostile)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    redirect_params(navigate_target(r.get_data(as_text=True)))  # asserts AssertionConsumerServiceURL == ACS
    q = {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query).items()}
    req = etree.fromstring(zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15))
    assert req.find("{urn:oasis:names:tc:SAML:2.0:assertion}Issuer").text == SP
    body = Browser(app).get("/w/acme/sso/okta-saml/metadata", **hostile).get_data(as_text=True)
    assert f'entityID="{SP}"' in body and f'Location="{ACS}"' in body and "evil" not in body
    # a response addressed to the hostile host's ACS is refused even when the request came in under that host
    b, relay, request_id = start(app)
    evil_acs = "https://evil.test/w/acme/sso/okta-saml/acs"
    r = b.post("/w/acme/sso/okta-saml/acs", {"SAMLResponse": signed_response(request_id, acs=evil_acs),
                                             "RelayState": relay}, **hostile)
    assert r.status_code == 400 and failed_check(app) in ("destination", "recipient")


# ---- trust_mfa, end to end -----------------------------------------------------------------------------------------
MFA_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:MultifactorContract"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


def saml_signin(app, context: str):
    b, relay, request_id = start(app)
    r = post_acs(b, signed_response(request_id, authn_context=context), relay)
    return b, b.get(r.headers["Location"])


@pytest.mark.parametrize("trust,context,second_factor_by_idhub", [
    (True, MFA_CONTEXT, False),  # trusted and the IdP did MFA: no idhub 2FA
    (True, PASSWORD_CONTEXT, True),  # trusted, but the IdP did no MFA
    (False, MFA_CONTEXT, True),  # the IdP did MFA, but the connection is not trusted for it
])
def test_saml_trust_mfa_end_to_end(settings, trust, context, second_factor_by_idhub):
    cfg = saml_config(trust_mfa=trust)
    cfg["workspaces"][0]["policies"]["require_mfa"] = True
    app = make_fed_app(settings, cfg)
    hub = app.extensions["idhub"]
    b, r = saml_signin(app, context)
    assert r.status_code == 302
    if second_factor_by_idhub:
        assert "/enroll" in r.headers["Location"] or "/login/mfa" in r.headers["Location"], r.headers["Location"]
        assert b.security().status_code == 302
    else:
        assert r.headers["Location"].endswith("/apps")
        assert b.security().status_code == 200
        ok = audit_events(hub, "federation.signin.success")[-1].data
        assert ok["amr"] == ["fed", "upstream_mfa"] and ok["mfa"] is True


# ---- re-authentication (ForceAuthn) ---------------------------------------------------------------------------------
NXT = "/w/acme/settings/security/2fa"


def authn_request(url: str):
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    return etree.fromstring(zlib.decompress(base64.b64decode(q["SAMLRequest"]), -15)), q["RelayState"]


def response_authenticated_at(request_id: str, authn_instant: datetime, nameid: str = "00u1sam") -> str:
    """A valid signed response whose AuthnStatement says the person authenticated at ``authn_instant``."""
    key, cert = sb.keypair("okta-test-idp")
    resp = sb.response(issuer=IDP, in_response_to=request_id, acs=ACS, audience=SP, nameid=nameid, attributes=ATTRS)
    statement = sb.assertion_of(resp).find("saml:AuthnStatement", sb.NS)
    statement.set("AuthnInstant", authn_instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    sb.sign(sb.assertion_of(resp), key, cert)
    sb.sign(resp, key, cert)
    return sb.encode(resp)


def signed_in_sam(app) -> Browser:
    b, relay, request_id = start(app)
    r = b.get(post_acs(b, signed_response(request_id), relay).headers["Location"])
    assert r.status_code == 302 and b.security().status_code == 200
    return b


def saml_reauth(b: Browser) -> tuple[str, str]:
    """The security page asks to confirm it's you; "Continue with Okta SAML" → (RelayState, AuthnRequest ID)."""
    r = b.get(NXT)
    assert "/settings/security/reauth" in r.headers["Location"]
    page = b.get(r.headers["Location"]).get_data(as_text=True)
    assert "Continue with Okta SAML" in page and 'name="password"' not in page  # JIT: no idhub password
    r = b.post("/w/acme/sso/okta-saml/reauth", {"next": NXT, "csrf_token": b.csrf(page)})
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    req, relay = authn_request(navigate_target(r.get_data(as_text=True)))
    assert req.get("ForceAuthn") == "true"
    return relay, req.get("ID")


def test_sign_in_does_not_force_authentication(app):
    b = Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": "sam@saml-corp.test"})
    req, _ = authn_request(navigate_target(b.get(r.headers["Location"]).get_data(as_text=True)))
    assert req.get("ForceAuthn") in (None, "false")


def test_reauthentication_sends_force_authn_and_needs_a_fresh_authn_instant(app):
    hub = app.extensions["idhub"]
    b = signed_in_sam(app)
    relay, request_id = saml_reauth(b)
    stale = datetime.now(UTC) - timedelta(hours=1)  # the IdP answered from its session (ignored ForceAuthn)
    r = post_acs(b, response_authenticated_at(request_id, stale), relay)  # refused at the ACS already
    assert r.status_code == 403 and "did not ask you to sign in again" in r.get_data(as_text=True)
    fail = audit_events(hub, "federation.signin.failure")[-1].data
    assert fail["check"] == "authn_instant" and fail["reauth"] is True
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "authn_instant"
    assert "/reauth" in b.get(NXT).headers["Location"]
    relay, request_id = saml_reauth(b)
    r = b.get(post_acs(b, response_authenticated_at(request_id, datetime.now(UTC)), relay).headers["Location"])
    assert r.status_code == 302 and r.headers["Location"].endswith(NXT), r.get_data(as_text=True)[:300]
    assert b.get(NXT).status_code == 200
    ok = audit_events(hub, "auth.reauth.success")[-1].data
    assert ok["connection"] == "okta-saml" and ok["method"] == "saml"


def test_reauthentication_by_another_saml_subject_is_refused(app):
    hub = app.extensions["idhub"]
    b = signed_in_sam(app)
    relay, request_id = saml_reauth(b)
    response = response_authenticated_at(request_id, datetime.now(UTC), nameid="00u1someone-else")
    r = b.get(post_acs(b, response, relay).headers["Location"])
    assert r.status_code == 403 and "as someone other than sam@saml-corp.test" in r.get_data(as_text=True)
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "identity_mismatch"
    assert "sam@saml-corp.test" in b.security().get_data(as_text=True)  # still sam, still unconfirmed
    assert "/reauth" in b.get(NXT).headers["Location"]
    with hub.db() as db:
        assert db.scalar(select(FederationLink).where(FederationLink.subject == "00u1someone-else")) is None
