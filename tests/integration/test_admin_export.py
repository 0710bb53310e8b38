"""``idhub export-config``: a workspace back out as a config file without secrets, and apply → export → apply is a
no-op (GitOps round trip) — also with OIDC, SAML (by XML and by URL) and LDAP connections and SAML apps from
metadata. Run as operators run it (the real ``idhub`` command); metadata URLs are served by a loopback server."""

from __future__ import annotations

import copy
import http.server
import threading

import pytest
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
         "redirect_uris": ["https://wiki.acme.test/cb"], "scopes": ["openid", "email"], "require_mfa": True,
         "assigned_groups": ["engineering", "sales"]},
        {"slug": "spa", "name": "SPA", "protocol": "oidc", "client_id": "spa",
         "token_endpoint_auth_method": "none", "redirect_uris": ["https://spa.acme.test/"]},
        {"slug": "crm", "name": "CRM", "protocol": "saml", "entity_id": "https://crm.test/sp",
         "acs_url": "https://crm.test/acs", "slo_url": "https://crm.test/slo", "assigned_groups": []},
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
            "post_logout_redirect_uris, grant_types, scopes, require_mfa, assigned_groups from oidc_clients "
            "order by client_id",
    "saml": "select entity_id, slug, name, acs, slo_url, slo_binding, certificate, nameid_format, attributes, "
            "sign_assertion, sign_response, require_signed_requests, require_mfa, idp_initiated, "
            "encryption_certificate, encrypt_assertions, assigned_groups from saml_service_providers",
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
    crm, spa = (next(a for a in ws["apps"] if a["slug"] == s) for s in ("crm", "spa"))
    assert wiki["assigned_groups"] == ["engineering", "sales"] and crm["assigned_groups"] == []
    assert "assigned_groups" not in spa  # open to everyone: the key stays absent
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


# ---- a workspace with connections of every kind and SAML apps from metadata ---------------------------------
OKTA_SECRET = "okta-client-secret-0123456789abcdefghijklmn"
AZURE_SECRET = "azure-client-secret-0123456789abcdefghijkl"
LDAP_PASSWORD = "ldap-bind-password-0123456789"
TENANT = "6f1b3a52-0d3c-4a55-9d5e-1c2b3a4d5e6f"
IDP_ENTITY = "http://www.okta.com/exk1example"
SSO = "https://acme.okta.test/app/exk1example/sso/saml"
PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"


def sp_metadata(entity_id: str, cert_pem: str, *, use: str | None = "signing", acs=(), slo=(), formats=()) -> str:
    """An SP's EntityDescriptor: ``acs`` as (url, index, is_default), ``slo`` as (binding, url)."""
    from lxml import etree

    from tests.helpers.saml_builder import DS, MD, cert_b64

    root = etree.Element(f"{{{MD}}}EntityDescriptor", nsmap={"md": MD, "ds": DS}, entityID=entity_id)
    sp = etree.SubElement(root, f"{{{MD}}}SPSSODescriptor", protocolSupportEnumeration=PROTOCOL,
                          AuthnRequestsSigned="true", WantAssertionsSigned="true")
    kd = etree.SubElement(sp, f"{{{MD}}}KeyDescriptor", **({"use": use} if use else {}))
    x509 = etree.SubElement(etree.SubElement(kd, f"{{{DS}}}KeyInfo"), f"{{{DS}}}X509Data")
    etree.SubElement(x509, f"{{{DS}}}X509Certificate").text = cert_b64(cert_pem)
    for binding, url in slo:
        etree.SubElement(sp, f"{{{MD}}}SingleLogoutService", Binding=binding, Location=url)
    for fmt in formats:
        etree.SubElement(sp, f"{{{MD}}}NameIDFormat").text = fmt
    for url, index, default in acs:
        etree.SubElement(sp, f"{{{MD}}}AssertionConsumerService", Binding=POST, Location=url, index=str(index),
                         isDefault="true" if default else "false")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


