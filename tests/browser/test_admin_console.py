"""Issue 8 in real Chromium, against a real upstream IdP (node ``oidc-provider``, shaped like Okta): an admin signs
in with 2FA, opens the console from the security page, invites a user, creates a group, registers an OIDC app and
sees its secret once, adds an OIDC connection from the local provider's issuer URL, tests it by signing in at the
provider, creates a SAML app from pasted SP metadata (a real certificate), sets an IP allowlist that keeps them
in, creates a SCIM token, and finds each step in the audit log, attributed to them. It also adds an LDAP directory
(a real slapd) from the Connections page's form and edits the Okta connection (trust its MFA, rotate the
secret). Screenshots of the console go to docs/screenshots/admin-*.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pyotp
import pytest
from lxml import etree
from playwright.sync_api import Page, expect

from .conftest import Ui, acme_config

try:  # tests/ is on sys.path when tests/ is not a package (see conftest.py)
    from helpers.saml_builder import DS, MD, cert_b64, keypair
    from helpers.slapd import Slapd
    from helpers.smtp import free_port
    from interop.oidc_upstream.peer import CLIENT_SECRET, PASSWORD, Upstream, okta_shape
except ImportError:
    from tests.helpers.saml_builder import DS, MD, cert_b64, keypair
    from tests.helpers.slapd import Slapd
    from tests.helpers.smtp import free_port
    from tests.interop.oidc_upstream.peer import CLIENT_SECRET, PASSWORD, Upstream, okta_shape

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"


def admin_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": True}  # everyone (so alice too) sets up 2FA at her first sign-in
    ws["users"][0]["role"] = "admin"
    return cfg


def sp_metadata(entity_id: str, base: str) -> str:
    """What a SAML app's admin page offers for download: an SPSSODescriptor with a signing certificate (a real
    self-signed X.509 one), two HTTP-POST ACS endpoints and a logout endpoint."""
    root = etree.Element(f"{{{MD}}}EntityDescriptor", nsmap={"md": MD, "ds": DS}, entityID=entity_id)
    sp = etree.SubElement(root, f"{{{MD}}}SPSSODescriptor", AuthnRequestsSigned="false", WantAssertionsSigned="true",
                          protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol")
    kd = etree.SubElement(sp, f"{{{MD}}}KeyDescriptor", use="signing")
    data = etree.SubElement(etree.SubElement(kd, f"{{{DS}}}KeyInfo"), f"{{{DS}}}X509Data")
    etree.SubElement(data, f"{{{DS}}}X509Certificate").text = cert_b64(keypair("crm-sp")[1])
    etree.SubElement(sp, f"{{{MD}}}SingleLogoutService", Binding=REDIRECT, Location=f"{base}/saml/slo")
    etree.SubElement(sp, f"{{{MD}}}NameIDFormat").text = EMAIL_FORMAT
    for i, path in enumerate(("/saml/acs", "/saml/acs/alt")):
        etree.SubElement(sp, f"{{{MD}}}AssertionConsumerService", Binding=POST, Location=base + path,
                         index=str(i), isDefault="true" if i == 0 else "false")
    return etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8").decode()


def sign_in_enrolling_totp(ui: Ui, page: Page) -> pyotp.TOTP:
    ui.submit_credentials(page, ui.alice)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    secret = page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", "")
    totp = pyotp.TOTP(secret)
    page.get_by_label("Verification code").fill(totp.now())
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    page.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_signed_in(page)
    return totp


@pytest.fixture
def slapd():
    server = Slapd().start()
    yield server
    server.stop()


@pytest.fixture
def upstream_and_hub(hub_factory):
    """The upstream IdP knows idhub's callback before idhub starts: idhub's port is chosen first."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/w/acme/sso/okta/callback"
    with Upstream(okta_shape(free_port(), [callback])) as up:
        # the upstream IdP listens on 127.0.0.1: an issuer added in the console may be reached only when the
        # deployment allows the network (idp.netfetch refuses internal addresses otherwise)
        yield up, hub_factory(admin_config(), port=port, extra_env={"IDHUB_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"})


