"""Federation routes (contract URLs): ``/w/{ws}/sso/{c}/start``, ``/callback`` (OIDC), ``/metadata`` and ``/acs``
(SAML), the admins' Test connection page ``/test``; plus the two hooks of the identifier-first sign-in
(home-realm discovery after the email, LDAP/``sso_required`` at the password step). The only Flask module of
the federation package: it turns the protocol modules' results into the login flow's next step."""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import timedelta

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from federation.base import UpstreamError
from federation.service import GENERIC_FAILURE, FederationService
from idp.flow import AuthnResult, FlowError, LoginFlow
from idp.web.common import browser_binding, check_csrf, current_client, hub, load_workspace

bp = Blueprint("federation", __name__)

PENDING_TTL = 15 * 60  # as long as a login flow
RESULT_TTL = 120  # an ACS result waits this long for the browser's redirect
MAX_SAML_RESPONSE = 200 * 1024
CERT_WARNING_DAYS = 30
START_PER_MINUTE = 600  # upstream sign-ins started per client address per minute (each keeps state 15 minutes)
# what an employee is told when the refusal is about them, not about a broken or hostile answer
EMPLOYEE_MESSAGES = {
    "deactivated": "Your account is deactivated. Contact your IT team.",
    "email_unverified": "Your organisation's identity provider did not confirm that your email address is "
                        "verified, so idhub cannot connect this sign-in to your existing idhub account. Contact "
                        "your IT team.",
    "email_domain": "Your organisation's identity provider signed you in with an email address this connection "
                    "does not cover, so idhub did not create or connect an account. Contact your IT team.",
}


def fed() -> FederationService:
    svc = current_app.extensions.get("idhub.federation")
    if svc is None:
        svc = current_app.extensions["idhub.federation"] = FederationService(hub())
    return svc


def _flows():
    from idp.web.auth import _flows

    return _flows()


def _connection_or_404(ws, slug: str, *protocols: str) -> dict:
    from flask import abort

    conn = fed().connection(ws, slug)
    if conn is None or (protocols and conn["protocol"] not in protocols):
        abort(404, description="There is no single sign-on connection at this address.")
    return conn


def _failure(ws, conn: dict | None, err: UpstreamError, *, test: bool = False, status: int = 400):
    """Audit the failed check; show the employee a generic page with an error id (admins see details on the
    Test connection page)."""
    fed().failed(ws, conn, err, current_client(), test=test)
    if test:
        return render_template("federation_test.html", ws=ws, conn=conn, error=err, claims=None, mapped=None,
                               cert_warnings=_cert_warnings(conn) if conn else []), status
    status = 403 if err.check in EMPLOYEE_MESSAGES else status
    message = EMPLOYEE_MESSAGES.get(err.check, GENERIC_FAILURE)
    if err.check == "email_domain" and conn and conn.get("domains"):
        message += f" This sign-in is for addresses at {', '.join(conn['domains'])}."
    return render_template("federation_error.html", ws=ws, conn=conn, message=message,
                           error_id=g.get("request_id", "")), status


def _unexpected(ws, conn: dict, test: bool):
    import logging

    logging.getLogger("idhub.federation").exception("upstream answer could not be processed",
                                                    extra={"connection": conn["slug"]})
    return _failure(ws, conn, UpstreamError("internal", "idhub could not process the identity provider's answer",
                                            "Give the error id to the idhub operators."), test=test)


# ---- hooks of the identifier-first sign-in (called from idp.web.auth) ----------------------------------------
def route_login(ws, email: str, next_url: str, app: str):
    """After the email step: a redirect to the upstream IdP (SAML/OIDC) or to the password page of an LDAP
    connection when the address's domain belongs to a connection; None to carry on with the local password."""
    conn = fed().for_email(ws, email)
    if conn is None:
        return None
    if request.form.get("local") == "1" and not conn.get("sso_required"):
        return None  # "use my idhub password" (break-glass accounts), unless the workspace requires SSO
    state = "password" if conn["protocol"] == "ldap" else "upstream"
    flows = _flows()
    flow = flows.start(ws.id, browser_binding(), next_url, email=email, state=state, app=app)
    flow.connection = conn["slug"]
    flows.save(flow)
    if state == "password":
        return redirect(url_for("auth.password", ws_slug=ws.slug, flow=flow.id))
    return redirect(url_for("federation.start", ws_slug=ws.slug, conn_slug=conn["slug"], flow=flow.id))


