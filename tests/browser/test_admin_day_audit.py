"""An IT admin's day, in real Chromium: Bob types a wrong authenticator-app code; the admin sees it counted on the
dashboard, finds that failed attempt in the audit log by filtering (kind 2FA + outcome failure, then by Bob's
e-mail), reads it in words (what happened, the outcome, Bob's e-mail as a link to his user page, the method), and
exports it as CSV with Bob's e-mail in ``actor_email``. Then the pages people see when they get lost: the 404 page
keeps the workspace and the ways back, and the start page says a mistyped workspace under its field. Screenshots
go to docs/screenshots/ (audit-*.png, error-404.png, home-unknown-workspace.png)."""

from __future__ import annotations

import copy
import csv
import io
import re
import time
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Page, expect

from .conftest import Account, Ui, acme_config

pytestmark = pytest.mark.browser
OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def day_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": True}
    ws["users"][0]["role"] = "admin"
    return cfg


def shoot(page: Page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, (name, overflow)


def sign_in_enrolling_totp(ui: Ui, page: Page, who: Account) -> pyotp.TOTP:
    ui.submit_credentials(page, who)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/enroll")) + r"\?"))
    totp = pyotp.TOTP(page.locator("code.secret[data-secret]").inner_text().strip().replace(" ", ""))
    page.get_by_label("Verification code").fill(totp.now())
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    page.get_by_role("button", name="Continue", exact=True).click()
    ui.expect_signed_in(page, security=False)
    return totp


def wrong(totp: pyotp.TOTP) -> str:
    t = time.time()
    now = {totp.at(t + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in now)


def test_the_admin_finds_a_failed_2fa_code_counts_it_and_exports_it(ui: Ui, hub_factory, new_page):
    hub = hub_factory(day_config())
    ui = Ui(hub)
    OUT.mkdir(parents=True, exist_ok=True)

    # 1. Bob has an authenticator app; signing in again on another device, he types a wrong code
    bob_totp = sign_in_enrolling_totp(ui, new_page(), ui.bob)
    bob = new_page()
    ui.submit_credentials(bob, ui.bob)
    expect(bob).to_have_url(re.compile(re.escape(ui.url("/login/mfa")) + r"\?"))
    bob.get_by_label("Code from your authenticator app", exact=True).fill(wrong(bob_totp))
    bob.get_by_role("button", name="Verify", exact=True).click()
    expect(ui.alert(bob, "not valid")).to_be_visible()

    # 2. the admin's dashboard counts it among the failed sign-in attempts
    page = new_page(viewport={"width": 1400, "height": 900})
    sign_in_enrolling_totp(ui, page, ui.alice)
    page.goto(ui.url("/admin/"))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("columnheader", name="Failed sign-in attempts")).to_be_visible()
    expect(page.locator("#stat-failures")).to_have_text("1")
    recent = page.locator('tr[data-type="auth.mfa.failure"]')
    expect(recent).to_contain_text("Failed second factor")
    shoot(page, "audit-dashboard")

    # 3. the audit log, filtered by kind and outcome: that attempt, in words
    nav = page.get_by_role("navigation", name="Admin console")
    nav.get_by_role("link", name="Audit log", exact=True).click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.locator('tr[data-type="policy.decision"]')).to_have_count(0)  # hidden unless asked for
    page.get_by_label("Kind of event").select_option(label="Two-factor (2FA)")
    page.get_by_label("Outcome").select_option(label="Failure")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit-events tbody tr")
    expect(rows).to_have_count(1)
    row = rows.first
    expect(row).to_have_attribute("data-type", "auth.mfa.failure")
    expect(row.locator(".outcome")).to_have_text(re.compile("failure", re.I))
    expect(row).to_contain_text("Failed second factor (wrong code)")
    expect(row.locator("dl.kv")).to_contain_text("method")
    expect(row.locator("dl.kv dd").first).to_have_text("totp")
    who = row.get_by_role("link", name=ui.bob.email)
    expect(who).to_have_attribute("href", re.compile(r"/w/acme/admin/users/[0-9a-f-]{36}$"))
    expect(page.get_by_label("Kind of event")).to_have_value("2fa")  # the form keeps the filters
    shoot(page, "audit-failed-2fa")

    # 4. by user: Bob's e-mail finds his events, the failed code among them, and none of the admin's
    page.goto(ui.url("/admin/audit"))
    page.get_by_label(re.compile("^User")).fill(ui.bob.email)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator('tr[data-type="auth.mfa.failure"]')).to_have_count(1)
    expect(page.locator("table.audit-events tbody tr").filter(has_text=ui.alice.email)).to_have_count(0)
    shoot(page, "audit-by-user")

    # 5. the CSV export has the same filters and the row, with Bob's e-mail in actor_email
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    data = Path(info.value.path()).read_text()
    exported = [r for r in csv.DictReader(io.StringIO(data)) if r["type"] == "auth.mfa.failure"]
    assert len(exported) == 1, data[:2000]
    assert exported[0]["actor_email"] == ui.bob.email and exported[0]["outcome"] == "failure"
    assert exported[0]["description"] == "Failed second factor (wrong code)" and exported[0]["kind"] == "2fa"
    assert all(ui.alice.email not in (r["actor_email"], r["target"]) for r in csv.DictReader(io.StringIO(data))
               if r["type"] != "admin.audit.exported")

    # 6. the dashboard's count links to those attempts
    page.goto(ui.url("/admin/"))
    page.locator("#stat-failures a").click()
    expect(page.locator("table.audit-events tbody tr")).to_have_count(1)
    expect(page.locator('tr[data-type="auth.mfa.failure"]')).to_have_count(1)

    # 7. a page that does not exist keeps the workspace and the ways back
    page.goto(ui.url("/admin/reports"))
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.locator(".brand")).to_contain_text("Acme Corp")
    back = page.get_by_role("navigation", name="Ways back")
    expect(back.get_by_role("link", name="Admin console")).to_have_attribute("href", "/w/acme/admin/")
    expect(back.get_by_role("link", name="Your apps")).to_be_visible()
    expect(page.get_by_text("Error id:")).to_be_visible()
    shoot(page, "error-404")
    back.get_by_role("link", name="Admin console").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    # 8. the start page: a mistyped workspace is said under the field, with what was typed kept
    start = new_page()
    start.goto(hub.url("/"))
    start.get_by_label("Workspace").fill("acm")
    start.get_by_role("button", name="Continue").click()
    expect(start.get_by_role("alert")).to_have_text("No workspace called 'acm' — check the name your IT team "
                                                    "gave you.")
    expect(start.get_by_label("Workspace")).to_have_value("acm")
    shoot(start, "home-unknown-workspace")
    start.get_by_label("Workspace").fill("acme")
    start.get_by_role("button", name="Continue").click()
    expect(start.get_by_role("heading", name="Sign in to Acme Corp")).to_be_visible()
