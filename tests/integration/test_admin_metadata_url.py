"""SAML apps and SAML connections from a metadata URL through the real admin API and console (issue 8): fetched
by idp.netfetch, so a loopback metadata server works only when the deployment's IDHUB_OUTBOUND_ALLOW_CIDRS allows
127.0.0.0/8, and is refused with a 422 naming metadata_url when it does not; the refresh of such a URL checks again
every time; ``idhub export-config`` still writes it as metadata_url. An OIDC connection added over the API gets the
same checks for its discovery document."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from datetime import timedelta

import pytest
from lxml import etree
from sqlalchemy import select

from admin.api import admin_service
from idp.audit import AuditEvent
from idp.models import Workspace
from tests.helpers import saml_builder as sb
from tests.integration.test_admin_api import Api, assert_error
from tests.integration.test_admin_console import assert_labelled, signed_in, text

ALLOW = "IDHUB_OUTBOUND_ALLOW_CIDRS"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
SP_ENTITY = "https://payroll.example.test/sp"
IDP_ENTITY = "https://idp.corp.test"
ROUTES: dict[str, tuple[int, str, bytes]] = {}
HITS: list[str] = []


def sp_metadata(acs: str) -> str:
    root = etree.Element(f"{{{sb.MD}}}EntityDescriptor", nsmap={"md": sb.MD, "ds": sb.DS}, entityID=SP_ENTITY)
    sp = etree.SubElement(root, f"{{{sb.MD}}}SPSSODescriptor", AuthnRequestsSigned="false", WantAssertionsSigned="true",
                          protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol")
    kd = etree.SubElement(sp, f"{{{sb.MD}}}KeyDescriptor", use="signing")
    data = etree.SubElement(etree.SubElement(kd, f"{{{sb.DS}}}KeyInfo"), f"{{{sb.DS}}}X509Data")
    etree.SubElement(data, f"{{{sb.DS}}}X509Certificate").text = sb.cert_b64(sb.keypair("payroll-sp")[1])
    etree.SubElement(sp, f"{{{sb.MD}}}AssertionConsumerService", Binding=POST, Location=acs, index="0",
                     isDefault="true")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


def idp_metadata(cn: str) -> str:
    return sb.metadata(IDP_ENTITY, [sb.keypair(cn)[1]], "https://idp.corp.test/sso")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        HITS.append(self.path)
        status, ctype, body = ROUTES.get(self.path, (404, "text/plain", b"not here"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    from saml import config

    monkeypatch.delenv(ALLOW, raising=False)
    monkeypatch.setattr(config, "_fetched", {})  # no copy of an earlier test's fetch
    HITS.clear()
    ROUTES.clear()
    ROUTES["/sp.xml"] = (200, "application/samlmetadata+xml", sp_metadata("https://payroll.example.test/acs").encode())
    ROUTES["/idp.xml"] = (200, "application/samlmetadata+xml", idp_metadata("corp-idp-1").encode())


@pytest.fixture
def api(app, hub):
    with app.app_context():
        ws = ws_id(hub)
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws)
    return Api(app, token)


def ws_id(hub) -> str:
    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def sp_row(hub):
    from saml.models import SamlServiceProvider

    with hub.db() as db:
        return db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.entity_id == SP_ENTITY))


def conn_row(hub, slug: str):
    from federation.models import FederationConnection

    with hub.db() as db:
        return db.scalar(select(FederationConnection).where(FederationConnection.slug == slug))


def exported(hub) -> dict:
    """``idhub export-config``'s document for acme."""
    from admin.export import export_workspace
    from idp.accounts import workspace_by_slug

    with hub.db() as db:
        doc, _env = export_workspace(db, workspace_by_slug(db, "acme"))
    return doc


def reapply(hub, doc: dict) -> None:
    from idp.configfile import apply, validate

    with hub.db() as db:
        apply(db, validate(doc), hub.hasher, secret_key=hub.settings.secret_key)
        db.commit()


SAML_APP = {"slug": "payroll", "name": "Payroll", "protocol": "saml"}
SAML_CONN = {"slug": "corp", "name": "Corp IdP", "protocol": "saml", "domains": ["corp.test"]}


