"""Shared set-up of the SCIM tests: an app whose workspaces have SCIM tokens, and a small SCIM client."""

from __future__ import annotations

import json

from sqlalchemy import select

from idp.models import Workspace
from scim.config import apply_scim_tokens

TOKEN = "acme-scim-token-0123456789abcdefghijklmnop"
RO_TOKEN = "acme-readonly-token-0123456789abcdefghijkl"
OTHER_TOKEN = "beta-scim-token-0123456789abcdefghijklmnopq"
BASE = "/w/acme/scim/v2"
SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def scim_config(base: dict) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["workspaces"].append({"slug": "beta", "name": "Beta", "plan": "enterprise",
                              "users": [{"email": "carol@beta.test", "name": "Carol"}]})
    return cfg


def install_tokens(hub) -> None:
    with hub.db() as db:
        acme = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        beta = db.scalar(select(Workspace).where(Workspace.slug == "beta"))
        apply_scim_tokens(db, acme, [{"name": "okta", "token": TOKEN},
                                     {"name": "auditor", "token": RO_TOKEN, "read_only": True}])
        apply_scim_tokens(db, beta, [{"name": "azure", "token": OTHER_TOKEN}])
        db.commit()


class Scim:
    """A thin SCIM client over Flask's test client."""

    def __init__(self, app, token: str = TOKEN, base: str = BASE):
        self.client = app.test_client()
        self.token = token
        self.base = base

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Authorization": f"Bearer {self.token}", "Accept": SCIM_JSON}
        h.update(extra or {})
        return h

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None,
                query: dict | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        h = self.headers(headers)
        if data is not None:
            h.setdefault("Content-Type", SCIM_JSON)
        return self.client.open(self.base + path, method=method, data=data, headers=h, query_string=query)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path, operations, **kw):
        return self.request("PATCH", path, {"schemas": [PATCH_OP], "Operations": operations}, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def create_user(self, user_name: str, **attrs):
        body = {"schemas": [USER_SCHEMA], "userName": user_name, **attrs}
        r = self.post("/Users", body)
        assert r.status_code == 201, r.get_data(as_text=True)
        return r.get_json()


def assert_error(resp, status: int, scim_type: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == SCIM_JSON, resp.mimetype
    body = resp.get_json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


# ---- checks run on SQLite and on PostgreSQL ------------------------------------------------------------------
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def found(resp) -> list[str]:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    body = resp.get_json()
    assert body["totalResults"] == len(body["Resources"])
    return sorted(r["id"] for r in body["Resources"])


def user_ids(scim: Scim, flt: str) -> list[str]:
    return found(scim.get("/Users", query={"filter": flt}))


def group_ids(scim: Scim, flt: str) -> list[str]:
    return found(scim.get("/Groups", query={"filter": flt}))


# Filters whose string values hold a character that no attribute holds (PostgreSQL cannot even compare with NUL):
# invalidFilter, on every path that translates filters (the userName/externalId/id fast path included).
CONTROL_FILTERS = {
    "/Users": ['userName eq "a\\u0000b"', 'title co "a\\u0000"', 'externalId eq "\\u0000"', 'id eq "\\u0000"',
               'emails[value eq "x\\u0000"]', 'groups.display eq "\\u0000"', 'groups[value eq "\\u0000"]',
               'title eq "\\u0001"', 'title sw "\\u001f"', 'title ew "\\u007f"', 'title eq "\\ud800"',
               'title pr and not (displayName eq "\\u0000")', 'meta.resourceType eq "\\u0000"'],
    "/Groups": ['displayName eq "\\u0000"', 'externalId eq "g\\u0000"', 'members.value eq "\\u0000"',
                'members[display eq "\\u0000"]'],
}


def check_control_characters(scim: Scim) -> None:
    u = scim.create_user("ctl@acme.test", title="Tab\there", externalId="ctl-1")
    for path, filters in CONTROL_FILTERS.items():
        for flt in filters:
            assert_error(scim.get(path, query={"filter": flt}), 400, "invalidFilter")
            assert_error(scim.post(f"{path}/.search", {"schemas": [SEARCH], "filter": flt}), 400, "invalidFilter")
            assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": flt}), 400, "invalidFilter")
    # tab, line feed and carriage return are stored and found
    assert user_ids(scim, 'title eq "tab\\there"') == [u["id"]]
    # ids that cannot exist (every id is a UUID): 404 for every method, without asking the database
    for rid in ("a%00b", "%00", "nope", "x" * 36, "%ED%A0%80", u["id"] + "%00", u["id"] + "%0A",
                u["id"].upper().replace("-", "")):
        for path in ("/Users", "/Groups"):
            assert_error(scim.get(f"{path}/{rid}"), 404)
            assert_error(scim.delete(f"{path}/{rid}"), 404)
            assert_error(scim.patch(f"{path}/{rid}", [{"op": "replace", "path": "displayName", "value": "x"}]), 404)
        assert_error(scim.put(f"/Users/{rid}", {"schemas": [USER_SCHEMA], "userName": "ctl@acme.test"}), 404)
    r = scim.post("/Bulk", {"schemas": [BULK], "Operations": [
        {"method": "DELETE", "path": "/Users/a\u0000b"},
        {"method": "PATCH", "path": "/Groups/\u0000", "data": {"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "displayName", "value": "x"}]}},
        {"method": "\ud800", "path": "/Users"},
    ]})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    assert [(o["method"], o["status"]) for o in r.get_json()["Operations"]] == [
        ("DELETE", "404"), ("PATCH", "404"), (None, "400")]
    assert scim.get(f"/Users/{u['id']}").status_code == 200


def check_control_characters_in_bodies(scim: Scim) -> None:
    """NUL (and other characters no attribute holds) in any string value of a POST, PUT, PATCH or bulk body:
    400 invalidValue, and nothing written."""
    u = scim.create_user("body@acme.test", title="Before")
    g = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "nul-team", "members": [{"value": u["id"]}]})
    assert g.status_code == 201
    g = g.get_json()
    ext = {"employeeNumber": "7\u00001"}
    bad_users = [{"userName": "a\u0000b@acme.test"}, {"userName": "ok@acme.test", "externalId": "x\u0000"},
                 {"userName": "ok@acme.test", "title": "\u0000"}, {"userName": "ok@acme.test", "password": "Pw\u0000"},
                 {"userName": "ok@acme.test", "emails": [{"value": "e\u0000@acme.test", "type": "work"}]},
                 {"userName": "ok@acme.test", "name": {"givenName": "\u0000"}},
                 {"userName": "ok@acme.test", ENTERPRISE: ext}]
    for attrs in bad_users:
        schemas = [USER_SCHEMA] + ([ENTERPRISE] if ENTERPRISE in attrs else [])
        assert_error(scim.post("/Users", {"schemas": schemas, **attrs}), 400, "invalidValue")
        assert_error(scim.put(f"/Users/{u['id']}", {"schemas": schemas, **{"userName": "body@acme.test", **attrs}}),
                     400, "invalidValue")
    for op in ({"op": "replace", "path": "title", "value": "a\u0000"},
               {"op": "add", "path": "emails", "value": [{"value": "\u0000", "type": "home"}]},
               {"op": "add", "path": 'emails[type eq "work"].value', "value": "w\u0000@acme.test"},
               {"op": "replace", "value": {"displayName": "\u0000", "nickName": "ok"}},
               {"op": "replace", "path": f"{ENTERPRISE}:department", "value": "\u0000"}):
        assert_error(scim.patch(f"/Users/{u['id']}", [op]), 400, "invalidValue")
    # an unpaired surrogate (valid JSON, no UTF-8 encoding) is refused the same way
    raw = json.dumps({"schemas": [USER_SCHEMA], "userName": "sur@acme.test", "title": "\udc00"}).encode()
    assert b'"\\udc00"' in raw
    assert_error(scim.post("/Users", raw=raw), 400, "invalidValue")
    assert_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "g\u0000"}), 400, "invalidValue")
    assert_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "g2",
                                       "members": [{"value": "\u0000"}]}), 400, "invalidValue")
    assert_error(scim.patch(f"/Groups/{g['id']}", [{"op": "add", "path": "members", "value": [{"value": "a\u0000"}]}]),
                 400, "invalidValue")
    assert_error(scim.patch(f"/Groups/{g['id']}", [{"op": "replace", "path": "displayName", "value": "\u0000"}]),
                 400, "invalidValue")
    r = scim.post("/Bulk", {"schemas": [BULK], "Operations": [
        {"method": "POST", "path": "/Users", "bulkId": "n", "data": {"schemas": [USER_SCHEMA], "userName": "\u0000"}},
        {"method": "PATCH", "path": f"/Users/{u['id']}", "data": {"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "title", "value": "\u0000"}]}}]})
    assert [(o["status"], o["response"]["scimType"]) for o in r.get_json()["Operations"]] == [
        ("400", "invalidValue"), ("400", "invalidValue")]
    # nothing was written
    assert user_ids(scim, 'userName sw "ok@" or userName sw "sur@"') == []
    after = scim.get(f"/Users/{u['id']}").get_json()
    assert after["title"] == "Before" and "emails" not in after and "displayName" not in after
    assert [m["value"] for m in scim.get(f"/Groups/{g['id']}").get_json()["members"]] == [u["id"]]
    assert group_ids(scim, 'displayName sw "g"') == []


def check_case_exact_substrings(scim: Scim) -> None:
    """co / sw / ew on case-exact attributes (externalId, id) respect case on every database; on other
    attributes they ignore it. LIKE wildcards stay literal either way."""
    upper = scim.create_user("ce1@acme.test", externalId="ABC-xyz", title="ABC-xyz")["id"]
    lower = scim.create_user("ce2@acme.test", externalId="abc-xyz", title="abc-xyz")["id"]
    tail = scim.create_user("ce3@acme.test", externalId="xyz-ABC", title="xyz-ABC")["id"]
    under = scim.create_user("ce4@acme.test", externalId="a_c%Z", title="a_c%Z")["id"]
    cases = {
        'externalId co "abc"': [lower], 'externalId co "ABC"': [upper, tail], 'externalId co "C-x"': [upper],
        'externalId co "C-X"': [],
        'externalId sw "abc"': [lower], 'externalId sw "ABC"': [upper], 'externalId sw "xyz-abc"': [],
        'externalId ew "abc"': [], 'externalId ew "ABC"': [tail], 'externalId ew "XYZ"': [],
        'externalId ew "xyz"': [upper, lower], 'externalId co "a_c%"': [under], 'externalId co "A_C%"': [],
        'externalId sw "abc-xyz-more"': [], 'externalId ew "more-abc-xyz"': [], 'externalId co ""': [
            upper, lower, tail, under],
        'title co "abc"': [upper, lower, tail], 'title sw "ABC"': [upper, lower], 'title ew "abc"': [tail],
        'externalId eq "abc-xyz"': [lower], 'externalId eq "ABC-XYZ"': [],
    }
    for flt, want in cases.items():
        assert user_ids(scim, flt) == sorted(want), flt
        got = found(scim.post("/Users/.search", {"schemas": [SEARCH], "filter": flt, "sortBy": "userName"}))
        assert got == sorted(want), flt
    assert user_ids(scim, f'id sw "{lower[:8]}"') == [lower]
    assert user_ids(scim, f'id sw "{lower[:8].upper()}"') == ([lower] if lower[:8] == lower[:8].upper() else [])
    for name, ext in (("ce-upper", "GRP-One"), ("ce-lower", "grp-one")):
        assert scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": name, "externalId": ext}).status_code \
            == 201
    assert [g["displayName"] for g in scim.get("/Groups", query={"filter": 'externalId sw "grp"'}).get_json()[
        "Resources"]] == ["ce-lower"]
    assert [g["displayName"] for g in scim.get("/Groups", query={"filter": 'externalId co "P-O"'}).get_json()[
        "Resources"]] == ["ce-upper"]


def check_rfc_filters(scim: Scim, base_url: str) -> None:
    """Valid RFC 7644 filters on attributes kept in other tables or computed: a user's groups and a group's members
    (every comparison of a value filter applies to one element), ``pr`` on complex attributes, ``meta``. Expects
    the workspace of ``scim_config(BASE_CONFIG)`` as it starts (alice in engineering, bob)."""
    alice = user_ids(scim, 'userName eq "alice@acme.test"')[0]
    bob = user_ids(scim, 'userName eq "bob@acme.test"')[0]
    eng = group_ids(scim, 'displayName eq "engineering"')[0]  # alice is in it (the config file)
    r = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "Sales", "members": [{"value": bob}]})
    assert r.status_code == 201, r.get_data(as_text=True)
    sales = r.get_json()["id"]
    # members carry the user's name as display
    members = scim.get(f"/Groups/{sales}").get_json()["members"]
    assert members == [{"value": bob, "$ref": f"{base_url}/Users/{bob}", "display": "Bob Example", "type": "User"}]
    named = scim.create_user("named@acme.test", name={"formatted": "Ms Named"})["id"]
    given = scim.create_user("given@acme.test", name={"givenName": "Gina"})["id"]
    home = scim.create_user("home@acme.test", addresses=[{"locality": "Paris", "type": "home"}])["id"]
    everyone = sorted([alice, bob, named, given, home])
    users = {
        # groups: value, display, type and $ref, as plain comparisons and in value filters
        f'groups[value eq "{eng}"]': [alice],
        f'groups.value eq "{eng}"': [alice],
        f'groups[value eq "{eng}" and display eq "ENGINEERING"]': [alice],
        f'groups[value eq "{eng}" and display eq "sales"]': [],  # one element must satisfy both
        'groups[display sw "eng"] or groups[display eq "sales"]': [alice, bob],
        'groups[not (display eq "engineering")]': [bob],
        'groups[type eq "direct"]': [alice, bob],
        'groups.type eq "indirect"': [],
        f'groups.$ref eq "{base_url}/Groups/{sales}"': [bob],
        f'groups[$ref ew "/Groups/{eng}"]': [alice],
        'groups pr': [alice, bob],
        'not (groups pr)': [named, given, home],
        f'groups.value ne "{eng}"': [bob, named, given, home],  # like any multi-valued attribute
        # pr on complex attributes: any sub-attribute has a value
        'name pr': [named, given],
        'addresses pr': [home],
        'not (name pr)': [alice, bob, home],
        # meta
        'meta.resourceType eq "User"': everyone,
        'meta.resourceType eq "user"': everyone,
        'meta.resourceType eq "Group"': [],
        'meta.resourceType ne "User"': [],
        'meta.resourceType pr': everyone,
        f'meta.location eq "{base_url}/Users/{home}"': [home],
        f'meta.location sw "{base_url}/Users/"': everyone,
        f'meta.location eq "{base_url}/Groups/{home}"': [],
        'meta.created gt "2000-01-01T00:00:00Z"': everyone,
        'meta.lastModified lt "2000-01-01T00:00:00Z"': [],
        'meta.version pr': everyone,
    }
    for flt, want in users.items():
        assert user_ids(scim, flt) == sorted(want), flt
    groups = {
        f'members[value eq "{alice}"]': [eng],
        'members[display eq "alice example"]': [eng],
        'members.display sw "Bob"': [sales],
        f'members[type eq "User" and value eq "{bob}"]': [sales],
        f'members[value eq "{alice}" and display eq "Bob Example"]': [],  # one element must satisfy both
        'members[type eq "Group"]': [],
        f'members.$ref eq "{base_url}/Users/{bob}"': [sales],
        f'members.value ne "{alice}"': [sales],
        'meta.resourceType eq "Group"': [eng, sales],
        'meta.resourceType eq "User"': [],
        f'meta.location eq "{base_url}/Groups/{sales}"': [sales],
        'meta.created ge "2000-01-01T00:00:00Z" and meta.lastModified ge "2000-01-01T00:00:00Z"': [eng, sales],
    }
    for flt, want in groups.items():
        assert group_ids(scim, flt) == sorted(want), flt
    # the root search: meta.resourceType picks a type
    body = scim.post("/.search", {"schemas": [SEARCH], "filter": 'meta.resourceType eq "Group"'}).get_json()
    assert sorted(r["id"] for r in body["Resources"]) == sorted([eng, sales]) and body["totalResults"] == 2
    body = scim.post("/.search", {"schemas": [SEARCH], "filter": 'meta.resourceType eq "User" and name pr'}).get_json()
    assert sorted(r["id"] for r in body["Resources"]) == sorted([named, given])
    # a version is a digest, not a column: refused with a reason, not ignored
    for path in ("/Users", "/Groups"):
        body = assert_error(scim.get(path, query={"filter": 'meta.version eq "W/\\"x\\""'}), 400, "invalidFilter")
        assert "If-None-Match" in body["detail"]
    for flt in ('groups[nope eq "x"]', 'groups[value[display eq "x"]]', 'name eq "x"', 'meta eq "x"',
                'groups[display eq true]', 'meta.resourceType eq true', 'members[value eq "x"]'):
        assert_error(scim.get("/Users", query={"filter": flt}), 400, "invalidFilter")
    assert_error(scim.get("/Groups", query={"filter": 'members[nope eq "x"]'}), 400, "invalidFilter")
    # PATCH value filters see members' display too: remove Bob by name
    r = scim.patch(f"/Groups/{sales}", [{"op": "remove", "path": 'members[display eq "bob example"]'}])
    assert r.status_code == 200 and "members" not in r.get_json(), r.get_data(as_text=True)
    assert group_ids(scim, f'members[value eq "{bob}"]') == []
