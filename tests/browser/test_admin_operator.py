"""The hub operator in real Chromium: signs in to their own workspace with a real 2FA enrolment, opens another
workspace's console from the Workspaces page, creates a workspace and invites its first admin, and sees it in that
workspace's audit log under their name. Screenshot: docs/screenshots/admin-workspaces.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import expect

from .conftest import Account, Ui, acme_config

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ROOT = Account("root@hq.test", "R00t-Operator-Pass!", "Hub Root")


def operator_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    cfg["workspaces"].append({"slug": "hq", "name": "Hub HQ", "plan": "enterprise", "policies": {"require_mfa": True},
                              "users": [{"email": ROOT.email, "name": ROOT.name, "password": ROOT.password,
                                         "role": "operator"}]})
    return cfg


def test_the_operator_runs_every_workspace_from_their_own_sign_in(hub_factory, new_page):
    hub = hub_factory(operator_config())
    ui = Ui(hub, ws="hq", ws_name="Hub HQ")
    page = new_page()
    # hq requires 2FA: the operator sets up an authenticator app during the first sign-in
    ui.submit_credentials(page, ROOT)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    totp = pyotp.TOTP(page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", ""))
    page.get_by_label("Verification code").fill(totp.now())
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    page.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_signed_in(page)

    page.goto(hub.url("/w/hq/admin/workspaces"))
    expect(page.get_by_role("heading", name="Workspaces", exact=True)).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Globex")
    page.get_by_label(re.compile("^Address")).fill("globex")
    page.get_by_label("Plan").select_option("enterprise")
    page.get_by_role("button", name="Create workspace").click()
    expect(page).to_have_url(re.compile(r"/w/globex/admin/users$"))
    expect(page.get_by_text("Hub operator: you are signed in to")).to_be_visible()
    page.get_by_label("Email", exact=True).fill("first.admin@globex.test")
    page.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Add user").click()
    expect(ui.notice(page, "first.admin@globex.test")).to_be_visible()

    page.goto(hub.url("/w/globex/admin/audit"))
    row = page.locator("tr", has_text="admin.user.invited")
    expect(row.first).to_contain_text(ROOT.email)

    page.goto(hub.url("/w/hq/admin/workspaces"))
    expect(page.locator('tr[data-workspace="globex"]')).to_be_visible()
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / "admin-workspaces.png"), full_page=True)

    # open Acme's console from the list; signing out there ends the operator's own session
    page.locator('tr[data-workspace="acme"]').get_by_role("link", name="Open console").click()
    expect(page).to_have_url(re.compile(r"/w/acme/admin/$"))
    expect(page.get_by_role("status").filter(has_text="acting on Acme Corp")).to_be_visible()
    page.screenshot(path=str(OUT / "admin-operator-elsewhere.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    page.goto(hub.url("/w/acme/admin/"))
    expect(page).to_have_url(re.compile(r"/w/acme/login"))
