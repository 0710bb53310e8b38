"""The URLs idhub calls for apps a workspace admin registered over the admin API (attack first): an OIDC client's
``backchannel_logout_uri`` (logout tokens POSTed at session end), a ``private_key_jwt`` client's ``jwks_uri`` (its
keys fetched at the token endpoint) and a SAML app's SOAP SingleLogoutService from its metadata (back-channel
LogoutRequests). They go through idp.netfetch: pointing at 127.0.0.1 — literally, or through a host name that
resolves there — they are not contacted (a local server shows it) unless IDHUB_OUTBOUND_ALLOW_CIDRS lists
127.0.0.0/8, and the refusal is audited; the session ends all the same. An IP literal or localhost the checks would
refuse is refused at registration with a 422 naming the field. Config-file apps keep their behaviour (the other
OIDC and SAML test files)."""

from __future__ import annotations

import socket

import pytest
from saml2 import BINDING_SOAP
from sqlalchemy import select

from admin.api import admin_service
from idp.audit import AuditEvent
from idp.models import Workspace
from oidc.models import OidcClient
from saml.models import SamlServiceProvider, SamlSessionParticipant
from tests.conftest import Browser
from tests.integration.test_admin_api import Api, assert_error
from tests.integration.test_oidc import basic, code_flow, redeem
from tests.integration.test_oidc_jwks_uri import KEY_1, KeyServer, advance, grant
from tests.integration.test_saml_idp import idp_metadata, sp_client, sp_metadata
from tests.integration.test_saml_slo import CRM, SoapSp, sso
from tests.interop.oidc_support import Receiver, make_oidc_app

ALLOW = "IDHUB_OUTBOUND_ALLOW_CIDRS"
APP_CB = "https://app.example.test/cb"


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch):
    monkeypatch.delenv(ALLOW, raising=False)


@pytest.fixture
def app(settings):
    return make_oidc_app(settings)


@pytest.fixture
def hub(app):
    hub = app.extensions["idhub"]
    hub.oidc.backchannel.dispatch = lambda fn: fn()  # inline: the POST (or its refusal) is over when end() returns
    hub.saml.slo.dispatch = lambda fn: fn()
    return hub


