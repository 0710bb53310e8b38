"""Who may use which app (``apps[].assigned_groups``): the attack first — an unassigned user, or one removed from
the group, tries every door (OIDC authorize, refresh, userinfo) — then the config file, the admin API and SCIM,
and the revocation of what a user lost (tokens refused at once, back-channel logout of that app only)."""

from __future__ import annotations

import copy

import pytest
from authlib.jose import jwt
from sqlalchemy import delete, select

from admin.api import admin_service
from idp.audit import AuditEvent
from idp.configfile import ConfigError, validate
from idp.models import Group, GroupMember, User, Workspace
from tests.conftest import ALICE, ALICE_PW, BOB, BOB_PW, Browser
from tests.integration.scim_helpers import GROUP_SCHEMA, Scim, install_tokens
from tests.integration.test_oidc import WIKI_AUTH, code_flow, redeem
from tests.interop.oidc_support import (
    SPA_CB,
    WIKI_CB,
    authorize_path,
    browser_authorize,
    make_oidc_app,
    oidc_config,
    pkce,
    query,
)

NOT_ASSIGNED = "You don't have access to this app. Ask your IT team to assign it to you."


def assigned_config(groups=("engineering",)) -> dict:
    cfg = oidc_config()
    cfg["workspaces"][0]["plan"] = "enterprise"
    cfg["workspaces"][0]["groups"] = [{"name": "engineering"}, {"name": "sales"}]
    wiki = next(a for a in cfg["workspaces"][0]["apps"] if a["slug"] == "wiki")
    wiki["assigned_groups"] = list(groups)
    wiki["grant_types"] = ["authorization_code", "refresh_token"]
    return cfg


@pytest.fixture
def app(settings):
    return make_oidc_app(settings, assigned_config())


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


@pytest.fixture
def api(app):
    return app.test_client()


def uid(hub, email: str) -> str:
    with hub.db() as db:
        return db.scalar(select(User.id).join(Workspace, Workspace.id == User.workspace_id)
                         .where(Workspace.slug == "acme", User.email_normalized == email))


def group_id(hub, name: str) -> str:
    with hub.db() as db:
        return db.scalar(select(Group.id).join(Workspace, Workspace.id == Group.workspace_id)
                         .where(Workspace.slug == "acme", Group.name == name))


def refresh(api, rt):
    return api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": rt},
                    headers=WIKI_AUTH)


def userinfo(api, at):
    return api.get("/w/acme/oauth2/userinfo", headers={"Authorization": "Bearer " + at})


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def capture_backchannel(hub) -> list[str]:
    posted: list[str] = []
    hub.oidc.backchannel.dispatch = lambda fn: fn()
    hub.oidc.backchannel.post = lambda url, token, guarded=False: posted.append(token)
    return posted


# ---- the doors ------------------------------------------------------------------------------------------------
def test_unassigned_user_is_told_whom_to_ask_then_the_app_gets_access_denied_and_no_code(app):
    b = Browser(app)
    cb = browser_authorize(b, authorize_path(challenge=pkce()[1], state="s-1"), email=BOB, password=BOB_PW)
    page = b.last.get_data(as_text=True)  # the page in between: who decides, and the way back to the app
    assert b.last.status_code == 403 and "You don't have access to Wiki" in page, page[:800]
    assert "Ask them to assign Wiki to you" in page and 'id="back-to-app"' in page
    assert cb.startswith(WIKI_CB + "?"), cb
    q = query(cb)
    assert q["error"] == "access_denied" and "code" not in q and q["state"] == "s-1"
    assert q["error_description"] == NOT_ASSIGNED and q["iss"] == "http://localhost/w/acme"
    # signed in to idhub all the same (the sign-in is not the app's door): an app open to everyone still works
    cb = browser_authorize(b, authorize_path(client_id="spa", redirect_uri=SPA_CB, challenge=pkce()[1]))
    assert "code" in query(cb)