def password_step(ws, flow: LoginFlow, password: str, client):
    """At the password step: an LDAP connection's bind, or the refusal of a local password where SSO is
    required. Returns an ``idp.hub.PasswordOutcome``, or None for idhub's own password check."""
    from idp.hub import PasswordOutcome

    if not flow.connection:
        conn = fed().for_email(ws, flow.email)
        if conn is not None and conn.get("sso_required"):
            fed().audit("auth.signin.failure", ws, conn, client, actor_email=flow.email, reason="sso_required")
            return PasswordOutcome(False, f"Your organisation requires single sign-on with {conn['name']}. "
                                          "Go back and continue with your email address.")
        return None
    conn = fed().connection(ws, flow.connection)
    if conn is None or conn["protocol"] != "ldap":
        return PasswordOutcome(False, "This sign-in method is no longer available. Start again.")
    return _ldap_password(ws, conn, flow, password, client)


def reauth_refusal(ws, user, client) -> str | None:
    """At the re-authentication page (``idp.web.mfa.reauth``): where the user's domain requires single sign-on, a
    local password does not confirm it's them (that is what ``sso_required`` means); the refusal is audited and
    the message says why. None when the local password may be used."""
    conn = fed().for_email(ws, user.email)
    if conn is None or not conn.get("sso_required"):
        return None
    fed().audit("auth.reauth.failure", ws, conn, client, actor_id=user.id, actor_email=user.email,
                reason="sso_required")
    return (f"Your organisation requires single sign-on with {conn['name']}, so an idhub password cannot "
            "confirm it's you. Ask your IT team to make this change for you (an admin can reset two-factor "
            "authentication).")


def _ldap_password(ws, conn: dict, flow: LoginFlow, password: str, client):
    from federation import ldap
    from idp.hub import PasswordOutcome

    h = hub()
    now = h.clock()
    acct_key, addr_key = f"ldap:{ws.id}:{conn['slug']}:{flow.email.casefold()}", f"pwip:{client.ip}"
    wait, _ = h._reserve_attempt(acct_key, addr_key, now)
    if wait:
        fed().audit("auth.signin.throttled", ws, conn, client, actor_email=flow.email, retry_after=wait)
        return PasswordOutcome(False, f"Too many attempts. Try again in {wait} seconds.", retry_after=wait)
    try:
        ident = ldap.authenticate(conn, flow.email, password)
        signed = fed().sign_in(ws, conn, ident, client)
    except UpstreamError as err:
        fed().failed(ws, conn, err, client)
        if err.check == "unavailable":
            h.stores.throttle.reset(acct_key)
            return PasswordOutcome(False, "Your organisation's directory cannot be reached right now. Try again "
                                          "in a minute.")
        if err.check == "deactivated":
            return PasswordOutcome(False, "Your account is deactivated. Contact your IT team.")
        return PasswordOutcome(False, "Incorrect email or password.")
    h.stores.throttle.reset(acct_key)
    amr = ("pwd", "fed")  # the password was checked by idhub (a bind), so it is idhub's first factor
    fed().audit("federation.signin.success", ws, conn, client, actor_id=signed.user_id, protocol="ldap",
                amr=list(amr))
    return PasswordOutcome(True, result=AuthnResult(ws.id, signed.user_id, amr, now, flow.next))


# ---- start ------------------------------------------------------------------------------------------------------
def _load_or_start_flow(ws, conn: dict) -> LoginFlow:
    flows = _flows()
    flow_id = request.values.get("flow", "")
    if flow_id:
        flow = flows.load(flow_id, ws.id, browser_binding())
        if flow.state != "upstream" or flow.connection != conn["slug"]:
            raise FlowError("wrong step")
        return flow
    # "Sign in with <connection>" without an email first
    from idp.web.common import safe_next

    nxt = safe_next(request.values.get("next"), ws.slug)
    flow = flows.start(ws.id, browser_binding(), nxt, state="upstream")
    flow.connection = conn["slug"]
    flows.save(flow)
    return flow


