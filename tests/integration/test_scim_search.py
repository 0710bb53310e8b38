"""SCIM POST searches (RFC 7644 §3.4.3): /Users/.search, /Groups/.search and the root /.search across both
resource types (totalResults, paging, sorting, attributes); /Me answers 501 (RFC 7644 §3.11)."""

from __future__ import annotations

import pytest

from tests.conftest import ALICE, BASE_CONFIG, BOB, make_app, make_settings
from tests.integration.scim_helpers import (
    GROUP_SCHEMA,
    OTHER_TOKEN,
    RO_TOKEN,
    USER_SCHEMA,
    Scim,
    assert_error,
    install_tokens,
    scim_config,
)
from tests.services import drop_postgres, postgres_url

SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


@pytest.fixture
def app(settings):
    app = make_app(settings, scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    return app


@pytest.fixture
def scim(app):
    return Scim(app)


def search(scim, path="/.search", **body):
    r = scim.post(path, {"schemas": [SEARCH], **body})
    assert r.status_code == 200, r.get_data(as_text=True)
    out = r.get_json()
    assert out["schemas"] == [LIST]
    assert out["itemsPerPage"] == len(out["Resources"])
    return out


def populate(scim) -> None:
    # acme already has alice, bob (users) and engineering (group)
    for i in range(3):
        scim.create_user(f"user{i}@acme.test", displayName=f"m-user {i}", externalId=f"x{i}")
    for name in ("admins", "sales"):
        r = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": name, "externalId": f"g-{name}"})
        assert r.status_code == 201


def kinds(body) -> list[str]:
    return [r["meta"]["resourceType"] for r in body["Resources"]]


def check_root_search(scim) -> None:
    populate(scim)
    # everything: 5 users then 3 groups, totalResults the sum of both
    body = search(scim)
    assert body["totalResults"] == 8 and kinds(body) == ["User"] * 5 + ["Group"] * 3
    # paging across the boundary between the two types
    body = search(scim, startIndex=4, count=3)
    assert body["totalResults"] == 8 and body["startIndex"] == 4 and kinds(body) == ["User", "User", "Group"]
    all_ids = [r["id"] for r in search(scim)["Resources"]]
    paged = [r["id"] for s in (1, 4, 7) for r in search(scim, startIndex=s, count=3)["Resources"]]
    assert paged == all_ids and len(set(all_ids)) == 8
    assert search(scim, startIndex=9)["Resources"] == [] and search(scim, startIndex=9)["totalResults"] == 8
    assert search(scim, count=0) == {"schemas": [LIST], "totalResults": 8, "startIndex": 1, "itemsPerPage": 0,
                                     "Resources": []}
    # a filter on an attribute both types have matches both
    body = search(scim, filter='displayName sw "M-USER" or displayName eq "sales"')
    assert body["totalResults"] == 4 and kinds(body) == ["User"] * 3 + ["Group"]
    body = search(scim, filter='externalId eq "g-admins" or externalId eq "x1"')
    assert {r.get("userName") or r["displayName"] for r in body["Resources"]} == {"user1@acme.test", "admins"}
    # an attribute of one type only: the other type contributes nothing (not an error)
    body = search(scim, filter=f'userName eq "{BOB}"')
    assert body["totalResults"] == 1 and body["Resources"][0]["userName"] == BOB
    body = search(scim, filter='members pr')
    assert body["totalResults"] == 1 and body["Resources"][0]["displayName"] == "engineering"
    body = search(scim, filter=f'userName eq "{BOB}" or members pr')
    assert [r.get("userName") or r["displayName"] for r in body["Resources"]] == [BOB, "engineering"]
    body = search(scim, filter='not (userName pr)')
    assert body["totalResults"] == 3 and kinds(body) == ["Group"] * 3
    # sorting across both types by a shared attribute; resources without a value last (ascending)
    body = search(scim, sortBy="displayName", filter='displayName pr')
    assert [r["displayName"] for r in body["Resources"]] == [
        "admins", "engineering", "m-user 0", "m-user 1", "m-user 2", "sales"]
    body = search(scim, sortBy="displayName", sortOrder="descending", filter='displayName pr', count=2)
    assert [r["displayName"] for r in body["Resources"]] == ["sales", "m-user 2"] and body["totalResults"] == 6
    body = search(scim, sortBy="userName", sortOrder="descending")
    assert kinds(body)[:3] == ["Group"] * 3  # no userName: first when descending
    assert [r["userName"] for r in body["Resources"][3:]] == sorted(
        [ALICE, BOB, "user0@acme.test", "user1@acme.test", "user2@acme.test"], reverse=True)
    body = search(scim, sortBy="userName")
    assert kinds(body)[-3:] == ["Group"] * 3  # last when ascending
    # attributes: each resource projected by its own schema
    body = search(scim, attributes=["userName", "displayName"], filter='displayName eq "admins" or userName eq '
                                                                        '"user0@acme.test"')
    assert [set(r) for r in body["Resources"]] == [{"schemas", "id", "userName", "displayName"},
                                                   {"schemas", "id", "displayName"}]
    body = search(scim, excludedAttributes="members,meta", filter='displayName eq "engineering"')
    assert set(body["Resources"][0]) == {"schemas", "id", "displayName"}


def test_root_search_across_users_and_groups(scim):
    check_root_search(scim)


def test_root_search_on_postgres(tmp_path):
    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url), scim_config(BASE_CONFIG))
    try:
        install_tokens(app.extensions["idhub"])
        check_root_search(Scim(app))
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)