def test_with_prompt_none_the_unassigned_user_goes_straight_back_to_the_app(app):
    b = Browser(app)
    b.login("acme", BOB, BOB_PW)
    r = b.get(authorize_path(challenge=pkce()[1], state="s-2", prompt="none"))
    assert r.status_code == 302 and r.headers["Location"].startswith(WIKI_CB + "?")  # no page may be shown
    q = query(r.headers["Location"])
    assert q["error"] == "access_denied" and q["state"] == "s-2" and "code" not in q


def test_assigned_user_gets_a_code(app, api):
    code, verifier = code_flow(Browser(app))
    assert redeem(api, code, verifier).status_code == 200


def test_an_app_without_assigned_groups_is_open_to_everyone_and_an_empty_list_to_nobody(settings):
    cfg = assigned_config(groups=())
    app = make_oidc_app(settings, cfg)
    cb = browser_authorize(Browser(app), authorize_path(challenge=pkce()[1]))  # alice, in engineering: nobody
    assert query(cb)["error"] == "access_denied"
    cb = browser_authorize(Browser(app), authorize_path(client_id="spa", redirect_uri=SPA_CB, challenge=pkce()[1]),
                           email=BOB, password=BOB_PW)
    assert "code" in query(cb)


def test_refresh_after_removal_from_the_group_is_invalid_grant_and_the_family_is_revoked(app, api, hub):
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    # removed behind every channel's back (a raw write): the door itself refuses
    with hub.db() as db:
        db.execute(delete(GroupMember).where(GroupMember.user_id == uid(hub, ALICE)))
        db.commit()
    r = refresh(api, tok["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    with hub.db() as db:  # back in the group: the grant is still over
        db.add(GroupMember(group_id=group_id(hub, "engineering"), user_id=uid(hub, ALICE)))
        db.commit()
    assert refresh(api, tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert userinfo(api, tok["access_token"]).status_code == 401
    assert [e.data["rule"] for e in events(hub, "oidc.refresh.denied")] == ["app_assignment"]


def test_userinfo_of_an_unassigned_user_is_401_invalid_token(app, api, hub):
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    assert userinfo(api, tok["access_token"]).status_code == 200
    with hub.db() as db:
        db.execute(delete(GroupMember).where(GroupMember.user_id == uid(hub, ALICE)))
        db.commit()
    r = userinfo(api, tok["access_token"])
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


# ---- config file, admin API ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, path, message", [
    (["x"], "workspaces[0].apps[1].assigned_groups[0]", "unknown group 'x' (declare it under groups)"),
    (["engineering", "engineering"], "workspaces[0].apps[1].assigned_groups[1]", "duplicate group 'engineering'"),
    ("engineering", "workspaces[0].apps[1].assigned_groups", "must be a list of group names"),
    ([3], "workspaces[0].apps[1].assigned_groups[0]", "must be a group name"),
    # groups are per workspace: the other workspace's group is simply unknown
    (["finance"], "workspaces[0].apps[1].assigned_groups[0]", "unknown group 'finance' (declare it under groups)"),
])
def test_config_errors_by_path(value, path, message):
    cfg = assigned_config()
    cfg["workspaces"][1]["groups"] = [{"name": "finance"}]
    cfg["workspaces"][0]["apps"][1]["assigned_groups"] = value
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert f"{path}: {message}" in exc.value.errors


def test_admin_api_reads_sets_and_validates_assigned_groups_by_field(app, hub):
    with app.app_context():
        token, _ = admin_service().tokens.create("ci", workspace_id=hub_ws(hub))
    c = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/api/v1/workspaces/acme/apps/wiki", headers=h).get_json()["assigned_groups"] == ["engineering"]
    assert c.get("/api/v1/workspaces/acme/apps/spa", headers=h).get_json()["assigned_groups"] is None
    for body, field in (({"assigned_groups": ["nope"]}, "assigned_groups[0]"),
                        ({"assigned_groups": "engineering"}, "assigned_groups"),
                        ({"assigned_groups": ["sales", "sales"]}, "assigned_groups[1]")):
        r = c.patch("/api/v1/workspaces/acme/apps/wiki", json=body, headers=h)
        assert r.status_code == 422 and r.get_json()["error"]["field"] == field, r.get_json()
    r = c.post("/api/v1/workspaces/acme/apps", headers=h, json={
        "slug": "crm", "name": "CRM", "protocol": "saml", "entity_id": "https://crm.test/sp",
        "acs_url": "https://crm.test/acs", "assigned_groups": ["ghost"]})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "assigned_groups[0]", r.get_json()
    r = c.post("/api/v1/workspaces/acme/apps", headers=h, json={
        "slug": "crm", "name": "CRM", "protocol": "saml", "entity_id": "https://crm.test/sp",
        "acs_url": "https://crm.test/acs", "assigned_groups": ["sales"]})
    assert r.status_code == 201 and r.get_json()["assigned_groups"] == ["sales"]
    r = c.patch("/api/v1/workspaces/acme/apps/crm", json={"assigned_groups": None}, headers=h)
    assert r.status_code == 200 and r.get_json()["assigned_groups"] is None
    r = c.patch("/api/v1/workspaces/acme/apps/crm", json={"name": "x"}, headers=h)  # SAML apps are editable now
    assert r.status_code == 200 and r.get_json()["name"] == "x" and r.get_json()["assigned_groups"] is None


def hub_ws(hub) -> str:
    with hub.db() as db:
        return db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))