def _begin(ws, conn: dict, flow_id: str, *, test: bool = False, login_hint: str = "", actor_id: str | None = None):
    """Redirect the browser to the IdP; what the callback needs is kept server-side, keyed by state/RelayState.
    Any failure (a hostile discovery document, unusable metadata, a store that cannot be reached…) ends on the
    federation error page (or the Test connection page), never in a 500."""
    one_time = hub().stores.one_time
    base = hub().settings.base_url
    if not hub().stores.throttle.hit(f"fedstart:{current_client().ip}", START_PER_MINUTE, 60, hub().clock()):
        return _failure(ws, conn, UpstreamError("throttled", "too many sign-ins started from this address",
                                                "Wait a minute."), test=test, status=429)
    pending = {"flow": flow_id, "conn": conn["id"], "binding": browser_binding(), "test": test}
    if test:
        pending["actor"] = actor_id
    try:
        if conn["protocol"] == "oidc":
            url, extra = fed().rp.start(conn, _callback_url(ws, conn), login_hint=login_hint)
            pending.update(extra)
            one_time.put(f"fed:oidc:{extra['state']}", json.dumps(pending), PENDING_TTL)
        else:
            from federation import saml_sp

            relay = secrets.token_urlsafe(32)
            url, request_id = saml_sp.start(conn, base, ws.slug, relay)
            pending["request_id"] = request_id
            one_time.put(f"fed:saml:{relay}", json.dumps(pending), PENDING_TTL)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=test, status=502 if err.check == "unavailable" else 400)
    except Exception:  # a bug or an answer nobody foresaw: fail closed, with the traceback in the log only
        return _unexpected(ws, conn, test)
    fed().audit("federation.signin.started", ws, conn, current_client(), protocol=conn["protocol"], test=test)
    # a page that navigates on (meta refresh), not a 302: a redirect chain from idhub's sign-in form to another
    # origin is blocked by CSP form-action 'self'
    return render_template("federation_redirect.html", ws=ws, conn=conn, url=url)


def _callback_url(ws, conn: dict) -> str:
    return hub().url(f"/w/{ws.slug}/sso/{conn['slug']}/callback")


@bp.route("/w/<ws_slug>/sso/<conn_slug>/start")
def start(ws_slug, conn_slug):
    ws = load_workspace(ws_slug)
    conn = _connection_or_404(ws, conn_slug, "oidc", "saml")
    try:
        flow = _load_or_start_flow(ws, conn)
    except FlowError as exc:
        from flask import flash

        fed().failed(ws, conn, UpstreamError("state", f"the login flow could not be used ({str(exc)[:100]})",
                                             "Sign-ins must finish within 15 minutes, in the browser that "
                                             "started them."), current_client())
        flash("Your sign-in took too long or was started in another browser. Please start again.", "error")
        return redirect(url_for("auth.login", ws_slug=ws.slug))
    return _begin(ws, conn, flow.id, login_hint=flow.email)


# ---- OIDC callback -----------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/sso/<conn_slug>/callback")
def callback(ws_slug, conn_slug):
    ws = load_workspace(ws_slug)
    conn = _connection_or_404(ws, conn_slug, "oidc")
    params = {k: v for k, v in request.args.items()}
    state = params.get("state", "")
    raw = hub().stores.one_time.consume(f"fed:oidc:{state}") if state and len(state) <= 128 else None
    pending = json.loads(raw) if raw else None
    test = bool(pending and pending.get("test"))
    if pending is None:
        return _failure(ws, conn, UpstreamError("state", "the callback's state is unknown, used or expired",
                                                "Start the sign-in again from idhub."))
    if not hmac.compare_digest(pending["conn"], conn["id"]):
        # a state issued for connection A presented at B's callback: mix-up
        return _failure(ws, conn, UpstreamError("state", "the callback's state belongs to another connection "
                                                "(mix-up)", ""), test=test)
    if not hmac.compare_digest(pending["binding"], browser_binding()):
        return _failure(ws, conn, UpstreamError("state", "the sign-in was started in another browser", ""),
                        test=test)
    try:
        ident = fed().rp.finish(conn, _callback_url(ws, conn), params, pending)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=test)
    except Exception:  # a bug or an answer nobody foresaw: fail closed, with the traceback in the log only
        return _unexpected(ws, conn, test)
    return _finish(ws, conn, pending, ident)


