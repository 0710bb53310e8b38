"""SAML Single Logout against pysaml2 service providers (their own code builds and checks every logout message):
SP-initiated over HTTP-Redirect and HTTP-POST, front-channel propagation to the other SPs of the session, and the
chain of LogoutRequests after an interactive sign-out of idhub."""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, BINDING_SOAP
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.sigver import verify_redirect_signature
from sqlalchemy import func, select

from idp.audit import AuditEvent
from saml.models import SamlSessionParticipant
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    IDP_ENTITY,
    RSA_SHA256,
    _idp_cert,
    assert_refused,
    full_flow,
    idp_metadata,
    post_form,
    redirect_request,
    register,
    sp_client,
    sp_metadata,
)

IDP_SLO = "http://localhost/w/acme/saml/slo"
CRM = "https://crm.example.test"
HR = "https://hr.example.test"
FORM_RE = re.compile(r'<form id="saml-post" method="post" action="([^"]+)"')


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def add_sp(app, tmp, slug: str, base: str, slo_binding=BINDING_HTTP_REDIRECT, **kw):
    client = sp_client(tmp, idp_metadata(app), signed=True, cn=slug, entity=base + "/metadata", acs=base + "/acs",
                       slo=base + "/slo", slo_binding=slo_binding, **kw)
    register(app, [{"slug": slug, "name": slug.title(), "protocol": "saml", "metadata_xml": sp_metadata(client)}])
    return client


def sso(app, b: Browser, client, first: bool):
    reqid, url = redirect_request(client)
    if first:
        _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    else:
        _a, saml_response, _r = post_form(b.get(url))
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    return resp.name_id


def local(url: str) -> str:
    parts = urlsplit(url)
    assert parts.netloc in ("", "localhost"), url
    return f"{parts.path}?{parts.query}"


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def sp_answers_redirect(client, location: str, name_id, idp_cert: str) -> str:
    """The SP gets our LogoutRequest (HTTP-Redirect), checks our signature and answers; where it sends the browser."""
    q = query(location)
    assert q["SigAlg"] == RSA_SHA256
    assert verify_redirect_signature(q, client.sec.sec_backend, cert=idp_cert)
    info = client.handle_logout_request(q["SAMLRequest"], name_id, BINDING_HTTP_REDIRECT, sign=True,
                                        sign_alg=RSA_SHA256, relay_state=q["RelayState"], sigalg=q["SigAlg"],
                                        signature=q["Signature"])
    return dict(info["headers"])["Location"]


def _sp_id(hub, entity: str) -> str:
    from saml.models import SamlServiceProvider

    with hub.db() as db:
        return db.scalar(select(SamlServiceProvider.id).where(SamlServiceProvider.entity_id == entity))


def audit_types(hub) -> list[str]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent.type)))


def participants(app) -> int:
    with app.extensions["idhub"].db() as db:
        return db.scalar(select(func.count()).select_from(SamlSessionParticipant))


def test_sso_records_the_session_index_per_sp(env):
    app, tmp = env
    crm = add_sp(app, tmp, "crm", CRM)
    hr = add_sp(app, tmp, "hr", HR)
    b = Browser(app)
    sso(app, b, crm, first=True)
    sso(app, b, hr, first=False)
    sso(app, b, crm, first=False)  # again: still one record per SP
    with app.extensions["idhub"].db() as db:
        rows = db.scalars(select(SamlSessionParticipant)).all()
    assert len(rows) == 2 and len({r.session_id for r in rows}) == 1
    assert {r.name_id for r in rows} == {ALICE}
    assert all(r.session_index.startswith("_s") for r in rows)
    assert rows[0].session_id not in str(b.client.get_cookie("idhub_session_acme"))  # the hash, not the cookie