# ---- refused without the allow-list -------------------------------------------------------------------------------
def test_without_the_allow_list_a_loopback_metadata_url_is_refused_naming_the_field(api, site):
    for path, body in (("/workspaces/acme/apps", {**SAML_APP, "metadata_url": site + "/sp.xml"}),
                       ("/workspaces/acme/connections", {**SAML_CONN, "metadata_url": site + "/idp.xml"})):
        err = assert_error(api.post(path, body), 422, "invalid", field="metadata_url")
        assert err["message"] == "points to a loopback address (127.0.0.1)", err
    assert HITS == []
    assert api.get("/workspaces/acme/apps").get_json()["total"] == 0
    assert api.get("/workspaces/acme/connections").get_json()["total"] == 0


def test_a_host_name_that_resolves_inward_is_refused(api, monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, *a, **kw):
        if host == "metadata.corp.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 443))]
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    for path, body in (("/workspaces/acme/apps", {**SAML_APP, "metadata_url": "https://metadata.corp.example/sp"}),
                       ("/workspaces/acme/connections",
                        {**SAML_CONN, "metadata_url": "https://metadata.corp.example/idp"})):
        err = assert_error(api.post(path, body), 422, "invalid", field="metadata_url")
        assert err["message"] == "resolves to a private address (10.0.0.5)", err