# ---- SAML --------------------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/sso/<conn_slug>/metadata")
def metadata(ws_slug, conn_slug):
    from federation import saml_sp

    ws = load_workspace(ws_slug)
    conn = _connection_or_404(ws, conn_slug, "saml")
    try:
        xml = saml_sp.sp_metadata_xml(conn, hub().settings.base_url, ws.slug)
    except UpstreamError as err:
        return _failure(ws, conn, err, status=503)
    return xml, 200, {"Content-Type": "application/samlmetadata+xml; charset=utf-8"}


@bp.route("/w/<ws_slug>/sso/<conn_slug>/acs", methods=["POST"])
def acs(ws_slug, conn_slug):
    """The IdP's cross-site POST: no cookies can be trusted here (SameSite), so the response is validated,
    the result parked for two minutes, and the browser redirected (same-site) to ``resume``, where the flow's
    browser binding is checked."""
    from federation import saml_sp

    ws = load_workspace(ws_slug)
    conn = _connection_or_404(ws, conn_slug, "saml")
    response = request.form.get("SAMLResponse", "")
    relay = request.form.get("RelayState", "")
    if not response or len(response) > MAX_SAML_RESPONSE:
        return _failure(ws, conn, UpstreamError("response", "no SAMLResponse, or one that is too large", ""))
    raw = hub().stores.one_time.consume(f"fed:saml:{relay}") if relay and len(relay) <= 128 else None
    pending = json.loads(raw) if raw else None
    if pending is not None and not hmac.compare_digest(pending["conn"], conn["id"]):
        return _failure(ws, conn, UpstreamError("in_response_to", "the RelayState belongs to another connection",
                                                ""), test=bool(pending.get("test")))
    if pending is None and not conn.get("allow_unsolicited"):
        return _failure(ws, conn, UpstreamError("unsolicited", "a response idhub did not ask for (IdP-initiated)",
                                                "Start the sign-in from idhub, or set allow_unsolicited: true."))
    one_time = hub().stores.one_time

    def replay_seen(key: str, ttl: int) -> bool:
        return not one_time.add(f"fed:replay:{conn['id']}:{key}", "1", max(1, int(ttl)))

    try:
        ident = saml_sp.consume(conn, hub().settings.base_url, ws.slug, response,
                                expected_request_id=pending["request_id"] if pending else None,
                                replay_seen=replay_seen, now=hub().clock())
    except UpstreamError as err:
        return _failure(ws, conn, err, test=bool(pending and pending.get("test")))
    except Exception:
        return _unexpected(ws, conn, bool(pending and pending.get("test")))
    token = secrets.token_urlsafe(32)
    parked = {"pending": pending, "identity": _ident_to_dict(ident)}
    one_time.put(f"fed:result:{token}", json.dumps(parked, default=str), RESULT_TTL)
    return redirect(url_for("federation.resume", ws_slug=ws.slug, conn_slug=conn["slug"], r=token))


@bp.route("/w/<ws_slug>/sso/<conn_slug>/resume")
def resume(ws_slug, conn_slug):
    ws = load_workspace(ws_slug)
    conn = _connection_or_404(ws, conn_slug, "saml")
    token = request.args.get("r", "")
    raw = hub().stores.one_time.consume(f"fed:result:{token}") if token and len(token) <= 128 else None
    if raw is None:
        return _failure(ws, conn, UpstreamError("state", "the sign-in result is unknown, used or expired", ""))
    parked = json.loads(raw)
    pending = parked["pending"]
    if pending is None:  # unsolicited (allowed by the connection): a new flow in this browser
        flows = _flows()
        flow = flows.start(ws.id, browser_binding(), "", state="upstream")
        flow.connection = conn["slug"]
        flows.save(flow)
        pending = {"flow": flow.id, "conn": conn["id"], "binding": browser_binding(), "test": False}
    elif not hmac.compare_digest(pending["binding"], browser_binding()):
        return _failure(ws, conn, UpstreamError("state", "the sign-in was started in another browser", ""),
                        test=bool(pending.get("test")))
    return _finish(ws, conn, pending, _ident_from_dict(parked["identity"]))


def _ident_to_dict(ident) -> dict:
    from dataclasses import asdict

    return asdict(ident)


