"""What every upstream protocol module returns, and how it reports a failed check."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamIdentity:
    """A person as an upstream IdP vouched for them, after the connection's preset and mapping.

    ``subject`` is the IdP's stable identifier (Okta ``sub`` / persistent NameID; Azure ``tid:oid``;
    LDAP ``entryUUID`` or the DN); users are keyed on it, never on ``email``.
    """

    subject: str
    email: str = ""
    name: str = ""
    given_name: str = ""
    family_name: str = ""
    groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()  # methods the IdP says it used (OIDC amr, SAML AuthnContext mapped)
    mfa: bool = False  # the IdP says it performed multi-factor authentication
    session_index: str = ""  # SAML SessionIndex, for logout
    claims: dict = field(default_factory=dict)  # decoded claims / attributes, for "Test connection"
    warnings: tuple[str, ...] = ()  # e.g. groups overage not resolved, certificate expiring


class UpstreamError(Exception):
    """An upstream answer failed a check. ``check`` names the check (machine-readable, e.g.
    ``audience``, ``signature``, ``clock_skew``, ``certificate``, ``replay``, ``issuer``, ``state``,
    ``nonce``, ``tenant``, ``algorithm``, ``in_response_to``, ``destination``, ``recipient``,
    ``unsigned``, ``bind``); ``hint`` tells an admin what to change. The message shown to an
    employee is generic; the details go to the audit log and the Test connection page."""

    def __init__(self, check: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.message = message
        self.hint = hint


REAUTH_MAX_AGE = 300  # seconds: a re-authentication at the IdP must be at most this old when its answer arrives


def check_fresh(authenticated_at, started_at: float, now: float, skew: float, check: str, what: str,
                hint: str) -> None:
    """A re-authentication (OIDC ``prompt=login``/``max_age=0``, SAML ``ForceAuthn``) must have happened just now:
    ``authenticated_at`` (seconds since the epoch; the ID token's ``auth_time`` or the assertion's
    ``AuthnInstant``) is not missing, not in the future, not before idhub asked for it (``started_at``, minus the
    clock skew: an IdP that reused an older session answers with that session's time), and at most
    ``REAUTH_MAX_AGE`` seconds old. Raises ``UpstreamError(check)`` otherwise."""
    if authenticated_at is None:
        raise UpstreamError(check, f"the identity provider did not say when the person authenticated (no {what})",
                            hint)
    if authenticated_at > now + skew:
        raise UpstreamError(check, f"the {what} is in the future", "Check the clocks of idhub and the IdP (NTP).")
    if authenticated_at < started_at - skew or now - authenticated_at > REAUTH_MAX_AGE:
        age = int(now - authenticated_at)
        raise UpstreamError(check, f"the {what} is {age} seconds old: the identity provider did not make the person "
                            "sign in again", hint)
