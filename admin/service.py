"""What IT admins can do, for the admin API and the admin console alike. Plain Python: takes the hub and a
``Principal`` (who acts), returns plain dicts, raises ``AdminError`` naming the offending field.

The validation is the config file's (``idp.configfile``: ``validate_user``, ``validate_policies``,
``validate_apps``; ``saml.config.saml_app_errors``; ``scim.config.validate_scim_tokens``) and so are the
appliers (``oidc.config.apply_oidc_apps``, ``saml.config.apply_saml_apps``): the API produces the same state as
``idhub apply``. Every change is audited with the admin's identity (token name or user)."""

from __future__ import annotations

import ipaddress
import re
import secrets
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from admin import auditlog
from admin.tokens import Principal
from idp.accounts import normalise_email
from idp.audit import AuditEvent, chain_for, iso_utc
from idp.configfile import ConfigError, Validator, validate, validate_apps, validate_policies, validate_user
from idp.crypto import secret_keys
from idp.eventcatalog import failed_factor_types
from idp.flow import Client
from idp.invalidation import CONNECTIONS, SAML_APPS, SCIM_TOKENS, WORKSPACES
from idp.lifecycle import KEEP, AccountError, Actor, check_allowed, is_privileged
from idp.models import Group, GroupMember, SessionRow, User, Workspace
from policies.engine import parse_allowlist

PATH_RE = re.compile(r"^(?:[a-z_]+(?:\[\d+\])?\.)?")
ID_RE = re.compile(r"^[0-9a-f-]{36}$")
MAX_LIMIT = 200
USER_STATUSES = ("active", "disabled", "invited")
APP_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class AdminError(Exception):
    """An answer other than success: HTTP status, a stable code, a message for people, the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 errors: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        # every problem found at once, each ``{"field", "message"}`` (the first is ``field``/``message``)
        self.errors = errors if errors else [{"field": field, "message": message}]

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field, "errors": self.errors}}


def _split_error(text: str, prefix: str = "") -> dict:
    """One config-file validator error (``path: message``) as ``{"field", "message"}``, the path relative to
    ``prefix`` (``app[0].slug`` -> ``slug``)."""
    path, _, message = text.partition(": ")
    if not message:
        path, message = "", text
    if prefix and path.startswith(prefix):
        path = path[len(prefix):].lstrip(".")
    inner = re.match(r"^(?:SAML app '[^']*': )?([a-z_]+(?:\[\d+\])?): (.+)$", message or "")
    if not path and inner:  # saml.config names the field inside its message
        path, message = inner.group(1), inner.group(2)
    return {"field": path or None, "message": message or text}


def invalid(errors: list[str], prefix: str = "") -> AdminError:
    """The config-file validators' errors (``path: message``) as one 422: the first names ``field`` and
    ``message``, all of them are in ``errors``."""
    found = [_split_error(e, prefix) for e in errors] or [{"field": None, "message": "invalid"}]
    return AdminError(422, "invalid", found[0]["message"], found[0]["field"], found)


@contextmanager
def account_errors():
    """``idp.lifecycle``'s refusals as the API's errors, naming the field."""
    try:
        yield
    except AccountError as exc:
        if exc.kind == "invalid":
            raise AdminError(422, "invalid", exc.message, exc.field) from None
        if exc.kind == "uniqueness":
            raise AdminError(409, "conflict", "a user with this email address exists", exc.field) from None
        raise AdminError(403, "forbidden", exc.message, exc.field) from None


def _iso(dt: datetime | None) -> str | None:
    return iso_utc(dt).replace(".000000Z", "Z") if dt else None


def _int(value, name: str, default: int, lo: int, hi: int) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(str(value), 10)
    except ValueError:
        raise AdminError(400, "bad_parameter", f"{name} must be a whole number", name) from None
    if n < lo or n > hi:
        raise AdminError(400, "bad_parameter", f"{name} must be between {lo} and {hi}", name)
    return n


def _page(db, stmt, limit, offset, render) -> dict:
    """One page of ``stmt`` (ordered): ``items``, ``total``, ``limit``, ``offset``, ``next_offset``."""
    limit = _int(limit, "limit", 50, 1, MAX_LIMIT)
    offset = _int(offset, "offset", 0, 0, 10_000_000)
    total = db.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = [render(r) for r in db.scalars(stmt.limit(limit).offset(offset))]
    nxt = offset + len(items) if offset + len(items) < total else None
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": nxt}


def _page_of(rows: list, limit, offset, render) -> dict:
    """``_page`` for a list already in order (apps: two tables, one order)."""
    limit = _int(limit, "limit", 50, 1, MAX_LIMIT)
    offset = _int(offset, "offset", 0, 0, 10_000_000)
    items = [render(r) for r in rows[offset:offset + limit]]
    nxt = offset + len(items) if offset + len(items) < len(rows) else None
    return {"items": items, "total": len(rows), "limit": limit, "offset": offset, "next_offset": nxt}


MIN_YEAR, MAX_YEAR = 1970, 9998  # the audit log's times; outside them a UTC conversion could overflow


def parse_time(value, name: str) -> datetime | None:
    """An ISO 8601 time (no zone: UTC) as an aware UTC datetime. Years outside 1970..9998, before or after the
    conversion to UTC, are refused: ``0001-01-01T00:00:00+01:00`` is in year 0 in UTC, which does not exist."""
    if value in (None, ""):
        return None
    bad = AdminError(400, "bad_parameter", f"{name} must be an ISO 8601 time", name)
    if not isinstance(value, str) or len(value) > 40:
        raise bad
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad from None
    out_of_range = AdminError(400, "bad_parameter", f"{name} must be a time between the years {MIN_YEAR} and "
                              f"{MAX_YEAR}", name)
    if not MIN_YEAR <= t.year <= MAX_YEAR:
        raise out_of_range
    try:
        t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise out_of_range from None
    if not MIN_YEAR <= t.year <= MAX_YEAR:
        raise out_of_range
    return t


# Config-file keys the API refuses, and why. The API never reads a server path. The URLs it has idhub call go
# through idp.netfetch: a SAML metadata_url (apps and connections), an API-registered OIDC connection's discovery,
# keys and token requests, and for apps registered over the API an OIDC client's jwks_uri and
# backchannel_logout_uri and a SAML app's SOAP SingleLogoutService: internal addresses (loopback, private,
# link-local with the cloud metadata services, …) are refused unless IDHUB_OUTBOUND_ALLOW_CIDRS allows them, and the
# connection goes to the address that was checked.
REFUSED = {
    "metadata_file": "a path on the idhub server: not accepted over the API (paste the document as metadata_xml)",
    "ca_file": "a path on the idhub server: not accepted over the API (use the config file)",
    "client_secret_env": "environment references are for the config file",
    "bind_password_env": "environment references are for the config file",
}


def _body(body, allowed: set[str], required: tuple[str, ...] = (), refused: dict | None = None) -> dict:
    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "the body must be a JSON object")
    for k in body:
        if k not in allowed:
            reason = (refused or {}).get(k) if isinstance(k, str) else None
            raise AdminError(422, "invalid", reason or "unknown field", str(k)[:100])
    missing = [k for k in required if body.get(k) in (None, "")]
    if missing:
        raise AdminError(422, "invalid", "required", missing[0], [{"field": k, "message": "required"} for k in missing])
    return body


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise AdminError(404, "not_found", f"no such {what}")
    return value


SAML_SOURCES = ("metadata_xml", "metadata_url")


def _one_saml_source(body: dict, *, alternatives: tuple[str, ...] = ()) -> None:
    """A SAML app or connection gives its metadata one way: pasted (metadata_xml) or by URL (metadata_url)."""
    given = [k for k in SAML_SOURCES if body.get(k) not in (None, "")]
    if len(given) > 1 or (given == ["metadata_url"] and any(body.get(k) not in (None, "") for k in alternatives)):
        raise AdminError(422, "invalid", "give exactly one of metadata_xml or metadata_url"
                         + (f" (or {' with '.join(alternatives)})" if alternatives else ""), "metadata_url")


def _guarded_metadata(url: str) -> str:
    """federation.config's fetch for a connection's metadata_url given over the API: idp.netfetch's checks."""
    from federation.config import fetch_metadata

    return fetch_metadata(url, guarded=True)


def _check_oidc_urls(body: dict, old: dict | None = None) -> None:
    """An OIDC connection's issuer and groups endpoint given (or changed) over the API: an IP literal or
    ``localhost`` that idp.netfetch would refuse is refused now, naming the field (host names are checked at every
    fetch)."""
    from idp.netfetch import FetchError, check_literal

    for key in ("issuer", "groups_endpoint"):
        if isinstance(body.get(key), str) and body[key] != (old or {}).get(key):
            try:
                check_literal(body[key].replace("{tenantid}", "common"), key)
            except FetchError as exc:
                if "address" in exc.reason:
                    raise AdminError(422, "invalid", exc.reason, key) from None


# An OIDC app's URLs that idhub calls (through idp.netfetch when the app is registered over the API).
OIDC_APP_URLS = ("backchannel_logout_uri", "jwks_uri")


def _check_app_urls(body: dict, old: dict | None = None) -> None:
    """An OIDC app's ``backchannel_logout_uri`` or ``jwks_uri`` given (or changed) over the API: a URL that
    idp.netfetch would refuse without a DNS look-up — an IP literal or ``localhost`` outside
    ``IDHUB_OUTBOUND_ALLOW_CIDRS``, plain http to another host — is refused now, naming the field (host names are
    checked at every call)."""
    from idp.netfetch import FetchError, check_literal

    for key in OIDC_APP_URLS:
        if isinstance(body.get(key), str) and body[key] != (old or {}).get(key):
            try:
                check_literal(body[key], key)
            except FetchError as exc:
                raise AdminError(422, "invalid", exc.reason, key) from None


def _check_soap_slo(url: str | None, field: str) -> None:
    """A SAML app registered over the API: the SOAP SingleLogoutService of its metadata (POSTed to at back-channel
    logout, through idp.netfetch) is refused now when idp.netfetch would refuse it without a DNS look-up."""
    from idp.netfetch import FetchError, check_literal

    if url:
        try:
            check_literal(url, "slo_soap_url")
        except FetchError as exc:
            raise AdminError(422, "invalid", f"the metadata's SOAP SingleLogoutService {exc.reason}", field) \
                from None