def _ident_from_dict(d: dict):
    from federation.base import UpstreamIdentity

    d = dict(d)
    for k in ("groups", "amr", "warnings"):
        d[k] = tuple(d.get(k) or ())
    return UpstreamIdentity(**d)


# ---- after the upstream answered ---------------------------------------------------------------------------------
def _finish(ws, conn: dict, pending: dict, ident):
    from idp.web.auth import continue_signin

    client = current_client()
    if pending.get("test"):
        return _test_result(ws, conn, ident, pending.get("actor"))
    flows = _flows()
    try:
        flow = flows.load(pending["flow"], ws.id, browser_binding())
        if flow.state != "upstream" or flow.connection != conn["slug"]:
            raise FlowError("wrong step")
    except FlowError:
        return _failure(ws, conn, UpstreamError("state", "the login flow expired or belongs to another browser",
                                                "Sign-ins must finish within 15 minutes."))
    try:
        signed = fed().sign_in(ws, conn, ident, client)
    except UpstreamError as err:
        flows.finish(flow)
        return _failure(ws, conn, err)
    except Exception:  # e.g. a database error nobody foresaw: fail closed, no half-made session
        flows.finish(flow)
        return _unexpected(ws, conn, False)
    fed().audit("federation.signin.success", ws, conn, client, actor_id=signed.user_id, protocol=conn["protocol"],
                amr=list(signed.amr), upstream_amr=list(ident.amr)[:10], mfa=ident.mfa)
    flow.user_id = signed.user_id
    flow.amr = list(signed.amr)
    if ident.email and not flow.email:
        flow.email = ident.email[:254]
    return continue_signin(ws, flows, flow, client)


# ---- Test connection (workspace admins) --------------------------------------------------------------------------
def _admins_only(view):
    """The admin console's own rule (``admin.console.admin_required``): signed in to this workspace, allowed by
    the session policies, an active admin of this workspace, and — ``AdminSecondFactor`` — signed in with a
    second factor unless the workspace set ``require_mfa_for_admins: false``."""
    from functools import wraps

    @wraps(view)
    def wrapper(ws_slug, conn_slug):
        from admin.console import admin_required

        return admin_required(view)(ws_slug, conn_slug=conn_slug)

    return wrapper


def _cert_warnings(conn: dict) -> list[str]:
    """Expired or soon-expiring IdP signing certificates: those of the metadata and the connection's extra pinned
    ``certs`` (e.g. the next certificate before a rollover)."""
    if conn.get("protocol") != "saml":
        return []
    from federation import saml_sp

    found: list[tuple[str, object]] = []
    if conn.get("metadata_xml"):
        try:
            meta = saml_sp.parse_idp_metadata(conn["metadata_xml"])
        except Exception as err:  # noqa: BLE001 - shown to the admin, never a 500
            return [f"The IdP metadata cannot be read: {getattr(err, 'message', None) or type(err).__name__}"]
        found += [("An IdP signing certificate", when) for when in meta.get("cert_not_after") or []]
    for i, pem in enumerate(conn.get("certs") or []):
        try:
            when = saml_sp.cert_not_after(pem)
        except Exception:  # noqa: BLE001
            found.append((f"The pinned certificate certs[{i}]", None))
            continue
        found.append((f"The pinned certificate certs[{i}]", when))
    now = hub().clock()
    out = []
    for what, when in found:
        if when is None:
            out.append(f"{what} cannot be read. Replace it with a valid PEM certificate.")
        elif when <= now:
            out.append(f"{what} expired on {when:%d %b %Y}. Update the metadata or certs.")
        elif when - now <= timedelta(days=CERT_WARNING_DAYS):
            out.append(f"{what} expires on {when:%d %b %Y} (in {(when - now).days} days). "
                       "Add the IdP's new certificate before then (certs, or refreshed metadata).")
    return out


@bp.route("/w/<ws_slug>/sso/<conn_slug>/test", methods=["GET", "POST"])
@_admins_only
def test(ws, p, conn_slug):
    conn = fed().connection(ws, conn_slug)
    if conn is None:
        from flask import abort

        abort(404, description="There is no single sign-on connection at this address.")
    if request.method == "POST":
        check_csrf()
        if conn["protocol"] == "ldap":
            return _test_ldap(ws, conn, p.actor_id)
        fed().audit("federation.test.started", ws, conn, current_client(), actor_id=p.actor_id)
        return _begin(ws, conn, "", test=True, actor_id=p.actor_id)
    return render_template("federation_test.html", ws=ws, conn=conn, error=None, claims=None, mapped=None,
                           cert_warnings=_cert_warnings(conn), urls=_urls(ws, conn))


