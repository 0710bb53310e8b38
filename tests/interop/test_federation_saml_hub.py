"""The whole upstream SAML path through idhub's own routes, with ``saml-idp`` (npm) as the upstream IdP:
email at idhub's sign-in -> home-realm discovery -> AuthnRequest (HTTP-Redirect) -> saml-idp's sign-in form ->
its signed SAMLResponse posted to idhub's ACS -> resume -> a signed-in idhub session for a just-in-time user keyed
on the IdP's subject, with groups. idhub runs in-process (Flask test client as the browser on idhub's side), the
upstream is a real Node server driven with ``requests``."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from lxml import html as lhtml
from sqlalchemy import select

from federation import saml_sp
from federation.models import FederationLink
from idp.models import Group, GroupMember, User
from tests.conftest import BASE_CONFIG, Browser
from tests.interop.oidc_upstream.peer import audit_events, make_fed_app
from tests.interop.test_federation_saml_idp import GROUP_IDS, OID, PROFILES, TID, SamlIdp, form_fields, node_peer

BASE = "http://localhost"


@pytest.fixture(scope="module")
def node():
    return node_peer()


def start_peer(node, tmp_path, shape: str, slug: str) -> SamlIdp:
    conn = {"slug": slug}
    return SamlIdp(node, tmp_path, shape, saml_sp.acs_url(conn, BASE, "acme"),
                   saml_sp.sp_entity_id(conn, BASE, "acme"))


def hub_app(settings, shape: str, slug: str, metadata: str, domain: str = "acme.test", **extra):
    path = Path(settings.outbox_dir).parent / f"{slug}-metadata.xml"
    path.write_text(metadata)
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [{"slug": slug, "name": shape, "protocol": "saml", "preset": shape,
                                            "metadata_file": str(path), "domains": [domain], **extra}]
    return make_fed_app(settings, cfg)


def upstream_sign_in(sso_url: str, user: dict) -> dict:
    """saml-idp's sign-in form, then the fields of its auto-posting form (SAMLResponse, RelayState) and its action."""
    s = requests.Session()
    page = s.get(sso_url, timeout=10)
    assert page.status_code == 200, page.text[:500]
    form = lhtml.fromstring(page.text).xpath("//form[contains(@action, 'signin')]")[0]
    fields = {**form_fields(form), "userName": user["userName"], "nameIdFormat": user["nameIdFormat"]}
    posted = s.post(urljoin(page.url, form.get("action")), data=fields, timeout=10)
    assert posted.status_code == 200, posted.text[:500]
    form = lhtml.fromstring(posted.text).xpath("//form[@name='hiddenform']")[0]
    return {"action": form.get("action"), **form_fields(form)}


def sign_in(app, shape: str, email: str):
    b = Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": email})
    assert r.status_code == 302 and "/sso/" in r.headers["Location"], r.get_data(as_text=True)[:500]
    r = b.get(r.headers["Location"])
    if r.status_code == 200:  # a page that sends the browser on (meta refresh + a link), or a redirect
        page = lhtml.fromstring(r.get_data(as_text=True))
        sso = page.xpath("//meta[@http-equiv='refresh']/@content")[0].split("url=", 1)[1]
    else:
        assert r.status_code == 302, r.get_data(as_text=True)[:800]
        sso = r.headers["Location"]
    assert "SAMLRequest" in parse_qs(urlsplit(sso).query)
    posted = upstream_sign_in(sso, PROFILES[shape]["user"])
    acs = posted.pop("action")
    assert acs.startswith(BASE + "/w/acme/sso/") and acs.endswith("/acs")
    r = b.post(acs.removeprefix(BASE), data=posted)
    return b, posted, r


def finish(b, r):
    assert r.status_code == 302 and "/resume" in r.headers["Location"], r.get_data(as_text=True)[:800]
    return b.get(r.headers["Location"].removeprefix(BASE))


def user_and_groups(hub, email):
    with hub.db() as db:
        u = db.scalar(select(User).where(User.email_normalized == email))
        groups = sorted(db.scalars(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                                   .where(GroupMember.user_id == u.id)))
        link = db.scalar(select(FederationLink).where(FederationLink.user_id == u.id))
        return u, groups, link


