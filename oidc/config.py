"""Downstream OIDC clients from the config file's ``apps`` entries (``protocol: oidc``)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from sqlalchemy import bindparam, or_, select

from oidc.keys import ALGORITHMS, DEFAULT_ALG
from oidc.models import OidcClient, OidcClientJwks

SCOPES = ("openid", "profile", "email", "groups", "offline_access")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
DEFAULT_CONFIDENTIAL = "client_secret_basic,client_secret_post"
# The key of an app entry (and the column of ``oidc_clients``) saying the admin API or console registered the client
# (or last changed its backchannel_logout_uri): "api". Its jwks_uri and backchannel_logout_uri are then called
# through ``idp.netfetch``'s SSRF checks; config-file clients (the trusted operator) keep plain requests.
REGISTERED_VIA = "registered_via"


def guarded(row) -> bool:
    """Whether idhub calls the client's URLs (jwks_uri, backchannel_logout_uri) through ``idp.netfetch``."""
    return getattr(row, REGISTERED_VIA, None) == "api"


def jwks_uri_problem(uri: str) -> str | None:
    """Why a client's ``jwks_uri`` is not acceptable (None when it is): https, or plain http on loopback only
    (a key server on the same machine); no credentials in the URL, no fragment."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises on a bad port)
    except (ValueError, TypeError):
        return "not a valid URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if parts.fragment:
        return "must not contain a fragment"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    return "must be an https URL (plain http only on a loopback address)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_hash(secret: str) -> str:
    """Client secrets are high-entropy: a plain SHA-256 is enough, and it is compared in constant time."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_secret(stored: str | None, presented: str | None) -> bool:
    if not stored or not presented or len(presented) > 512:
        return False
    return hmac.compare_digest(stored.encode(), secret_hash(presented).encode())


