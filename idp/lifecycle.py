"""The one account service: every write of account state, from every channel, with one set of rules.

An account is changed through SCIM, the admin API and console, the config file (``idhub apply``), upstream
sign-in (just-in-time creation) and the user's own security page. Each of them calls this module and says who
acts (an ``Actor``: ``scim:<token>``, ``admin:<who>``, ``operator:<who>``, ``config``, ``upstream:<connection>``,
``self``); the rules below are the same whatever the channel:

- identifiers: one normalisation (NFKC + case folding, ``idp.accounts``), look-alike addresses refused;
- passwords: the rules of ``idp.passwords``;
- privileged accounts (``admin``, ``operator``) are protected by rule, not by channel (``check_allowed``): a SCIM
  token cannot set the e-mail, password or role of an admin, nor change an operator at all; a workspace admin
  cannot change a hub operator, nor another admin's e-mail or password; the config file and operator credentials
  can change anything;
- a change of address clears ``email_verified_via`` and kills the reset links mailed to the old one;
- deprovisioning (``deprovision``) ends every session first — the apps are told through the session-end
  listeners (OIDC back-channel logout, SAML logout), the user's OAuth grants are revoked — and only then writes,
  so that a retry after a crash finishes the job; sessions started in between are ended after the write.

``write`` is the only code that sets the columns of ``User`` (the sign-in's transparent argon2 rehash of the
same password aside). Plain Python: it takes the caller's ORM session, so a channel keeps its own transaction
(SCIM's row lock and If-Match, the config file's all-or-nothing apply).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select

from idp import passwords
from idp.accounts import ADMIN_ROLES, ROLES, InvalidEmail, parse_email, parse_username
from idp.db import InsertPart, insert_together
from idp.models import PasswordResetToken, User

log = logging.getLogger("idhub.lifecycle")

KEEP: Any = object()  # "leave this attribute as it is"
PROFILE_FIELDS = ("external_id", "display_name", "given_name", "family_name", "scim")
PROTECTED = frozenset({"email", "username", "password", "role"})  # of a privileged account: not from every channel
# the audit event prefix of each channel's account events (existing names: scim.user.*, admin.user.*, …)
EVENT_PREFIX = {"scim": "scim.user", "admin": "admin.user", "operator": "admin.user", "config": "config.user",
                "upstream": "federation.user", "self": "account", "system": "account"}


@dataclass(frozen=True)
class Actor:
    """Who changes an account, through which channel. ``label`` names both in the audit log."""

    channel: str  # scim | admin | operator | config | upstream | self | system
    name: str = ""  # the SCIM token's or API token's name, the admin's e-mail, the connection's slug
    actor_id: str | None = None  # the admin's user id or token id
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    via: str | None = None  # admin: "console" or "api"

    def __post_init__(self):
        if self.channel not in EVENT_PREFIX:
            raise ValueError(f"unknown channel {self.channel!r}")

    @property
    def label(self) -> str:
        return f"{self.channel}:{self.name}" if self.name and self.channel not in ("config", "self") else self.channel

    @property
    def audit_name(self) -> str:
        """The audit log's actor: the admin's e-mail (or ``token:<name>``), ``scim:<token>``, ``config``, …"""
        return self.name if self.channel in ("admin", "operator", "self") and self.name else self.label

    @property
    def trusted(self) -> bool:
        """The operator's own channels: the config file and operator credentials may change any account."""
        return self.channel in ("config", "operator", "system")

    @classmethod
    def scim(cls, token_name: str, token_id: str | None = None) -> Actor:
        return cls("scim", token_name, token_id)

    @classmethod
    def config(cls) -> Actor:
        return cls("config", "idhub apply")

    @classmethod
    def upstream(cls, connection_slug: str) -> Actor:
        return cls("upstream", connection_slug)

    @classmethod
    def of_principal(cls, p) -> Actor:
        """An admin API token or a signed-in admin (``admin.tokens.Principal``)."""
        return cls("operator" if p.operator else "admin", p.actor_email, p.actor_id, p.ip, p.user_agent,
                   p.request_id, "console" if p.kind == "user" else "api")


