"""Every audit event type idhub records: what it means in plain words, its kind, and how to read its outcome.
Plain Python (no Flask, no database).

The admin console's audit log, its CSV/JSON exports and the dashboard read events through this catalog, and
``docs/events.md`` is generated from it (``python -m idp.eventcatalog > docs/events.md``). A unit test scans the
source for the event types idhub records and fails when one is missing here, so the catalog cannot fall behind.

Outcomes: ``success``, ``failure`` (a wrong password or code, a failed check), ``denied`` (refused by a policy,
a throttle, a missing assignment) and ``info`` (a fact, neither good nor bad). Most types have one outcome; a
few carry it in their data (``policy.decision``'s ``effect``, a SAML logout's ``success``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SUCCESS, FAILURE, DENIED, INFO = "success", "failure", "denied", "info"
OUTCOMES = {SUCCESS: "Success", FAILURE: "Failure", DENIED: "Denied", INFO: "Info"}

# kinds (categories), in the order the console's filter lists them
KINDS = {
    "signin": "Sign-in",
    "2fa": "Two-factor (2FA)",
    "password": "Password",
    "session": "Session",
    "account": "Account",
    "app": "App access",
    "token": "Tokens and keys",
    "connection": "Connection",
    "policy": "Policy",
    "admin": "Admin change",
    "scim": "SCIM provisioning",
    "alert": "Alert mail",
    "system": "Maintenance",
}
# the kinds whose failures are failed sign-in factors (a wrong password, a wrong 2FA code, a failed upstream sign-in)
FACTOR_KINDS = ("signin", "2fa")

# what ``subject_id`` names, per event type
USER, APP, GROUP, CONNECTION, SCIM_TOKEN, ADMIN_TOKEN, WORKSPACE = (
    "user", "app", "group", "connection", "scim_token", "admin_token", "workspace")


@dataclass(frozen=True)
class EventType:
    type: str
    description: str
    kind: str
    outcome: str = INFO  # the outcome, or the default one when ``outcome_from`` is set and the data lacks it
    target: str | None = None  # what ``subject_id`` names
    outcome_from: tuple[str, dict] | None = None  # (data key, {value: outcome})
    reading: str = ""  # how to read it, for the docs (the outcome's meaning, the data's keys)
    data_keys: tuple[str, ...] = field(default=())


def _e(type_, description, kind, outcome=INFO, target=None, reading="", outcome_from=None, data=()):
    return EventType(type_, description, kind, outcome, target, outcome_from, reading, tuple(data))


_SUCCESS_FLAG = ("success", {True: SUCCESS, False: FAILURE, "true": SUCCESS, "false": FAILURE})

_EVENTS: list[EventType] = [
    # ---- sign-in ------------------------------------------------------------------------------------------
    _e("auth.signin.success", "Signed in", "signin", SUCCESS,
       reading="`amr`: how (`pwd` password, `totp`, `sms`, `backup_code`, a connection's methods); `session`: the "
               "session's public id (as on the user's security page).", data=("amr", "session")),
    _e("auth.signin.failure", "Failed sign-in (wrong e-mail or password, or sign-in refused)", "signin", FAILURE,
       reading="`reason`: `bad_password`, `unknown_user`, `inactive` (a disabled account), "
               "`password_reset_required`, `sso_required`; `failures`: the account's failures in a row.",
       data=("reason", "failures")),
    _e("auth.signin.throttled", "Sign-in blocked: too many attempts", "signin", DENIED, data=("retry_after",)),
    _e("auth.signout", "Signed out", "session", SUCCESS, data=("session",)),
    _e("auth.reauth.success", "Confirmed it's them (re-authentication)", "signin", SUCCESS,
       data=("level", "connection")),
    _e("auth.reauth.failure", "Failed re-authentication", "signin", FAILURE, data=("reason",)),
    _e("federation.signin.started", "Started single sign-on through a connection", "signin", INFO,
       data=("connection", "protocol", "test")),
    _e("federation.signin.success", "Signed in through a connection (single sign-on)", "signin", SUCCESS,
       data=("connection", "protocol", "amr", "upstream_amr", "mfa")),
    _e("federation.signin.failure", "Failed sign-in through a connection (single sign-on)", "signin", FAILURE,
       reading="`check` names the check that failed (signature, audience, …), `reason` says it in words; "
               "`test` is true for an admin's connection test.", data=("connection", "check", "reason", "test")),
    _e("federation.signin.warning", "Signed in through a connection, with a warning", "signin", INFO,
       data=("connection", "warning")),
    # ---- two-factor ---------------------------------------------------------------------------------------
    _e("auth.mfa.success", "Passed second factor", "2fa", SUCCESS,
       reading="`method`: `totp` (authenticator app), `sms` (text message) or `backup_code`.", data=("method",)),
    _e("auth.mfa.failure", "Failed second factor (wrong code)", "2fa", FAILURE,
       reading="`method`: `totp` (authenticator app), `sms` (text message) or `backup_code`.", data=("method",)),
    _e("auth.mfa.throttled", "Second factor blocked: too many wrong codes", "2fa", DENIED, data=("method",)),
    _e("mfa.totp.enabled", "Added an authenticator app", "2fa", SUCCESS, data=("change", "sessions_ended")),
    _e("mfa.sms.enabled", "Added a phone for text-message codes", "2fa", SUCCESS,
       data=("change", "sessions_ended")),
    _e("mfa.backup_codes.regenerated", "Generated new backup codes", "2fa", SUCCESS,
       data=("change", "sessions_ended")),
    _e("mfa.disabled", "Turned off two-factor authentication", "2fa", SUCCESS, data=("change", "sessions_ended")),
    _e("auth.passkey.success", "Signed in with a passkey", "signin", SUCCESS,
       reading="`passwordless`: true when the passkey was the whole sign-in (no password).",
       data=("passkey", "passwordless")),
    _e("auth.passkey.failure", "Failed passkey sign-in or second factor", "2fa", FAILURE,
       reading="`reason`: why the browser's answer was refused (`challenge`: used or expired, `origin`: made for "
               "another website, `unknown_credential`, `another_user`, `malformed`, `too_large`, `signature`…); "
               "`passwordless`: true on the sign-in page's passkey button.", data=("reason", "passwordless")),
    _e("auth.passkey.throttled", "Passkey sign-in blocked: too many refused answers from this address", "2fa",
       DENIED, data=("retry_after",)),
    _e("auth.passkey.clone", "Passkey refused: its signature counter went backwards (a copied authenticator?)",
       "2fa", DENIED, reading="The user and the workspace's admins are mailed; `passkey` names it.",
       data=("passkey", "passwordless")),
    _e("mfa.webauthn.added", "Added a passkey", "2fa", SUCCESS, data=("passkey", "sessions_ended")),
    _e("mfa.webauthn.refused", "Adding a passkey was refused", "2fa", FAILURE, data=("reason",)),
    _e("mfa.webauthn.renamed", "Renamed a passkey", "2fa", SUCCESS, data=("passkey", "old_name")),
    _e("mfa.webauthn.removed", "Removed a passkey", "2fa", SUCCESS, data=("passkey", "sessions_ended")),
    _e("mfa.webauthn.remove_refused", "Removing a passkey was refused: a policy requires it", "2fa", DENIED,
       data=("passkey", "rule")),
    # ---- password -----------------------------------------------------------------------------------------
    _e("password.changed", "Changed their password", "password", SUCCESS, data=("sessions_ended",)),
    _e("password.change.failed", "Failed to change password (wrong current password)", "password", FAILURE,
       data=("reason",)),
    _e("password.reset.requested", "Asked for a password reset", "password", INFO,
       reading="`known` is false when no account has that e-mail (no mail is sent).", data=("known",)),
    _e("password.reset.throttled", "Password reset blocked: too many requests", "password", DENIED),
    _e("password.reset.completed", "Reset their password", "password", SUCCESS, data=("sessions_ended",)),
    # ---- session ------------------------------------------------------------------------------------------
    _e("session.ended", "Ended one of their sessions", "session", SUCCESS, data=("session",)),
    _e("session.ended_all", "Ended all their other sessions", "session", SUCCESS, data=("count",)),
    _e("session.stepped_up", "Added a second factor to their session", "session", SUCCESS),
    _e("account.compromise_reported", "Reported a sign-in that wasn't them", "account", INFO, USER,
       data=("sessions_ended",)),
    # ---- apps (single sign-on to downstream apps) -----------------------------------------------------------
    _e("oidc.authorize", "Opened an app (OpenID Connect)", "app", SUCCESS, data=("client",)),
    _e("oidc.authorize.denied", "Refused access to an app (OpenID Connect)", "app", DENIED,
       reading="`rule`: the policy rule that refused (`app_assignment`: the user is not assigned the app).",
       data=("client", "rule")),
    _e("oidc.authorize.step_up_required", "App asked for a second factor (OpenID Connect)", "app", INFO,
       data=("client", "reason")),
    _e("oidc.authorize.step_up", "Asked for a second factor for an app (OpenID Connect)", "app", INFO,
       data=("client", "reason", "step")),
    _e("oidc.token.issued", "Tokens issued to an app", "token", SUCCESS, data=("client", "refresh", "scope")),
    _e("oidc.refresh.denied", "Refused to refresh an app's tokens", "token", DENIED, data=("client", "rule")),
    _e("oidc.refresh.reused", "Refresh token used twice: its tokens were revoked", "token", DENIED,
       data=("client",)),
    _e("oidc.code.reused", "Authorization code used twice: its tokens were revoked", "token", DENIED,
       data=("client",)),
    _e("oidc.client_assertion.replayed", "App's signed client assertion replayed: refused", "token", DENIED,
       data=("client",)),
    _e("oidc.client_jwks.fetch_failed", "Could not fetch an app's signing keys", "token", FAILURE,
       data=("client", "error")),
    _e("oidc.userinfo.denied", "Refused an app's request for user details", "app", DENIED,
       data=("client", "rule")),
    _e("oidc.end_session", "Signed out from an app (OpenID Connect)", "session", SUCCESS, data=("client",)),
    _e("oidc.backchannel_logout", "Told an app the session ended (back-channel logout)", "session", SUCCESS,
       data=("client",)),
    _e("oidc.backchannel_logout.failed", "Could not tell an app the session ended", "session", FAILURE,
       data=("client", "error")),
    _e("oidc.keys.rotated", "Rotated the OpenID Connect signing keys", "token", SUCCESS),
    _e("oidc.purge", "Removed expired OpenID Connect codes and tokens", "system", INFO),
    _e("saml.sso", "Opened an app (SAML)", "app", SUCCESS, data=("sp", "nameid_format")),
    _e("saml.sso.idp_initiated", "Opened an app from the launcher (SAML)", "app", SUCCESS, data=("sp",)),
    _e("saml.sso.denied", "Refused access to an app (SAML)", "app", DENIED, data=("sp", "rule")),
    _e("saml.sso.error", "App's SAML request refused as invalid", "app", FAILURE, data=("sp", "status")),
    _e("saml.slo", "Signed out from an app (SAML)", "session", SUCCESS, data=("sp", "sessions")),
    _e("saml.slo.request_sent", "Asked an app to sign out (SAML)", "session", INFO, data=("sp",)),
    _e("saml.slo.response", "App answered a sign-out request (SAML)", "session", SUCCESS,
       outcome_from=_SUCCESS_FLAG, reading="`success` says whether the app signed the user out.",
       data=("sp", "success")),
    _e("saml.slo.backchannel", "Told an app the session ended (SAML back-channel logout)", "session", SUCCESS,
       outcome_from=_SUCCESS_FLAG, reading="`success` says whether the app confirmed; `error` says why not.",
       data=("sp", "success", "error")),
    _e("saml.slo.not_propagated", "Could not tell an app the session ended (it has no back-channel logout)",
       "session", FAILURE, data=("sp",)),
    _e("saml.key.staged", "Staged the next SAML signing key", "token", INFO, data=("active_at",)),
    _e("saml.nameid.salt_stored", "Stored the SAML pseudonymous-id salt", "token", INFO),
    _e("saml.metadata.refreshed", "Refreshed an app's SAML metadata", "app", SUCCESS, data=("sp",)),
    _e("saml.metadata.refresh_failed", "Could not refresh an app's SAML metadata", "app", FAILURE,
       data=("sp", "error")),
    _e("app.access.revoked", "Lost access to an app", "app", INFO, USER, data=("app", "protocol", "why")),
    # ---- connections (upstream identity providers) ----------------------------------------------------------
    _e("federation.user.created", "Account created at first single sign-on", "account", SUCCESS,
       data=("connection",)),
    _e("federation.user.linked", "Account linked to a connection", "account", SUCCESS, data=("connection",)),
    _e("federation.groups.synced", "Groups updated from a connection", "account", SUCCESS, data=("connection",)),
    _e("federation.metadata.refreshed", "Refreshed a connection's metadata", "connection", SUCCESS,
       data=("connection", "certificates")),
    _e("federation.metadata.refresh_failed", "Could not refresh a connection's metadata", "connection", FAILURE,
       data=("connection", "error")),
    _e("federation.test.started", "Started a connection test", "connection", INFO, data=("connection",)),
    _e("federation.test.succeeded", "Connection test succeeded", "connection", SUCCESS, data=("connection",)),
    _e("federation.test.failed", "Connection test failed", "connection", FAILURE, data=("connection", "check")),
    # ---- policy ---------------------------------------------------------------------------------------------
    _e("policy.decision", "Policy decision", "policy", SUCCESS,
       outcome_from=("effect", {"allow": SUCCESS, "deny": DENIED, "mfa": INFO, "enroll": INFO}),
       reading="One per check of a sign-in, an app sign-on, a token refresh or a console visit; hidden in the "
               "console unless asked for. `effect`: `allow`, `deny`, `mfa` (a second factor is needed) or "
               "`enroll` (2FA must be set up); `rule` names the rule, `stage` the check.",
       data=("effect", "rule", "stage", "app", "reason")),
    # ---- alerts ---------------------------------------------------------------------------------------------
    _e("alert.sent", "Security alert mailed", "alert", SUCCESS, USER, data=("template",)),
    _e("alert.failed", "Security alert could not be mailed", "alert", FAILURE, USER, data=("template",)),
    # ---- admin --------------------------------------------------------------------------------------------
    _e("admin.workspace.created", "Workspace created", "admin", SUCCESS, WORKSPACE, data=("slug",)),
    _e("admin.user.sessions_ended", "Admin ended a user's sessions", "admin", SUCCESS, USER,
       data=("sessions_ended",)),
    _e("admin.group.created", "Group created", "admin", SUCCESS, GROUP, data=("name",)),
    _e("admin.group.updated", "Group renamed", "admin", SUCCESS, GROUP, data=("name", "old_name")),
    _e("admin.group.deleted", "Group deleted", "admin", SUCCESS, GROUP, data=("name",)),
    _e("admin.group.member_added", "Added to a group", "account", SUCCESS, USER, data=("group",)),
    _e("admin.group.member_removed", "Removed from a group", "account", SUCCESS, USER, data=("group",)),
    _e("admin.app.created", "App added", "admin", SUCCESS, APP, data=("protocol",)),
    _e("admin.app.updated", "App changed", "admin", SUCCESS, APP, data=("changed",)),
    _e("admin.app.secret_rotated", "App's client secret replaced", "admin", SUCCESS, APP),
    _e("admin.app.deleted", "App deleted", "admin", SUCCESS, APP, data=("protocol",)),
    _e("admin.connection.created", "Connection added", "connection", SUCCESS, CONNECTION, data=("protocol",)),
    _e("admin.connection.updated", "Connection changed", "connection", SUCCESS, CONNECTION, data=("changed",)),
    _e("admin.connection.deleted", "Connection deleted", "connection", SUCCESS, CONNECTION, data=("protocol",)),
    _e("admin.policies.updated", "Workspace policies changed", "policy", SUCCESS, data=("changed",)),
    _e("admin.scim_token.created", "SCIM token created", "scim", SUCCESS, SCIM_TOKEN, data=("name", "read_only")),
    _e("admin.scim_token.revoked", "SCIM token revoked", "scim", SUCCESS, SCIM_TOKEN, data=("name",)),
    _e("admin.audit.exported", "Audit log exported", "admin", SUCCESS, data=("format",)),
    _e("admin.access.denied", "Admin API call refused: not allowed in this workspace", "admin", DENIED),
    _e("admin.console.denied", "Refused the admin console to a non-admin", "admin", DENIED, data=("path", "reason")),
    _e("admin.api.auth_failed", "Admin API call with an invalid token", "admin", FAILURE),
    _e("admin.token.created", "Admin API token created", "admin", SUCCESS, ADMIN_TOKEN, data=("name",)),
    _e("admin.token.revoked", "Admin API token revoked", "admin", SUCCESS, ADMIN_TOKEN, data=("name",)),
    _e("admin.config.applied", "Config file applied", "admin", SUCCESS),
    _e("admin.config.exported", "Config exported", "admin", SUCCESS),
    _e("admin.user.invitation_resent", "Invitation sent again (the old link no longer works)", "admin", SUCCESS,
       USER),
    _e("admin.user.invitation_revoked", "Invitation revoked", "admin", SUCCESS, USER),
    _e("admin.user.session_ended", "Admin ended one of a user's sessions", "admin", SUCCESS, USER,
       data=("session",)),
    _e("admin.user.password_reset_sent", "Admin sent a user a password-reset mail", "admin", SUCCESS, USER),
    _e("account.invitation.accepted", "Accepted an invitation and chose a password", "account", SUCCESS, USER),
    _e("admin.secrets.rotated", "Stored secrets re-encrypted under the current IDHUB_SECRET_KEY", "system",
       SUCCESS, reading="`counts`: how many values of each kind were re-encrypted or re-keyed."),
    _e("oidc.key.revoked", "OIDC signing key revoked (emergency): out of the JWKS, never used again", "token",
       SUCCESS, data=("kid",)),
    _e("saml.key.revoked", "SAML signing key revoked (emergency): out of the metadata, never used again", "token",
       SUCCESS, data=("sha256",)),
    _e("oidc.refresh.retried", "A refresh retried within the grace window got the same answer", "token", INFO,
       data=("client",)),
    _e("audit.pruned", "Audit events past the retention period removed", "system", SUCCESS,
       reading="`through_seq`: the last removed event; `anchor_hash`: the link the chain now starts from.",
       data=("through_seq", "anchor_hash", "retention_days")),
    _e("audit.chain.keyed", "Audit chain keyed (events from before keyed chains checked and re-linked)", "system",
       SUCCESS, data=("legacy_through_seq", "pruned_through_seq", "anchor_hash")),
    # ---- SCIM -------------------------------------------------------------------------------------------------
    _e("scim.bulk", "SCIM bulk request", "scim", SUCCESS, data=("operations", "done", "errors")),
    _e("scim.group.created", "Group created over SCIM", "scim", SUCCESS, GROUP),
    _e("scim.group.updated", "Group changed over SCIM", "scim", SUCCESS, GROUP),
    _e("scim.group.deleted", "Group deleted over SCIM", "scim", SUCCESS, GROUP),
]

# Account changes go through one writer (``idp.lifecycle``), which names each event ``<channel prefix>.<verb>``:
# the prefix says who made the change, the verb what changed.
ACCOUNT_CHANNELS = {
    "admin.user": "an admin (console or API)",
    "scim.user": "SCIM provisioning",
    "config.user": "the config file",
    "federation.user": "a connection (at sign-in)",
    "account": "the user themself or idhub",
}
ACCOUNT_VERBS = {
    "invited": "Invited",
    "created": "Account created",
    "updated": "Account changed",
    "enabled": "Account enabled",
    "disabled": "Account disabled",
    "deactivated": "Account deactivated",
    "deleted": "Account deleted",
    "mfa_reset": "Two-factor authentication reset",
}


def _account_events() -> list[EventType]:
    out = []
    for prefix, who in ACCOUNT_CHANNELS.items():
        for verb, what in ACCOUNT_VERBS.items():
            out.append(_e(f"{prefix}.{verb}", f"{what} by {who}", "account", SUCCESS, USER,
                          data=("channel", "changed", "sessions_ended")))
    return out


def _build() -> dict[str, EventType]:
    catalog: dict[str, EventType] = {}
    for ev in _EVENTS + _account_events():
        if ev.kind not in KINDS or ev.outcome not in OUTCOMES:
            raise ValueError(f"bad catalog entry {ev.type}")
        catalog.setdefault(ev.type, ev)  # federation.user.created/linked: the explicit entry wins
    return catalog


CATALOG: dict[str, EventType] = _build()


# ---- reading one event ---------------------------------------------------------------------------------------
def lookup(type_: str) -> EventType:
    """The catalog's entry, or a made-up one for a type it doesn't know (an older idhub's, say)."""
    known = CATALOG.get(type_)
    if known is not None:
        return known
    last = type_.rsplit(".", 1)[-1]
    outcome = FAILURE if last in ("failure", "failed", "error") else DENIED if last in ("denied", "throttled") \
        else INFO
    return EventType(type_, type_, "system", outcome)


def describe(type_: str) -> str:
    return lookup(type_).description


def outcome_of(type_: str, data: dict | None) -> str:
    ev = lookup(type_)
    if ev.outcome_from and isinstance(data, dict):
        key, mapping = ev.outcome_from
        value = data.get(key)
        if isinstance(value, (str, bool)) and value in mapping:
            return mapping[value]
    return ev.outcome


def types_of_kind(kinds: Iterable[str]) -> list[str]:
    wanted = set(kinds)
    return sorted(t for t, ev in CATALOG.items() if ev.kind in wanted)


def types_with_outcome(outcome: str) -> list[str]:
    """Types whose outcome is always ``outcome`` (data-driven types excluded: ask ``data_outcome_rules``)."""
    return sorted(t for t, ev in CATALOG.items() if ev.outcome == outcome and not ev.outcome_from)


def data_outcome_rules(outcome: str) -> list[tuple[str, str, list]]:
    """(type, data key, values) for the data-driven types: an event of ``type`` whose ``data[key]`` is one of
    ``values`` has ``outcome``."""
    out = []
    for t, ev in sorted(CATALOG.items()):
        if ev.outcome_from:
            key, mapping = ev.outcome_from
            values = [v for v, o in mapping.items() if o == outcome]
            if values:
                out.append((t, key, values))
    return out


def failed_factor_types() -> list[str]:
    """Every type that records a failed sign-in factor: a wrong password, a wrong 2FA code (any method), a
    failed re-authentication or single sign-on — by kind, so that new methods' types are counted too."""
    return sorted(t for t, ev in CATALOG.items()
                  if ev.kind in FACTOR_KINDS and ev.outcome == FAILURE and not ev.outcome_from)


SECRET_MARK = "[redacted]"
_HIDDEN_KEYS = {"via"}


def readable_details(data: Any, limit: int = 12) -> list[tuple[str, str]]:
    """An event's data as (key, value) pairs for people: no secrets (already redacted when recorded; a
    redacted value is left out), lists joined, nested objects flattened one level, long values cut."""
    if not isinstance(data, dict):
        return []
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        if key in _HIDDEN_KEYS or value is None or value == SECRET_MARK or value == "" or value == []:
            continue
        out.append((str(key).replace("_", " "), _text(value)[:200]))
        if len(out) >= limit:
            break
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value if v is not None and v != SECRET_MARK)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items() if v is not None and v != SECRET_MARK)
    return str(value)


