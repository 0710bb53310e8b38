"""The app launcher (``/w/{ws}/apps``, ``idp.launcher``): a tile per app the user may open — the doors' answer
(``assigned_groups``), never naming another app — in the config file's order, searchable without JavaScript;
employees land there after sign-in; the console edits who may use an app, and the API and export see it."""

from __future__ import annotations

import copy
import re

import pytest
from sqlalchemy import select

from admin.export import export_workspace
from idp.audit import AuditEvent
from idp.models import Workspace
from tests.conftest import ALICE, ALICE_PW, BOB, BOB_PW, Browser
from tests.interop.oidc_support import make_oidc_app, oidc_config

TILE_RE = re.compile(r'aria-label="Open ([^"]+)"')


def launcher_config(extra_apps=()) -> dict:
    cfg = oidc_config()
    ws = cfg["workspaces"][0]
    ws["groups"] = [{"name": "engineering"}, {"name": "sales"}]
    apps = {a["slug"]: a for a in ws["apps"]}
    apps["wiki"]["assigned_groups"] = ["engineering"]
    apps["wiki"]["description"] = "Team handbook and runbooks"
    apps["poster"]["show_in_launcher"] = False
    apps["strict"]["initiate_login_uri"] = "https://strict.example/login"
    # payroll (SAML, no idp_initiated) opens only from its own site: no tile
    ws["apps"].insert(0, {"slug": "expenses", "name": "Expenses", "protocol": "saml",
                          "entity_id": "https://expenses.example", "acs_url": "https://expenses.example/acs",
                          "idp_initiated": True})
    ws["apps"] += list(extra_apps)
    return cfg


@pytest.fixture
def app(settings):
    return make_oidc_app(settings, launcher_config())


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


def signed_in(app, email, password) -> Browser:
    b = Browser(app)
    r = b.login("acme", email, password)
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), r.headers.get("Location")
    return b


def tiles(b: Browser, q: str | None = None) -> list[str]:
    r = b.get("/w/acme/apps" + (f"?q={q}" if q is not None else ""))
    assert r.status_code == 200
    return TILE_RE.findall(r.get_data(as_text=True))


def test_landing_after_sign_in_and_workspace_home_is_the_launcher(app):
    b = signed_in(app, BOB, BOB_PW)
    assert b.get("/w/acme/").headers["Location"].endswith("/w/acme/apps")
    html = b.get("/w/acme/apps").get_data(as_text=True)
    assert '<label for="q">Search apps</label>' in html
    assert 'href="/w/acme/settings/security"' in html  # security settings: one click away


def test_a_member_sees_the_apps_open_to_them_in_config_order(app):
    alice = signed_in(app, ALICE, ALICE_PW)
    assert tiles(alice) == ["Expenses", "Wiki", "SPA", "Strict"]
    html = alice.last.get_data(as_text=True)
    assert "Team handbook and runbooks" in html
    assert 'href="https://strict.example/login?iss=http' in html  # OIDC Third-Party Initiated Login, with iss
    assert 'href="http://127.0.0.1:8081/"' in html  # no initiate_login_uri: the first redirect URI's origin
    assert 'action="/w/acme/apps/expenses/launch"' in html  # SAML: IdP-initiated SSO, a POST with CSRF
    bob = signed_in(app, BOB, BOB_PW)
    assert tiles(bob) == ["Expenses", "SPA", "Strict"]
    page = bob.last.get_data(as_text=True)
    for hidden in ("Wiki", "wiki", "handbook", "Poster", "Payroll"):  # unassigned, hidden, not launchable
        assert hidden not in page


def test_search_filters_without_javascript(app):
    alice = signed_in(app, ALICE, ALICE_PW)
    assert tiles(alice, "ST") == ["Strict"]
    assert tiles(alice, "runbook") == ["Wiki"]  # the description too
    assert tiles(alice, "nothing-like-it") == []
    assert "No app matches" in alice.last.get_data(as_text=True)
    bob = signed_in(app, BOB, BOB_PW)
    assert tiles(bob, "wiki") == []  # a search never reveals an app the user may not open
    assert "Wiki" not in bob.last.get_data(as_text=True)


def test_three_hundred_apps_render(settings):
    many = [{"slug": f"app-{i:03d}", "name": f"App {i:03d}", "protocol": "oidc", "client_id": f"c{i:03d}",
             "redirect_uris": [f"https://app{i}.example/cb"],
             **({"assigned_groups": ["sales"]} if i % 2 else {})} for i in range(300)]
    app = make_oidc_app(settings, launcher_config(many))
    alice = signed_in(app, ALICE, ALICE_PW)
    shown = tiles(alice)
    assert shown[4:] == [f"App {i:03d}" for i in range(0, 300, 2)]  # engineering: the apps open to everyone
    assert tiles(alice, "App 29") == ["App 290", "App 292", "App 294", "App 296", "App 298"]