def test_sp_initiated_redirect_logout_reaches_the_other_sp_then_answers(env):
    app, tmp = env
    crm = add_sp(app, tmp, "crm", CRM)
    hr = add_sp(app, tmp, "hr", HR)
    b = Browser(app)
    sso(app, b, crm, first=True)
    hr_name = sso(app, b, hr, first=False)
    cert = _idp_cert(app)
    # crm asks idhub to end the session
    _rid, req = crm.create_logout_request(IDP_SLO, IDP_ENTITY, name_id=NameID(
        text=ALICE, format=NAMEID_FORMAT_EMAILADDRESS), sign=False)
    info = crm.apply_binding(BINDING_HTTP_REDIRECT, str(req), IDP_SLO, relay_state="crm-rs", sign=True,
                             sigalg=RSA_SHA256)
    r = b.get(local(dict(info["headers"])["Location"]))
    assert r.status_code == 302
    # the session is over already; the browser goes on to hr with our LogoutRequest
    assert r.headers["Location"].startswith(HR + "/slo?")
    assert b.security().status_code == 302
    back = sp_answers_redirect(hr, r.headers["Location"], hr_name, cert)
    assert back.startswith(IDP_SLO + "?SAMLResponse=")
    # hr's LogoutResponse brings the browser back; crm gets its answer
    r = b.get(local(back))
    assert r.status_code == 302 and r.headers["Location"].startswith(CRM + "/slo?")
    q = query(r.headers["Location"])
    assert q["RelayState"] == "crm-rs"
    assert verify_redirect_signature(q, crm.sec.sec_backend, cert=cert)
    out = crm.parse_logout_request_response(q["SAMLResponse"], BINDING_HTTP_REDIRECT)
    assert out.status_ok() and out.in_response_to == _rid
    # replaying hr's response: the chain state was consumed
    assert_refused(b.get(local(back)), "does not belong to a logout in progress")
    assert participants(app) == 0


def test_sp_initiated_post_logout(env):
    """HTTP-POST both ways: the LogoutRequest signed inside the XML, our LogoutResponse posted back, signed."""
    app, tmp = env
    crm = add_sp(app, tmp, "crm", CRM, slo_binding=BINDING_HTTP_POST)
    b = Browser(app)
    sso(app, b, crm, first=True)
    rid, req = crm.create_logout_request(IDP_SLO, IDP_ENTITY, name_id=NameID(
        text=ALICE, format=NAMEID_FORMAT_EMAILADDRESS), sign=True, sign_alg=RSA_SHA256,
        digest_alg="http://www.w3.org/2001/04/xmlenc#sha256")
    form = {"SAMLRequest": base64.b64encode(str(req).encode()).decode(), "RelayState": "p"}
    # tampered: refused, session alive
    bad = base64.b64encode(str(req).replace(ALICE, "bob@acme.test").encode()).decode()
    assert_refused(b.post("/w/acme/saml/slo", {"SAMLRequest": bad}), "signature is not valid")
    unsigned = crm.create_logout_request(IDP_SLO, IDP_ENTITY, name_id=NameID(
        text=ALICE, format=NAMEID_FORMAT_EMAILADDRESS), sign=False)[1]
    assert_refused(b.post("/w/acme/saml/slo", {"SAMLRequest": base64.b64encode(str(unsigned).encode()).decode()}),
                   "must be signed")
    assert b.security().status_code == 200
    r = b.post("/w/acme/saml/slo", form)
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert html.unescape(FORM_RE.search(page).group(1)) == CRM + "/slo"
    assert ">Continue</button>" in page and f"form-action 'self' {CRM}/slo" in r.headers["Content-Security-Policy"]
    saml_response = html.unescape(re.search(r'name="SAMLResponse" value="([^"]+)"', page).group(1))
    assert 'name="RelayState" value="p"' in page
    out = crm.parse_logout_request_response(saml_response, BINDING_HTTP_POST)  # checks our XML signature
    assert out.status_ok() and out.in_response_to == rid
    assert b"<ds:Signature" in base64.b64decode(saml_response)
    assert b.security().status_code == 302