def test_admin_connects_okta_tests_it_adds_apps_sets_an_allowlist_and_sees_it_all_audited(upstream_and_hub,
                                                                                         new_page, slapd):
    up, hub = upstream_and_hub
    ui = Ui(hub)
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_page(viewport={"width": 1280, "height": 900})
    nav = page.get_by_role("navigation", name="Admin console")

    def shoot(name: str) -> None:
        path = OUT / f"admin-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        # nothing sticks out of the page to the right (the audit log's Details column did)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (name, overflow)
        clipped = page.evaluate("""() => [...document.querySelectorAll('.table-wrap')]
            .filter(w => w.scrollWidth > w.clientWidth + 1).length""")
        assert clipped == 0, f"a table is wider than its card on {name}"

    # a member never gets in; anonymous visitors get the sign-in page
    other = new_page()
    other.goto(ui.url("/admin/"))
    expect(other).to_have_url(ui.login_url_re)

    sign_in_enrolling_totp(ui, page)
    page.get_by_role("link", name="Admin console").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("#stat-signins")).to_have_text("1")
    shoot("dashboard")

    # 1. invite a user
    nav.get_by_role("link", name="Users", exact=True).click()
    add = page.get_by_role("region", name="Add a user")
    add.get_by_label("Email", exact=True).fill("carol@acme.test")
    add.get_by_label("Name", exact=True).fill("Carol Example")
    add.get_by_role("button", name="Add user").click()
    expect(ui.notice(page, "Invited carol@acme.test")).to_be_visible()
    expect(page.locator('tr[data-user="carol@acme.test"]')).to_contain_text("Invited")
    shoot("users")

    # 2. a group
    nav.get_by_role("link", name="Groups", exact=True).click()
    page.get_by_role("region", name="New group").get_by_label("Name", exact=True).fill("engineering")
    page.get_by_role("button", name="Create group").click()
    expect(ui.notice(page, "Created the group engineering.")).to_be_visible()
    expect(page.locator('tr[data-group="engineering"]')).to_contain_text("0")
    shoot("groups")

    # 3. an OIDC app: the secret once
    nav.get_by_role("link", name="Apps", exact=True).click()
    oidc = page.get_by_role("region", name="Add an OpenID Connect app")
    oidc.get_by_label("Name", exact=True).fill("Wiki")
    oidc.get_by_label(re.compile("^Short name")).fill("wiki")
    oidc.get_by_label("Redirect URIs (one a line)").fill("https://wiki.acme.test/callback")
    oidc.get_by_role("button", name="Add app").click()
    expect(page.get_by_text("Copy the client secret now: it is shown only this once.")).to_be_visible()
    secret = page.get_by_role("textbox", name="Client secret").input_value()
    assert len(secret) >= 43
    expect(page.get_by_label("Discovery URL")).to_have_value(ui.url("/.well-known/openid-configuration"))
    expect(page.get_by_label("Issuer")).to_have_value(ui.url(""))
    shoot("app-created")
    page.get_by_role("link", name="All apps").click()
    page.get_by_role("link", name="Wiki").click()
    expect(page.get_by_label("Client ID")).to_be_visible()
    expect(page.get_by_role("textbox", name="Client secret")).to_have_count(0)
    assert secret not in page.content()

    # 4. an OIDC connection from the issuer URL of the (local) upstream IdP
    nav.get_by_role("link", name="Connections", exact=True).click()
    oc = page.get_by_role("region", name="Add an OpenID Connect connection")
    oc.get_by_label("Name", exact=True).fill("Okta")
    oc.get_by_label(re.compile("^Short name")).fill("okta")
    oc.get_by_label("Provider").select_option("okta")
    oc.get_by_label("Issuer URL").fill(up.issuer)
    oc.get_by_label("Client ID").fill("okta-idhub")
    oc.get_by_label("Client secret").fill(CLIENT_SECRET)
    oc.get_by_label("Email domains (one a line)").fill("acme.test")
    oc.get_by_role("button", name="Add connection").click()
    expect(ui.notice(page, "Added the connection Okta.")).to_be_visible()
    okta = page.get_by_role("region", name=re.compile("^Okta"))
    expect(okta.get_by_label("Redirect URI to register at the identity provider")).to_have_value(
        ui.url("/sso/okta/callback"))
    expect(okta.locator(".test-result")).to_contain_text("never tested")
    assert CLIENT_SECRET not in page.content()

    # 5. Test connection: a sign-in at the upstream IdP's own page, then what it sent and who that maps to
    okta.get_by_role("link", name="Test connection").click()
    expect(page).to_have_url(ui.url("/sso/okta/test"))
    expect(page.get_by_role("heading", name="Test connection: Okta")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_role("heading", name="Okta sign-in")).to_be_visible()
    assert page.url.startswith(up.issuer.rsplit("/oauth2", 1)[0])  # the upstream's page, not idhub's
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in upstream").click()
    expect(page.get_by_role("heading", name="The identity provider signed you in")).to_be_visible()
    mapped = page.get_by_role("region", name="The identity provider signed you in")
    expect(mapped.get_by_role("row", name=re.compile(r"^Email\b"))).to_contain_text("ada@acme.test")
    expect(mapped.get_by_role("row", name=re.compile(r"^Groups\b"))).to_contain_text("eng")
    expect(mapped).to_contain_text("one would be created at the first sign-in")
    expect(page.get_by_role("alert")).to_have_count(0)  # no failed check
    shoot("connection-test")
    nav_back = page.goto(ui.url("/admin/connections"))
    assert nav_back is not None and nav_back.ok
    result = page.get_by_role("region", name=re.compile("^Okta")).locator(".test-result")
    expect(result).to_contain_text(re.compile(r"Last test:\s+succeeded .* UTC by " + re.escape(ui.alice.email)))

    # 5b. an LDAP directory (a real slapd), from the console's form
    directory = slapd.conn()
    ldap = page.get_by_role("region", name="Add an LDAP directory")
    ldap.get_by_label("Name", exact=True).fill("Corp directory")
    ldap.get_by_label(re.compile("^Short name")).fill("corp-ldap")
    ldap.get_by_label(re.compile("^Server URL")).fill(directory["url"])
    ldap.get_by_label(re.compile("^Bind DN")).fill(directory["bind_dn"])
    ldap.get_by_label("Bind password").fill(directory["bind_password"])
    ldap.get_by_label("User search base").fill(directory["user_search_base"])
    ldap.get_by_label(re.compile("^User filter")).fill(directory["user_filter"])
    ldap.get_by_label("Email domains (one a line)").fill("corp.acme.test")
    ldap.get_by_role("button", name="Add directory").click()
    expect(ui.notice(page, "Added the connection Corp directory.")).to_be_visible()
    expect(page.get_by_role("region", name=re.compile("^Corp directory")).locator(".test-result")).to_contain_text(
        "never tested")
    assert directory["bind_password"] not in page.content()
    shoot("connections")

    # 5c. edit the Okta connection: trust its MFA, paste the client secret again (a rotation)
    page.get_by_role("region", name=re.compile("^Okta")).get_by_role("link", name="Edit Okta").click()
    expect(page.get_by_role("heading", name=re.compile("^Edit Okta"))).to_be_visible()
    expect(page.get_by_label("Issuer URL")).to_have_value(up.issuer)
    expect(page.get_by_label(re.compile("^New client secret"))).to_have_value("")
    page.get_by_label("Trust the identity provider's two-factor authentication").check()
    page.get_by_label(re.compile("^New client secret")).fill(CLIENT_SECRET)
    page.get_by_role("button", name="Save changes").click()
    expect(ui.notice(page, "Saved the connection Okta (changed: trust_mfa).")).to_be_visible()
    expect(page.get_by_label("Trust the identity provider's two-factor authentication")).to_be_checked()
    expect(page.get_by_label(re.compile("^New client secret"))).to_have_value("")
    assert CLIENT_SECRET not in page.content()
    page.get_by_label("Issuer URL").fill("http://evil.test")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#e-issuer-error")).to_have_text(re.compile("^Issuer URL must use https"))
    page.goto(ui.url("/admin/connections/okta"))
    expect(page.get_by_label("Issuer URL")).to_have_value(up.issuer)
    shoot("connection-edit")

    # 6. a SAML app from the SP's metadata, pasted
    page.goto(ui.url("/admin/apps"))
    saml = page.get_by_role("region", name="Add a SAML app")
    saml.get_by_label("Name", exact=True).fill("CRM")
    saml.get_by_label(re.compile("^Short name")).fill("crm")
    saml.get_by_label(re.compile(r"^Metadata \(XML\)")).fill(sp_metadata("https://crm.acme.test/sp",
                                                                               "https://crm.acme.test"))
    saml.get_by_role("button", name="Add app").click()
    expect(page.get_by_role("heading", name="CRM", exact=True)).to_be_visible()
    expect(page.get_by_label("This app's entity ID")).to_have_value("https://crm.acme.test/sp")
    expect(page.get_by_label("Assertion Consumer Service URLs")).to_have_value(
        "https://crm.acme.test/saml/acs\nhttps://crm.acme.test/saml/acs/alt")
    expect(page.get_by_label("IdP metadata URL")).to_have_value(ui.url("/saml/metadata"))
    expect(page.get_by_label("IdP entity ID")).to_have_value(ui.url("/saml"))  # the metadata's entityID
    expect(page.get_by_label("NameID format")).to_have_value(EMAIL_FORMAT)
    shoot("app")
    nav.get_by_role("link", name="Apps", exact=True).click()
    expect(page.locator('tr[data-app="crm"]')).to_contain_text("https://crm.acme.test/sp")
    expect(page.get_by_role("heading", name="2 apps")).to_be_visible()
    shoot("apps")

    # 7. an allowlist that would lock the admin out is refused; one that includes them is saved
    nav.get_by_role("link", name="Policies", exact=True).click()
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("10.0.0.0/8")
    page.get_by_role("button", name="Save policies").click()
    expect(page.locator("#ip_allowlist-error")).to_contain_text("you would be locked out")
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("127.0.0.0/8\n10.0.0.0/8")
    page.get_by_role("button", name="Save policies").click()
    expect(ui.notice(page, "Policies saved.")).to_be_visible()
    summary = page.locator("#policy-summary")
    expect(summary).to_contain_text("Everyone must use two-factor authentication.")
    expect(summary).to_contain_text("Sign-in only from 127.0.0.0/8, 10.0.0.0/8.")
    shoot("policies")

    # 8. provisioning: a SCIM token, shown once
    nav.get_by_role("link", name="Provisioning", exact=True).click()
    page.get_by_label("New token name").fill("okta-scim")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_text("Copy the token now: it is shown only this once.")).to_be_visible()
    expect(page.get_by_label("SCIM base URL")).to_have_value(ui.url("/scim/v2"))
    token = page.get_by_label("Bearer token").input_value()
    assert len(token) >= 40
    shoot("provisioning")

    # 9. every step is in the audit log, attributed to the admin
    nav.get_by_role("link", name="Audit log", exact=True).click()
    steps = ("admin.user.invited", "admin.group.created", "admin.app.created", "admin.connection.created",
             "federation.test.succeeded", "admin.connection.updated", "admin.policies.updated",
             "admin.scim_token.created")
    for type_ in steps:
        row = page.locator(f'tr[data-type="{type_}"]')
        expect(row.first).to_contain_text(ui.alice.email)
    expect(page.locator('tr[data-type="admin.app.created"]')).to_have_count(2)
    tested = page.locator('tr[data-type="federation.test.succeeded"]')
    expect(tested).to_have_count(1)
    expect(tested).to_contain_text("connection: okta")
    saml_created = page.locator('tr[data-type="admin.app.created"]').filter(has_text="protocol: saml")
    expect(saml_created.get_by_role("link").last).to_have_attribute("href", "/w/acme/admin/apps/crm")
    policy = page.locator('tr[data-type="admin.policies.updated"]')
    expect(policy).to_have_count(1)  # the refused allowlist changed nothing, so it is not in the log
    expect(policy).to_contain_text("127.0.0.0/8")
    # newest first: the order of the steps
    order = page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.type)")
    seen = [t for t in order if t in steps]
    assert list(dict.fromkeys(reversed(seen))) == list(steps), order
    page.get_by_label(re.compile("^Event type")).fill("admin.*")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator('tr[data-type="auth.signin.success"]')).to_have_count(0)
    expect(page.locator('tr[data-type="federation.test.succeeded"]')).to_have_count(0)
    expect(page.locator('tr[data-type="admin.connection.created"]')).to_have_count(2)
    expect(page.locator('tr[data-type="admin.connection.created"]').first).to_contain_text(ui.alice.email)
    updated = page.locator('tr[data-type="admin.connection.updated"]')
    expect(updated).to_have_count(1)  # the refused change is not in the log
    expect(updated).to_contain_text("trust_mfa")
    assert CLIENT_SECRET not in page.content()
    shoot("audit")

    # still signed in and still allowed (127.0.0.1 is in the list)
    nav.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
