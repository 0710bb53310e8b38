"""The policy engine: a ``PolicyContext`` in, a ``Decision`` out. Plain Python.

Every entry point (local sign-in today; upstream SSO, OIDC, SAML, SCIM and the admin API later) asks the
same engine. It fails closed: a rule that raises denies, and an engine with no rules denies.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

log = logging.getLogger("idhub.policies")

ALLOW, DENY, MFA, ENROLL = "allow", "deny", "mfa", "enroll"
ALL_METHODS = ("totp", "sms", "backup_codes", "webauthn")
SECOND_FACTORS = frozenset({"totp", "sms", "backup_codes", "upstream_mfa", "webauthn"})
PHISHING_RESISTANT = "webauthn"  # a passkey or security key: bound to idhub's origin, so it cannot be phished
ADMIN_ROLES = ("admin", "operator")  # as idp.accounts: an operator is also an admin of their own workspace


@dataclass(frozen=True)
class PolicyContext:
    workspace_id: str
    plan: str
    policies: dict
    client_ip: str
    stage: str = "signin"  # "signin" (a new authentication) or "session" (a request of an existing session)
    user_id: str | None = None
    user_active: bool = True
    app: str | None = None
    app_policies: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ()  # authentication methods used so far ("pwd", "totp", "sms", …)
    enrolled: tuple[str, ...] = ()  # second-factor methods the user has set up
    upstream_mfa_trusted: bool = False  # an upstream IdP did MFA and the workspace trusts it
    user_role: str | None = None  # "admin" or "operator": held to require_mfa_for_admins (signin, stage "admin")
    # The app's assignment: None, everyone in the workspace; else the names of the groups whose members may use it
    assigned_groups: tuple[str, ...] | None = None
    user_groups: frozenset[str] | None = None  # the user's group names (read only when the app has an assignment)


@dataclass(frozen=True)
class Decision:
    effect: str  # allow | deny | mfa (ask for a second factor) | enroll (set one up first)
    rule: str
    reason: str = ""
    methods: tuple[str, ...] = ()  # for mfa/enroll: the methods the user may use

    @property
    def allowed(self) -> bool:
        return self.effect == ALLOW


class Rule(Protocol):
    name: str

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        """A decision, or None for "no objection"."""


class AccountActive:
    name = "account_active"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        if ctx.user_id is not None and not ctx.user_active:
            return Decision(DENY, self.name, "This account is disabled. Contact your IT team.")
        return None


def parse_allowlist(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _parse(tuple(cidrs))


@functools.lru_cache(maxsize=256)
def _parse(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parsed once per distinct list (parsing is ~95 % of the cost of a 50-network check)."""
    return tuple(ipaddress.ip_network(c, strict=True) for c in cidrs)


class IpAllowlist:
    """The workspace's and the app's lists must both admit the address (an app can only narrow access)."""

    name = "ip_allowlist"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        lists = [lst for lst in (ctx.policies.get("ip_allowlist"), ctx.app_policies.get("ip_allowlist")) if lst]
        if not lists:
            return None
        try:
            ip = ipaddress.ip_address(ctx.client_ip)
        except ValueError:
            return Decision(DENY, self.name, "Your network address could not be determined.")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for lst in lists:
            nets = parse_allowlist(lst)
            if not any(ip.version == n.version and ip in n for n in nets):
                return Decision(DENY, self.name, f"Access is limited to your organisation's networks, and your "
                                                 f"address {ip} is not one of them. Connect to your company "
                                                 f"network or VPN and try again.")
        return None


def allowed_methods(ctx: PolicyContext) -> tuple[str, ...]:
    allowed = [m for m in ALL_METHODS if m in (ctx.policies.get("mfa_methods") or ALL_METHODS)]
    app_methods = ctx.app_policies.get("mfa_methods")
    if app_methods:
        allowed = [m for m in allowed if m in app_methods]
    return tuple(allowed)