@pytest.fixture
def site():
    """A local web server (loopback http, which the metadata fetchers accept) serving metadata documents."""
    served: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = served.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/samlmetadata+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def federated_config(base: str, tmp_path) -> dict:
    from tests.helpers.saml_builder import keypair, metadata

    idp_cert = keypair("export-idp")[1]
    sp_cert, sp_enc = keypair("export-sp")[1], keypair("export-sp-enc")[1]
    (tmp_path / "ca.pem").write_text(keypair("export-ca")[1])
    cfg = copy.deepcopy(CONFIG)
    ws = cfg["workspaces"][0]
    ws["connections"] = [
        {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta",
         "issuer": "http://127.0.0.1:9/oauth2/default", "client_id": "0oa1idhub", "client_secret": OKTA_SECRET,
         "domains": ["acme.test"], "trust_mfa": True},
        {"slug": "azure", "name": "Microsoft", "protocol": "oidc", "preset": "azure_ad",
         "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "client_id": "azure-idhub",
         "client_secret": AZURE_SECRET, "allowed_tenants": [TENANT], "domains": ["acme-eu.test"],
         "scopes": ["openid", "email"], "jit": False, "link_by_email": True,
         "attribute_map": {"upn": "email"}},
        {"slug": "okta-saml", "name": "Okta SAML", "protocol": "saml",
         "metadata_xml": metadata(IDP_ENTITY, [idp_cert], SSO), "domains": ["saml.acme.test"],
         "sso_required": True, "clock_skew": 30, "require_signed_assertion": True},
        {"slug": "adfs", "name": "ADFS", "protocol": "saml", "metadata_url": f"{base}/idp-metadata",
         "allow_unsolicited": True, "certs": [idp_cert]},
        {"slug": "corp-ldap", "name": "Directory", "protocol": "ldap", "url": "ldaps://dc.acme.test",
         "bind_dn": "cn=idhub,dc=acme,dc=test", "bind_password": LDAP_PASSWORD,
         "user_search_base": "ou=people,dc=acme,dc=test", "user_filter": "(sAMAccountName={username})",
         "group_search_base": "ou=groups,dc=acme,dc=test", "ca_file": "ca.pem", "timeout": 5,
         "domains": ["corp.test"]},
        {"slug": "plain-ldap", "name": "Plain LDAP", "protocol": "ldap", "url": "ldap://127.0.0.1:3890",
         "bind_dn": "cn=idhub", "bind_password": LDAP_PASSWORD, "user_search_base": "ou=people",
         "start_tls": True},
    ]
    ws["apps"] += [
        {"slug": "es-app", "name": "ES256 app", "protocol": "oidc", "client_id": "es-app",
         "token_endpoint_auth_method": "none", "redirect_uris": ["https://es.acme.test/cb"],
         "id_token_signed_response_alg": "ES256", "grant_types": ["authorization_code", "refresh_token"],
         "post_logout_redirect_uris": ["https://es.acme.test/"]},
        # metadata XML whose ACS indices do not start at 0, a signing-only certificate and a SOAP logout service:
        # more than entity_id/acs_url can say
        {"slug": "hr", "name": "HR", "protocol": "saml", "metadata_xml": sp_metadata(
            "https://hr.acme.test/sp", sp_cert, acs=[("https://hr.acme.test/acs/2", 2, False),
                                                      ("https://hr.acme.test/acs/5", 5, True)],
            slo=[(POST, "https://hr.acme.test/slo"), (SOAP, "https://hr.acme.test/slo/soap")]),
         "attributes": {"mail": "email"}, "require_mfa": True},
        # metadata XML that entity_id/acs_url can say exactly
        {"slug": "expenses", "name": "Expenses", "protocol": "saml", "metadata_xml": sp_metadata(
            "https://expenses.acme.test/sp", sp_cert, use=None, acs=[("https://expenses.acme.test/acs", 0, True)],
            slo=[(REDIRECT, "https://expenses.acme.test/slo")]), "sign_response": True, "idp_initiated": True},
        {"slug": "travel", "name": "Travel", "protocol": "saml", "metadata_url": f"{base}/travel-metadata",
         "encryption_certificate": sp_enc, "encrypt_assertions": True},
    ]
    return cfg


FED_QUERIES = {
    **QUERIES,
    "oidc": QUERIES["oidc"].replace("require_mfa from", "require_mfa, id_token_signed_response_alg, "
                                    "backchannel_logout_uri, updated_at from"),
    "saml": QUERIES["saml"].replace(" from", ", slo_soap_url, metadata_url, app_settings from") + " order by entity_id",
    "connections": "select slug, name, protocol, preset, domains, settings, secrets, created_at, updated_at "
                   "from federation_connections order by slug",
}


def fed_snapshot(tmp_path) -> dict:
    engine = create_engine(f"sqlite:///{tmp_path}/cli.db")
    with engine.connect() as c:
        return {k: [tuple(r) for r in c.execute(text(q))] for k, q in FED_QUERIES.items()}