def test_exactly_one_metadata_source(api, site, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    xml = ROUTES["/idp.xml"][2].decode()
    assert_error(api.post("/workspaces/acme/connections", {**SAML_CONN, "metadata_url": site + "/idp.xml",
                                                           "metadata_xml": xml}), 422, field="metadata_url")
    assert_error(api.post("/workspaces/acme/apps", {**SAML_APP, "metadata_url": site + "/sp.xml",
                                                    "entity_id": SP_ENTITY}), 422, field="metadata_url")
    assert HITS == []


# ---- allowed: SAML apps ---------------------------------------------------------------------------------------------
def test_a_saml_app_from_a_loopback_metadata_url_with_the_allow_list(app, hub, api, site, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    url = site + "/sp.xml"
    r = api.post("/workspaces/acme/apps", {**SAML_APP, "metadata_url": url, "require_mfa": True})
    assert r.status_code == 201, r.get_data(as_text=True)
    s = r.get_json()["settings"]
    assert s["sp_metadata_url"] == url and s["sp_metadata_fetched_at"]
    assert s["sp_entity_id"] == SP_ENTITY and s["acs_urls"] == ["https://payroll.example.test/acs"]
    assert HITS and set(HITS) == {"/sp.xml"}
    assert api.get("/workspaces/acme/apps/payroll").get_json()["settings"]["sp_metadata_url"] == url
    row = sp_row(hub)
    assert row.metadata_url == url and row.app_settings["registered_via"] == "api" and row.require_mfa
    [ev] = events(hub, "admin.app.created")
    assert ev.data["metadata_url"] == url and ev.subject_id == "payroll"
    # a bad document is refused as pasted XML is
    ROUTES["/html"] = (200, "text/html", b"<html><body>sign in</body></html>")
    err = assert_error(api.post("/workspaces/acme/apps", {"slug": "x", "name": "X", "protocol": "saml",
                                                          "metadata_url": site + "/html"}), 422)
    assert "not an EntityDescriptor" in err["message"]
    ROUTES["/moved"] = (302, "text/plain", b"")
    err = assert_error(api.post("/workspaces/acme/apps", {"slug": "x", "name": "X", "protocol": "saml",
                                                          "metadata_url": site + "/moved"}), 422, field="metadata_url")
    assert "redirected (HTTP 302)" in err["message"]
    # idhub export-config writes the URL, not the registration flag, and applying it back stores the same app
    doc = exported(hub)
    [entry] = [a for a in doc["workspaces"][0]["apps"] if a["slug"] == "payroll"]
    assert entry["metadata_url"] == url and "registered_via" not in entry and "metadata_xml" not in entry
    assert entry.get("require_mfa") is True
    reapply(hub, doc)  # the operator's file now declares it (fetched again, as the config file fetches)
    row = sp_row(hub)
    assert row.metadata_url == url and row.require_mfa and "registered_via" not in row.app_settings
    assert [a for a in exported(hub)["workspaces"][0]["apps"] if a["slug"] == "payroll"] == [entry]


def test_the_refresh_of_an_api_metadata_url_checks_again_every_time(app, hub, api, site, monkeypatch):
    from idp.accounts import workspace_by_slug
    from saml.config import refresh_metadata

    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    assert api.post("/workspaces/acme/apps", {**SAML_APP, "metadata_url": site + "/sp.xml"}).status_code == 201
    ROUTES["/sp.xml"] = (200, "application/xml", sp_metadata("https://payroll.example.test/acs2").encode())
    monkeypatch.delenv(ALLOW)  # the deployment no longer allows the network: the daily refresh is refused
    fetched = len(HITS)
    with hub.db() as db:
        assert refresh_metadata(db, workspace_by_slug(db, "acme"), max_age=0, audit=hub.audit) == []
    assert len(HITS) == fetched  # nothing was sent
    [failed] = events(hub, "saml.metadata.refresh_failed")
    assert "loopback address (127.0.0.1)" in failed.data["error"]
    assert [a["url"] for a in sp_row(hub).acs] == ["https://payroll.example.test/acs"]  # the old settings stay
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    with hub.db() as db:
        assert refresh_metadata(db, workspace_by_slug(db, "acme"), max_age=0, audit=hub.audit) == [SP_ENTITY]
    assert [a["url"] for a in sp_row(hub).acs] == ["https://payroll.example.test/acs2"]
    assert sp_row(hub).app_settings["registered_via"] == "api"  # and it stays checked


def test_the_config_file_keeps_fetching_without_the_checks(app, hub, site):
    """The operator's file is trusted: its metadata_url to a loopback mirror works without any allow-list."""
    from idp.accounts import workspace_by_slug
    from saml.config import apply_saml_apps, refresh_metadata

    with hub.db() as db:
        apply_saml_apps(db, workspace_by_slug(db, "acme"), [{**SAML_APP, "metadata_url": site + "/sp.xml"}])
        db.commit()
        assert refresh_metadata(db, workspace_by_slug(db, "acme"), max_age=0, audit=hub.audit) == [SP_ENTITY]
    assert sp_row(hub).app_settings.get("registered_via") is None


# ---- allowed: SAML connections --------------------------------------------------------------------------------------
def test_a_saml_connection_from_a_loopback_metadata_url_with_the_allow_list(app, hub, api, site, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    url = site + "/idp.xml"
    r = api.post("/workspaces/acme/connections", {**SAML_CONN, "metadata_url": url})
    assert r.status_code == 201, r.get_data(as_text=True)
    out = r.get_json()
    assert out["settings"]["metadata_url"] == url and out["settings"]["registered_via"] == "api"
    assert HITS == ["/idp.xml"]
    row = conn_row(hub, "corp")
    assert row.settings["metadata_xml"] == ROUTES["/idp.xml"][2].decode()
    [ev] = events(hub, "admin.connection.created")
    assert ev.data["metadata_url"] == url
    # validated as pasted metadata is: a document without a usable IdP descriptor is refused, naming the field
    ROUTES["/sp-not-idp.xml"] = ROUTES["/sp.xml"]
    err = assert_error(api.post("/workspaces/acme/connections", {**SAML_CONN, "slug": "c2", "domains": [],
                                                                 "metadata_url": site + "/sp-not-idp.xml"}),
                       422, field="metadata_url")
    assert "not usable IdP metadata" in err["message"]
    # export-config: the URL, not the copy, and no registration flag
    doc = exported(hub)
    [entry] = [c for c in doc["workspaces"][0]["connections"] if c["slug"] == "corp"]
    assert entry["metadata_url"] == url and "metadata_xml" not in entry and "registered_via" not in entry
    reapply(hub, doc)
    assert conn_row(hub, "corp").settings["metadata_url"] == url
    assert [c for c in exported(hub)["workspaces"][0]["connections"] if c["slug"] == "corp"] == [entry]


def test_the_connection_refresh_checks_again_every_time(app, hub, api, site, monkeypatch):
    from federation.service import METADATA_REFRESH, FederationService
    from idp.accounts import workspace_by_slug

    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    assert api.post("/workspaces/acme/connections", {**SAML_CONN, "metadata_url": site + "/idp.xml"}).status_code \
        == 201
    old_xml = conn_row(hub, "corp").settings["metadata_xml"]
    new_xml = idp_metadata("corp-idp-2")
    ROUTES["/idp.xml"] = (200, "application/xml", new_xml.encode())

    def age() -> None:
        with hub.db() as db:
            from federation.models import FederationConnection

            row = db.scalar(select(FederationConnection).where(FederationConnection.slug == "corp"))
            row.updated_at = hub.clock() - METADATA_REFRESH - timedelta(minutes=1)
            db.commit()

    fed = FederationService(hub)
    monkeypatch.delenv(ALLOW)
    age()
    fetched = len(HITS)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    assert fed.connection(ws, "corp")["metadata_xml"] == old_xml  # refused: the old, pinned metadata stays
    assert len(HITS) == fetched
    [failed] = events(hub, "federation.metadata.refresh_failed")
    assert "loopback address (127.0.0.1)" in failed.data["reason"]
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    age()
    assert fed.connection(ws, "corp")["metadata_xml"] == new_xml
    assert events(hub, "federation.metadata.refreshed")


def test_patch_accepts_a_metadata_url_where_it_accepts_metadata_xml(app, hub, api, site, monkeypatch):
    xml = ROUTES["/idp.xml"][2].decode()
    assert api.post("/workspaces/acme/connections", {**SAML_CONN, "metadata_xml": xml}).status_code == 201
    url = site + "/idp.xml"
    patch = lambda body: api.call("PATCH", "/workspaces/acme/connections/corp", body)  # noqa: E731
    assert_error(patch({"metadata_url": url}), 422, field="metadata_url")  # not allowed: refused, unchanged
    assert HITS == [] and "metadata_url" not in conn_row(hub, "corp").settings
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    new_xml = idp_metadata("corp-idp-3")
    ROUTES["/idp.xml"] = (200, "application/xml", new_xml.encode())
    r = patch({"metadata_url": url})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["changed"] == ["metadata_url", "metadata_xml"]
    assert r.get_json()["settings"]["metadata_url"] == url
    row = conn_row(hub, "corp")
    assert row.settings["metadata_url"] == url and row.settings["metadata_xml"] == new_xml
    assert events(hub, "admin.connection.updated")[-1].data["metadata_url"] == url
    # null: no longer read again; the copy idhub has stays, as pasted metadata
    r = patch({"metadata_url": None})
    assert r.status_code == 200 and r.get_json()["changed"] == ["metadata_url"]
    assert "metadata_url" not in conn_row(hub, "corp").settings
    assert conn_row(hub, "corp").settings["metadata_xml"] == new_xml


def test_patching_a_config_file_url_over_the_api_makes_it_checked(app, hub, api, site):
    """A URL the operator's file registered is trusted; the same URL given again over the API is not."""
    from idp.configfile import apply, validate
    from tests.conftest import BASE_CONFIG

    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["workspaces"][0]["connections"] = [{**SAML_CONN, "metadata_url": site + "/idp.xml"}]
    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher, secret_key=hub.settings.secret_key)
        db.commit()
    assert "registered_via" not in conn_row(hub, "corp").settings
    r = api.call("PATCH", "/workspaces/acme/connections/corp", {"trust_mfa": True})  # the URL untouched: as it was
    assert r.status_code == 200 and "registered_via" not in conn_row(hub, "corp").settings
    err = assert_error(api.call("PATCH", "/workspaces/acme/connections/corp", {"metadata_url": site + "/idp.xml"}),
                       422, field="metadata_url")
    assert "loopback address" in err["message"]


# ---- OIDC connections "from an issuer" -----------------------------------------------------------------------------
def test_an_api_oidc_connection_discovers_through_the_checks(app, hub, api, site, monkeypatch):
    from federation.base import UpstreamError
    from federation.service import FederationService
    from idp.accounts import workspace_by_slug

    issuer = site + "/oidc"
    ROUTES["/oidc/.well-known/openid-configuration"] = (200, "application/json", json.dumps({
        "issuer": issuer, "authorization_endpoint": issuer + "/authorize", "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks", "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"]}).encode())
    body = {"slug": "okta", "name": "Okta", "protocol": "oidc", "issuer": issuer, "client_id": "c1",
            "domains": ["okta.test"]}
    # an issuer on an internal IP literal is refused at once, naming the field
    err = assert_error(api.post("/workspaces/acme/connections", body), 422, field="issuer")
    assert err["message"] == "points to a loopback address (127.0.0.1)"
    err = assert_error(api.post("/workspaces/acme/connections", {**body, "issuer": "https://169.254.169.254/x"}),
                       422, field="issuer")
    assert "link-local" in err["message"]
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    assert api.post("/workspaces/acme/connections", body).status_code == 201
    assert conn_row(hub, "okta").settings["registered_via"] == "api"
    fed = FederationService(hub)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    conn = fed.connection(ws, "okta")
    assert fed.rp.metadata(conn)["token_endpoint"] == issuer + "/token"
    assert HITS == ["/oidc/.well-known/openid-configuration"]
    # the allow-list withdrawn: the discovery request is not sent (a fresh service: no cached document)
    monkeypatch.delenv(ALLOW)
    with pytest.raises(UpstreamError) as exc:
        FederationService(hub).rp.metadata(conn)
    assert exc.value.check == "discovery" and "issuer: points to a loopback address (127.0.0.1)" in exc.value.message
    assert len(HITS) == 1
    # the token request (to the endpoint the discovery document named) goes through the same checks
    doc = fed.rp.metadata(conn)  # cached from the allowed fetch above
    with pytest.raises(UpstreamError) as exc:
        fed.rp._redeem(conn, doc, "http://localhost/w/acme/sso/okta/callback", "code", "verifier")  # noqa: SLF001
    assert exc.value.check == "token" and "token_endpoint: points to a loopback address" in exc.value.message
    assert len(HITS) == 1
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    ROUTES["/oidc/token"] = (200, "application/json", json.dumps({"access_token": "a", "token_type": "Bearer",
                                                                  "id_token": "h.p.s"}).encode())
    tokens = fed.rp._redeem(conn, doc, "http://localhost/w/acme/sso/okta/callback", "code", "v")  # noqa: SLF001
    assert tokens["id_token"] == "h.p.s" and HITS[-1] == "/oidc/token"


# ---- the console ----------------------------------------------------------------------------------------------------
def test_the_console_forms_take_a_metadata_url(app, hub, site, monkeypatch):
    admin = signed_in(app, "alice@acme.test")
    for page, field_id in (("apps", "saml-metadata-url"), ("connections", "sc-metadata-url")):
        html = text(admin.get(f"/w/acme/admin/{page}"))
        assert_labelled(html)
        assert f'<label for="{field_id}">Metadata URL' in html
    # refused without the allow-list: the page names the field, nothing is stored or fetched
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {**SAML_APP, "metadata_url": site + "/sp.xml", "metadata_xml": ""})
    assert r.status_code == 422 and "Metadata URL points to a loopback address (127.0.0.1)" in text(r)
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections",
                        {**SAML_CONN, "domains": "corp.test", "metadata_url": site + "/idp.xml", "metadata_xml": ""})
    assert r.status_code == 422 and "Metadata URL points to a loopback address (127.0.0.1)" in text(r)
    assert HITS == []
    # allowed
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {**SAML_APP, "metadata_url": site + "/sp.xml", "metadata_xml": ""})
    assert r.status_code == 201, text(r)[:500]
    assert f"read from <code>{site}/sp.xml</code>" in text(r)
    assert "read from" in text(admin.get("/w/acme/admin/apps/payroll"))
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections",
                        {**SAML_CONN, "domains": "corp.test", "metadata_url": site + "/idp.xml", "metadata_xml": ""})
    assert r.status_code == 302, text(r)[:500]
    page = text(admin.get("/w/acme/admin/connections"))
    assert f"Metadata: from <code>{site}/idp.xml</code>" in page
    edit = text(admin.get("/w/acme/admin/connections/corp"))
    assert_labelled(edit)
    assert f"from <code>{site}/idp.xml</code>" in edit and 'id="e-metadata-url"' in edit
    # audited as the signed-in admin
    assert events(hub, "admin.app.created")[-1].actor_email == "alice@acme.test"
    assert events(hub, "admin.connection.created")[-1].data["metadata_url"] == site + "/idp.xml"
    # the edit page switches pasted metadata to a URL
    xml = ROUTES["/idp.xml"][2].decode()
    svc_body = {"slug": "pasted", "name": "Pasted", "protocol": "saml", "metadata_xml": xml}
    from tests.integration.test_admin_console import hub_ws

    with app.app_context():
        from admin.tokens import Principal

        admin_service().create_connection(Principal("token", "setup", False, hub_ws(hub)), "acme", svc_body)
    from tests.integration.test_admin_console import edit_form, save

    fields = edit_form(admin, "pasted")
    assert fields["metadata_url"] == ""
    r = save(admin, "pasted", {**fields, "metadata_url": site + "/idp.xml"})
    assert r.status_code == 302, text(r)[:500]
    assert conn_row(hub, "pasted").settings["metadata_url"] == site + "/idp.xml"
