"""The sign-in core: every step of a sign-in, in plain Python (no Flask).

Given a login flow (``idp.flow``) and the input of a step, the core answers what comes next; the blueprints
(``idp.web.auth``, ``idp.web.mfa``, ``federation.web``) only turn HTTP into calls and answers into responses.

    identify ──► route ─┬─► password ──► (strategy checks it) ─┐
                        └─► upstream ──► (IdP signs in) ────────┤
                                                                ▼
                                       proceed: the policy engine (role, app, enrolment)
                                         ├─► deny ──────────────────────────► Denied
                                         ├─► mfa ─► second_factor ─► proceed
                                         ├─► enroll ─► enrolled ─► backup codes ─► proceed
                                         └─► allow ─► the session (or the step-up of the current one) ─► Done

Strategies say whether a step is theirs (``Strategy``): home-realm discovery (``route``: this address signs in at
an upstream IdP, or with an LDAP directory's password) and the password check (``check_password``). idhub's own
password (``LocalPassword``) is the last strategy and takes what no other claims; federation registers its own
(OIDC, SAML, LDAP) in front of it (``federation.signin``). A passwordless sign-in with a passkey (``passkey``)
skips the password: the passkey, with user verification, is both factors, and the policy engine decides the rest.

A flow that ``upgrades`` a session raises its assurance: a step-up (``step_up``: a second factor for OIDC
``acr_values``, a SAML app's ``require_mfa``, the admin console) or the same person signing in again (OIDC
``prompt=login``/``max_age``, SAML ``ForceAuthn``). When it is done the session is upgraded in place
(``SessionManager.upgrade``: a new cookie for the same record — its id, ``sid`` and participants — with the new
methods and authentication time), so no stale session stays listed and back-channel logout still reaches the apps
that took part in it. A different person signing in
in that browser gets a session of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from idp.flow import AuthnResult, FlowManager, LoginFlow, identify

log = logging.getLogger("idhub.signin")
STEP_UP = "step_up"  # LoginFlow.purpose of a step-up: the session's user, past the first factor


# ---- what a step answers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invalid:
    """The input was refused before anything was checked (a malformed address): show the form again."""

    error: str
    email: str


@dataclass(frozen=True)
class Failed:
    """A credential was refused (wrong password, throttled, …); the flow stays where it was."""

    error: str
    retry_after: int = 0


@dataclass(frozen=True)
class Denied:
    """The policy engine refused the sign-in (the flow is over)."""

    reason: str
    rule: str = ""


@dataclass(frozen=True)
class Step:
    """The flow goes on at another step: ``password``, ``upstream`` (at ``connection``), ``mfa`` or ``enroll``."""

    state: str
    flow: LoginFlow


@dataclass(frozen=True)
class Done:
    """Signed in: the session's cookie value and data; ``device_email``: remember this browser for that address
    (a local or LDAP password was typed in it); ``upgraded``: a step-up upgraded the existing session."""

    token: str | None  # the session cookie's new value; None: the browser's session is as it was
    session: object
    next: str
    device_email: str | None = None
    upgraded: bool = False


@dataclass(frozen=True)
class Route:
    """Home-realm discovery's answer: the address continues at ``state`` (``password``, ``upstream``) of
    ``connection``."""

    state: str
    connection: str


class Strategy(Protocol):
    name: str

    def identifier_first(self, ws) -> bool:
        """Whether the sign-in page must ask for the address alone first (it decides where the password goes)."""

    def route(self, ws, email: str, *, local: bool) -> Route | None:
        """Where this address signs in, if this strategy owns it (``local``: the person asked for idhub's
        own password, a break-glass account)."""

    def check_password(self, ws, flow: LoginFlow, password: str, client, device: str | None):
        """An ``idp.hub.PasswordOutcome`` when the password step of ``flow`` is this strategy's, else None."""


class LocalPassword:
    """idhub's own argon2id passwords (``Hub.check_password``): the strategy of last resort."""

    name = "password"

    def __init__(self, hub):
        self.hub = hub

    def identifier_first(self, ws) -> bool:
        return False

    def route(self, ws, email: str, *, local: bool) -> Route | None:
        return None

    def check_password(self, ws, flow: LoginFlow, password: str, client, device: str | None):
        return self.hub.check_password(ws, flow.email, password, client, flow.next, device=device)