class AccountError(Exception):
    """A change refused. ``kind``: ``invalid`` (a value breaks a rule), ``uniqueness`` (the address is taken),
    ``mutability`` (this channel may not change this attribute of this account), ``forbidden`` (this channel
    may not change this account at all). ``field`` names the attribute (``email``, ``password``, ``role``, …)."""

    def __init__(self, kind: str, field: str | None, message: str):
        super().__init__(message)
        self.kind, self.field, self.message = kind, field, message


@dataclass
class Change:
    """What a ``write`` changed."""

    fields: list[str] = field(default_factory=list)
    old_email: str | None = None
    old_role: str | None = None
    activated: bool = False
    deactivated: bool = False
    password_set: bool = False


def is_privileged(user) -> bool:
    return getattr(user, "role", None) in ADMIN_ROLES


def check_allowed(actor: Actor, user, fields: set[str], *, new: bool = False) -> None:
    """Raise ``AccountError`` unless ``actor`` may change ``fields`` of ``user`` (rules by account, not by
    channel; see the module's docstring and docs/security.md)."""
    if new or actor.trusted or not fields:
        return
    role = getattr(user, "role", "member")
    if role == "operator":
        if actor.channel == "self" and not fields & {"role", "active", "deleted"}:
            return
        first = sorted(fields & PROTECTED) or sorted(fields)
        raise AccountError("mutability" if first[0] in PROTECTED else "forbidden", first[0],
                           "a hub operator's account can only be changed by the hub operator (operator credential "
                           "or the config file)")
    if actor.channel == "scim":
        if "role" in fields:
            raise AccountError("mutability", "role", "SCIM cannot change an account's role")
        if role == "admin":
            hit = sorted(fields & {"email", "password", "username"})
            if hit:
                what = "userName" if hit[0] in ("email", "username") else hit[0]
                raise AccountError("mutability", hit[0], f"{what} of an administrator's account cannot be set over "
                                   "SCIM; an admin of the workspace or the hub operator can change it")
    elif actor.channel == "upstream":
        bad = sorted(fields & PROTECTED)
        if bad:
            raise AccountError("mutability", bad[0], f"an identity provider cannot change {bad[0]}")
    elif actor.channel == "admin":
        if role == "admin" and actor.actor_id != getattr(user, "id", None):
            bad = sorted(fields & {"email", "password"})
            if bad:
                raise AccountError("forbidden", bad[0], f"an admin cannot change another admin's {bad[0]}; "
                                                        "they change it themselves, or the hub operator does")


def identifier(value) -> tuple[str, str]:
    """(address as shown, normalised key) or ``AccountError`` naming ``email``."""
    if not isinstance(value, str) or not value.strip():
        raise AccountError("invalid", "email", "an e-mail address is required")
    try:
        return parse_email(value)  # both from one parse (clean_email and normalise_email would parse twice)
    except InvalidEmail as exc:
        raise AccountError("invalid", "email", str(exc) or "not a valid e-mail address") from None


def username_of(value) -> tuple[str, str]:
    """(userName as shown, normalised key) or ``AccountError`` naming ``userName`` (``idp.accounts.parse_username``:
    any string, but no invisible, control or bidi characters and no spaces)."""
    try:
        return parse_username(value)
    except InvalidEmail as exc:
        raise AccountError("invalid", "userName", str(exc)) from None


_U = User.__table__.c
# prebuilt (no statement building per write): is this key another user's address, or another user's username?
_TAKEN = {col.key: select(_U.id).where(_U.workspace_id == bindparam("w"), col == bindparam("k")).limit(1)
          for col in (_U.email_normalized, _U.username_normalized)}


# the same checks as conditions of a new account's INSERT (``write(..., guards=)``, ``insert_new``): true when free
_FREE = {(col.key, what): f"NOT EXISTS (SELECT 1 FROM users WHERE workspace_id = :{what}_w AND {col.name} = "  # noqa: S608
                          f":{what}_k)"
         for col, what in ((_U.username_normalized, "email_as_username"), (_U.email_normalized, "username_as_email"),
                           (_U.username_normalized, "username"))}


