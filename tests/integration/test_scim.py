"""SCIM 2.0 server: scim2-tester, Okta and Azure AD replays, bad input, deprovisioning, tokens, ETags, paging."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from config.settings import SettingsError, load_settings
from idp.audit import AuditEvent
from idp.models import GroupMember, User, Workspace
from scim.config import apply_scim_tokens, hash_token
from scim.models import ScimToken
from scim.service import ScimRequest, ScimService
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, make_app
from tests.integration.scim_helpers import (
    BASE,
    BULK,
    ENTERPRISE,
    GROUP_SCHEMA,
    OTHER_TOKEN,
    RO_TOKEN,
    SCIM_JSON,
    TOKEN,
    USER_SCHEMA,
    Scim,
    assert_error,
    check_case_exact_substrings,
    check_control_characters,
    check_control_characters_in_bodies,
    check_rfc_filters,
    install_tokens,
    scim_config,
)


@pytest.fixture
def app(settings):
    app = make_app(settings, scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    return app


@pytest.fixture
def scim(app):
    return Scim(app)


def db_user(hub, email: str) -> User | None:
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        return db.scalar(select(User).where(User.workspace_id == ws.id, User.email_normalized == email.casefold()))


def user_count(hub) -> int:
    with hub.db() as db:
        return db.scalar(select(func.count()).select_from(User))


def events(hub, prefix: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type.startswith(prefix)).order_by(AuditEvent.seq)))


# ---- scim2-tester ---------------------------------------------------------------------------------------------
def test_scim2_tester_reports_no_failure(app, monkeypatch):
    from scim2_client.engines.wsgi import WSGISCIMClient
    from scim2_tester import Status, check_server, filling
    from scim2_tester.checkers import patch_add, patch_replace

    original = filling.generate_random_value

    def generate(context, path, *a, **kw):
        # The tester's own values everywhere — its userNames are random UUIDs, not e-mail addresses, and users
        # without emails have none — except passwords, which must follow the hub's password rules (a random
        # UUID has no uppercase letter or symbol): the same value with "Aa1!" in front.
        value = original(context, path, *a, **kw)
        if str(path).endswith("password") and isinstance(value, str):
            return "Aa1!" + value
        return value

    for module in (filling, patch_add, patch_replace):
        monkeypatch.setattr(module, "generate_random_value", generate)
    client = WSGISCIMClient(app, base_url="http://localhost/w/acme/scim/v2",
                            headers={"Authorization": f"Bearer {TOKEN}"})
    results = check_server(client)
    bad = [(r.title, r.resource_type, r.reason) for r in results
           if r.status not in (Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE, Status.SKIPPED)]
    assert not bad, bad
    assert sum(r.status == Status.SUCCESS for r in results) > 100


# ---- Okta ----------------------------------------------------------------------------------------------------
def test_okta_provisioning_sequence(scim, hub):
    # 1. Okta's connection test
    r = scim.get("/Users", query={"startIndex": "1", "count": "2"})
    assert r.status_code == 200 and r.mimetype == SCIM_JSON
    body = r.get_json()
    assert body["totalResults"] == 2 and body["itemsPerPage"] == 2 and body["startIndex"] == 1
    # 2. does the user exist?
    r = scim.get("/Users", query={"filter": 'userName eq "dana@acme.test"', "startIndex": "1", "count": "100"})
    assert r.get_json()["totalResults"] == 0 and r.get_json()["Resources"] == []
    # 3. create (Okta's documented body)
    r = scim.post("/Users", {
        "schemas": [USER_SCHEMA],
        "userName": "dana@acme.test",
        "name": {"givenName": "Dana", "familyName": "Okta"},
        "emails": [{"primary": True, "value": "dana@acme.test", "type": "work"}],
        "displayName": "Dana Okta",
        "locale": "en-US",
        "externalId": "00u1abcd",
        "groups": [],
        "password": "Okta-Initial-Pass1!",
        "active": True,
    })
    assert r.status_code == 201, r.get_data(as_text=True)
    user = r.get_json()
    assert r.headers["Location"] == user["meta"]["location"] == f"http://localhost{BASE}/Users/{user['id']}"
    assert "password" not in user
    uid = user["id"]
    # 4. Okta looks the user up again by filter and by id
    r = scim.get("/Users", query={"filter": 'userName eq "DANA@acme.test"'})
    assert [u["id"] for u in r.get_json()["Resources"]] == [uid]
    assert scim.get(f"/Users/{uid}").get_json()["name"]["givenName"] == "Dana"
    # 5. profile update: PUT of the whole user (Okta sends id, groups and meta back)
    r = scim.put(f"/Users/{uid}", {
        "schemas": [USER_SCHEMA], "id": uid, "userName": "dana@acme.test",
        "name": {"givenName": "Dana", "familyName": "Renamed"},
        "emails": [{"primary": True, "value": "dana@acme.test", "type": "work"}],
        "displayName": "Dana Renamed", "locale": "en-US", "externalId": "00u1abcd",
        "groups": [], "active": True, "meta": {"resourceType": "User"},
    })
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["name"]["familyName"] == "Renamed"
    assert db_user(hub, "dana@acme.test").family_name == "Renamed"
    # 6. deprovision: PUT with active false (Okta also uses PATCH replace active)
    r = scim.patch(f"/Users/{uid}", [{"op": "replace", "value": {"active": False}}])
    assert r.status_code == 200 and r.get_json()["active"] is False
    assert db_user(hub, "dana@acme.test").active is False
    # 7. groups: push a group, then its members
    r = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "Okta Engineers", "members": []})
    assert r.status_code == 201
    gid = r.get_json()["id"]
    r = scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": uid, "display": "dana"}]}])
    assert r.status_code == 200 and [m["value"] for m in r.get_json()["members"]] == [uid]
    r = scim.put(f"/Groups/{gid}", {"schemas": [GROUP_SCHEMA], "id": gid, "displayName": "Okta Engineering",
                                    "members": []})
    assert r.status_code == 200 and "members" not in r.get_json()
    assert scim.delete(f"/Groups/{gid}").status_code == 204
    assert {e.type for e in events(hub, "scim.")} >= {"scim.user.created", "scim.user.updated",
                                                       "scim.user.deactivated", "scim.group.created",
                                                       "scim.group.updated", "scim.group.deleted"}


# ---- Azure AD ------------------------------------------------------------------------------------------------
def test_azure_ad_provisioning_sequence(app, hub):
    scim = Scim(app)
    # 1. Azure AD queries by a random userName first, then by the real one
    r = scim.get("/Users", query={"filter": 'userName eq "ryan3@acme.test"'})
    assert r.status_code == 200 and r.get_json()["totalResults"] == 0
    # 2. create (Azure AD's documented body: enterprise extension, externalId, active)
    r = scim.post("/Users", {
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1@acme.test",
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": "Test_User_fd0ea19b@acme.test"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [],
        ENTERPRISE: {"employeeNumber": "E1", "department": "Sales"},
    })
    assert r.status_code == 201, r.get_data(as_text=True)
    uid = r.get_json()["id"]
    # 3. by externalId, and active is in the filtered result
    r = scim.get("/Users", query={"filter": 'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"'})
    found = r.get_json()["Resources"]
    assert [u["id"] for u in found] == [uid] and found[0]["active"] is True
    # 4. PATCH with capitalised ops, string booleans, value paths that create the element
    r = scim.patch(f"/Users/{uid}", [
        {"op": "Replace", "path": "displayName", "value": "Ryan Leenay"},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "ryan@acme.test"},
        {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0100"},
        {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": "Marketing"},
        {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "manager-id-1"},
        {"op": "Replace", "path": "name.givenName", "value": "Ryan"},
    ])
    assert r.status_code == 200, r.get_data(as_text=True)
    u = r.get_json()
    assert u["displayName"] == "Ryan Leenay" and u["name"]["givenName"] == "Ryan"
    assert u["emails"] == [{"primary": True, "type": "work", "value": "ryan@acme.test"}]
    assert u["phoneNumbers"] == [{"type": "mobile", "value": "+1 555 0100"}]
    assert u[ENTERPRISE] == {"employeeNumber": "E1", "department": "Marketing", "manager": {"value": "manager-id-1"}}
    r = scim.get("/Users", query={"filter": f'{ENTERPRISE}:manager.value eq "manager-id-1"'})
    assert r.get_json()["totalResults"] == 1
    # 5. disable with the string "False"
    r = scim.patch(f"/Users/{uid}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert r.status_code == 200 and r.get_json()["active"] is False
    r = scim.get("/Users", query={"filter": 'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"'})
    assert r.get_json()["Resources"][0]["active"] is False
    # 6. groups: create, filter with excludedAttributes=members, add and remove members Azure-style
    r = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                              "displayName": "displayName", "meta": {"resourceType": "Group"}})
    gid = r.get_json()["id"]
    r = scim.get("/Groups", query={"filter": 'displayName eq "displayName"', "excludedAttributes": "members"})
    assert [g["id"] for g in r.get_json()["Resources"]] == [gid]
    r = scim.patch(f"/Groups/{gid}", [{"op": "Add", "path": "members", "value": [{"value": uid}]}])
    assert r.status_code == 200
    r = scim.get("/Groups", query={"filter": f'id eq "{gid}" and members[value eq "{uid}"]',
                                   "excludedAttributes": "members"})
    assert r.get_json()["totalResults"] == 1
    r = scim.patch(f"/Groups/{gid}", [{"op": "Remove", "path": "members", "value": [{"value": uid}]}])
    assert r.status_code == 200 and "members" not in r.get_json()
    r = scim.patch(f"/Groups/{gid}", [{"op": "Replace", "path": "displayName", "value": "1879db59-3bdf-4490"}])
    assert r.get_json()["displayName"] == "1879db59-3bdf-4490"
    # 7. delete
    assert scim.delete(f"/Users/{uid}").status_code == 204
    assert_error(scim.get(f"/Users/{uid}"), 404)


# ---- filters, paging, sorting, projection ---------------------------------------------------------------------
def test_filters_paging_sorting_and_attributes(scim, hub):
    for i in range(5):
        scim.create_user(f"user{i}@acme.test", displayName=f"User {4 - i}", title="Engineer" if i % 2 else "Sales",
                         emails=[{"value": f"u{i}@work.test", "type": "work"}])
    r = scim.get("/Users", query={"filter": 'title eq "engineer" and emails[type eq "work" and value sw "u1"]'})
    assert [u["userName"] for u in r.get_json()["Resources"]] == ["user1@acme.test"]
    r = scim.get("/Users", query={"filter": 'not (title pr) or userName eq "user0@acme.test" and title eq "Sales"'})
    names = {u["userName"] for u in r.get_json()["Resources"]}
    assert names == {ALICE, BOB, "user0@acme.test"}  # "and" binds tighter than "or"
    # paging: totalResults is the whole match, startIndex is 1-based, count bounded
    r = scim.get("/Users", query={"filter": 'userName sw "user"', "sortBy": "userName", "startIndex": "2",
                                  "count": "2"})
    body = r.get_json()
    assert body["totalResults"] == 5 and body["startIndex"] == 2 and body["itemsPerPage"] == 2
    assert [u["userName"] for u in body["Resources"]] == ["user1@acme.test", "user2@acme.test"]
    r = scim.get("/Users", query={"sortBy": "displayName", "sortOrder": "descending", "filter": 'userName sw "user"'})
    assert [u["displayName"] for u in r.get_json()["Resources"]] == [f"User {i}" for i in (4, 3, 2, 1, 0)]
    for start, count in (("-5", "-3"), ("0", "0"), ("99999999999999999999", "5"), ("1", "100000000")):
        r = scim.get("/Users", query={"startIndex": start, "count": count})
        assert r.status_code == 200, (start, count, r.get_data(as_text=True))
        assert r.get_json()["totalResults"] == 7
        assert len(r.get_json()["Resources"]) <= 200
    assert scim.get("/Users", query={"count": "-3"}).get_json()["Resources"] == []
    assert_error(scim.get("/Users", query={"startIndex": "abc"}), 400, "invalidValue")
    assert_error(scim.get("/Users", query={"count": "1e9"}), 400, "invalidValue")
    assert_error(scim.get("/Users", query={"sortBy": "password"}), 400, "invalidValue")
    # attributes / excludedAttributes
    r = scim.get("/Users", query={"attributes": "userName,emails.value", "filter": 'userName eq "user3@acme.test"'})
    u = r.get_json()["Resources"][0]
    assert set(u) == {"schemas", "id", "userName", "emails"} and u["emails"] == [{"value": "u3@work.test"}]
    r = scim.get("/Users", query={"excludedAttributes": "emails,meta,id", "filter": 'userName eq "user3@acme.test"'})
    u = r.get_json()["Resources"][0]
    assert "emails" not in u and "meta" not in u and "id" in u


# ---- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    b"{not json", b"[1, 2]", b'"a string"', b"\xff\xfe", b"[" * 100000 + b"]" * 100000,
])
def test_malformed_json_is_invalid_syntax(scim, hub, raw):
    before = user_count(hub)
    assert_error(scim.post("/Users", raw=raw), 400, "invalidSyntax")
    assert user_count(hub) == before


@pytest.mark.parametrize("schemas", [None, [], ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                     [USER_SCHEMA, "urn:example:evil"], "urn:ietf:params:scim:schemas:core:2.0:User"])
def test_wrong_schemas_refused(scim, hub, schemas):
    before = user_count(hub)
    body = {"userName": "eve@acme.test"}
    if schemas is not None:
        body["schemas"] = schemas
    assert_error(scim.post("/Users", body), 400, "invalidSyntax")
    assert user_count(hub) == before


@pytest.mark.parametrize("flt", [
    'userName eq "x" or 1=1',
    'userName eq "x" or "1"="1"',
    'userName eq "x"; DROP TABLE users; --',
    "userName eq 'x' or 'a'='a'",
    'foo eq "x"',
    'userName.foo eq "x"',
    'password eq "S3cure-Example!"',
    'password pr',
    'urn:example:evil:User:userName eq "x"',
    'users.email_normalized eq "x"',
    'userName regex ".*"',
    'userName eq',
    '(userName eq "x"',
    'emails[type eq "work"',
    'emails[value[type eq "x"]]',
    "(" * 20 + 'userName eq "x"' + ")" * 20,
    " or ".join(f'userName eq "u{i}"' for i in range(60)),
    'userName eq "' + "a" * 3000 + '"',
    'active gt true',
    'meta.created gt "yesterday"',
])
def test_bad_filters_are_invalid_filter(scim, flt):
    body = assert_error(scim.get("/Users", query={"filter": flt}), 400, "invalidFilter")
    assert "SELECT" not in body["detail"].upper()


def test_like_wildcards_are_literal(scim):
    scim.create_user("under_score@acme.test", title="100% sure")
    scim.create_user("underXscore@acme.test", title="100 percent")
    r = scim.get("/Users", query={"filter": 'userName co "r_s"'})
    assert [u["userName"] for u in r.get_json()["Resources"]] == ["under_score@acme.test"]
    r = scim.get("/Users", query={"filter": 'title co "%"'})
    assert [u["title"] for u in r.get_json()["Resources"]] == ["100% sure"]
    r = scim.get("/Users", query={"filter": 'userName sw "%"'})
    assert r.get_json()["totalResults"] == 0
    r = scim.get("/Users", query={"filter": 'userName eq "x" or userName co "\\""'})
    assert r.status_code == 200 and r.get_json()["totalResults"] == 0


def test_case_exact_substrings(scim):
    check_case_exact_substrings(scim)  # SQLite's LIKE ignores case: the translation must not


def test_rfc_filters_on_groups_members_complex_attributes_and_meta(scim):
    check_rfc_filters(scim, "http://localhost" + BASE)


def test_control_characters_are_scim_errors(scim):
    check_control_characters(scim)  # on PostgreSQL too: test_scim_postgres.py
    check_control_characters_in_bodies(scim)


def test_filter_never_crosses_workspaces(app, scim):
    # ALICE exists in both "acme" and "other"; beta's token sees only beta
    r = scim.get("/Users", query={"filter": f'userName eq "{ALICE}" or userName pr'})
    assert all(u["userName"] != "carol@beta.test" for u in r.get_json()["Resources"])
    assert r.get_json()["totalResults"] == 2
    beta = Scim(app, OTHER_TOKEN, "/w/beta/scim/v2")
    r = beta.get("/Users", query={"filter": 'userName pr or not (userName pr)'})
    assert [u["userName"] for u in r.get_json()["Resources"]] == ["carol@beta.test"]


def test_oversized_body_is_413(scim, hub):
    before = user_count(hub)
    big = {"schemas": [USER_SCHEMA], "userName": "big@acme.test", "title": "x" * (1024 * 1024 + 10)}
    assert_error(scim.post("/Users", big), 413)
    # between the app's 256 KiB and SCIM's 1 MiB: accepted by size, refused by the attribute's length
    mid = {"schemas": [USER_SCHEMA], "userName": "mid@acme.test", "title": "x" * (300 * 1024)}
    assert_error(scim.post("/Users", mid), 400, "invalidValue")
    assert user_count(hub) == before


def test_the_body_limit_is_configured(tmp_path):
    """IDHUB_SCIM_MAX_BODY (bytes) bounds every SCIM body (web layer, service and /Bulk) and is advertised."""
    env = {"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_DATABASE_URL": f"sqlite:///{tmp_path}/idhub.db",
           "IDHUB_BASE_URL": "http://localhost", "IDHUB_OUTBOX_DIR": str(tmp_path / "outbox"),
           "IDHUB_COOKIE_SECURE": "false", "IDHUB_LOG_LEVEL": "WARNING", "IDHUB_SCIM_MAX_BODY": "8192"}
    settings = load_settings(env)
    assert settings.scim_max_body == 8192
    app = make_app(settings, scim_config(BASE_CONFIG))
    hub = app.extensions["idhub"]
    install_tokens(hub)
    scim = Scim(app)

    def body(size: int, user_name: str) -> bytes:  # a user of exactly ``size`` bytes (unknown attributes are ignored)
        doc = {"schemas": [USER_SCHEMA], "userName": user_name, "padding": ""}
        doc["padding"] = "p" * (size - len(json.dumps(doc)))
        raw = json.dumps(doc).encode()
        assert len(raw) == size
        return raw

    assert scim.post("/Users", raw=body(8192, "fits@acme.test")).status_code == 201
    detail = assert_error(scim.post("/Users", raw=body(8193, "over@acme.test")), 413)["detail"]
    assert "8 KiB" in detail
    assert scim.get("/ServiceProviderConfig").get_json()["bulk"]["maxPayloadSize"] == 8192
    uid = db_user(hub, "fits@acme.test").id
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "replace", "path": "title", "value": "t" * 1000}] * 9}
    assert_error(scim.request("PATCH", f"/Users/{uid}", raw=json.dumps(patch).encode()), 413)
    ops = [{"method": "POST", "path": "/Users", "bulkId": f"b{i}",
            "data": {"schemas": [USER_SCHEMA], "userName": f"b{i}@acme.test", "title": "t" * 900}} for i in range(9)]
    assert_error(scim.post("/Bulk", {"schemas": [BULK], "Operations": ops}), 413)
    # without a Content-Length (chunked): the stream is cut at the limit
    r = scim.client.open(f"{BASE}/Users", method="POST", input_stream=io.BytesIO(body(9000, "chunk@acme.test")),
                         headers=scim.headers({"Content-Type": SCIM_JSON}),
                         environ_overrides={"wsgi.input_terminated": True})
    assert_error(r, 413)
    assert db_user(hub, "over@acme.test") is None and db_user(hub, "chunk@acme.test") is None
    assert db_user(hub, "b0@acme.test") is None
    # the service itself enforces its limit (whatever calls it)
    svc = ScimService(hub, max_body=4096)
    resp = svc.handle("acme", ScimRequest("POST", "/Users", headers={"authorization": f"Bearer {TOKEN}",
                                                                     "content-type": SCIM_JSON},
                                          body=body(4097, "direct@acme.test")))
    assert resp.status == 413 and resp.body["detail"] == "The body is larger than 4 KiB."
    assert svc.handle("acme", ScimRequest("GET", "/ServiceProviderConfig", headers={
        "authorization": f"Bearer {TOKEN}"})).body["bulk"]["maxPayloadSize"] == 4096
    with pytest.raises(ValueError):
        ScimService(hub, max_body=0)


@pytest.mark.parametrize("value", ["100", "4095", "67108865", "1 MiB", "1e6", "-8192", "lots"])
def test_the_body_limit_setting_is_bounded(value):
    with pytest.raises(SettingsError, match="IDHUB_SCIM_MAX_BODY"):
        load_settings({"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_SCIM_MAX_BODY": value})
    assert load_settings({"IDHUB_SECRET_KEY": "k" * 40}).scim_max_body == 1024 * 1024
    assert load_settings({"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_SCIM_MAX_BODY": "67108864"}).scim_max_body == 64 << 20


@pytest.mark.parametrize("op", [
    {"op": "replace", "path": "id", "value": "0000"},
    {"op": "replace", "path": "meta.created", "value": "2000-01-01T00:00:00Z"},
    {"op": "replace", "path": "meta", "value": {"version": "x"}},
    {"op": "add", "path": "groups", "value": [{"value": "g"}]},
    {"op": "replace", "value": {"id": "0000"}},
])
def test_patch_on_read_only_attributes_is_mutability(scim, hub, op):
    u = scim.create_user("ro@acme.test")
    before = scim.get(f"/Users/{u['id']}").get_json()
    assert_error(scim.patch(f"/Users/{u['id']}", [op]), 400, "mutability")
    assert scim.get(f"/Users/{u['id']}").get_json() == before


def test_put_with_another_id_is_mutability(scim):
    u = scim.create_user("put@acme.test")
    assert_error(scim.put(f"/Users/{u['id']}", {"schemas": [USER_SCHEMA], "id": "other", "userName": "put@acme.test"}),
                 400, "mutability")


@pytest.mark.parametrize("ops", [
    [],
    [{"op": "move", "path": "title", "value": "x"}],
    [{"op": "remove"}],
    [{"op": "replace", "path": "nosuch", "value": "x"}],
    [{"op": "replace", "path": 'emails[type eq "work"', "value": "x"}],
    [{"op": "replace", "path": "active", "value": "maybe"}],
    [{"op": "remove", "path": "userName"}],
    [{"op": "replace", "path": "title", "value": "ok"},
     {"op": "replace", "path": "userName", "value": "not\u200bmail"}],  # a zero-width space: a hostile identifier
])
def test_bad_patches_change_nothing(scim, ops):
    u = scim.create_user("patch@acme.test", title="before")
    before = scim.get(f"/Users/{u['id']}").get_json()
    r = scim.patch(f"/Users/{u['id']}", ops)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert_error(r, 400)
    assert scim.get(f"/Users/{u['id']}").get_json() == before


def test_errors_are_scim_json_never_html(scim, app):
    assert_error(scim.get("/Nope"), 404)
    assert_error(scim.get("/Users/does-not-exist"), 404)
    assert_error(scim.request("DELETE", "/Users"), 405)
    assert_error(scim.request("PUT", "/ServiceProviderConfig", {}), 405)
    assert_error(scim.post("/Users", raw=b"userName=x", headers={"Content-Type": "text/plain"}), 415)
    assert_error(scim.post("/Bulk", {"schemas": [], "Operations": []}), 400, "invalidSyntax")  # test_scim_bulk.py
    assert_error(Scim(app, TOKEN, "/w/nosuch/scim/v2").get("/Users"), 404)


# ---- authentication -------------------------------------------------------------------------------------------
def test_tokens(app, hub, scim):
    anon = app.test_client()
    assert_error(anon.get(f"{BASE}/Users"), 401)
    assert anon.get(f"{BASE}/Users").headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(anon.get(f"{BASE}/Users", headers={"Authorization": "Basic " + TOKEN}), 401)
    assert_error(anon.get(f"{BASE}/Users", headers={"Authorization": "Bearer wrong-token"}), 401)
    # no token in the URL, even next to a valid header
    assert_error(anon.get(f"{BASE}/Users?access_token={TOKEN}"), 401)
    assert_error(scim.get("/Users", query={"access_token": TOKEN}), 401)
    # another workspace's token: 404, as if the workspace did not exist
    assert_error(Scim(app, OTHER_TOKEN).get("/Users"), 404)
    assert_error(Scim(app, TOKEN, "/w/beta/scim/v2").get("/Users"), 404)
    # read-only: reads yes, writes 403 and nothing changes
    ro = Scim(app, RO_TOKEN)
    assert ro.get("/Users").status_code == 200
    assert ro.post("/Users/.search", {"filter": "userName pr"}).status_code == 200
    before = user_count(hub)
    assert_error(ro.post("/Users", {"schemas": [USER_SCHEMA], "userName": "ro@acme.test"}), 403)
    alice = db_user(hub, ALICE)
    assert_error(ro.patch(f"/Users/{alice.id}", [{"op": "replace", "path": "active", "value": False}]), 403)
    assert_error(ro.delete(f"/Users/{alice.id}"), 403)
    assert user_count(hub) == before and db_user(hub, ALICE).active
    # stored hashed only
    with hub.db() as db:
        rows = list(db.scalars(select(ScimToken)))
    assert {r.token_hash for r in rows} >= {hash_token(TOKEN), hash_token(RO_TOKEN)}
    assert all(TOKEN not in (r.token_hash, r.name) for r in rows)
    # revocation: a token left out of the config stops working at once
    with hub.db() as db:
        acme = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        apply_scim_tokens(db, acme, [{"name": "auditor", "token": RO_TOKEN, "read_only": True}])
        db.commit()
    assert_error(scim.get("/Users"), 401)
    assert ro.get("/Users").status_code == 200


def test_non_enterprise_plan_is_403(app, hub, scim):
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        ws.plan = "pro"
        db.commit()
    assert_error(scim.get("/Users"), 403)


def test_token_env_and_validation(app, hub, monkeypatch):
    from scim.config import validate_scim_tokens

    monkeypatch.setenv("IDHUB_TEST_SCIM_TOKEN", "env-token-0123456789abcdefghijklmnopqrstu")
    with hub.db() as db:
        acme = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        apply_scim_tokens(db, acme, [{"name": "okta", "token": TOKEN},
                                     {"name": "env", "token_env": "IDHUB_TEST_SCIM_TOKEN"}])
        db.commit()
    assert Scim(app, "env-token-0123456789abcdefghijklmnopqrstu").get("/Users").status_code == 200
    errors = validate_scim_tokens([{"name": "a", "token": "short"}, {"name": "a", "token_env": "IDHUB_NOPE_X"},
                                   {"name": "b", "token": TOKEN, "read_only": "yes"}], "workspaces[0].scim_tokens")
    assert any("at least 32" in e for e in errors)
    assert any(".name: duplicate" in e for e in errors)
    assert any("IDHUB_NOPE_X" in e for e in errors)
    assert any("read_only" in e for e in errors)
    with hub.db() as db:
        beta = db.scalar(select(Workspace).where(Workspace.slug == "beta"))
        with pytest.raises(ValueError, match="already used"):
            apply_scim_tokens(db, beta, [{"name": "azure", "token": TOKEN}])


# ---- users: uniqueness, mass assignment, passwords, ETags -----------------------------------------------------
@pytest.mark.parametrize("name", ["ALICE@acme.test", "alice@ACME.TEST", " alice@acme.test ",
                                  "\uff41lice@acme.test"])  # fullwidth "a": NFKC folds it
def test_user_name_unique_under_case_and_nfkc(scim, hub, name):
    before = user_count(hub)
    assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": name}), 409, "uniqueness")
    assert user_count(hub) == before
    u = scim.create_user("frank@acme.test")
    assert_error(scim.patch(f"/Users/{u['id']}", [{"op": "replace", "path": "userName", "value": name}]),
                 409, "uniqueness")
    assert db_user(hub, "frank@acme.test") is not None


def test_no_mass_assignment_and_password_write_only(scim, hub, browser_factory):
    r = scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "gina@acme.test", "role": "admin",
                             "roles": [{"value": "admin", "primary": True}], "password": "Tulip-Strong-Pass9!",
                             "password_hash": "$argon2id$fake", "is_admin": True})
    assert r.status_code == 201
    u = r.get_json()
    assert "password" not in json.dumps(u).lower().replace("password_", "")
    row = db_user(hub, "gina@acme.test")
    assert row.role == "member" and row.password_hash != "$argon2id$fake"
    assert hub.hasher.verify(row.password_hash, "Tulip-Strong-Pass9!")
    r = scim.get("/Users", query={"filter": 'userName eq "gina@acme.test"', "attributes": "password"})
    assert "password" not in r.get_json()["Resources"][0]
    assert_error(scim.patch(f"/Users/{u['id']}", [{"op": "replace", "path": "password", "value": "weak"}]),
                 400, "invalidValue")
    assert hub.hasher.verify(db_user(hub, "gina@acme.test").password_hash, "Tulip-Strong-Pass9!")
    r = scim.patch(f"/Users/{u['id']}", [{"op": "replace", "path": "password", "value": "Orchid-New-Pass-42!"}])
    assert r.status_code == 200 and "password" not in r.get_json()
    b = browser_factory()
    b.login("acme", "gina@acme.test", "Orchid-New-Pass-42!")
    assert b.security().status_code == 200
    ev = [e for e in events(hub, "scim.user.") if e.subject_id == u["id"]]
    assert ev[0].type == "scim.user.created" and ev[0].actor_email == "scim:okta"
    assert "password" in ev[-1].data["changed"]
    assert "Tulip" not in json.dumps([e.data for e in ev])


def test_etags(scim, hub):
    u = scim.create_user("etag@acme.test", title="one")
    uid, v1 = u["id"], u["meta"]["version"]
    r = scim.get(f"/Users/{uid}")
    assert r.headers["ETag"] == v1
    assert scim.get(f"/Users/{uid}", headers={"If-None-Match": v1}).status_code == 304
    r = scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "title", "value": "two"}], headers={"If-Match": v1})
    assert r.status_code == 200
    v2 = r.get_json()["meta"]["version"]
    assert v2 != v1
    for method, kwargs in (("PATCH", {"operations": [{"op": "replace", "path": "title", "value": "three"}]}),
                           ("PUT", {"body": {"schemas": [USER_SCHEMA], "userName": "etag@acme.test"}}),
                           ("DELETE", {})):
        if method == "PATCH":
            r = scim.patch(f"/Users/{uid}", kwargs["operations"], headers={"If-Match": v1})
        else:
            r = scim.request(method, f"/Users/{uid}", kwargs.get("body"), headers={"If-Match": v1})
        assert_error(r, 412)
    now = scim.get(f"/Users/{uid}").get_json()
    assert now["title"] == "two" and now["meta"]["version"] == v2
    assert scim.get(f"/Users/{uid}", headers={"If-None-Match": v1}).status_code == 200
    assert scim.delete(f"/Users/{uid}", headers={"If-Match": v2}).status_code == 204


def test_group_members_must_be_users_of_the_workspace(app, scim, hub):
    beta = Scim(app, OTHER_TOKEN, "/w/beta/scim/v2")
    carol = beta.get("/Users").get_json()["Resources"][0]["id"]
    r = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "mixed", "members": [{"value": carol}]})
    assert_error(r, 400, "invalidValue")
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(GroupMember).where(GroupMember.user_id == carol)) == 0
    assert_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "engineering"}), 409, "uniqueness")


# ---- deprovisioning -------------------------------------------------------------------------------------------
def test_deprovisioning_ends_sessions_and_blocks_sign_in(app, scim, hub, browser_factory):
    b = browser_factory()
    b.login("acme", BOB, BOB_PW)
    assert b.security().status_code == 200
    other = browser_factory(ip="10.0.0.2")
    other.login("acme", BOB, BOB_PW)
    bob = db_user(hub, BOB)
    ended: list = []
    hub.sessions.end_listeners.append(lambda ids, reason: ended.append((len(ids), reason)))
    r = scim.patch(f"/Users/{bob.id}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert r.status_code == 200
    assert ended == [(2, "deprovisioned")]
    for browser in (b, other):
        r = browser.security()
        assert r.status_code == 302 and "/w/acme/login" in r.headers["Location"]
    # cannot sign in while inactive
    b2 = browser_factory()
    b2.login("acme", BOB, BOB_PW)
    assert b2.security().status_code == 302
    ev = [e for e in events(hub, "scim.user.deactivated") if e.subject_id == bob.id]
    assert ev and ev[0].data["sessions_ended"] == 2
    # reactivation restores sign-in, not the old sessions
    r = scim.patch(f"/Users/{bob.id}", [{"op": "replace", "path": "active", "value": True}])
    assert r.status_code == 200
    assert b.security().status_code == 302
    b3 = browser_factory()
    b3.login("acme", BOB, BOB_PW)
    assert b3.security().status_code == 200


def test_delete_ends_sessions(app, scim, hub, browser_factory):
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    assert b.security().status_code == 200
    alice = db_user(hub, ALICE)
    assert scim.delete(f"/Users/{alice.id}").status_code == 204
    assert b.security().status_code == 302
    assert db_user(hub, ALICE) is None
    assert [e.type for e in events(hub, "scim.user.deleted")] == ["scim.user.deleted"]


def test_create_and_its_audit_event_commit_together(app, scim, hub):
    from idp.audit import AuditChainHead

    with hub.db() as db:
        ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        db.execute(AuditEvent.__table__.delete().where(AuditEvent.chain == ws_id))
        db.execute(AuditChainHead.__table__.delete().where(AuditChainHead.chain == ws_id))
        db.commit()
    u = scim.create_user("audited@acme.test")  # the chain's head is created in the create's transaction
    g = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "audited", "members": [{"value": u["id"]}]})
    assert g.status_code == 201
    assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "AUDITED@acme.test"}), 409, "uniqueness")
    evs = events(hub, "scim.")
    assert [(e.type, e.subject_id, e.seq) for e in evs] == [("scim.user.created", u["id"], 1),
                                                           ("scim.group.created", g.get_json()["id"], 2)]
    assert hub.audit.verify(ws_id).ok
