"""The admin API's operations and its OpenAPI 3.1 document, built from one table (``OPERATIONS``) that the
blueprint (``admin/api.py``) also registers its routes from: the document cannot drift from the routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from idp.eventcatalog import KINDS, OUTCOMES

API_PREFIX = "/api/v1"
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "422", "429")

WS = {"name": "ws", "in": "path", "required": True, "description": "workspace slug",
      "schema": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}}


def _id(name: str, what: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": f"{what} id",
            "schema": {"type": "string", "format": "uuid"}}


APP_SLUG = {"name": "app", "in": "path", "required": True, "description": "app slug",
            "schema": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}}


CONN = {"name": "conn", "in": "path", "required": True, "description": "connection slug",
        "schema": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}}


def _q(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


NULLABLE_STR = {"type": ["string", "null"]}
ASSIGNED_GROUPS = {"type": ["array", "null"], "items": {"type": "string"}, "uniqueItems": True,
                   "description": "who may use the app: null (or absent) everyone in the workspace; else only members "
                                  "of these groups of the workspace ([]: nobody). An unknown group is 422 naming "
                                  "assigned_groups[i]. Removing a group (or a member from one) revokes the app's "
                                  "tokens of those who lose access and sends them its back-channel logout."}
# The app launcher (/w/{ws}/apps): whether the app has a tile, and the tile's text (both also for SAML apps, in place).
LAUNCHER = {"show_in_launcher": {"type": "boolean", "description": "a tile on the employees' app launcher "
                                 "(default true); a SAML app needs idp_initiated too"},
            "description": {"type": ["string", "null"], "maxLength": 300, "description": "the tile's short text"}}
INITIATE_LOGIN = {"type": "string", "description": "OIDC apps: where the launcher tile opens (OIDC Core 4, "
                  "Third-Party Initiated Login; https; idhub adds iss). Absent: the origin of the first redirect URI"}
# What the API does with a metadata_url (SAML apps and connections): idp.netfetch's outbound checks.
FETCH_NOTE = ("idhub fetches a metadata_url through its outbound checks: https only (plain http only to a loopback "
              "host), no redirects, at most 10 s and 512 KiB (apps) or 1 MiB (connections), and refused (422 naming "
              "metadata_url) when the host resolves to a loopback, private, link-local (cloud metadata), shared, "
              "multicast or reserved address outside the deployment's IDHUB_OUTBOUND_ALLOW_CIDRS; the connection "
              "goes to the address that was checked. The document is validated as pasted metadata_xml is, and read "
              "again daily with the same checks.")

# What happens to the URLs of apps registered over the API that idhub calls later.
APP_URLS_NOTE = ("An app registered over the API is marked registered_via: api: idhub calls an OIDC client's jwks_uri "
                 "and backchannel_logout_uri and a SAML app's SOAP SingleLogoutService (from its metadata) through "
                 "the same outbound checks at every call (a refusal then is logged and audited, never an error for "
                 "the user), and refuses now (422 naming the field) an IP literal or localhost those checks would "
                 "refuse, or plain http to another host.")


def _page_schema(item: str) -> dict:
    """A page of a list: ``items``, ``total``, ``limit``, ``offset`` and ``next_offset`` (null on the last page)."""
    return {"type": "object", "required": ["items", "total", "limit", "offset", "next_offset"], "properties": {
        "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
        "total": {"type": "integer", "minimum": 0}, "limit": {"type": "integer", "minimum": 1, "maximum": 200},
        "offset": {"type": "integer", "minimum": 0}, "next_offset": {"type": ["integer", "null"]}}}
STR_LIST = {"type": "array", "items": {"type": "string"}}
ROLE = {"type": "string", "enum": ["member", "admin", "operator"],
        "description": "operator: the hub operator (every workspace); only an operator credential gives or changes it"}

SCHEMAS: dict = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "field"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": NULLABLE_STR,
                       "errors": {"type": "array", "description": "422: every invalid field at once (the first is "
                                  "also field and message)", "items": {
                                      "type": "object", "required": ["field", "message"],
                                      "properties": {"field": NULLABLE_STR, "message": {"type": "string"}}}}}}}},
    "Workspace": {"type": "object", "required": ["id", "slug", "name", "plan", "domains"], "properties": {
        "id": {"type": "string"}, "slug": {"type": "string"}, "name": {"type": "string"},
        "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]}, "domains": STR_LIST,
        "created_at": NULLABLE_STR}},
    "WorkspacePage": _page_schema("Workspace"),
    "NewWorkspace": {"type": "object", "required": ["slug", "name"], "additionalProperties": False, "properties": {
        "slug": {"type": "string"}, "name": {"type": "string"},
        "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]}, "domains": STR_LIST}},
    "User": {"type": "object", "required": ["id", "email", "name", "role", "active", "status", "groups"],
             "properties": {
                 "id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"},
                 "role": ROLE, "active": {"type": "boolean"},
                 "status": {"type": "string", "enum": ["active", "disabled", "invited"]}, "groups": STR_LIST,
                 "managed_by": NULLABLE_STR, "created_at": NULLABLE_STR, "updated_at": NULLABLE_STR,
                 "mfa_methods": STR_LIST,
                 "username": {"type": "string", "description": "the SCIM userName (the e-mail address unless the "
                              "identity provider sent another); the user signs in with either"},
                 "invitation": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Invitation"}]}}},
    "Invitation": {"type": "object", "required": ["status", "sent_at", "expires_at"],
                   "description": "The user's latest invitation (never its link).", "properties": {
                       "status": {"type": "string", "enum": ["pending", "expired", "revoked", "accepted"]},
                       "sent_at": {"type": "string"}, "expires_at": {"type": "string"},
                       "invited_by": NULLABLE_STR, "accepted_at": NULLABLE_STR, "revoked_at": NULLABLE_STR}},
    "Session": {"type": "object", "required": ["id", "started_at", "last_seen_at"], "properties": {
        "id": {"type": "string", "description": "the session's public id (never its cookie)"},
        "browser": {"type": "string"}, "os": {"type": "string"}, "device": {"type": "string"},
        "ip": {"type": "string"}, "location": NULLABLE_STR, "started_at": {"type": "string"},
        "last_seen_at": {"type": "string"}, "expires_at": {"type": "string"}, "methods": STR_LIST}},
    "SessionList": {"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}}},
    "ResetSent": {"type": "object", "required": ["sent", "email"], "properties": {
        "sent": {"type": "boolean"}, "email": {"type": "string"}}},
    "UserPage": _page_schema("User"),
    "NewUser": {"type": "object", "required": ["email"], "additionalProperties": False,
                "description": "Without a password the user is invited: an invitation mail naming who invited them "
                               "carries a link that works once, for 7 days, to choose a password (and set up 2FA "
                               "where required).",
                "properties": {"email": {"type": "string"}, "name": {"type": "string"},
                               "password": {"type": "string"}, "role": ROLE,
                               "groups": STR_LIST}},
    "UserChange": {"type": "object", "additionalProperties": False,
                   "description": "A workspace admin cannot change a hub operator, nor another admin's email address "
                                  "(403 naming the field); a new address is unverified until its owner proves it.",
                   "properties": {"name": {"type": "string"}, "email": {"type": "string"}, "role": ROLE,
                                  "groups": STR_LIST}},
    "Count": {"type": "object", "properties": {"sessions_ended": {"type": "integer"},
                                               "removed": STR_LIST}},
    "Group": {"type": "object", "required": ["id", "name", "members"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "members": {"type": "integer"},
        "managed_by": NULLABLE_STR, "created_at": NULLABLE_STR}},
    "GroupPage": _page_schema("Group"),
    "GroupBody": {"type": "object", "required": ["name"], "additionalProperties": False,
                  "properties": {"name": {"type": "string"}}},
    "App": {"type": "object", "required": ["slug", "name", "protocol", "settings"], "properties": {
        "slug": {"type": "string"}, "name": {"type": "string"}, "protocol": {"type": "string",
                                                                             "enum": ["oidc", "saml"]},
        "require_mfa": {"type": "boolean"}, "assigned_groups": ASSIGNED_GROUPS, "created_at": NULLABLE_STR,
        **LAUNCHER,
        "settings": {"type": "object", "description": "copy-ready settings for the app's side; a SAML app's "
                     "sp_metadata_url (null unless registered by metadata_url) and sp_metadata_fetched_at say where "
                     "its own metadata came from"},
        "client_secret": {"type": "string", "description": "only in the answer to the creation, never again"}}},
    "AppPage": _page_schema("App"),
    "NewApp": {"type": "object", "required": ["slug", "name", "protocol"],
               "description": "An `apps` entry as in the config file (docs/config.md). OIDC client ids and secrets "
                              "are generated; SAML apps give exactly one of metadata_xml, metadata_url, or entity_id "
                              "with acs_url. metadata_file is refused. " + FETCH_NOTE + " " + APP_URLS_NOTE,
               "properties": {"slug": {"type": "string"}, "name": {"type": "string"},
                              "protocol": {"type": "string", "enum": ["oidc", "saml"]},
                              "redirect_uris": STR_LIST, "post_logout_redirect_uris": STR_LIST,
                              "token_endpoint_auth_method": {"type": "string"}, "scopes": STR_LIST,
                              "grant_types": STR_LIST, "require_mfa": {"type": "boolean"},
                              "assigned_groups": ASSIGNED_GROUPS, "metadata_xml": {"type": "string"}, **LAUNCHER,
                              "initiate_login_uri": INITIATE_LOGIN,
                              "metadata_url": {"type": "string", "description": "the SP's metadata URL (https)"},
                              "entity_id": {"type": "string"}, "acs_url": {"type": "string"},
                              "backchannel_logout_uri": {"type": "string", "description": "where idhub POSTs "
                                                         "logout tokens (outbound checks)"},
                              "jwks": {"type": "object", "description": "a private_key_jwt client's public keys"},
                              "jwks_uri": {"type": "string", "description": "or the https URL idhub fetches them "
                                           "from (outbound checks)"}}},
    "Connection": {"type": "object", "required": ["slug", "name", "protocol", "domains", "urls"], "properties": {
        "slug": {"type": "string"}, "name": {"type": "string"},
        "protocol": {"type": "string", "enum": ["saml", "oidc", "ldap"]}, "preset": {"type": "string"},
        "domains": STR_LIST, "secrets_set": STR_LIST,
        "settings": {"type": "object", "description": "the declared settings (no secrets, no metadata document): "
                     "metadata_url when the SAML metadata is read from a URL; registered_via: api when the "
                     "connection was added or its URLs last changed over the admin API or console (its fetches then "
                     "get the outbound checks)"},
        "urls": {"type": "object", "description": "what to register at the upstream IdP, and the test page"},
        "created_at": NULLABLE_STR,
        "changed": {**STR_LIST, "description": "in the answer to a change: the settings it changed (names only)"}}},
    "ConnectionPage": _page_schema("Connection"),
    "NewConnection": {"type": "object", "required": ["slug", "name", "protocol"],
                      "description": "A `connections` entry as in the config file (docs/config.md): OIDC from an "
                                     "issuer, SAML from metadata_xml or metadata_url (exactly one), LDAP. Secrets are "
                                     "stored encrypted and never returned. metadata_file and ca_file are refused. "
                                     + FETCH_NOTE + " "
                                     "An OIDC connection's discovery, keys, token and groups requests get the same "
                                     "checks (an issuer on an internal IP address is refused now, naming issuer).",
                      "properties": {"slug": {"type": "string"}, "name": {"type": "string"},
                                     "protocol": {"type": "string", "enum": ["saml", "oidc", "ldap"]},
                                     "preset": {"type": "string", "enum": ["okta", "azure_ad", "generic"]},
                                     "domains": STR_LIST, "issuer": {"type": "string"},
                                     "client_id": {"type": "string"}, "client_secret": {"type": "string"},
                                     "metadata_xml": {"type": "string"},
                                     "metadata_url": {"type": "string", "description": "the IdP's metadata URL"},
                                     "url": {"type": "string"},
                                     "bind_dn": {"type": "string"}, "bind_password": {"type": "string"},
                                     "user_search_base": {"type": "string"}}},
    "ConnectionChange": {
        "type": "object", "additionalProperties": False,
        "description": "Config-file `connections` keys (docs/config.md) merged over the connection's declared "
                       "settings, then validated as a whole. Omitted keys are unchanged; null removes a key (its "
                       "default applies). Secrets (client_secret, bind_password) are replaced when given and never "
                       "returned. slug and protocol cannot change (422). metadata_file, ca_file and *_env are "
                       "refused, as on creation; metadata_xml replaces the metadata (and a metadata_url); a "
                       "metadata_url is fetched with the outbound checks of creation and replaces pasted metadata "
                       "(give one of the two); metadata_url: null keeps the copy idhub has as pasted metadata. A new "
                       "metadata_url, issuer or groups_endpoint marks the connection registered_via: api.",
        "properties": {
            **{k: NULLABLE_STR for k in ("slug", "name", "protocol", "issuer", "client_id", "client_secret",
                                         "groups_endpoint", "metadata_xml", "metadata_url", "url", "bind_dn",
                                         "bind_password",
                                         "user_search_base", "user_filter", "group_search_base")},
            "preset": {"type": ["string", "null"], "enum": ["okta", "azure_ad", "generic", None]},
            **{k: {"type": ["array", "null"], "items": {"type": "string"}}
               for k in ("domains", "scopes", "allowed_tenants", "certs")},
            **{k: {"type": ["boolean", "null"]} for k in ("trust_mfa", "jit", "sso_required", "link_by_email",
                                                          "email_verified_by_idp", "allow_unsolicited",
                                                          "require_signed_assertion", "start_tls")},
            **{k: {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
               for k in ("attribute_map", "attribute_mapping")},
            "clock_skew": {"type": ["integer", "null"], "minimum": 0, "maximum": 300},
            "timeout": {"type": ["integer", "null"], "minimum": 1, "maximum": 60}}},
    "AppChange": {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string"}, "redirect_uris": STR_LIST, "post_logout_redirect_uris": STR_LIST,
        "scopes": STR_LIST, "require_mfa": {"type": "boolean"},
        "assigned_groups": {**ASSIGNED_GROUPS, "description": "(also for SAML apps) " + ASSIGNED_GROUPS["description"]},
        **{k: {"type": "string", "description": "SAML apps: a new service provider (exactly one of metadata_xml, "
                                                "metadata_url, or entity_id with acs_url), validated as on creation"}
           for k in ("metadata_xml", "metadata_url", "entity_id")},
        "acs_url": {"type": ["string", "array"], "items": {"type": "string"},
                    "description": "SAML apps: with entity_id, the ACS URL(s)"},
        "backchannel_logout_uri": {**NULLABLE_STR, "description": "a new one gets the outbound checks (registered_via: "
                                   "api); null removes it"},
        **LAUNCHER, "initiate_login_uri": {**INITIATE_LOGIN, "type": ["string", "null"]},
        "token_endpoint_auth_method": {
            "type": "string", "enum": ["none", "client_secret_basic", "client_secret_post",
                                       "client_secret_basic,client_secret_post"],
            "description": "OIDC apps: switch between public (none) and confidential in place. Becoming "
                           "confidential issues a client secret, in this answer only (client_secret); becoming public "
                           "drops the secret and the client_credentials grant and revokes every token issued to the "
                           "client. private_key_jwt is set when the app is added, with its keys."}}},
    "Policies": {"type": "object", "additionalProperties": False, "properties": {
        "require_mfa": {"type": "boolean"}, "require_mfa_for_admins": {"type": "boolean"},
        "require_phishing_resistant_mfa": {"type": "boolean"},
        "require_phishing_resistant_mfa_for_admins": {"type": "boolean"},
        "mfa_methods": {"type": "array", "items": {"type": "string",
                                                   "enum": ["totp", "sms", "backup_codes", "webauthn"]}},
        "ip_allowlist": STR_LIST, "session_idle_timeout": {"type": ["string", "integer"]},
        "session_max_lifetime": {"type": ["string", "integer"]}}},
    "PolicyView": {"type": "object", "required": ["policies", "summary"], "properties": {
        "policies": {"type": "object"}, "summary": STR_LIST}},
    "ScimToken": {"type": "object", "required": ["id", "name", "read_only"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "read_only": {"type": "boolean"},
        "created_at": NULLABLE_STR, "revoked_at": NULLABLE_STR,
        "token": {"type": "string", "description": "only in the answer to the creation, never again"},
        "scim_base_url": {"type": "string"}}},
    "ScimTokenPage": _page_schema("ScimToken"),
    "SigningKey": {"type": "object", "required": ["id", "protocol", "alg", "state"], "properties": {
        "id": {"type": "string", "description": "OIDC: the kid; SAML: the certificate's SHA-256 (hex)"},
        "protocol": {"type": "string", "enum": ["oidc", "saml"]}, "alg": {"type": "string"},
        "state": {"type": "string", "enum": ["signing", "next", "published"]},
        "created_at": NULLABLE_STR, "expires_at": NULLABLE_STR}},
    "SigningKeyList": {"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/SigningKey"}}}},
    "RevokedKey": {"type": "object", "required": ["revoked", "protocol"], "properties": {
        "revoked": {"type": "string"}, "protocol": {"type": "string"},
        "signing": {"type": ["string", "null"], "description": "the key that signs in its place"}}},
    "NewScimToken": {"type": "object", "required": ["name"], "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "read_only": {"type": "boolean"}}},
    "Event": {"type": "object", "required": ["seq", "occurred_at", "type", "data"], "properties": {
        "seq": {"type": "integer"}, "occurred_at": {"type": "string"}, "type": {"type": "string"},
        "actor_id": NULLABLE_STR, "actor_email": NULLABLE_STR, "subject_id": NULLABLE_STR, "ip": NULLABLE_STR,
        "request_id": NULLABLE_STR, "data": {"type": "object"},
        "actor_label": NULLABLE_STR, "subject_label": NULLABLE_STR}},
    "EventPage": {"type": "object", "required": ["items", "next_before"], "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        "next_before": {"type": ["integer", "null"]}}},
    "Dashboard": {"type": "object", "required": ["signins_24h", "failures_24h", "active_sessions", "users"],
                  "properties": {k: {"type": "integer"} for k in ("signins_24h", "failures_24h", "active_sessions",
                                                                  "users", "disabled_users")}},
}

LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)")
OFFSET = _q("offset", {"type": "integer", "minimum": 0}, "items to skip")
TIME = {"type": "string", "format": "date-time"}
AUDIT_FILTERS = (
    _q("user", {"type": "string"}, "a user's id, or part of an e-mail: events they did or that were done to them"),
    _q("app", {"type": "string"}, "an app's slug, client id or entity id"),
    _q("kind", {"type": "string", "enum": list(KINDS)}, "the event's kind (docs/events.md); may be repeated"),
    _q("outcome", {"type": "string", "enum": list(OUTCOMES)}, "the event's outcome"),
    _q("decisions", {"type": "boolean"}, "include policy.decision events (default true)"),
)


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # below /api/v1, OpenAPI style ({ws})
    op_id: str
    summary: str
    params: tuple = ()
    body: str | None = None
    ok: str = "200"
    result: str | None = None  # a schema name, or None for no body
    operator_only: bool = False
    media: dict = field(default_factory=dict)  # non-JSON answers: {media type: schema}


U = _id("user_id", "user")
G = _id("group_id", "group")
T = _id("token_id", "SCIM token")
SESSION = {"name": "session_id", "in": "path", "required": True, "description": "a session's public id",
           "schema": {"type": "string", "maxLength": 64}}
W = "/workspaces/{ws}"
KEY = {"name": "key_id", "in": "path", "required": True, "description": "OIDC kid or SAML certificate SHA-256",
       "schema": {"type": "string", "pattern": "^[A-Za-z0-9_:-]{1,128}$"}}

OPERATIONS: tuple[Op, ...] = (
    Op("get", "/workspaces", "listWorkspaces", "List every workspace (hub operator; paginated)", (LIMIT, OFFSET),
       result="WorkspacePage", operator_only=True),
    Op("post", "/workspaces", "createWorkspace", "Create a workspace (hub operator)", body="NewWorkspace", ok="201",
       result="Workspace", operator_only=True),
    Op("get", W, "getWorkspace", "Get a workspace", (WS,), result="Workspace"),
    Op("get", W + "/dashboard", "getDashboard", "Sign-ins and failures over 24 h, active sessions, users", (WS,),
       result="Dashboard"),
    Op("get", W + "/users", "listUsers", "List users (paginated; filter by email, status or a search)",
       (WS, _q("email", {"type": "string"}, "exact address"),
        _q("status", {"type": "string", "enum": ["active", "disabled", "invited"]}, "account status"),
        _q("q", {"type": "string"}, "part of the name or address"), LIMIT, OFFSET), result="UserPage"),
    Op("post", W + "/users", "createUser", "Create a user, or invite one (no password: a set-password mail)", (WS,),
       body="NewUser", ok="201", result="User"),
    Op("get", W + "/users/{user_id}", "getUser", "Get a user", (WS, U), result="User"),
    Op("patch", W + "/users/{user_id}", "updateUser", "Change a user's name, email address, role or groups", (WS, U),
       body="UserChange", result="User"),
    Op("post", W + "/users/{user_id}/disable", "disableUser", "Disable a user (every session ends)", (WS, U),
       result="User"),
    Op("post", W + "/users/{user_id}/enable", "enableUser", "Enable a user", (WS, U), result="User"),
    Op("post", W + "/users/{user_id}/reset-2fa", "resetUserMfa", "Remove a user's second factors", (WS, U),
       result="Count"),
    Op("post", W + "/users/{user_id}/end-sessions", "endUserSessions", "End every session of a user", (WS, U),
       result="Count"),
    Op("get", W + "/users/{user_id}/sessions", "listUserSessions", "A user's active sessions (device, IP, started, "
       "last seen)", (WS, U), result="SessionList"),
    Op("delete", W + "/users/{user_id}/sessions/{session_id}", "endUserSession", "End one session of a user (its "
       "browser gets the sign-in page; the apps are told)", (WS, U, SESSION), ok="204"),
    Op("post", W + "/users/{user_id}/password-reset", "sendUserPasswordReset", "Mail the user the password-reset link "
       "(24 hours, single use; 5 an hour, then 429)", (WS, U), result="ResetSent"),
    Op("post", W + "/users/{user_id}/invitation", "resendUserInvitation", "Send the invitation again: a new 7-day "
       "link (the old one stops working); 409 once the user has activated", (WS, U), result="User"),
    Op("delete", W + "/users/{user_id}/invitation", "revokeUserInvitation", "Revoke the invitation: its link stops "
       "working until an admin resends it", (WS, U), result="User"),
    Op("get", W + "/groups", "listGroups", "List groups (paginated)", (WS, LIMIT, OFFSET), result="GroupPage"),
    Op("post", W + "/groups", "createGroup", "Create a group", (WS,), body="GroupBody", ok="201", result="Group"),
    Op("get", W + "/groups/{group_id}", "getGroup", "Get a group", (WS, G), result="Group"),
    Op("patch", W + "/groups/{group_id}", "updateGroup", "Rename a group", (WS, G), body="GroupBody",
       result="Group"),
    Op("delete", W + "/groups/{group_id}", "deleteGroup", "Delete a group", (WS, G), ok="204"),
    Op("get", W + "/groups/{group_id}/members", "listGroupMembers", "List a group's members (paginated)",
       (WS, G, LIMIT, OFFSET), result="UserPage"),
    Op("put", W + "/groups/{group_id}/members/{user_id}", "addGroupMember", "Add a user to a group", (WS, G, U),
       result="Group"),
    Op("delete", W + "/groups/{group_id}/members/{user_id}", "removeGroupMember", "Remove a user from a group",
       (WS, G, U), result="Group"),
    Op("get", W + "/apps", "listApps", "List apps (OIDC clients and SAML service providers; paginated)",
       (WS, LIMIT, OFFSET), result="AppPage"),
    Op("post", W + "/apps", "createApp", "Register an app (an OIDC client's secret is shown once)", (WS,),
       body="NewApp", ok="201", result="App"),
    Op("get", W + "/apps/{app}", "getApp", "Get an app and its copy-ready settings", (WS, APP_SLUG), result="App"),
    Op("patch", W + "/apps/{app}", "updateApp", "Change an app (OIDC: name, redirect URIs, scopes, 2FA, public or "
       "confidential; SAML: name, 2FA, metadata)",
       (WS, APP_SLUG), body="AppChange", result="App"),
    Op("post", W + "/apps/{app}/secret", "rotateAppSecret", "A new client secret (shown once; the old one stops "
       "working)", (WS, APP_SLUG), ok="201", result="App"),
    Op("delete", W + "/apps/{app}", "deleteApp", "Remove an app", (WS, APP_SLUG), ok="204"),
    Op("get", W + "/connections", "listConnections", "List upstream connections (Okta, Azure AD, SAML, OIDC, LDAP; "
       "paginated)", (WS, LIMIT, OFFSET), result="ConnectionPage"),
    Op("post", W + "/connections", "createConnection", "Add an upstream connection", (WS,), body="NewConnection",
       ok="201", result="Connection"),
    Op("get", W + "/connections/{conn}", "getConnection", "Get a connection", (WS, CONN), result="Connection"),
    Op("patch", W + "/connections/{conn}", "updateConnection", "Change a connection (rotate a secret, replace SAML "
       "metadata, domains, trust_mfa, …): merged over its settings and validated as in the config file",
       (WS, CONN), body="ConnectionChange", result="Connection"),
    Op("delete", W + "/connections/{conn}", "deleteConnection", "Remove a connection (and its identity links)",
       (WS, CONN), ok="204"),
    Op("get", W + "/policies", "getPolicies", "The workspace's policies and their effect in plain language", (WS,),
       result="PolicyView"),
    Op("put", W + "/policies", "putPolicies", "Replace the workspace's policies (validated as in the config file)",
       (WS,), body="Policies", result="PolicyView"),
    Op("get", W + "/scim-tokens", "listScimTokens", "List SCIM tokens (paginated)", (WS, LIMIT, OFFSET),
       result="ScimTokenPage"),
    Op("post", W + "/scim-tokens", "createScimToken", "Create a SCIM token (shown once)", (WS,),
       body="NewScimToken", ok="201", result="ScimToken"),
    Op("delete", W + "/scim-tokens/{token_id}", "revokeScimToken", "Revoke a SCIM token", (WS, T), ok="204"),
    Op("get", W + "/signing-keys", "listSigningKeys", "The workspace's published OIDC and SAML signing keys", (WS,),
       result="SigningKeyList"),
    Op("post", W + "/signing-keys/{key_id}/revoke", "revokeSigningKey", "Emergency revocation of a compromised "
       "signing key: unpublished and never used again on any node (a signing key is replaced at once)",
       (WS, KEY), result="RevokedKey"),
    Op("get", W + "/audit/events", "searchAuditEvents", "Search the audit log, newest first",
       (WS, _q("type", {"type": "string"}, "event type, or a prefix ending in *"),
        _q("actor", {"type": "string"}, "actor e-mail or id"), *AUDIT_FILTERS, _q("since", TIME, "from (inclusive)"),
        _q("until", TIME, "to (exclusive)"), LIMIT,
        _q("before", {"type": "integer", "minimum": 0}, "page back from this seq")), result="EventPage"),
    Op("get", W + "/audit/export", "exportAuditEvents", "Export the audit log as CSV or JSON",
       (WS, _q("format", {"type": "string", "enum": ["csv", "json"]}, "csv or json (default)"),
        _q("type", {"type": "string"}, "event type, or a prefix ending in *"),
        _q("actor", {"type": "string"}, "actor e-mail or id"), *AUDIT_FILTERS,
        _q("since", TIME, "from (inclusive)"), _q("until", TIME, "to (exclusive)")),
       media={"application/json": {"type": "array", "items": {"type": "object"}}, "text/csv": {"type": "string"}}),
)


def flask_rule(path: str) -> str:
    """``/workspaces/{ws}`` → ``/api/v1/workspaces/<ws>``."""
    return API_PREFIX + path.replace("{", "<").replace("}", ">")


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERROR_TEXT = {"400": "Malformed request", "401": "Missing, unknown, expired or revoked token",
              "403": "Not allowed for this token (another workspace, or operator only)", "404": "Not found",
              "409": "Conflicts with the current state", "413": "Body too large",
              "422": "Invalid field (named in error.field)",
              "429": "Too many failed authentication attempts from this address"}


def document(base_url: str) -> dict:
    paths: dict = {}
    for op in OPERATIONS:
        responses: dict = {}
        if op.media:
            responses[op.ok] = {"description": "OK", "content": {m: {"schema": s} for m, s in op.media.items()}}
        elif op.result:
            responses[op.ok] = {"description": "OK", "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.result}"}}}}
        else:
            responses[op.ok] = {"description": "Done"}
        for code in ERROR_STATUSES:
            responses[code] = _error_response(ERROR_TEXT[code])
        spec: dict = {"operationId": op.op_id, "summary": op.summary, "responses": responses,
                      "security": [{"bearer": []}], "tags": [op.path.split("/")[3] if op.path.count("/") > 2
                                                              else "workspaces"]}
        if op.params:
            spec["parameters"] = list(op.params)
        if op.body:
            spec["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}}}
        if op.operator_only:
            spec["description"] = "Hub operator tokens only."
        paths.setdefault(op.path, {})[op.method] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": "idhub admin API", "version": "1.0.0",
                 "description": "Configure idhub workspaces without editing files. Authenticate with "
                                "`Authorization: Bearer <token>` (created by `idhub admin token create`). A "
                                "workspace token reaches its own workspace only; an operator token every one. "
                                "Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."},
        "servers": [{"url": base_url + API_PREFIX}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