@dataclass(frozen=True)
class Guard:
    """A rule's check that the new account's INSERT runs in its own statement (``insert_new``): SQL that is true
    when the account may be written, its parameters, and the refusal when it is false."""

    sql: str
    params: dict
    error: Exception


def _check_taken(db, user: User, column, key: str, what: str, error: AccountError, guards: list | None) -> None:
    """Raise ``error`` if ``key`` is another user's (``column``); with ``guards`` (a new account written by
    ``insert_new``), append the check to them instead: the INSERT's statement makes it, no round trip of its own."""
    if guards is not None:
        guards.append(Guard(_FREE[(column.key, what)], {f"{what}_w": user.workspace_id, f"{what}_k": key}, error))
    elif _taken(db, user, column, key):
        raise error


def _taken(db, user: User, column, key: str) -> bool:
    if db.autoflush:  # what an ORM query would do first: the session's pending users are seen (``idhub apply``)
        db.flush()
    found = db.connection().execute(_TAKEN[column.key], {"w": user.workspace_id, "k": key}).scalar()
    return found is not None and found != user.id


def password_errors(password, email: str | None) -> str | None:
    if not isinstance(password, str):
        return "must be a string"
    broken = passwords.check(password, email=email)
    return "; ".join(r.text for r in broken) if broken else None