def test_okta_shaped_saml_sign_in_through_idhub(node, tmp_path, settings):
    idp = start_peer(node, tmp_path, "okta", "okta")
    try:
        app = hub_app(settings, "okta", "okta", idp.metadata)
        hub = app.extensions["idhub"]
        b, posted, r = sign_in(app, "okta", "ada@acme.test")
        r = finish(b, r)
        assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), \
            r.get_data(as_text=True)[:800]
        assert "ada@acme.test" in b.security().get_data(as_text=True)
        ada, groups, link = user_and_groups(hub, "ada@acme.test")
        assert link.subject == "00u1ada0persist" and ada.name == "Ada Lovelace" and ada.password_hash is None
        assert {"Engineering", "Admins"} <= set(groups)
        assert audit_events(hub, "federation.signin.success")[-1].data["connection"] == "okta"
        # the very same SAMLResponse posted again (another browser): refused, with idhub's error page
        replay = Browser(app).post("/w/acme/sso/okta/acs", data=posted)
        assert replay.status_code in (400, 403) and "Traceback" not in replay.get_data(as_text=True)
    finally:
        idp.stop()


def test_azure_shaped_saml_sign_in_through_idhub(node, tmp_path, settings):
    idp = start_peer(node, tmp_path, "azure_ad", "azure")
    try:
        app = hub_app(settings, "azure_ad", "azure", idp.metadata, domain="contoso.test")
        hub = app.extensions["idhub"]
        b, _, r = sign_in(app, "azure_ad", "ada@contoso.test")
        r = finish(b, r)
        assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), \
            r.get_data(as_text=True)[:800]
        ada, groups, link = user_and_groups(hub, "ada@contoso.test")
        assert link.subject == f"{TID}:{OID}"  # tid:oid, never the NameID or the email
        assert set(GROUP_IDS) <= set(groups)
    finally:
        idp.stop()


def test_idp_with_another_certificate_is_refused_by_idhub(node, tmp_path, settings):
    from tests.helpers import saml_builder as sb

    idp = start_peer(node, tmp_path, "okta", "okta")
    try:
        forged_meta = sb.metadata(PROFILES["okta"]["issuer"], [sb.keypair("someone-else")[1]],
                                  idp.url + "/saml/sso")
        app = hub_app(settings, "okta", "okta", forged_meta)
        hub = app.extensions["idhub"]
        _, _, r = sign_in(app, "okta", "ada@acme.test")
        assert r.status_code in (400, 403), r.get_data(as_text=True)[:500]
        assert "Traceback" not in r.get_data(as_text=True)
        with hub.db() as db:
            assert db.scalar(select(User).where(User.email_normalized == "ada@acme.test")) is None
    finally:
        idp.stop()


@pytest.mark.browser
def test_saml_sign_in_in_chromium_against_idhub_serve(node, tmp_path, browser):
    """Real Chromium, a real ``idhub serve`` and saml-idp: the email page, saml-idp's own sign-in page, its
    auto-posting form to idhub's ACS, and a signed-in idhub page at the end."""
    from playwright.sync_api import expect

    from tests.helpers.live import LiveHub
    from tests.services import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    conn = {"slug": "okta"}
    idp = SamlIdp(node, tmp_path, "okta", saml_sp.acs_url(conn, base, "acme"), saml_sp.sp_entity_id(conn, base, "acme"))
    try:
        meta_file = tmp_path / "okta-metadata.xml"
        meta_file.write_text(idp.metadata)
        cfg = copy.deepcopy(BASE_CONFIG)
        cfg["workspaces"][0]["connections"] = [{"slug": "okta", "name": "Okta", "protocol": "saml",
                                                "preset": "okta", "metadata_file": str(meta_file),
                                                "domains": ["acme.test"]}]
        with LiveHub(cfg, port=port) as hub:
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(hub.url("/w/acme/login"))
                page.get_by_label("Email").fill("ada@acme.test")
                page.get_by_role("button", name="Continue").click()
                page.wait_for_url(idp.url + "/saml/sso**")
                page.locator("form.form-profile button[type=submit]").first.click()
                page.wait_for_url(hub.url("/w/acme/apps"))  # employees land on the app launcher
                expect(page.get_by_role("heading", name="Apps", exact=True)).to_be_visible()
                page.goto(hub.url("/w/acme/settings/security"))
                expect(page.get_by_text("ada@acme.test").first).to_be_visible()
            finally:
                context.close()
    finally:
        idp.stop()
