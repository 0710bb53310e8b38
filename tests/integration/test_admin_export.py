"""``idhub export-config``: a workspace back out as a config file without secrets, and apply → export → apply is a
no-op (GitOps round trip). Run as operators run it (the real ``idhub`` command)."""

from __future__ import annotations

import yaml
from sqlalchemy import create_engine, text

from tests.integration.test_cli import run, write

WIKI_SECRET = "wiki-client-secret-0123456789abcdefghijklmnop"
SCIM_TOKEN = "okta-scim-token-0123456789abcdefghijklmnopqrs"
CONFIG = {"workspaces": [{
    "slug": "acme", "name": "Acme Corp", "plan": "enterprise", "domains": ["acme.test"],
    "policies": {"require_mfa": True, "require_mfa_for_admins": True, "mfa_methods": ["totp", "backup_codes"],
                 "ip_allowlist": ["10.0.0.0/8"], "session_idle_timeout": "12h", "session_max_lifetime": "30d"},
    "groups": [{"name": "engineering"}, {"name": "sales"}],
    "users": [
        {"email": "alice@acme.test", "name": "Alice", "password": "S3cure-Example!", "role": "admin",
         "groups": ["engineering", "sales"]},
        {"email": "bob@acme.test", "name": "Bob", "password": "B0b-Example-Pass!"},
        {"email": "gone@acme.test", "name": "Gone", "active": False},
    ],
    "apps": [
        {"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki", "client_secret": WIKI_SECRET,
         "redirect_uris": ["https://wiki.acme.test/cb"], "scopes": ["openid", "email"], "require_mfa": True},
        {"slug": "spa", "name": "SPA", "protocol": "oidc", "client_id": "spa",
         "token_endpoint_auth_method": "none", "redirect_uris": ["https://spa.acme.test/"]},
        {"slug": "crm", "name": "CRM", "protocol": "saml", "entity_id": "https://crm.test/sp",
         "acs_url": "https://crm.test/acs", "slo_url": "https://crm.test/slo"},
    ],
    "scim_tokens": [{"name": "okta", "token": SCIM_TOKEN}],
}]}

QUERIES = {
    "workspace": "select slug, name, plan, domains, policies from workspaces",
    "users": "select email, name, role, active, password_hash, external_id from users order by email",
    "groups": "select name from groups order by name",
    "members": "select g.name, u.email from group_members m join groups g on g.id = m.group_id "
               "join users u on u.id = m.user_id order by 1, 2",
    "oidc": "select client_id, slug, name, secret_hash, token_endpoint_auth_method, redirect_uris, "
            "post_logout_redirect_uris, grant_types, scopes, require_mfa from oidc_clients order by client_id",
    "saml": "select entity_id, slug, name, acs, slo_url, slo_binding, certificate, nameid_format, attributes, "
            "sign_assertion, sign_response, require_signed_requests, require_mfa, idp_initiated, "
            "encryption_certificate, encrypt_assertions from saml_service_providers",
    "scim": "select name, token_hash, read_only, created_at, revoked_at from scim_tokens order by name",
}


def snapshot(tmp_path) -> dict:
    engine = create_engine(f"sqlite:///{tmp_path}/cli.db")
    with engine.connect() as c:
        return {k: [tuple(r) for r in c.execute(text(q))] for k, q in QUERIES.items()}


def test_apply_export_apply_is_a_no_op_and_exports_no_secret(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    r = run(["apply", write(tmp_path, "acme.yaml", CONFIG)], tmp_path)
    assert r.returncode == 0, r.stderr
    before = snapshot(tmp_path)

    r = run(["export-config", "--workspace", "acme"], tmp_path)
    assert r.returncode == 0, r.stderr
    exported = r.stdout
    for secret in (WIKI_SECRET, SCIM_TOKEN, "S3cure-Example!", "$argon2id$", before["oidc"][1][3]):
        assert secret not in exported
    doc = yaml.safe_load(exported)
    ws = doc["workspaces"][0]
    assert [u["email"] for u in ws["users"]] == ["alice@acme.test", "bob@acme.test", "gone@acme.test"]
    assert ws["users"][2]["active"] is False and ws["users"][0]["groups"] == ["engineering", "sales"]
    wiki = next(a for a in ws["apps"] if a["slug"] == "wiki")
    assert wiki["client_secret_env"] == "IDHUB_APP_ACME_WIKI_CLIENT_SECRET" and "client_secret" not in wiki
    assert ws["scim_tokens"] == [{"name": "okta", "token_env": "IDHUB_SCIM_ACME_OKTA_TOKEN"}]
    assert "IDHUB_APP_ACME_WIKI_CLIENT_SECRET" in exported.splitlines()[0]  # the header says what to set

    path = write(tmp_path, "exported.yaml", exported)
    missing = run(["apply", path], tmp_path)  # the secrets' variables are required, never guessed
    assert missing.returncode == 2 and "IDHUB_APP_ACME_WIKI_CLIENT_SECRET" in missing.stderr
    env = {"IDHUB_APP_ACME_WIKI_CLIENT_SECRET": WIKI_SECRET, "IDHUB_SCIM_ACME_OKTA_TOKEN": SCIM_TOKEN}
    r = run(["apply", path], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "created" not in r.stdout
    assert snapshot(tmp_path) == before

    again = run(["export-config", "--workspace", "acme", "--output", str(tmp_path / "again.yaml")], tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "again.yaml").read_text() == exported
    assert run(["export-config", "--workspace", "nope"], tmp_path).returncode == 2