# ---- the exported event ---------------------------------------------------------------------------------------
EXPORT_SCHEMA: list[tuple[str, str, str]] = [
    ("seq", "integer", "The event's place in the workspace's audit chain (1, 2, 3, …)."),
    ("occurred_at", "string", "When it happened: ISO 8601, UTC, e.g. `2026-12-07T16:28:35.123456Z`."),
    ("type", "string", "The event type (the tables below)."),
    ("description", "string", "The type in plain words, as the console shows it."),
    ("kind", "string", "The kind: " + ", ".join(f"`{k}`" for k in KINDS) + "."),
    ("outcome", "string", "`success`, `failure`, `denied` or `info`."),
    ("actor_id", "string or null", "Who did it: a user's id, when a user did."),
    ("actor_email", "string or null", "Who did it, by name: the user's e-mail (also when the event recorded only "
                                      "the id), `token:<name>` for an admin API token, `scim:<token>`, `config`."),
    ("target_type", "string or null", "What it was done to: `user`, `app`, `group`, `connection`, `scim_token`, "
                                      "`admin_token` or `workspace`."),
    ("target_id", "string or null", "The target's id (a user's or group's id, an app's or connection's slug)."),
    ("target", "string or null", "The target by name: a user's e-mail, an app's name."),
    ("subject_id", "string or null", "The same as `target_id` (the name earlier exports used)."),
    ("app", "string or null", "The app involved (an OpenID Connect client id or a SAML entity id), if any."),
    ("ip", "string or null", "The client's IP address."),
    ("user_agent", "string or null", "The client's browser or program."),
    ("request_id", "string or null", "The request's id (also in idhub's logs)."),
    ("details", "string", "The data in plain words: `key: value` pairs separated by `; `."),
    ("data", "object", "The data as recorded (in CSV: a JSON text). Secrets are never recorded."),
    ("workspace_id", "string", "The workspace's id."),
    ("prev_hash", "string", "The previous event's hash (the chain)."),
    ("hash", "string", "This event's SHA-256 hash over its recorded fields and `prev_hash`."),
]
EXPORT_COLUMNS = tuple(name for name, _, _ in EXPORT_SCHEMA)