def test_root_search_bad_input_and_auth(app, scim):
    populate(scim)
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": 'nosuch eq "x"'}), 400, "invalidFilter")
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": 'userName eq'}), 400, "invalidFilter")
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": "password pr"}), 400, "invalidFilter")
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "sortBy": "nosuch"}), 400, "invalidValue")
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "startIndex": "x"}), 400, "invalidValue")
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": {"a": 1}}), 400, "invalidValue")
    assert_error(scim.post("/.search", {"schemas": ["urn:wrong"]}), 400, "invalidSyntax")
    assert_error(scim.post("/.search", raw=b"{nope"), 400, "invalidSyntax")
    assert_error(scim.post("/.search", raw=b"[]"), 400, "invalidSyntax")
    assert_error(scim.get("/.search"), 405)
    assert_error(scim.post("/.search/more", {"schemas": [SEARCH]}), 404)
    assert_error(scim.post("/.search", {"schemas": [SEARCH], "filter": "(" * 500 + 'userName pr' + ")" * 500}),
                 400, "invalidFilter")
    # huge paging values are bounded, never an error
    body = search(scim, startIndex=-5, count=10**9)
    assert body["startIndex"] == 1 and body["totalResults"] == 8 and len(body["Resources"]) == 8
    # read-only tokens may search; other workspaces' resources never appear
    assert search(Scim(app, RO_TOKEN))["totalResults"] == 8
    other = search(Scim(app, OTHER_TOKEN, "/w/beta/scim/v2"))
    assert other["totalResults"] == 1 and other["Resources"][0]["userName"] == "carol@beta.test"
    assert_error(Scim(app, OTHER_TOKEN).post("/.search", {"schemas": [SEARCH]}), 404)
    assert_error(Scim(app, "x" * 40).post("/.search", {"schemas": [SEARCH]}), 401)