def test_round_trip_with_connections_and_saml_apps_from_metadata(tmp_path, site):
    base, served = site
    from tests.helpers.saml_builder import keypair, metadata

    served["/idp-metadata"] = metadata("https://adfs.acme.test/adfs/services/trust", [keypair("export-adfs")[1]],
                                       "https://adfs.acme.test/adfs/ls/")
    served["/travel-metadata"] = sp_metadata("https://travel.acme.test/sp", keypair("export-travel")[1],
                                             acs=[("https://travel.acme.test/acs", 0, True)])
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    r = run(["apply", write(tmp_path, "acme.yaml", federated_config(base, tmp_path))], tmp_path)
    assert r.returncode == 0, r.stderr
    before = fed_snapshot(tmp_path)
    assert len(before["connections"]) == 6 and len(before["saml"]) == 4

    r = run(["export-config", "--workspace", "acme"], tmp_path)
    assert r.returncode == 0, r.stderr
    exported = r.stdout
    for secret in (OKTA_SECRET, AZURE_SECRET, LDAP_PASSWORD, WIKI_SECRET, SCIM_TOKEN):
        assert secret not in exported
    ws = yaml.safe_load(exported)["workspaces"][0]
    conns = {c["slug"]: c for c in ws["connections"]}
    # what the admin declared, and nothing the validator would refuse or that is a default
    assert conns["okta"] == {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta",
                             "domains": ["acme.test"], "trust_mfa": True,
                             "issuer": "http://127.0.0.1:9/oauth2/default", "client_id": "0oa1idhub",
                             "client_secret_env": "IDHUB_CONNECTION_ACME_OKTA_CLIENT_SECRET"}
    assert conns["azure"]["allowed_tenants"] == [TENANT] and conns["azure"]["scopes"] == ["openid", "email"]
    assert conns["azure"]["jit"] is False and conns["azure"]["link_by_email"] is True
    assert conns["azure"]["attribute_map"] == {"upn": "email"}
    assert conns["adfs"]["metadata_url"] == f"{base}/idp-metadata" and "metadata_xml" not in conns["adfs"]
    assert conns["adfs"]["allow_unsolicited"] is True and len(conns["adfs"]["certs"]) == 1
    assert "metadata_xml" in conns["okta-saml"] and "metadata_url" not in conns["okta-saml"]
    assert conns["okta-saml"]["clock_skew"] == 30 and conns["okta-saml"]["sso_required"] is True
    assert "allowed_tenants" not in conns["okta-saml"] and "certs" not in conns["okta-saml"]
    assert conns["corp-ldap"]["bind_password_env"] == "IDHUB_CONNECTION_ACME_CORP_LDAP_BIND_PASSWORD"
    assert conns["corp-ldap"]["ca_file"] == str(tmp_path / "ca.pem") and conns["corp-ldap"]["timeout"] == 5
    assert "start_tls" not in conns["corp-ldap"] and conns["plain-ldap"]["start_tls"] is True
    defaults = {"preset": "generic", "jit": True, "sso_required": False, "link_by_email": False, "trust_mfa": False,
                "start_tls": False, "allow_unsolicited": False, "attribute_map": {}, "certs": [],
                "allowed_tenants": []}
    for c in conns.values():
        assert [k for k, d in defaults.items() if k in c and c[k] == d] == [], c
    apps = {a["slug"]: a for a in ws["apps"]}
    assert apps["travel"]["metadata_url"] == f"{base}/travel-metadata" and "entity_id" not in apps["travel"]
    assert apps["travel"]["encrypt_assertions"] is True
    assert apps["expenses"]["entity_id"] == "https://expenses.acme.test/sp" and "metadata_xml" not in apps["expenses"]
    assert "metadata_xml" in apps["hr"]  # ACS indices, a SOAP endpoint: only metadata says it all
    assert apps["es-app"]["id_token_signed_response_alg"] == "ES256"

    env = {"IDHUB_APP_ACME_WIKI_CLIENT_SECRET": WIKI_SECRET, "IDHUB_SCIM_ACME_OKTA_TOKEN": SCIM_TOKEN,
           "IDHUB_CONNECTION_ACME_OKTA_CLIENT_SECRET": OKTA_SECRET,
           "IDHUB_CONNECTION_ACME_AZURE_CLIENT_SECRET": AZURE_SECRET,
           "IDHUB_CONNECTION_ACME_CORP_LDAP_BIND_PASSWORD": LDAP_PASSWORD,
           "IDHUB_CONNECTION_ACME_PLAIN_LDAP_BIND_PASSWORD": LDAP_PASSWORD}
    assert sorted(env) == sorted(exported.splitlines()[0].split("set ", 1)[1].split(", "))
    path = write(tmp_path, "exported.yaml", exported)
    r = run(["apply", path], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "created" not in r.stdout
    after = fed_snapshot(tmp_path)
    assert after == before

    again = run(["export-config", "--workspace", "acme"], tmp_path)
    assert again.returncode == 0 and again.stdout == exported
