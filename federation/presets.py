"""Vendor shapes of upstream identity providers: which attribute (SAML) or claim (OIDC) carries what.

Used by ``federation.saml_sp``, ``federation.oidc_rp`` and ``federation.ldap``. Plain Python, no I/O.

``map_claims(preset, claims, overrides)`` takes the decoded claims of an ID token / userinfo answer, or the
attributes of a SAML assertion (attribute name -> list of values) with the assertion's NameID under
:data:`NAMEID` and its AuthnContextClassRef under :data:`AUTHN_CONTEXT`, and returns our fields::

    {"subject", "email", "name", "given_name", "family_name", "groups": [...], "tenant", "overage",
     "amr": [...], "mfa"}

The subject is the IdP's stable identifier, never the email: Azure AD ``tid:oid``; Okta and generic the OIDC
``sub`` or the SAML NameID. A missing subject raises :class:`UpstreamError` (check ``subject``).
"""

from __future__ import annotations

from collections.abc import Iterable

from federation.base import UpstreamError

PRESETS = ("okta", "azure_ad", "generic")

# Keys the SAML module puts into the claims dict next to the assertion's attributes.
NAMEID = "saml:NameID"
NAMEID_FORMAT = "saml:NameIDFormat"
AUTHN_CONTEXT = "saml:AuthnContextClassRef"

FIELDS = ("subject", "email", "name", "given_name", "family_name", "groups")

# --- Azure AD (Entra ID) -----------------------------------------------------------------------------------
AZ_EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
AZ_GIVEN_NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname"
AZ_SURNAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname"
AZ_NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"  # the UPN, e.g. ada@contoso.com
AZ_DISPLAY_NAME = "http://schemas.microsoft.com/identity/claims/displayname"
AZ_OBJECT_ID = "http://schemas.microsoft.com/identity/claims/objectidentifier"
AZ_TENANT_ID = "http://schemas.microsoft.com/identity/claims/tenantid"
AZ_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
AZ_AMR = "http://schemas.microsoft.com/claims/authnmethodsreferences"
AZ_GROUPS_LINK = "http://schemas.microsoft.com/claims/groups.link"
AZ_MULTIPLE_AUTHN = "http://schemas.microsoft.com/claims/multipleauthn"

# Field -> candidate names, first non-empty wins. OIDC claims and SAML attributes share one list per preset.
_SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "okta": {
        "email": ("email", "Email", "mail"),
        "given_name": ("given_name", "firstName"),
        "family_name": ("family_name", "lastName"),
        "name": ("name", "displayName"),
        "groups": ("groups",),
        "preferred_username": ("preferred_username", "login", "username"),
    },
    "azure_ad": {
        "email": ("email", AZ_EMAIL, "preferred_username", "upn", AZ_NAME),
        "given_name": ("given_name", AZ_GIVEN_NAME),
        "family_name": ("family_name", AZ_SURNAME),
        "name": ("name", AZ_DISPLAY_NAME),
        "groups": ("groups", AZ_GROUPS),
        "preferred_username": ("preferred_username", "upn", AZ_NAME),
        "oid": ("oid", AZ_OBJECT_ID),
        "tid": ("tid", AZ_TENANT_ID),
        "amr": ("amr", AZ_AMR),
    },
    "generic": {
        "email": ("email", "mail", AZ_EMAIL, "urn:oid:0.9.2342.19200300.100.1.3"),
        "given_name": ("given_name", "firstName", "givenName", AZ_GIVEN_NAME, "urn:oid:2.5.4.42"),
        "family_name": ("family_name", "lastName", "sn", AZ_SURNAME, "urn:oid:2.5.4.4"),
        "name": ("name", "displayName", "cn", "urn:oid:2.16.840.1.113730.3.1.241"),
        "groups": ("groups", "memberOf", "isMemberOf", AZ_GROUPS),
        "preferred_username": ("preferred_username",),
    },
}

# What each vendor signs in a SAML response by default, and what we require.
#   azure_ad: only the assertion is signed by default -> a signed assertion is required.
#   okta / generic: the response and/or the assertion; a signature that covers the assertion is required.
SAML_REQUIRE_SIGNED_ASSERTION = {"okta": False, "azure_ad": True, "generic": False}

# amr values (RFC 8176, Okta, Azure AD) and SAML AuthnContext classes that mean multi-factor authentication.
MFA_AMR = frozenset({"mfa", AZ_MULTIPLE_AUTHN})
_KNOWLEDGE = frozenset({"pwd", "pin", "kba"})
_POSSESSION = frozenset({"otp", "hwk", "swk", "sms", "tel", "sc", "fido", "fpt", "face", "iris", "retina", "vbm",
                         "user", "geo", "rba", "wia", "ngcmfa"})
MFA_AUTHN_CONTEXTS = frozenset({
    AZ_MULTIPLE_AUTHN,
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MultifactorContract",
    "http://schemas.openid.net/pape/policies/2007/06/multi-factor",
    "http://schemas.openid.net/pape/policies/2007/06/multi-factor-physical",
    "https://refeds.org/profile/mfa",
})
# Biometric / hardware-bound methods that are multi-factor on their own.
_STRONG_SINGLE = frozenset({"hwk+pin", "swk+pin", "ngcmfa"})

