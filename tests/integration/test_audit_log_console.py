"""The console's audit log as an IT admin reads it: events in words with their outcome, who and to what as links,
filters (user by id or e-mail, app, kind, outcome, dates, policy decisions on request) that the pager and the
CSV/JSON exports keep, and the dashboard's count of failed factors. On SQLite and on PostgreSQL (the app and
outcome filters read the events' JSON data)."""

from __future__ import annotations

import csv
import html as htmllib
import io
import json

import lxml.html
import pytest
from sqlalchemy import select

from idp.eventcatalog import EXPORT_COLUMNS
from idp.flow import Client
from idp.models import User, Workspace
from tests.conftest import ALICE, BOB, make_app, make_settings
from tests.integration.test_admin_console import assert_labelled, signed_in
from tests.services import drop_postgres, postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def app(request, tmp_path):
    if request.param == "sqlite":
        yield make_app(make_settings(tmp_path))
        return
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url))
    try:
        yield app
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


def text(r) -> str:
    return htmllib.unescape(r.get_data(as_text=True))


def ids(hub) -> tuple[Workspace, str, str]:
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        bob = db.scalar(select(User.id).where(User.workspace_id == ws.id, User.email_normalized == BOB))
        alice = db.scalar(select(User.id).where(User.workspace_id == ws.id, User.email_normalized == ALICE))
    return ws, bob, alice


def rows(page: str) -> list:
    return lxml.html.fromstring(page).xpath("//table[contains(@class, 'audit-events')]/tbody/tr")


def fail_a_2fa_code(hub, ws, user_id) -> None:
    """Bob types a wrong authenticator-app code (the step the sign-in page runs)."""
    msg = hub.verify_second_factor(ws, user_id, "totp", "000000", Client("203.0.113.9", "Firefox", "req-2fa"))
    assert msg and "not valid" in msg


def test_a_failed_2fa_code_is_found_by_kind_outcome_and_user_and_exported_with_the_email(app, hub):
    ws, bob, alice = ids(hub)
    admin = signed_in(app, ALICE)
    fail_a_2fa_code(hub, ws, bob)

    r = admin.get("/w/acme/admin/audit?kind=2fa&outcome=failure")
    page = text(r)
    assert r.status_code == 200
    assert_labelled(page)
    found = rows(page)
    assert [tr.get("data-type") for tr in found] == ["auth.mfa.failure"]
    tr = found[0]
    assert tr.get("data-outcome") == "failure"
    assert "Failed second factor" in tr.text_content() and "Failure" in tr.text_content()
    # who: Bob by e-mail (the event recorded only his id), a link to his user page
    who = tr.xpath("td[@data-label='Who']/a")[0]
    assert who.text_content() == BOB and who.get("href") == f"/w/acme/admin/users/{bob}"
    # details as key: value, never JSON
    details = tr.xpath("td[@data-label='Details']")[0]
    assert [d.text_content() for d in details.xpath(".//dt")] == ["method:"]
    assert details.xpath(".//dd")[0].text_content() == "totp" and "{" not in details.text_content()

    # by user: ?user=<id> (the user page's link) and by part of the e-mail; the admin's own sign-in is not Bob's
    for q in (f"user={bob}", "user=bob%40", "user=BOB@ACME"):
        types = [tr.get("data-type") for tr in rows(text(admin.get(f"/w/acme/admin/audit?{q}")))]
        assert "auth.mfa.failure" in types and "auth.signin.success" not in types, (q, types)
    assert "auth.mfa.failure" not in [tr.get("data-type") for tr in
                                      rows(text(admin.get(f"/w/acme/admin/audit?user={alice}")))]
    whose = lxml.html.fromstring(text(admin.get(f"/w/acme/admin/audit?user={bob}"))).text_content()
    assert f"Events of {BOB}:" in whose

    # the exports: same filters, the page's columns, actor_email filled in
    r = admin.get("/w/acme/admin/audit/export?format=csv&kind=2fa&outcome=failure")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    exported = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [x["type"] for x in exported] == ["auth.mfa.failure"]
    x = exported[0]
    assert x["actor_email"] == BOB and x["actor_id"] == bob and x["outcome"] == "failure" and x["kind"] == "2fa"
    assert x["description"].startswith("Failed second factor") and x["details"] == "method: totp"
    assert x["ip"] == "203.0.113.9" and json.loads(x["data"]) == {"method": "totp"} and x["hash"]
    assert list(exported[0]) == list(EXPORT_COLUMNS)
    j = admin.get(f"/w/acme/admin/audit/export?format=json&user={bob}").get_json()
    assert "auth.mfa.failure" in [e["type"] for e in j] and all(e["actor_email"] == BOB or e["target_id"] == bob
                                                                 for e in j)

    # the dashboard counts it as a failed sign-in attempt, and links to exactly these events
    page = text(admin.get("/w/acme/admin/"))
    assert 'id="stat-failures"><a' in page
    doc = lxml.html.fromstring(page)
    cell = doc.get_element_by_id("stat-failures")
    assert cell.text_content().strip() == "1"
    link = cell.xpath("a")[0].get("href")
    types = [tr.get("data-type") for tr in rows(text(admin.get(link)))]
    assert types == ["auth.mfa.failure"]