def test_type_searches(app, scim):
    populate(scim)
    body = search(scim, "/Users/.search", filter='userName sw "user"', sortBy="userName", sortOrder="descending",
                  startIndex=2, count=1, attributes=["userName"])
    assert body["totalResults"] == 3 and body["Resources"] == [
        {"schemas": [USER_SCHEMA], "id": body["Resources"][0]["id"], "userName": "user1@acme.test"}]
    body = search(scim, "/Groups/.search", filter='displayName eq "sales"')
    assert body["totalResults"] == 1 and body["Resources"][0]["externalId"] == "g-sales"
    assert_error(scim.post("/Groups/.search", {"schemas": [SEARCH], "filter": 'userName eq "x"'}), 400,
                 "invalidFilter")
    assert_error(scim.get("/Users/.search"), 405)
    assert search(Scim(app, RO_TOKEN), "/Groups/.search")["totalResults"] == 3


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_me_is_501_with_detail(app, scim, method):
    for client in (scim, Scim(app, RO_TOKEN)):
        body = assert_error(client.request(method, "/Me", {"schemas": [USER_SCHEMA], "userName": ALICE}), 501)
        assert "/Me" in body["detail"] and "provisioning clients" in body["detail"]
    assert_error(scim.get("/Me/x"), 501)
    # still authenticated first: no token, no answer about /Me
    assert_error(Scim(app, "x" * 40).get("/Me"), 401)


def test_lookup_fast_path_agrees_with_the_translator(app, scim):
    """userName / externalId / id eq lookups use a prebuilt statement; the answers are those of the general path
    (the same filter through /Users/.search with a sortBy, which the fast path never serves)."""
    a = scim.create_user("Straße.Fast@acme.test", externalId="Ext-1")
    b = scim.create_user("other@acme.test", externalId="ext-1")
    c = scim.create_user("third@acme.test", externalId="Ext-1x")
    filters = {
        'userName eq "STRASSE.fast@ACME.test"': [a["id"]],  # folded: case and NFKC (ß → ss)
        'userName eq "Straße.Fast@acme.test"': [a["id"]],
        f'{USER_SCHEMA}:userName eq "other@acme.test"': [b["id"]],
        'USERNAME eq "third@acme.test"': [c["id"]],
        'externalId eq "Ext-1"': [a["id"]],  # case-exact
        'externalId eq "ext-1"': [b["id"]],
        'externalId eq "EXT-1"': [],
        f'id eq "{c["id"]}"': [c["id"]],
        f'id eq "{c["id"].upper()}"': [],
        'userName eq "nobody@acme.test"': [],
    }
    for flt, want in filters.items():
        fast = scim.get("/Users", query={"filter": flt}).get_json()
        general = search(scim, "/Users/.search", filter=flt, sortBy="id")
        assert [r["id"] for r in fast["Resources"]] == want == [r["id"] for r in general["Resources"]], flt
        assert fast["totalResults"] == len(want) and fast["Resources"] == general["Resources"], flt
    # a full first page: totalResults still counts everything
    d = scim.create_user("fourth@acme.test", externalId="dup")
    e = scim.create_user("fifth@acme.test", externalId="dup")
    r = scim.get("/Users", query={"filter": 'externalId eq "dup"', "count": "1"}).get_json()
    assert r["totalResults"] == 2 and r["itemsPerPage"] == 1 and r["Resources"][0]["id"] == min(d["id"], e["id"])
    # projection, and values the fast path leaves to the translator
    r = scim.get("/Users", query={"filter": f'userName eq "{ALICE}"', "attributes": "userName"}).get_json()
    assert r["Resources"] == [{"schemas": [USER_SCHEMA], "id": r["Resources"][0]["id"], "userName": ALICE}]
    assert scim.get("/Users", query={"filter": f'userName eq "{ALICE}"'}).get_json()["Resources"][0]["groups"][0][
        "display"] == "engineering"
    assert_error(scim.get("/Users", query={"filter": 'userName eq "' + "x" * 1100 + '"'}), 400, "invalidFilter")
    assert_error(scim.get("/Users", query={"filter": "userName eq true"}), 400, "invalidFilter")
    assert scim.get("/Users", query={"filter": "userName eq null"}).get_json()["totalResults"] == 0
    # never another workspace's user
    assert Scim(app, OTHER_TOKEN, "/w/beta/scim/v2").get(
        "/Users", query={"filter": f'userName eq "{ALICE}"'}).get_json()["totalResults"] == 0
