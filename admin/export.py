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
    apps = _oidc_apps(db, ws, env) + _saml_apps(db, ws)
    if apps:
        out["apps"] = sorted(apps, key=lambda a: a["slug"])
    connections = _connections(db, ws, env)
    if connections:
        out["connections"] = connections
    tokens = _scim_tokens(db, ws, env)
    if tokens:
        out["scim_tokens"] = tokens
    return {"workspaces": [out]}, env


def _oidc_apps(db: Session, ws: Workspace, env: list[str]) -> list[dict]:
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
        for key in ("redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes"):
            if getattr(r, key):
                a[key] = list(getattr(r, key))
        if r.backchannel_logout_uri:
            a["backchannel_logout_uri"] = r.backchannel_logout_uri
        if r.require_mfa:
            a["require_mfa"] = True
        if r.token_endpoint_auth_method == "private_key_jwt":
            keys = db.get(OidcClientJwks, r.id)
            if keys is not None and keys.jwks:
                a["jwks"] = keys.jwks
            elif keys is not None and keys.jwks_uri:
                a["jwks_uri"] = keys.jwks_uri
        out.append(a)
    return out


def _saml_apps(db: Session, ws: Workspace) -> list[dict]:
    from saml.config import SLO_BINDINGS
    from saml.models import SamlServiceProvider

    bindings = {v: k for k, v in SLO_BINDINGS.items()}
    out = []
    for r in db.scalars(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == ws.id)
                        .order_by(SamlServiceProvider.entity_id)):
        acs = [a["url"] for a in sorted(r.acs or [], key=lambda a: (not a.get("default"), a.get("index", 0)))]
        a: dict = {"slug": r.slug or "saml-app", "name": r.name or r.slug, "protocol": "saml",
                   "entity_id": r.entity_id, "acs_url": acs if len(acs) != 1 else acs[0],
                   "nameid_format": r.nameid_format, "attributes": dict(r.attributes or {}),
                   "sign_response": bool(r.sign_response), "sign_assertion": bool(r.sign_assertion),
                   "require_signed_requests": bool(r.require_signed_requests)}
        if r.certificate:
            a["certificate"] = r.certificate
        if r.slo_url:
            a["slo_url"] = r.slo_url
            if r.slo_binding in bindings:
                a["slo_binding"] = bindings[r.slo_binding]
        if r.encryption_certificate and r.encryption_certificate != r.certificate:
            a["encryption_certificate"] = r.encryption_certificate
        for key in ("encrypt_assertions", "require_mfa", "idp_initiated"):
            if getattr(r, key):
                a[key] = True
        out.append(a)
    return out


def _connections(db: Session, ws: Workspace, env: list[str]) -> list[dict]:
    from federation.models import FederationConnection
    from idp.configfile import CONNECTION_KEYS

    out = []
    for r in db.scalars(select(FederationConnection).where(FederationConnection.workspace_id == ws.id)
                        .order_by(FederationConnection.slug)):
        c: dict = {"slug": r.slug, "name": r.name, "protocol": r.protocol, "preset": r.preset}
        if r.domains:
            c["domains"] = list(r.domains)
        c.update({k: v for k, v in (r.settings or {}).items()
                  if k in CONNECTION_KEYS and k not in c and not k.endswith("_env") and v is not None})
        for key in sorted(r.secrets or {}):
            name = env_name("connection", ws.slug, r.slug, key)
            c[f"{key}_env"] = name
            env.append(name)
        out.append(c)
    return out


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
