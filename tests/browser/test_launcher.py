"""Real Chromium: the app launcher. An admin assigns an app to Engineering in the console; an engineer sees its
tile and launches it (IdP-initiated SAML, the assertion posted to the app); a member of Sales does not see it, and
opening its launch URL directly is refused with a clear page. Screenshots: docs/screenshots/launcher-*.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import Account, Ui, acme_config

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ENGINEER = Account("bob@acme.test", "B0b-Example-Pass?", "Bob Example")
SALES = Account("carol@acme.test", "C4rol-Example-Pass?", "Carol Example")
PAYROLL_ACS = "https://payroll.example/acs"


def launcher_hub_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": False, "require_mfa_for_admins": False}
    ws["groups"] = [{"name": "Engineering"}, {"name": "Sales"}]
    ws["users"][0]["role"] = "admin"
    ws["users"][1]["groups"] = ["Engineering"]
    ws["users"].append({"email": SALES.email, "name": SALES.name, "password": SALES.password, "groups": ["Sales"]})
    ws["apps"] = [
        {"slug": "handbook", "name": "Handbook", "protocol": "oidc", "client_id": "handbook",
         "redirect_uris": ["https://handbook.example/callback"], "description": "Policies, benefits and how-tos",
         "initiate_login_uri": "https://handbook.example/login"},
        {"slug": "payroll", "name": "Payroll", "protocol": "saml", "entity_id": "https://payroll.example",
         "acs_url": PAYROLL_ACS, "idp_initiated": True, "description": "Payslips and expenses"},
        {"slug": "status", "name": "Status board", "protocol": "oidc", "client_id": "status",
         "redirect_uris": ["https://status.example/cb"]},
        {"slug": "ci", "name": "CI", "protocol": "oidc", "client_id": "ci", "redirect_uris": ["https://ci.example/cb"],
         "show_in_launcher": False},
    ]
    return cfg


def tile(page, name: str):
    return page.get_by_role("list", name="Your apps").get_by_role("button", name=f"Open {name}").or_(
        page.get_by_role("list", name="Your apps").get_by_role("link", name=f"Open {name}"))


def test_assign_in_the_console_then_the_engineer_launches_and_sales_is_refused(hub_factory, new_page):
    ui = Ui(hub_factory(launcher_hub_config()))
    OUT.mkdir(parents=True, exist_ok=True)

    # the admin: Payroll is open to everyone, until it is assigned to Engineering
    admin = new_page(viewport={"width": 1280, "height": 900})
    ui.sign_in(admin, ui.alice, security=False)
    expect(tile(admin, "Payroll")).to_be_visible()
    expect(tile(admin, "CI")).to_have_count(0)  # show_in_launcher: false
    admin.goto(ui.url("/admin/apps/payroll"))
    section = admin.get_by_role("region", name="Who may use this app")
    expect(section.get_by_label("Everyone in the workspace")).to_be_checked()
    section.get_by_label("Only members of these groups:").check()
    section.get_by_label("Engineering", exact=True).check()
    section.get_by_role("button", name="Save access").click()
    expect(ui.notice(admin, "Saved who may use this app.")).to_be_visible()
    expect(section.get_by_label("Engineering", exact=True)).to_be_checked()
    section.scroll_into_view_if_needed()
    admin.screenshot(path=str(OUT / "launcher-console-access.png"), full_page=True)
    admin.goto(ui.url("/apps"))
    expect(tile(admin, "Payroll")).to_have_count(0)  # the admin is not in Engineering

    # the engineer: the tile, and the launch posts an assertion to the app
    engineer = new_page(viewport={"width": 1280, "height": 800})
    posted: list[str] = []

    def payroll(route):
        posted.append(route.request.post_data or "")
        route.fulfill(status=200, content_type="text/html", body="<title>Payroll</title><h1>Payroll home</h1>")

    engineer.route(re.compile(r"^https://payroll\.example/"), payroll)
    ui.sign_in(engineer, ENGINEER, security=False)
    expect(tile(engineer, "Payroll")).to_be_visible()
    expect(tile(engineer, "Handbook")).to_be_visible()
    expect(engineer.get_by_text("Payslips and expenses")).to_be_visible()
    expect(engineer.get_by_role("link", name="Security settings")).to_be_visible()
    engineer.screenshot(path=str(OUT / "launcher-engineer.png"), full_page=True)
    engineer.get_by_label("Search apps").fill("pay")
    engineer.get_by_role("button", name="Search", exact=True).click()
    expect(engineer.get_by_role("list", name="Your apps").get_by_role("listitem")).to_have_count(1)
    tile(engineer, "Payroll").click()
    expect(engineer.get_by_role("heading", name="Payroll home")).to_be_visible()
    assert posted and "SAMLResponse=" in posted[-1]

    # Sales: no tile, no name; the launch URL opened directly is refused
    sales = new_page(viewport={"width": 1280, "height": 800})
    ui.sign_in(sales, SALES, security=False)
    expect(tile(sales, "Handbook")).to_be_visible()
    expect(sales.get_by_text("Payroll")).to_have_count(0)
    sales.screenshot(path=str(OUT / "launcher-sales.png"), full_page=True)
    sales.goto(ui.url("/apps/payroll/launch"))
    expect(sales.get_by_role("heading", name="Access denied")).to_be_visible()
    expect(ui.alert(sales, "You don't have access to this app. Ask your IT team to assign it to you.")).to_be_visible()
    expect(sales.get_by_role("link", name="Back to your apps")).to_be_visible()
    sales.screenshot(path=str(OUT / "launcher-refused.png"), full_page=True)
