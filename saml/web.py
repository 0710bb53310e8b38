"""The thin Flask layer of the SAML identity provider."""

from __future__ import annotations

import logging

from flask import Blueprint, make_response, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from idp.web.common import (
    current_client,
    delete_cookie,
    error_page,
    hub,
    load_session,
    load_workspace,
    new_error_id,
    session_cookie,
)
from saml.idp import (
    STATUS_NO_PASSIVE,
    STATUS_REQUEST_DENIED,
    STATUS_RESPONDER,
    Outgoing,
    Pending,
    SamlRequestError,
)
from saml.xml import BINDING_POST, BINDING_REDIRECT

bp = Blueprint("saml", __name__)
log = logging.getLogger("idhub.saml")
RESUME_MAX_AGE = 1800  # a sign-in started by an AuthnRequest has 30 minutes to finish


@bp.record_once
def _install(state):
    from saml import install

    install(state.app.extensions["idhub"])


def service():
    return hub().saml


def _serializer() -> URLSafeTimedSerializer:
    from idp.app import derive_key

    return URLSafeTimedSerializer(derive_key(hub().settings.secret_key, "saml-resume"), salt="idhub.saml-resume")


def _refused(message: str):
    error_id = new_error_id()
    log.warning("saml request refused", extra={"error_id": error_id, "reason": message})
    return error_page(400, "Sign-in request refused", message + " Nothing was sent to the app.", error_id)


@bp.route("/w/<ws_slug>/saml/metadata")
def metadata(ws_slug):
    ws = load_workspace(ws_slug)
    resp = make_response(service().metadata(ws))
    resp.headers["Content-Type"] = "application/samlmetadata+xml"
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.route("/w/<ws_slug>/saml/sso", methods=["GET", "POST"])
def sso(ws_slug):
    ws = load_workspace(ws_slug)
    src = request.form if request.method == "POST" else request.args
    binding = BINDING_POST if request.method == "POST" else BINDING_REDIRECT
    if any(len(src.getlist(k)) > 1 for k in ("SAMLRequest", "RelayState", "SigAlg", "Signature")):
        return _refused("A parameter of the request is repeated.")
    svc = service()
    try:
        sp, pending = svc.parse_authn_request(
            ws, binding=binding, saml_request=src.get("SAMLRequest"), relay_state=src.get("RelayState"),
            raw_query=request.query_string, sig_alg=src.get("SigAlg") if binding == BINDING_REDIRECT else None,
            signature=src.get("Signature") if binding == BINDING_REDIRECT else None,
            now_ts=hub().clock().timestamp())
    except SamlRequestError as exc:
        if exc.reply is not None:
            sp = svc.sp(exc.reply.sp_id)
            return _post_page(ws, svc.error_response(ws, sp, exc.reply, exc.status, exc.message))
        return _refused(exc.message)
    return _continue(ws, sp, pending)


@bp.route("/w/<ws_slug>/saml/slo")
def slo(ws_slug):
    """SP-initiated Single Logout, HTTP-Redirect binding: ends this browser's session in the workspace."""
    ws = load_workspace(ws_slug)
    args = request.args
    if any(len(args.getlist(k)) > 1 for k in ("SAMLRequest", "RelayState", "SigAlg", "Signature")):
        return _refused("A parameter of the request is repeated.")
    svc = service()
    try:
        sp, request_id = svc.parse_logout_request(
            ws, saml_request=args.get("SAMLRequest"), relay_state=args.get("RelayState"),
            raw_query=request.query_string, sig_alg=args.get("SigAlg"), signature=args.get("Signature"))
    except SamlRequestError as exc:
        return _refused(exc.message)
    sess = load_session(ws)
    resp = redirect(svc.logout_response_url(ws, sp, request_id, args.get("RelayState")))
    if sess is not None:
        hub().sign_out(ws, sess, current_client())
        delete_cookie(resp, session_cookie(ws.slug))
    svc.audit("saml.slo", ws, actor_id=sess.user_id if sess else None, sp=sp.entity_id)
    return resp


@bp.route("/w/<ws_slug>/saml/resume")
def resume(ws_slug):
    """Where the sign-in returns to (a same-origin page): finishes the SAML request held in the signed token."""
    ws = load_workspace(ws_slug)
    token = request.args.get("r", "")
    try:
        data = _serializer().loads(token, max_age=RESUME_MAX_AGE) if len(token) <= 1500 else None
        if not isinstance(data, dict) or data.get("w") != ws.id:
            raise BadSignature("wrong workspace")
        pending = Pending.load(data["p"])
    except (BadSignature, KeyError, TypeError):
        return _refused("This sign-in link is invalid or has expired. Go back to the app and start again.")
    sp = service().sp(pending.sp_id)
    if sp is None or sp.workspace_id != ws.id or pending.acs_index >= len(sp.acs):
        return _refused("The app of this sign-in is no longer registered.")
    return _continue(ws, sp, pending)


def _login_redirect(ws, sp, pending: Pending, force: bool):
    from urllib.parse import urlencode

    token = _serializer().dumps({"w": ws.id, "p": pending.dump()})
    params = {"next": f"/w/{ws.slug}/saml/resume?" + urlencode({"r": token}), "app": sp.slug or ""}
    if force:
        params["prompt"] = "login"
    return redirect(f"/w/{ws.slug}/login?" + urlencode(params))


def _continue(ws, sp, pending: Pending):
    svc = service()
    sess = load_session(ws)
    stale = sess is not None and pending.force and (sess.auth_time or sess.created_at).timestamp() < pending.issued
    if sess is None or stale:
        if pending.passive:
            return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_NO_PASSIVE)))
        return _login_redirect(ws, sp, pending, force=sess is not None)
    app = sp.slug or sp.entity_id
    decision = hub().decide(ws, current_client(), user_id=sess.user_id, methods=sess.amr, app=app,
                            app_policies=hub().app_policies(ws, app))
    if decision.effect == "deny":
        svc.audit("saml.sso.denied", ws, actor_id=sess.user_id, sp=sp.entity_id, rule=decision.rule)
        return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_REQUEST_DENIED),
                                                 "Access is not allowed by the workspace's policies."))
    if decision.effect in ("mfa", "enroll"):
        if pending.passive:
            return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_NO_PASSIVE)))
        return _login_redirect(ws, sp, pending, force=True)
    return _post_page(ws, svc.success_response(ws, sp, pending, sess))


def _post_page(ws, out: Outgoing):
    """The auto-submitting form to the ACS (our registered URL only); the CSP allows exactly that form target."""
    from idp.app import CSP

    resp = make_response(render_template("saml_post.html", ws=ws, acs_url=out.acs_url,
                                         saml_response=out.saml_response, relay_state=out.relay_state))
    resp.headers["Content-Security-Policy"] = CSP.replace("form-action 'self'", f"form-action 'self' {out.acs_url}")
    resp.headers["Cache-Control"] = "no-store"
    return resp