# what changes in place on a SAML app (its other settings come from its metadata)
SAML_IN_PLACE = frozenset({"assigned_groups", "show_in_launcher", "description"})
# what else changes on a SAML app: its name, per-app 2FA, and the service provider (metadata, or entity ID + ACS)
SAML_CHANGES = frozenset({"name", "require_mfa", "metadata_xml", "metadata_url", "entity_id", "acs_url"})


class AdminService:
    def __init__(self, hub, tokens):
        self.hub = hub
        self.tokens = tokens

    # ---- plumbing ---------------------------------------------------------------------------------------
    def audit(self, p: Principal, workspace_id: str | None, type_: str, subject_id: str | None = None,
              **data) -> None:
        self.hub.audit.record(type_, workspace_id=workspace_id, actor_id=p.actor_id, actor_email=p.actor_email,
                              subject_id=subject_id, ip=p.ip, user_agent=(p.user_agent or "")[:512] or None,
                              request_id=p.request_id, data={"via": "console" if p.kind == "user" else "api",
                                                             **data})

    def _client(self, p: Principal) -> Client:
        return Client(ip=p.ip or "", user_agent=p.user_agent or "", request_id=p.request_id or "")

    def workspace(self, p: Principal, slug: str) -> Workspace:
        """The workspace ``slug`` if ``p`` may act on it. Out of scope answers 403 whether or not it exists."""
        with self.hub.db() as db:
            ws = db.scalar(select(Workspace).where(Workspace.slug == slug)) if isinstance(slug, str) and \
                len(slug) <= 63 else None
        if ws is None or not p.can_access(ws.id):
            if not p.operator:
                self.audit(p, p.workspace_id, "admin.access.denied", data_slug=str(slug)[:63])
                raise AdminError(403, "forbidden", "this credential cannot act on that workspace")
            raise AdminError(404, "not_found", "no such workspace")
        return ws

    # ---- workspaces (hub operator) ---------------------------------------------------------------------------
    def _operator(self, p: Principal) -> None:
        if not p.operator:
            raise AdminError(403, "forbidden", "only the hub operator can do this")

    @staticmethod
    def render_workspace(ws: Workspace) -> dict:
        return {"id": ws.id, "slug": ws.slug, "name": ws.name, "plan": ws.plan, "domains": list(ws.domains or []),
                "created_at": _iso(ws.created_at)}

    def list_workspaces(self, p: Principal, *, limit=None, offset=None) -> dict:
        self._operator(p)
        with self.hub.db() as db:
            return _page(db, select(Workspace).order_by(Workspace.slug, Workspace.id), limit, offset,
                         self.render_workspace)

    def create_workspace(self, p: Principal, body) -> dict:
        self._operator(p)
        body = _body(body, {"slug", "name", "plan", "domains"}, ("slug", "name"))
        try:
            [w] = validate({"workspaces": [body]})
        except ConfigError as exc:
            raise invalid(exc.errors, "workspaces[0]") from None
        with self.hub.db() as db:
            if db.scalar(select(Workspace.id).where(Workspace.slug == w["slug"])):
                raise AdminError(409, "conflict", "a workspace with this slug exists", "slug")
            ws = Workspace(slug=w["slug"], name=w["name"], plan=w["plan"], domains=w["domains"], policies={})
            db.add(ws)
            try:
                db.commit()
            except IntegrityError:
                raise AdminError(409, "conflict", "a workspace with this slug exists", "slug") from None
        self.audit(p, ws.id, "admin.workspace.created", subject_id=ws.id, slug=ws.slug)
        return self.render_workspace(ws)

    def get_workspace(self, p: Principal, slug: str) -> dict:
        return self.render_workspace(self.workspace(p, slug))

    # ---- users ------------------------------------------------------------------------------------------------
    def _groups_of(self, db, user_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {u: [] for u in user_ids}
        if user_ids:
            rows = db.execute(select(GroupMember.user_id, Group.name).join(Group, Group.id == GroupMember.group_id)
                              .where(GroupMember.user_id.in_(user_ids)).order_by(Group.name))
            for uid, name in rows:
                out[uid].append(name)
        return out

    def render_user(self, u: User, groups: list[str], mfa: list[str] | None = None, invitation=None) -> dict:
        status = "disabled" if not u.active else ("invited" if u.password_hash is None and not u.external_id
                                                   else "active")
        out = {"id": u.id, "email": u.email, "name": u.name or "", "role": u.role, "active": bool(u.active),
               "status": status, "groups": groups, "managed_by": "scim" if u.external_id else None,
               "created_at": _iso(u.created_at), "updated_at": _iso(u.updated_at),
               "username": getattr(u, "username", None) or u.email}
        inv = self.hub.invitations.view(invitation)
        out["invitation"] = None if inv is None else {k: _iso(v) if isinstance(v, datetime) else v
                                                      for k, v in inv.items()}
        if mfa is not None:
            out["mfa_methods"] = mfa
        return out

    def list_users(self, p: Principal, slug: str, *, email=None, status=None, q=None, limit=None, offset=None
                   ) -> dict:
        ws = self.workspace(p, slug)
        limit = _int(limit, "limit", 50, 1, MAX_LIMIT)
        offset = _int(offset, "offset", 0, 0, 10_000_000)
        stmt = select(User).where(User.workspace_id == ws.id)
        if email not in (None, ""):
            if not isinstance(email, str) or len(email) > 320:
                raise AdminError(400, "bad_parameter", "email is too long", "email")
            stmt = stmt.where(User.email_normalized == email.strip().casefold())
        if q not in (None, ""):
            if not isinstance(q, str) or len(q) > 200:
                raise AdminError(400, "bad_parameter", "q is too long", "q")
            like = "%" + q.strip().casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(or_(User.email_normalized.like(like, escape="\\"),
                                  func.lower(User.name).like(like, escape="\\")))
        if status not in (None, ""):
            if status not in USER_STATUSES:
                raise AdminError(400, "bad_parameter", f"status must be one of {', '.join(USER_STATUSES)}", "status")
            if status == "disabled":
                stmt = stmt.where(User.active.is_(False))
            elif status == "invited":
                stmt = stmt.where(User.active.is_(True), User.password_hash.is_(None), User.external_id.is_(None))
            else:
                stmt = stmt.where(User.active.is_(True), or_(User.password_hash.is_not(None),
                                                             User.external_id.is_not(None)))
        with self.hub.db() as db:
            total = db.scalar(select(func.count()).select_from(stmt.subquery()))
            rows = list(db.scalars(stmt.order_by(User.email_normalized, User.id).limit(limit).offset(offset)))
            groups = self._groups_of(db, [u.id for u in rows])
            invites = self.hub.invitations.latest(db, [u.id for u in rows])
        items = [self.render_user(u, groups[u.id], invitation=invites.get(u.id)) for u in rows]
        nxt = offset + len(items) if offset + len(items) < total else None
        return {"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": nxt}

    def _user(self, db, ws: Workspace, user_id: str, changed_by: Principal | None = None) -> User:
        """The user; with ``changed_by``, only if that credential may change it (a hub operator's account
        is changed by the hub operator only: a workspace admin cannot disable, demote or reset them)."""
        _check_id(user_id, "user")
        u = db.scalar(select(User).where(User.id == user_id, User.workspace_id == ws.id))
        if u is None:
            raise AdminError(404, "not_found", "no such user")
        if changed_by is not None and u.role == "operator" and not changed_by.operator:
            raise AdminError(403, "forbidden", "only the hub operator can change a hub operator's account")
        return u

    @staticmethod
    def _check_role(p: Principal, role) -> None:
        if role == "operator" and not p.operator:
            raise AdminError(403, "forbidden", "only the hub operator can make someone a hub operator", "role")

    def get_user(self, p: Principal, slug: str, user_id: str) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            u = self._user(db, ws, user_id)
            groups = self._groups_of(db, [u.id])[u.id]
            invite = self.hub.invitations.latest(db, [u.id]).get(u.id)
        mfa = self.hub.mfa.enrolled(u.id).methods() if self.hub.mfa else []
        return self.render_user(u, groups, list(mfa), invitation=invite)

    def _group_names(self, db, ws: Workspace) -> dict[str, str]:
        return {g.name: g.id for g in db.scalars(select(Group).where(Group.workspace_id == ws.id))}

    def _set_groups(self, db, ws: Workspace, user: User, names: list[str], known: dict[str, str]) -> None:
        wanted = {known[n] for n in names}
        have = set(db.scalars(select(GroupMember.group_id).join(Group, Group.id == GroupMember.group_id)
                              .where(GroupMember.user_id == user.id, Group.workspace_id == ws.id)))
        for gid in wanted - have:
            db.add(GroupMember(group_id=gid, user_id=user.id))
        if have - wanted:
            db.execute(delete(GroupMember).where(GroupMember.user_id == user.id,
                                                 GroupMember.group_id.in_(have - wanted)))

    def create_user(self, p: Principal, slug: str, body) -> dict:
        """Create a user; without a password it is an invitation: a set-password link is mailed (the reset
        mechanism of ``idp.hub``)."""
        ws = self.workspace(p, slug)
        body = _body(body, {"email", "name", "password", "role", "groups"}, ("email",))
        self._check_role(p, body.get("role"))
        actor = Actor.of_principal(p)
        with self.hub.db() as db:
            known = self._group_names(db, ws)
            v = Validator()
            u = validate_user(v, body, "user", list(known), set())
            if v.errors:
                raise invalid(v.errors, "user")
            key = normalise_email(u["email"])
            if db.scalar(select(User.id).where(User.workspace_id == ws.id, User.email_normalized == key)):
                raise AdminError(409, "conflict", "a user with this email address exists", "email")
            with account_errors():
                user = self.hub.accounts.create(db, actor, ws.id, email=u["email"], name=u.get("name") or "",
                                                role=u.get("role", "member"), password=u.get("password"),
                                                profile=_name_profile(None, u.get("name") or ""))
            try:
                db.flush()
            except IntegrityError:
                raise AdminError(409, "conflict", "a user with this email address exists", "email") from None
            self._set_groups(db, ws, user, list(u.get("groups") or []), known)
            db.commit()
            groups = self._groups_of(db, [user.id])[user.id]
        invited = u.get("password") is None
        self.hub.accounts.record(actor, ws.id, "invited" if invited else "created", user.id, email=user.email,
                                 role=user.role, groups=groups)
        invite = None
        if invited:
            self.hub.invitations.issue(ws, user, invited_by=p.actor_email, invited_by_name=self._name_of(p))
            with self.hub.db() as db:
                invite = self.hub.invitations.latest(db, [user.id]).get(user.id)
        return self.render_user(user, groups, invitation=invite)

    def _name_of(self, p: Principal) -> str:
        """The acting admin's name (for the invitation mail), when a signed-in admin acts."""
        if p.kind != "user" or not p.actor_id:
            return ""
        with self.hub.db() as db:
            return db.scalar(select(User.name).where(User.id == p.actor_id)) or ""

    # ---- invitations ------------------------------------------------------------------------------------------
    def _invited(self, db, ws: Workspace, user_id: str, p: Principal) -> User:
        user = self._user(db, ws, user_id, changed_by=p)
        if user.password_hash is not None or user.external_id:
            raise AdminError(409, "not_invited", "this user has already activated their account (use Send password "
                             "reset instead)" if user.password_hash is not None else "this user is provisioned over "
                             "SCIM: their identity provider signs them in")
        if not user.active:
            raise AdminError(409, "disabled", "this user is disabled: enable them first")
        return user

    def resend_invitation(self, p: Principal, slug: str, user_id: str) -> dict:
        """A new invitation link, mailed (the old link stops working). 409 for a user who already has a password,
        429 after 10 sends to one user in an hour."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._invited(db, ws, user_id, p)
            db.expunge(user)
        sent = self.hub.invitations.issue(ws, user, invited_by=p.actor_email, invited_by_name=self._name_of(p))
        if sent is None:
            raise AdminError(429, "too_many_requests", "this user was sent too many invitations in the last hour; "
                             "try again later")
        self.audit(p, ws.id, "admin.user.invitation_resent", subject_id=user.id, email=user.email,
                   expires_at=_iso(sent.expires_at), mailed=sent.mailed)
        return self.get_user(p, slug, user_id)

    def revoke_invitation(self, p: Principal, slug: str, user_id: str) -> dict:
        """End the user's invitation link (they cannot activate the account until an admin resends it)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._invited(db, ws, user_id, p)
        ended = self.hub.invitations.revoke(user.id)
        self.audit(p, ws.id, "admin.user.invitation_revoked", subject_id=user.id, email=user.email,
                   link_was_valid=ended)
        return self.get_user(p, slug, user_id)

    # ---- a user's sessions, factors, events; password reset ---------------------------------------------------
    @staticmethod
    def render_session(s) -> dict:
        where = ", ".join(x for x in (s.city, s.country) if x and x != "unknown")
        return {"id": s.public_id, "browser": s.browser, "os": s.os, "device": s.device, "ip": s.ip,
                "location": where or None, "started_at": _iso(s.created_at), "last_seen_at": _iso(s.last_active_at),
                "expires_at": _iso(s.expires_at), "methods": list(s.amr or [])}

    def user_sessions(self, p: Principal, slug: str, user_id: str) -> dict:
        """The user's active sessions, most recently seen first (never a cookie value: ``id`` is the public id)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id)
        sessions = sorted(self.hub.sessions.list(user.id), key=lambda s: s.last_active_at, reverse=True)
        return {"items": [self.render_session(s) for s in sessions if s.workspace_id == ws.id]}

    def end_user_session(self, p: Principal, slug: str, user_id: str, session_id: str) -> None:
        """End one session of the user (its browser gets the sign-in page; the apps are told)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
        target = self.hub.sessions.by_public_id(user.id, str(session_id)[:64]) if isinstance(session_id, str) \
            else None
        if target is None or target.workspace_id != ws.id:
            raise AdminError(404, "not_found", "no such active session")
        self.hub.sessions.end(target.id, "ended_by_admin")
        self.audit(p, ws.id, "admin.user.session_ended", subject_id=user.id, session=target.public_id,
                   browser=target.browser, ip=target.ip)

    def second_factors(self, p: Principal, slug: str, user_id: str) -> list[dict]:
        """Which second factors the user set up and when (never a secret; a phone number masked)."""
        from idp.mfa.models import BackupCode, MfaPhone, MfaTotp
        from idp.mfa.service import mask_phone

        ws = self.workspace(p, slug)
        out = []
        with self.hub.db() as db:
            user = self._user(db, ws, user_id)
            totp = db.get(MfaTotp, user.id)
            if totp is not None and totp.confirmed_at is not None and totp.secret_enc:
                out.append({"method": "totp", "label": "Authenticator app", "added_at": _iso(totp.confirmed_at)})
            phone = db.get(MfaPhone, user.id)
            if phone is not None and phone.phone and phone.verified_at is not None:
                out.append({"method": "sms", "label": f"Text message to {mask_phone(phone.phone)}",
                            "added_at": _iso(phone.verified_at)})
            left, made = db.execute(select(func.count(BackupCode.id).filter(BackupCode.used_at.is_(None)),
                                           func.max(BackupCode.created_at)).where(BackupCode.user_id == user.id)
                                    ).one()
            if left:
                out.append({"method": "backup_codes", "label": f"Backup codes ({left} left)", "added_at": _iso(made)})
        return out

    def user_events(self, p: Principal, slug: str, user_id: str, limit: int = 20) -> list[dict]:
        """The latest audit events where the user acted or was acted on (newest first), as the audit log shows
        them (``admin.auditlog``: the same filter as ``/admin/audit?user=<id>``, policy decisions left out)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            self._user(db, ws, user_id)
        return self.search_events(p, slug, limit=limit, user=user_id, decisions=False)["items"]

    def send_password_reset(self, p: Principal, slug: str, user_id: str) -> dict:
        """Mail the user the normal password-reset link (24 hours, single use). Audited; limited like every reset
        request (5 an hour for an address: 429 beyond)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
            with account_errors():  # what the admin may not set, they may not have reset either
                check_allowed(Actor.of_principal(p), user, {"password"})
            if user.external_id:
                raise AdminError(409, "externally_managed", "this user is provisioned over SCIM: their password is "
                                 "managed by their identity provider")
            if not user.active:
                raise AdminError(409, "disabled", "this user is disabled: enable them first")
            if not user.email:
                raise AdminError(409, "no_email", "this user has no e-mail address to send the link to")
            if self.hub.invitations.blocks_reset(db, user):
                raise AdminError(409, "invited", "this user has not accepted their invitation yet: resend the "
                                 "invitation instead")
        outcome = self.hub.request_reset(ws, user.email, self._client(p))
        if outcome == "throttled":
            raise AdminError(429, "too_many_requests", "too many password resets were requested for this user in "
                             "the last hour; try again later")
        self.audit(p, ws.id, "admin.user.password_reset_sent", subject_id=user.id, email=user.email,
                   outcome=outcome)
        return {"sent": outcome == "sent", "email": user.email}

    def update_user(self, p: Principal, slug: str, user_id: str, body) -> dict:
        """Change a user's name, e-mail address, role or groups (the rules of ``idp.lifecycle``: a workspace
        admin changes neither a hub operator nor another admin's e-mail address)."""
        ws = self.workspace(p, slug)
        body = _body(body, {"name", "email", "role", "groups"})
        self._check_role(p, body.get("role"))
        actor = Actor.of_principal(p)
        watch = self._access(ws, p, "group_membership", [user_id]) if "groups" in body else nullcontext()
        with watch, self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
            known = self._group_names(db, ws)
            v = Validator()
            u = validate_user(v, {"email": user.email, **body}, "user", list(known), set())
            if v.errors:
                raise invalid(v.errors, "user")
            if "role" in body and body["role"] != "admin" and p.kind == "user" and p.actor_id == user.id:
                raise AdminError(409, "self_lockout", "you cannot remove your own admin role", "role")
            with account_errors():
                change = self.hub.accounts.write(
                    db, actor, user, name=(u.get("name") or "") if "name" in body else KEEP,
                    email=u["email"] if "email" in body else KEEP, role=u["role"] if "role" in body else KEEP,
                    profile=_name_profile(user, u.get("name") or "") if "name" in body else None)
            changed = [f for f in change.fields if f not in ("display_name", "scim")]
            if "groups" in body:
                before = self._groups_of(db, [user.id])[user.id]
                self._set_groups(db, ws, user, list(dict.fromkeys(u.get("groups") or [])), known)
                if sorted(set(u.get("groups") or [])) != before:
                    changed.append("groups")
                    user.updated_at = self.hub.clock()
            try:
                db.commit()
            except IntegrityError:
                raise AdminError(409, "conflict", "a user with this email address exists", "email") from None
            groups = self._groups_of(db, [user.id])[user.id]
        self.hub.accounts.record(actor, ws.id, "updated", user.id, changed=changed,
                                 **({"role": user.role} if "role" in changed else {}),
                                 **({"old_email": change.old_email} if change.old_email else {}))
        return self.render_user(user, groups)

    def set_active(self, p: Principal, slug: str, user_id: str, active: bool) -> dict:
        """Disable (every session ends first, as with SCIM deprovisioning) or enable a user."""
        ws = self.workspace(p, slug)
        actor = Actor.of_principal(p)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
            if not active and p.kind == "user" and p.actor_id == user.id:
                raise AdminError(409, "self_lockout", "you cannot disable your own account")
            with account_errors():  # the rules first: a refused change ends no session
                check_allowed(actor, user, {"active"})
            was = user.active

        def write():
            with self.hub.db() as db:
                row = self._user(db, ws, user_id, changed_by=p)
                self.hub.accounts.write(db, actor, row, active=active)
                db.commit()
                return row, self._groups_of(db, [row.id])[row.id]

        if active:
            (user, groups), ended = write(), 0
        else:
            done = self.hub.accounts.deprovision([(ws.id, user_id)], "deactivated", write)
            (user, groups), ended = done.result, done.sessions_ended
        if was != active or not active:
            self.hub.accounts.record(actor, ws.id, "enabled" if active else "disabled", user.id,
                                     **({} if active else {"sessions_ended": ended}))
        if was and not active and is_privileged(user):
            self.hub.accounts.alert_admins(ws, actor, user, "deactivated")
        return self.render_user(user, groups)

    def reset_mfa(self, p: Principal, slug: str, user_id: str) -> dict:
        """Remove every second factor (the user enrols again at the next sign-in) and end the user's sessions."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
        actor = Actor.of_principal(p)
        removed, ended = self.hub.accounts.reset_mfa(ws.id, user.id)
        self.hub.accounts.record(actor, ws.id, "mfa_reset", user.id, removed=removed, sessions_ended=ended)
        return {"removed": removed, "sessions_ended": ended}

    def end_sessions(self, p: Principal, slug: str, user_id: str) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            user = self._user(db, ws, user_id, changed_by=p)
        ended = len(self.hub.sessions.end_all(user.id, "ended_by_admin"))
        self.audit(p, ws.id, "admin.user.sessions_ended", subject_id=user.id, sessions_ended=ended)
        return {"sessions_ended": ended}

    # ---- groups -----------------------------------------------------------------------------------------------
    def _access(self, ws: Workspace, p: Principal, why: str, user_ids=None):
        """Around a write that can take apps away from people (``idp.assignments``): what they lost is revoked."""
        return self.hub.app_access.watch(ws.id, why, user_ids, actor_id=getattr(p, "actor_id", None))

    def _members(self, ws: Workspace, group_id: str) -> list[str]:
        with self.hub.db() as db:
            return list(db.scalars(select(GroupMember.user_id).join(Group, Group.id == GroupMember.group_id)
                                   .where(Group.id == str(group_id)[:64], Group.workspace_id == ws.id)))

    def _group(self, db, ws: Workspace, group_id: str) -> Group:
        _check_id(group_id, "group")
        g = db.scalar(select(Group).where(Group.id == group_id, Group.workspace_id == ws.id))
        if g is None:
            raise AdminError(404, "not_found", "no such group")
        return g

    def render_group(self, db, g: Group) -> dict:
        n = db.scalar(select(func.count()).select_from(GroupMember).where(GroupMember.group_id == g.id))
        return {"id": g.id, "name": g.name, "members": n, "managed_by": "scim" if g.external_id else None,
                "created_at": _iso(g.created_at)}

    def list_groups(self, p: Principal, slug: str, *, limit=None, offset=None) -> dict:
        ws = self.workspace(p, slug)
        stmt = select(Group).where(Group.workspace_id == ws.id)
        with self.hub.db() as db:
            return _page(db, stmt.order_by(Group.name, Group.id), limit, offset, lambda g: self.render_group(db, g))

    def _group_name(self, body) -> str:
        v = Validator()
        name = v.string(body.get("name"), "name")
        if v.errors:
            raise invalid(v.errors)
        name = name.strip()
        if not name:
            raise AdminError(422, "invalid", "required", "name")
        return name

    def create_group(self, p: Principal, slug: str, body) -> dict:
        ws = self.workspace(p, slug)
        name = self._group_name(_body(body, {"name"}, ("name",)))
        with self.hub.db() as db:
            if db.scalar(select(Group.id).where(Group.workspace_id == ws.id, Group.name == name)):
                raise AdminError(409, "conflict", "a group with this name exists", "name")
            g = Group(workspace_id=ws.id, name=name)
            db.add(g)
            try:
                db.commit()
            except IntegrityError:
                raise AdminError(409, "conflict", "a group with this name exists", "name") from None
            out = self.render_group(db, g)
        self.audit(p, ws.id, "admin.group.created", subject_id=g.id, name=name)
        return out

    def get_group(self, p: Principal, slug: str, group_id: str) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return self.render_group(db, self._group(db, ws, group_id))

    def update_group(self, p: Principal, slug: str, group_id: str, body) -> dict:
        ws = self.workspace(p, slug)
        name = self._group_name(_body(body, {"name"}, ("name",)))
        with self.hub.db() as db:
            g = self._group(db, ws, group_id)
            old = g.name
            if name != old and db.scalar(select(Group.id).where(Group.workspace_id == ws.id, Group.name == name)):
                raise AdminError(409, "conflict", "a group with this name exists", "name")
            g.name = name
            g.updated_at = self.hub.clock()
            db.commit()
            out = self.render_group(db, g)
        self.audit(p, ws.id, "admin.group.updated", subject_id=g.id, name=name, old_name=old)
        return out

    def delete_group(self, p: Principal, slug: str, group_id: str) -> None:
        ws = self.workspace(p, slug)
        with self._access(ws, p, "group_deleted", self._members(ws, group_id)), self.hub.db() as db:
            g = self._group(db, ws, group_id)
            db.execute(delete(GroupMember).where(GroupMember.group_id == g.id))
            db.delete(g)
            db.commit()
        self.audit(p, ws.id, "admin.group.deleted", subject_id=group_id, name=g.name)

    def group_impact(self, p: Principal, slug: str, group_id: str) -> dict:
        """What deleting a group takes away: its members, and for each app assigned through it how many of them
        lose that app (those no other assigned group of theirs keeps it for)."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            g = self._group(db, ws, group_id)
            out = self.render_group(db, g)
            members = set(db.scalars(select(GroupMember.user_id).where(GroupMember.group_id == g.id)))
            by_name = {}
            for name, uid in db.execute(select(Group.name, GroupMember.user_id).join(
                    GroupMember, GroupMember.group_id == Group.id).where(Group.workspace_id == ws.id,
                                                                         Group.id != g.id)):
                by_name.setdefault(name, set()).add(uid)
        apps = []
        for app in self.apps_by_group(p, slug).get(g.name, []):
            entry = next((e for e in self.hub.launcher.entries(ws) if e.slug == app["slug"]), None)
            kept = set().union(*(by_name.get(n, set()) for n in (entry.assigned_groups or ()) if n != g.name)) \
                if entry else set()
            apps.append({**app, "losing": len(members - kept)})
        out["apps"] = apps
        return out

    def group_members(self, p: Principal, slug: str, group_id: str, *, limit=None, offset=None) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            g = self._group(db, ws, group_id)
            stmt = select(User).join(GroupMember, GroupMember.user_id == User.id).where(GroupMember.group_id == g.id)
            page = _page(db, stmt.order_by(User.email_normalized, User.id), limit, offset, lambda u: u)
            groups = self._groups_of(db, [u.id for u in page["items"]])
        page["items"] = [self.render_user(u, groups[u.id]) for u in page["items"]]
        return page

    def set_member(self, p: Principal, slug: str, group_id: str, user_id: str, member: bool) -> dict:
        ws = self.workspace(p, slug)
        watch = nullcontext() if member else self._access(ws, p, "group_membership", [user_id])
        with watch, self.hub.db() as db:
            g = self._group(db, ws, group_id)
            u = self._user(db, ws, user_id)
            present = db.get(GroupMember, (g.id, u.id)) is not None
            if member and not present:
                db.add(GroupMember(group_id=g.id, user_id=u.id))
            elif not member and present:
                db.execute(delete(GroupMember).where(GroupMember.group_id == g.id, GroupMember.user_id == u.id))
            db.commit()
            out = self.render_group(db, g)
        if member != present:
            self.audit(p, ws.id, "admin.group.member_added" if member else "admin.group.member_removed",
                       subject_id=u.id, group=g.name)
        return out

    # ---- apps (OIDC clients, SAML service providers) -------------------------------------------------------
    def app_settings(self, ws: Workspace, kind: str, row) -> dict:
        """What the app's developers need, copy-ready."""
        base = self.hub.settings.base_url
        if kind == "oidc":
            issuer = f"{base}/w/{ws.slug}"
            return {"issuer": issuer, "discovery_url": f"{issuer}/.well-known/openid-configuration",
                    "client_id": row.client_id, "redirect_uris": list(row.redirect_uris or []),
                    "token_endpoint_auth_method": row.token_endpoint_auth_method, "pkce": "S256 (required)",
                    "scopes": list(row.scopes or []), "initiate_login_uri": row.initiate_login_uri}
        saml = f"{base}/w/{ws.slug}/saml"
        # the IdP's entity ID is the one its metadata names (saml.idp.SamlIdP.entity_id), not the metadata's URL
        return {"metadata_url": f"{saml}/metadata", "entity_id": saml, "sso_url": f"{saml}/sso",
                "slo_url": f"{saml}/slo", "sp_entity_id": row.entity_id,
                "acs_urls": [a.get("url") for a in (row.acs or []) if isinstance(a, dict)],
                "nameid_format": row.nameid_format,
                # where the app's own metadata came from: its URL (read again daily) or null (pasted/typed)
                "sp_metadata_url": row.metadata_url, "sp_metadata_fetched_at": _iso(row.metadata_fetched_at)}

    def render_app(self, ws: Workspace, kind: str, row) -> dict:
        out = {"slug": row.slug, "name": row.name, "protocol": kind, "require_mfa": bool(row.require_mfa),
               "assigned_groups": None if row.assigned_groups is None else list(row.assigned_groups),
               "show_in_launcher": row.show_in_launcher is not False, "description": row.description,
               "created_at": _iso(row.created_at), "settings": self.app_settings(ws, kind, row)}
        return out

    def _app_rows(self, db, ws: Workspace) -> list[tuple[str, object]]:
        from oidc.models import OidcClient
        from saml.models import SamlServiceProvider

        rows = [("oidc", r) for r in db.scalars(select(OidcClient).where(OidcClient.workspace_id == ws.id))]
        rows += [("saml", r) for r in db.scalars(select(SamlServiceProvider)
                                                 .where(SamlServiceProvider.workspace_id == ws.id))]
        return sorted(rows, key=lambda kr: (kr[1].slug, kr[0]))

    def apps_of_user(self, p: Principal, slug: str, user_id: str) -> list[dict]:
        """The apps a user may use and why ("everyone", "via Engineering"): ``policies.engine.may_use``, the doors'
        answer (listed on the launcher or not)."""
        from idp.launcher import usable_by

        ws = self.workspace(p, slug)
        groups = self.hub.group_names(ws.id, user_id)
        return [{"slug": e.slug, "name": e.title, "protocol": e.protocol, "why": why}
                for e, why in usable_by(self.hub.launcher.entries(ws), groups)]

    def apps_by_group(self, p: Principal, slug: str) -> dict[str, list[dict]]:
        """For each group name, the apps assigned to it."""
        from idp.launcher import sort_key

        ws = self.workspace(p, slug)
        out: dict[str, list[dict]] = {}
        for e in sorted(self.hub.launcher.entries(ws), key=sort_key):
            for name in e.assigned_groups or ():
                out.setdefault(name, []).append({"slug": e.slug, "name": e.title})
        return out

    def list_apps(self, p: Principal, slug: str, *, limit=None, offset=None) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return _page_of(self._app_rows(db, ws), limit, offset, lambda kr: self.render_app(ws, *kr))

    def _app(self, db, ws: Workspace, app_slug: str):
        if not isinstance(app_slug, str) or not APP_SLUG_RE.match(app_slug):
            raise AdminError(404, "not_found", "no such app")
        for k, r in self._app_rows(db, ws):
            if r.slug == app_slug:
                return k, r
        raise AdminError(404, "not_found", "no such app")

    def get_app(self, p: Principal, slug: str, app_slug: str) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return self.render_app(ws, *self._app(db, ws, app_slug))

    def create_app(self, p: Principal, slug: str, body) -> dict:
        """An app entry as in the config file. An OIDC client's id and secret are generated here; the secret is
        in this answer only (``client_secret``) and stored as its hash."""
        from idp.configfile import APP_KEYS
        from oidc.config import apply_oidc_apps
        from saml.config import SamlConfigError, apply_saml_apps, saml_app_errors

        ws = self.workspace(p, slug)
        # never a server-side path; metadata_url is fetched through idp.netfetch's checks (now and at every
        # refresh), and so are, at every call, an OIDC app's jwks_uri and backchannel_logout_uri and a SAML app's
        # SOAP SingleLogoutService (registered_via: api); secrets are generated, not chosen
        allowed = APP_KEYS - {"metadata_file", "client_secret", "client_secret_env", "client_id"}
        body = _body(body, allowed, ("slug", "name", "protocol"),
                     {**REFUSED, "client_secret": "generated by idhub (shown once in the answer)",
                      "client_id": "generated by idhub"})
        entry = dict(body)
        secret = None
        if entry.get("protocol") == "saml":
            _one_saml_source(entry, alternatives=("entity_id", "acs_url"))
        if entry.get("protocol") == "oidc":
            entry["client_id"] = secrets.token_urlsafe(18)
            if entry.get("token_endpoint_auth_method") not in ("none", "private_key_jwt"):
                secret = secrets.token_urlsafe(32)
                entry["client_secret"] = secret
        v = Validator()
        with self.hub.db() as db:
            known = set(self._group_names(db, ws))
        apps = validate_apps(v, [entry], "app", known)
        if not v.errors:
            from saml.config import REGISTERED_VIA

            # an admin chose the URLs: metadata_url fetched with idp.netfetch's checks now and at every refresh;
            # jwks_uri, backchannel_logout_uri and the SOAP SingleLogoutService with them at every call
            apps[0][REGISTERED_VIA] = "api"
            if entry["protocol"] == "oidc":
                _check_app_urls(apps[0])
        if not v.errors:
            for problem in saml_app_errors(apps[0]):
                v.err("app[0]", problem)
        if v.errors:
            raise invalid(v.errors, "app[0]")
        with self.hub.db() as db:
            if any(r.slug == entry["slug"] for _k, r in self._app_rows(db, ws)):
                raise AdminError(409, "conflict", "an app with this slug exists", "slug")
            try:
                if entry["protocol"] == "oidc":
                    apply_oidc_apps(db, ws, apps)
                else:
                    from saml.config import _sp_settings
                    from saml.models import SamlServiceProvider

                    sp = _sp_settings(apps[0], None)
                    _check_soap_slo(sp["slo_soap_url"], "metadata_url" if entry.get("metadata_url")
                                    else "metadata_xml")
                    eid = sp["entity_id"]
                    if db.scalar(select(SamlServiceProvider.id).where(SamlServiceProvider.workspace_id == ws.id,
                                                                      SamlServiceProvider.entity_id == eid)):
                        raise AdminError(409, "conflict", "an app with this SAML entity ID exists", "entity_id")
                    apply_saml_apps(db, ws, apps)
                db.commit()
            except (SamlConfigError, ValueError) as exc:
                db.rollback()
                raise AdminError(422, "invalid", str(exc)[:300]) from None
            except IntegrityError:
                db.rollback()
                raise AdminError(409, "conflict", "an app with this slug exists", "slug") from None
            out = self.render_app(ws, *self._app(db, ws, entry["slug"]))
        if entry["protocol"] == "saml":
            self.hub.changed(SAML_APPS, entry["slug"])
        self.audit(p, ws.id, "admin.app.created", subject_id=entry["slug"], protocol=entry["protocol"],
                   client_id=entry.get("client_id"),
                   **({"metadata_url": entry["metadata_url"]} if entry.get("metadata_url") else {}))
        if secret:
            out["client_secret"] = secret
        return out

    def update_app(self, p: Principal, slug: str, app_slug: str, body) -> dict:
        """Change an OIDC client's name, redirect URIs, scopes, per-app 2FA or back-channel logout URI, validated as
        in the config file (its id, secret and authentication method stay). A new ``backchannel_logout_uri`` marks
        the client ``registered_via: api``: idhub POSTs to it through idp.netfetch's checks from now on."""
        from oidc.config import REGISTERED_VIA

        ws = self.workspace(p, slug)
        body = _body(body, {"name", "redirect_uris", "post_logout_redirect_uris", "scopes", "require_mfa",
                            "backchannel_logout_uri", "assigned_groups", "show_in_launcher", "description",
                            "initiate_login_uri", "token_endpoint_auth_method"} | SAML_CHANGES)
        watch = self._access(ws, p, "app_assignment") if "assigned_groups" in body else nullcontext()
        with watch, self.hub.db() as db:
            kind, row = self._app(db, ws, app_slug)
            known = set(self._group_names(db, ws))
            if kind != "oidc":
                if set(body) - SAML_IN_PLACE - SAML_CHANGES:
                    raise AdminError(422, "invalid", "not a setting of a SAML app",
                                     sorted(set(body) - SAML_IN_PLACE - SAML_CHANGES)[0])
                if set(body) & SAML_CHANGES:
                    return self._update_saml(p, ws, row, body, known, db)
                return self._assign_saml(p, ws, kind, row, body, known, db)
            saml_only = sorted(set(body) & (SAML_CHANGES - {"name", "require_mfa"}))
            if saml_only:
                raise AdminError(422, "invalid", "a setting of SAML apps, not of an OpenID Connect app", saml_only[0])
            method = body.pop("token_endpoint_auth_method", row.token_endpoint_auth_method)
            switch = self._client_type_switch(row, method)
            current = {"slug": row.slug, "name": row.name, "protocol": "oidc", "client_id": row.client_id,
                       "token_endpoint_auth_method": "none", "redirect_uris": list(row.redirect_uris or []),
                       "post_logout_redirect_uris": list(row.post_logout_redirect_uris or []),
                       "backchannel_logout_uri": row.backchannel_logout_uri, "scopes": list(row.scopes or [])}
            v = Validator()
            validate_apps(v, [{**current, **body}], "app", known)
            for key in ("require_mfa", "show_in_launcher"):
                if key in body:
                    v.boolean(body[key], f"app[0].{key}")
            if v.errors:
                raise invalid(v.errors, "app[0]")
            _check_app_urls(body, current)
            changed = sorted(k for k in body if getattr(row, k) != body[k])
            for k in body:
                setattr(row, k, list(body[k]) if isinstance(body[k], list) else body[k])
            if "backchannel_logout_uri" in changed and body["backchannel_logout_uri"]:
                setattr(row, REGISTERED_VIA, "api")  # an admin chose the URL idhub POSTs to: the checks apply
            secret, revoked = self._apply_client_type(db, ws, row, method, switch)
            if method != switch[0]:
                changed = sorted([*changed, "token_endpoint_auth_method"])
            db.commit()
            out = self.render_app(ws, kind, row)
        extra = {"new_credential": "client secret"} if secret else {}
        if revoked is not None:
            extra["revoked"] = revoked  # issued tokens (a key naming "token" would be redacted)
        self.audit(p, ws.id, "admin.app.updated", subject_id=app_slug, changed=changed, **extra)
        if secret:
            out["client_secret"] = secret
        return out

    # a client secret sent either way (the default of a confidential client), one way only, or none (public)
    CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post",
                           "client_secret_basic,client_secret_post")

    @staticmethod
    def _client_type_switch(row, method) -> tuple[str, bool, bool]:
        """(the current method, becomes confidential, becomes public) for a change of an OIDC client's
        ``token_endpoint_auth_method``; AdminError 422 for one idhub does not make in place."""
        current = row.token_endpoint_auth_method
        if method == current:
            return current, False, False
        if method not in AdminService.CLIENT_AUTH_METHODS or current not in AdminService.CLIENT_AUTH_METHODS:
            raise AdminError(422, "invalid", "a client can be switched between none (public), client_secret_basic, "
                             "client_secret_post and both; for private_key_jwt add the app again with its keys",
                             "token_endpoint_auth_method")
        return current, current == "none", method == "none"

    def _apply_client_type(self, db, ws, row, method: str, switch) -> tuple[str | None, int | None]:
        """Make the switch: a client that becomes confidential gets a new secret (returned, shown once); one that
        becomes public loses its secret and the client credentials grant, and every token issued to it is revoked
        (they were issued to a client that proved a secret; from now on nobody has to). (secret, tokens revoked)"""
        from oidc.config import secret_hash
        from oidc.provider import revoke_client_tokens

        _current, to_confidential, to_public = switch
        row.token_endpoint_auth_method = method
        if to_confidential:
            secret = secrets.token_urlsafe(32)
            row.secret_hash = secret_hash(secret)
            return secret, None
        if to_public:
            row.secret_hash = None
            row.grant_types = [g for g in (row.grant_types or []) if g != "client_credentials"]
            return None, revoke_client_tokens(db, ws.id, row.client_id, self.hub.clock())
        return None, None

    def _update_saml(self, p: Principal, ws: Workspace, row, body: dict, known: set, db) -> dict:
        """A SAML app's name, per-app 2FA and the service provider itself (new metadata pasted or by URL, or a new
        entity ID with ACS URL), validated as on creation; the app keeps its identity (assignments, launcher
        tile, the sessions that used it). Without a new source its metadata stays as it is."""
        from saml.config import REGISTERED_VIA, SamlConfigError, _sp_settings, apply_saml_apps, saml_app_errors
        from saml.models import SamlServiceProvider

        sources = ("metadata_xml", "metadata_url", "entity_id", "acs_url")
        new_source = {k: body[k] for k in sources if body.get(k) not in (None, "")}
        if new_source:
            _one_saml_source(new_source, alternatives=("entity_id", "acs_url"))
        entry = {"slug": row.slug, "protocol": "saml", "name": body.get("name", row.name),
                 "require_mfa": body.get("require_mfa", bool(row.require_mfa)),
                 "assigned_groups": body.get("assigned_groups", row.assigned_groups),
                 "show_in_launcher": body.get("show_in_launcher", row.show_in_launcher is not False),
                 "description": body.get("description", row.description) or None}
        entry = {k: val for k, val in entry.items() if val is not None}
        v = Validator()
        if new_source:
            entry.update(new_source, nameid_format=row.nameid_format, attributes=row.attributes,
                         sign_response=bool(row.sign_response), sign_assertion=bool(row.sign_assertion),
                         encrypt_assertions=bool(row.encrypt_assertions), idp_initiated=bool(row.idp_initiated))
            entry = {k: val for k, val in entry.items() if val is not None}
        else:  # the app's settings stay: check the changed keys as the config file would, on a stand-in source
            entry.update(entity_id=row.entity_id, acs_url=[a.get("url") for a in row.acs or []] or None)
        apps = validate_apps(v, [entry], "app", known)
        for key in ("require_mfa", "show_in_launcher"):
            if key in body:
                v.boolean(body[key], f"app[0].{key}")
        if not v.errors and new_source:
            apps[0][REGISTERED_VIA] = "api"
            for problem in saml_app_errors(apps[0]):
                v.err("app[0]", problem)
        if v.errors:
            raise invalid(v.errors, "app[0]")
        before = self.render_app(ws, "saml", row)
        if new_source:
            try:
                sp = _sp_settings(apps[0], None)
            except (SamlConfigError, ValueError) as exc:
                raise invalid([str(exc)[:300]]) from None
            _check_soap_slo(sp["slo_soap_url"], "metadata_url" if new_source.get("metadata_url") else "metadata_xml")
            other = db.scalar(select(SamlServiceProvider.id).where(
                SamlServiceProvider.workspace_id == ws.id, SamlServiceProvider.entity_id == sp["entity_id"],
                SamlServiceProvider.id != row.id))
            if other:
                raise AdminError(409, "conflict", "another app has this SAML entity ID", "entity_id")
            row.entity_id = sp["entity_id"]  # apply_saml_apps finds the app by its entity ID: this row
            db.flush()
            try:
                apply_saml_apps(db, ws, apps)
            except (SamlConfigError, ValueError) as exc:
                db.rollback()
                raise invalid([str(exc)[:300]]) from None
        else:
            row.name = entry["name"]
            row.require_mfa = bool(entry.get("require_mfa"))
            for key in SAML_IN_PLACE & set(body):
                setattr(row, key, entry.get(key))
        db.commit()
        self.hub.changed(SAML_APPS, row.slug)  # every node's SP cache (idp.invalidation)
        out = self.render_app(ws, "saml", row)
        changed = sorted({k for k in ("name", "require_mfa", "assigned_groups", "show_in_launcher", "description")
                          if before[k] != out[k]} | {k for k in ("sp_entity_id", "acs_urls", "nameid_format",
                                                                 "sp_metadata_url")
                                                     if before["settings"][k] != out["settings"][k]})
        self.audit(p, ws.id, "admin.app.updated", subject_id=row.slug, protocol="saml", changed=changed,
                   **({"metadata_url": new_source["metadata_url"]} if new_source.get("metadata_url") else {}))
        return out

    def _assign_saml(self, p: Principal, ws: Workspace, kind: str, row, body: dict, known: set, db) -> dict:
        """A SAML app's ``assigned_groups`` changed in place (its other settings come from its metadata)."""
        from idp.configfile import check_assigned_groups

        v = Validator()
        if "assigned_groups" in body:
            check_assigned_groups(v, body["assigned_groups"], "app[0].assigned_groups", known)
        if "show_in_launcher" in body:
            v.boolean(body["show_in_launcher"], "app[0].show_in_launcher")
        if "description" in body and body["description"] is not None and (
                not isinstance(body["description"], str) or len(body["description"]) > 300):
            v.err("app[0].description", "must be a string of at most 300 characters")
        if v.errors:
            raise invalid(v.errors, "app[0]")
        changed = []
        for key in sorted(body):
            new = list(body[key]) if isinstance(body[key], list) else body[key]
            if key == "description":
                new = new or None
            if new != getattr(row, key):
                changed.append(key)
            setattr(row, key, new)
        db.commit()
        self.hub.changed(SAML_APPS, row.slug)  # every node's SP cache (the assignment is part of it)
        out = self.render_app(ws, kind, row)
        self.audit(p, ws.id, "admin.app.updated", subject_id=row.slug, changed=changed)
        return out

    def rotate_app_secret(self, p: Principal, slug: str, app_slug: str) -> dict:
        """A new client secret for a confidential OIDC client, shown once; the old one stops working now."""
        from oidc.config import secret_hash

        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            kind, row = self._app(db, ws, app_slug)
            if kind != "oidc" or not row.secret_hash:
                raise AdminError(409, "not_supported", "only a confidential OIDC client has a secret")
            secret = secrets.token_urlsafe(32)
            row.secret_hash = secret_hash(secret)
            db.commit()
            out = self.render_app(ws, kind, row)
        self.audit(p, ws.id, "admin.app.secret_rotated", subject_id=app_slug)
        out["client_secret"] = secret
        return out

    def delete_app(self, p: Principal, slug: str, app_slug: str) -> None:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            kind, row = self._app(db, ws, app_slug)
            db.delete(row)
            db.commit()
        if kind == "saml":
            self.hub.changed(SAML_APPS, app_slug)
        self.audit(p, ws.id, "admin.app.deleted", subject_id=app_slug, protocol=kind)

    # ---- connections (upstream Okta / Azure AD / SAML / OIDC / LDAP) -------------------------------------------
    def render_connection(self, ws: Workspace, row) -> dict:
        base = f"{self.hub.settings.base_url}/w/{ws.slug}/sso/{row.slug}"
        settings = {k: v for k, v in (row.settings or {}).items()
                    if k not in ("slug", "name", "protocol", "preset", "domains", "metadata_xml")}
        urls = {"start_url": f"{base}/start", "test_url": f"{base}/test"}
        if row.protocol == "saml":
            urls.update(acs_url=f"{base}/acs", sp_metadata_url=f"{base}/metadata", sp_entity_id=f"{base}/metadata")
        elif row.protocol == "oidc":
            urls["redirect_uri"] = f"{base}/callback"
        return {"slug": row.slug, "name": row.name, "protocol": row.protocol, "preset": row.preset,
                "domains": list(row.domains or []), "settings": settings, "secrets_set": sorted(row.secrets or {}),
                "urls": urls, "created_at": _iso(row.created_at)}

    @staticmethod
    def _connections_stmt(ws: Workspace):
        from federation.models import FederationConnection

        return (select(FederationConnection).where(FederationConnection.workspace_id == ws.id)
                .order_by(FederationConnection.slug, FederationConnection.id))

    def _connection_rows(self, db, ws: Workspace) -> list:
        return list(db.scalars(self._connections_stmt(ws)))

    @staticmethod
    def _check_ldap_url(body: dict, old: dict | None = None) -> None:
        """An LDAP ``url`` given (or changed) over the API: an IP literal or ``localhost`` that idp.netfetch would
        refuse is a 422 naming ``url`` now (host names are checked at every connection, federation.ldap)."""
        from federation.config import check_ldap_url
        from idp.netfetch import FetchError

        if isinstance(body.get("url"), str) and body["url"] != (old or {}).get("url"):
            try:
                check_ldap_url(body["url"], "url")
            except FetchError as exc:
                raise AdminError(422, "invalid", exc.reason, "url") from None

    def list_connections(self, p: Principal, slug: str, *, limit=None, offset=None) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return _page(db, self._connections_stmt(ws), limit, offset, lambda r: self.render_connection(ws, r))

    def _connection(self, db, ws: Workspace, conn_slug: str):
        if not isinstance(conn_slug, str) or not APP_SLUG_RE.match(conn_slug):
            raise AdminError(404, "not_found", "no such connection")
        for r in self._connection_rows(db, ws):
            if r.slug == conn_slug:
                return r
        raise AdminError(404, "not_found", "no such connection")

    def get_connection(self, p: Principal, slug: str, conn_slug: str) -> dict:
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return self.render_connection(ws, self._connection(db, ws, conn_slug))

    def create_connection(self, p: Principal, slug: str, body) -> dict:
        """A config-file ``connections`` entry, validated and applied by the config file's code. Server-side
        paths (``metadata_file``, ``ca_file``) and environment references are refused. A SAML ``metadata_url``
        is fetched through ``idp.netfetch`` (internal addresses refused unless allow-listed) and its document
        validated as pasted ``metadata_xml`` is; the connection is marked ``registered_via: api``, so its later
        fetches (metadata refresh, OIDC discovery, keys, token) and its LDAP server get the same checks (an LDAP
        ``url`` on a refused IP literal or ``localhost`` is a 422 naming ``url`` at once)."""
        from federation.config import REGISTERED_VIA, apply_connections, connection_settings
        from idp.configfile import CONNECTION_KEYS, validate_connections

        ws = self.workspace(p, slug)
        allowed = CONNECTION_KEYS - {"metadata_file", "ca_file", "client_secret_env", "bind_password_env"}
        body = _body(body, allowed, ("slug", "name", "protocol"), REFUSED)
        if body.get("protocol") == "saml":
            _one_saml_source(body)
        if body.get("protocol") == "oidc":
            _check_oidc_urls(body)
        if body.get("protocol") == "ldap":
            self._check_ldap_url(body)
        v = Validator()
        conns = validate_connections(v, [dict(body)], "connection", ws.plan, fetch=_guarded_metadata)
        if v.errors:
            raise invalid(v.errors, "connection[0]")
        [conn] = conns
        conn[REGISTERED_VIA] = "api"
        key = secret_keys(self.hub.settings)  # encrypts under the current key, reads under any listed
        with self.hub.db() as db:
            rows = self._connection_rows(db, ws)
            if any(r.slug == conn["slug"] for r in rows):
                raise AdminError(409, "conflict", "a connection with this slug exists", "slug")
            taken = {d: r.slug for r in rows for d in (r.domains or [])}
            for d in conn.get("domains") or []:
                if d in taken:
                    raise AdminError(409, "conflict", f"{d} already belongs to connection {taken[d]!r}", "domains")
            existing = [{k: val for k, val in connection_settings(r, key).items() if k != "id"} for r in rows]
            try:
                apply_connections(db, ws, existing + [conn], key)
                db.commit()
            except IntegrityError:
                db.rollback()
                raise AdminError(409, "conflict", "a connection with this slug exists", "slug") from None
            out = self.render_connection(ws, self._connection(db, ws, conn["slug"]))
        self.hub.changed(CONNECTIONS, conn["slug"])
        self.audit(p, ws.id, "admin.connection.created", subject_id=conn["slug"], protocol=conn["protocol"],
                   domains=conn.get("domains") or [],
                   **({"metadata_url": conn["metadata_url"]} if conn.get("metadata_url") else {}))
        return out

    def connection_entry(self, p: Principal, slug: str, conn_slug: str) -> dict:
        """The connection as the config-file entry an admin would write (``admin.export.connection_entry``: no
        secrets, no defaults), plus what the console's edit page shows about its metadata."""
        from admin.export import connection_entry

        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            row = self._connection(db, ws, conn_slug)
            settings = row.settings or {}
            return {"entry": connection_entry(row), "secrets_set": sorted(row.secrets or {}),
                    "metadata_url": settings.get("metadata_url"),
                    "metadata_xml": settings.get("metadata_xml") if row.protocol == "saml" else None}

    def update_connection(self, p: Principal, slug: str, conn_slug: str, body) -> dict:
        """A partial ``connections`` entry merged over the connection's declared settings (the entry
        ``idhub export-config`` writes), validated as a whole by the config file's validator and stored by
        ``federation.config.apply_connections``. ``null`` removes a key (its default applies). Secrets: omitted,
        unchanged; given, replaced. ``slug`` and ``protocol`` cannot change. The keys the API refuses on creation
        (``metadata_file``, ``ca_file``, ``*_env``) are refused here too. A connection whose metadata comes from
        a ``metadata_url`` keeps it (checked against the copy idhub has: nothing is fetched) unless
        ``metadata_xml`` replaces it; a ``metadata_url`` given here is fetched as on creation (idp.netfetch) and
        replaces pasted metadata; ``metadata_url: null`` keeps the copy idhub has as pasted metadata. A new
        ``metadata_url``, ``issuer``, ``groups_endpoint`` or LDAP ``url`` (checked as on creation) marks the
        connection ``registered_via: api``."""
        from admin.export import connection_entry
        from federation.config import (
            REGISTERED_VIA,
            SECRET_KEYS,
            TRUST_KEYS,
            TRUST_SET_VIA,
            apply_connections,
            connection_settings,
        )
        from idp.configfile import CONNECTION_KEYS, validate_connections

        ws = self.workspace(p, slug)
        allowed = CONNECTION_KEYS - set(REFUSED)
        if not isinstance(body, dict):
            raise AdminError(400, "bad_request", "the body must be a JSON object")
        key = secret_keys(self.hub.settings)  # encrypts under the current key, reads under any listed
        with self.hub.db() as db:
            rows = self._connection_rows(db, ws)
            row = self._connection(db, ws, conn_slug)
            body = _body(body, allowed, (), REFUSED)
            for fixed, value in (("slug", row.slug), ("protocol", row.protocol)):
                if fixed in body and body[fixed] != value:
                    raise AdminError(422, "invalid", f"cannot be changed (it is {value!r}); remove the connection "
                                     "and add a new one", fixed)
            old = {k: val for k, val in connection_settings(row, key).items() if k != "id"}
            entry = connection_entry(row)
            entry.update({k: old[k] for k in SECRET_KEYS if k in old})
            if "attribute_mapping" in body:  # the config file's other name for attribute_map
                entry.pop("attribute_map", None)
            if row.protocol == "saml":
                _one_saml_source(body)
            if row.protocol == "oidc":
                _check_oidc_urls(body, old)
            if row.protocol == "ldap":
                self._check_ldap_url(body, old)
            new_url = body.get("metadata_url") is not None  # fetched now, through idp.netfetch's checks
            stored_xml = (row.settings or {}).get("metadata_xml")
            if body.get("metadata_xml") is not None:  # pasted metadata replaces the metadata_url it came from
                entry.pop("metadata_url", None)
            if new_url:  # a metadata URL replaces pasted metadata
                entry.pop("metadata_xml", None)
            if "metadata_url" in body and body["metadata_url"] is None and body.get("metadata_xml") is None \
                    and old.get("metadata_url") and stored_xml:
                entry["metadata_xml"] = stored_xml  # no longer read again: the copy idhub has stays, as pasted
            entry.update(body)
            entry = {k: val for k, val in entry.items() if val is not None}
            url = None if new_url else entry.pop("metadata_url", None)
            if url is not None:  # validate the copy idhub has; fetch nothing
                entry["metadata_xml"] = stored_xml
            v = Validator()
            conns = validate_connections(v, [entry], "connection", ws.plan, fetch=_guarded_metadata)
            if v.errors:
                raise invalid(v.errors, "connection[0]")
            [conn] = conns
            if url is not None:
                conn["metadata_url"] = url
            via = old.get(REGISTERED_VIA)
            if new_url or any(isinstance(body.get(k), str) and body[k] != old.get(k)
                              for k in ("issuer", "groups_endpoint", "url")):
                via = "api"  # an admin chose the URL idhub calls: the checks apply from now on
            if via:
                conn[REGISTERED_VIA] = via
            if old.get(TRUST_SET_VIA) == "api" or any(conn.get(k) != old.get(k) for k in TRUST_KEYS):
                conn[TRUST_SET_VIA] = "api"  # what it vouches for is an admin's choice now (federation.config)
            taken = {d: r.slug for r in rows if r.id != row.id for d in (r.domains or [])}
            for d in conn.get("domains") or []:
                if d in taken:
                    raise AdminError(409, "conflict", f"{d} already belongs to connection {taken[d]!r}", "domains")
            wanted = [conn if r.id == row.id else
                      {k: val for k, val in connection_settings(r, key).items() if k != "id"} for r in rows]
            apply_connections(db, ws, wanted, key)
            db.commit()
            out = self.render_connection(ws, self._connection(db, ws, row.slug))
        changed = sorted(k for k in set(old) | set(conn)
                         if old.get(k) != conn.get(k) and k not in (REGISTERED_VIA, TRUST_SET_VIA))
        self.hub.changed(CONNECTIONS, row.slug)
        self.audit(p, ws.id, "admin.connection.updated", subject_id=row.slug, protocol=row.protocol, changed=changed,
                   **({"metadata_url": conn["metadata_url"]} if new_url else {}))
        out["changed"] = changed
        return out

    def connection_links(self, p: Principal, slug: str, conn_slug: str) -> int:
        """How many idhub accounts are linked to the connection (they lose that way in when it is removed)."""
        from federation.models import FederationLink

        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            row = self._connection(db, ws, conn_slug)
            return db.scalar(select(func.count()).select_from(FederationLink)
                             .where(FederationLink.connection_id == row.id)) or 0

    def delete_connection(self, p: Principal, slug: str, conn_slug: str) -> None:
        from federation.models import FederationConnection

        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            row = self._connection(db, ws, conn_slug)
            db.execute(delete(FederationConnection).where(FederationConnection.id == row.id,
                                                          FederationConnection.workspace_id == ws.id))
            db.commit()
        self.hub.changed(CONNECTIONS, conn_slug)
        self.audit(p, ws.id, "admin.connection.deleted", subject_id=conn_slug, protocol=row.protocol)

    # ---- policies ---------------------------------------------------------------------------------------------
    def get_policies(self, p: Principal, slug: str) -> dict:
        ws = self.workspace(p, slug)
        return {"policies": dict(ws.policies or {}), "summary": summarise(ws.policies or {})}

    def put_policies(self, p: Principal, slug: str, body) -> dict:
        ws = self.workspace(p, slug)
        if not isinstance(body, dict):
            raise AdminError(400, "bad_request", "the body must be a JSON object")
        v = Validator()
        policies = validate_policies(v, body, "policies", ws.plan)
        if v.errors:
            raise invalid(v.errors, "policies")
        lst = policies.get("ip_allowlist")
        if lst and p.kind == "user" and p.ip:
            try:
                ip = ipaddress.ip_address(p.ip)
            except ValueError:
                ip = None
            if ip is None or not any(ip.version == n.version and ip in n for n in parse_allowlist(lst)):
                raise AdminError(409, "self_lockout", f"this allowlist does not include your own address ({p.ip}); "
                                 "you would be locked out", "ip_allowlist")
        with self.hub.db() as db:
            row = db.get(Workspace, ws.id)
            old = dict(row.policies or {})
            row.policies = policies
            db.commit()
        self.hub.changed(WORKSPACES, ws.slug)  # policies are read per request; copies of the workspace are dropped
        changed = sorted(k for k in set(old) | set(policies) if old.get(k) != policies.get(k))
        self.audit(p, ws.id, "admin.policies.updated", changed=changed, policies=policies)
        return {"policies": policies, "summary": summarise(policies)}

    # ---- signing keys -----------------------------------------------------------------------------------------
    def _protocols(self):
        from oidc import install as install_oidc
        from saml import install as install_saml

        return (getattr(self.hub, "oidc", None) or install_oidc(self.hub),
                getattr(self.hub, "saml", None) or install_saml(self.hub))

    def list_signing_keys(self, p: Principal, slug: str) -> dict:
        ws = self.workspace(p, slug)
        oidc, saml = self._protocols()
        items = [{"id": row.kid, "protocol": "oidc", "alg": row.alg,
                  "state": "published" if row.retired_at else "signing", "created_at": _iso(row.created_at),
                  "expires_at": _iso(row.expires_at)} for row in oidc.keys.published(ws.id)]
        items += [{"id": k["id"], "protocol": "saml", "alg": "RS256", "state": k["state"], "created_at": None,
                   "expires_at": _iso(k["not_after"])} for k in saml.keys.listing(ws)]
        return {"items": items}

    def revoke_signing_key(self, p: Principal, slug: str, key_id: str) -> dict:
        """Emergency revocation of an OIDC key (by kid) or a SAML key (by certificate SHA-256), on every node at
        once; audited with the admin as actor."""
        ws = self.workspace(p, slug)
        if not isinstance(key_id, str) or not re.fullmatch(r"[A-Za-z0-9_:-]{1,128}", key_id):
            raise AdminError(404, "not_found", "no such signing key")
        oidc, saml = self._protocols()

        def record(type_: str, data: dict) -> None:
            self.audit(p, ws.id, type_, subject_id=data.get("kid") or data.get("revoked"), **data)
        done = oidc.revoke_key(ws, key_id, record=record)
        if done is not None:
            return {"revoked": key_id, "protocol": "oidc", "signing": done["replacement"]}
        if re.fullmatch(r"[0-9a-fA-F:]{64,95}", key_id):
            done = saml.keys.revoke(ws, key_id, record=record)
            if done is not None:
                return {"revoked": done["revoked"], "protocol": "saml", "signing": done["signing"]}
        raise AdminError(404, "not_found", "no such signing key")

    # ---- SCIM tokens ------------------------------------------------------------------------------------------
    def list_scim_tokens(self, p: Principal, slug: str, *, limit=None, offset=None) -> dict:
        from scim.models import ScimToken

        ws = self.workspace(p, slug)
        stmt = select(ScimToken).where(ScimToken.workspace_id == ws.id).order_by(ScimToken.created_at, ScimToken.id)
        with self.hub.db() as db:
            return _page(db, stmt, limit, offset, lambda r: {
                "id": r.id, "name": r.name, "read_only": bool(r.read_only), "created_at": _iso(r.created_at),
                "revoked_at": _iso(r.revoked_at)})

    def create_scim_token(self, p: Principal, slug: str, body) -> dict:
        from scim.config import hash_token, validate_scim_tokens
        from scim.models import ScimToken

        ws = self.workspace(p, slug)
        body = _body(body, {"name", "read_only"}, ("name",))
        token = secrets.token_urlsafe(32)
        errors = validate_scim_tokens([{**body, "token": token}], "scim_tokens")
        if errors:
            raise invalid(errors, "scim_tokens[0]")
        if ws.plan != "enterprise":
            raise AdminError(409, "plan_required", "SCIM provisioning needs the enterprise plan")
        with self.hub.db() as db:
            if db.scalar(select(ScimToken.id).where(ScimToken.workspace_id == ws.id, ScimToken.name == body["name"])):
                raise AdminError(409, "conflict", "a SCIM token with this name exists", "name")
            row = ScimToken(workspace_id=ws.id, name=body["name"], token_hash=hash_token(token),
                            read_only=bool(body.get("read_only", False)))
            db.add(row)
            try:
                db.commit()
            except IntegrityError:
                raise AdminError(409, "conflict", "a SCIM token with this name exists", "name") from None
        self.audit(p, ws.id, "admin.scim_token.created", subject_id=row.id, name=row.name, read_only=row.read_only)
        return {"id": row.id, "name": row.name, "read_only": bool(row.read_only), "created_at": _iso(row.created_at),
                "revoked_at": None, "token": token,
                "scim_base_url": f"{self.hub.settings.base_url}/w/{ws.slug}/scim/v2"}

    def revoke_scim_token(self, p: Principal, slug: str, token_id: str) -> None:
        from scim.models import ScimToken

        ws = self.workspace(p, slug)
        _check_id(token_id, "SCIM token")
        with self.hub.db() as db:
            row = db.scalar(select(ScimToken).where(ScimToken.id == token_id, ScimToken.workspace_id == ws.id))
            if row is None:
                raise AdminError(404, "not_found", "no such SCIM token")
            if row.revoked_at is None:
                row.revoked_at = self.hub.clock()
                db.commit()
        self.hub.changed(SCIM_TOKENS, token_id)
        self.audit(p, ws.id, "admin.scim_token.revoked", subject_id=token_id, name=row.name)

    # ---- audit log --------------------------------------------------------------------------------------------
    @staticmethod
    def render_event(ev: AuditEvent) -> dict:
        return {"seq": ev.seq, "occurred_at": iso_utc(ev.occurred_at), "type": ev.type, "actor_id": ev.actor_id,
                "actor_email": ev.actor_email, "subject_id": ev.subject_id, "ip": ev.ip,
                "request_id": ev.request_id, "data": ev.data or {}}

    @staticmethod
    def audit_filters(*, type=None, actor=None, since=None, until=None, user=None, app=None,  # noqa: A002
                      kind=None, outcome=None, decisions=True) -> auditlog.Filters:
        """The audit log's filters (``admin.auditlog``), checked; ``kind`` is one kind or a list of them."""
        kinds = [k for k in ([kind] if isinstance(kind, str) else list(kind or [])) if k]
        f = auditlog.Filters(type=type or None, actor=actor or None, user=user or None, app=app or None,
                             kinds=kinds, outcome=outcome or None, since=parse_time(since, "since"),
                             until=parse_time(until, "until"), decisions=bool(decisions))
        try:
            return f.check()
        except auditlog.FilterError as exc:
            raise AdminError(400, "bad_parameter", exc.message, exc.field) from None

    def search_events(self, p: Principal, slug: str, *, limit=None, before=None, **filters) -> dict:
        """Newest first; ``before`` (a ``seq``) pages back. Each event as ``admin.auditlog`` presents it (the
        recorded fields, and its description, kind, outcome, actor's e-mail, target, app, readable details)."""
        ws = self.workspace(p, slug)
        limit = _int(limit, "limit", 50, 1, MAX_LIMIT)
        before_seq = _int(before, "before", 0, 0, 2**62) if before not in (None, "") else None
        f = self.audit_filters(**filters)
        with self.hub.db() as db:
            out = auditlog.page(db, ws.id, f, limit=limit, before=before_seq)
        for item in out["items"]:  # the names this API has always given them
            item["subject_id"] = item["target_id"]
            item["actor_label"] = item["actor_email"] or item["actor_id"]
            item["subject_label"] = item["target"]
            item["details"] = dict(item["details"])
            for key in ("prev_hash", "hash", "workspace_id", "user_agent"):
                item.pop(key, None)
        return out

    def export_events(self, p: Principal, slug: str, *, fmt="json", **filters):
        """The matching events, oldest first, with the columns of ``idp.eventcatalog.EXPORT_COLUMNS``."""
        ws = self.workspace(p, slug)
        if fmt not in ("json", "csv"):
            raise AdminError(400, "bad_parameter", "format must be csv or json", "format")
        f = self.audit_filters(**filters)
        self.audit(p, ws.id, "admin.audit.exported", format=fmt)
        return auditlog.export(self.hub.db, ws.id, f, fmt)

    def audit_apps(self, p: Principal, slug: str) -> list[auditlog.AppRef]:
        """The workspace's apps, for the audit log's app filter."""
        ws = self.workspace(p, slug)
        with self.hub.db() as db:
            return auditlog.workspace_apps(db, ws.id)

    # ---- dashboard --------------------------------------------------------------------------------------------
    def dashboard(self, p: Principal, slug: str) -> dict:
        ws = self.workspace(p, slug)
        now = self.hub.clock()
        since = now - timedelta(hours=24)
        with self.hub.db() as db:
            def count(type_):
                return db.scalar(select(func.count()).select_from(AuditEvent).where(
                    AuditEvent.chain == chain_for(ws.id), AuditEvent.type == type_, AuditEvent.occurred_at >= since))

            users = db.scalar(select(func.count()).select_from(User).where(User.workspace_id == ws.id))
            disabled = db.scalar(select(func.count()).select_from(User).where(User.workspace_id == ws.id,
                                                                              User.active.is_(False)))
            sessions = db.scalar(select(func.count()).select_from(SessionRow).where(
                SessionRow.workspace_id == ws.id, SessionRow.revoked_at.is_(None), SessionRow.expires_at > now))
            failed = db.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.chain == chain_for(ws.id), AuditEvent.type.in_(failed_factor_types()),
                AuditEvent.occurred_at >= since))
            return {"signins_24h": count("auth.signin.success"), "failures_24h": failed,
                    "since_iso": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "active_sessions": sessions, "users": users, "disabled_users": disabled}