def test_sign_out_of_idhub_sends_logout_requests_to_every_sp(env):
    app, tmp = env
    hub = app.extensions["idhub"]
    crm = add_sp(app, tmp, "crm", CRM)
    hr = add_sp(app, tmp, "hr", HR, slo_binding=BINDING_HTTP_POST)
    b = Browser(app)
    crm_name = sso(app, b, crm, first=True)
    hr_name = sso(app, b, hr, first=False)
    cert = _idp_cert(app)
    b.security()
    r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
    assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/saml/logout?h=")
    assert b.security().status_code == 302  # signed out of idhub first
    r = b.get(r.headers["Location"])
    assert r.headers["Location"].startswith(CRM + "/slo?")
    back = sp_answers_redirect(crm, r.headers["Location"], crm_name, cert)
    r = b.get(local(back))
    # hr listens on HTTP-POST: a page that posts the LogoutRequest (JavaScript), or a Continue button (without)
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert html.unescape(FORM_RE.search(page).group(1)) == HR + "/slo"
    assert ">Continue</button>" in page and "/static/saml-post.js" in page and "Signing out" in page
    saml_request = html.unescape(re.search(r'name="SAMLRequest" value="([^"]+)"', page).group(1))
    relay = html.unescape(re.search(r'name="RelayState" value="([^"]+)"', page).group(1))
    info = hr.handle_logout_request(saml_request, hr_name, BINDING_HTTP_POST, sign=True, sign_alg=RSA_SHA256,
                                    digest_alg="http://www.w3.org/2001/04/xmlenc#sha256", relay_state=relay)
    data = info["data"]
    answer = {"SAMLResponse": html.unescape(re.search(r'name="SAMLResponse" value="([^"]+)"', data).group(1)),
              "RelayState": relay}
    r = b.post("/w/acme/saml/slo", answer)
    assert r.status_code == 302 and r.headers["Location"] == "/w/acme/login"
    assert "You have signed out" in b.get("/w/acme/login").get_data(as_text=True)
    assert audit_types(hub).count("saml.slo.request_sent") == 2
    assert participants(app) == 0


def test_logout_responses_are_checked(env):
    app, tmp = env
    crm = add_sp(app, tmp, "crm", CRM)
    b = Browser(app)
    crm_name = sso(app, b, crm, first=True)
    b.security()
    r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
    r = b.get(r.headers["Location"])
    location = r.headers["Location"]
    q = query(location)
    # an unsigned answer, or one for another request, does not move the chain
    info = crm.handle_logout_request(q["SAMLRequest"], crm_name, BINDING_HTTP_REDIRECT, sign=False,
                                     relay_state=q["RelayState"], sigalg=q["SigAlg"], signature=q["Signature"])
    assert_refused(b.get(local(dict(info["headers"])["Location"])), "must be signed")
    # a signed answer to another LogoutRequest of ours, with this chain's RelayState
    hub = app.extensions["idhub"]
    with hub.db() as db:
        from idp.accounts import workspace_by_slug

        ws = workspace_by_slug(db, "acme")
        db.expunge(ws)
    sp_row = hub.saml.sp(_sp_id(hub, CRM + "/metadata"))
    _other_id, other = hub.saml.slo.logout_request(ws, sp_row, {"n": ALICE, "f": NAMEID_FORMAT_EMAILADDRESS,
                                                                "i": "_sother"}, relay_state=q["RelayState"])
    oq = query(other.redirect_url)
    forged = crm.handle_logout_request(oq["SAMLRequest"], crm_name, BINDING_HTTP_REDIRECT, sign=True,
                                       sign_alg=RSA_SHA256, relay_state=q["RelayState"], sigalg=oq["SigAlg"],
                                       signature=oq["Signature"])
    assert_refused(b.get(local(dict(forged["headers"])["Location"])), "does not answer our request")
    # bad input to the endpoint: error pages, never a 500
    assert_refused(b.get("/w/acme/saml/slo"), "no SAML message")
    assert_refused(b.get("/w/acme/saml/slo?SAMLResponse=%%%"), "not base64")
    assert_refused(b.post("/w/acme/saml/slo", {"SAMLRequest": "PHgvPg=="}), "not a SAML 2.0 LogoutRequest")
    assert b.get("/w/acme/saml/logout?h=forged").headers["Location"] == "/w/acme/login"


def test_ended_session_forgets_its_sps_and_audits_them(env):
    app, tmp = env
    hub = app.extensions["idhub"]
    crm = add_sp(app, tmp, "crm", CRM)
    b = Browser(app)
    sso(app, b, crm, first=True)
    assert participants(app) == 1
    with hub.db() as db:
        sid = db.scalar(select(SamlSessionParticipant.session_id))
    hub.sessions.end(sid, "ended_by_user")  # e.g. "End session" from another device: no browser to carry it
    assert participants(app) == 0
    with hub.db() as db:
        ev = db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.slo.not_propagated")).all()
    assert len(ev) == 1 and ev[0].data["sp"] == CRM + "/metadata"


