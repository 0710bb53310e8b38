"""The console's forms for apps, connections, groups, policies and SCIM tokens: every error at once under its
field in the field's own words, what was typed kept (never a secret), a confirmation before anything destructive,
durations as a number and a unit, SAML apps editable after creation, and the IdP entity ID the metadata names."""

from __future__ import annotations

import re

import lxml.etree
import lxml.html
from sqlalchemy import select

from idp.models import Group, Workspace
from tests.conftest import ALICE, BOB
from tests.integration.test_admin_console import assert_labelled, events, signed_in, text

APPS = "/w/acme/admin/apps"


def field_errors(page: str, input_id: str) -> list[str]:
    """The error messages shown under the input ``input_id`` (and the input points at them)."""
    doc = lxml.html.fromstring(page)
    [el] = doc.xpath(f'//*[@id="{input_id}"]')
    box = doc.xpath(f'//*[@id="{input_id}-error"]')
    if not box:
        assert el.get("aria-invalid") is None
        return []
    assert el.get("aria-invalid") == "true" and f"{input_id}-error" in el.get("aria-describedby", "").split()
    return [p.text_content().strip() for p in box[0].iter("p")]


def value_of(page: str, input_id: str) -> str:
    [el] = lxml.html.fromstring(page).xpath(f'//*[@id="{input_id}"]')
    return el.text_content() if el.tag == "textarea" else (el.get("value") or "")


def test_the_saml_app_page_shows_the_entity_id_the_idp_metadata_names(app):
    admin = signed_in(app, ALICE)
    r = admin.form_post(APPS, APPS, {"protocol": "saml", "name": "CRM", "slug": "crm",
                                     "entity_id": "https://crm.test/sp", "acs_url": "https://crm.test/acs"})
    assert r.status_code == 201
    shown = value_of(text(admin.get(f"{APPS}/crm")), "setting-entity-id")
    meta = lxml.etree.fromstring(admin.get("/w/acme/saml/metadata").get_data())
    assert shown == meta.get("entityID") == "http://localhost/w/acme/saml"
    assert value_of(text(admin.get(f"{APPS}/crm")), "setting-metadata-url") == "http://localhost/w/acme/saml/metadata"


def test_an_app_form_shows_every_error_under_its_field_and_keeps_what_was_typed(app):
    admin = signed_in(app, ALICE)
    r = admin.form_post(APPS, APPS, {"protocol": "oidc", "name": "Wiki", "slug": "-Wiki-",
                                     "redirect_uris": "https://wiki.acme.test/cb\nwiki.acme.test/cb2",
                                     "require_mfa": "1"})
    page = text(r)
    assert r.status_code == 422
    assert field_errors(page, "oidc-slug") == [
        "Short name may only use lowercase letters, digits and hyphens, and cannot start or end with a hyphen."]
    assert field_errors(page, "oidc-redirect") == [
        "“wiki.acme.test/cb2” is not a full address such as https://app.example.com/callback."]
    assert "Please correct these 2 problems" in page and "must match" not in page and "[1]" not in page
    assert value_of(page, "oidc-name") == "Wiki" and value_of(page, "oidc-slug") == "-Wiki-"
    assert "wiki.acme.test/cb2" in value_of(page, "oidc-redirect")
    assert 'id="oidc-mfa" type="checkbox" name="require_mfa" value="1" checked' in page
    assert field_errors(page, "saml-slug") == [] and value_of(page, "saml-name") == ""  # the other form: untouched
    assert_labelled(page)
    # a pasted SAML metadata document that is not one is kept and named under its field
    r = admin.form_post(APPS, APPS, {"protocol": "saml", "name": "CRM", "slug": "crm", "metadata_xml": "<md/>"})
    assert r.status_code == 422 and value_of(text(r), "saml-metadata") == "<md/>"
    assert field_errors(text(r), "saml-metadata"), text(r)[:2000]


