"""The thin Flask layer of the SAML identity provider."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import Blueprint, flash, get_flashed_messages, make_response, redirect, render_template, request
from flask import session as flask_session
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import escape

from idp.web.common import (
    check_csrf,
    current_client,
    delete_cookie,
    error_page,
    hub,
    load_session,
    load_workspace,
    login_required,
    new_error_id,
    session_cookie,
)
from saml.config import sp_policies
from saml.idp import (
    STATUS_NO_PASSIVE,
    STATUS_REQUEST_DENIED,
    STATUS_RESPONDER,
    Outgoing,
    Pending,
    SamlRequestError,
    default_acs,
)
from saml.keys import METADATA_HTTP_MAX_AGE
from saml.slo import SamlMessage, SloError
from saml.xml import BINDING_POST, BINDING_REDIRECT

bp = Blueprint("saml", __name__)
log = logging.getLogger("idhub.saml")
SIGNED_OUT = "You have signed out."
RESUME_MAX_AGE = 1800  # a sign-in started by an AuthnRequest has 30 minutes to finish


@bp.record_once
def _install(state):
    from saml import install

    install(state.app.extensions["idhub"])
    state.app.extensions.setdefault("idhub.signout_hooks", []).append(signout_hook)


def service():
    return hub().saml


def _serializer() -> URLSafeTimedSerializer:
    from idp.crypto import derive_key, signer_keys

    keys = [derive_key(m, "saml-resume") for m in signer_keys(hub().settings)]  # signs with the last: the current
    return URLSafeTimedSerializer(keys, salt="idhub.saml-resume")


def _refused(message: str, title: str = "Sign-in request refused"):
    error_id = new_error_id()
    log.warning("saml request refused", extra={"error_id": error_id, "reason": message})
    return error_page(400, title, message + " Nothing was sent to the app.", error_id)


@bp.route("/w/<ws_slug>/saml/metadata")
def metadata(ws_slug):
    ws = load_workspace(ws_slug)
    resp = make_response(service().metadata(ws))
    resp.headers["Content-Type"] = "application/samlmetadata+xml"
    resp.headers["Cache-Control"] = f"public, max-age={METADATA_HTTP_MAX_AGE}"
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


@bp.route("/w/<ws_slug>/saml/slo", methods=["GET", "POST"])
def slo(ws_slug):
    """Single Logout, HTTP-Redirect (GET) or HTTP-POST: an SP's signed LogoutRequest ends the idhub session it
    names (the other apps of that session are signed out in turn, then the SP gets our LogoutResponse), or an
    SP's LogoutResponse moves a logout chain on to the next app."""
    ws = load_workspace(ws_slug)
    src = request.form if request.method == "POST" else request.args
    binding = BINDING_POST if request.method == "POST" else BINDING_REDIRECT
    keys = ("SAMLRequest", "SAMLResponse", "RelayState", "SigAlg", "Signature")
    if any(len(src.getlist(k)) > 1 for k in keys):
        return _refused("A parameter of the request is repeated.", "Sign-out request refused")
    params = {k: src.get(k) for k in keys}
    if binding == BINDING_POST:
        params["SigAlg"] = params["Signature"] = None
    svc = service()
    sess = load_session(ws)
    try:
        incoming = svc.slo.read(ws, binding=binding, params=params, raw_query=request.query_string)
        if incoming.kind == "LogoutResponse":
            return _send_logout(ws, svc.slo.response_received(ws, incoming))
        sessions = svc.slo.sessions_named(ws, incoming, sess.id if sess else None)
    except SloError as exc:
        return _refused(exc.message, "Sign-out request refused")
    sp = incoming.sp
    handle = svc.slo.plan(ws, sessions, skip_sp=sp.id,
                          final={"sp": sp.id, "id": incoming.root.get("ID"), "r": incoming.relay_state})
    ends_browser = sess is not None and sess.id in sessions
    for sid in sessions:
        if ends_browser and sid == sess.id:
            hub().sign_out(ws, sess, current_client())
        else:
            hub().sessions.end(sid, "saml_slo")
    svc.audit("saml.slo", ws, actor_id=sess.user_id if ends_browser else None, sp=sp.entity_id,
              sessions=len(sessions))
    resp = _send_logout(ws, svc.slo.next_step(ws, handle))
    if ends_browser:
        delete_cookie(resp, session_cookie(ws.slug))
    return resp


