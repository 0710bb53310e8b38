"""Federation routes (contract URLs): ``/w/{ws}/sso/{c}/start``, ``/callback`` (OIDC), ``/metadata`` and ``/acs``
(SAML), the admins' Test connection page ``/test``; plus the two hooks of the identifier-first sign-in
(home-realm discovery after the email, LDAP/``sso_required`` at the password step). The only Flask module of
the federation package: it turns the protocol modules' results into the login flow's next step.

Re-authentication ("Confirm it's you" on the security page, ``idp.web.mfa.reauth``) through the upstream IdP:
``POST /w/{ws}/sso/{c}/reauth`` starts a login flow with ``purpose="reauth"`` for the signed-in user and session
(state ``upstream``, bound to the browser like a sign-in) and sends the browser to the IdP with
``prompt=login``/``max_age=0`` (OIDC) or ``ForceAuthn`` (SAML); the answer comes back through the same
callback/ACS, must be fresh (``auth_time``/``AuthnInstant``) and must be the very identity (connection + subject)
linked to the session's user — anything else is refused, audited, and never signs anyone in. LDAP users confirm
with their directory password on the re-authentication page (a bind as their linked entry)."""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from federation.base import UpstreamError
from federation.service import GENERIC_FAILURE, FederationService
from idp.flow import FlowError, LoginFlow
from idp.web.auth import respond
from idp.web.common import (
    browser_binding,
    check_csrf,
    current_client,
    hub,
    load_workspace,
    login_required,
    safe_next,
)

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
    "auth_time": "Your organisation's identity provider did not ask you to sign in again just now, so idhub could "
                 "not confirm it's you. Try again; if it keeps happening, contact your IT team.",
    "authn_instant": "Your organisation's identity provider did not ask you to sign in again just now, so idhub "
                     "could not confirm it's you. Try again; if it keeps happening, contact your IT team.",
}
REAUTH = "reauth"  # LoginFlow.purpose of a re-authentication


def fed() -> FederationService:
    return _service(current_app)


def _flows():
    return hub().signin.flows


def install(app) -> None:
    """Federation's strategy in the sign-in core: home-realm discovery and LDAP passwords (``federation.signin``)."""
    from federation.signin import FederationStrategy

    app.extensions["idhub"].signin.add_strategy(FederationStrategy(app.extensions["idhub"],
                                                                   lambda: _service(app)))


def _service(app) -> FederationService:
    svc = app.extensions.get("idhub.federation")
    if svc is None:
        svc = app.extensions["idhub.federation"] = FederationService(app.extensions["idhub"])
    return svc


def _connection_or_404(ws, slug: str, *protocols: str) -> dict:
    from flask import abort

    conn = fed().connection(ws, slug)
    if conn is None or (protocols and conn["protocol"] not in protocols):
        abort(404, description="There is no single sign-on connection at this address.")
    return conn


def _failure(ws, conn: dict | None, err: UpstreamError, *, test: bool = False, status: int = 400,
             reauth_user: str | None = None):
    """Audit the failed check; show the employee a generic page with an error id (admins see details on the
    Test connection page). ``reauth_user``: it was that user's re-authentication (also ``auth.reauth.failure``)."""
    client = current_client()
    fed().failed(ws, conn, err, client, test=test, reauth=reauth_user is not None, actor_id=reauth_user)
    if test:
        return render_template("federation_test.html", ws=ws, conn=conn, error=err, claims=None, mapped=None,
                               cert_warnings=_cert_warnings(conn) if conn else []), status
    status = 403 if err.check in EMPLOYEE_MESSAGES else status
    message = EMPLOYEE_MESSAGES.get(err.check, GENERIC_FAILURE)
    if err.check == "email_domain" and conn and conn.get("domains"):
        message += f" This sign-in is for addresses at {', '.join(conn['domains'])}."
    if reauth_user is not None:
        fed().audit("auth.reauth.failure", ws, conn, client, actor_id=reauth_user, reason=err.check)
    return render_template("federation_error.html", ws=ws, conn=conn, message=message, reauth=reauth_user is not None,
                           error_id=g.get("request_id", "")), status


def _reauth_of(pending: dict | None) -> str | None:
    """The user whose re-authentication this pending upstream request is, or None for a sign-in or a test."""
    return (pending.get("user") or "") if pending and pending.get("reauth") else None


def _unexpected(ws, conn: dict, test: bool, reauth_user: str | None = None):
    import logging

    logging.getLogger("idhub.federation").exception("upstream answer could not be processed",
                                                    extra={"connection": conn["slug"]})
    return _failure(ws, conn, UpstreamError("internal", "idhub could not process the identity provider's answer",
                                            "Give the error id to the idhub operators."), test=test,
                    reauth_user=reauth_user)