class SigninCore:
    """``hub.signin``: the steps of every sign-in, for every way in."""

    def __init__(self, hub):
        self.hub = hub
        self.strategies: list = [LocalPassword(hub)]

    @property
    def flows(self) -> FlowManager:
        return FlowManager(self.hub.stores.flows, self.hub.clock)

    def add_strategy(self, strategy) -> None:
        """A strategy that owns some addresses or password steps, asked before idhub's own password."""
        if all(s.name != strategy.name for s in self.strategies):
            self.strategies.insert(len(self.strategies) - 1, strategy)

    def identifier_first(self, ws) -> bool:
        return any(s.identifier_first(ws) for s in self.strategies)

    # ---- identify ------------------------------------------------------------------------------------------------
    def begin(self, ws, client, *, email: str, password: str, binding: str, next_url: str = "", app: str = "",
              local: bool = False, device: str | None = None, current=None):
        """The sign-in page's POST: the address (and, on the one-page form, the password). The IP allowlist is
        checked before anything else; the address is routed (an upstream IdP, LDAP, idhub's password)."""
        error, cleaned = identify(email)
        if error:
            return Invalid(error, cleaned)
        early = self.hub.decide(ws, client, app=app or None, app_policies=self.hub.app_policies(ws, app))
        if early.effect == "deny":
            return Denied(early.reason, early.rule)
        flows = self.flows
        upgrades = current.id if current is not None else ""  # signing in again (prompt=login): upgraded if the same
        for strategy in self.strategies:
            routed = strategy.route(ws, cleaned, local=local)
            if routed is not None:  # a password sent along is never looked at: the connection checks it
                flow = flows.new(ws.id, binding, next_url, email=cleaned, state=routed.state, app=app)
                flow.connection, flow.upgrades = routed.connection, upgrades
                flows.keep(flow)
                return Step(routed.state, flow)
        flow = flows.new(ws.id, binding, next_url, email=cleaned, state="password", app=app)
        flow.upgrades = upgrades
        if not password:
            flows.keep(flow)
            return Step("password", flow)
        # the one-page form: the same password step, on a flow stored only if the sign-in goes on
        flow.routed = True  # the strategies just looked at this address: no need to route it again
        return self.password(ws, flow, password, client, device=device, stored=False)

    def start_upstream(self, ws, connection: str, *, binding: str, next_url: str = "") -> LoginFlow:
        """"Sign in with <connection>" without an address first (or an unsolicited SAML response)."""
        flows = self.flows
        flow = flows.start(ws.id, binding, next_url, state="upstream")
        flow.connection = connection
        flows.save(flow)
        return flow

    # ---- first factor --------------------------------------------------------------------------------------------
    def password(self, ws, flow: LoginFlow, password: str, client, *, device: str | None = None,
                 stored: bool = True):
        """The password step: the strategy that owns it checks it (LDAP's bind, idhub's argon2id hash)."""
        outcome = None
        for strategy in self.strategies:
            outcome = strategy.check_password(ws, flow, password, client, device)
            if outcome is not None:
                break
        if not outcome.ok:
            return Failed(outcome.error, outcome.retry_after)
        flow.user_id = outcome.result.user_id
        flow.amr = list(outcome.result.amr)
        return self.proceed(ws, flow, client, stored=stored, account=outcome.account,
                            known_devices=outcome.known_devices)

    def upstream_signed_in(self, ws, flow: LoginFlow, user_id: str, amr, email: str, client):
        """An upstream IdP signed the person in (``federation.service`` linked or created the account)."""
        flow.user_id = user_id
        flow.amr = list(amr)
        if email and not flow.email:
            flow.email = email[:254]
        return self.proceed(ws, flow, client)

    def passkey(self, ws, client, *, response: str, binding: str, next_url: str = "", app: str = "", current=None):
        """A passwordless sign-in: the browser's answer to the sign-in page's passkey challenge (a discoverable
        credential, user verification required). The credential names the user; the IP allowlist is checked
        first, and an address that must sign in at the organisation's IdP (``sso_required``) is refused. The
        passkey counts as both factors (``webauthn``: possession of a hardware-bound key, verified user)."""
        early = self.hub.decide(ws, client, app=app or None, app_policies=self.hub.app_policies(ws, app))
        if early.effect == "deny":
            return Denied(early.reason, early.rule)
        error, verified = self.hub.verify_passkey(ws, response, client, binding=binding)
        if error is not None:
            return Failed(error, 1 if "Too many" in error else 0)
        from idp.models import User

        with self.hub.db() as db:
            user = db.get(User, verified.user_id)
            email = user.email if user is not None else ""
        for strategy in self.strategies:  # single sign-on required for this address: its IdP signs it in
            routed = strategy.route(ws, email, local=True) if email else None
            if routed is not None and routed.state == "upstream":
                self.hub.audit.record("auth.passkey.failure", workspace_id=ws.id, actor_id=verified.user_id,
                                      ip=client.ip, request_id=client.request_id, data={"reason": "sso_required"})
                return Failed("Your organisation signs you in through its identity provider. Enter your email "
                              "address to continue.")
        flow = self.flows.new(ws.id, binding, next_url, email=email, state="passkey", app=app)
        flow.user_id, flow.amr = verified.user_id, ["webauthn"]
        flow.upgrades = current.id if current is not None else ""
        return self.proceed(ws, flow, client, stored=False)

    def activated(self, ws, user_id: str, email: str, client, *, binding: str):
        """An invited person just chose their password with their invitation link (``idp.invitations``): that is
        this sign-in's first factor. The policy engine decides what else — two-factor set-up where the workspace
        or the role requires it — and the walk ends in a session, as any sign-in."""
        flow = self.flows.new(ws.id, binding, "", email=email, state="password")
        flow.user_id, flow.amr = user_id, ["pwd"]
        return self.proceed(ws, flow, client, stored=False)

    # ---- what comes next -----------------------------------------------------------------------------------------
    def proceed(self, ws, flow: LoginFlow, client, *, stored: bool = True, account=None,
                known_devices: frozenset = frozenset()):
        """Ask the policy engine what the flow needs next: a second factor, enrolment, a denial, or the session.
        ``stored=False``: a flow made with ``FlowManager.new``, stored here only if it goes on to another step.
        ``account``/``known_devices``: what the password check read of the user, if it did."""
        flows = self.flows
        read = {"account": account} if account is not None else {}
        decision = self.hub.decide(ws, client, user_id=flow.user_id, methods=flow.amr, app=flow.app or None,
                                   app_policies=self.policies_of(ws, flow), **read)
        if decision.effect == "deny":
            if stored:
                flows.finish(flow)
            return Denied(decision.reason, decision.rule)
        if decision.effect in ("mfa", "enroll"):
            flow.move(decision.effect)
            flow.choices = list(decision.methods)
            flow.method = flow.method if flow.method in flow.choices else flow.choices[0]
            flows.save(flow) if stored else flows.keep(flow)
            return Step(decision.effect, flow)
        flow.move("done")
        if stored:
            flows.finish(flow)
        stepping = flow.purpose == STEP_UP
        remember = flow.email if "pwd" in flow.amr and not stepping else None  # the browser now knows the password
        if flow.upgrades:
            current = self.hub.sessions.store.get(flow.upgrades)
            if current is not None and current.user_id == flow.user_id and current.workspace_id == ws.id:
                if stepping and set(flow.amr) <= set(current.amr):  # nothing was asked: the session is as it was
                    return Done(None, current, flow.next)
                upgraded = self.hub.sessions.upgrade(current.id, flow.amr)
                if upgraded is not None:
                    token, data = upgraded
                    self.hub.audit.record("session.stepped_up", workspace_id=ws.id, actor_id=flow.user_id,
                                          ip=client.ip, request_id=client.request_id,
                                          data={"session": data.public_id, "amr": list(data.amr), "app": flow.app})
                    return Done(token, data, flow.next, remember, upgraded=True)
            # the session ended meanwhile, or another person signed in: a session of their own
        result = AuthnResult(ws.id, flow.user_id, tuple(flow.amr), self.hub.clock(), flow.next)
        token, data = self.hub.complete_signin(ws, result, client, account, known_devices)
        return Done(token, data, flow.next, remember)

    def policies_of(self, ws, flow: LoginFlow) -> dict:
        """The app's policies, plus what a step-up asked for (a second factor). Not the app's assignment: signing
        in to idhub is not the app's door; the app's own door (OIDC authorize, SAML SSO) refuses an unassigned
        user in the app's protocol (``access_denied``, ``RequestDenied``), so the app learns of it."""
        policies = {k: v for k, v in self.hub.app_policies(ws, flow.app).items() if k != "assigned_groups"}
        if "mfa" in (flow.wants or ()):
            policies = {**policies, "require_mfa": True}
        if "phr" in (flow.wants or ()):  # the app asked for a passkey (OIDC acr urn:idhub:acr:phishing-resistant)
            policies = {**policies, "require_mfa": True, "require_phishing_resistant_mfa": True}
        return policies

    # ---- second factor -------------------------------------------------------------------------------------------
    def second_factor(self, ws, flow: LoginFlow, code: str, client):
        """The code of the chosen method; a right one moves the flow on."""
        error = self.hub.verify_second_factor(ws, flow.user_id, flow.method, code, client, binding=flow.id)
        if error is not None:
            return Failed(error, 1 if "Too many" in error else 0)
        flow.amr = [*flow.amr, flow.method]
        return self.proceed(ws, flow, client)

    def enrolled(self, ws, flow: LoginFlow) -> None:
        """A method was set up inside the sign-in: it counts as this sign-in's second factor; the backup codes
        are shown next (``proceed`` after them)."""
        flow.amr = [*flow.amr, flow.method]
        flow.move("backup_codes")
        self.flows.save(flow)

    # ---- re-authentication ("Confirm it's you") --------------------------------------------------------------------
    def reauth_options(self, ws, user) -> dict:
        """How ``user`` can confirm it's them on the security page: the first strategy that knows (federation:
        linked IdPs, an LDAP directory, single sign-on required), else idhub's own password if they have one."""
        for strategy in self.strategies:
            if hasattr(strategy, "reauth_options"):
                return strategy.reauth_options(ws, user)
        password = bool(user.password_hash)
        return {"upstream": [], "ldap": None, "password": password, "sso_required": None,
                "message": None if password else "Your account has no idhub password, so idhub cannot confirm "
                                                 "it's you here. Ask your IT team to make this change for you."}

    def reauth_password(self, ws, user, password: str, client, options: dict):
        """The password on the re-authentication page: a strategy's (an LDAP bind, a refusal where single sign-on
        is required), else idhub's own."""
        for strategy in self.strategies:
            if hasattr(strategy, "reauth_password"):
                outcome = strategy.reauth_password(ws, user, password, client, options)
                if outcome is not None:
                    return outcome
        return self.hub.check_password(ws, user.email or user.username, password, client)

    # ---- step-up -------------------------------------------------------------------------------------------------
    def step_up(self, ws, session, client, *, binding: str, next_url: str, app: str = "", wants=("mfa",)):
        """Raise ``session`` to a second factor (OIDC ``acr_values``, an app's ``require_mfa``, the admin
        console): a flow of the session's user, past the first factor, at what the policy engine asks — the
        second factor, or its set-up — and ending in the same session, upgraded."""
        from idp.models import User

        with self.hub.db() as db:
            user = db.get(User, session.user_id)
        if user is None or not user.active:
            return Denied("This account is disabled. Contact your IT team.", "account_active")
        flow = self.flows.new(ws.id, binding, next_url, email=user.email, state="password", app=app)
        flow.user_id, flow.amr, flow.upgrades, flow.wants = session.user_id, list(session.amr), session.id, list(wants)
        flow.purpose = STEP_UP
        return self.proceed(ws, flow, client, stored=False)