@bp.route("/w/<ws_slug>/saml/logout")
def logout_chain(ws_slug):
    """Front-channel logout after the user signed out of idhub: the next app's LogoutRequest (a redirect, or a
    form that posts itself, with a Continue button when JavaScript is off), and finally the sign-in page."""
    ws = load_workspace(ws_slug)
    return _send_logout(ws, service().slo.next_step(ws, request.args.get("h", "")))


def signout_hook(ws, sess):
    """For ``app.extensions["idhub.signout_hooks"]``: before an interactive sign-out ends ``sess``, plan the
    LogoutRequests to its SAML apps; where the browser goes next (None: nothing to do)."""
    handle = service().slo.plan(ws, [sess.id])
    return f"/w/{ws.slug}/saml/logout?" + urlencode({"h": handle}) if handle else None


def _send_logout(ws, msg: SamlMessage | None):
    if msg is None:
        if ("status", SIGNED_OUT) not in flask_session.get("_flashes", []):
            flash(SIGNED_OUT, "status")  # shown by a "Signing out" page on the way; said again at the end
        return redirect(f"/w/{ws.slug}/login")
    if msg.binding == BINDING_REDIRECT:
        return redirect(msg.redirect_url)
    return _form_page(ws, msg.url, msg.field, msg.value, msg.relay_state, "Signing out",
                      "Your browser will now sign you out of the app. If it does not, press Continue.")


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


@bp.route("/w/<ws_slug>/apps/<slug>/launch", methods=["GET", "POST"])
@login_required
def launch(ws, sess, slug):
    """IdP-initiated SSO: an unsolicited Response to the app's default ACS, after the policy engine. A GET (the
    launch URL opened directly) goes to the app's tile on the launcher, or says that the app is not the user's,
    without saying whether it exists."""
    if request.method == "GET":
        from policies.engine import NOT_ASSIGNED

        if any(t.protocol == "saml" and t.slug == slug for t in hub().launcher.for_user(ws, sess.user_id)):
            return redirect(f"/w/{ws.slug}/apps?" + urlencode({"q": slug}))
        return render_template("denied.html", ws=ws, reason=NOT_ASSIGNED, apps_link=True), 403
    check_csrf()
    svc = service()
    sp = svc.sp_for_app(ws.id, slug[:63])
    if sp is None or not sp.idp_initiated or sp.slug != slug:
        return _refused("This app cannot be opened from idhub.", "App not available")
    pending = Pending(sp_id=sp.id, acs_index=default_acs(sp), issued=hub().clock().timestamp())
    svc.audit("saml.sso.idp_initiated", ws, actor_id=sess.user_id, sp=sp.entity_id)
    return _continue(ws, sp, pending)


def _login_redirect(ws, sp, pending: Pending, force: bool):
    token = _serializer().dumps({"w": ws.id, "p": pending.dump()})
    params = {"next": f"/w/{ws.slug}/saml/resume?" + urlencode({"r": token}), "app": sp.slug or ""}
    if force:
        params["prompt"] = "login"
    return redirect(f"/w/{ws.slug}/login?" + urlencode(params))


def _continue(ws, sp, pending: Pending):
    with hub().audit.deferred():  # the policy decision and the SSO event: one audit transaction
        return _continue_step(ws, sp, pending)