def _name_profile(user: User | None, name: str) -> dict:
    """An admin-given name as SCIM shows names: ``displayName`` and ``name.formatted`` (a SCIM client that writes
    them later replaces both)."""
    scim = dict((user.scim if user is not None else None) or {})
    parts = dict(scim.get("name") or {})
    if name:
        parts["formatted"] = name[:200]
    else:
        parts.pop("formatted", None)
    if parts:
        scim["name"] = parts
    else:
        scim.pop("name", None)
    return {"display_name": name[:200] or None, "scim": scim or None}


def summarise(policies: dict) -> list[str]:
    """The policies' effect in plain language, one sentence each."""
    out = []
    if policies.get("require_mfa"):
        out.append("Everyone must use two-factor authentication.")
    elif policies.get("require_mfa_for_admins", True):
        out.append("Admins must use two-factor authentication; for everyone else it is optional.")
    else:
        out.append("Two-factor authentication is optional (also for admins).")
    methods = policies.get("mfa_methods")
    names = {"totp": "an authenticator app", "sms": "text messages", "backup_codes": "backup codes",
             "webauthn": "passkeys and security keys"}
    if policies.get("require_phishing_resistant_mfa"):
        out.append("Everyone signs in with a passkey or security key (phishing-resistant).")
    elif policies.get("require_phishing_resistant_mfa_for_admins"):
        out.append("Admins sign in with a passkey or security key (phishing-resistant).")
    if methods:
        out.append("Allowed second factors: " + ", ".join(names.get(m, m) for m in methods) + ".")
    if policies.get("ip_allowlist"):
        out.append("Sign-in only from " + ", ".join(policies["ip_allowlist"]) + ".")
    else:
        out.append("Sign-in from any network.")
    for key, label in (("session_idle_timeout", "Sessions end after {} without activity."),
                       ("session_max_lifetime", "Everyone signs in again at least every {}.")):
        if policies.get(key):
            out.append(label.format(_human(policies[key])))
    return out


def _human(seconds: int) -> str:
    for unit, n in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % n == 0 and seconds >= n:
            k = seconds // n
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{seconds} seconds"
