"""``idhub export-config``: a workspace written back out as a config file, secrets excluded. Plain Python.

Secrets are never written: a confidential OIDC client's secret becomes ``client_secret_env``, a SCIM token
``token_env``, a connection's secret ``client_secret_env``/``bind_password_env`` — names of environment
variables the operator fills from their secret store. Passwords are not exported at all (a config file's
password is only an initial one, and applying never overwrites an existing one). With those variables set,
``idhub apply`` of the export changes nothing: apply → export → apply is a no-op (GitOps round trip)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.models import Group, GroupMember, User, Workspace

DEFAULT_CONFIDENTIAL = "client_secret_basic,client_secret_post"


POSITION = "_launcher_position"

def env_name(*parts: str) -> str:
    return "IDHUB_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").upper() for p in parts)


def export_workspace(db: Session, ws: Workspace) -> tuple[dict, list[str]]:
    """(the config document, the environment variables it needs)."""
    env: list[str] = []
    out: dict = {"slug": ws.slug, "name": ws.name, "plan": ws.plan}
    if ws.domains:
        out["domains"] = list(ws.domains)
    if ws.policies:
        out["policies"] = dict(ws.policies)
    groups = list(db.scalars(select(Group).where(Group.workspace_id == ws.id).order_by(Group.name)))
    if groups:
        out["groups"] = [{"name": g.name} for g in groups]
    names = {g.id: g.name for g in groups}
    members: dict[str, list[str]] = {}
    for gid, uid in db.execute(select(GroupMember.group_id, GroupMember.user_id)
                               .where(GroupMember.group_id.in_(list(names)))):
        members.setdefault(uid, []).append(names[gid])
    users = []
    for u in db.scalars(select(User).where(User.workspace_id == ws.id).order_by(User.email_normalized)):
        if not u.email:  # a SCIM user with no address: its HR system declares it, a config file cannot
            continue
        entry: dict = {"email": u.email}
        if u.name:
            entry["name"] = u.name
        if u.role != "member":
            entry["role"] = u.role
        if not u.active:
            entry["active"] = False
        if members.get(u.id):
            entry["groups"] = sorted(members[u.id])
        users.append(entry)
    if users:
        out["users"] = users
    apps = sorted(_oidc_apps(db, ws, env) + _saml_apps(db, ws), key=lambda a: a[POSITION])  # the launcher's order
    for a in apps:
        del a[POSITION]
    known = {g.name for g in groups}
    for a in apps:  # a group deleted since it was assigned: its members are nobody now, and the file stays valid
        if a.get("assigned_groups") is not None:
            a["assigned_groups"] = [g for g in a["assigned_groups"] if g in known]
    if apps:
        out["apps"] = apps  # in the launcher's order (the config file's), so that applying it keeps that order
    connections = _connections(db, ws, env)
    if connections:
        out["connections"] = connections
    tokens = _scim_tokens(db, ws, env)
    if tokens:
        out["scim_tokens"] = tokens
    return {"workspaces": [out]}, env


def _oidc_apps(db: Session, ws: Workspace, env: list[str]) -> list[dict]:
    from oidc.config import SCOPES
    from oidc.keys import DEFAULT_ALG
    from oidc.models import OidcClient, OidcClientJwks

    out = []
    for r in db.scalars(select(OidcClient).where(OidcClient.workspace_id == ws.id).order_by(OidcClient.client_id)):
        slug = r.slug or re.sub(r"[^a-z0-9-]+", "-", r.client_id.lower()).strip("-")[:63] or "app"
        a: dict = {"slug": slug, "name": r.name or slug, "protocol": "oidc", "client_id": r.client_id}
        if r.token_endpoint_auth_method != DEFAULT_CONFIDENTIAL:
            a["token_endpoint_auth_method"] = r.token_endpoint_auth_method
        if r.secret_hash:
            name = env_name("app", ws.slug, slug, "client_secret")
            a["client_secret_env"] = name
            env.append(name)
        for key in ("redirect_uris", "post_logout_redirect_uris"):
            if getattr(r, key):
                a[key] = list(getattr(r, key))
        if r.grant_types and list(r.grant_types) != ["authorization_code"]:
            a["grant_types"] = list(r.grant_types)
        if list(r.scopes or []) != list(SCOPES):
            a["scopes"] = list(r.scopes or [])
        if r.backchannel_logout_uri:
            a["backchannel_logout_uri"] = r.backchannel_logout_uri
        if r.require_mfa:
            a["require_mfa"] = True
        if r.require_phishing_resistant_mfa:
            a["require_phishing_resistant_mfa"] = True
        if r.assigned_groups is not None:
            a["assigned_groups"] = list(r.assigned_groups)
        _launcher(a, r)
        if r.id_token_signed_response_alg and r.id_token_signed_response_alg != DEFAULT_ALG:
            a["id_token_signed_response_alg"] = r.id_token_signed_response_alg
        if r.token_endpoint_auth_method == "private_key_jwt":
            keys = db.get(OidcClientJwks, r.id)
            if keys is not None and keys.jwks:
                a["jwks"] = keys.jwks
            elif keys is not None and keys.jwks_uri:
                a["jwks_uri"] = keys.jwks_uri
        out.append(a)
    return out


def _saml_apps(db: Session, ws: Workspace) -> list[dict]:
    from saml.config import DEFAULT_ATTRIBUTES, NAMEID_EMAIL, SLO_BINDINGS, _sp_settings
    from saml.models import SamlServiceProvider
    from saml.xml import BINDING_REDIRECT

    bindings = {v: k for k, v in SLO_BINDINGS.items()}
    out = []
    for r in db.scalars(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == ws.id)
                        .order_by(SamlServiceProvider.entity_id)):
        a: dict = {"slug": r.slug or "saml-app", "name": r.name or r.slug, "protocol": "saml"}
        if r.metadata_url and isinstance(r.app_settings, dict):
            # registered by metadata_url: the entry it was applied with (apply fetches the document again)
            from idp.configfile import APP_KEYS

            a.update({k: v for k, v in r.app_settings.items() if k in APP_KEYS and k not in a and v is not None
                      and k not in ("metadata_xml", "metadata_file")})
            a["metadata_url"] = r.metadata_url
            for key in ("show_in_launcher", "description"):  # as they are now (the API may have changed them)
                a.pop(key, None)
            _launcher(a, r)
            out.append(a)
            continue
        acs = [x["url"] for x in sorted(r.acs or [], key=lambda x: (not x.get("default"), x.get("index", 0)))]
        a.update({"entity_id": r.entity_id, "acs_url": acs if len(acs) != 1 else acs[0]})
        if r.certificate:
            a["certificate"] = r.certificate
        if r.slo_url:
            a["slo_url"] = r.slo_url
            if r.slo_binding in bindings and r.slo_binding != BINDING_REDIRECT:
                a["slo_binding"] = bindings[r.slo_binding]
        if r.encryption_certificate and r.encryption_certificate != r.certificate:
            a["encryption_certificate"] = r.encryption_certificate
        try:
            s = _sp_settings(a, None)
            says_it_all = all(s[k] == getattr(r, k) for k in ("entity_id", "acs", "certificate", "slo_url",
                                                              "slo_binding", "slo_soap_url",
                                                              "encryption_certificate"))
        except ValueError:
            says_it_all = False
        if not says_it_all:  # ACS indices, a SOAP logout endpoint, a signing-only certificate: only metadata can
            for k in ("entity_id", "acs_url", "certificate", "slo_url", "slo_binding", "encryption_certificate"):
                a.pop(k, None)
            a["metadata_xml"] = sp_metadata_xml(r)
        if r.nameid_format != NAMEID_EMAIL:
            a["nameid_format"] = r.nameid_format
        if dict(r.attributes or {}) != DEFAULT_ATTRIBUTES:
            a["attributes"] = dict(r.attributes or {})
        if r.sign_response:
            a["sign_response"] = True
        if not r.sign_assertion:
            a["sign_assertion"] = False
        if r.require_signed_requests:  # the default (entity_id form, and the metadata written here) is false
            a["require_signed_requests"] = True
        for key in ("encrypt_assertions", "require_mfa", "require_phishing_resistant_mfa", "idp_initiated"):
            if getattr(r, key):
                a[key] = True
        if r.assigned_groups is not None:
            a["assigned_groups"] = list(r.assigned_groups)
        _launcher(a, r)
        out.append(a)
    return out


def _launcher(a: dict, r) -> None:
    """The launcher settings that differ from the defaults, and the app's place in it (for the order, popped)."""
    if r.show_in_launcher is False:
        a["show_in_launcher"] = False
    if r.description:
        a["description"] = r.description
    if getattr(r, "initiate_login_uri", None):
        a["initiate_login_uri"] = r.initiate_login_uri
    a[POSITION] = (r.launcher_position is None, r.launcher_position or 0, r.created_at)