def test_the_api_lists_every_invalid_field(app, hub):
    from admin.api import admin_service

    with app.app_context():
        with hub.db() as db:
            ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws_id)
    r = app.test_client().post("/api/v1/workspaces/acme/apps", headers={"Authorization": f"Bearer {token}"},
                               json={"protocol": "oidc", "name": "x", "slug": "Bad Slug", "redirect_uris": ["nope"]})
    err = r.get_json()["error"]
    assert r.status_code == 422 and err["code"] == "invalid" and err["field"] == "slug"  # the format as before
    assert err["errors"] == [{"field": "slug", "message": err["message"]},
                             {"field": "redirect_uris[0]", "message": "not an absolute URL"}]


def test_a_saml_app_is_edited_in_place_validated_and_audited(app, hub):
    admin = signed_in(app, ALICE)
    admin.form_post(APPS, APPS, {"protocol": "saml", "name": "CRM", "slug": "crm", "entity_id": "https://crm.test/sp",
                                 "acs_url": "https://crm.test/acs"})
    page = text(admin.get(f"{APPS}/crm"))
    assert value_of(page, "edit-saml-entity") == "https://crm.test/sp"
    assert value_of(page, "edit-saml-acs").strip() == "https://crm.test/acs"
    assert_labelled(page)
    # a mistake: shown under the field, everything kept, nothing changed
    r = admin.form_post(f"{APPS}/crm", f"{APPS}/crm", {"name": "CRM 2", "entity_id": "https://crm.test/sp",
                                                       "acs_url": "crm.test/acs2", "require_mfa": "1"})
    assert r.status_code == 422
    assert field_errors(text(r), "edit-saml-acs"), text(r)[:3000]
    assert value_of(text(r), "app-name") == "CRM 2" and "crm.test/acs2" in value_of(text(r), "edit-saml-acs")
    assert value_of(text(admin.get(f"{APPS}/crm")), "setting-acs").strip() == "https://crm.test/acs"
    # the fix
    r = admin.form_post(f"{APPS}/crm", f"{APPS}/crm", {"name": "CRM 2", "entity_id": "https://crm.test/sp",
                                                       "acs_url": "https://crm.test/acs2", "require_mfa": "1"})
    assert r.status_code == 302, text(r)[:2000]
    page = text(admin.get(f"{APPS}/crm"))
    assert "Saved the app CRM 2." in page and value_of(page, "setting-acs").strip() == "https://crm.test/acs2"
    assert "This app requires two-factor authentication." in page
    [ev] = events(hub, "admin.app.updated")
    assert ev.actor_email == ALICE and ev.subject_id == "crm"
    assert ev.data["changed"] == ["acs_urls", "name", "require_mfa"]
    # only the name: the SP stays as it is
    r = admin.form_post(f"{APPS}/crm", f"{APPS}/crm", {"name": "CRM 3", "entity_id": "https://crm.test/sp",
                                                       "acs_url": "https://crm.test/acs2"})
    assert r.status_code == 302
    page = text(admin.get(f"{APPS}/crm"))
    assert value_of(page, "setting-acs").strip() == "https://crm.test/acs2" and "<h1>CRM 3</h1>" in page


def test_deleting_a_group_asks_first_and_says_who_loses_what(app, hub):
    admin = signed_in(app, ALICE)
    with hub.db() as db:
        gid = db.scalar(select(Group.id).where(Group.name == "engineering"))
    admin.form_post(APPS, APPS, {"protocol": "saml", "name": "CRM", "slug": "crm", "entity_id": "https://crm.test/sp",
                                 "acs_url": "https://crm.test/acs"})
    admin.form_post(f"{APPS}/crm", f"{APPS}/crm/access", {"access": "groups", "assigned_groups": "engineering"})
    r = admin.form_post("/w/acme/admin/groups", f"/w/acme/admin/groups/{gid}/delete", {})
    page = text(r)
    assert r.status_code == 200
    assert "Delete group engineering? 1 member lose access to 1 app assigned through it." in page
    assert "CRM: 1 member of this group loses access" in page
    assert 'name="confirm" value="1"' in page and 'href="/w/acme/admin/groups"' in page
    with hub.db() as db:
        assert db.get(Group, gid) is not None
    assert not events(hub, "admin.group.deleted")
    r = admin.form_post("/w/acme/admin/groups", f"/w/acme/admin/groups/{gid}/delete", {"confirm": "1"})
    assert r.status_code == 302
    with hub.db() as db:
        assert db.get(Group, gid) is None
    assert len(events(hub, "admin.group.deleted")) == 1


