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