MAX_VALUE = 1024  # characters of one mapped value
MAX_GROUPS = 1000


def _values(raw) -> list[str]:
    """Claims are scalars or lists (SAML attributes are always lists). Non-string leaves are dropped."""
    if raw is None:
        return []
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        return []
    out = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            continue
        s = str(v).strip()
        if s:
            out.append(s[:MAX_VALUE])
    return out


def _first(claims: dict, names: Iterable[str]) -> str:
    for name in names:
        vals = _values(claims.get(name))
        if vals:
            return vals[0]
    return ""


def shape(preset: str) -> dict[str, tuple[str, ...]]:
    if preset not in _SHAPES:
        raise UpstreamError("preset", f"unknown preset {preset!r}", "Use one of: okta, azure_ad, generic.")
    return _SHAPES[preset]


def mfa_from(amr: Iterable[str], authn_contexts: Iterable[str] = ()) -> bool:
    """True when the IdP says it performed multi-factor authentication."""
    amr_set = {a.strip() for a in amr if isinstance(a, str)}
    if amr_set & MFA_AMR or amr_set & _STRONG_SINGLE:
        return True
    if amr_set & _KNOWLEDGE and amr_set & _POSSESSION:
        return True
    return any(c in MFA_AUTHN_CONTEXTS for c in authn_contexts if isinstance(c, str))


def groups_overage(preset: str, claims: dict) -> bool:
    """Azure AD leaves groups out when a user is in too many (200 for JWT, 150 for SAML) and points elsewhere."""
    names = claims.get("_claim_names")
    if isinstance(names, dict) and "groups" in names:
        return True
    if _values(claims.get(AZ_GROUPS_LINK)):
        return True
    hasgroups = claims.get("hasgroups")
    return hasgroups is True or (isinstance(hasgroups, str) and hasgroups.lower() == "true") or (
        isinstance(hasgroups, list) and any(str(v).lower() == "true" for v in hasgroups))


def map_claims(preset: str, claims: dict, overrides: dict | None = None) -> dict:
    """Map an upstream's claims/attributes to our fields (see module docstring). ``overrides`` maps an
    attribute name to one of our fields (``email``, ``name``, ``given_name``, ``family_name``, ``groups``,
    ``subject``) and wins over the preset's names."""
    names = shape(preset)
    if not isinstance(claims, dict):
        raise UpstreamError("claims", "the identity provider sent no claims")
    overrides = overrides or {}
    by_field: dict[str, list[str]] = {}
    for attr, ours in overrides.items():
        if ours not in FIELDS:
            raise UpstreamError("attribute_map", f"attribute_map maps {attr!r} to unknown field {ours!r}",
                                f"Map attributes to one of: {', '.join(FIELDS)}.")
        by_field.setdefault(ours, []).append(attr)

    out: dict = {}
    for fld in ("email", "name", "given_name", "family_name"):
        out[fld] = _first(claims, [*by_field.get(fld, ()), *names.get(fld, ())])
    group_names = by_field.get("groups") or names.get("groups", ())
    groups: list[str] = []
    for gname in group_names:
        for g in _values(claims.get(gname)):
            if g not in groups:
                groups.append(g)
    out["groups"] = groups[:MAX_GROUPS]
    if not out["name"]:
        out["name"] = " ".join(p for p in (out["given_name"], out["family_name"]) if p)
    if out["email"] and "@" not in out["email"]:
        out["email"] = ""  # e.g. a UPN-less name claim; never guess an address

    tenant = ""
    if preset == "azure_ad":
        tenant = _first(claims, names["tid"])
    out["tenant"] = tenant
    out["overage"] = groups_overage(preset, claims) if preset in ("azure_ad", "generic") else False

    amr = _values(claims.get("amr"))
    if preset == "azure_ad":
        amr = list(dict.fromkeys([*amr, *_values(claims.get(AZ_AMR))]))
    contexts = _values(claims.get(AUTHN_CONTEXT)) + _values(claims.get("acr"))
    out["amr"] = amr
    out["mfa"] = mfa_from(amr, contexts)

    subject = _first(claims, by_field.get("subject", ()))
    if not subject:
        if preset == "azure_ad":
            oid = _first(claims, names["oid"])
            if not oid or not tenant:
                raise UpstreamError("subject", "the Azure AD answer has no object id (oid) and tenant id (tid)",
                                    "Azure AD must send the objectidentifier and tenantid claims; they are sent "
                                    "by default - check the app's claim configuration.")
            subject = f"{tenant}:{oid}"
        else:
            subject = _first(claims, ("sub", NAMEID))
    if not subject:
        raise UpstreamError("subject", "the identity provider sent no subject (sub / NameID)",
                            "Configure the IdP to send a persistent NameID (SAML) or a sub claim (OIDC).")
    out["subject"] = subject
    return out
