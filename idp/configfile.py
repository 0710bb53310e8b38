"""The config file (`idhub apply`): validate everything first, name each error by its path, then apply
all of it in one transaction — or nothing. Plain Python."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from idp import invalidation, lifecycle, passwords
from idp.accounts import INVALID_EMAIL, PLANS, ROLES, SLUG_RE, InvalidEmail, normalise_email, parse_email
from idp.models import Group, GroupMember, User, Workspace, utcnow

MFA_METHODS = ("totp", "sms", "backup_codes", "webauthn")
DURATION_RE = re.compile(r"^(\d{1,9})([smhdw]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_FILE = 5 * 1024 * 1024


class ConfigError(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Validator:
    errors: list[str] = field(default_factory=list)

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}")

    def mapping(self, value, path: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict | None:
        if not isinstance(value, dict):
            self.err(path, "must be a mapping")
            return None
        for k in value:
            if k not in allowed:
                self.err(f"{path}.{k}", "unknown key")
        for k in required:
            if k not in value or value[k] in (None, ""):
                self.err(f"{path}.{k}", "required")
        return value

    def seq(self, value, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.err(path, "must be a list")
            return []
        return value

    def string(self, value, path: str, max_len: int = 200) -> str | None:
        if not isinstance(value, str):
            self.err(path, "must be a string")
            return None
        if len(value) > max_len:
            self.err(path, f"longer than {max_len} characters")
            return None
        if any(ord(c) < 0x20 and c not in "\t" for c in value):
            self.err(path, "contains control characters")
            return None
        return value

    def boolean(self, value, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.err(path, "must be true or false")
            return None
        return value

    def url(self, value, path: str, schemes=("http", "https")) -> str | None:
        s = self.string(value, path, 2048)
        if s is None:
            return None
        parts = urlsplit(s)
        if parts.scheme not in schemes or not parts.netloc:
            self.err(path, "not an absolute URL")
            return None
        if parts.fragment:
            self.err(path, "must not contain a fragment")
            return None
        return s

    def duration(self, value, path: str) -> int | None:
        if isinstance(value, bool):
            self.err(path, "must be a duration such as 30d, 12h or 900s")
            return None
        if isinstance(value, int):
            seconds = value
        else:
            m = DURATION_RE.match(str(value).strip()) if isinstance(value, str) else None
            if not m:
                self.err(path, "must be a duration such as 30d, 12h or 900s")
                return None
            seconds = int(m.group(1)) * UNITS[m.group(2)]
        if seconds < 60 or seconds > 400 * 86400:
            self.err(path, "must be between 1 minute and 400 days")
            return None
        return seconds


def validate_cidr(v: Validator, value, path: str) -> str | None:
    s = v.string(value, path, 64)
    if s is None:
        return None
    try:
        net = ipaddress.ip_network(s.strip(), strict=True)
    except ValueError as exc:
        msg = "has host bits set (use the network address)" if "host bits" in str(exc) else "not a valid CIDR"
        v.err(path, msg)
        return None
    if net.prefixlen == 0:
        v.err(path, "over-broad: /0 allows every address; leave the list empty for no restriction")
        return None
    if net.version == 6 and net.prefixlen < 16 or net.version == 4 and net.prefixlen < 8:
        v.err(path, "over-broad: shorter than /8 (IPv4) or /16 (IPv6)")
        return None
    return str(net)


def _policies(v: Validator, raw, path: str, plan: str | None) -> dict:
    raw = v.mapping(raw or {}, path, {"require_mfa", "mfa_methods", "ip_allowlist", "session_idle_timeout",
                                      "session_max_lifetime", "require_mfa_for_admins",
                                      "require_phishing_resistant_mfa", "require_phishing_resistant_mfa_for_admins"})
    if raw is None:
        return {}
    out: dict = {}
    if "require_mfa" in raw:
        out["require_mfa"] = v.boolean(raw["require_mfa"], f"{path}.require_mfa")
    if "require_mfa_for_admins" in raw:  # default true (policies/engine.py): admins use 2FA unless turned off
        out["require_mfa_for_admins"] = v.boolean(raw["require_mfa_for_admins"], f"{path}.require_mfa_for_admins")
    for key in ("require_phishing_resistant_mfa", "require_phishing_resistant_mfa_for_admins"):
        if key in raw:  # a passkey or security key (WebAuthn) at every sign-in (of everyone; of admins)
            out[key] = v.boolean(raw[key], f"{path}.{key}")
    if "mfa_methods" in raw:
        methods = v.seq(raw["mfa_methods"], f"{path}.mfa_methods")
        for i, m in enumerate(methods):
            if m not in MFA_METHODS:
                v.err(f"{path}.mfa_methods[{i}]", f"must be one of {', '.join(MFA_METHODS)}")
        if isinstance(raw["mfa_methods"], list) and not methods:
            v.err(f"{path}.mfa_methods", "must allow at least one method")
        out["mfa_methods"] = list(dict.fromkeys(methods))
        if isinstance(raw["mfa_methods"], list) and "webauthn" not in methods and (
                out.get("require_phishing_resistant_mfa") or out.get("require_phishing_resistant_mfa_for_admins")):
            v.err(f"{path}.mfa_methods", "must allow webauthn where phishing-resistant MFA is required")
    if "ip_allowlist" in raw:
        nets = [validate_cidr(v, c, f"{path}.ip_allowlist[{i}]")
                for i, c in enumerate(v.seq(raw["ip_allowlist"], f"{path}.ip_allowlist"))]
        if nets and plan != "enterprise":
            v.err(f"{path}.ip_allowlist", "IP allowlisting needs the enterprise plan")
        out["ip_allowlist"] = [n for n in nets if n]
    for key in ("session_idle_timeout", "session_max_lifetime"):
        if key in raw:
            out[key] = v.duration(raw[key], f"{path}.{key}")
    if out.get("session_idle_timeout") and out.get("session_max_lifetime") and \
            out["session_idle_timeout"] > out["session_max_lifetime"]:
        v.err(f"{path}.session_idle_timeout", "must not be longer than session_max_lifetime")
    return out


APP_KEYS = {"slug", "name", "protocol", "client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris",
            "backchannel_logout_uri", "grant_types", "metadata_xml", "metadata_file", "metadata_url",
            "nameid_format", "attributes", "entity_id", "acs_url", "certificate", "scopes",
            "token_endpoint_auth_method", "require_mfa", "require_phishing_resistant_mfa", "idp_initiated", "jwks",
            "jwks_uri",
            "require_signed_requests", "sign_response", "sign_assertion", "slo_url", "slo_binding",
            "id_token_signed_response_alg",
            "encrypt_assertions", "encryption_certificate", "client_secret_env", "assigned_groups",
            "show_in_launcher", "description", "initiate_login_uri"}
CONNECTION_KEYS = {"slug", "name", "protocol", "preset", "metadata_file", "metadata_url", "metadata_xml", "domains",
                   "issuer", "client_id", "client_secret", "url", "bind_dn", "bind_password", "user_search_base",
                   "user_filter", "group_search_base", "trust_mfa", "attribute_mapping", "allowed_tenants",
                   "start_tls", "allow_unsolicited", "client_secret_env", "bind_password_env"}
# federation.config adds the optional per-protocol keys it validates (certs, jit, sso_required, attribute_map, …)
from federation.config import ALL_KEYS as _FEDERATION_KEYS  # noqa: E402

CONNECTION_KEYS = CONNECTION_KEYS | _FEDERATION_KEYS


APP_STRING_KEYS = ("slug", "name", "protocol", "client_id", "entity_id", "certificate", "encryption_certificate",
                   "metadata_xml", "metadata_file", "metadata_url", "nameid_format", "slo_url", "slo_binding",
                   "token_endpoint_auth_method", "backchannel_logout_uri", "jwks_uri", "id_token_signed_response_alg",
                   "description", "initiate_login_uri")


def _strings(v: Validator, entry: dict, path: str, keys) -> bool:
    """False (with an error each) when one of ``keys`` holds something other than a string: the entry is then not
    looked at further, so that no later check trips over a list or a number."""
    ok = True
    for key in keys:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            v.err(f"{path}.{key}", "must be a string")
            ok = False
    return ok


def secrets_from_env(v: Validator, entry: dict, path: str, keys: tuple[str, ...]) -> None:
    """``KEY_env: VARIABLE`` reads a secret from the environment (what ``idhub export-config`` writes in place of
    secrets, so that an exported file can be committed and applied again)."""
    import os

    for key in keys:
        name = entry.get(f"{key}_env")
        if name is None:
            continue
        if entry.get(key) is not None:
            v.err(f"{path}.{key}_env", f"give {key} or {key}_env, not both")
        elif not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", name):
            v.err(f"{path}.{key}_env", "must be the name of an environment variable")
        elif os.environ.get(name) is None:
            v.err(f"{path}.{key}_env", f"environment variable {name!r} is not set")
        else:
            entry[key] = os.environ[name]
        entry.pop(f"{key}_env", None)


def check_assigned_groups(v: Validator, value, path: str, groups) -> None:
    """``apps[].assigned_groups``: absent (None) or a list of distinct names of the workspace's groups (``groups``;
    None: only the shape is checked). Groups are per workspace: another workspace's group is simply unknown."""
    if value is None:
        return
    if not isinstance(value, list):
        v.err(path, "must be a list of group names")
        return
    seen = set()
    for k, name in enumerate(value):
        if not isinstance(name, str) or not name:
            v.err(f"{path}[{k}]", "must be a group name")
            continue
        if name in seen:
            v.err(f"{path}[{k}]", f"duplicate group {name!r}")
        elif groups is not None and name not in groups:
            v.err(f"{path}[{k}]", f"unknown group {name!r} (declare it under groups)")
        seen.add(name)