class SecondFactor:
    """A second factor when the workspace or app requires it, or when the user has turned 2FA on.

    Only an *allowed* method satisfies the policy. A user who has factors must prove one of them before anything
    else — even a factor the policy now forbids — so a password alone can never enrol a new factor in place of
    the user's own (the attacker would otherwise plant theirs). Backup codes alone are not an enrolment.
    """

    name = "second_factor"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        # "upstream_mfa": set by federation only for a connection trusted to do MFA whose IdP says it did
        if ctx.stage != "signin" or ctx.user_id is None or ctx.upstream_mfa_trusted or "upstream_mfa" in ctx.methods:
            return None
        required = bool(ctx.policies.get("require_mfa")) or bool(ctx.app_policies.get("require_mfa"))
        allowed = allowed_methods(ctx)
        used = SECOND_FACTORS.intersection(ctx.methods)
        if used.intersection(allowed):
            return None
        enrolled_primary = tuple(m for m in ctx.enrolled if m != "backup_codes")
        if enrolled_primary and not used.intersection(ctx.enrolled):
            usable = tuple(m for m in ctx.enrolled if m in allowed)
            if any(m != "backup_codes" for m in usable):
                return Decision(MFA, self.name, "A second step is needed to sign in.", usable)
            # only forbidden factors: prove one of them (or a backup code), then set up an allowed one
            return Decision(MFA, self.name, "Confirm it's you with your current method; your organisation then "
                                            "asks you to set up another one.", tuple(ctx.enrolled))
        if required or enrolled_primary:
            choices = tuple(m for m in allowed if m != "backup_codes") or allowed
            reason = ("Your organisation requires two-factor authentication. Set it up to continue." if
                      not enrolled_primary else "Your organisation no longer allows the two-factor method you "
                                                "use. Set up another one to continue.")
            return Decision(ENROLL, self.name, reason, choices)
        return None


def phishing_resistant_required(ctx: PolicyContext) -> bool:
    """``require_phishing_resistant_mfa`` of the workspace or the app, or, for an admin, the workspace's
    ``require_phishing_resistant_mfa_for_admins``."""
    return bool(ctx.policies.get("require_phishing_resistant_mfa")
                or ctx.app_policies.get("require_phishing_resistant_mfa")
                or (ctx.user_role in ADMIN_ROLES and ctx.policies.get("require_phishing_resistant_mfa_for_admins")))


class PhishingResistant:
    """Where the workspace, the app or (for admins) the workspace's admin policy requires phishing-resistant MFA,
    a sign-in ends only with a passkey (``webauthn``); no other factor, nor an upstream IdP's MFA, stands in for it.

    A user who has a passkey uses it (or, to recover, a backup code, then registers a new passkey). A user who
    has none proves a factor they already have first (a password alone never enrols a new factor), then adds a
    passkey inside the sign-in. Placed before ``SecondFactor``, whose broader choice it narrows."""

    name = "phishing_resistant_mfa"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        if ctx.stage != "signin" or ctx.user_id is None or not phishing_resistant_required(ctx):
            return None
        if PHISHING_RESISTANT in ctx.methods:
            return None
        used = SECOND_FACTORS.intersection(ctx.methods) - {"upstream_mfa"}
        if PHISHING_RESISTANT in ctx.enrolled and "backup_codes" not in used:  # a backup code: the passkey is lost
            recovery = ("backup_codes",) if "backup_codes" in ctx.enrolled else ()
            return Decision(MFA, self.name, "Sign in with your passkey.", (PHISHING_RESISTANT, *recovery))
        primary = tuple(m for m in ctx.enrolled if m != "backup_codes")
        if primary and not used:
            return Decision(MFA, self.name, "Confirm it's you with your current method; your organisation then "
                                            "asks you to add a passkey.", tuple(ctx.enrolled))
        return Decision(ENROLL, self.name, "Your organisation requires a passkey or security key to sign in. "
                                           "Add one to continue.", (PHISHING_RESISTANT,))


def removal_refused(ctx: PolicyContext) -> Decision | None:
    """Whether removing a factor would leave the user short of what the policies require: ``ctx`` is a sign-in
    with the password alone (``methods``) and the factors that would be left (``enrolled``). The refusal when
    the next sign-in would have to set a factor up (the rules' ``enroll``), else None."""
    if ctx.stage == "signin" and phishing_resistant_required(ctx) and PHISHING_RESISTANT not in ctx.enrolled:
        return Decision(ENROLL, PhishingResistant.name, "Your organisation requires a passkey to sign in.",
                        (PHISHING_RESISTANT,))
    for rule in (SecondFactor(), AdminSecondFactor()):
        d = rule.evaluate(ctx)
        if d is not None and d.effect == ENROLL:
            return d
    return None


