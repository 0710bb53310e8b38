"""The hub's domain services, wired together once by ``create_app`` (or a CLI command, or a test).

Everything here is plain Python: it takes its stores, clock, mailer and audit log as arguments and
knows nothing about Flask requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from config.settings import Settings
from idp import emailverify, passwords
from idp.accounts import (
    ADMIN_ROLES,
    identifier_key,
    identifier_matches,
    user_by_identifier,
)
from idp.assignments import AppAccess
from idp.crypto import KeyRing, signer_keys
from idp.db import read_engine
from idp.flow import AuthnResult, Client
from idp.invalidation import Invalidation
from idp.invitations import Invitations
from idp.launcher import Launcher
from idp.lifecycle import AccountService, Actor
from idp.mfa.passkeys import PASSWORDLESS, SECOND_FACTOR, PasskeyClone, PasskeyError
from idp.mfa.service import enrolled_columns, enrolled_from
from idp.models import Group, GroupMember, KnownDevice, PasswordResetToken, User, Workspace
from idp.sessions import Lifetimes, SessionManager, effective_lifetimes, new_secret_token, token_hash
from idp.signin import SigninCore
from idp.storage.base import Backoff, SessionData, Stores
from policies.engine import Decision, PolicyContext, PolicyEngine

log = logging.getLogger("idhub.hub")

RESET_TTL = timedelta(hours=24)
NOT_ME_MAX_AGE = 14 * 24 * 3600
ACCOUNT_BACKOFF = Backoff(free=5, base=1, cap=900, window=3600)
ADDRESS_BACKOFF = Backoff(free=30, base=1, cap=3600, window=3600)
DEVICE_MAX_AGE = 365 * 24 * 3600  # a browser stays known for a year after its last sign-in
FAILED_ALERT_EVERY = 5
# Hub.decide: is the account active, and what 2FA has it set up (one statement)
# (a caller that reads the account anyway selects ACCOUNT_COLUMNS with it and hands the row to ``decide``)
_U = User.__table__.c
ACCOUNT_COLUMNS = (_U.active, _U.role, *enrolled_columns(_U.id))  # the enrolment's subqueries correlate with users.id
_USER_AND_ENROLMENT = select(*ACCOUNT_COLUMNS).where(_U.id == bindparam("u"))
_USER_GROUP_NAMES = (select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                     .where(GroupMember.user_id == bindparam("u"), Group.workspace_id == bindparam("w")))
_UNREAD = object()
_WORKSPACE_POLICIES = select(Workspace.__table__.c.policies).where(Workspace.__table__.c.id == bindparam("w"))
_KD = KnownDevice.__table__.c
# Hub.check_password, before the hash: the account (the check, the failed-attempts alert), its 2FA enrolment
# (the policy check after it, ``decide``'s ``account``) and the devices and places it signed in from (the
# new-device alert): one statement, a row per known device (one with NULLs when there is none). Read before
# the hash, not after it: the hash evicts the caches, and whatever runs after it runs cold.
_USER_FOR_PASSWORD = (
    select(_U.id, _U.workspace_id, _U.email, _U.email_normalized, _U.username_normalized, _U.name, _U.password_hash,
           _U.password_reset_required,
           *ACCOUNT_COLUMNS, _KD.kind, _KD.fingerprint)
    .select_from(User.__table__.outerjoin(KnownDevice.__table__, _KD.user_id == _U.id))
    .where(_U.workspace_id == bindparam("w"), identifier_matches(_U, bindparam("e")))  # address or username
)
_REHASH = update(User.__table__).where(_U.id == bindparam("u")).values(password_hash=bindparam("h"))
# Hub.complete_signin without check_password's rows (federation, a second factor): the same, by user id
_USER_AND_DEVICES = (select(_U.id, _U.workspace_id, _U.email, _U.name, _KD.kind, _KD.fingerprint)
                     .select_from(User.__table__.outerjoin(KnownDevice.__table__, _KD.user_id == _U.id))
                     .where(_U.id == bindparam("u")))
# a device seen by two sign-ins at once is remembered once
_REMEMBER = {name: dialect.insert(KnownDevice.__table__).on_conflict_do_nothing()
             for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}
RESET_REQUESTS_PER_HOUR = 5


@dataclass(frozen=True)
class PasswordOutcome:
    ok: bool
    error: str | None = None
    retry_after: int = 0
    result: AuthnResult | None = None
    account: object = None  # on success: the user's row (``ACCOUNT_COLUMNS`` included), for decide/complete_signin
    known_devices: frozenset = frozenset()  # on success: (kind, fingerprint) of the user's known devices


class Hub:
    def __init__(
        self,
        settings: Settings,
        db: sessionmaker,
        stores: Stores,
        hasher: passwords.Hasher,
        audit,
        mailer,
        geo,
        describe_ua,
        fingerprints,
        clock=lambda: datetime.now(UTC),
        mfa=None,
    ):
        self.settings = settings
        self.db = db
        self._reads = read_engine(db.kw["bind"])
        self._read_sessions = sessionmaker(**{**db.kw, "bind": self._reads})
        self.stores = stores
        self.hasher = hasher
        self.audit = audit
        self.mailer = mailer
        self.geo = geo
        self.describe_ua = describe_ua
        self.device_fp, self.location_fp = fingerprints
        self.clock = clock
        self.sessions = SessionManager(stores.sessions, lambda: self.clock(), lifetimes_of=self._lifetimes_of)
        self.mfa = mfa
        self.accounts = AccountService(self)  # every write of account state (idp.lifecycle)
        self.signin = SigninCore(self)  # every step of every sign-in (idp.signin)
        self.policy = PolicyEngine(record=self._record_decision)
        # Downstream apps register a look-up of their per-app policies (OIDC clients, SAML SPs).
        self.app_policy_lookups: list = []
        self.app_access = AppAccess(self)  # who lost access to which app, for every channel (idp.assignments)
        self.launcher = Launcher(self)  # which apps a user sees on the launcher (idp.launcher)
        self.invitations = Invitations(self)  # invited people's set-password links (idp.invitations)
        # itsdangerous signs with the last key of the list, verifies with any (IDHUB_SECRET_KEY_PREVIOUS)
        self._signer = URLSafeTimedSerializer(signer_keys(settings), salt="idhub.not-me")
        self._devices = URLSafeTimedSerializer(signer_keys(settings), salt="idhub.device-cookie")
        self.keyring = KeyRing(settings, db)  # build_hub's; derived keys of the listed and retained masters
        # per-process caches dropped on every node when something they hold changes (idp.invalidation)
        self.invalidation = Invalidation(db.kw["bind"], settings.redis_url,
                                         (settings.extra or {}).get("redis_prefix", "idhub:"))

    def lifetimes(self, ws) -> Lifetimes:
        """The session lifetimes of workspace ``ws`` (a row read for this request) as its policy says now."""
        return effective_lifetimes(self.settings.session_idle_timeout, self.settings.session_max_lifetime,
                                   ws.policies)

    def _lifetimes_of(self, workspace_id: str) -> Lifetimes:
        with self.read() as conn:
            policies = conn.execute(_WORKSPACE_POLICIES, {"w": workspace_id}).scalar()
        return effective_lifetimes(self.settings.session_idle_timeout, self.settings.session_max_lifetime,
                                   policies)

    def changed(self, kind: str, key: str | None = None) -> None:
        """Call after committing a change that per-process caches hold (``idp.invalidation.KINDS``): every
        process of every node forgets them within a second."""
        self.invalidation.publish(kind, key)

    # ---- helpers -------------------------------------------------------------------------
    def connect(self):
        """A bare Core connection from the pool, for the hot paths that only run prebuilt statements (an ORM
        session's set-up and tear-down costs as much as the statement itself); commit explicitly to write."""
        return self.db.kw["bind"].connect()

    def read(self):
        """Like ``connect``, for reads only: no transaction around them (``idp.db.read_engine``)."""
        return self._reads.connect()

    def read_db(self):
        """An ORM session for reads only (``idp.db.read_engine``): what ``db()`` gives, without the BEGIN and
        ROLLBACK round trips of a transaction on PostgreSQL. Never write through it."""
        return self._read_sessions()

    def url(self, path: str) -> str:
        return self.settings.base_url + path

    def _event(self, type_: str, ws_id: str | None, client: Client | None, **kw) -> None:
        self.audit.record(
            type_,
            workspace_id=ws_id,
            ip=client.ip if client else None,
            user_agent=(client.user_agent[:512] if client else None),
            request_id=client.request_id if client else None,
            **kw,
        )

    def _mail(self, to: str, subject: str, template: str, context: dict, *, ws_id: str, user_id: str) -> bool:
        if not to:  # an account without an address (SCIM sent none): nothing to send, and the log says so
            self.audit.record("alert.failed", workspace_id=ws_id, subject_id=user_id,
                              data={"template": template, "reason": "no_email"})
            return False
        try:
            self.mailer.send(to, subject, template, context)
        except Exception as exc:  # a mail failure must not break sign-in; it is logged and audited
            log.warning("mail not sent", extra={"template": template, "error": type(exc).__name__})
            self.audit.record("alert.failed", workspace_id=ws_id, subject_id=user_id, data={"template": template})
            return False
        self.audit.record("alert.sent", workspace_id=ws_id, subject_id=user_id, data={"template": template})
        return True

    # ---- policies ---------------------------------------------------------------------------
    def _record_decision(self, decision: Decision, ctx: PolicyContext) -> None:
        self.audit.record("policy.decision", workspace_id=ctx.workspace_id, actor_id=ctx.user_id, ip=ctx.client_ip,
                          data={"effect": decision.effect, "rule": decision.rule, "stage": ctx.stage,
                                "app": ctx.app, "methods": list(ctx.methods), "reason": decision.reason[:200]})

    def policy_context(self, ws: Workspace, client_ip: str, *, stage: str = "signin", user_id: str | None = None,
                       account=None, methods=(), app: str | None = None, app_policies: dict | None = None,
                       enrolled=(), policies: dict | None = None, groups=None) -> PolicyContext:
        """The one builder of the policy engine's context, for every decision: sign-in, SSO to an app, a token
        refresh, the admin console, each request of a session. ``account``: the user's row (``active``, ``role``);
        ``policies``: the workspace's, unless the caller narrows them (a refresh leaves out the IP allowlist).
        A hub operator is always held to a second factor, whatever their workspace's ``require_mfa_for_admins``;
        ``upstream_mfa_trusted`` is set when the session's methods carry a trusted upstream's MFA.

        The app's assignment (``app_policies["assigned_groups"]``, from the app's look-up) goes to the context's
        ``assigned_groups``; the user's group names are then read here (one query) unless the caller already has
        them (``groups``: SAML SSO reads them with the account)."""
        role = getattr(account, "role", None) if account is not None else None
        pol = dict(ws.policies or {}) if policies is None else dict(policies)
        if role == "operator":
            pol["require_mfa_for_admins"] = True
        active = True if user_id is None else bool(account is not None and account.active)
        app_pol = dict(app_policies or {})
        assigned = app_pol.pop("assigned_groups", None)
        user_groups = None
        if assigned is not None:
            assigned = tuple(assigned)
            if groups is not None:
                user_groups = frozenset(groups)
            elif user_id is not None:
                user_groups = self.group_names(ws.id, user_id)
        return PolicyContext(workspace_id=ws.id, plan=ws.plan, policies=pol, client_ip=client_ip, stage=stage,
                             user_id=user_id, user_active=active, app=app, app_policies=app_pol,
                             methods=tuple(methods), enrolled=tuple(enrolled), user_role=role,
                             upstream_mfa_trusted="upstream_mfa" in methods, assigned_groups=assigned,
                             user_groups=user_groups)

    def group_names(self, ws_id: str, user_id: str) -> frozenset[str]:
        """The names of the user's groups in the workspace (one query)."""
        with self.read() as conn:
            return frozenset(conn.execute(_USER_GROUP_NAMES, {"u": user_id, "w": ws_id}).scalars())

    def decide(self, ws: Workspace, client: Client, *, user_id: str | None = None, methods=(),
               stage: str = "signin", app: str | None = None, app_policies: dict | None = None,
               account=_UNREAD, groups=None) -> Decision:
        """Ask the policy engine about this workspace, user and address (the user's role and 2FA enrolment
        included).

        ``account``: the user's row with ``ACCOUNT_COLUMNS``, already read by the caller (None: there is no such
        user); read here when not given."""
        row, enrolled = None, ()
        if user_id is not None:
            row = account
            if row is _UNREAD:
                with self.read() as conn:  # the account, its role and its 2FA enrolment in one round trip
                    row = conn.execute(_USER_AND_ENROLMENT, {"u": user_id}).first()
            if row is not None and self.mfa is not None and stage == "signin":
                enrolled = tuple(enrolled_from(row).methods())
        ctx = self.policy_context(ws, client.ip, stage=stage, user_id=user_id, account=row, methods=methods,
                                  app=app, app_policies=app_policies, enrolled=enrolled, groups=groups)
        return self.policy.evaluate(ctx)

    def app_policies(self, ws: Workspace, app: str | None) -> dict:
        """The per-app policy overrides of a downstream app (stricter than the workspace's, never looser)."""
        if not app:
            return {}
        for lookup in self.app_policy_lookups:
            found = lookup(ws, app)
            if found is not None:
                return found
        return {}

    def session_allowed(self, ws: Workspace, session: SessionData, client: Client) -> Decision:
        """The per-request check of an existing session (IP allowlist): cheap, no database access."""
        ctx = self.policy_context(ws, client.ip, stage="session", user_id=session.user_id, methods=session.amr)
        return self.policy.evaluate(replace(ctx, user_active=True))  # the account is checked where it is read

    # ---- sign-in -----------------------------------------------------------------------------
    def _reserve_attempt(self, acct_key: str, addr_key: str | None, now) -> tuple[int, int]:
        """(wait, failures so far): refuse while blocked, else count this attempt *before* checking it.

        Counting first closes the race where N parallel guesses all read "not blocked" and all get checked:
        only the attempt that moved the counter from the value it read goes on. A success resets the counter.
        """
        throttle = self.stores.throttle
        before, *addr = throttle.states([acct_key, addr_key] if addr_key else [acct_key], now)
        wait = max(st.retry_after(now) for st in (before, *addr))
        if wait:
            return wait, before.failures
        reserved = throttle.record_failure(acct_key, now, ACCOUNT_BACKOFF)
        if reserved.failures != before.failures + 1:  # other attempts got in between: this one is not checked
            return max(1, reserved.retry_after(now)), reserved.failures
        return 0, reserved.failures

    # ---- device cookies (OWASP: "Slow down online guessing attacks with device cookies") ------------------
    def device_token(self, ws: Workspace, email: str) -> str:
        """The value of the device cookie a browser gets when it completes a sign-in to ``email``."""
        return self._devices.dumps({"w": ws.id, "e": _email_digest(ws.id, identifier_key(email) or ""),
                                    "n": secrets.token_urlsafe(12)})

    def _device_key(self, ws: Workspace, key_email: str, device: str | None) -> str | None:
        if not device or len(device) > 512:
            return None
        try:
            data = self._devices.loads(device, max_age=DEVICE_MAX_AGE)
        except BadSignature:
            return None
        if (not isinstance(data, dict) or data.get("w") != ws.id or not isinstance(data.get("n"), str)
                or not hmac.compare_digest(str(data.get("e", "")), _email_digest(ws.id, key_email))):
            return None
        return f"pwdev:{ws.id}:{data['n']}"

    def check_password(self, ws: Workspace, email: str, password: str, client: Client, next_url: str = "",
                       device: str | None = None) -> PasswordOutcome:
        """The password of the account ``email`` names — its e-mail address or its username
        (``idp.accounts.identifier_matches``: one rule for every way in)."""
        now = self.clock()
        key_email = identifier_key(email) or ""
        with self.read() as conn:  # released before the hash: no connection or transaction held across it
            rows = conn.execute(_USER_FOR_PASSWORD, {"w": ws.id, "e": key_email}).all()
        user = rows[0] if rows else None
        # one throttle per account, whichever identifier was typed (its address, else its username)
        account = (user.email_normalized or user.username_normalized) if user is not None else key_email
        # A browser that signed in to this account before (a valid device cookie) is throttled on its own key:
        # someone else's guesses, which lock the account for every other browser, do not lock the owner out.
        acct_key = self._device_key(ws, key_email, device) or f"pw:{ws.id}:{account}"
        addr_key = f"pwip:{client.ip}"
        throttle = self.stores.throttle
        wait, failures = self._reserve_attempt(acct_key, addr_key, now)
        if wait:
            self._event("auth.signin.throttled", ws.id, client, actor_email=key_email, data={"retry_after": wait})
            return PasswordOutcome(False, f"Too many attempts. Try again in {wait} seconds.", retry_after=wait)
        ok = self.hasher.verify(user.password_hash if user else None, password)
        if ok and user and user.active and not user.password_reset_required:
            if self.hasher.needs_rehash(user.password_hash):
                with self.connect() as conn:
                    conn.execute(_REHASH, {"u": user.id, "h": self.hasher.hash(password)})
                    conn.commit()
            throttle.reset(acct_key)
            known = frozenset((r.kind, r.fingerprint) for r in rows if r.kind is not None)
            return PasswordOutcome(True, result=AuthnResult(ws.id, user.id, ("pwd",), now, next_url), account=user,
                                   known_devices=known)
        if ok and user and user.password_reset_required:
            throttle.reset(acct_key)
            self._event("auth.signin.failure", ws.id, client, actor_id=user.id, actor_email=key_email,
                        data={"reason": "password_reset_required"})
            return PasswordOutcome(False, "For your security, this account's password must be reset. "
                                          "Use “Forgot password?” to choose a new one.")
        throttle.record_failure(addr_key, now, ADDRESS_BACKOFF)
        reason = "inactive" if (ok and user) else ("unknown_user" if not user else "bad_password")
        self._event("auth.signin.failure", ws.id, client, actor_id=user.id if user else None,
                    actor_email=key_email, data={"reason": reason, "failures": failures})
        if user and failures and failures % FAILED_ALERT_EVERY == 0:
            self._alert(user, ws, "alert_failed_signins", "Failed sign-in attempts on your account", client,
                        attempts=failures)
        return PasswordOutcome(False, "Incorrect email or password.")

    def complete_signin(self, ws: Workspace, result: AuthnResult, client: Client, account=None,
                        known_devices: frozenset = frozenset()) -> tuple[str, SessionData]:
        """Create the session for a finished sign-in, raise new-device/location alerts, audit it.

        ``account``/``known_devices``: the user's row and known devices as ``check_password`` read them (else
        they are read here)."""
        info = self.describe_ua(client.user_agent)
        loc = self.geo.locate(client.ip)
        lifetimes = effective_lifetimes(self.settings.session_idle_timeout, self.settings.session_max_lifetime,
                                        ws.policies)
        token, data = self.sessions.start(
            workspace_id=ws.id, user_id=result.user_id, lifetimes=lifetimes, ip=client.ip,
            user_agent=client.user_agent, browser=info.browser, os=info.os, device=info.device,
            country=loc.country, city=loc.city, amr=list(result.amr),
        )
        with self.connect() as conn:
            if account is not None and account.id == result.user_id:
                user, known = account, set(known_devices)
            else:
                rows = conn.execute(_USER_AND_DEVICES, {"u": result.user_id}).all()
                user = rows[0]
                known = {(r.kind, r.fingerprint) for r in rows if r.kind is not None}
            self._event("auth.signin.success", ws.id, client, actor_id=user.id, actor_email=user.email,
                        data={"amr": list(result.amr), "session": data.public_id})
            alerts = self._remember_device(conn, user, known, info, loc)
        for template, subject in alerts:
            self._alert(user, ws, template, subject, client, device=info.label, location=_loc_label(loc))
        return token, data

    def _remember_device(self, conn, user, known: set, info, loc) -> list[tuple[str, str]]:
        """Store a device or place ``user`` has not signed in from before (``known``: (kind, fingerprint) of
        those they have); the alerts that raises (none at the very first sign-in)."""
        first_ever = not known
        dev_fp = self.device_fp(info)
        alerts, new = [], []
        if ("device", dev_fp) not in known:
            new.append({"user_id": user.id, "kind": "device", "fingerprint": dev_fp, "label": info.label})
            if not first_ever:
                alerts.append(("alert_new_device", "New sign-in to your account from a new device or browser"))
        if loc.country and loc.country != "unknown":
            loc_fp = self.location_fp(loc)
            if ("location", loc_fp) not in known:
                new.append({"user_id": user.id, "kind": "location", "fingerprint": loc_fp, "label": _loc_label(loc)})
                if any(kind == "location" for kind, _ in known):
                    alerts.append(("alert_new_location", "New sign-in to your account from a new location"))
        if new:
            conn.execute(_REMEMBER[conn.dialect.name], new)
            conn.commit()
        return alerts

    def _alert(self, user, ws: Workspace, template: str, subject: str, client: Client | None, **extra):
        """Mail a security alert to ``user`` (a ``User``, or a row with its id, workspace_id, email and name)."""
        info = self.describe_ua(client.user_agent) if client else None
        loc = self.geo.locate(client.ip) if client else None
        ctx = {
            "workspace_name": ws.name,
            "user_name": user.name or user.email,
            "user_email": user.email,
            "when": self.clock().strftime("%d %b %Y, %H:%M UTC"),
            "ip": client.ip if client else "",
            "location": _loc_label(loc) if loc else "Unknown location",
            "device": info.label if info else "Unknown browser",
            "security_url": self.url(f"/w/{ws.slug}/settings/security"),
            "wasnt_me_url": self.url(f"/w/{ws.slug}/security/not-me/{self.not_me_token(user)}"),
        }
        ctx.update(extra)
        self._mail(user.email, subject, template, ctx, ws_id=ws.id, user_id=user.id)

    # ---- second factor ---------------------------------------------------------------------------
    def verify_second_factor(self, ws: Workspace, user_id: str, method: str, code: str, client: Client,
                             binding: str | None = None) -> str | None:
        """None when the code is right; otherwise the message to show. Throttled across the whole account."""
        wait = self.mfa.mfa_retry_after(user_id)
        if wait:
            self._event("auth.mfa.throttled", ws.id, client, actor_id=user_id, data={"method": method})
            return f"Too many attempts. Try again in {wait} seconds."
        if method == "webauthn":  # the browser's answer to the passkey challenge issued for ``binding``
            error, _ = self.verify_passkey(ws, code, client, binding=binding or "", user_id=user_id)
            return error
        code = (code or "").strip()[:64]
        if not code:
            return "Enter the code."
        if self.mfa.verify(user_id, method, code, binding=binding):
            self._event("auth.mfa.success", ws.id, client, actor_id=user_id, data={"method": method})
            return None
        self._event("auth.mfa.failure", ws.id, client, actor_id=user_id, data={"method": method})
        wait = self.mfa.mfa_retry_after(user_id)
        if wait:
            return f"That code is not valid. Too many attempts: try again in {wait} seconds."
        return "That code is not valid. Check it and try again."

    def verify_passkey(self, ws: Workspace, response: str, client: Client, *, binding: str,
                       user_id: str | None = None):
        """A passkey's answer (WebAuthn assertion): (None, Verified) when it holds, else (the message to show,
        None). ``user_id``: a second factor or a confirmation of that user (throttled with the other codes);
        None: a passwordless sign-in, whose credential names the user. Every refusal is audited
        (``auth.passkey.failure`` with its reason); a counter that went backwards alerts the user and the
        workspace's admins (``auth.passkey.clone``)."""
        purpose = SECOND_FACTOR if user_id else PASSWORDLESS
        addr_key = f"pkip:{client.ip}"  # passwordless: refused answers slow down their client address
        if user_id is None:
            now = self.clock()
            wait = self.stores.throttle.state(addr_key, now).retry_after(now)
            if wait:
                self._event("auth.passkey.throttled", ws.id, client, data={"retry_after": wait})
                return f"Too many attempts. Try again in {wait} seconds.", None
        if user_id is not None:
            wait = self.mfa.mfa_retry_after(user_id)
            if wait:
                self._event("auth.mfa.throttled", ws.id, client, actor_id=user_id, data={"method": "webauthn"})
                return f"Too many attempts. Try again in {wait} seconds.", None
        try:
            verified = self.mfa.passkeys.authenticate(purpose=purpose, binding=binding, response=response,
                                                      workspace_id=ws.id, user_id=user_id)
        except PasskeyClone as clone:
            self._event("auth.passkey.clone", ws.id, client, actor_id=clone.user_id,
                        data={"passkey": clone.name, "passwordless": user_id is None})
            self._passkey_clone_alerts(ws, clone, client)
            if user_id is not None:
                self.mfa.record_failure(user_id)
            return clone.message, None
        except PasskeyError as exc:
            self._event("auth.passkey.failure", ws.id, client, actor_id=user_id,
                        data={"reason": exc.reason, "passwordless": user_id is None})
            if user_id is not None:
                self.mfa.record_failure(user_id)
            else:
                self.stores.throttle.record_failure(addr_key, self.clock(), ADDRESS_BACKOFF)
            return exc.message, None
        if user_id is not None:
            self.mfa.record_success(user_id)
        self._event("auth.mfa.success" if user_id else "auth.passkey.success", ws.id, client,
                    actor_id=verified.user_id, data={"method": "webauthn", "passkey": verified.name,
                                                     "user_verified": verified.user_verified})
        return None, verified

    def _passkey_clone_alerts(self, ws: Workspace, clone, client: Client) -> None:
        with self.db() as db:
            user = db.get(User, clone.user_id)
            admins = list(db.scalars(select(User).where(User.workspace_id == ws.id, User.role.in_(ADMIN_ROLES),
                                                        User.active.is_(True), User.id != clone.user_id)))
        if user is None:
            return
        self._alert(user, ws, "alert_passkey_clone", "A passkey of your account may have been copied", client,
                    passkey_name=clone.name)
        for admin in admins:
            self._mail(admin.email, "A passkey may have been copied", "alert_admin_passkey_clone", {
                "workspace_name": ws.name, "user_name": admin.name or admin.email, "target_email": user.email,
                "passkey_name": clone.name, "ip": client.ip, "when": self.clock().strftime("%d %b %Y, %H:%M UTC"),
                "console_url": self.url(f"/w/{ws.slug}/admin/audit"),
            }, ws_id=ws.id, user_id=admin.id)

    # ---- passkeys ---------------------------------------------------------------------------------
    def add_passkey(self, ws: Workspace, user, binding: str, response: str, name: str, client: Client,
                    current: SessionData | None) -> str | None:
        """Register the browser's new passkey for ``user`` (the challenge issued for ``binding``); on success
        the other sessions end, the user is alerted and it is audited (``mfa.webauthn.added``). The message to
        show when it is refused (audited as ``mfa.webauthn.refused``)."""
        try:
            passkey = self.mfa.passkeys.register(user_id=user.id, workspace_id=ws.id, binding=binding,
                                                 response=response, name=name)
        except PasskeyError as exc:
            self._event("mfa.webauthn.refused", ws.id, client, actor_id=user.id, data={"reason": exc.reason})
            return exc.message
        self.mfa_changed(ws, user.id, f"A passkey was added ({passkey.name}).", "mfa.webauthn.added", client,
                         current)
        return None

    def rename_passkey(self, ws: Workspace, user_id: str, passkey, name: str, client: Client) -> None:
        if self.mfa.passkeys.rename(user_id, passkey.id, name):
            self._event("mfa.webauthn.renamed", ws.id, client, actor_id=user_id,
                        data={"passkey": passkey.id, "from": passkey.name, "to": name})

    def remove_passkey(self, ws: Workspace, user_id: str, passkey, client: Client,
                       current: SessionData | None) -> str | None:
        """Remove one of the user's passkeys, unless the policies would then want a factor set up again (the
        last passkey where phishing-resistant MFA is required, the last factor where 2FA is): the message then.
        Ends the other sessions, alerts, audits (``mfa.webauthn.removed``)."""
        from policies.engine import removal_refused

        enrolled = self.mfa.enrolled(user_id)
        left = replace(enrolled, passkeys=max(enrolled.passkeys - 1, 0))
        with self.read() as conn:
            row = conn.execute(_USER_AND_ENROLMENT, {"u": user_id}).first()
        ctx = self.policy_context(ws, client.ip, user_id=user_id, account=row, methods=("pwd",),
                                  enrolled=tuple(left.methods()))
        refused = removal_refused(ctx)
        if refused is not None:
            self._event("mfa.webauthn.remove_refused", ws.id, client, actor_id=user_id,
                        data={"passkey": passkey.id, "rule": refused.rule})
            if refused.rule == "phishing_resistant_mfa":
                return ("Your organisation requires a passkey to sign in, and this is your last one. Add another "
                        "passkey first, then remove this one.")
            return ("Your organisation requires two-factor authentication, and this is your last method. Add "
                    "another one first, then remove this one.")
        if not self.mfa.passkeys.remove(user_id, passkey.id):
            return None  # already removed (another tab)
        self.mfa_changed(ws, user_id, f"A passkey was removed ({passkey.name}).", "mfa.webauthn.removed", client,
                         current)
        return None

    def mfa_changed(self, ws: Workspace, user_id: str, change: str, event: str, client: Client,
                    current: SessionData | None) -> None:
        """Audit, end the user's other sessions, and send the 2FA-changed alert."""
        ended = self.sessions.end_all(user_id, "mfa_changed", except_id=current.id if current else None)
        self._event(event, ws.id, client, actor_id=user_id, data={"change": change, "sessions_ended": len(ended)})
        with self.db() as db:
            user = db.get(User, user_id)
        self._alert(user, ws, "alert_mfa_changed", "Two-factor authentication settings changed", client,
                    change=change)

    # ---- sessions ------------------------------------------------------------------------------
    def sign_out(self, ws: Workspace, session: SessionData, client: Client) -> None:
        self.sessions.end(session.id, "signed_out")
        self._event("auth.signout", ws.id, client, actor_id=session.user_id, data={"session": session.public_id})

    def end_session(self, ws: Workspace, current: SessionData, public_id: str, client: Client) -> bool:
        target = self.sessions.by_public_id(current.user_id, public_id)
        if target is None or target.id == current.id:
            return False
        self.sessions.end(target.id, "ended_by_user")
        self._event("session.ended", ws.id, client, actor_id=current.user_id, data={"session": target.public_id})
        return True

    def end_other_sessions(self, ws: Workspace, current: SessionData, client: Client) -> int:
        ended = self.sessions.end_all(current.user_id, "ended_by_user", except_id=current.id)
        self._event("session.ended_all", ws.id, client, actor_id=current.user_id, data={"count": len(ended)})
        return len(ended)

    # ---- passwords -------------------------------------------------------------------------------
    def change_password(self, ws: Workspace, session: SessionData, current: str, new: str, confirm: str,
                        client: Client) -> list[str]:
        """Errors (empty on success). All other sessions end; reset links die."""
        with self.db() as db:
            user = db.get(User, session.user_id)
            # the same per-account throttle as sign-in: a stolen session must not become a password oracle
            acct_key = f"pw:{ws.id}:{user.email_normalized or user.username_normalized}"
            wait, _ = self._reserve_attempt(acct_key, None, self.clock())
            if wait:
                return [f"Too many attempts. Try again in {wait} seconds."]
            if not self.hasher.verify(user.password_hash, current):
                self._event("password.change.failed", ws.id, client, actor_id=user.id, data={"reason": "bad_current"})
                return ["Your current password is incorrect."]
            self.stores.throttle.reset(acct_key)
            errors = _new_password_errors(new, confirm, user.email)
            if errors:
                return errors
            self._set_password(db, user, new)
            db.commit()
        ended = self.sessions.end_all(user.id, "password_changed", except_id=session.id)
        self._event("password.changed", ws.id, client, actor_id=user.id, data={"sessions_ended": len(ended)})
        self._alert(user, ws, "alert_password_changed", "Your password was changed", client)
        return []

    def _set_password(self, db, user: User, new: str, **more) -> None:
        """The user's own new password (checked by the caller), through the account service."""
        self.accounts.write(db, Actor("self", user.email, user.id), user, password=new, **more)

    def request_reset(self, ws: Workspace, email: str, client: Client, later=None) -> str:
        """Same outcome for the requester whether or not the address exists; a new link kills older ones. Returns
        what happened, for an admin who asked for it: ``sent``, ``throttled``, ``unknown``, ``externally_managed``
        or ``invited`` (an invitation not accepted yet: its link, not a reset link, lets them in).

        ``later(fn)``, when given, runs the mail delivery after the response has gone out (the web layer
        passes the response's close hook), so the answer takes as long for an unknown address as for a known
        one: no account enumeration through the SMTP round trip."""
        now = self.clock()
        key = identifier_key(email)
        if key is None:
            return "unknown"
        if not self.stores.throttle.hit(f"reset:{ws.id}:{key}", RESET_REQUESTS_PER_HOUR, 3600, now):
            self._event("password.reset.throttled", ws.id, client, actor_email=key)
            return "throttled"
        with self.db() as db:
            user = user_by_identifier(db, ws.id, email)
            if user is None or not user.active:
                self._event("password.reset.requested", ws.id, client, actor_email=key, data={"known": False})
                return
            if user.external_id:
                # Provisioned by an HR system or IdP over SCIM: its password is managed there (same answer).
                self._event("password.reset.requested", ws.id, client, actor_id=user.id,
                            data={"known": True, "sent": False, "reason": "externally_managed"})
                return "externally_managed"
            if self.invitations.blocks_reset(db, user):
                self._event("password.reset.requested", ws.id, client, actor_id=user.id,
                            data={"known": True, "sent": False, "reason": "invitation_not_accepted"})
                return "invited"
            if not user.email:  # a SCIM user whose client sent no address: nowhere to send the link
                self._event("password.reset.requested", ws.id, client, actor_id=user.id,
                            data={"known": True, "sent": False, "reason": "no_email"})
                return "no_email"
            token, hashed = new_secret_token()
            db.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
            db.add(PasswordResetToken(token_hash=hashed, user_id=user.id, created_at=now, expires_at=now + RESET_TTL))
            db.commit()
            self._event("password.reset.requested", ws.id, client, actor_id=user.id, data={"known": True})
            to, name, uid = user.email, user.name or user.email, user.id

        def deliver():
            self._mail(to, "Reset your password", "password_reset", {
                "workspace_name": ws.name, "user_name": name,
                "reset_url": self.url(f"/w/{ws.slug}/password/reset/{token}"), "expires_hours": 24,
            }, ws_id=ws.id, user_id=uid)

        (later or (lambda fn: fn()))(deliver)
        return "sent"

    def reset_user(self, ws: Workspace, token: str) -> User | None:
        """The user a still-valid reset link belongs to (no side effects)."""
        if not token or len(token) > 128:
            return None
        with self.db() as db:
            row = db.get(PasswordResetToken, token_hash(token))
            if row is None or row.used_at is not None or row.expires_at <= self.clock():
                return None
            user = db.get(User, row.user_id)
            return user if user and user.workspace_id == ws.id and user.active else None

    def complete_reset(self, ws: Workspace, token: str, new: str, confirm: str, client: Client) -> list[str]:
        user = self.reset_user(ws, token)
        if user is None:
            return ["This reset link is invalid or has expired."]
        errors = _new_password_errors(new, confirm, user.email)
        if errors:
            return errors
        now = self.clock()
        with self.db() as db:
            # Consume the link atomically: of two parallel submissions exactly one wins.
            res = db.execute(
                update(PasswordResetToken)
                .where(PasswordResetToken.token_hash == token_hash(token), PasswordResetToken.used_at.is_(None),
                       PasswordResetToken.expires_at > now)
                .values(used_at=now)
            )
            if res.rowcount != 1:
                db.rollback()
                return ["This reset link is invalid or has expired."]
            user = db.get(User, user.id)
            # the link was mailed to this address: its owner used it (a mail round trip verifies the address)
            self._set_password(db, user, new, verified_via=emailverify.MAIL)
            db.commit()
        ended = self.sessions.end_all(user.id, "password_reset")
        self.stores.throttle.reset(f"pw:{ws.id}:{user.email_normalized or user.username_normalized}")
        self._event("password.reset.completed", ws.id, client, actor_id=user.id, data={"sessions_ended": len(ended)})
        self._alert(user, ws, "alert_password_changed", "Your password was changed", client)
        return []

    # ---- "This wasn't me" ------------------------------------------------------------------------
    def not_me_token(self, user: User) -> str:
        return self._signer.dumps({"u": user.id, "w": user.workspace_id})

    def not_me_user(self, ws: Workspace, token: str) -> User | None:
        """The account a "This wasn't me" link is for; None when it is forged, expired or already used."""
        if not token or len(token) > 512:
            return None
        try:
            data = self._signer.loads(token, max_age=NOT_ME_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("w") != ws.id:
            return None
        if self.stores.one_time.get(_not_me_key(token)) is not None:
            return None
        with self.db() as db:
            return db.get(User, data.get("u"))

    def not_me_used(self, token: str) -> bool:
        return bool(token) and len(token) <= 512 and self.stores.one_time.get(_not_me_key(token)) is not None

    def secure_account(self, ws: Workspace, token: str, client: Client) -> bool:
        """End every session, require a password reset, mail a reset link. Each link works once: whoever
        else holds the alert mail cannot use it to lock the owner out again after the reset."""
        user = self.not_me_user(ws, token)
        if user is None:
            return False
        if not self.stores.one_time.add(_not_me_key(token), user.id, NOT_ME_MAX_AGE + 3600):
            return False  # used in parallel by another request
        with self.db() as db:
            self.accounts.write(db, Actor("self", user.email, user.id), db.get(User, user.id), reset_required=True)
            db.commit()
        ended = self.sessions.end_all(user.id, "compromise_reported")
        self._event("account.compromise_reported", ws.id, client, subject_id=user.id,
                    data={"sessions_ended": len(ended)})
        now = self.clock()
        tok, hashed = new_secret_token()
        with self.db() as db:
            db.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
            db.add(PasswordResetToken(token_hash=hashed, user_id=user.id, created_at=now, expires_at=now + RESET_TTL))
            db.commit()
        self._mail(user.email, "Your account has been secured", "account_secured", {
            "workspace_name": ws.name, "user_name": user.name or user.email,
            "reset_url": self.url(f"/w/{ws.slug}/password/reset/{tok}"), "expires_hours": 24,
        }, ws_id=ws.id, user_id=user.id)
        return True


def _email_digest(ws_id: str, key_email: str) -> str:
    return hashlib.sha256(f"{ws_id}:{key_email}".encode()).hexdigest()[:32]


def _not_me_key(token: str) -> str:
    return "notme:" + hashlib.sha256(token.encode()).hexdigest()


def _new_password_errors(new: str, confirm: str, email: str) -> list[str]:
    if new != confirm:
        return ["The new passwords do not match."]
    broken = passwords.check(new, email=email)
    return [f"Password rule not met: {r.text}." for r in broken]


def _loc_label(loc) -> str:
    if loc is None or not loc.country or loc.country == "unknown":
        return "Unknown location"
    return f"{loc.city}, {loc.country}" if loc.city else loc.country
