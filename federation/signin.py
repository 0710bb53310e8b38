"""Federation's strategy in the sign-in core (``idp.signin``): home-realm discovery and LDAP passwords. Plain
Python.

- ``route``: an address whose domain a connection claims signs in there — at the upstream IdP (OIDC, SAML) or
  with the directory's password (LDAP) — unless the person asked for idhub's own password and the workspace
  does not require SSO (a break-glass account).
- ``check_password``: the password step of an LDAP connection's flow is a bind; a local password for an address
  whose connection requires SSO is refused. Any other password step is idhub's own (``LocalPassword``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from federation.base import UpstreamError
from idp.flow import AuthnResult, LoginFlow
from idp.hub import PasswordOutcome
from idp.signin import Route


class FederationStrategy:
    name = "federation"

    def __init__(self, hub, service: Callable[[], object]):
        self.hub = hub
        self.service = service  # the workspace's FederationService (a getter: tests swap its HTTP client)

    def identifier_first(self, ws) -> bool:
        return self.service().routes_by_domain(ws)

    def route(self, ws, email: str, *, local: bool) -> Route | None:
        conn = self.service().for_email(ws, email)
        if conn is None or (local and not conn.get("sso_required")):
            return None
        return Route("password" if conn["protocol"] == "ldap" else "upstream", conn["slug"])

    def check_password(self, ws, flow: LoginFlow, password: str, client, device: str | None):
        fed = self.service()
        if not flow.connection:
            if flow.routed:  # routed in this request (the one-page form): no connection requires SSO for it
                return None
            conn = fed.for_email(ws, flow.email)
            if conn is not None and conn.get("sso_required"):
                fed.audit("auth.signin.failure", ws, conn, client, actor_email=flow.email, reason="sso_required")
                return PasswordOutcome(False, f"Your organisation requires single sign-on with {conn['name']}. "
                                              "Go back and continue with your email address.")
            return None
        conn = fed.connection(ws, flow.connection)
        if conn is None or conn["protocol"] != "ldap":
            return PasswordOutcome(False, "This sign-in method is no longer available. Start again.")
        return self._ldap(ws, fed, conn, flow, password, client)

    def _ldap(self, ws, fed, conn: dict, flow: LoginFlow, password: str, client):
        from federation import ldap  # ldap3, loaded by the first LDAP sign-in only

        h = self.hub
        now = h.clock()
        acct_key, addr_key = f"ldap:{ws.id}:{conn['slug']}:{flow.email.casefold()}", f"pwip:{client.ip}"
        wait, _ = h._reserve_attempt(acct_key, addr_key, now)
        if wait:
            fed.audit("auth.signin.throttled", ws, conn, client, actor_email=flow.email, retry_after=wait)
            return PasswordOutcome(False, f"Too many attempts. Try again in {wait} seconds.", retry_after=wait)
        try:
            ident = ldap.authenticate(conn, flow.email, password)
            signed = fed.sign_in(ws, conn, ident, client)
        except UpstreamError as err:
            fed.failed(ws, conn, err, client)
            if err.check == "unavailable":
                h.stores.throttle.reset(acct_key)
                return PasswordOutcome(False, "Your organisation's directory cannot be reached right now. Try "
                                              "again in a minute.")
            if err.check == "deactivated":
                return PasswordOutcome(False, "Your account is deactivated. Contact your IT team.")
            return PasswordOutcome(False, "Incorrect email or password.")
        h.stores.throttle.reset(acct_key)
        amr = ("pwd", "fed")  # the password was checked by idhub (a bind), so it is idhub's first factor
        fed.audit("federation.signin.success", ws, conn, client, actor_id=signed.user_id, protocol="ldap",
                  amr=list(amr))
        return PasswordOutcome(True, result=AuthnResult(ws.id, signed.user_id, amr, now, flow.next))

    # ---- re-authentication ("Confirm it's you" on the security page) ------------------------------------------
    def reauth_options(self, ws, user) -> dict:
        """How ``user`` can confirm it's them on the re-authentication page (the security page's "Confirm it's you"):

        ``upstream``: the OIDC/SAML connections their account is linked to ("Continue with <name>"); ``ldap``: the LDAP
        connection they are linked to — the password field then binds against the directory, never a local hash;
        ``password``: whether the password field is offered (a directory password, or idhub's own password when the
        account has one and the domain does not require single sign-on); ``sso_required``: the domain's connection
        when it requires single sign-on; ``message``: what to do when there is no way to confirm here."""
        links = self.service().linked_connections(ws, user.id)
        upstream = [c for c in links if c["protocol"] in ("oidc", "saml")]
        ldap_conn = next((c for c in links if c["protocol"] == "ldap"), None)
        domain = self.service().for_email(ws, user.email)
        sso = ({k: domain[k] for k in ("slug", "name", "protocol")}
               if domain is not None and domain.get("sso_required") else None)
        password = ldap_conn is not None or (bool(user.password_hash) and sso is None)
        message = None
        if sso is not None:
            message = (f"Your organisation requires single sign-on with {sso['name']}, so an idhub password cannot "
                       "confirm it's you. ")
            if upstream:
                message += f"Use “Continue with {upstream[0]['name']}” instead."
            else:
                message += (f"Sign out, sign in again with {sso['name']} and retry, or ask your IT team to make this "
                            "change for you (an admin can reset two-factor authentication).")
        elif not password and not upstream:
            message = ("Your account has no idhub password and is not connected to your organisation's sign-in, so "
                       "idhub cannot confirm it's you here. Ask your IT team to make this change for you (an admin can "
                       "reset two-factor authentication).")
        return {"upstream": upstream, "ldap": ldap_conn, "password": password, "sso_required": sso, "message": message}

    def reauth_password(self, ws, user, password: str, client, options: dict | None = None):
        """The password on the re-authentication page: an LDAP-linked user's directory password (a bind, which must
        land on the entry linked to them); a refusal (audited ``auth.reauth.failure``) where a local password is no
        proof — single sign-on required, or no idhub password at all. Returns an ``idp.hub.PasswordOutcome``, or None
        for idhub's own password check."""
        options = options if options is not None else self.reauth_options(ws, user)
        if options["ldap"] is not None:
            conn = self.service().connection(ws, options["ldap"]["slug"])
            if conn is not None and conn["protocol"] == "ldap":
                return self._ldap_reauth(ws, conn, user, password, client)
        if options["password"]:
            return None
        reason = "sso_required" if options["sso_required"] else "no_password"
        self.service().audit("auth.reauth.failure", ws, options["sso_required"], client, actor_id=user.id,
                    actor_email=user.email, reason=reason)
        return PasswordOutcome(False, options["message"] or "A password cannot confirm it's you here.")

    def _ldap_reauth(self, ws, conn: dict, user, password: str, client):
        """A bind as the user's directory entry (throttled like the LDAP sign-in, on the same key)."""
        from federation import ldap
        h = self.hub
        now = h.clock()
        acct_key, addr_key = f"ldap:{ws.id}:{conn['slug']}:{user.email.casefold()}", f"pwip:{client.ip}"
        wait, _ = h._reserve_attempt(acct_key, addr_key, now)
        if wait:
            self.service().audit("auth.signin.throttled", ws, conn, client, actor_id=user.id, retry_after=wait,
                                 reauth=True)
            return PasswordOutcome(False, f"Too many attempts. Try again in {wait} seconds.", retry_after=wait)
        try:
            ident = ldap.authenticate(conn, user.email, password)
        except UpstreamError as err:
            self.service().failed(ws, conn, err, client, reauth=True, actor_id=user.id)
            if err.check == "unavailable":
                h.stores.throttle.reset(acct_key)
                return PasswordOutcome(False, "Your organisation's directory cannot be reached right now. Try again "
                                              "in a minute.")
            return PasswordOutcome(False, "Incorrect password.")
        linked_to = self.service().linked_user(conn, ident)
        if linked_to is None or not hmac.compare_digest(linked_to, user.id):
            self.service().audit("auth.reauth.failure", ws, conn, client, actor_id=user.id, actor_email=user.email,
                        reason="identity_mismatch", other_account=linked_to is not None)
            return PasswordOutcome(False, f"That password belongs to another {conn['name']} account than the one "
                                          "linked to you. idhub did not confirm it's you.")
        h.stores.throttle.reset(acct_key)
        return PasswordOutcome(True, result=AuthnResult(ws.id, user.id, ("pwd", "fed"), now))