def test_every_failed_factor_counts_on_the_dashboard(app, hub):
    ws, bob, _alice = ids(hub)
    admin = signed_in(app, ALICE)
    client = Client("203.0.113.9", "Firefox", "r")
    fail_a_2fa_code(hub, ws, bob)
    hub.verify_second_factor(ws, bob, "backup_code", "abcd-efgh", client)
    hub.verify_second_factor(ws, bob, "sms", "123456", client)
    hub.audit.record("auth.signin.failure", workspace_id=ws.id, actor_email=BOB, data={"reason": "bad_password"})
    hub.audit.record("auth.signin.success", workspace_id=ws.id, actor_email=BOB)  # not a failure
    hub.audit.record("auth.signin.failure", workspace_id=None, actor_email=BOB)  # another chain
    doc = lxml.html.fromstring(text(admin.get("/w/acme/admin/")))
    assert doc.get_element_by_id("stat-failures").text_content().strip() == "4"
    assert "Failed sign-in attempts" in doc.text_content()


def test_policy_decisions_are_hidden_unless_asked_for_and_pages_keep_the_filters(app, hub):
    ws, bob, _alice = ids(hub)
    admin = signed_in(app, ALICE)
    for _ in range(60):
        hub.audit.record("policy.decision", workspace_id=ws.id, actor_id=bob,
                         data={"effect": "deny", "rule": "ip_allowlist", "stage": "signin"})
    for i in range(55):
        hub.audit.record("auth.signin.failure", workspace_id=ws.id, actor_id=bob, data={"reason": f"r{i}"})
    page = text(admin.get("/w/acme/admin/audit"))
    assert "policy.decision" not in [tr.get("data-type") for tr in rows(page)]
    assert "Policy decisions" in page
    page = text(admin.get("/w/acme/admin/audit?decisions=1&outcome=denied"))
    found = rows(page)
    assert found and {tr.get("data-type") for tr in found} == {"policy.decision"}
    assert found[0].get("data-outcome") == "denied"
    # 55 failures, 50 a page: the second page keeps the filters and holds the other 5
    page = text(admin.get(f"/w/acme/admin/audit?kind=signin&outcome=failure&user={bob}"))
    assert len(rows(page)) == 50
    doc = lxml.html.fromstring(page)
    older = doc.xpath("//a[text()='Older events']")[0].get("href")
    assert "kind=signin" in older and "outcome=failure" in older and f"user={bob}" in older
    rest = text(admin.get(older))
    assert len(rows(rest)) == 5 and {tr.get("data-type") for tr in rows(rest)} == {"auth.signin.failure"}
    assert lxml.html.fromstring(rest).xpath("//a[text()='Newest events']")
    # the export links carry the filters too
    export = doc.xpath("//a[text()='Export CSV']")[0].get("href")
    got = list(csv.DictReader(io.StringIO(text(admin.get(export)))))
    assert len(got) == 55 and {x["type"] for x in got} == {"auth.signin.failure"}


def test_app_filter_and_app_links(app, hub):
    ws, bob, _alice = ids(hub)
    admin = signed_in(app, ALICE)
    r = admin.form_post("/w/acme/admin/apps", "/w/acme/admin/apps",
                        {"protocol": "oidc", "name": "Wiki", "slug": "wiki",
                         "redirect_uris": "https://wiki.example.test/cb"})
    assert r.status_code == 201, text(r)[:300]
    from oidc.models import OidcClient

    with hub.db() as db:
        client_id = db.scalar(select(OidcClient.client_id).where(OidcClient.slug == "wiki"))
    hub.audit.record("oidc.authorize.denied", workspace_id=ws.id, actor_id=bob,
                     data={"client": client_id, "reason": "not assigned"})
    hub.audit.record("oidc.authorize", workspace_id=ws.id, actor_id=bob, data={"client": "someone-else"})
    page = text(admin.get("/w/acme/admin/audit?app=wiki"))
    types = [tr.get("data-type") for tr in rows(page)]
    assert types == ["oidc.authorize.denied", "admin.app.created"], types
    denied = rows(page)[0]
    assert denied.get("data-outcome") == "denied"
    assert denied.xpath("td[@data-label='Target']/a")[0].get("href") == "/w/acme/admin/apps/wiki"
    created = rows(page)[1]
    assert created.xpath("td[@data-label='Target']/a")[0].text_content() == "Wiki"


def test_bad_filters_are_a_400_on_the_page_naming_the_field(app, hub):
    admin = signed_in(app, ALICE)
    for q, field in (("kind=nonsense", "kind"), ("outcome=maybe", "outcome"), ("until=garbage", "until")):
        for path in ("/w/acme/admin/audit", "/w/acme/admin/audit/export"):
            r = admin.get(f"{path}?{q}")
            assert r.status_code == 400 and r.mimetype == "text/html", (path, q)
            assert f"{field}:" in text(r) and "<h1>Audit log</h1>" in text(r)


def test_outcomes_read_from_the_data_filter_alike_on_every_database(app, hub):
    ws, bob, _alice = ids(hub)
    admin = signed_in(app, ALICE)
    hub.audit.record("saml.slo.backchannel", workspace_id=ws.id, data={"sp": "https://a.test", "success": False,
                                                                       "error": "timeout"})
    hub.audit.record("saml.slo.backchannel", workspace_id=ws.id, data={"sp": "https://b.test", "success": True})
    hub.audit.record("policy.decision", workspace_id=ws.id, actor_id=bob, data={"effect": "allow", "rule": "all"})
    failed = rows(text(admin.get("/w/acme/admin/audit?outcome=failure&kind=session")))
    assert [(tr.get("data-type"), tr.get("data-outcome")) for tr in failed] == [("saml.slo.backchannel", "failure")]
    assert "timeout" in failed[0].text_content()
    ok = rows(text(admin.get("/w/acme/admin/audit?outcome=success&kind=session&kind=policy&decisions=1")))
    assert {tr.get("data-type") for tr in ok} == {"saml.slo.backchannel", "policy.decision"}
    assert all(tr.get("data-outcome") == "success" for tr in ok)