def write(db, actor: Actor, user: User, *, hasher, clock: Callable, new: bool = False, email=KEEP, name=KEEP,
          role=KEEP, active=KEEP, password=KEEP, password_hash=KEEP, reset_required=KEEP, verified_via=KEEP,
          profile: dict | None = None, username=KEEP, guards: list | None = None) -> Change:
    """Set attributes of ``user`` (a ``User`` in ``db``; ``new``: not stored yet) in the caller's transaction,
    after every rule passed; nothing is set when one fails. The caller commits; ``Change`` says what changed.

    ``email=None`` removes the address (a SCIM user whose client sent none: they sign in with their username and
    get no mail); ``username``: a userName that is not the address (None: the userName is the address). A
    username that is the user's own address is stored as None. Sign-in finds a user by either
    (``idp.accounts.identifier_matches``), so neither may be another user's address or username.

    ``guards`` (a list; new accounts only): the checks that read other users ("taken") are appended to it as
    ``Guard``s instead of being made here; the caller passes them to ``AccountService.insert``, whose statement
    makes them before it writes, in the order they were met here."""
    change = Change()
    key = clean = None
    if email is None:
        clean, key = "", None
    elif email is not KEEP:
        clean, key = identifier(email)
    uname = ukey = None
    if username is not KEEP and username is not None:
        uname, ukey = username_of(username)
    final_email_key = key if email is not KEEP else user.email_normalized
    if username is not KEEP and ukey is not None and ukey == final_email_key:
        uname = ukey = None  # the userName is the address
    if username is not KEEP and ukey is None and final_email_key is None:
        raise AccountError("invalid", "userName", "a user without an e-mail address needs a username")
    if username is KEEP and email is None and not getattr(user, "username_normalized", None):
        raise AccountError("invalid", "email", "an e-mail address is required")
    wanted: set[str] = set()
    if email is not KEEP and (key != user.email_normalized or clean != user.email):
        wanted.add("email")
    if username is not KEEP and (ukey != getattr(user, "username_normalized", None)
                                 or uname != getattr(user, "username", None)):
        wanted.add("username")
    if role is not KEEP:
        if role not in ROLES:
            raise AccountError("invalid", "role", f"must be one of {', '.join(ROLES)}")
        if role != (user.role or "member"):
            wanted.add("role")
    if active is not KEEP and bool(active) != bool(user.active if user.active is not None else True):
        wanted.add("active")
    if password is not KEEP and password is not None:
        wanted.add("password")
    if password_hash is not KEEP and password_hash is not None:
        wanted.add("password")
    if name is not KEEP and (name or "")[:200] != (user.name or ""):
        wanted.add("name")
    if profile and any(getattr(user, k, None) != v for k, v in profile.items()):
        wanted.add("profile")
    check_allowed(actor, user, wanted, new=new)
    if password is not KEEP and password is not None:
        why = password_errors(password, clean or user.email)
        if why:
            raise AccountError("invalid", "password", f"does not meet the password rules: {why}")
    if guards is not None and not new:
        raise ValueError("guards are for a new account's INSERT")
    if "email" in wanted and key is not None and key != user.email_normalized:
        _check_taken(db, user, User.username_normalized, key, "email_as_username", AccountError(
            "uniqueness", "email", "this e-mail address is another user's username in this workspace"), guards)
    if "username" in wanted and ukey is not None:
        _check_taken(db, user, User.email_normalized, ukey, "username_as_email", AccountError(
            "uniqueness", "userName", "this userName is another user's e-mail address in this workspace"), guards)
        _check_taken(db, user, User.username_normalized, ukey, "username", AccountError(
            "uniqueness", "userName", "this userName is already in use in this workspace"), guards)
    if "email" in wanted and key != user.email_normalized:
        if not new and key is not None:
            taken = db.scalar(select(User.id).where(User.workspace_id == user.workspace_id,
                                                    User.email_normalized == key))
            if taken is not None and taken != user.id:
                raise AccountError("uniqueness", "email", "this e-mail address is already in use in this workspace")
            change.old_email = user.email
            # the address is another one: what vouched for the old one does not vouch for it, and the reset links
            # mailed to the old one die
            user.email_verified_via = None
            db.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
        user.email_normalized = key
    if "email" in wanted:
        if key is None and not new:
            change.old_email = user.email or None
            user.email_verified_via = None
            db.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
        user.email = clean
        change.fields.append("email")
    if "username" in wanted:
        user.username, user.username_normalized = uname, ukey
        change.fields.append("username")
    if name is not KEEP and (name or "") != (user.name or ""):
        user.name = (name or "")[:200]
        change.fields.append("name")
    if "role" in wanted:
        change.old_role = user.role
        user.role = role
        change.fields.append("role")
    if active is not KEEP:
        if "active" in wanted:
            change.fields.append("active")
            change.activated, change.deactivated = bool(active), not active
        user.active = bool(active)
    if profile:
        for k, v in profile.items():
            if k not in PROFILE_FIELDS:
                raise ValueError(f"not a profile attribute: {k}")
            if getattr(user, k) != v:
                setattr(user, k, v)
                change.fields.append(k)
    if "password" in wanted:
        user.password_hash = hasher.hash(password) if password is not KEEP and password is not None \
            else password_hash
        user.password_changed_at = clock()
        user.password_reset_required = False
        change.password_set = True
        change.fields.append("password")
        if not new:
            db.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
    if verified_via is not KEEP and verified_via != getattr(user, "email_verified_via", None):
        # how the current address was verified (idp.emailverify: a mail round trip, a trusted upstream)
        user.email_verified_via = verified_via
        change.fields.append("email_verified")
    if reset_required is not KEEP and bool(reset_required) != bool(user.password_reset_required):
        user.password_reset_required = bool(reset_required)
        change.fields.append("password_reset_required")
    if new and user.active is None:
        user.active = True
    if change.fields or new:
        user.updated_at = clock()
    return change


_INSERT_USER = User.__table__.insert()