def render_markdown() -> str:
    """docs/events.md."""
    lines = [
        "# Audit events",
        "",
        "Every event idhub records in a workspace's audit log, what it means, and how to read it. The admin "
        "console's audit log (**Audit log** in the console) shows each event with the description below, its "
        "outcome, who did it and to what; its **Export CSV** and **Export JSON** buttons, and the admin API's "
        "`GET /api/v1/workspaces/{ws}/audit/export`, write the same columns, with the same filters.",
        "",
        "Outcomes: **success**; **failure** (a wrong password or code, a failed check); **denied** (refused by a "
        "policy, a throttle, a missing app assignment); **info** (a fact). The dashboard's *Failed sign-in "
        "attempts* counts every failure of kind `signin` or `2fa`: wrong passwords, wrong 2FA codes of every "
        "method, failed re-authentications and failed single sign-ons.",
        "",
        "## An exported event",
        "",
        "JSON export: an array of objects with these fields, oldest first. CSV export: one row per event with "
        "these columns, in this order (a cell that a spreadsheet would run as a formula starts with `'`).",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    for name, kind, meaning in EXPORT_SCHEMA:
        lines.append(f"| `{name}` | {kind} | {meaning} |")
    lines += ["", "## Event types", ""]
    for kind, label in KINDS.items():
        rows = [ev for ev in _EVENTS if ev.kind == kind]
        if not rows:
            continue
        lines += [f"### {label} (`{kind}`)", "", "| type | description | outcome | how to read it |",
                  "|---|---|---|---|"]
        for ev in rows:
            outcome = "from the data" if ev.outcome_from else ev.outcome
            reading = ev.reading or (("data: " + ", ".join(f"`{k}`" for k in ev.data_keys)) if ev.data_keys else "")
            if ev.target:
                reading = (f"target: {ev.target.replace('_', ' ')}. " + reading).strip()
            lines.append(f"| `{ev.type}` | {ev.description} | {outcome} | {reading} |")
        lines.append("")
    lines += [
        "### Account changes",
        "",
        "Every change of an account is recorded as `<who>.<change>`; the target is the user, and `data.channel` "
        "names the channel (`scim:<token>`, `admin:<e-mail>`, `config`, …). Kind `account`, outcome success.",
        "",
        "| prefix | who made the change |",
        "|---|---|",
    ]
    for prefix, who in ACCOUNT_CHANNELS.items():
        lines.append(f"| `{prefix}.` | {who} |")
    lines += ["", "| change | description |", "|---|---|"]
    for verb, what in ACCOUNT_VERBS.items():
        lines.append(f"| `{verb}` | {what} |")
    lines += ["", "For example `scim.user.deactivated` is *Account deactivated by SCIM provisioning*.", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(render_markdown())