def test_the_launch_of_an_app_the_user_may_not_open_is_refused(app, hub):
    cfg = launcher_config()
    next(a for a in cfg["workspaces"][0]["apps"] if a["slug"] == "expenses")["assigned_groups"] = ["engineering"]
    app2 = make_oidc_app(hub.settings, cfg)
    bob = signed_in(app2, BOB, BOB_PW)
    assert "Expenses" not in tiles(bob)
    r = bob.post("/w/acme/apps/expenses/launch", {"csrf_token": bob.csrf()})
    assert r.status_code == 403
    assert "access to this app" in r.get_data(as_text=True)
    # the launch URL opened directly: the same page for an app not theirs and for no app at all
    for slug in ("expenses", "no-such-app"):
        r = bob.get(f"/w/acme/apps/{slug}/launch")
        assert r.status_code == 403 and "access to this app" in r.get_data(as_text=True)
        assert "Expenses" not in r.get_data(as_text=True) and "Back to your apps" in r.get_data(as_text=True)
    alice = signed_in(app2, ALICE, ALICE_PW)
    r = alice.get("/w/acme/apps/expenses/launch")
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps?q=expenses")


def console_save_access(b: Browser, slug: str, fields: dict):
    return b.form_post(f"/w/acme/admin/apps/{slug}", f"/w/acme/admin/apps/{slug}/access", fields)


def test_the_console_edits_who_may_use_an_app_and_the_api_and_export_see_it(app, hub):
    alice = signed_in(app, ALICE, ALICE_PW)
    page = alice.get("/w/acme/admin/apps/spa").get_data(as_text=True)
    assert "Everyone in the workspace" in page and 'value="engineering"' in page
    r = console_save_access(alice, "spa", {"access": "groups", "assigned_groups": ["sales"],
                                           "show_in_launcher": "1", "description": "Single page"})
    assert r.status_code == 302, r.get_data(as_text=True)[:400]
    from admin.api import admin_service
    from admin.tokens import Principal

    with app.app_context():
        got = admin_service().get_app(Principal("token", "test", True, None), "acme", "spa")
    assert got["assigned_groups"] == ["sales"] and got["description"] == "Single page"
    assert got["show_in_launcher"] is True
    assert "SPA" not in tiles(signed_in(app, BOB, BOB_PW))  # Bob is in no group: the tile is gone
    with hub.db() as db:
        ev = db.scalars(select(AuditEvent).where(AuditEvent.type == "admin.app.updated")).all()
    assert ev and "assigned_groups" in ev[-1].data["changed"]
    # hide it, and everyone again
    r = console_save_access(alice, "spa", {"access": "everyone", "description": ""})
    assert r.status_code == 302
    assert "SPA" not in tiles(alice)
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        apps = export_workspace(db, ws)[0]["workspaces"][0]["apps"]
    spa = next(a for a in apps if a["slug"] == "spa")
    assert spa.get("show_in_launcher") is False and "assigned_groups" not in spa
    assert [a["slug"] for a in apps][:3] == ["expenses", "wiki", "spa"]  # the launcher's order


def test_group_and_user_pages_list_the_apps(app):
    alice = signed_in(app, ALICE, ALICE_PW)
    groups = alice.get("/w/acme/admin/groups").get_data(as_text=True)
    row = re.search(r'<tr data-group="engineering">.*?</tr>', groups, re.S).group(0)
    assert ">Wiki</a>" in row
    assert "none assigned" in re.search(r'<tr data-group="sales">.*?</tr>', groups, re.S).group(0)
    from tests.integration.test_app_assignment import uid

    hub = app.extensions["idhub"]
    page = alice.get(f"/w/acme/admin/users/{uid(hub, ALICE)}").get_data(as_text=True)
    assert re.search(r">Wiki</a> <span class=\"muted\">\(via engineering\)</span>", page)
    assert re.search(r">SPA</a> <span class=\"muted\">\(everyone\)</span>", page)
    page = alice.get(f"/w/acme/admin/users/{uid(hub, BOB)}").get_data(as_text=True)
    assert ">Wiki</a>" not in page and ">SPA</a>" in page


def test_config_validation_of_the_launcher_settings():
    from idp.configfile import ConfigError, validate

    cfg = launcher_config()
    validate(copy.deepcopy(cfg))
    bad = copy.deepcopy(cfg)
    bad["workspaces"][0]["apps"][0]["initiate_login_uri"] = "https://x.example/login"  # a SAML app
    bad["workspaces"][0]["apps"][1]["show_in_launcher"] = "yes"
    with pytest.raises(ConfigError) as exc:
        validate(bad)
    assert "initiate_login_uri" in str(exc.value) and "show_in_launcher" in str(exc.value)
