"""Issue 3: workspace policies in real Chromium: require_mfa forces enrolment at sign-in, and the IP allowlist
(directly and through a trusted proxy's X-Forwarded-For)."""

from __future__ import annotations

import copy
import re

import pyotp
import pytest
from playwright.sync_api import Page, expect

from .conftest import Ui, acme_config

pytestmark = pytest.mark.browser

OFFICE = "192.0.2.0/24"
OFFICE_CLIENT = "192.0.2.10"


def workspace_config(policies: dict) -> dict:
    cfg = copy.deepcopy(acme_config())
    cfg["workspaces"][0]["policies"] = policies
    return cfg


def two_factor_section(page: Page):
    return page.get_by_role("region", name="Two-factor authentication")


# ---- 5. require_mfa --------------------------------------------------------------------------------------------
def test_require_mfa_forces_enrolment_before_anything_else(hub_factory, new_context):
    ui = Ui(hub_factory(workspace_config({"require_mfa": True})))
    ctx = new_context()
    page = ctx.new_page()
    ui.submit_credentials(page, ui.alice)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    expect(page.get_by_role("heading", name="Set up an authenticator app")).to_be_visible()
    expect(ui.notice(page, "Your organisation requires two-factor authentication")).to_be_visible()
    shown = page.locator("code.secret[data-secret]").inner_text().strip()
    secret = shown.replace(" ", "")

    # not signed in yet: the security page (same browser, another tab) sends to the sign-in page
    tab = ctx.new_page()
    tab.goto(ui.url("/settings/security"))
    expect(tab).to_have_url(ui.login_url_re)
    expect(tab.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
    tab.close()

    # a reload shows the same secret (a scanned QR code stays valid)
    page.reload()
    expect(page.locator("code.secret[data-secret]")).to_have_text(shown)

    page.get_by_label("Verification code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    expect(page.get_by_role("list", name="Backup codes").get_by_role("listitem")).to_have_count(10)
    # still nothing else before Continue
    tab = ctx.new_page()
    tab.goto(ui.url("/settings/security"))
    expect(tab).to_have_url(ui.login_url_re)
    tab.close()

    page.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_signed_in(page)
    section = two_factor_section(page)
    expect(section).to_contain_text("Two-factor authentication is on")
    expect(section).to_contain_text("Authenticator app: set up")
    expect(section).to_contain_text("Backup codes: 10 left")


# ---- 6. IP allowlist -------------------------------------------------------------------------------------------
def expect_access_denied(ui: Ui, page: Page, address: str) -> None:
    ui.open_login(page)
    page.get_by_label("Email").fill(ui.alice.email)
    page.get_by_label("Password").fill(ui.alice.password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
    alert = ui.alert(page, "your organisation")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(address)
    expect(page.get_by_text("Error id:")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)
    page.goto(ui.url("/settings/security"))
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)


def test_ip_allowlist_refuses_a_client_outside_it(hub_factory, new_page):
    ui = Ui(hub_factory(workspace_config({"ip_allowlist": [OFFICE]})))
    expect_access_denied(ui, new_page(), "127.0.0.1")
    # without trusted proxies, a forwarding header from the client changes nothing
    spoof = new_page(extra_http_headers={"X-Forwarded-For": OFFICE_CLIENT})
    expect_access_denied(ui, spoof, "127.0.0.1")


def test_ip_allowlist_admits_a_client_through_a_trusted_proxy(hub_factory, new_page):
    hub = hub_factory(workspace_config({"ip_allowlist": [OFFICE]}),
                      extra_env={"IDHUB_TRUSTED_PROXIES": "127.0.0.1/32"})
    ui = Ui(hub)
    # 127.0.0.1 is the proxy; with no forwarded address it is the client itself, outside the allowlist
    expect_access_denied(ui, new_page(), "127.0.0.1")
    # a client forwarded from outside the allowlist: refused with its own address
    expect_access_denied(ui, new_page(extra_http_headers={"X-Forwarded-For": "198.51.100.7"}), "198.51.100.7")

    page = new_page(extra_http_headers={"X-Forwarded-For": OFFICE_CLIENT})
    ui.sign_in(page, ui.alice)
    rows = ui.session_rows(page)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(OFFICE_CLIENT)
    page.reload()
    ui.expect_security_page(page)
