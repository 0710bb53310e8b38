"""SCIM /Bulk (RFC 7644 §3.7): limits, bulkId references, cycles, failOnErrors, auth and audit."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from idp.audit import AuditEvent
from idp.models import GroupMember
from tests.conftest import BASE_CONFIG, make_app
from tests.integration.scim_helpers import (
    GROUP_SCHEMA,
    PATCH_OP,
    RO_TOKEN,
    USER_SCHEMA,
    Scim,
    assert_error,
    install_tokens,
    scim_config,
)

BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"


@pytest.fixture
def app(settings):
    app = make_app(settings, scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    return app


@pytest.fixture
def scim(app):
    return Scim(app)


def user_op(bulk_id: str, name: str, **attrs) -> dict:
    return {"method": "POST", "path": "/Users", "bulkId": bulk_id,
            "data": {"schemas": [USER_SCHEMA], "userName": name, **attrs}}


def bulk(scim, ops, **kw):
    return scim.post("/Bulk", {"schemas": [BULK], "Operations": ops, **kw})


def ids(scim, path: str, filt: str) -> list[str]:
    return [r["id"] for r in scim.get(path, query={"filter": filt}).get_json()["Resources"]]


def test_service_provider_config_advertises_bulk(scim):
    b = scim.get("/ServiceProviderConfig").get_json()["bulk"]
    assert b == {"supported": True, "maxOperations": 1000, "maxPayloadSize": 1024 * 1024}


def test_bulk_ids_resolved_in_data_and_path(scim, hub):
    r = bulk(scim, [
        # the group comes first and refers to users created later in the same request
        {"method": "POST", "path": "/Groups", "bulkId": "g1",
         "data": {"schemas": [GROUP_SCHEMA], "displayName": "Bulk Team",
                  "members": [{"type": "User", "value": "bulkId:qwerty"}, {"value": "bulkId:ytrewq"}]}},
        user_op("qwerty", "q@acme.test"),
        user_op("ytrewq", "y@acme.test"),
        {"method": "PATCH", "path": "/Users/bulkId:qwerty",
         "data": {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "displayName", "value": "Q"}]}},
        {"method": "DELETE", "path": "/Users/bulkId:ytrewq"},
    ])
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["schemas"] == [BULK_RESPONSE]
    ops = body["Operations"]
    assert [(o["method"], o.get("bulkId"), o["status"]) for o in ops] == [
        ("POST", "qwerty", "201"), ("POST", "ytrewq", "201"), ("POST", "g1", "201"),
        ("PATCH", None, "200"), ("DELETE", None, "204")]
    q = ids(scim, "/Users", 'userName eq "q@acme.test"')
    assert ops[0]["location"].endswith(f"/Users/{q[0]}") and ops[0]["version"].startswith('W/"')
    assert scim.get(f"/Users/{q[0]}").get_json()["displayName"] == "Q"
    assert ids(scim, "/Users", 'userName eq "y@acme.test"') == []
    gid = ids(scim, "/Groups", 'displayName eq "Bulk Team"')[0]
    with hub.db() as db:
        assert list(db.scalars(select(GroupMember.user_id).where(GroupMember.group_id == gid))) == q
    with hub.db() as db:
        types = [e.type for e in db.scalars(select(AuditEvent).where(AuditEvent.type.startswith("scim."))
                                            .order_by(AuditEvent.seq))]
        bulk_ev = db.scalar(select(AuditEvent).where(AuditEvent.type == "scim.bulk"))
    assert types == ["scim.user.created", "scim.user.created", "scim.group.created", "scim.user.updated",
                     "scim.user.deleted", "scim.bulk"]
    assert bulk_ev.actor_email == "scim:okta" and bulk_ev.data == {"operations": 5, "done": 5, "errors": 0}


def test_circular_references_are_refused_before_any_write(scim):
    r = bulk(scim, [
        user_op("a", "a@acme.test"),
        {"method": "POST", "path": "/Groups", "bulkId": "g1",
         "data": {"schemas": [GROUP_SCHEMA], "displayName": "G1", "members": [{"value": "bulkId:g2"}]}},
        {"method": "POST", "path": "/Groups", "bulkId": "g2",
         "data": {"schemas": [GROUP_SCHEMA], "displayName": "G2", "members": [{"value": "bulkId:g1"}]}},
    ])
    err = assert_error(r, 409, "invalidSyntax")
    assert "g1 → g2 → g1" in err["detail"] and "Nothing was changed" in err["detail"]
    assert ids(scim, "/Users", 'userName eq "a@acme.test"') == []
    r = bulk(scim, [{"method": "POST", "path": "/Groups", "bulkId": "self",
                     "data": {"schemas": [GROUP_SCHEMA], "displayName": "S", "members": [{"value": "bulkId:self"}]}}])
    assert "its own bulkId" in assert_error(r, 409, "invalidSyntax")["detail"]


def test_fail_on_errors_stops_at_the_first_error(scim):
    scim.create_user("taken@acme.test")
    ops = [user_op("u1", "one@acme.test"), user_op("u2", "TAKEN@acme.test"), user_op("u3", "three@acme.test")]
    r = bulk(scim, ops, failOnErrors=1)
    assert r.status_code == 200
    out = r.get_json()["Operations"]
    assert [o["status"] for o in out] == ["201", "409"]
    assert out[1]["response"]["scimType"] == "uniqueness" and out[1]["response"]["status"] == "409"
    assert ids(scim, "/Users", 'userName eq "three@acme.test"') == []
    # without failOnErrors every operation runs; one that refers to a failed POST fails too
    r = bulk(scim, [user_op("v1", "bad name"), user_op("v2", "four@acme.test"),
                    {"method": "PATCH", "path": "/Users/bulkId:v1",
                     "data": {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active",
                                                                    "value": False}]}},
                    {"method": "DELETE", "path": "/Users/bulkId:nowhere"}])
    out = r.get_json()["Operations"]
    assert [o["status"] for o in out] == ["400", "201", "400", "400"]
    assert "did not succeed" in out[2]["response"]["detail"]
    assert "not defined" in out[3]["response"]["detail"]
    assert_error(bulk(scim, [user_op("x", "x@acme.test")], failOnErrors=0), 400, "invalidValue")


def test_too_many_operations_and_oversized_payload(scim):
    ops = [user_op(f"u{i}", f"u{i}@acme.test") for i in range(1001)]
    assert_error(bulk(scim, ops), 413, "tooMany")
    big = [user_op("big", "big@acme.test", displayName="x" * 100, title="t" * (1024 * 1024))]
    r = bulk(scim, big)
    assert_error(r, 413)
    assert ids(scim, "/Users", 'userName eq "big@acme.test"') == []
    assert ids(scim, "/Users", 'userName eq "u0@acme.test"') == []


def test_read_only_token_and_bad_requests(app, scim):
    ro = Scim(app, RO_TOKEN)
    assert_error(bulk(ro, [user_op("a", "ro@acme.test")]), 403)
    assert ids(scim, "/Users", 'userName eq "ro@acme.test"') == []
    assert_error(Scim(app, "wrong-token-0123456789abcdefghijklmnop").post("/Bulk", {}), 401)
    assert_error(scim.get("/Bulk"), 405)
    assert_error(scim.post("/Bulk", {"Operations": [user_op("a", "a@acme.test")]}), 400, "invalidSyntax")
    assert_error(bulk(scim, [user_op("a", "a@acme.test"), user_op("a", "b@acme.test")]), 400, "invalidSyntax")
    assert_error(scim.post("/Bulk", raw=b"{not json"), 400, "invalidSyntax")
    r = bulk(scim, [{"method": "GET", "path": "/Users"},
                    {"method": "POST", "path": "/Users", "data": {"schemas": [USER_SCHEMA], "userName": "n@acme.test"}},
                    {"method": "POST", "path": "/Bulk", "bulkId": "nest", "data": {}},
                    {"method": "PUT", "path": "/Users", "data": {}}])
    out = r.get_json()["Operations"]
    assert [o["status"] for o in out] == ["400"] * 4
    assert all(o["response"]["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] for o in out)
    assert "Traceback" not in json.dumps(out)


def test_a_failed_operation_leaves_nothing_for_the_next_one_to_commit(scim):
    # the group is flushed before its members are checked: the failure must roll it back, not the next commit
    r = bulk(scim, [{"method": "POST", "path": "/Groups", "bulkId": "g",
                     "data": {"schemas": [GROUP_SCHEMA], "displayName": "Half", "members": [{"value": "nobody"}]}},
                    user_op("after", "after@acme.test")])
    assert [o["status"] for o in r.get_json()["Operations"]] == ["400", "201"]
    assert ids(scim, "/Groups", 'displayName eq "Half"') == []
    assert len(ids(scim, "/Users", 'userName eq "after@acme.test"')) == 1


def test_a_long_chain_of_references_runs_in_dependency_order(scim):
    n = 400  # each user's manager is the next one: the last POST must run first
    ops = [user_op(f"c{i}", f"c{i}@acme.test",
                   **({"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                       {"manager": {"value": f"bulkId:c{i + 1}"}}} if i + 1 < n else {}))
           for i in range(n)]
    ops[0]["data"]["schemas"].append("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
    for op in ops[1:-1]:
        op["data"]["schemas"] = ops[0]["data"]["schemas"]
    r = bulk(scim, ops)
    out = r.get_json()["Operations"]
    assert [o["bulkId"] for o in out] == [f"c{i}" for i in reversed(range(n))]
    assert {o["status"] for o in out} == {"201"}
    first = scim.get("/Users", query={"filter": 'userName eq "c0@acme.test"'}).get_json()["Resources"][0]
    manager = first["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"]
    assert manager == ids(scim, "/Users", 'userName eq "c1@acme.test"')[0]


@pytest.mark.services
def test_bulk_on_postgres(tmp_path):
    """One session per request on PostgreSQL: a failed operation (an aborted transaction after a unique violation
    and a flushed group) must not poison or leak into the next; PATCH locks rows (FOR UPDATE) and commits."""
    from tests.conftest import make_settings
    from tests.services import drop_postgres, postgres_url

    url = postgres_url()
    app = make_app(make_settings(tmp_path, database_url=url), scim_config(BASE_CONFIG))
    try:
        install_tokens(app.extensions["idhub"])
        scim = Scim(app)
        scim.create_user("dup@acme.test")
        r = bulk(scim, [
            user_op("d", "DUP@acme.test"),
            {"method": "POST", "path": "/Groups", "bulkId": "h",
             "data": {"schemas": [GROUP_SCHEMA], "displayName": "Half", "members": [{"value": "nobody"}]}},
            user_op("u", "pg-u@acme.test"),
            {"method": "POST", "path": "/Groups", "bulkId": "g",
             "data": {"schemas": [GROUP_SCHEMA], "displayName": "PG", "members": [{"value": "bulkId:u"}]}},
            {"method": "PATCH", "path": "/Users/bulkId:u",
             "data": {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": False}]}},
        ])
        assert [o["status"] for o in r.get_json()["Operations"]] == ["409", "400", "201", "201", "200"]
        assert ids(scim, "/Groups", 'displayName eq "Half"') == []
        u = ids(scim, "/Users", 'userName eq "pg-u@acme.test"')
        assert scim.get(f"/Users/{u[0]}").get_json()["active"] is False
        gid = ids(scim, "/Groups", 'displayName eq "PG"')[0]
        assert [m["value"] for m in scim.get(f"/Groups/{gid}").get_json()["members"]] == u
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)