def test_removing_an_app_a_connection_or_a_token_asks_first(app, hub):
    admin = signed_in(app, ALICE)
    admin.form_post(APPS, APPS, {"protocol": "oidc", "name": "Wiki", "slug": "wiki",
                                 "redirect_uris": "https://wiki.acme.test/cb"})
    r = admin.form_post(f"{APPS}/wiki", f"{APPS}/wiki/delete", {})
    assert r.status_code == 200 and "Remove the app Wiki?" in text(r) and "everyone in the workspace" in text(r)
    assert admin.get(f"{APPS}/wiki").status_code == 200
    assert admin.form_post(f"{APPS}/wiki", f"{APPS}/wiki/delete", {"confirm": "1"}).status_code == 302
    assert admin.get(f"{APPS}/wiki").status_code == 404

    conns = "/w/acme/admin/connections"
    admin.form_post(conns, conns, {"protocol": "oidc", "name": "Okta", "slug": "okta", "preset": "okta",
                                   "issuer": "https://acme.okta.test", "client_id": "0oa1",
                                   "client_secret": "s3cret-value-xyz", "domains": "corp.acme.test"})
    r = admin.form_post(conns, f"{conns}/okta/delete", {})
    assert r.status_code == 200 and "Remove the connection Okta?" in text(r) and "corp.acme.test" in text(r)
    assert "0 accounts signed in through it" in text(r)
    assert 'data-connection="okta"' in text(admin.get(conns))
    assert admin.form_post(conns, f"{conns}/okta/delete", {"confirm": "1"}).status_code == 302
    assert 'data-connection="okta"' not in text(admin.get(conns))

    scim = "/w/acme/admin/scim"
    admin.form_post(scim, scim, {"name": "okta-provisioning"})
    tid = re.search(r'action="/w/acme/admin/scim/([0-9a-f-]{36})/revoke"', text(admin.get(scim)))[1]
    r = admin.form_post(scim, f"{scim}/{tid}/revoke", {})
    assert r.status_code == 200 and "Revoke the SCIM token okta-provisioning?" in text(r)
    assert not events(hub, "admin.scim_token.revoked")
    assert admin.form_post(scim, f"{scim}/{tid}/revoke", {"confirm": "1"}).status_code == 302
    assert len(events(hub, "admin.scim_token.revoked")) == 1


def test_policy_durations_are_a_number_and_a_unit(app, hub):
    admin = signed_in(app, ALICE)
    page = text(admin.get("/w/acme/admin/policies"))  # the config file's 30d and 90d
    assert value_of(page, "session_idle_timeout") == "30" and value_of(page, "session_max_lifetime") == "90"
    assert re.search(r'id="session_idle_timeout_unit".*?<option value="days" selected>', page, re.S)
    assert "2592000" not in page
    assert_labelled(page)
    form = {"require_mfa_for_admins": "1", "mfa_methods": ["totp", "backup_codes"], "ip_allowlist": "",
            "session_idle_timeout": "12", "session_idle_timeout_unit": "hours",
            "session_max_lifetime": "45", "session_max_lifetime_unit": "days"}
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies", form)
    assert r.status_code == 302, text(r)[:2000]
    with hub.db() as db:
        pol = db.scalar(select(Workspace).where(Workspace.slug == "acme")).policies
    assert pol["session_idle_timeout"] == 12 * 3600 and pol["session_max_lifetime"] == 45 * 86400
    page = text(admin.get("/w/acme/admin/policies"))
    assert "Sessions end after 12 hours without activity." in page
    assert value_of(page, "session_idle_timeout") == "12"
    # two mistakes at once, each under its field, the rest of the form as typed
    bad = {**form, "ip_allowlist": "127.0.0.0/8\n10.0.0.1/8", "session_idle_timeout": "0",
           "mfa_methods": ["totp"], "require_mfa": "1"}
    r = admin.form_post("/w/acme/admin/policies", "/w/acme/admin/policies", bad)
    page = text(r)
    assert r.status_code == 422
    assert field_errors(page, "ip_allowlist") == ["10.0.0.1/8 has host bits set — did you mean 10.0.0.0/8?"]
    assert field_errors(page, "session_idle_timeout") == ["Idle timeout must be between 1 minute and 400 days."]
    assert "127.0.0.0/8\n10.0.0.1/8" in value_of(page, "ip_allowlist")
    assert 'id="require_mfa" type="checkbox" name="require_mfa" value="1" checked' in page
    assert 'value="sms" checked' not in page and 'value="totp" checked' in page
    with hub.db() as db:
        assert db.scalar(select(Workspace).where(Workspace.slug == "acme")).policies == pol


