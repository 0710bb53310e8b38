"""Whether idhub vouches for a user's e-mail address (the ``email_verified`` claim). Plain Python.

An address is *verified* when idhub knows that it belongs to the person, and only then:

* ``User.email_verified_via`` records how it was verified, as a stored fact about the *current* address:
  ``"mail"`` (:data:`MAIL`: its owner completed a mail round trip — a password reset or invitation link mailed to
  the address), ``"upstream:<connection slug>"`` (:func:`upstream`: a trusted upstream connection — one whose IdP the
  config file names, not one a workspace admin registered over the API — asserted it, for one of that connection's
  own ``domains``; recorded by ``federation.service``), or ``None``. It is written, like every account column, by
  ``idp.lifecycle`` alone, which also sets it back to ``None`` when the address changes: a fact about the old
  address says nothing about the new one.
* or the address is in a domain the workspace claims (``Workspace.domains``, declared by the hub operator in the
  config file). This is computed at read time, never stored: a workspace that stops claiming a domain stops
  vouching for its addresses.

Anything else — an address typed by a workspace admin or sent by a SCIM client — is *not* verified: an admin
who creates ``ceo@another-company.example`` must not make downstream apps that link accounts by e-mail believe it.
"""

from __future__ import annotations

from idp.accounts import InvalidEmail, normalise_email

MAIL = "mail"
UPSTREAM_PREFIX = "upstream:"


def upstream(conn_slug: str) -> str:
    """The ``email_verified_via`` value for an address asserted by the upstream connection ``conn_slug``."""
    return UPSTREAM_PREFIX + conn_slug


def _key(email: str | None) -> str | None:
    """The normalised address (``idp.accounts.normalise_email``), or None for a missing or invalid one."""
    if not email:
        return None
    try:
        return normalise_email(email)
    except InvalidEmail:
        return None


def same_address(a: str | None, b: str | None) -> bool:
    """Whether two addresses are the same account key (NFKC, trimmed, case-folded); never for invalid ones."""
    ka, kb = _key(a), _key(b)
    return ka is not None and ka == kb


def domain_claimed(ws, email_key: str | None) -> bool:
    """Whether the address (normalised or not) is in one of the workspace's ``domains`` — exactly that domain,
    no subdomains (as connections' ``domains``: claiming ``acme.test`` says nothing about ``evil.acme.test``)."""
    key = _key(email_key)
    if key is None or ws is None:
        return False
    domain = key.rpartition("@")[2]
    return bool(domain) and domain in {str(d).lower().rstrip(".") for d in (getattr(ws, "domains", None) or [])}


def is_verified(email: str | None, verified_via: str | None, ws) -> bool:
    """The ``email_verified`` idhub tells apps for an address (``email`` or its normalised key): true when its
    verification is recorded (``verified_via``, the user's ``email_verified_via``) or its domain is one ``ws``
    claims; never for a missing or invalid address."""
    if _key(email) is None:
        return False
    return bool(verified_via) or domain_claimed(ws, email)
