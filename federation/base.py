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