# ---- start ------------------------------------------------------------------------------------------------------
def _load_or_start_flow(ws, conn: dict) -> LoginFlow:
    flows = _flows()
    flow_id = request.values.get("flow", "")
    if flow_id:
        flow = flows.load(flow_id, ws.id, browser_binding())
        if flow.state != "upstream" or flow.connection != conn["slug"] or flow.purpose:
            raise FlowError("wrong step")  # a re-authentication's flow is never started as a sign-in
        return flow
    # "Sign in with <connection>" without an email first
    return hub().signin.start_upstream(ws, conn["slug"], binding=browser_binding(),
                                       next_url=safe_next(request.values.get("next"), ws.slug))


def _begin(ws, conn: dict, flow_id: str, *, test: bool = False, login_hint: str = "", actor_id: str | None = None,
           reauth_user: str | None = None):
    """Redirect the browser to the IdP; what the callback needs is kept server-side, keyed by state/RelayState.
    Any failure (a hostile discovery document, unusable metadata, a store that cannot be reached…) ends on the
    federation error page (or the Test connection page), never in a 500. ``reauth_user``: a re-authentication of
    that user's session (the IdP must make the person sign in again; the answer must be fresh)."""
    one_time = hub().stores.one_time
    base = hub().settings.base_url
    if not hub().stores.throttle.hit(f"fedstart:{current_client().ip}", START_PER_MINUTE, 60, hub().clock()):
        return _failure(ws, conn, UpstreamError("throttled", "too many sign-ins started from this address",
                                                "Wait a minute."), test=test, status=429, reauth_user=reauth_user)
    reauth = reauth_user is not None
    pending = {"flow": flow_id, "conn": conn["id"], "binding": browser_binding(), "test": test}
    if test:
        pending["actor"] = actor_id
    if reauth:
        pending.update(reauth=True, user=reauth_user, started=hub().clock().timestamp())
    try:
        if conn["protocol"] == "oidc":
            url, extra = fed().rp.start(conn, _callback_url(ws, conn), login_hint=login_hint, reauth=reauth)
            pending.update(extra)
            one_time.put(f"fed:oidc:{extra['state']}", json.dumps(pending), PENDING_TTL)
        else:
            from federation import saml_sp

            relay = secrets.token_urlsafe(32)
            url, request_id = saml_sp.start(conn, base, ws.slug, relay, force_authn=reauth)
            pending["request_id"] = request_id
            one_time.put(f"fed:saml:{relay}", json.dumps(pending), PENDING_TTL)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=test, status=502 if err.check == "unavailable" else 400,
                        reauth_user=reauth_user)
    except Exception:  # a bug or an answer nobody foresaw: fail closed, with the traceback in the log only
        return _unexpected(ws, conn, test, reauth_user)
    fed().audit("federation.signin.started", ws, conn, current_client(), protocol=conn["protocol"], test=test,
                **({"reauth": True, "actor_id": reauth_user} if reauth else {}))
    # a page that navigates on (meta refresh), not a 302: a redirect chain from idhub's sign-in form to another
    # origin is blocked by CSP form-action 'self'
    return render_template("federation_redirect.html", ws=ws, conn=conn, url=url, reauth=reauth)


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
    reauth_user = _reauth_of(pending)
    if not hmac.compare_digest(pending["conn"], conn["id"]):
        # a state issued for connection A presented at B's callback: mix-up
        return _failure(ws, conn, UpstreamError("state", "the callback's state belongs to another connection "
                                                "(mix-up)", ""), test=test, reauth_user=reauth_user)
    if not hmac.compare_digest(pending["binding"], browser_binding()):
        return _failure(ws, conn, UpstreamError("state", "the sign-in was started in another browser", ""),
                        test=test, reauth_user=reauth_user)
    if reauth_user is not None and pending.get("issuer") != conn["issuer"]:
        return _failure(ws, conn, UpstreamError("issuer", "the connection's issuer changed during the "
                                                "re-authentication", "Start again."), reauth_user=reauth_user)
    try:
        ident = fed().rp.finish(conn, _callback_url(ws, conn), params, pending)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=test, reauth_user=reauth_user)
    except Exception:  # a bug or an answer nobody foresaw: fail closed, with the traceback in the log only
        return _unexpected(ws, conn, test, reauth_user)
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
    reauth_user = _reauth_of(pending)
    if pending is not None and not hmac.compare_digest(pending["conn"], conn["id"]):
        return _failure(ws, conn, UpstreamError("in_response_to", "the RelayState belongs to another connection",
                                                ""), test=bool(pending.get("test")), reauth_user=reauth_user)
    if pending is None and not conn.get("allow_unsolicited"):
        return _failure(ws, conn, UpstreamError("unsolicited", "a response idhub did not ask for (IdP-initiated)",
                                                "Start the sign-in from idhub, or set allow_unsolicited: true."))
    one_time = hub().stores.one_time

    def replay_seen(key: str, ttl: int) -> bool:
        return not one_time.add(f"fed:replay:{conn['id']}:{key}", "1", max(1, int(ttl)))

    # a re-authentication (ForceAuthn): the assertion's AuthnInstant must be after the request, and recent
    authn_after = datetime.fromtimestamp(pending["started"], UTC) if reauth_user is not None else None
    try:
        ident = saml_sp.consume(conn, hub().settings.base_url, ws.slug, response,
                                expected_request_id=pending["request_id"] if pending else None,
                                replay_seen=replay_seen, now=hub().clock(), authn_after=authn_after)
    except UpstreamError as err:
        return _failure(ws, conn, err, test=bool(pending and pending.get("test")), reauth_user=reauth_user)
    except Exception:
        return _unexpected(ws, conn, bool(pending and pending.get("test")), reauth_user)
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
        flow = hub().signin.start_upstream(ws, conn["slug"], binding=browser_binding())
        pending = {"flow": flow.id, "conn": conn["id"], "binding": browser_binding(), "test": False}
    elif not hmac.compare_digest(pending["binding"], browser_binding()):
        return _failure(ws, conn, UpstreamError("state", "the sign-in was started in another browser", ""),
                        test=bool(pending.get("test")), reauth_user=_reauth_of(pending))
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
    client = current_client()
    if pending.get("test"):
        return _test_result(ws, conn, ident, pending.get("actor"))
    if pending.get("reauth"):
        return _finish_reauth(ws, conn, pending, ident)
    flows = _flows()
    try:
        flow = flows.load(pending["flow"], ws.id, browser_binding())
        if flow.state != "upstream" or flow.connection != conn["slug"] or flow.purpose:
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
    return respond(ws, hub().signin.upstream_signed_in(ws, flow, signed.user_id, signed.amr, ident.email or "",
                                                        client))