def apply_oidc_apps(db, workspace, apps: list[dict]) -> None:
    """Upsert the workspace's OIDC apps by ``client_id``. Apps removed from the file are left alone.

    ``apps`` are validated entries (``idp.configfile._apps``); SAML apps in the list are skipped."""
    for position, app in enumerate(apps):
        if app.get("protocol") != "oidc" or not app.get("client_id"):
            continue
        client_id = str(app["client_id"])
        row = db.scalar(select(OidcClient).where(OidcClient.workspace_id == workspace.id,
                                                 OidcClient.client_id == client_id))
        if row is None:
            row = OidcClient(workspace_id=workspace.id, client_id=client_id)
            db.add(row)
        secret = app.get("client_secret")
        row.slug = app.get("slug") or ""
        row.name = app.get("name") or ""
        row.secret_hash = secret_hash(str(secret)) if secret else None
        method = app.get("token_endpoint_auth_method")
        if method == "private_key_jwt":
            row.secret_hash = None  # RFC 7523: the client proves itself with a signed assertion, never a secret
        elif not secret:
            method = "none"  # a public client: PKCE only
        elif method not in ("client_secret_basic", "client_secret_post"):
            method = DEFAULT_CONFIDENTIAL  # not named in the file: either, but still one per request
        row.token_endpoint_auth_method = method
        row.redirect_uris = list(app.get("redirect_uris") or [])
        row.post_logout_redirect_uris = list(app.get("post_logout_redirect_uris") or [])
        row.backchannel_logout_uri = app.get("backchannel_logout_uri") or None
        row.registered_via = "api" if app.get(REGISTERED_VIA) == "api" else None  # the config file: None
        grants = [g for g in (app.get("grant_types") or ["authorization_code"]) if g in GRANT_TYPES]
        if method == "none":
            grants = [g for g in grants if g != "client_credentials"]  # a public client cannot authenticate
        row.grant_types = grants
        scopes = app.get("scopes")
        row.scopes = [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else list(SCOPES)
        row.require_mfa = bool(app.get("require_mfa"))
        row.require_phishing_resistant_mfa = bool(app.get("require_phishing_resistant_mfa"))
        row.assigned_groups = list(app["assigned_groups"]) if app.get("assigned_groups") is not None else None
        row.show_in_launcher = app.get("show_in_launcher") is not False
        row.description = app.get("description") or None
        row.initiate_login_uri = app.get("initiate_login_uri") or None
        if app.get(REGISTERED_VIA) != "api":  # the config file's order is the launcher's; API apps come after
            row.launcher_position = position
        alg = app.get("id_token_signed_response_alg") or DEFAULT_ALG
        row.id_token_signed_response_alg = alg if alg in ALGORITHMS else DEFAULT_ALG
        if method == "private_key_jwt":
            db.flush()  # the row's id
            keys = db.get(OidcClientJwks, row.id)
            if keys is None:
                keys = OidcClientJwks(client_pk=row.id)
                db.add(keys)
            keys.jwks = app.get("jwks") if isinstance(app.get("jwks"), dict) else None
            keys.jwks_uri = app.get("jwks_uri") or None
    db.flush()


def client_jwks(db, client: OidcClient) -> OidcClientJwks | None:
    """The registered keys of a ``private_key_jwt`` client (None for any other client)."""
    if client.token_endpoint_auth_method != "private_key_jwt":
        return None
    return db.get(OidcClientJwks, client.id)


def find_client(db, workspace_id: str, client_id: str | None) -> OidcClient | None:
    if not client_id or not isinstance(client_id, str) or len(client_id) > 128:
        return None
    return db.scalar(select(OidcClient).where(OidcClient.workspace_id == workspace_id,
                                              OidcClient.client_id == client_id))


_APP_POLICIES = select(OidcClient.client_id, OidcClient.require_mfa, OidcClient.require_phishing_resistant_mfa,
                       OidcClient.assigned_groups).where(
    OidcClient.workspace_id == bindparam("w"), or_(OidcClient.client_id == bindparam("a"),
                                                   OidcClient.slug == bindparam("a")))


def app_policy_lookup(hub):
    """For ``hub.app_policy_lookups``: the per-app policy overrides of an OIDC client (by client_id or slug)."""

    def lookup(ws, app: str):
        if not app or not isinstance(app, str) or len(app) > 128:
            return None
        with hub.read() as conn:  # by client_id or by slug, in one prebuilt query; a client_id match wins
            rows = conn.execute(_APP_POLICIES, {"w": ws.id, "a": app}).all()
        if not rows:
            return None
        row = next((r for r in rows if r.client_id == app), rows[0])
        return client_policies(row)

    return lookup


def client_policies(row) -> dict:
    """The per-app policies of an OIDC client row (``require_mfa``, ``assigned_groups``) for the policy engine."""
    out: dict = {"require_mfa": True} if row.require_mfa else {}
    if getattr(row, "require_phishing_resistant_mfa", False):
        out["require_phishing_resistant_mfa"] = True
    if row.assigned_groups is not None:
        out["assigned_groups"] = list(row.assigned_groups)
    return out


def assigned_apps(db, ws_id: str) -> list:
    """For ``hub.app_access.readers``: the workspace's OIDC clients and their assignments."""
    from idp.assignments import App

    return [App("oidc", r.client_id, r.slug or r.client_id, None if r.assigned_groups is None
                else tuple(r.assigned_groups))
            for r in db.execute(select(OidcClient.client_id, OidcClient.slug, OidcClient.assigned_groups)
                                .where(OidcClient.workspace_id == ws_id))]


def launcher_entries(hub):
    """For ``hub.launcher.readers``: the workspace's OIDC clients as launcher tiles (``idp.launcher``)."""
    def read(db, ws) -> list:
        from idp.launcher import Entry, oidc_url

        issuer = hub.url(f"/w/{ws.slug}")
        out = []
        for r in db.scalars(select(OidcClient).where(OidcClient.workspace_id == ws.id, OidcClient.slug != "")):
            url = oidc_url(r.initiate_login_uri, r.redirect_uris, issuer)
            out.append(Entry("oidc", r.slug, r.name or "", None if r.assigned_groups is None
                             else tuple(r.assigned_groups), r.show_in_launcher is not False, r.description,
                             r.launcher_position, r.created_at, url, url is not None, bool(r.require_mfa)))
        return out

    return read