def test_sp_without_slo_url_is_skipped(env):
    """An SP with no SingleLogoutService gets nothing; sign-out still ends on the sign-in page."""
    app, tmp = env
    client = sp_client(tmp, idp_metadata(app), cn="plain", entity="https://plain.test/md", acs="https://plain.test/acs",
                       slo="https://plain.test/slo")
    meta = sp_metadata(client)
    meta = re.sub(r"<(\w+:)?SingleLogoutService[^>]*/>", "", meta)
    register(app, [{"slug": "plain", "name": "Plain", "protocol": "saml", "metadata_xml": meta}])
    b = Browser(app)
    reqid, url = redirect_request(client)
    full_flow(app, b, lambda: b.get(url))
    b.security()
    r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
    assert r.headers["Location"] == "/w/acme/login"


class SoapSp:
    """pysaml2's SP behind a real HTTP server on the loopback, answering SOAP LogoutRequests with its own code."""

    def __init__(self):
        import http.server
        import threading

        self.client = None
        self.name_id = None
        self.received = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                outer.received.append(body)
                info = outer.client.handle_logout_request(body, outer.name_id, BINDING_SOAP, sign=True,
                                                          sign_alg=RSA_SHA256,
                                                          digest_alg="http://www.w3.org/2001/04/xmlenc#sha256")
                data = info["data"].encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/soap"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_ended_session_reaches_soap_sps_over_the_back_channel(env):
    """A session ended without its browser (End session, password change, deprovisioning…): SPs with a SOAP
    SingleLogoutService get a signed LogoutRequest from idhub directly; pysaml2 checks it and answers."""
    app, tmp = env
    hub = app.extensions["idhub"]
    soap = SoapSp()
    try:
        client = sp_client(tmp, idp_metadata(app), signed=True, cn="crm", entity=CRM + "/metadata",
                           acs=CRM + "/acs", slo=soap.url, slo_binding=BINDING_SOAP)
        register(app, [{"slug": "crm", "name": "CRM", "protocol": "saml", "metadata_xml": sp_metadata(client)}])
        soap.client = client
        with hub.db() as db:
            from saml.models import SamlServiceProvider

            sp_row = db.scalar(select(SamlServiceProvider))
            assert sp_row.slo_soap_url == soap.url and sp_row.slo_url is None
        hub.saml.slo.dispatch = lambda fn: fn()  # synchronously, for the assertions below
        b = Browser(app)
        soap.name_id = sso(app, b, client, first=True)
        assert client.is_logged_in(soap.name_id)
        with hub.db() as db:
            sid = db.scalar(select(SamlSessionParticipant.session_id))
        hub.sessions.end(sid, "ended_by_user")
        assert len(soap.received) == 1 and "LogoutRequest" in soap.received[0]
        assert not client.is_logged_in(soap.name_id)  # pysaml2 accepted our signed request
        with hub.db() as db:
            ev = db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.slo.backchannel")).one()
        assert ev.data["success"] is True and ev.data["sp"] == CRM + "/metadata"
        assert "saml.slo.not_propagated" not in audit_types(hub)
    finally:
        soap.close()


def test_losing_a_saml_app_sends_its_sp_a_back_channel_logout_and_keeps_the_idhub_session(env):
    """apps[].assigned_groups: alice leaves the group the SP is assigned to. The SP gets a signed SOAP
    LogoutRequest (pysaml2 accepts it and logs her out); her idhub session stays; the next SSO is refused."""
    from idp.models import Group, GroupMember, User, Workspace

    app, tmp = env
    hub = app.extensions["idhub"]
    soap = SoapSp()
    try:
        client = sp_client(tmp, idp_metadata(app), signed=True, cn="crm", entity=CRM + "/metadata",
                           acs=CRM + "/acs", slo=soap.url, slo_binding=BINDING_SOAP)
        register(app, [{"slug": "crm", "name": "CRM", "protocol": "saml", "metadata_xml": sp_metadata(client),
                        "assigned_groups": ["engineering"]}])
        soap.client = client
        hub.saml.slo.dispatch = lambda fn: fn()
        b = Browser(app)
        soap.name_id = sso(app, b, client, first=True)
        assert client.is_logged_in(soap.name_id)
        with hub.db() as db:
            ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
            alice = db.scalar(select(User.id).where(User.email_normalized == ALICE))
            eng = db.scalar(select(Group.id).where(Group.workspace_id == ws.id, Group.name == "engineering"))
        with hub.app_access.watch(ws.id, "group_membership", [alice]):
            with hub.db() as db:
                db.execute(GroupMember.__table__.delete().where(GroupMember.user_id == alice,
                                                                GroupMember.group_id == eng))
                db.commit()
        assert len(soap.received) == 1 and "LogoutRequest" in soap.received[0]
        assert not client.is_logged_in(soap.name_id)  # pysaml2 accepted our signed request
        assert participants(app) == 0
        assert b.security().status_code == 200  # signed in to idhub still
        types = audit_types(hub)
        assert "app.access.revoked" in types and "saml.slo.backchannel" in types
    finally:
        soap.close()