# ---- re-authentication ("Confirm it's you") ---------------------------------------------------------------------
def _reauth_refused(ws, conn: dict, message: str, status: int = 403):
    return render_template("federation_error.html", ws=ws, conn=conn, message=message, reauth=True,
                           error_id=g.get("request_id", "")), status


@bp.route("/w/<ws_slug>/sso/<conn_slug>/reauth", methods=["POST"])
@login_required
def reauth_start(ws, sess, conn_slug):
    """ "Continue with <connection>" on the re-authentication page: a login flow for this session's user, sent to
    the IdP with a forced sign-in."""
    from idp.models import User

    check_csrf()
    conn = _connection_or_404(ws, conn_slug, "oidc", "saml")
    nxt = safe_next(request.form.get("next"), ws.slug)
    client = current_client()
    with hub().db() as db:
        email = db.get(User, sess.user_id).email
    if not fed().is_linked(conn, sess.user_id):
        fed().audit("auth.reauth.failure", ws, conn, client, actor_id=sess.user_id, actor_email=email,
                    reason="not_linked")
        return _reauth_refused(ws, conn, f"Your account is not connected to {conn['name']}, so {conn['name']} "
                                         "cannot confirm it's you.")
    flows = _flows()
    flow = flows.start(ws.id, browser_binding(), nxt, email=email, state="upstream")
    flow.connection, flow.purpose, flow.user_id, flow.session = conn["slug"], REAUTH, sess.user_id, sess.public_id
    flows.save(flow)
    return _begin(ws, conn, flow.id, login_hint=email, reauth_user=sess.user_id)