def insert_new(db, user: User, along: list[tuple[InsertPart, dict]] | None = None,
               guards: list[Guard] | None = None) -> None:
    """Store a new account that ``write(..., new=True)`` set: one prebuilt Core INSERT of every column on the
    session's connection, in its transaction, instead of a unit-of-work flush for one row. The column defaults
    the object lacks are set on it first, as a flush would set them; the object is not added to the session
    (nothing else writes it). An ``IntegrityError`` (a unique key taken) propagates: the caller rolls back.

    ``along``: INSERTs of rows that belong with the account (its index rows, its audit event), written after it
    in the same statement on PostgreSQL (``idp.db.insert_together``: one round trip, atomic by itself).
    ``guards`` (from ``write``): checked by that statement before it writes; the first that fails is raised, and
    nothing was written."""
    values = new_user_row(user)
    if along is None and not guards:
        db.connection().execute(_INSERT_USER, values)
        return
    keys = tuple(values)
    part = _USER_PARTS.get(keys)
    if part is None:
        part = _USER_PARTS[keys] = InsertPart.values(User.__table__, keys, "u_")
    held = insert_together(db.connection(), [(part, {"u_" + k: v for k, v in values.items()}), *(along or ())],
                           [(g.sql, g.params) for g in guards] if guards else None)
    for g, ok in zip(guards or (), held or (), strict=True):
        if not ok:
            raise g.error


_USER_PARTS: dict[tuple[str, ...], InsertPart] = {}


def new_user_row(user: User) -> dict:
    """The column values of a new account (``insert_new``), the missing defaults set on ``user`` too."""
    state = user.__dict__
    values = {}
    for col in User.__table__.columns:
        if col.key in state:
            values[col.key] = state[col.key]
            continue
        if col.default is None and col.server_default is not None:
            continue  # left out: the database's default applies (an explicit NULL would override it)
        value = None
        if col.default is not None:
            if col.default.is_callable:
                value = col.default.arg(None)
            elif col.default.is_scalar:
                value = col.default.arg
            else:  # a SQL expression or a sequence: not a default this model has
                raise ValueError(f"unsupported default of users.{col.key}")
            setattr(user, col.key, value)
        values[col.key] = value
    return values


@dataclass
class Deprovisioned:
    sessions_ended: int
    result: Any = None
    per_user: dict[str, int] = field(default_factory=dict)  # user id -> sessions ended


