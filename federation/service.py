"""Federation domain service: connections of a workspace, home-realm discovery, and turning an
:class:`UpstreamIdentity` into an idhub account (links keyed on ``(connection, subject)``, never on email;
just-in-time creation; linking to SCIM-provisioned users; group synchronisation). Plain Python: takes the hub
(database, audit log, clock, settings) as an argument; knows nothing about Flask."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from federation.base import UpstreamError, UpstreamIdentity
from federation.config import admin_chosen_trust, connection_settings, guarded
from federation.models import FederationConnection, FederationLink
from idp import emailverify
from idp.accounts import InvalidEmail, normalise_email
from idp.crypto import secret_keys
from idp.invalidation import CONNECTIONS, generation
from idp.lifecycle import KEEP, AccountError, Actor
from idp.models import Group, GroupMember, User

log = logging.getLogger("idhub.federation")

_DOMAINS_OF_WORKSPACE = select(FederationConnection.id, FederationConnection.domains).where(
    FederationConnection.workspace_id == bindparam("w"))

ROUTES_TTL = 5.0  # seconds at most; a connection changed on any node drops the entries at once (idp.invalidation)
METADATA_REFRESH = timedelta(hours=24)
METADATA_RETRY = timedelta(hours=1)
GENERIC_FAILURE = "Sign-in through your organisation's identity provider failed. Try again, or contact your IT team."


class _LinkRace(Exception):
    pass


def email_domain(email_key: str) -> str:
    return email_key.rpartition("@")[2].rstrip(".")


def email_in_domains(conn: dict, email_key: str) -> bool:
    """The connection speaks for the addresses of its ``domains`` only (exact domain, no subdomains)."""
    return bool(email_key) and email_domain(email_key) in {d.lower() for d in conn.get("domains") or []}


def email_verified(conn: dict, ident: UpstreamIdentity) -> bool:
    """Whether the IdP vouches that the mapped email address belongs to this person.

    OIDC (Okta, generic): the ID token's ``email_verified`` is JSON ``true`` and belongs to the very address we
    mapped (the ``email`` claim; an attribute_map that takes the address from another claim is not covered).
    SAML, LDAP and Azure AD (whose ``email`` is an editable attribute, not a verified address) say nothing about
    verification: their addresses count as unverified unless the connection sets ``email_verified_by_idp: true``.
    A missing or false claim, a string ``"true"`` or a SAML attribute ``["true"]`` is not a verification."""
    if not ident.email:
        return False
    if conn.get("email_verified_by_idp") is True:
        return True
    if conn.get("protocol") != "oidc" or conn.get("preset") == "azure_ad":
        return False
    claims = ident.claims if isinstance(ident.claims, dict) else {}
    if claims.get("email_verified") is not True or not isinstance(claims.get("email"), str):
        return False
    try:
        return normalise_email(claims["email"]) == normalise_email(ident.email)
    except InvalidEmail:
        return False


def _check_domain(conn: dict, email_key: str, what: str) -> None:
    if email_in_domains(conn, email_key):
        return
    domains = ", ".join(conn.get("domains") or []) or "none"
    raise UpstreamError("email_domain", f"the email address's domain {email_domain(email_key)[:253]!r} is not one "
                        f"of this connection's domains ({domains[:300]}), so no account is "
                        + ("linked" if what == "link" else "created"),
                        "A connection speaks only for the addresses of its domains. Add the domain to the "
                        "connection's domains if this identity provider really owns it, or provision the user "
                        "over SCIM with this subject as externalId.")


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    amr: tuple[str, ...]
    created: bool = False
    linked: str = ""  # "", "existing", "external_id", "email", "created"


class FederationService:
    def __init__(self, hub, http=None):
        from federation.oidc_rp import OidcRp

        self.hub = hub
        self.rp = OidcRp(http, clock=lambda: hub.clock())
        # workspace id -> (expires, generation, answer)
        self._routes: dict[str, tuple[float, int, bool]] = {}

    # ---- connections ------------------------------------------------------------------------------------------------
    def connections(self, ws) -> list[dict]:
        with self.hub.db() as db:
            rows = db.scalars(select(FederationConnection).where(FederationConnection.workspace_id == ws.id)
                              .order_by(FederationConnection.slug)).all()
        return [connection_settings(r, secret_keys(self.hub.settings)) for r in rows]

    def connection(self, ws, slug: str) -> dict | None:
        if not slug or len(slug) > 63:
            return None
        with self.hub.db() as db:
            row = db.scalar(select(FederationConnection).where(FederationConnection.workspace_id == ws.id,
                                                               FederationConnection.slug == slug))
            if row is None:
                return None
            if row.settings.get("metadata_url") and self.hub.clock() - row.updated_at > METADATA_REFRESH:
                self._refresh_metadata(db, ws, row)
            return connection_settings(row, secret_keys(self.hub.settings))

    def _refresh_metadata(self, db, ws, row: FederationConnection) -> None:
        """Re-read a SAML connection's ``metadata_url`` (new certificates before a rollover). A failed or unusable
        fetch keeps the metadata idhub has (fail closed on the old, pinned certificates) and is audited. A URL the
        admin API or console registered is resolved, checked and pinned again at every refresh (``idp.netfetch``)."""
        from federation import saml_sp
        from federation.config import fetch_metadata

        url = row.settings["metadata_url"]
        try:
            xml = fetch_metadata(url, guarded=guarded(row.settings))
            meta = saml_sp.parse_idp_metadata(xml)
            if not meta["certs"] and not row.settings.get("certs"):
                raise ValueError("the metadata has no signing certificate")
        except Exception as exc:  # noqa: BLE001 - whatever the fetch or the parse raised: keep the old metadata
            log.warning("metadata refresh failed", extra={"connection": row.slug, "error": type(exc).__name__})
            row.updated_at = self.hub.clock() - METADATA_REFRESH + METADATA_RETRY  # try again in an hour
            db.commit()
            self.audit("federation.metadata.refresh_failed", ws, {"slug": row.slug}, None,
                       reason=str(getattr(exc, "message", exc))[:200])
            return
        changed = xml != row.settings.get("metadata_xml")
        if changed:
            row.settings = {**row.settings, "metadata_xml": xml}
        row.updated_at = self.hub.clock()
        db.commit()
        if changed:
            self.audit("federation.metadata.refreshed", ws, {"slug": row.slug}, None, certificates=len(meta["certs"]))

    def for_email(self, ws, email: str) -> dict | None:
        """Home-realm discovery: the connection whose domains include the address's domain.

        Runs at every sign-in, so it reads only the connections' domains (one prebuilt Core statement) and loads
        the whole connection, secrets decrypted, only when one matches."""
        domain = email.rpartition("@")[2].strip().lower().rstrip(".")
        if not domain:
            return None
        with self.hub.connect() as conn:
            match = next((conn_id for conn_id, domains in conn.execute(_DOMAINS_OF_WORKSPACE, {"w": ws.id})
                          if domain in (domains or [])), None)
        if match is None:
            return None
        with self.hub.db() as db:
            row = db.get(FederationConnection, match)
            return connection_settings(row, secret_keys(self.hub.settings)) if row is not None else None

    def routes_by_domain(self, ws) -> bool:
        """Whether any connection of the workspace claims email domains (home-realm discovery): then the sign-in
        page asks for the email first, so nobody types a password idhub will not check.

        Asked at every sign-in page, so cached per process for ROUTES_TTL seconds (dropped at once by a change of
        a connection on any node: ``idp.invalidation``). A stale answer only picks the form: the POST routes the
        address with fresh data, and a password sent along with a routed address is never looked at."""
        now = time.monotonic()
        hit = self._routes.get(ws.id)
        gen = generation(CONNECTIONS)
        if hit is not None and hit[0] > now and hit[1] == gen:
            return hit[2]
        with self.hub.connect() as conn:
            routed = any(domains for _, domains in conn.execute(_DOMAINS_OF_WORKSPACE, {"w": ws.id}))
        if len(self._routes) > 4096:
            self._routes.clear()
        self._routes[ws.id] = (now + ROUTES_TTL, gen, routed)
        return routed

    # ---- audit ----------------------------------------------------------------------------------------------
    def audit(self, type_: str, ws, conn: dict | None, client=None, **data) -> None:
        actor_id = data.pop("actor_id", None)
        actor_email = data.pop("actor_email", None)
        self.hub._event(type_, ws.id, client, actor_id=actor_id, actor_email=actor_email,
                        data={"connection": conn["slug"] if conn else None, **data})

    def failed(self, ws, conn: dict | None, err: UpstreamError, client=None, *, test: bool = False,
               reauth: bool = False, actor_id: str | None = None) -> None:
        """Audit a failed upstream sign-in with the failed check (never the token or the code); ``reauth``: it was
        a re-authentication of ``actor_id``'s session."""
        extra = {"reauth": True, "actor_id": actor_id} if reauth else {}
        self.audit("federation.signin.failure", ws, conn, client, check=err.check, reason=err.message[:300],
                   protocol=conn.get("protocol") if conn else None, test=test, **extra)
        log.info("upstream sign-in failed", extra={"connection": conn["slug"] if conn else None,
                                                   "check": err.check})

    # ---- re-authentication ------------------------------------------------------------------------------------------
    def linked_connections(self, ws, user_id: str) -> list[dict]:
        """The workspace's connections this user is linked to (``slug``, ``name``, ``protocol``), by slug."""
        with self.hub.db() as db:
            rows = db.execute(select(FederationConnection.slug, FederationConnection.name,
                                     FederationConnection.protocol)
                              .join(FederationLink, FederationLink.connection_id == FederationConnection.id)
                              .where(FederationLink.user_id == user_id, FederationConnection.workspace_id == ws.id)
                              .order_by(FederationConnection.slug)).all()
        return [{"slug": r.slug, "name": r.name, "protocol": r.protocol} for r in dict.fromkeys(rows)]

    def is_linked(self, conn: dict, user_id: str) -> bool:
        with self.hub.db() as db:
            return db.scalar(select(FederationLink.id).where(FederationLink.connection_id == conn["id"],
                                                             FederationLink.user_id == user_id)) is not None

    def linked_user(self, conn: dict, ident: UpstreamIdentity) -> str | None:
        """The idhub user this upstream identity (the connection's issuer + the IdP's stable subject) is linked to;
        a plain look-up that links, creates and changes nothing."""
        if not ident.subject or len(ident.subject) > 512:
            return None
        with self.hub.db() as db:
            return db.scalar(select(FederationLink.user_id).where(FederationLink.connection_id == conn["id"],
                                                                  FederationLink.subject == ident.subject))

    # ---- identity ---------------------------------------------------------------------------------------------------
    def sign_in(self, ws, conn: dict, ident: UpstreamIdentity, client=None) -> SignedIn:
        """The idhub user for an upstream identity (linking or creating it), groups synchronised; raises
        ``UpstreamError`` (check ``deactivated``, ``not_provisioned``, ``email_conflict``, ``email``)."""
        if not ident.subject or len(ident.subject) > 512:
            raise UpstreamError("subject", "the identity provider sent no usable subject", "")
        for warning in ident.warnings:
            self.audit("federation.signin.warning", ws, conn, client, warning=warning[:300])
        try:
            return self._sign_in(ws, conn, ident, client)
        except (IntegrityError, _LinkRace):  # a parallel first sign-in of the same person linked it first
            return self._sign_in(ws, conn, ident, client)

    def _sign_in(self, ws, conn: dict, ident: UpstreamIdentity, client) -> SignedIn:
        with self.hub.db() as db:
            link = db.scalar(select(FederationLink).where(FederationLink.connection_id == conn["id"],
                                                          FederationLink.subject == ident.subject))
            how = "existing"
            user = db.get(User, link.user_id) if link else None
            if link is None:
                user, how = self._find_or_create(db, ws, conn, ident)
                link = FederationLink(connection_id=conn["id"], subject=ident.subject, user_id=user.id)
                db.add(link)
            if user is None or user.workspace_id != ws.id:
                raise UpstreamError("not_provisioned", "the linked account no longer exists", "")
            if not user.active:
                db.rollback()
                raise UpstreamError("deactivated", "this account is deactivated in idhub",
                                    "Reactivate the user (config file or SCIM) if they should sign in.")
            # the IdP vouches for the address, speaks for its domain, and it is this account's address: recorded
            # (not for a connection whose IdP or domains a workspace admin chose: federation.config.admin_chosen_trust)
            vouched = user.email_verified_via is None and not admin_chosen_trust(conn) and email_verified(conn, ident) \
                and email_in_domains(conn, user.email_normalized) \
                and emailverify.same_address(ident.email, user.email_normalized)
            self.hub.accounts.write(db, Actor.upstream(conn["slug"]), user,
                                    name=ident.name[:200] if ident.name and not user.name else KEEP,
                                    verified_via=emailverify.upstream(conn["slug"]) if vouched else KEEP)
            link.last_signin_at = self.hub.clock()
            synced = self._sync_groups(db, ws, user, link, ident)
            db.commit()
            user_id, email = user.id, user.email
        if how != "existing":
            self.audit("federation.user." + ("created" if how == "created" else "linked"), ws, conn, client,
                       actor_id=user_id, actor_email=email, linked_by=how)
        if synced is not None:
            self.audit("federation.groups.synced", ws, conn, client, actor_id=user_id, **synced)
        return SignedIn(user_id, self.amr(conn, ident), created=how == "created", linked=how)

    def _find_or_create(self, db, ws, conn: dict, ident: UpstreamIdentity):
        user = db.scalar(select(User).where(User.workspace_id == ws.id, User.external_id == ident.subject))
        if user is not None:
            # never an account another connection already vouches for (the same subject string at another IdP
            # is another person)
            other = db.scalar(select(FederationLink.id).where(FederationLink.user_id == user.id,
                                                              FederationLink.connection_id != conn["id"]))
            if other is None:
                return user, "external_id"
        email_key = problem = None
        if ident.email:
            try:
                email_key = normalise_email(ident.email)
            except InvalidEmail as exc:
                problem = str(exc)  # a look-alike (invisible characters, a trailing dot, …): no account for it
        existing = db.scalar(select(User).where(User.workspace_id == ws.id, User.email_normalized == email_key)) \
            if email_key else None
        if existing is not None:
            if db.scalar(select(FederationLink.id).where(FederationLink.connection_id == conn["id"],
                                                         FederationLink.subject == ident.subject)):
                raise _LinkRace()  # a parallel first sign-in created this person's account a moment ago
            if not conn.get("link_by_email"):
                raise UpstreamError("email_conflict", "an idhub account with this email exists but is not linked "
                                    "to this connection", "Set link_by_email: true on the connection to link "
                                    "accounts with the same verified email, or provision the user over SCIM with "
                                    "this subject as externalId.")
            # an email is only a claim: link on it only when the IdP vouches for it and owns its domain (nOAuth)
            if not email_verified(conn, ident):
                raise UpstreamError("email_unverified", "the identity provider did not assert that this email "
                                    "address is verified, so it is not linked to the existing idhub account",
                                    "OIDC IdPs must send email_verified: true with the email claim. SAML, LDAP "
                                    "and Azure AD send no such claim: set email_verified_by_idp: true on the "
                                    "connection only if the IdP's administrators control every address it sends, "
                                    "or provision the user over SCIM with this subject as externalId.")
            _check_domain(conn, email_key, "link")
            return existing, "email"
        if not conn.get("jit", True):
            raise UpstreamError("not_provisioned", "no idhub account is linked to this identity and just-in-time "
                                "creation is off", "Provision the user over SCIM, or set jit: true.")
        if problem:
            raise UpstreamError("email", f"the identity provider sent an address idhub refuses: {problem}",
                                "Check the address of this person at the identity provider.")
        if not email_key:
            raise UpstreamError("email", "the identity provider sent no email address",
                                "Map an attribute to email (attribute_map) or release the email claim.")
        _check_domain(conn, email_key, "create")
        # external_id marks the account as managed by the IdP: no local password, no reset links (idp.hub)
        try:
            user = self.hub.accounts.create(
                db, Actor.upstream(conn["slug"]), ws.id, email=ident.email, name=(ident.name or "")[:200],
                profile={"external_id": ident.subject[:255], "given_name": ident.given_name[:200] or None,
                         "family_name": ident.family_name[:200] or None})
        except AccountError as exc:
            raise UpstreamError("email", f"the identity provider sent an address idhub refuses: {exc.message}",
                                "Check the address of this person at the identity provider.") from None
        db.flush()
        return user, "created"

    def _sync_groups(self, db, ws, user: User, link: FederationLink, ident: UpstreamIdentity) -> dict | None:
        """Memberships follow the IdP for the groups it sent (created on demand); groups an earlier sign-in
        added and the IdP no longer sends are left. Skipped when the IdP left groups out (overage)."""
        if any(w.startswith("groups overage") and "not updated" in w for w in ident.warnings):
            return None
        try:
            previous = set(json.loads(link.last_claims or "{}").get("groups", []))
        except (ValueError, AttributeError):
            previous = set()
        # names are cut to the column's 200 characters; two names sharing that prefix are one group
        wanted = list(dict.fromkeys(n for n in (g[:200].strip() for g in ident.groups) if n))
        groups = {g.name: g for g in db.scalars(select(Group).where(Group.workspace_id == ws.id))}
        added, removed = [], []
        for name in wanted:
            if name not in groups:
                groups[name] = Group(workspace_id=ws.id, name=name)
                db.add(groups[name])
                db.flush()
        have = set(db.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user.id)))
        for name in wanted:
            if groups[name].id not in have:
                db.add(GroupMember(group_id=groups[name].id, user_id=user.id))
                added.append(name)
        for name in previous - set(wanted):
            g = groups.get(name)
            if g is not None and g.id in have:
                db.execute(delete(GroupMember).where(GroupMember.group_id == g.id, GroupMember.user_id == user.id))
                removed.append(name)
        link.last_claims = json.dumps({"groups": wanted})
        return {"added": added[:50], "removed": removed[:50]} if added or removed else None

    @staticmethod
    def amr(conn: dict, ident: UpstreamIdentity) -> tuple[str, ...]:
        """What idhub's session records: ``fed``, ``pwd`` when the upstream says a password was used, and
        ``upstream_mfa`` (a second factor for the policy engine, ``mfa`` for downstream apps) only when the
        connection is trusted to do MFA (``trust_mfa``) and the IdP says it did. Upstream factor names are never
        copied: ``sms``/``otp`` from an IdP must not pass for idhub's own second factor."""
        methods = ["fed"]
        if "pwd" in ident.amr:
            methods.append("pwd")
        if conn.get("trust_mfa") and ident.mfa:
            methods.append("upstream_mfa")
        return tuple(methods)
