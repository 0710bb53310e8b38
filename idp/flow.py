"""The login flow: a server-side object that carries one sign-in through its steps.

    identify ──► password ──┬──────────────────────────────► done
       ▲            │       ├─► mfa (second factor) ──────────► done
       └────────────┘       └─► enroll (2FA required) ─► backup_codes ─► done
       └──► passkey (a passwordless sign-in: the passkey was both factors) ─► (mfa, enroll) ─► done
   ("Use another account")

The sign-in core (``idp.signin``) moves the flow through its steps; the web layer only turns its answers into
responses.
The browser holds only the flow id, and the flow is bound to the browser that started it (the hash of
its CSRF cookie), so a flow id sent to someone else is useless (no login CSRF through shared links).

The steps themselves are ``idp.signin``'s (the sign-in core). A flow that ``upgrades`` a session (a step-up, or
a sign-in again by the same person with ``prompt=login``) ends by upgrading that session in place.

A flow with ``purpose="reauth"`` is not a sign-in: it confirms, at the upstream IdP, that the person holding an
existing session is still its user (the security page's "Confirm it's you"). It goes ``upstream`` -> ``done``,
carries the user and the session it confirms, and never creates a session (``federation.web``).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from idp.accounts import InvalidEmail, clean_email, normalise_email, parse_username

FLOW_TTL = 15 * 60

TRANSITIONS: dict[str, set[str]] = {
    "identify": {"password", "upstream", "passkey"},
    "passkey": {"identify", "mfa", "enroll", "done"},  # signed in with a passkey (passwordless)
    "password": {"identify", "mfa", "enroll", "done"},
    "upstream": {"identify", "mfa", "enroll", "done"},  # at an upstream IdP (federation)
    "mfa": {"identify", "enroll", "done"},  # enroll: a factor proven, the policy wants another kind (a passkey)
    "enroll": {"identify", "backup_codes", "done"},
    "backup_codes": {"done"},
    "done": set(),
}


class FlowError(Exception):
    """The flow is missing, expired, bound to another browser, or asked for an illegal transition."""


@dataclass
class LoginFlow:
    id: str
    workspace_id: str
    binding: str
    state: str = "identify"
    next: str = ""
    email: str = ""
    amr: list[str] = field(default_factory=list)
    created_at: str = ""
    user_id: str = ""
    choices: list[str] = field(default_factory=list)  # second-factor methods the policy offers
    method: str = ""  # the method chosen at the mfa/enroll step
    app: str = ""  # the downstream app that asked for this sign-in (its policies apply), if any
    sms_sent: bool = False
    connection: str = ""  # the upstream connection (federation) this flow signs in through, if any
    purpose: str = ""  # "" a sign-in; "reauth" re-authentication of an existing session at the upstream IdP
    session: str = ""  # purpose "reauth": the public id of the session being confirmed (user_id is its user)
    upgrades: str = ""  # the id of the browser's session this sign-in steps up, if it is the same user's
    wants: list[str] = field(default_factory=list)  # a step-up's demands: "mfa" (a second factor)
    routed: bool = False  # home-realm discovery ran in this very request and left the address to idhub's password

    def move(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise FlowError(f"illegal transition {self.state} -> {state}")
        self.state = state

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoginFlow:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class AuthnResult:
    """What a finished sign-in hands back to whoever asked (security page, OIDC, SAML)."""

    workspace_id: str
    user_id: str
    amr: tuple[str, ...]
    auth_time: datetime
    next: str = ""


@dataclass(frozen=True)
class Client:
    ip: str
    user_agent: str
    request_id: str = ""


class FlowManager:
    def __init__(self, store, clock=lambda: datetime.now(UTC)):
        self.store = store
        self.clock = clock

    def start(self, workspace_id: str, binding: str, next_url: str = "", *, email: str = "",
              state: str = "identify", app: str = "") -> LoginFlow:
        """A new flow; ``email``/``state`` let the identifier step create it already moved on (one write)."""
        flow = self.new(workspace_id, binding, next_url, email=email, state=state, app=app)
        self.store.create(flow.id, flow.to_dict(), FLOW_TTL)
        return flow

    def new(self, workspace_id: str, binding: str, next_url: str = "", *, email: str = "",
            state: str = "identify", app: str = "") -> LoginFlow:
        """A flow that is not stored yet: the one-page sign-in (email and password in one request) needs one only
        if the sign-in goes on to another step (``keep``); one that ends at once never touches the store."""
        flow = LoginFlow(
            id=secrets.token_urlsafe(24),
            workspace_id=workspace_id,
            binding=binding,
            next=next_url,
            created_at=self.clock().isoformat(),
        )
        if state != "identify":
            flow.move(state)
        flow.email = email
        flow.app = app
        return flow

    def keep(self, flow: LoginFlow) -> None:
        """Store a flow made with ``new`` (it goes on to another step)."""
        self.store.create(flow.id, flow.to_dict(), FLOW_TTL)

    def load(self, flow_id: str | None, workspace_id: str, binding: str) -> LoginFlow:
        if not flow_id or len(flow_id) > 64:
            raise FlowError("no flow")
        data = self.store.get(flow_id)
        if not data:
            raise FlowError("flow expired")
        flow = LoginFlow.from_dict(data)
        if flow.workspace_id != workspace_id or not hmac.compare_digest(flow.binding, binding):
            raise FlowError("flow belongs to another browser or workspace")
        return flow

    def save(self, flow: LoginFlow) -> None:
        if not self.store.update(flow.id, flow.to_dict(), FLOW_TTL):
            raise FlowError("flow expired")

    def finish(self, flow: LoginFlow) -> None:
        self.store.delete(flow.id)


def identify(email: str) -> tuple[str | None, str]:
    """Validate the identifier step: an e-mail address, or a username (a SCIM userName that is not an address).
    Returns (error, cleaned identifier).

    The answer never depends on whether the account exists (no user enumeration); home-realm
    discovery (upstream IdPs, LDAP) hooks in here once connections exist. Something with an @ is read as an
    address (its error says what is wrong with it; a username with an @ is held to the address rules too);
    anything else as a username, held to the same rules for invisible and control characters and spaces
    (``idp.accounts.parse_username``).
    """
    try:
        cleaned = clean_email(email)
        normalise_email(cleaned)
    except InvalidEmail as exc:
        if isinstance(email, str) and "@" not in email:
            try:
                return None, parse_username(email)[0]
            except InvalidEmail as uexc:
                return str(uexc), (email or "")[:254]
        return str(exc), (email or "")[:254]
    return None, cleaned