class AccountService:
    """The effects of account changes: sessions, the apps' logouts, the audit log and alerts (``hub.accounts``)."""

    def __init__(self, hub):
        self.hub = hub
        # Called with (workspace id, user id) when an account is deactivated or deleted, after its sessions ended:
        # the protocols revoke what outlives a session (OIDC grants). A failing listener is logged; it never stops
        # the deprovisioning.
        self.deprovision_listeners: list[Callable[[str, str], None]] = []

    def write(self, db, actor: Actor, user: User, **changes) -> Change:
        return write(db, actor, user, hasher=self.hub.hasher, clock=self.hub.clock, **changes)

    def insert(self, db, user: User, *, along: list[tuple[InsertPart, dict]] | None = None,
               record: tuple | None = None, guards: list[Guard] | None = None) -> None:
        """Store a new account set by ``write(..., new=True)`` (``insert_new``), in the caller's transaction, with
        the ``along`` rows after it. ``record``: ``(actor, verb, kwargs of record)``, its audit event, appended last
        — on PostgreSQL with the account and ``along`` as one statement (one round trip, atomic by itself: the
        caller may hold an autocommit connection), else by ``record(..., connection=)`` in the transaction.
        ``guards``: ``write``'s deferred checks, made first (``insert_new``); a failed one is raised, nothing
        written."""
        conn = db.connection()
        audit = self.hub.audit
        if record is None or audit.inline or conn.dialect.name != "postgresql":
            insert_new(db, user, guards=guards)
            if along:
                insert_together(conn, along)
            if record is not None:
                actor, verb, kw = record
                self.record(actor, user.workspace_id, verb, user.id, connection=conn, **kw)
            return
        actor, verb, kw = record
        ev = audit.prepare(**self._event_args(actor, user.workspace_id, verb, user.id, **kw))
        insert_new(db, user, [*(along or ()), (audit.insert_part, audit.insert_params(ev))], guards)
        audit.appended(ev)

    def create(self, db, actor: Actor, workspace_id: str, *, email, role: str = "member", **changes) -> User:
        """A new account in ``db`` (flushed, so it has its id; the unique address is checked by the flush)."""
        user = User(workspace_id=workspace_id, email="", email_normalized="", role="member", active=True,
                    created_at=self.hub.clock())
        self.write(db, actor, user, new=True, email=email, role=role, **changes)
        db.add(user)
        return user

    # ---- events ---------------------------------------------------------------------------------------------
    def record(self, actor: Actor, workspace_id: str, verb: str, user_id: str | None, *, connection=None,
               event: str | None = None, **data) -> None:
        """One audit event per change, naming the channel (``data.channel``); ``event`` overrides the type."""
        self.hub.audit.record(**self._event_args(actor, workspace_id, verb, user_id, event=event, **data),
                              **({"connection": connection} if connection is not None else {}))

    @staticmethod
    def _event_args(actor: Actor, workspace_id: str, verb: str, user_id: str | None, *, event: str | None = None,
                    **data) -> dict:
        extra = {"via": actor.via} if actor.via else {}
        return dict(type=event or f"{EVENT_PREFIX[actor.channel]}.{verb}", workspace_id=workspace_id,
                    actor_id=actor.actor_id, actor_email=actor.audit_name, subject_id=user_id, ip=actor.ip,
                    user_agent=(actor.user_agent or "")[:512] or None, request_id=actor.request_id,
                    data={"channel": actor.label, **extra, **data})

    # ---- deprovisioning --------------------------------------------------------------------------------------
    def end_sessions(self, workspace_id: str, user_id: str, reason: str) -> int:
        """End every session of the user (the apps are told by the session-end listeners) and revoke what
        outlives a session. Idempotent: a retry ends what is left."""
        ended = len(self.hub.sessions.end_all(user_id, reason))
        for listener in self.deprovision_listeners:
            try:
                listener(workspace_id, user_id)
            except Exception:  # logged; the account is deprovisioned regardless
                log.exception("deprovision listener failed", extra={"reason": reason})
        return ended

    def deprovision(self, targets: list[tuple[str, str]], reason: str, write_fn: Callable[[], Any]
                    ) -> Deprovisioned:
        """Deactivate or delete accounts (``targets``: (workspace id, user id) pairs): end every session first and
        remove the accounts' passkeys, then ``write_fn()`` (the caller's transaction, committed there), then end
        whatever session began in between (none, normally)."""
        per_user = {uid: self.end_sessions(ws_id, uid, reason) for ws_id, uid in targets}
        passkeys = getattr(getattr(self.hub, "mfa", None), "passkeys", None)
        if passkeys is not None:
            for _ws, uid in targets:  # a deprovisioned account's passkeys sign no one in, ever again
                passkeys.remove_all(uid)
        result = write_fn()
        for _ws, uid in targets:
            per_user[uid] += len(self.hub.sessions.end_all(uid, reason))
        return Deprovisioned(sum(per_user.values()), result, per_user)

    def reset_mfa(self, workspace_id: str, user_id: str) -> tuple[list[str], int]:
        """Remove every second factor (the user enrols again at the next sign-in) and end the user's sessions:
        (the methods removed, the number of sessions ended)."""
        methods = list(self.hub.mfa.enrolled(user_id).methods())
        self.hub.mfa.disable_all(user_id)
        return methods, len(self.hub.sessions.end_all(user_id, "mfa_reset_by_admin"))

    def alert_admins(self, ws, actor: Actor, user, what: str) -> None:
        """Mail the workspace's other admins that an administrator's account was ``what`` (deactivated,
        deleted) through ``actor``'s channel."""
        with self.hub.db() as db:
            admins = list(db.scalars(select(User).where(User.workspace_id == ws.id, User.role.in_(ADMIN_ROLES),
                                                        User.active.is_(True), User.id != user.id)))
        for admin in admins:
            self.hub._mail(admin.email, f"An administrator account was {what}", "alert_admin_deprovisioned", {
                "workspace_name": ws.name, "user_name": admin.name or admin.email, "target_email": user.email,
                "target_role": user.role, "what": what, "channel": actor.label,
                "when": self.hub.clock().strftime("%d %b %Y, %H:%M UTC"),
                "console_url": self.hub.url(f"/w/{ws.slug}/admin/audit"),
            }, ws_id=ws.id, user_id=admin.id)