def _urls(ws, conn: dict) -> dict:
    base = f"/w/{ws.slug}/sso/{conn['slug']}"
    if conn["protocol"] == "oidc":
        return {"Redirect URI (register at the IdP)": hub().url(base + "/callback")}
    if conn["protocol"] == "saml":
        return {"SP metadata": hub().url(base + "/metadata"), "ACS URL": hub().url(base + "/acs")}
    return {}


def _test_ldap(ws, conn: dict, actor_id: str):
    from federation import ldap

    client = current_client()
    fed().audit("federation.test.started", ws, conn, client, actor_id=actor_id, protocol="ldap")
    try:
        checks = ldap.test_connection(conn)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=True)
    except Exception:  # noqa: BLE001
        return _unexpected(ws, conn, True)
    failed = [name for name, ok, _ in checks if not ok]
    fed().audit("federation.test.failed" if failed else "federation.test.succeeded", ws, conn, client,
                actor_id=actor_id, protocol="ldap", failed_checks=failed[:20])
    return render_template("federation_test.html", ws=ws, conn=conn, error=None, claims=None, mapped=None,
                           checks=checks, cert_warnings=[], urls={})


def _test_result(ws, conn: dict, ident, actor_id: str | None = None):
    """Show what the IdP sent and who it maps to, without signing anyone in or changing any account."""
    from sqlalchemy import select

    from federation.models import FederationLink
    from federation.service import email_in_domains, email_verified
    from idp.accounts import InvalidEmail, normalise_email, user_by_email
    from idp.models import User

    try:
        email_key = normalise_email(ident.email) if ident.email else ""
    except InvalidEmail:
        email_key = ""

    with hub().db() as db:
        link = db.scalar(select(FederationLink).where(FederationLink.connection_id == conn["id"],
                                                      FederationLink.subject == ident.subject))
        user = db.get(User, link.user_id) if link else db.scalar(
            select(User).where(User.workspace_id == ws.id, User.external_id == ident.subject))
        how = "linked" if link else ("SCIM externalId" if user else "")
        if user is None and ident.email:
            existing = user_by_email(db, ws.id, ident.email)
            if existing is not None:
                if not conn.get("link_by_email"):
                    how = "same email, NOT linked: sign-in would be refused (email_conflict)"
                elif not email_verified(conn, ident):
                    how = ("same email, but the IdP did not assert it is verified: sign-in would be refused "
                           "(email_unverified)")
                elif not email_in_domains(conn, email_key):
                    how = "same email, outside the connection's domains: sign-in would be refused (email_domain)"
                else:
                    how = "same email (link_by_email, verified by the IdP)"
                user = existing
        mapped_user = {"email": user.email, "name": user.name, "active": user.active, "how": how} if user else None
    jit_refusal = ""
    if mapped_user is None and conn.get("jit", True):
        if not email_key:
            jit_refusal = "the IdP sent no email address (email)"
        elif not email_in_domains(conn, email_key):
            jit_refusal = "the email address is outside the connection's domains (email_domain)"
    fed().audit("federation.test.succeeded", ws, conn, current_client(), actor_id=actor_id,
                subject=ident.subject[:200], warnings=list(ident.warnings))
    claims = {k: v for k, v in ident.claims.items() if k not in ("nonce", "at_hash", "c_hash")}
    mapped = {"subject": ident.subject, "email": ident.email, "name": ident.name, "given_name": ident.given_name,
              "family_name": ident.family_name, "groups": list(ident.groups), "amr": list(ident.amr),
              "mfa": ident.mfa, "idhub amr": list(FederationService.amr(conn, ident))}
    return render_template("federation_test.html", ws=ws, conn=conn, error=None,
                           claims=json.dumps(claims, indent=2, sort_keys=True, default=str), mapped=mapped,
                           mapped_user=mapped_user, jit=conn.get("jit", True), jit_refusal=jit_refusal,
                           warnings=list(ident.warnings),
                           cert_warnings=_cert_warnings(conn), urls=_urls(ws, conn))