def sp_metadata_xml(r) -> str:
    """An SP's stored registration as the metadata document ``saml.config.parse_sp_metadata`` reads back into
    exactly that registration (ACS endpoints with their indices, certificates by use, logout endpoints)."""
    from xml.sax.saxutils import quoteattr

    from saml.xml import BINDING_POST, BINDING_SOAP, NS, pem_body

    def key(use: str | None, pem: str) -> str:
        attr = f" use={quoteattr(use)}" if use else ""
        return (f"    <md:KeyDescriptor{attr}><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{pem_body(pem)}"
                "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>")

    lines = [f'<md:EntityDescriptor xmlns:md="{NS["md"]}" xmlns:ds="{NS["ds"]}" entityID={quoteattr(r.entity_id)}>',
             f'  <md:SPSSODescriptor protocolSupportEnumeration="{NS["samlp"]}">']
    if r.certificate and r.encryption_certificate == r.certificate:
        lines.append(key(None, r.certificate))
    else:
        if r.certificate:
            lines.append(key("signing", r.certificate))
        if r.encryption_certificate:
            lines.append(key("encryption", r.encryption_certificate))
    for binding, url in ((r.slo_binding, r.slo_url), (BINDING_SOAP, r.slo_soap_url)):
        if url and binding:
            lines.append(f"    <md:SingleLogoutService Binding={quoteattr(binding)} Location={quoteattr(url)}/>")
    for x in r.acs or []:
        lines.append(f'    <md:AssertionConsumerService Binding="{BINDING_POST}" Location={quoteattr(x["url"])} '
                     f'index="{int(x.get("index", 0))}" isDefault="{"true" if x.get("default") else "false"}"/>')
    lines += ["  </md:SPSSODescriptor>", "</md:EntityDescriptor>", ""]
    return "\n".join(lines)