def _apps(v: Validator, raw, path: str, groups=None) -> list[dict]:
    """``groups``: the workspace's group names, which ``assigned_groups`` may name (None: not checked here)."""
    def _client_jwks(jwks, path: str) -> None:
        """An app's inline JWKS (private_key_jwt): public RSA or P-256 keys only, usable with RS256 or ES256."""
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not keys:
            v.err(path, "must be a JWKS: a mapping with a non-empty list of keys")
            return
        for j, k in enumerate(keys):
            kp = f"{path}.keys[{j}]"
            if not isinstance(k, dict):
                v.err(kp, "must be a mapping (a JWK)")
                continue
            if {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(k):
                v.err(kp, "must be a public key (no private or symmetric key material)")
                continue
            if k.get("kty") not in ("RSA", "EC") or (k.get("kty") == "EC" and k.get("crv") != "P-256"):
                v.err(kp, "must be an RSA or an EC P-256 public key")
                continue
            if k.get("alg") not in (None, "RS256", "ES256") or k.get("use") not in (None, "sig"):
                v.err(kp, "alg must be RS256 or ES256 and use sig")
                continue
            try:
                from joserfc import jwk

                jwk.import_key(k)
            except Exception:
                v.err(kp, "is not a valid JWK")

    out = []
    slugs = set()
    for i, app in enumerate(v.seq(raw, path)):
        p = f"{path}[{i}]"
        app = v.mapping(app, p, APP_KEYS, ("slug", "name", "protocol"))
        if app is None:
            continue
        secrets_from_env(v, app, p, ("client_secret",))
        if not _strings(v, app, p, APP_STRING_KEYS):
            continue
        acs = app.get("acs_url")
        if acs is not None and not (isinstance(acs, str) or isinstance(acs, list) and acs
                                    and all(isinstance(u, str) for u in acs)):
            v.err(f"{p}.acs_url", "must be a URL or a list of URLs")
            continue
        slug = app.get("slug")
        if isinstance(slug, str) and not SLUG_RE.match(slug):
            v.err(f"{p}.slug", "must match [a-z0-9-]+")
        if slug in slugs:
            v.err(f"{p}.slug", "duplicate")
        slugs.add(slug)
        proto = app.get("protocol")
        if proto not in ("oidc", "saml"):
            v.err(f"{p}.protocol", "must be oidc or saml")
        check_assigned_groups(v, app.get("assigned_groups"), f"{p}.assigned_groups", groups)
        if app.get("show_in_launcher") is not None:
            v.boolean(app["show_in_launcher"], f"{p}.show_in_launcher")
        if app.get("require_phishing_resistant_mfa") is not None:
            v.boolean(app["require_phishing_resistant_mfa"], f"{p}.require_phishing_resistant_mfa")
        if app.get("description") is not None and len(app["description"]) > 300:
            v.err(f"{p}.description", "must be at most 300 characters")
        if app.get("initiate_login_uri") is not None:
            if proto != "oidc":
                v.err(f"{p}.initiate_login_uri", "is for OIDC apps (a SAML app opens by idp_initiated)")
            elif v.url(app["initiate_login_uri"], f"{p}.initiate_login_uri") and \
                    not app["initiate_login_uri"].startswith("https://"):
                v.err(f"{p}.initiate_login_uri", "must be an https URL (OIDC Core 4)")
        if proto == "oidc":
            if not app.get("client_id"):
                v.err(f"{p}.client_id", "required")
            for key in ("redirect_uris", "post_logout_redirect_uris"):
                for j, u in enumerate(v.seq(app.get(key), f"{p}.{key}")):
                    v.url(u, f"{p}.{key}[{j}]")
            if app.get("backchannel_logout_uri") is not None:
                v.url(app["backchannel_logout_uri"], f"{p}.backchannel_logout_uri")
            method = app.get("token_endpoint_auth_method")
            if method is not None and method not in ("client_secret_basic", "client_secret_post", "private_key_jwt",
                                                     "none"):
                v.err(f"{p}.token_endpoint_auth_method",
                      "must be client_secret_basic, client_secret_post, private_key_jwt or none")
            if method == "none" and app.get("client_secret"):
                v.err(f"{p}.client_secret", "a public client (token_endpoint_auth_method: none) has no secret")
            if method == "private_key_jwt":
                if app.get("client_secret") is not None:
                    v.err(f"{p}.client_secret", "a private_key_jwt client has no secret (it signs with its key)")
                if (app.get("jwks") is None) == (app.get("jwks_uri") is None):
                    v.err(p, "a private_key_jwt client needs exactly one of jwks or jwks_uri")
                if app.get("jwks") is not None:
                    _client_jwks(app["jwks"], f"{p}.jwks")
                if app.get("jwks_uri") is not None and v.url(app["jwks_uri"], f"{p}.jwks_uri"):
                    from oidc.config import jwks_uri_problem

                    if problem := jwks_uri_problem(app["jwks_uri"]):
                        v.err(f"{p}.jwks_uri", problem)
            elif app.get("jwks") is not None or app.get("jwks_uri") is not None:
                v.err(p, "jwks and jwks_uri are for token_endpoint_auth_method: private_key_jwt")
            if app.get("id_token_signed_response_alg") not in (None, "RS256", "ES256"):
                v.err(f"{p}.id_token_signed_response_alg", "must be RS256 or ES256")
            for j, sc in enumerate(v.seq(app.get("scopes"), f"{p}.scopes")):
                if sc not in ("openid", "profile", "email", "groups", "offline_access"):
                    v.err(f"{p}.scopes[{j}]", "must be one of openid, profile, email, groups, offline_access")
            secret = app.get("client_secret")
            if secret is not None and (not isinstance(secret, str) or len(secret) < 32):
                v.err(f"{p}.client_secret", "must be a string of at least 32 characters (use a random value)")
            for j, gt in enumerate(v.seq(app.get("grant_types"), f"{p}.grant_types")):
                if gt not in ("authorization_code", "refresh_token", "client_credentials"):
                    v.err(f"{p}.grant_types[{j}]", "must be authorization_code, refresh_token or client_credentials")
        if proto == "saml":
            if not any(app.get(k) for k in ("metadata_xml", "metadata_file", "metadata_url", "entity_id")):
                v.err(p, "needs metadata_xml, metadata_file, metadata_url, or entity_id with acs_url")
            if app.get("metadata_url") is not None:
                v.url(app["metadata_url"], f"{p}.metadata_url")
        out.append(app)
    return out


def _connections(v: Validator, raw, path: str, plan: str | None, base_dir: str | None = None,
                 fetch=None) -> list[dict]:
    from federation.config import check_domains, validate_connection

    out = []
    slugs = set()
    for i, c in enumerate(v.seq(raw, path)):
        p = f"{path}[{i}]"
        c = v.mapping(c, p, CONNECTION_KEYS, ("slug", "name", "protocol"))
        if c is None:
            continue
        secrets_from_env(v, c, p, ("client_secret", "bind_password"))
        if not _strings(v, c, p, ("slug", "name", "protocol", "preset")):
            continue
        if c.get("slug") in slugs:
            v.err(f"{p}.slug", "duplicate")
        slugs.add(c.get("slug"))
        proto = c.get("protocol")
        if proto not in ("saml", "oidc", "ldap"):
            v.err(f"{p}.protocol", "must be saml, oidc or ldap")
        if c.get("preset", "generic") not in ("okta", "azure_ad", "generic"):
            v.err(f"{p}.preset", "must be okta, azure_ad or generic")
        if proto == "oidc" and c.get("issuer") is not None:
            v.url(c["issuer"], f"{p}.issuer")
        if proto == "ldap" and c.get("url") is not None:
            v.url(c["url"], f"{p}.url", schemes=("ldap", "ldaps"))
        if plan != "enterprise":
            v.err(p, "single sign-on connections need the enterprise plan")
        out.append(validate_connection(v, c, p, Path(base_dir) if base_dir else None,
                                       **({"fetch": fetch} if fetch is not None else {})))
    check_domains(v, out, path)
    return out


def validate_user(v: Validator, u, up: str, groups: list[str], emails: set[str]) -> dict | None:
    """One ``users`` entry (also the admin API's user bodies): errors go to ``v`` under ``up``; ``emails``
    collects the normalised addresses seen so far (duplicates are errors)."""
    u = v.mapping(u, up, {"email", "name", "password", "password_hash", "groups", "role", "active"},
                  ("email",))
    if u is None:
        return None
    try:
        email, key = parse_email(u.get("email"))
        if key in emails:
            v.err(f"{up}.email", "duplicate (addresses are compared case-insensitively)")
        emails.add(key)
    except InvalidEmail as exc:  # the specific reason (invisible characters, a trailing dot, …) when there is one
        v.err(f"{up}.email", "not a valid email address" + ("" if str(exc) == INVALID_EMAIL else f": {exc}"))
        email = None
    if u.get("name") is not None:
        v.string(u["name"], f"{up}.name")
    if u.get("password") is not None and u.get("password_hash") is not None:
        v.err(up, "give password or password_hash, not both")
    if u.get("password") is not None:
        pw = v.string(u["password"], f"{up}.password", passwords.MAX_LENGTH)
        if pw is not None:
            for rule in passwords.check(pw, email=email):
                v.err(f"{up}.password", f"breaks a password rule: {rule.text}")
    if u.get("password_hash") is not None:
        h = v.string(u["password_hash"], f"{up}.password_hash", 255)
        if h is not None and not h.startswith("$argon2id$"):
            v.err(f"{up}.password_hash", "must be an argon2id hash ($argon2id$…)")
    if u.get("role", "member") not in ROLES:
        v.err(f"{up}.role", f"must be one of {', '.join(ROLES)}")
    if "active" in u:
        v.boolean(u["active"], f"{up}.active")
    for k, gname in enumerate(v.seq(u.get("groups"), f"{up}.groups")):
        if gname not in groups:
            v.err(f"{up}.groups[{k}]", f"unknown group {gname!r} (declare it under groups)")
    return {**u, "email": email}


def validate(doc, base_dir: str | None = None) -> list[dict]:
    """Validate a whole config document; raise ConfigError listing every problem by path."""
    v = Validator()
    doc = v.mapping(doc, "(root)", {"workspaces"}, ("workspaces",))
    workspaces = []
    seen_slugs: set[str] = set()
    for i, raw in enumerate(v.seq(doc.get("workspaces") if doc else None, "workspaces")):
        p = f"workspaces[{i}]"
        ws = v.mapping(raw, p, {"slug", "name", "plan", "domains", "policies", "groups", "users", "apps",
                                "connections", "scim_tokens"}, ("slug", "name"))
        if ws is None:
            continue
        slug = v.string(ws.get("slug"), f"{p}.slug", 63) if ws.get("slug") is not None else None
        if slug is not None and not SLUG_RE.match(slug):
            v.err(f"{p}.slug", "must match [a-z0-9-]+ (1-63 characters, no leading or trailing '-')")
        if slug in seen_slugs:
            v.err(f"{p}.slug", "duplicate workspace slug")
        seen_slugs.add(slug)
        name = v.string(ws.get("name"), f"{p}.name") if ws.get("name") is not None else None
        plan = ws.get("plan", "free")
        if plan not in PLANS:
            v.err(f"{p}.plan", f"must be one of {', '.join(PLANS)}")
        domains = []
        for j, d in enumerate(v.seq(ws.get("domains"), f"{p}.domains")):
            d = v.string(d, f"{p}.domains[{j}]", 253)
            if d is not None and not re.match(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
                                               d.lower()):
                v.err(f"{p}.domains[{j}]", "not a domain name")
            elif d is not None:
                domains.append(d.lower())
        policies = _policies(v, ws.get("policies"), f"{p}.policies", plan)
        groups = []
        for j, g in enumerate(v.seq(ws.get("groups"), f"{p}.groups")):
            g = v.mapping(g, f"{p}.groups[{j}]", {"name"}, ("name",))
            if g and v.string(g.get("name"), f"{p}.groups[{j}].name") is not None:
                groups.append(g["name"])
        if len(set(groups)) != len(groups):
            v.err(f"{p}.groups", "duplicate group names")
        users = []
        emails: set[str] = set()
        for j, u in enumerate(v.seq(ws.get("users"), f"{p}.users")):
            u = validate_user(v, u, f"{p}.users[{j}]", groups, emails)
            if u is not None:
                users.append(u)
        apps = _apps(v, ws.get("apps"), f"{p}.apps", set(groups))
        from saml.config import saml_app_errors

        for j, app in enumerate(apps):
            for problem in saml_app_errors(app, Path(base_dir) if base_dir else None):
                v.err(f"{p}.apps[{j}]", problem)
        connections = _connections(v, ws.get("connections"), f"{p}.connections", plan, base_dir)
        from scim.config import validate_scim_tokens

        scim_tokens = v.seq(ws.get("scim_tokens"), f"{p}.scim_tokens")
        for j, t in enumerate(scim_tokens):
            v.mapping(t, f"{p}.scim_tokens[{j}]", {"name", "token", "token_env", "read_only"}, ("name",))
        v.errors.extend(validate_scim_tokens(scim_tokens, f"{p}.scim_tokens"))
        if scim_tokens and plan != "enterprise":
            v.err(f"{p}.scim_tokens", "SCIM provisioning needs the enterprise plan")
        workspaces.append({"slug": slug, "name": name, "plan": plan, "domains": domains, "policies": policies,
                           "groups": groups, "users": users, "apps": apps, "connections": connections,
                           "scim_tokens": scim_tokens, "base_dir": base_dir})
    if v.errors:
        raise ConfigError(v.errors)
    return workspaces


# The per-object validators, reused by the admin API (admin/service.py) so that it accepts exactly what
# `idhub apply` accepts.
validate_policies = _policies
validate_apps = _apps
validate_connections = _connections


def load_file(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    if len(data) > MAX_FILE:
        raise ConfigError([f"{path}: larger than {MAX_FILE // (1024 * 1024)} MiB"])
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from exc


CONFIG_ACTOR = lifecycle.Actor.config()


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deactivated: list[tuple[str, str]] = field(default_factory=list)  # (workspace id, user id) deactivated


# what a config file sets that serving processes cache (idp.invalidation); keys are never in the file
APPLIED_KINDS = (invalidation.SAML_APPS, invalidation.CONNECTIONS, invalidation.SCIM_TOKENS,
                 invalidation.WORKSPACES)


def apply_config(hub, workspaces: list[dict], before_logout=None) -> ApplyReport:
    """``apply`` as ``idhub apply`` runs it: accounts the file deactivates are deprovisioned through the account
    service (every session ended and the apps told first, then the file applied in one transaction), each with
    a ``config.user.deactivated`` event. ``before_logout()``: called once before the first session ends (the
    CLI installs the protocols' session-end listeners there)."""
    with hub.db() as session:
        targets = deactivations(session, workspaces)
    if targets and before_logout:
        before_logout()

    def write():
        with contextlib.ExitStack() as watches:  # who lost an app (groups, members, assignments) loses its grants
            with hub.db() as session:
                existing = list(session.scalars(select(Workspace.id).where(
                    Workspace.slug.in_([w["slug"] for w in workspaces]))))
            for ws_id in existing:
                watches.enter_context(hub.app_access.watch(ws_id, "config_file"))
            with hub.db() as session:
                report = apply(session, workspaces, hub.hasher)
                session.commit()
        return report

    done = hub.accounts.deprovision(targets, "deactivated", write)
    report = done.result
    for kind in APPLIED_KINDS:  # every node forgets its copies of what the file may have changed
        hub.changed(kind, ",".join(w["slug"] for w in workspaces))
    for ws_id, user_id in report.deactivated:
        ended = done.per_user.get(user_id)
        if ended is None:  # deactivated by another write in between: its sessions end now
            if before_logout and not targets:
                before_logout()
            ended = hub.accounts.end_sessions(ws_id, user_id, "deactivated")
        hub.accounts.record(CONFIG_ACTOR, ws_id, "deactivated", user_id, sessions_ended=ended)
    return report


def deactivations(db: Session, workspaces: list[dict]) -> list[tuple[str, str]]:
    """(workspace id, user id) of the stored, active accounts that applying ``workspaces`` deactivates: their
    sessions end before the file is applied (``idp.lifecycle``'s deprovisioning order)."""
    out = []
    for w in workspaces:
        keys = [normalise_email(u["email"]) for u in w["users"] if u.get("active", True) is False]
        if keys:
            out += [(r.workspace_id, r.id) for r in db.execute(
                select(User.workspace_id, User.id).join(Workspace, Workspace.id == User.workspace_id)
                .where(Workspace.slug == w["slug"], User.email_normalized.in_(keys), User.active.is_(True)))]
    return out


def apply(db: Session, workspaces: list[dict], hasher: passwords.Hasher, *, secret_key: str | None = None
          ) -> ApplyReport:
    """Upsert validated workspaces. Idempotent; ``password`` is an initial password, set only on accounts that
    have none (a user's own change is never overwritten by re-applying the file)."""
    report = ApplyReport()
    for w in workspaces:
        ws = db.scalar(select(Workspace).where(Workspace.slug == w["slug"]))
        if ws is None:
            ws = Workspace(slug=w["slug"])
            db.add(ws)
            report.created.append(f"workspace {w['slug']}")
        ws.name, ws.plan, ws.domains, ws.policies = w["name"], w["plan"], w["domains"], w["policies"]
        db.flush()
        groups = {g.name: g for g in db.scalars(select(Group).where(Group.workspace_id == ws.id))}
        for name in w["groups"]:
            if name not in groups:
                groups[name] = Group(workspace_id=ws.id, name=name)
                db.add(groups[name])
                report.created.append(f"group {w['slug']}/{name}")
        db.flush()
        for u in w["users"]:
            key = normalise_email(u["email"])
            user = db.scalar(select(User).where(User.workspace_id == ws.id, User.email_normalized == key))
            new = user is None
            if new:
                user = User(workspace_id=ws.id, email="", email_normalized="", role="member", active=True)
                report.created.append(f"user {w['slug']}/{key}")
            active = u.get("active", True)
            if not new and user.active and not active:
                report.deactivated.append((ws.id, user.id))
            initial = user.password_hash is None  # an initial password never overwrites the user's own
            try:
                lifecycle.write(db, CONFIG_ACTOR, user, hasher=hasher, clock=utcnow, new=new, email=u["email"],
                                name=u.get("name") or user.name or "", role=u.get("role", "member"), active=active,
                                password=u.get("password") if initial else lifecycle.KEEP,
                                password_hash=u.get("password_hash") if initial and u.get("password") is None
                                else lifecycle.KEEP)
            except lifecycle.AccountError as exc:  # validate() checked the same rules: only a race gets here
                raise ConfigError([f"{w['slug']}: users: {key}: {exc.field}: {exc.message}"]) from None
            if new:
                db.add(user)
            db.flush()
            wanted = {groups[g].id for g in u.get("groups") or []}
            have = set(db.scalars(select(GroupMember.group_id).join(Group, Group.id == GroupMember.group_id)
                                  .where(GroupMember.user_id == user.id, Group.workspace_id == ws.id)))
            for gid in wanted - have:
                db.add(GroupMember(group_id=gid, user_id=user.id))
            if have - wanted:
                db.execute(delete(GroupMember).where(GroupMember.user_id == user.id,
                                                     GroupMember.group_id.in_(have - wanted)))
        from oidc.config import apply_oidc_apps
        from scim.config import apply_scim_tokens

        apply_oidc_apps(db, ws, w["apps"])
        from saml.config import apply_saml_apps

        apply_saml_apps(db, ws, w["apps"], base_dir=Path(w["base_dir"]) if w.get("base_dir") else None)
        apply_scim_tokens(db, ws, w["scim_tokens"])
        from federation.config import apply_connections

        if w.get("connections") and secret_key is None:  # `idhub apply`: the hub's master key, from the environment
            from config.settings import load_settings
            from idp.crypto import secret_keys

            secret_key = secret_keys(load_settings())
        report.created.extend(apply_connections(db, ws, w.get("connections") or [], secret_key or ""))
        report.updated.append(f"workspace {w['slug']}")
    return report