def test_admin_api_removing_the_group_from_the_app_revokes_and_logs_the_app_out(app, api, hub):
    posted = capture_backchannel(hub)
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    with app.app_context():
        token, _ = admin_service().tokens.create("ci", workspace_id=hub_ws(hub))
    r = app.test_client().patch("/api/v1/workspaces/acme/apps/wiki", json={"assigned_groups": ["sales"]},
                                headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert refresh(api, tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert userinfo(api, tok["access_token"]).status_code == 401
    [logout] = posted
    claims = jwt.decode(logout, api.get("/w/acme/oauth2/jwks").get_json())
    assert claims["aud"] == "wiki" and claims["sub"] == uid(hub, ALICE) and "sid" in claims
    [ev] = events(hub, "app.access.revoked")
    assert ev.subject_id == uid(hub, ALICE) and ev.data["app"] == "wiki" and ev.data["why"] == "app_assignment"
    assert hub.sessions.list(uid(hub, ALICE)), "the idhub session stays"


def test_admin_api_removing_a_member_revokes(app, api, hub):
    posted = capture_backchannel(hub)
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    with app.app_context():
        token, _ = admin_service().tokens.create("ci", workspace_id=hub_ws(hub))
    r = app.test_client().delete(f"/api/v1/workspaces/acme/groups/{group_id(hub, 'engineering')}/members/"
                                 f"{uid(hub, ALICE)}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 204), r.get_data(as_text=True)
    assert refresh(api, tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert len(posted) == 1 and [e.data["why"] for e in events(hub, "app.access.revoked")] == ["group_membership"]


# ---- SCIM ------------------------------------------------------------------------------------------------------
def test_scim_patch_removing_a_member_refuses_their_refresh_at_once_and_posts_a_logout_token(app, api, hub):
    _beta(hub)
    install_tokens(hub)
    posted = capture_backchannel(hub)
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    # an app open to everyone, used in the same session: it is not logged out
    code2, verifier2 = code_flow(Browser(app))
    assert redeem(api, code2, verifier2).status_code == 200
    scim = Scim(app)
    gid, alice = group_id(hub, "engineering"), uid(hub, ALICE)
    r = scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{alice}"]'}])
    assert r.status_code in (200, 204), r.get_data(as_text=True)
    r = refresh(api, tok["refresh_token"])
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    assert len(posted) == 2  # both of alice's sessions that used the wiki; nothing else
    for token in posted:
        claims = jwt.decode(token, api.get("/w/acme/oauth2/jwks").get_json())
        assert claims["aud"] == "wiki" and claims["sub"] == alice
    assert {e.data["why"] for e in events(hub, "app.access.revoked")} == {"scim"}
    # a PUT that puts her back, then a PUT without her: the same
    r = scim.put(f"/Groups/{gid}", {"schemas": [GROUP_SCHEMA], "displayName": "engineering",
                                    "members": [{"value": alice}]})
    assert r.status_code == 200
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    r = scim.put(f"/Groups/{gid}", {"schemas": [GROUP_SCHEMA], "displayName": "engineering", "members": []})
    assert r.status_code == 200
    assert refresh(api, tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert len(events(hub, "app.access.revoked")) == 2


def _beta(hub) -> None:
    """scim_helpers' tokens need a "beta" workspace: created here when missing."""
    with hub.db() as db:
        if db.scalar(select(Workspace.id).where(Workspace.slug == "beta")) is None:
            db.add(Workspace(slug="beta", name="Beta", plan="enterprise", domains=[], policies={}))
            db.commit()


# ---- the config file --------------------------------------------------------------------------------------------
def test_config_file_removing_the_member_revokes(app, api, hub):
    from idp.configfile import apply_config

    posted = capture_backchannel(hub)
    code, verifier = code_flow(Browser(app))
    tok = redeem(api, code, verifier).get_json()
    cfg = assigned_config()
    cfg["workspaces"][0]["users"][0]["groups"] = ["sales"]
    apply_config(hub, validate(copy.deepcopy(cfg)))
    assert refresh(api, tok["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert len(posted) == 1 and [e.data["why"] for e in events(hub, "app.access.revoked")] == ["config_file"]


# ---- SAML: SP-initiated, IdP-initiated, the launcher ------------------------------------------------------------
def saml_env(tmp_path, **entry):
    from tests.conftest import make_app, make_settings
    from tests.integration.test_saml_idp import idp_metadata, register, sp_client, sp_metadata

    app = make_app(make_settings(tmp_path))
    client = sp_client(tmp_path, idp_metadata(app), allow_unsolicited=True)
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client),
                    "assigned_groups": ["engineering"], **entry}])
    return app, client


def test_saml_sp_initiated_sso_of_an_unassigned_user_is_request_denied_validated_by_pysaml2(tmp_path):
    import base64

    from saml2 import BINDING_HTTP_POST
    from saml2.response import StatusRequestDenied

    from tests.integration.test_saml_idp import ACS, post_form, redirect_request, sign_in

    app, client = saml_env(tmp_path)
    b = Browser(app)
    reqid, url = redirect_request(client)
    r = b.get(url)
    landing = sign_in(b, r.headers["Location"], email=BOB, password=BOB_PW)
    action, saml_response, relay = post_form(b.get(landing))
    assert action == ACS and relay == "rs-1"
    xml = base64.b64decode(saml_response)
    assert b"urn:oasis:names:tc:SAML:2.0:status:RequestDenied" in xml and b"Assertion" not in xml
    assert NOT_ASSIGNED.encode() in xml.replace(b"&#x27;", b"'").replace(b"&apos;", b"'")
    with pytest.raises(StatusRequestDenied):
        client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    # alice (engineering) gets her assertion
    a = Browser(app)
    reqid, url = redirect_request(client)
    landing = sign_in(a, a.get(url).headers["Location"], email=ALICE, password=ALICE_PW)
    _action, saml_response, _relay = post_form(a.get(landing))
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE


def test_saml_launcher_neither_lists_nor_names_an_unassigned_app_and_the_launch_is_refused(tmp_path):
    app, _client = saml_env(tmp_path, idp_initiated=True)
    bob = Browser(app)
    assert bob.login("acme", BOB, BOB_PW).status_code == 302
    page = bob.get("/w/acme/apps")
    assert page.status_code == 200 and "Payroll" not in page.get_data(as_text=True)
    r = bob.post("/w/acme/apps/payroll/launch", {"csrf_token": bob.csrf()})
    text = r.get_data(as_text=True)
    assert r.status_code == 403 and "SAMLResponse" not in text and "assign it to you" in text
    alice = Browser(app)
    assert alice.login("acme", ALICE, ALICE_PW).status_code == 302
    assert "Payroll" in alice.get("/w/acme/apps").get_data(as_text=True)
