"""Issue 8 in real Chromium: an admin signs in with 2FA, opens the console from the security page, invites a user,
registers an OIDC app and sees its secret once, sets an IP allowlist that keeps them in, adds an OIDC connection,
and finds each step in the audit log. Screenshots of the console go to docs/screenshots/admin-*.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Page, expect

from .conftest import Ui, acme_config

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def admin_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": True}  # everyone (so alice too) sets up 2FA at her first sign-in
    ws["users"][0]["role"] = "admin"
    return cfg


def sign_in_enrolling_totp(ui: Ui, page: Page) -> pyotp.TOTP:
    ui.submit_credentials(page, ui.alice)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    secret = page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", "")
    totp = pyotp.TOTP(secret)
    page.get_by_label("Verification code").fill(totp.now())
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    page.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_security_page(page)
    return totp


def test_admin_invites_a_user_adds_an_app_sets_an_allowlist_and_sees_it_all_audited(hub_factory, new_page):
    ui = Ui(hub_factory(admin_config()))
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_page(viewport={"width": 1280, "height": 900})

    def shoot(name: str) -> None:
        path = OUT / f"admin-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000

    # a member never gets in (bob enrols too: the workspace requires 2FA)
    other = new_page()
    other.goto(ui.url("/admin/"))
    expect(other).to_have_url(ui.login_url_re)  # anonymous: the sign-in page

    sign_in_enrolling_totp(ui, page)
    page.get_by_role("link", name="Admin console").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("#stat-signins")).to_have_text("1")
    shoot("dashboard")

    # 1. invite a user
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Users", exact=True).click()
    add = page.get_by_role("region", name="Add a user")
    add.get_by_label("Email", exact=True).fill("carol@acme.test")
    add.get_by_label("Name", exact=True).fill("Carol Example")
    add.get_by_role("button", name="Add user").click()
    expect(ui.notice(page, "Invited carol@acme.test")).to_be_visible()
    expect(page.locator('tr[data-user="carol@acme.test"]')).to_contain_text("invited")
    shoot("users")

    # 2. an OIDC app: the secret once
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Apps", exact=True).click()
    oidc = page.get_by_role("region", name="Add an OpenID Connect app")
    oidc.get_by_label("Name", exact=True).fill("Wiki")
    oidc.get_by_label("Short name (letters, digits, '-')").fill("wiki")
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

    # 3. an allowlist that would lock the admin out is refused; one that includes them is saved
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Policies", exact=True).click()
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("10.0.0.0/8")
    page.get_by_role("button", name="Save policies").click()
    expect(ui.alert(page, "you would be locked out")).to_be_visible()
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("127.0.0.0/8\n10.0.0.0/8")
    page.get_by_role("button", name="Save policies").click()
    expect(ui.notice(page, "Policies saved.")).to_be_visible()
    summary = page.locator("#policy-summary")
    expect(summary).to_contain_text("Everyone must use two-factor authentication.")
    expect(summary).to_contain_text("Sign-in only from 127.0.0.0/8, 10.0.0.0/8.")
    shoot("policies")

    # 4. an upstream connection: copy-ready settings and its test page
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Connections", exact=True).click()
    oc = page.get_by_role("region", name="Add an OpenID Connect connection")
    oc.get_by_label("Name", exact=True).fill("Okta")
    oc.get_by_label("Short name (letters, digits, '-')").fill("okta")
    oc.get_by_label("Provider").select_option("okta")
    oc.get_by_label("Issuer URL").fill("https://acme.okta.test")
    oc.get_by_label("Client ID").fill("0oa1example")
    oc.get_by_label("Client secret").fill("okta-client-secret-0123456789")
    oc.get_by_label("Email domains (one a line)").fill("acme.test")
    oc.get_by_role("button", name="Add connection").click()
    expect(ui.notice(page, "Added the connection Okta.")).to_be_visible()
    okta = page.get_by_role("region", name=re.compile("^Okta"))
    expect(okta.get_by_label("Redirect URI to register at the identity provider")).to_have_value(
        ui.url("/sso/okta/callback"))
    expect(okta.get_by_role("link", name="Test connection")).to_have_attribute("href", ui.url("/sso/okta/test"))
    assert "okta-client-secret-0123456789" not in page.content()
    shoot("connections")

    # 5. every step is in the audit log, attributed to the admin
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Audit log", exact=True).click()
    page.get_by_label(re.compile("^Event type")).fill("admin.*")
    page.get_by_role("button", name="Filter").click()
    for type_ in ("admin.user.invited", "admin.app.created", "admin.policies.updated", "admin.connection.created"):
        row = page.locator(f'tr[data-type="{type_}"]')
        expect(row).to_have_count(1)
        expect(row).to_contain_text(ui.alice.email)
    expect(page.locator('tr[data-type="auth.signin.success"]')).to_have_count(0)
    shoot("audit")

    # still signed in and still allowed (127.0.0.1 is in the list)
    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
