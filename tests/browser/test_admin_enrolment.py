"""Real Chromium: a new admin (no 2FA yet, a workspace that requires 2FA of nobody else) signs in with a password,
is led through authenticator-app enrolment inside the sign-in, and reaches the admin console in that same session;
a member is not asked. Screenshot: docs/screenshots/admin-enrolment.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import Ui, acme_config
from .test_admin_console import sign_in_enrolling_totp

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def admin_hub(hub_factory):
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {}  # require_mfa_for_admins: its default (true); members need no 2FA
    ws["users"][0]["role"] = "admin"
    return hub_factory(cfg)


def test_a_new_admin_enrols_inside_the_sign_in_and_reaches_the_console(admin_hub, new_page):
    ui = Ui(admin_hub)
    page = new_page(viewport={"width": 1280, "height": 900})
    sign_in_enrolling_totp(ui, page)  # password, "Set up an authenticator app", backup codes, launcher, security page
    page.get_by_role("link", name="Admin console").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page).to_have_url(re.compile(re.escape(ui.url("/admin/"))))
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / "admin-enrolment.png"), full_page=True)
    # one session: the one the enrolment finished in
    page.goto(ui.url("/settings/security"))
    expect(ui.session_rows(page)).to_have_count(1)

    member = new_page()
    ui.sign_in(member, ui.bob)  # straight to the launcher (then the security page): no enrolment asked
    ui.expect_security_page(member)
    member.goto(ui.url("/admin/"))
    expect(member.get_by_text("The admin console is for this workspace's admins")).to_be_visible()