class AdminSecondFactor:
    """Admins are held to the strictest policy: ``require_mfa_for_admins`` (default true) makes a second factor
    required for an admin's sign-in, and denies the admin console (stage ``"admin"``) to a session without one."""

    name = "admin_second_factor"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        if ctx.user_role not in ADMIN_ROLES or ctx.user_id is None or ctx.stage not in ("signin", "admin"):
            return None
        if not ctx.policies.get("require_mfa_for_admins", True):
            return None
        if ctx.stage == "signin":
            if ctx.upstream_mfa_trusted:
                return None
            d = SecondFactor().evaluate(replace(ctx, policies={**ctx.policies, "require_mfa": True}))
            if d is not None and d.effect == ENROLL and not ctx.enrolled:
                d = replace(d, rule=self.name, reason="As an admin, you sign in with two-factor authentication. "
                                                      "Set it up to continue.")
            return d
        if SECOND_FACTORS.intersection(ctx.methods):
            return None
        # the console steps the session up (idp.signin) when it sees this rule: a second factor, in place
        return Decision(DENY, self.name, "Admins use the console with two-factor authentication: confirm this "
                                         "session with a second factor to continue.")


NOT_ASSIGNED = "You don't have access to this app. Ask your IT team to assign it to you."


def may_use(assigned_groups, user_groups) -> bool:
    """Whether a member of ``user_groups`` may use an app assigned to ``assigned_groups`` (None: everyone).
    The one answer to "who may use which app": the policy rule below and ``idp.assignments`` both ask it."""
    if assigned_groups is None:
        return True
    return bool(set(assigned_groups).intersection(user_groups or ()))


class AppAssignment:
    """An app assigned to groups is open only to their members (``apps[].assigned_groups``); an app without an
    assignment is open to everyone in the workspace. The user's groups unknown for an assigned app: denied."""

    name = "app_assignment"

    def evaluate(self, ctx: PolicyContext) -> Decision | None:
        if ctx.assigned_groups is None or ctx.user_id is None:
            return None
        if ctx.user_groups is None or not may_use(ctx.assigned_groups, ctx.user_groups):
            return Decision(DENY, self.name, NOT_ASSIGNED)
        return None


DEFAULT_RULES: tuple[Rule, ...] = (AccountActive(), AppAssignment(), IpAllowlist(), PhishingResistant(),
                                   SecondFactor(), AdminSecondFactor())


class PolicyEngine:
    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES, record: Callable[..., object] | None = None):
        self.rules = tuple(rules)
        self.record = record  # audit hook: record(decision, ctx)

    def evaluate(self, ctx: PolicyContext) -> Decision:
        decision = self._decide(ctx)
        if self.record is not None and self._worth_recording(ctx, decision):
            self.record(decision, ctx)
        return decision

    @staticmethod
    def _worth_recording(ctx: PolicyContext, decision: Decision) -> bool:
        """Every denial, and every decision about a user signing in. Not recorded: the allows of the
        per-request session check (one event per HTTP request) and of the address check made before the
        user is known (the decision after the password, which re-checks the address, is recorded)."""
        if decision.effect == DENY:
            return True
        return ctx.stage == "signin" and ctx.user_id is not None

    def _decide(self, ctx: PolicyContext) -> Decision:
        if not self.rules:
            return Decision(DENY, "engine", "No access policy is configured.")
        step_up: Decision | None = None
        for rule in self.rules:
            try:
                d = rule.evaluate(ctx)
            except Exception:  # a broken policy denies (fail closed)
                log.exception("policy rule failed", extra={"rule": getattr(rule, "name", repr(rule))})
                return Decision(DENY, getattr(rule, "name", "unknown"), "Access could not be checked. "
                                                                        "Try again or contact your IT team.")
            if d is None or d.effect == ALLOW:
                continue
            if d.effect == DENY:
                return d
            if step_up is None or (step_up.effect == MFA and d.effect == ENROLL):
                step_up = d
        return step_up or Decision(ALLOW, "all", "")