def test_sign_out_reaches_a_soap_only_sp(env):
    app, tmp = env
    hub = app.extensions["idhub"]
    soap = SoapSp()
    try:
        client = sp_client(tmp, idp_metadata(app), signed=True, cn="crm", entity=CRM + "/metadata",
                           acs=CRM + "/acs", slo=soap.url, slo_binding=BINDING_SOAP)
        register(app, [{"slug": "crm", "name": "CRM", "protocol": "saml", "metadata_xml": sp_metadata(client)}])
        soap.client = client
        hub.saml.slo.dispatch = lambda fn: fn()
        b = Browser(app)
        soap.name_id = sso(app, b, client, first=True)
        b.security()
        r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
        assert r.headers["Location"] == "/w/acme/login"  # nothing for the browser to carry
        assert len(soap.received) == 1 and not client.is_logged_in(soap.name_id)
    finally:
        soap.close()


def test_sp_with_browser_and_soap_logout_gets_the_back_channel_when_no_browser_is_there(env):
    """An SP whose metadata has both an HTTP-Redirect and a SOAP SingleLogoutService: an interactive sign-out
    takes the browser through the front channel (no SOAP call), a session ended without its browser (SCIM
    deprovisioning, over the real SCIM endpoint) reaches it over SOAP, and pysaml2 accepts our signed request."""
    from idp.models import User, Workspace
    from scim.config import apply_scim_tokens
    from tests.integration.scim_helpers import PATCH_OP, TOKEN, Scim

    app, tmp = env
    hub = app.extensions["idhub"]
    soap = SoapSp()
    try:
        client = sp_client(tmp, idp_metadata(app), signed=True, cn="crm", entity=CRM + "/metadata",
                           acs=CRM + "/acs", slo=CRM + "/slo", slo_binding=BINDING_HTTP_REDIRECT,
                           slo_extra=((soap.url, BINDING_SOAP),))
        register(app, [{"slug": "crm", "name": "CRM", "protocol": "saml", "metadata_xml": sp_metadata(client)}])
        soap.client = client
        from saml.models import SamlServiceProvider

        with hub.db() as db:
            row = db.scalar(select(SamlServiceProvider))
            assert row.slo_url == CRM + "/slo" and row.slo_soap_url == soap.url
            apply_scim_tokens(db, db.scalar(select(Workspace).where(Workspace.slug == "acme")),
                              [{"name": "okta", "token": TOKEN}])
            db.commit()
        hub.saml.slo.dispatch = lambda fn: fn()
        # with the browser: the front channel only
        b = Browser(app)
        sso(app, b, client, first=True)
        b.security()
        r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
        r = b.get(local(r.headers["Location"]))
        assert r.status_code == 302 and r.headers["Location"].startswith(CRM + "/slo?SAMLRequest=")
        assert soap.received == []
        # without it: SCIM deprovisions Alice while she is signed in to the CRM
        b = Browser(app)
        soap.name_id = sso(app, b, client, first=True)
        assert client.is_logged_in(soap.name_id)
        with hub.db() as db:
            alice = db.scalar(select(User.id).join(Workspace).where(Workspace.slug == "acme", User.email == ALICE))
        r = Scim(app).request("PATCH", f"/Users/{alice}", {"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "active", "value": False}]})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert len(soap.received) == 1 and "LogoutRequest" in soap.received[0]
        assert not client.is_logged_in(soap.name_id)
        with hub.db() as db:
            ev = db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.slo.backchannel")).one()
        assert ev.data["success"] is True and ev.data["sp"] == CRM + "/metadata"
        assert "saml.slo.not_propagated" not in audit_types(hub)
        assert b.security().status_code == 302
    finally:
        soap.close()
