"""Connections in the config file: validation by path, metadata_file resolution, secrets encrypted at rest,
``apply`` idempotent, removed connections deleted (their identity links with them)."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import func, select

from federation.config import connection_settings
from federation.models import FederationConnection, FederationLink
from idp import schema
from idp.accounts import workspace_by_slug
from idp.app import build_hub
from idp.configfile import ConfigError, apply, validate
from idp.models import User
from tests.conftest import BASE_CONFIG, fast_hasher

SECRET = "okta-client-secret-" + "z" * 30
OKTA = {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta",
        "issuer": "https://acme.okta.test/oauth2/default", "client_id": "0oa1", "client_secret": SECRET,
        "domains": ["acme.test"], "trust_mfa": True}
LDAP = {"slug": "corp-ldap", "name": "Directory", "protocol": "ldap", "url": "ldap://127.0.0.1:3890",
        "bind_dn": "cn=idhub,dc=corp,dc=test", "bind_password": "ldap-service-pass",
        "user_search_base": "ou=people,dc=corp,dc=test", "domains": ["corp.test"]}


def cfg(*connections, plan="enterprise"):
    c = copy.deepcopy(BASE_CONFIG)
    c["workspaces"][0]["connections"] = [copy.deepcopy(x) for x in connections]
    c["workspaces"][0]["plan"] = plan
    return c


def errors_of(config, base_dir=None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        validate(config, base_dir=base_dir)
    return exc.value.errors


def test_oidc_connection_errors_are_named_by_path():
    p = "workspaces[0].connections[0]"
    errs = errors_of(cfg({**OKTA, "issuer": None, "client_id": None}))
    assert f"{p}.issuer: required" in errs and f"{p}.client_id: required" in errs
    errs = errors_of(cfg({**OKTA, "issuer": "http://okta.example.com"}))
    assert f"{p}.issuer: must use https (http only on 127.0.0.1/localhost)" in errs
    errs = errors_of(cfg({**OKTA, "preset": "azure_ad", "issuer": "https://login.microsoftonline.com/organizations/v2.0"}))
    assert any(e.startswith(f"{p}.allowed_tenants: required for a multi-tenant issuer") for e in errs)
    errs = errors_of(cfg({**OKTA, "bind_dn": "cn=x"}))
    assert f"{p}.bind_dn: not used by oidc connections" in errs
    errs = errors_of(cfg({**OKTA, "attribute_map": {"mail": "password"}}))
    assert any(e.startswith(f"{p}.attribute_map.mail: must be one of") for e in errs)
    errs = errors_of(cfg({**OKTA, "domains": [], "sso_required": True}))
    assert any(e.startswith(f"{p}.sso_required: needs domains") for e in errs)
    errs = errors_of(cfg(OKTA, plan="pro"))
    assert f"{p}: single sign-on connections need the enterprise plan" in errs


def test_a_domain_routes_to_one_connection_only():
    errs = errors_of(cfg(OKTA, {**OKTA, "slug": "okta2"}))
    assert "workspaces[0].connections[1].domains: acme.test already belongs to connection 'okta'" in errs


def test_ldap_and_saml_shapes(tmp_path):
    p = "workspaces[0].connections[0]"
    errs = errors_of(cfg({**LDAP, "bind_password": "", "user_filter": "uid=x"}))
    assert f"{p}.bind_password: required" in errs
    assert f"{p}.user_filter: must be an LDAP filter in parentheses containing {{username}}" in errs
    errs = errors_of(cfg({"slug": "s", "name": "S", "protocol": "saml", "metadata_file": "missing.xml"}),
                     base_dir=str(tmp_path))
    assert any(e.startswith(f"{p}.metadata_file: cannot read missing.xml") for e in errs)
    errs = errors_of(cfg({"slug": "s", "name": "S", "protocol": "saml"}))
    assert f"{p}: give exactly one of metadata_xml, metadata_file or metadata_url" in errs


def test_apply_encrypts_secrets_is_idempotent_and_deletes_removed_connections(settings):
    schema.upgrade(settings.database_url)
    hub = build_hub(settings, hasher=fast_hasher())
    key = settings.secret_key
    with hub.db() as db:
        apply(db, validate(cfg(OKTA, LDAP)), hub.hasher, secret_key=key)
        db.commit()
    with hub.db() as db:
        rows = {r.slug: r for r in db.scalars(select(FederationConnection))}
        okta = rows["okta"]
        assert "client_secret" not in okta.settings and okta.secrets["client_secret"].startswith("v1:")
        assert SECRET not in str(okta.secrets) and "ldap-service-pass" not in str(rows["corp-ldap"].secrets)
        conn = connection_settings(okta, key)
        assert conn["client_secret"] == SECRET and conn["trust_mfa"] is True and conn["jit"] is True
        assert connection_settings(rows["corp-ldap"], key)["bind_password"] == "ldap-service-pass"
        sealed, updated = okta.secrets["client_secret"], okta.updated_at
        ws = workspace_by_slug(db, "acme")
        alice = db.scalar(select(User).where(User.email_normalized == "alice@acme.test"))
        db.add(FederationLink(connection_id=rows["corp-ldap"].id, subject="uid=alice", user_id=alice.id))
        db.commit()
    with hub.db() as db:  # the same file again: nothing changes
        apply(db, validate(cfg(OKTA, LDAP)), hub.hasher, secret_key=key)
        db.commit()
        okta = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        assert okta.secrets["client_secret"] == sealed and okta.updated_at == updated
    with hub.db() as db:  # a new secret, and the LDAP connection removed (with its links)
        apply(db, validate(cfg({**OKTA, "client_secret": SECRET + "2"})), hub.hasher, secret_key=key)
        db.commit()
        assert [r.slug for r in db.scalars(select(FederationConnection))] == ["okta"]
        assert db.scalar(select(func.count()).select_from(FederationLink)) == 0
        okta = db.scalar(select(FederationConnection).where(FederationConnection.slug == "okta"))
        assert okta.secrets["client_secret"] != sealed
        assert connection_settings(okta, key)["client_secret"] == SECRET + "2"
        assert okta.workspace_id == ws.id
    with pytest.raises(ValueError):  # another hub's key cannot read them
        connection_settings(okta, "another-master-key-" + "k" * 30)


@pytest.mark.parametrize("url", ["http://idp.example.com/metadata", "http://10.0.0.5/metadata",
                                 "http://127.0.0.1.evil.test/metadata", "http://localhost@evil.test/metadata",
                                 "ftp://idp.example.com/metadata"])
def test_saml_metadata_url_must_be_https(url):
    fetched = []
    from federation.config import validate_connection
    from idp.configfile import Validator

    v = Validator()
    validate_connection(v, {"slug": "s", "name": "S", "protocol": "saml", "metadata_url": url}, "c",
                        fetch=lambda u: fetched.append(u) or "")
    assert any(e.startswith("c.metadata_url: ") for e in v.errors), v.errors
    assert fetched == []  # refused before any request goes out


def test_metadata_fetch_itself_refuses_plain_http():
    from federation.config import fetch_metadata

    with pytest.raises(ValueError, match="https"):
        fetch_metadata("http://idp.example.com/metadata")


@pytest.mark.parametrize("url", ["http://graph.example.com/v1.0/me/memberOf", "http://192.168.1.10/groups",
                                 "http://127.0.0.1.evil.test/groups", "ftp://graph.example.com/x"])
def test_groups_endpoint_must_be_https(url):
    p = "workspaces[0].connections[0]"
    errs = errors_of(cfg({**OKTA, "groups_endpoint": url}))
    assert any(e.startswith(f"{p}.groups_endpoint: ") for e in errs), errs


@pytest.mark.parametrize("url", ["https://graph.microsoft.com/v1.0/me/memberOf", "http://127.0.0.1:8080/groups",
                                 "http://localhost/groups", "http://[::1]:9/groups"])
def test_https_or_loopback_groups_endpoints_are_accepted(url):
    [ws] = [w for w in validate(cfg({**OKTA, "groups_endpoint": url})) if w["slug"] == "acme"]
    assert ws["connections"][0]["groups_endpoint"] == url


def test_email_verified_by_idp_is_a_boolean_defaulting_to_false():
    [ws] = [w for w in validate(cfg(OKTA)) if w["slug"] == "acme"]
    assert ws["connections"][0]["email_verified_by_idp"] is False
    [ws] = [w for w in validate(cfg({**OKTA, "email_verified_by_idp": True})) if w["slug"] == "acme"]
    assert ws["connections"][0]["email_verified_by_idp"] is True
    errs = errors_of(cfg({**OKTA, "email_verified_by_idp": "yes"}))
    assert "workspaces[0].connections[0].email_verified_by_idp: must be true or false" in errs
