"""Real Chromium, an IT admin's day with people: the admin invites a new hire from the console; the invitation mail
(its own, naming the admin and the workspace) arrives over SMTP; the new hire opens its link, chooses a password
and — the workspace requires 2FA — sets up an authenticator app in the same walk, landing signed in on the
launcher; they sign in on a second device too. The admin opens the user's page (sessions, 2FA methods, apps,
recent events) and ends the second device's session: that browser gets the sign-in page, the first one stays
signed in. Screenshots: docs/screenshots/admin-day-*.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Page, expect

from .conftest import FIREFOX_WINDOWS, Ui, acme_config
from .test_admin_console import sign_in_enrolling_totp

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
NINA = "nina.hire@acme.test"
NINA_PW = "Harbour-Violet-Kettle-61"


@pytest.fixture
def admin_hub(hub_factory):
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": True}  # everyone sets up 2FA: the new hire does it while activating
    ws["users"][0]["role"] = "admin"
    ws["groups"] = [{"name": "engineering"}]
    ws["apps"] = [{"slug": "wiki", "name": "Team Wiki", "protocol": "oidc", "client_id": "wiki",
                   "client_secret": "wiki-secret-0123456789-abcdefghij",
                   "redirect_uris": ["https://wiki.acme.test/callback"], "description": "Docs and runbooks"}]
    return hub_factory(cfg)


def shoot(page: Page, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"admin-day-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, (name, overflow)


def test_invite_activate_with_2fa_and_end_one_of_the_users_sessions(admin_hub, new_page, smtp):
    ui = Ui(admin_hub)
    admin = new_page(viewport={"width": 1280, "height": 900})
    sign_in_enrolling_totp(ui, admin)

    # 1. the admin invites the new hire
    admin.goto(ui.url("/admin/users"))
    add = admin.locator("section", has=admin.get_by_role("heading", name="Add a user"))
    add.get_by_label("Email").fill(NINA)
    add.get_by_label("Name").fill("Nina Hire")
    add.get_by_label("engineering").check()
    since = smtp.mark()
    add.get_by_role("button", name="Add user").click()
    expect(ui.notice(admin, f"Invited {NINA}")).to_be_visible()
    row = admin.locator(f'tr[data-user="{NINA}"]')
    expect(row).to_contain_text("Invited")
    expect(row).to_contain_text(re.compile(r"expires \d{4}-\d\d-\d\d"))
    shoot(admin, "users-invited")

    # 2. the invitation mail: its own, naming who invited and the workspace
    mail = smtp.wait_for(to=NINA, subject_contains="You're invited to Acme Corp", since=since)
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert "Alice Example (alice@acme.test) invited you" in " ".join(html.split())
    assert "reset" not in mail.get_body(preferencelist=("plain",)).get_content().lower()
    link = smtp.extract_link(mail, re.escape(admin_hub.url("/w/acme/invite/")) + r"[A-Za-z0-9_-]+")
    viewer = new_page(viewport={"width": 720, "height": 760})
    viewer.set_content(html)
    expect(viewer.get_by_role("link", name="Accept the invitation")).to_be_visible()
    shoot(viewer, "invite-mail")
    # the invited user's page: when it was sent, until when it works, resend or revoke
    admin.get_by_role("link", name=NINA).click()
    expect(admin.locator("#user-status")).to_have_text("Invited")
    expect(admin.locator("#invitation-state")).to_contain_text("by alice@acme.test")
    expect(admin.get_by_role("button", name="Resend invitation")).to_be_visible()
    expect(admin.get_by_role("button", name="Revoke invitation")).to_be_visible()
    expect(admin.get_by_role("button", name="Send password reset")).to_have_count(0)
    shoot(admin, "user-invited")

    # 3. the new hire activates: a password, then an authenticator app, then the launcher
    laptop = new_page(viewport={"width": 1280, "height": 900})
    laptop.goto(link)
    expect(laptop.get_by_role("heading", name="Join Acme Corp")).to_be_visible()
    expect(laptop.get_by_text("Alice Example invited you")).to_be_visible()
    laptop.get_by_label("Choose a password").fill(NINA_PW)
    laptop.get_by_label("Confirm the password").fill(NINA_PW)
    shoot(laptop, "invite-accept")
    laptop.get_by_role("button", name="Activate my account").click()
    expect(laptop).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    secret = laptop.locator("code.secret[data-secret]").inner_text().strip().replace(" ", "")
    laptop.get_by_label("Verification code").fill(pyotp.TOTP(secret).now())
    laptop.get_by_role("button", name="Verify", exact=True).click()
    expect(laptop.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    backup = laptop.locator("ul.backup-codes code").first.inner_text().strip()
    laptop.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_launcher_page(laptop)
    expect(laptop.get_by_text("Team Wiki")).to_be_visible()
    shoot(laptop, "invitee-launcher")
    # the link worked once
    again = new_page()
    again.goto(link)
    expect(again.get_by_role("heading", name="This invitation cannot be used")).to_be_visible()

    # 4. a second device (Firefox on Windows): password and a backup code
    desktop = new_page(user_agent=FIREFOX_WINDOWS)
    ui.submit_credentials(desktop, NINA, NINA_PW)
    expect(desktop).to_have_url(re.compile(re.escape(ui.url("/login/mfa"))))
    desktop.get_by_role("link", name="Backup code").click()
    desktop.get_by_label("Backup code").fill(backup)
    desktop.get_by_role("button", name="Verify", exact=True).click()
    ui.expect_launcher_page(desktop)

    # 5. the admin opens the user's page and ends the Firefox session
    admin.goto(ui.url("/admin/users"))
    admin.get_by_role("link", name=NINA).click()
    expect(admin.locator("#user-status")).to_have_text("Active")
    sessions = admin.locator("table.user-sessions tbody tr")
    expect(sessions).to_have_count(2)
    factors = admin.locator("ul.user-factors")
    expect(factors).to_contain_text("Authenticator app")
    expect(factors).to_contain_text("Backup codes (9 left)")
    apps = admin.locator("section", has=admin.get_by_role("heading", name="Apps", exact=True))
    expect(apps).to_contain_text("Team Wiki")
    activity = admin.locator("section", has=admin.get_by_role("heading", name="Recent activity"))
    expect(activity).to_contain_text("account.invitation.accepted")
    expect(activity.get_by_role("link", name="All of this user's events in the audit log")).to_have_attribute(
        "href", re.compile(r"/w/acme/admin/audit\?user=[0-9a-f-]{36}$"))
    shoot(admin, "user")
    firefox = sessions.filter(has_text="Firefox")
    expect(firefox).to_have_count(1)
    firefox.get_by_role("button", name="End session").click()
    expect(ui.notice(admin, "The session has ended")).to_be_visible()
    expect(admin.locator("table.user-sessions tbody tr")).to_have_count(1)
    expect(admin.locator("table.user-sessions tbody tr")).to_contain_text("Chrome")
    shoot(admin, "user-session-ended")

    # 6. that browser is back at the sign-in page; the laptop is still signed in
    desktop.goto(ui.url("/apps"))
    expect(desktop).to_have_url(re.compile(re.escape(ui.url("/login"))))
    expect(desktop.get_by_role("heading", name="Sign in to Acme Corp")).to_be_visible()
    laptop.goto(ui.url("/apps"))
    ui.expect_launcher_page(laptop)
