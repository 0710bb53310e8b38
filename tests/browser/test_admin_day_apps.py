"""An IT admin's day with apps, policies and groups, in real Chromium: register an OIDC app and a SAML app, make a
mistake in each form (what was typed stays, the error is under the field, in plain words), edit both apps after
creation, change the session policy with a number and a unit, and delete a group after a confirmation that says
who loses what. Chromium's console stays silent on every console page (a short-name ``pattern`` that is not a
valid ``v``-flag regular expression is logged there, and switches the browser's own check off). Screenshots go to
docs/screenshots/admin-day-*.png."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import Ui, acme_config
from .test_admin_console import sign_in_enrolling_totp, sp_metadata

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PAGES = ("", "users", "groups", "apps", "connections", "policies", "scim", "audit")


def day_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    ws = cfg["workspaces"][0]
    ws["policies"] = {"require_mfa": True, "session_idle_timeout": "30d"}
    ws["groups"] = [{"name": "Engineering"}, {"name": "Sales"}]
    ws["users"][0].update(role="admin", groups=["Engineering"])
    ws["users"][1]["groups"] = ["Engineering"]
    return cfg


def test_an_admin_day_with_apps_policies_and_groups(hub_factory, new_page):
    hub = hub_factory(day_config())
    ui = Ui(hub)
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_page(viewport={"width": 1280, "height": 900})
    logged: list[str] = []
    page.on("console", lambda msg: logged.append(f"{msg.type}: {msg.text} ({page.url})"))
    page.on("pageerror", lambda exc: logged.append(f"pageerror: {exc} ({page.url})"))
    nav = page.get_by_role("navigation", name="Admin console")

    def shoot(name: str) -> None:
        path = OUT / f"admin-day-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (name, overflow)

    def under(input_id: str):
        return page.locator(f"#{input_id}-error")

    sign_in_enrolling_totp(ui, page)
    for p in PAGES:  # every console page, for the console log
        page.goto(ui.url(f"/admin/{p}"))
        expect(nav).to_be_visible()
    silent = [m for m in logged if not m.endswith("/w/acme/admin/users)")]
    assert silent == [], "\n".join(silent)

    # 1. an OIDC app. The browser's own check works on the short name (a valid pattern) ...
    nav.get_by_role("link", name="Apps", exact=True).click()
    oidc = page.get_by_role("region", name="Add an OpenID Connect app")
    oidc.get_by_label("Name", exact=True).fill("Team Wiki")
    oidc.get_by_label(re.compile("^Short name")).fill("Team Wiki")
    oidc.get_by_role("button", name="Add app").click()
    expect(page).to_have_url(ui.url("/admin/apps"))
    assert oidc.get_by_label(re.compile("^Short name")).evaluate("el => el.validity.patternMismatch") is True
    # ... and a mistake only the server sees: the error under the field, everything typed still there
    oidc.get_by_label(re.compile("^Short name")).fill("wiki")
    oidc.get_by_label("Redirect URIs (one a line)").fill("https://wiki.acme.test/callback\nwiki.acme.test/cb2")
    oidc.get_by_label("Require two-factor authentication for this app").check()
    oidc.get_by_role("button", name="Add app").click()
    oidc = page.get_by_role("region", name="Add an OpenID Connect app")
    expect(under("oidc-redirect")).to_have_text(
        "“wiki.acme.test/cb2” is not a full address such as https://app.example.com/callback.")
    expect(oidc.get_by_label("Name", exact=True)).to_have_value("Team Wiki")
    expect(oidc.get_by_label(re.compile("^Short name"))).to_have_value("wiki")
    expect(oidc.get_by_label("Redirect URIs (one a line)")).to_have_value(
        "https://wiki.acme.test/callback\nwiki.acme.test/cb2")
    expect(oidc.get_by_label("Require two-factor authentication for this app")).to_be_checked()
    expect(oidc.get_by_label("Redirect URIs (one a line)")).to_have_attribute("aria-invalid", "true")
    shoot("oidc-app-mistake")
    oidc.get_by_label("Redirect URIs (one a line)").fill("https://wiki.acme.test/callback")
    oidc.get_by_role("button", name="Add app").click()
    expect(page.get_by_text("Copy the client secret now: it is shown only this once.")).to_be_visible()
    # edited after creation
    page.get_by_role("link", name="All apps").click()
    page.get_by_role("link", name="Team Wiki").click()
    edit = page.get_by_role("region", name="Change")
    edit.get_by_label("Name", exact=True).fill("Wiki")
    edit.get_by_label("Redirect URIs (one a line)").fill("https://wiki.acme.test/callback\nhttps://wiki.acme.test/v2")
    edit.get_by_role("button", name="Save changes").click()
    expect(ui.notice(page, "Saved the app Wiki.")).to_be_visible()
    expect(page.get_by_label("Registered redirect URIs (exact match)")).to_have_value(
        "https://wiki.acme.test/callback\nhttps://wiki.acme.test/v2")
    access = page.get_by_role("region", name="Who may use this app")
    access.get_by_label("Only members of these groups:").check()
    access.get_by_label("Engineering").check()
    access.get_by_role("button", name="Save access").click()
    expect(ui.notice(page, "Saved who may use this app.")).to_be_visible()
    shoot("oidc-app-edited")

    # 2. a SAML app: pasted metadata that is not metadata stays in the box, named under it
    nav.get_by_role("link", name="Apps", exact=True).click()
    saml = page.get_by_role("region", name="Add a SAML app")
    saml.get_by_label("Name", exact=True).fill("CRM")
    saml.get_by_label(re.compile("^Short name")).fill("crm")
    saml.get_by_label(re.compile(r"^Metadata \(XML\)")).fill("<EntityDescriptor entityID='https://crm.acme.test/sp'>")
    saml.get_by_role("button", name="Add app").click()
    saml = page.get_by_role("region", name="Add a SAML app")
    expect(under("saml-metadata")).to_be_visible()
    expect(saml.get_by_label(re.compile(r"^Metadata \(XML\)"))).to_have_value(
        "<EntityDescriptor entityID='https://crm.acme.test/sp'>")
    expect(saml.get_by_label(re.compile("^Short name"))).to_have_value("crm")
    shoot("saml-app-mistake")
    saml.get_by_label(re.compile(r"^Metadata \(XML\)")).fill(sp_metadata("https://crm.acme.test/sp",
                                                                          "https://crm.acme.test"))
    saml.get_by_role("button", name="Add app").click()
    expect(page.get_by_role("heading", name="CRM", exact=True)).to_be_visible()
    expect(page.get_by_label("IdP entity ID")).to_have_value(ui.url("/saml"))  # what the metadata says
    page.get_by_role("link", name="All apps").click()
    page.get_by_role("link", name="CRM", exact=True).click()
    edit = page.get_by_role("region", name="Change")
    expect(edit.get_by_label(re.compile("^Or its entity ID"))).to_have_value("https://crm.acme.test/sp")
    edit.get_by_label("Name", exact=True).fill("CRM (Salesforce)")
    edit.get_by_label(re.compile("^and its Assertion Consumer Service")).fill("not a url")
    edit.get_by_role("button", name="Save changes").click()
    expect(under("edit-saml-acs")).to_contain_text("not a url")
    expect(page.get_by_role("region", name="Change").get_by_label("Name", exact=True)).to_have_value(
        "CRM (Salesforce)")
    edit = page.get_by_role("region", name="Change")
    edit.get_by_label(re.compile("^and its Assertion Consumer Service")).fill("https://crm.acme.test/saml/acs")
    edit.get_by_label("Require two-factor authentication for this app").check()
    edit.get_by_role("button", name="Save changes").click()
    expect(ui.notice(page, "Saved the app CRM (Salesforce).")).to_be_visible()
    expect(page.get_by_label("Assertion Consumer Service URLs")).to_have_value("https://crm.acme.test/saml/acs")
    expect(page.get_by_text("This app requires two-factor authentication.")).to_be_visible()
    access = page.get_by_role("region", name="Who may use this app")
    access.get_by_label("Only members of these groups:").check()
    access.get_by_label("Engineering").check()
    access.get_by_role("button", name="Save access").click()
    expect(ui.notice(page, "Saved who may use this app.")).to_be_visible()
    shoot("saml-app-edited")

    # 3. the session policy in days and hours; a mistake keeps every choice and names the network
    nav.get_by_role("link", name="Policies", exact=True).click()
    expect(page.locator("#session_idle_timeout")).to_have_value("30")
    expect(page.locator("#session_idle_timeout_unit")).to_have_value("days")
    page.locator("#session_idle_timeout").fill("8")
    page.locator("#session_idle_timeout_unit").select_option("hours")
    page.locator("#session_max_lifetime").fill("14")
    page.locator("#session_max_lifetime_unit").select_option("days")
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("127.0.0.0/8\n10.0.0.1/8")
    page.get_by_label("Text message (SMS)").uncheck()
    page.get_by_role("button", name="Save policies").click()
    expect(under("ip_allowlist")).to_have_text("10.0.0.1/8 has host bits set — did you mean 10.0.0.0/8?")
    expect(page.locator("#session_idle_timeout")).to_have_value("8")
    expect(page.locator("#session_idle_timeout_unit")).to_have_value("hours")
    expect(page.get_by_label("Text message (SMS)")).not_to_be_checked()
    shoot("policy-mistake")
    page.get_by_label(re.compile("^Sign-in only from these networks")).fill("127.0.0.0/8\n10.0.0.0/8")
    page.get_by_role("button", name="Save policies").click()
    expect(ui.notice(page, "Policies saved.")).to_be_visible()
    summary = page.locator("#policy-summary")
    expect(summary).to_contain_text("Sessions end after 8 hours without activity.")
    expect(summary).to_contain_text("Everyone signs in again at least every 2 weeks.")
    expect(page.locator("#session_max_lifetime")).to_have_value("14")
    expect(page.locator("#session_max_lifetime_unit")).to_have_value("days")
    shoot("policies")

    # 4. the OIDC connection form shows the redirect URI to register, as the short name is typed
    nav.get_by_role("link", name="Connections", exact=True).click()
    oc = page.get_by_role("region", name="Add an OpenID Connect connection")
    expect(page.locator("#oc-redirect-uri")).to_have_text(ui.url("/sso/<short name>/callback"))
    oc.get_by_label(re.compile("^Short name")).fill("corp-okta")
    expect(page.locator("#oc-redirect-uri")).to_have_text(ui.url("/sso/corp-okta/callback"))

    # 5. delete a group: first a page that says what will be lost
    nav.get_by_role("link", name="Groups", exact=True).click()
    page.get_by_role("button", name="Delete the group Engineering").click()
    question = "Delete group Engineering? 2 members lose access to 2 apps assigned through it."
    expect(page.get_by_role("heading", name=question)).to_be_visible()
    expect(page.get_by_text("Wiki: 2 members of this group lose access")).to_be_visible()
    shoot("delete-group-confirm")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator('tr[data-group="Engineering"]')).to_be_visible()
    page.get_by_role("button", name="Delete the group Engineering").click()
    page.get_by_role("button", name="Delete group").click()
    expect(ui.notice(page, "The group was deleted.")).to_be_visible()
    expect(page.locator('tr[data-group="Engineering"]')).to_have_count(0)
    shoot("groups")

    # Chromium logs every 4xx document as a failed load: the four deliberate mistakes above (answered 422, as a
    # form with errors is), and nothing else. The users page's password field is another form's (it draws a
    # "[DOM] ... autocomplete" hint about the invite form there); every other message fails the test.
    refused = [m for m in logged if "Failed to load resource: the server responded with a status of 422" in m]
    assert [m.rsplit("/w/acme", 1)[1] for m in refused] == ["/admin/apps)", "/admin/apps)", "/admin/apps/crm)",
                                                            "/admin/policies)"], refused
    others = [m for m in logged if m not in refused and not m.endswith("/w/acme/admin/users)")]
    assert others == [], "\n".join(others)