def _connections(db: Session, ws: Workspace, env: list[str]) -> list[dict]:
    from federation.models import FederationConnection

    out = []
    for r in db.scalars(select(FederationConnection).where(FederationConnection.workspace_id == ws.id)
                        .order_by(FederationConnection.slug)):
        c = connection_entry(r)
        for key in sorted(r.secrets or {}):
            name = env_name("connection", ws.slug, r.slug, key)
            c[f"{key}_env"] = name
            env.append(name)
        out.append(c)
    return out


def connection_entry(r) -> dict:
    """A stored connection as the config-file entry an admin would write: only keys the validator accepts for
    its protocol, ``metadata_url`` (not the copy of its document) when the metadata comes from a URL, and no key
    whose removal leaves the validated settings unchanged (defaults). Decided by ``federation.config``'s own
    validator, fed the stored metadata instead of fetching it."""
    from federation.config import COMMON_KEYS, PROTOCOL_KEYS, SECRET_KEYS

    settings = dict(r.settings or {})
    allowed = (COMMON_KEYS | PROTOCOL_KEYS.get(r.protocol, set())) - {"metadata_file", "attribute_mapping",
                                                                      *SECRET_KEYS}
    entry: dict = {"slug": r.slug, "name": r.name, "protocol": r.protocol, "preset": r.preset or "generic",
                   "domains": list(r.domains or [])}
    entry.update({k: v for k, v in settings.items() if k in allowed and k not in entry and v is not None})
    if settings.get("metadata_url"):
        entry.pop("metadata_xml", None)
    placeholders = {k: "(set)" for k in (r.secrets or {}) if k in SECRET_KEYS}
    xml = settings.get("metadata_xml")

    def check(candidate: dict) -> tuple[dict, set[str]]:
        from federation.config import validate_connection
        from idp.configfile import Validator

        v = Validator()

        def fetch(_url):
            if xml is None:
                raise ValueError("no stored copy")
            return xml

        got = validate_connection(v, {**candidate, **placeholders}, "c", fetch=fetch)
        return {k: val for k, val in got.items() if k not in SECRET_KEYS}, set(v.errors)

    want, errors = check(entry)
    for key in [k for k in entry if k not in ("slug", "name", "protocol")]:
        trial = {k: v for k, v in entry.items() if k != key}
        got, trial_errors = check(trial)
        if got == want and trial_errors <= errors:
            entry, errors = trial, trial_errors
    order = ["slug", "name", "protocol", "preset", "domains", *want]
    return {k: entry[k] for k in sorted(entry, key=lambda k: order.index(k) if k in order else len(order))}


def _scim_tokens(db: Session, ws: Workspace, env: list[str]) -> list[dict]:
    from scim.models import ScimToken

    out = []
    for t in db.scalars(select(ScimToken).where(ScimToken.workspace_id == ws.id, ScimToken.revoked_at.is_(None))
                        .order_by(ScimToken.name)):
        name = env_name("scim", ws.slug, t.name, "token")
        entry: dict = {"name": t.name, "token_env": name}
        if t.read_only:
            entry["read_only"] = True
        env.append(name)
        out.append(entry)
    return out
