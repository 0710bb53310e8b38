"""Error pages: every one is the styled page (templates/error.html), keeps the workspace the URL names with the ways
back to it, and shows an error id where one helps; a mistyped workspace on the start page is said under the field,
keeping what was typed. Protocol URLs (SCIM, OAuth/OIDC, the admin API) keep their own error formats."""

from __future__ import annotations

import html as htmllib

import lxml.html
from sqlalchemy.exc import OperationalError

from tests.conftest import ALICE, Browser
from tests.integration.test_admin_console import signed_in


def text(r) -> str:
    return htmllib.unescape(r.get_data(as_text=True))


def links(r) -> dict[str, str]:
    doc = lxml.html.fromstring(r.get_data(as_text=True))
    return {a.text_content().strip(): a.get("href") for a in doc.xpath("//nav[contains(@class,'error-links')]//a")}


def test_a_missing_page_in_a_workspace_keeps_the_workspace_and_the_ways_back(app):
    r = Browser(app).get("/w/acme/no-such-page")
    page = text(r)
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert "Page not found" in page and "requested URL was not found on the server" not in page
    assert "Acme Corp" in page  # the workspace's name, in the top bar
    assert links(r) == {"Your apps": "/w/acme/apps", "Sign in to Acme Corp": "/w/acme/login"}
    assert "Error id: <code>" in r.get_data(as_text=True)


def test_errors_in_the_console_lead_back_to_it(app):
    admin = signed_in(app, ALICE)
    r = admin.get("/w/acme/admin/users/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404
    assert list(links(r))[0] == "Admin console" and links(r)["Admin console"] == "/w/acme/admin/"
    r = admin.get("/w/acme/admin/nothing-here")
    assert r.status_code == 404 and links(r)["Admin console"] == "/w/acme/admin/"


def test_an_unknown_workspace_is_named_and_leads_to_the_start_page(app):
    r = Browser(app).get("/w/acm/login")
    assert r.status_code == 404
    assert "There is no workspace called 'acm'" in text(r)
    assert links(r) == {"Go to the start page": "/"}


def test_405_and_400_are_styled_with_an_error_id(app):
    b = Browser(app)
    r = b.client.put("/w/acme/login")
    assert r.status_code == 405 and r.mimetype == "text/html"
    assert "Method not allowed" in text(r) and links(r)["Your apps"] == "/w/acme/apps"
    r = b.client.post("/w/acme/login", data={"email": "x"})  # no CSRF token
    assert r.status_code == 400 and "Error id: <code>" in r.get_data(as_text=True)
    assert links(r)["Sign in to Acme Corp"] == "/w/acme/login"


def test_a_500_and_a_503_keep_the_workspace(app, hub, monkeypatch):
    admin = signed_in(app, ALICE)
    from admin.service import AdminService

    def boom(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(AdminService, "dashboard", boom)
    r = admin.get("/w/acme/admin/")
    assert r.status_code == 500 and "Error id: <code>" in r.get_data(as_text=True) and "boom" not in text(r)
    assert links(r)["Admin console"] == "/w/acme/admin/" and "Acme Corp" in text(r)

    def down(*a, **kw):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(AdminService, "dashboard", down)
    r = admin.get("/w/acme/admin/")
    assert r.status_code == 503 and r.headers["Retry-After"] and "Error id: <code>" in r.get_data(as_text=True)
    assert "Acme Corp" in text(r)


def test_the_start_page_says_a_mistyped_workspace_under_the_field(app):
    b = Browser(app)
    r = b.get("/?workspace=acm")
    page = r.get_data(as_text=True)
    assert r.status_code == 404
    doc = lxml.html.fromstring(page)
    field = doc.get_element_by_id("workspace")
    assert field.get("value") == "acm" and field.get("aria-invalid") == "true"
    assert doc.get_element_by_id("workspace-error").text_content() == (
        "No workspace called 'acm' — check the name your IT team gave you.")
    r = b.get("/?workspace=Not a name!")
    assert r.status_code == 404 and "only lowercase letters, digits and dashes" in text(r)
    assert lxml.html.fromstring(text(r)).get_element_by_id("workspace").get("value") == "Not a name!"
    r = b.get("/?workspace=ACME")
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/login")


def test_protocol_urls_keep_their_error_formats(app):
    c = Browser(app).client
    r = c.get("/w/acme/scim")
    assert r.status_code == 404 and r.is_json and r.get_json()["status"] == "404"
    r = c.put("/w/acme/oauth2/token")
    assert r.status_code == 405 and r.get_json()["error"] == "invalid_request"
    r = c.get("/w/acme/oauth2/nothing")
    assert r.status_code == 404 and r.get_json()["error"] == "invalid_request"
    r = c.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.is_json


def test_a_member_refused_the_console_is_offered_their_apps_not_the_console(app):
    from tests.conftest import BOB

    member = signed_in(app, BOB)
    r = member.get("/w/acme/admin/users")
    assert r.status_code == 403 and "admin console is for this workspace's admins" in text(r)
    assert links(r) == {"Your apps": "/w/acme/apps"}