def test_the_oidc_connection_form_shows_the_redirect_uri_and_asks_again_for_a_secret(app):
    admin = signed_in(app, ALICE)
    conns = "/w/acme/admin/connections"
    page = text(admin.get(conns))
    assert "http://localhost/w/acme/sso/<short name>/callback" in page
    r = admin.form_post(conns, conns, {"protocol": "oidc", "name": "Okta", "slug": "corp-okta", "preset": "okta",
                                       "issuer": "http://acme.okta.test", "client_id": "0oa1",
                                       "client_secret": "typed-secret-0123456789", "domains": "acme.test"})
    page = text(r)
    assert r.status_code == 422
    assert field_errors(page, "oc-issuer") == ["Issuer URL must use https (http only on 127.0.0.1/localhost)"]
    assert value_of(page, "oc-issuer") == "http://acme.okta.test" and value_of(page, "oc-client-id") == "0oa1"
    assert "typed-secret" not in page and "Paste it again before saving." in page
    assert "http://localhost/w/acme/sso/corp-okta/callback" in page
    assert re.search(r'<option value="okta" selected>', page)
    assert_labelled(page)


def test_a_member_cannot_reach_the_confirmation_pages(app, hub):
    member = signed_in(app, BOB)
    with hub.db() as db:
        gid = db.scalar(select(Group.id).where(Group.name == "engineering"))
    r = member.post(f"/w/acme/admin/groups/{gid}/delete", {"csrf_token": member.csrf(text(member.security()))})
    assert r.status_code == 403 and "engineering" not in text(r)


def test_the_api_changes_a_saml_app_and_refuses_saml_keys_on_an_oidc_app(app, hub):
    from admin.api import admin_service

    with app.app_context():
        with hub.db() as db:
            ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws_id)
    client, h = app.test_client(), {"Authorization": f"Bearer {token}"}
    base = "/api/v1/workspaces/acme/apps"
    assert client.post(base, headers=h, json={"protocol": "saml", "name": "CRM", "slug": "crm",
                                              "entity_id": "https://crm.test/sp",
                                              "acs_url": "https://crm.test/acs"}).status_code == 201
    r = client.patch(f"{base}/crm", headers=h, json={"entity_id": "https://crm.test/sp2",
                                                     "acs_url": ["https://crm.test/a", "https://crm.test/b"]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["settings"]["sp_entity_id"] == "https://crm.test/sp2"
    assert r.get_json()["settings"]["acs_urls"] == ["https://crm.test/a", "https://crm.test/b"]
    r = client.patch(f"{base}/crm", headers=h, json={"acs_url": "ftp://crm.test/a", "entity_id": "https://x.test"})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "acs_url"
    assert client.get(f"{base}/crm", headers=h).get_json()["settings"]["sp_entity_id"] == "https://crm.test/sp2"
    assert client.post(base, headers=h, json={"protocol": "oidc", "name": "Wiki", "slug": "wiki",
                                              "redirect_uris": ["https://wiki.test/cb"]}).status_code == 201
    r = client.patch(f"{base}/wiki", headers=h, json={"metadata_xml": "<x/>"})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "metadata_xml"
    updated = [e for e in events(hub, "admin.app.updated") if e.subject_id == "crm"]
    assert len(updated) == 1 and updated[0].data["changed"] == ["acs_urls", "sp_entity_id"]