def _finish_reauth(ws, conn: dict, pending: dict, ident):
    """The IdP answered a re-authentication: the flow (this browser's, for this connection), the session it was
    started for, and the identity linked to that session's user — all three must hold; then the session counts as
    freshly re-authenticated. Nothing is linked, created or synchronised, and no session is made."""
    from idp.models import User
    from idp.web.common import load_session
    from idp.web.mfa import mark_reauthenticated

    client = current_client()
    user_id = pending.get("user") or ""
    flows = _flows()
    try:
        flow = flows.load(pending["flow"], ws.id, browser_binding())
        if (flow.state != "upstream" or flow.connection != conn["slug"] or flow.purpose != REAUTH
                or not hmac.compare_digest(flow.user_id, user_id)):
            raise FlowError("wrong step")
    except FlowError:
        return _failure(ws, conn, UpstreamError("state", "the re-authentication expired or belongs to another "
                                                "browser", "Re-authentications must finish within 15 minutes, in "
                                                "the browser that started them."), reauth_user=user_id)
    flow.move("done")
    flows.finish(flow)
    with hub().db() as db:
        user = db.get(User, flow.user_id)
        email = user.email if user else None
        active = bool(user and user.active)
    sess = load_session(ws)
    if sess is None or sess.user_id != flow.user_id or not hmac.compare_digest(sess.public_id, flow.session):
        fed().audit("auth.reauth.failure", ws, conn, client, actor_id=flow.user_id, actor_email=email,
                    reason="session_changed")
        return _reauth_refused(ws, conn, "Your idhub session ended or changed while you were signing in at "
                                         f"{conn['name']}, so nothing was confirmed. Sign in again and retry.")
    linked_to = fed().linked_user(conn, ident)
    if linked_to is None or not hmac.compare_digest(linked_to, flow.user_id):
        # never a switch of users: the session stays who it was, unconfirmed
        fed().audit("auth.reauth.failure", ws, conn, client, actor_id=flow.user_id, actor_email=email,
                    reason="identity_mismatch", other_account=linked_to is not None)
        return _reauth_refused(ws, conn, f"You signed in to {conn['name']} as someone other than {email}, who is "
                                         f"signed in to idhub, so idhub did not confirm it's you and changed "
                                         f"nothing. Sign in to {conn['name']} as {email} and try again.")
    if not active:
        fed().audit("auth.reauth.failure", ws, conn, client, actor_id=flow.user_id, actor_email=email,
                    reason="deactivated")
        return _reauth_refused(ws, conn, EMPLOYEE_MESSAGES["deactivated"])
    # the IdP's MFA counts as the second factor only where it does at sign-in (trust_mfa)
    level = "mfa" if "upstream_mfa" in FederationService.amr(conn, ident) else "pwd"
    mark_reauthenticated(ws, sess, level, client, method=conn["protocol"], connection=conn["slug"],
                         upstream_amr=list(ident.amr)[:10])
    return redirect(flow.next or url_for("apps.page", ws_slug=ws.slug))


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


# the usual upstream ``amr`` values (RFC 8176), in words
AMR_WORDS = {"pwd": "password", "mfa": "two-factor authentication", "otp": "one-time code", "sms": "text message",
             "hwk": "security key", "swk": "software key", "fpt": "fingerprint", "face": "face recognition",
             "pin": "PIN", "kba": "security questions", "rsa": "RSA token", "sc": "smart card", "user": "user presence",
             "wia": "Windows sign-in"}
# what idhub records for a sign-in through a connection (FederationService.amr), in words
RECORDED = {"fed": "single sign-on through this connection", "pwd": "a password at the identity provider",
            "upstream_mfa": "two-factor authentication at the identity provider (counted as idhub's second factor)"}


def _mapped_rows(conn: dict, ident) -> list[tuple[str, str]]:
    """The test page's "what idhub understood" table: a label and a value in plain words for each row."""
    def text(value) -> str:
        return value if value else "(not sent)"

    recorded = FederationService.amr(conn, ident)
    if ident.mfa and "upstream_mfa" not in recorded:
        mfa = "Yes, but idhub does not count it: the connection does not trust the identity provider's two-factor " \
              "authentication"
    else:
        mfa = "Yes" if ident.mfa else "No"
    return [("User ID at the identity provider", text(ident.subject)), ("Email", text(ident.email)),
            ("Name", text(ident.name)), ("First name", text(ident.given_name)), ("Last name", text(ident.family_name)),
            ("Groups", ", ".join(ident.groups) if ident.groups else "None"),
            ("How the identity provider says the person signed in",
             ", ".join(f"{AMR_WORDS[m]} ({m})" if m in AMR_WORDS else m for m in ident.amr) if ident.amr
             else "(not sent)"),
            ("Two-factor authentication at the identity provider", mfa),
            ("What idhub records for this sign-in", "; ".join(RECORDED.get(m, m) for m in recorded).capitalize())]


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
    mapped = _mapped_rows(conn, ident)
    return render_template("federation_test.html", ws=ws, conn=conn, error=None,
                           claims=json.dumps(claims, indent=2, sort_keys=True, default=str), mapped=mapped,
                           mapped_user=mapped_user, jit=conn.get("jit", True), jit_refusal=jit_refusal,
                           warnings=list(ident.warnings),
                           cert_warnings=_cert_warnings(conn), urls=_urls(ws, conn))