def _continue_step(ws, sp, pending: Pending):
    svc = service()
    sess = load_session(ws)
    stale = sess is not None and pending.force and (sess.auth_time or sess.created_at).timestamp() < pending.issued
    if sess is None or stale:
        if pending.passive:
            return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_NO_PASSIVE)))
        return _login_redirect(ws, sp, pending, force=sess is not None)
    # this SP's own overrides: the app is known here, no need to look it up by name among every kind of app
    rows = svc.account(ws, sess.user_id)  # the user, their groups and 2FA enrolment: one statement for the SSO
    decision = hub().decide(ws, current_client(), user_id=sess.user_id, methods=sess.amr, app=sp.slug or sp.entity_id,
                            app_policies=sp_policies(sp), account=rows[0] if rows else None,
                            groups={r.group_name for r in rows if r.group_name is not None})
    if decision.effect == "deny":
        svc.audit("saml.sso.denied", ws, actor_id=sess.user_id, sp=sp.entity_id, rule=decision.rule)
        if not pending.request_id:  # unsolicited (app launcher): nobody at the app is waiting for an answer
            return render_template("denied.html", ws=ws, reason=decision.reason), 403
        return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_REQUEST_DENIED),
                                                 decision.reason if decision.rule == "app_assignment" else
                                                 "Access is not allowed by the workspace's policies."))
    if decision.effect in ("mfa", "enroll"):  # the app requires a second factor: this session steps up, in place
        if pending.passive:
            return _post_page(ws, svc.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_NO_PASSIVE)))
        token = _serializer().dumps({"w": ws.id, "p": pending.dump()})
        resume = f"/w/{ws.slug}/saml/resume?" + urlencode({"r": token})
        return redirect(f"/w/{ws.slug}/login/step-up?" + urlencode({"next": resume, "app": sp.slug or ""}))
    return _post_page(ws, svc.success_response(ws, sp, pending, sess, rows))


def _post_page(ws, out: Outgoing):
    return _form_page(ws, out.acs_url, "SAMLResponse", out.saml_response, out.relay_state, "Signed in",
                      "Your browser will continue to the app. If it does not, press Continue.")


# saml_post.html rendered once per workspace name, heading, message, field, mount point and whether there is a
# RelayState, with markers where the ACS URL, the message and the RelayState go: a page is then those parts joined
# with the values escaped as Jinja escapes them (the same bytes as render_template gives; ~0.3 ms less per page).
# Pages that show flashed messages are rendered in full.
_MARKS = ("\x00acs\x00", "\x00value\x00", "\x00relay\x00")
_frames: dict[tuple, list[str] | None] = {}


def _render_form(ws, url: str, field: str, value: str, relay_state: str | None, heading: str, message: str) -> str:
    full = dict(ws=ws, acs_url=url, field=field, saml_response=value, relay_state=relay_state, heading=heading,
                message=message)
    if get_flashed_messages(with_categories=True):  # shown on the page (and consumed): the template in full
        return render_template("saml_post.html", **full)
    key = (request.script_root, ws.slug, ws.name, field, heading, message, relay_state is None)
    frame = _frames.get(key)
    if frame is None and key not in _frames:
        acs, val, relay = _MARKS
        text = render_template("saml_post.html", **{**full, "acs_url": acs, "saml_response": val,
                                                    "relay_state": None if relay_state is None else relay})
        parts = [text]
        for mark in _MARKS if relay_state is not None else _MARKS[:2]:
            last = parts.pop()
            if last.count(mark) != 1 or any(mark in p for p in parts):
                parts = None
                break
            parts.extend(last.split(mark))
        if len(_frames) > 256:
            _frames.clear()
        frame = _frames[key] = parts  # None: the markers did not come out once each; always render in full
    if frame is None:
        return render_template("saml_post.html", **full)
    values = (url, value) if relay_state is None else (url, value, relay_state)
    out = [frame[0]]
    for v, part in zip(values, frame[1:], strict=True):
        out.append(escape(v))
        out.append(part)
    return "".join(out)


def _form_page(ws, url: str, field: str, value: str, relay_state: str | None, heading: str, message: str):
    """The auto-submitting form to an SP (our registered URL only); the CSP allows exactly that form target."""
    from idp.web.headers import CSP

    resp = make_response(_render_form(ws, url, field, value, relay_state, heading, message))
    resp.headers["Content-Security-Policy"] = CSP.replace("form-action 'self'", f"form-action 'self' {url}")
    resp.headers["Cache-Control"] = "no-store"
    return resp
