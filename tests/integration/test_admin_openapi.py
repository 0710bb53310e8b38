"""The admin API's OpenAPI 3.1 document validates, covers every route, and schemathesis (in-process WSGI) finds no
server error and no answer outside the document, for every operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from admin.api import admin_service
from admin.openapi import API_PREFIX, OPERATIONS
from idp.models import Group, User, Workspace
from tests.conftest import BOB, make_app, make_settings


def test_the_document_is_valid_openapi_31_and_covers_every_route(app):
    c = app.test_client()
    r = c.get(API_PREFIX + "/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.get_json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    documented = {(API_PREFIX + p.replace("{", "<").replace("}", ">"), m.upper())
                  for p, item in doc["paths"].items() for m in item}
    routed = {(rule.rule, m) for rule in app.url_map.iter_rules() if rule.rule.startswith(API_PREFIX + "/")
              for m in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint != "admin_api.openapi_json"}
    assert routed == documented
    for item in doc["paths"].values():
        for spec in item.values():
            for code in ("400", "401", "403", "404", "422"):
                assert code in spec["responses"]


def with_peer_address(app):
    """Schemathesis' WSGI client sends no REMOTE_ADDR (idhub refuses requests without a peer address)."""

    def wsgi(environ, start_response):
        environ.setdefault("REMOTE_ADDR", "127.0.0.1")
        return app(environ, start_response)

    return wsgi


@pytest.fixture
def fuzz_target(tmp_path_factory):
    """One app for the whole run of an operation's examples; the operator token reaches every operation, and
    ``ws`` and the ids point at real objects so that the happy paths are exercised, not only 404s."""
    tmp = tmp_path_factory.mktemp("fuzz")
    app = make_app(make_settings(tmp))
    hub = app.extensions["idhub"]
    with app.app_context():
        svc = admin_service()
        token, _ = svc.tokens.create("fuzz", workspace_id=None, operator=True)
        p = svc.tokens.authenticate(token).principal
        svc.create_connection(p, "acme", {"slug": "okta", "name": "Okta", "protocol": "oidc",
                                          "issuer": "https://acme.okta.test", "client_id": "0oa1",
                                          "client_secret": "fuzz-client-secret-0123456789"})
    with hub.db() as db:
        acme = db.scalar(select(Workspace).where(Workspace.slug == "acme"))
        ids = {"ws": "acme", "user_id": db.scalar(select(User.id).where(User.workspace_id == acme.id,
                                                                        User.email_normalized == BOB)),
               "group_id": db.scalar(select(Group.id).where(Group.workspace_id == acme.id)), "conn": "okta"}
    return app, token, ids


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.op_id for op in OPERATIONS])
def test_schemathesis_finds_no_server_error_or_schema_violation(op, fuzz_target):
    app, token, ids = fuzz_target
    schema = schemathesis.openapi.from_wsgi(API_PREFIX + "/openapi.json", with_peer_address(app))
    operation = schema[op.path][op.method.upper()]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: list[int] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case):
        for name, value in ids.items():
            if case.path_parameters and name in case.path_parameters and len(seen) % 4:
                case.path_parameters[name] = value  # mostly real objects; sometimes whatever was generated
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=checks)
        seen.append(response.status_code)

    run()
    assert seen and all(code < 500 for code in seen)