@pytest.fixture
def api(app, hub):
    with app.app_context():
        with hub.db() as db:
            ws = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws)
    return Api(app, token)


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def resolve_to_loopback(monkeypatch):
    """Host names under ``.internal.test`` resolve to 127.0.0.1 (what a rebinding or internal DNS name does)."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kw):
        if isinstance(host, str) and host.endswith(".internal.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 443))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def client_row(hub, slug: str) -> OidcClient:
    with hub.db() as db:
        return db.scalar(select(OidcClient).where(OidcClient.slug == slug))


# ---- OIDC back-channel logout ---------------------------------------------------------------------------------
def create_logout_app(api, uri: str, slug: str = "notes") -> dict:
    r = api.post("/workspaces/acme/apps", {"slug": slug, "name": slug.title(), "protocol": "oidc",
                                           "redirect_uris": [APP_CB], "backchannel_logout_uri": uri})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def sign_in_and_out(app, api, created: dict) -> Browser:
    """Alice signs in to the app (which redeems its code: a participant of the session), then signs out."""
    cid = created["settings"]["client_id"]
    b = Browser(app)
    code, verifier = code_flow(b, client_id=cid, redirect_uri=APP_CB, scope="openid")
    r = redeem(api.client, code, verifier, auth=basic(cid, created["client_secret"]), redirect_uri=APP_CB)
    assert r.status_code == 200, r.get_json()
    b.get("/w/acme/settings/security")
    assert b.post("/w/acme/logout", {"csrf_token": b.csrf()}).status_code == 302
    assert b.get("/w/acme/settings/security").status_code == 302  # signed out, whatever the app's endpoint did
    return b


def test_api_backchannel_logout_uri_to_loopback_is_refused_at_registration(api, hub, receiver):
    for uri, reason in ((receiver.url, "loopback address (127.0.0.1)"),
                        ("http://localhost:9/bc", "loopback address"),
                        ("https://10.1.2.3/bc", "private address (10.1.2.3)"),
                        ("https://[::ffff:169.254.169.254]/bc", "link-local address"),
                        ("http://app.example.test/bc", "must use https")):
        err = assert_error(api.post("/workspaces/acme/apps", {
            "slug": "notes", "name": "Notes", "protocol": "oidc", "redirect_uris": [APP_CB],
            "backchannel_logout_uri": uri}), 422, "invalid", field="backchannel_logout_uri")
        assert reason in err["message"], (uri, err)
    # a config-file app changed over the API: the same
    err = assert_error(api.call("PATCH", "/workspaces/acme/apps/wiki", {"backchannel_logout_uri": receiver.url}),
                       422, "invalid", field="backchannel_logout_uri")
    assert "loopback address" in err["message"]
    assert client_row(hub, "wiki").registered_via is None
    assert receiver.requests == []


def test_api_backchannel_logout_to_loopback_is_not_posted_without_the_allow_list(app, api, hub, receiver,
                                                                                 monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")  # allowed when it was registered; no longer when the session ends
    created = create_logout_app(api, receiver.url)
    assert client_row(hub, "notes").registered_via == "api"
    monkeypatch.delenv(ALLOW)
    sign_in_and_out(app, api, created)
    assert receiver.requests == []
    [ev] = events(hub, "oidc.backchannel_logout.failed")
    assert ev.data["client"] == created["settings"]["client_id"]
    assert ev.data["error"] == "backchannel_logout_uri: points to a loopback address (127.0.0.1)"


def test_api_backchannel_logout_through_a_name_resolving_to_loopback_is_not_posted(app, api, hub, receiver,
                                                                                  resolve_to_loopback):
    port = receiver.server.server_address[1]
    created = create_logout_app(api, f"https://logout.internal.test:{port}/backchannel-logout")
    sign_in_and_out(app, api, created)
    assert receiver.requests == []
    [ev] = events(hub, "oidc.backchannel_logout.failed")
    assert ev.data["error"] == "backchannel_logout_uri: resolves to a loopback address (127.0.0.1)"


def test_api_backchannel_logout_reaches_an_allow_listed_network(app, api, hub, receiver, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    created = create_logout_app(api, receiver.url)
    sign_in_and_out(app, api, created)
    assert [r["path"] for r in receiver.requests] == ["/backchannel-logout"]
    assert len(receiver.tokens) == 1 and events(hub, "oidc.backchannel_logout.failed") == []
    assert [e.data["client"] for e in events(hub, "oidc.backchannel_logout")] == [created["settings"]["client_id"]]


def test_a_backchannel_logout_uri_changed_over_the_api_gets_the_checks(app, api, hub, receiver, monkeypatch):
    """The config-file app ``wiki`` gets a new back-channel URI over the API: registered_via api from then on."""
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    r = api.call("PATCH", "/workspaces/acme/apps/wiki", {"backchannel_logout_uri": receiver.url + "?via=api"})
    assert r.status_code == 200, r.get_data(as_text=True)
    row = client_row(hub, "wiki")
    assert row.registered_via == "api" and row.backchannel_logout_uri == receiver.url + "?via=api"
    monkeypatch.delenv(ALLOW)
    from tests.integration.test_oidc import WIKI_AUTH

    b = Browser(app)
    code, verifier = code_flow(b)
    assert redeem(api.client, code, verifier, auth=WIKI_AUTH).status_code == 200
    b.get("/w/acme/settings/security")
    assert b.post("/w/acme/logout", {"csrf_token": b.csrf()}).status_code == 302
    assert receiver.requests == []
    [ev] = events(hub, "oidc.backchannel_logout.failed")
    assert ev.data["client"] == "wiki" and "loopback address" in ev.data["error"]


# ---- OIDC private_key_jwt jwks_uri --------------------------------------------------------------------------
@pytest.fixture
def keys():
    srv = KeyServer()
    yield srv
    srv.close()


def create_signer(api, uri: str) -> str:
    r = api.post("/workspaces/acme/apps", {"slug": "signer", "name": "Signer", "protocol": "oidc",
                                           "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri,
                                           "grant_types": ["client_credentials"]})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert "client_secret" not in r.get_json()
    return r.get_json()["settings"]["client_id"]


def test_api_jwks_uri_to_loopback_is_refused_at_registration(api, keys):
    for uri, reason in ((keys.base + "/jwks.json", "loopback address (127.0.0.1)"),
                        ("https://192.168.1.10/jwks.json", "private address (192.168.1.10)")):
        err = assert_error(api.post("/workspaces/acme/apps", {
            "slug": "signer", "name": "Signer", "protocol": "oidc", "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": uri}), 422, "invalid", field="jwks_uri")
        assert reason in err["message"], (uri, err)
    assert keys.hits == {}


def test_api_jwks_uri_to_loopback_is_not_fetched_without_the_allow_list(app, api, hub, keys, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    cid = create_signer(api, keys.base + "/jwks.json")
    monkeypatch.delenv(ALLOW)
    assert grant(app, cid, KEY_1) == 401
    assert keys.hits == {}
    [ev] = events(hub, "oidc.client_jwks.fetch_failed")
    assert ev.data == {"client": cid, "error": "jwks_uri: points to a loopback address (127.0.0.1)"}
    # allowed again (after the 10 s back-off): fetched, through the checks
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    advance(hub, 11)
    assert grant(app, cid, KEY_1) == 200
    assert keys.hits == {"/jwks.json": 1}


def test_api_jwks_uri_through_a_name_resolving_to_loopback_is_not_fetched(app, api, hub, keys, resolve_to_loopback):
    port = keys.server.server_address[1]
    cid = create_signer(api, f"https://keys.internal.test:{port}/jwks.json")
    assert grant(app, cid, KEY_1) == 401
    assert keys.hits == {}
    [ev] = events(hub, "oidc.client_jwks.fetch_failed")
    assert ev.data["error"] == "jwks_uri: resolves to a loopback address (127.0.0.1)"


def test_api_jwks_uri_on_an_allow_listed_network_works_but_follows_no_redirect(app, api, hub, keys, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    cid = create_signer(api, keys.base + "/jwks.json")
    assert grant(app, cid, KEY_1) == 200
    assert keys.hits == {"/jwks.json": 1}
    assert client_row(hub, "signer").registered_via == "api"
    # a same-origin redirect, which a config-file client follows (test_oidc_jwks_uri), is refused here
    with hub.db() as db:
        from oidc.models import OidcClientJwks

        db.get(OidcClientJwks, client_row(hub, "signer").id).jwks_uri = keys.base + "/same-origin-redirect"
        db.commit()
    assert grant(app, cid, KEY_1) == 401
    assert keys.hits == {"/jwks.json": 1, "/same-origin-redirect": 1}
    [ev] = events(hub, "oidc.client_jwks.fetch_failed")
    assert "redirected (HTTP 302)" in ev.data["error"]


# ---- SAML SOAP SingleLogoutService ----------------------------------------------------------------------------
@pytest.fixture
def soap():
    s = SoapSp()
    yield s
    s.close()


def soap_client(app, tmp_path, soap: SoapSp, slo: str | None = None):
    client = sp_client(tmp_path, idp_metadata(app), signed=True, cn="crm", entity=CRM + "/metadata",
                       acs=CRM + "/acs", slo=slo or soap.url, slo_binding=BINDING_SOAP)
    soap.client = client
    return client


def create_saml_app(api, client) -> None:
    r = api.post("/workspaces/acme/apps", {"slug": "crm", "name": "CRM", "protocol": "saml",
                                           "metadata_xml": sp_metadata(client)})
    assert r.status_code == 201, r.get_data(as_text=True)


def sign_in_then_end(app, hub, client, soap: SoapSp) -> None:
    b = Browser(app)
    soap.name_id = sso(app, b, client, first=True)
    with hub.db() as db:
        sid = db.scalar(select(SamlSessionParticipant.session_id))
    hub.sessions.end(sid, "ended_by_user")  # without the browser: the back channel
    assert b.get("/w/acme/settings/security").status_code == 302


def backchannel_events(hub) -> list[dict]:
    return [e.data for e in events(hub, "saml.slo.backchannel")]


def test_api_saml_app_with_a_loopback_soap_logout_is_refused_at_registration(app, api, hub, soap, tmp_path):
    client = soap_client(app, tmp_path, soap)
    err = assert_error(api.post("/workspaces/acme/apps", {"slug": "crm", "name": "CRM", "protocol": "saml",
                                                         "metadata_xml": sp_metadata(client)}),
                       422, "invalid", field="metadata_xml")
    assert "SOAP SingleLogoutService points to a loopback address (127.0.0.1)" in err["message"]
    with hub.db() as db:
        assert db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.entity_id == CRM + "/metadata")) \
            is None


def test_api_saml_soap_logout_to_loopback_is_not_posted_without_the_allow_list(app, api, hub, soap, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    client = soap_client(app, tmp_path, soap)
    create_saml_app(api, client)
    with hub.db() as db:
        row = db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.entity_id == CRM + "/metadata"))
        assert row.slo_soap_url == soap.url and row.app_settings == {"registered_via": "api"}
    monkeypatch.delenv(ALLOW)
    sign_in_then_end(app, hub, client, soap)
    assert soap.received == []
    assert client.is_logged_in(soap.name_id)  # the SP was not told: it was not contacted
    assert backchannel_events(hub) == [{"sp": CRM + "/metadata", "success": False,
                                        "error": "slo_soap_url: points to a loopback address (127.0.0.1)"}]


def test_api_saml_soap_logout_through_a_name_resolving_to_loopback_is_not_posted(app, api, hub, soap, tmp_path,
                                                                                 resolve_to_loopback):
    port = soap.server.server_address[1]
    client = soap_client(app, tmp_path, soap, slo=f"https://slo.internal.test:{port}/soap")
    create_saml_app(api, client)
    sign_in_then_end(app, hub, client, soap)
    assert soap.received == []
    [ev] = backchannel_events(hub)
    assert ev["success"] is False and ev["error"] == "slo_soap_url: resolves to a loopback address (127.0.0.1)"


def test_api_saml_soap_logout_reaches_an_allow_listed_network(app, api, hub, soap, tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    client = soap_client(app, tmp_path, soap)
    create_saml_app(api, client)
    sign_in_then_end(app, hub, client, soap)
    assert len(soap.received) == 1 and "LogoutRequest" in soap.received[0]
    assert not client.is_logged_in(soap.name_id)  # pysaml2 accepted our signed request
    assert backchannel_events(hub) == [{"sp": CRM + "/metadata", "success": True, "error": None}]
