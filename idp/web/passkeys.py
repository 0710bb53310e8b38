"""Passkeys (WebAuthn) pages: the options the browser's passkey dialog needs (JSON, one challenge each), the
passwordless sign-in, and adding, renaming and removing passkeys on the security page. The checks are
``idp.mfa.passkeys``'s and the hub's; every step of a sign-in is the sign-in core's."""

from __future__ import annotations

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for

from idp.mfa.passkeys import PASSWORDLESS, SECOND_FACTOR, clean_name
from idp.models import User
from idp.signin import Failed
from idp.web.auth import _app_param, _failed, _login_page, load_flow, respond
from idp.web.common import (
    browser_binding,
    check_csrf,
    current_client,
    hub,
    load_session,
    load_workspace,
    login_required,
    safe_next,
)
from idp.web.mfa import _allowed, _ctx, _reauth_key, _require_reauth, credential_field

bp = Blueprint("passkeys", __name__)

CONFIRM_PURPOSES = ("reauth", "disable")  # the security pages that ask for a current factor


def jsonify_raw(doc: str):
    from flask import current_app

    resp = current_app.response_class(doc, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _json_error(message: str, status: int):
    resp = jsonify({"error": message})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _user(user_id: str) -> User | None:
    with hub().db() as db:
        return db.get(User, user_id)


def registration_options(user: User, binding: str):
    doc = hub().mfa.passkeys.registration_options(user_id=user.id, user_name=user.email,
                                                   display_name=user.name or user.email, binding=binding)
    return jsonify_raw(doc)


# ---- sign-in -----------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/login/passkey/options", methods=["POST"])
def signin_options(ws_slug):
    """A passwordless sign-in's challenge, bound to this browser (no user is named: a discoverable credential
    answers, with user verification)."""
    ws = load_workspace(ws_slug)
    load_session(ws)  # the CSRF token of a signed-in browser is bound to its session
    check_csrf()
    return jsonify_raw(hub().mfa.passkeys.authentication_options(purpose=PASSWORDLESS, binding=browser_binding()))


@bp.route("/w/<ws_slug>/login/passkey", methods=["POST"])
def signin(ws_slug):
    ws = load_workspace(ws_slug)
    current = load_session(ws)
    check_csrf()
    nxt = safe_next(request.values.get("next"), ws.slug)
    app = _app_param()
    with hub().audit.deferred():
        out = hub().signin.passkey(ws, current_client(), response=credential_field(), binding=browser_binding(),
                                   next_url=nxt, app=app, current=current)
        if isinstance(out, Failed):
            return _failed(out, _login_page(ws, nxt, app, "", error=out.error))
        return respond(ws, out)


@bp.route("/w/<ws_slug>/login/mfa/passkey-options", methods=["POST"])
def second_factor_options(ws_slug):
    """The second step's challenge: the user's passkeys, bound to the login flow."""
    ws = load_workspace(ws_slug)
    check_csrf()
    _flows, flow = load_flow(ws, "mfa")
    if flow is None or "webauthn" not in flow.choices:
        return _json_error("Your sign-in took too long. Start again.", 400)
    return jsonify_raw(hub().mfa.passkeys.authentication_options(purpose=SECOND_FACTOR, binding=flow.id,
                                                                 user_id=flow.user_id))


@bp.route("/w/<ws_slug>/login/enroll/passkey-options", methods=["POST"])
def enrol_options(ws_slug):
    """Adding a passkey inside the sign-in (a policy requires one): bound to the login flow."""
    ws = load_workspace(ws_slug)
    check_csrf()
    _flows, flow = load_flow(ws, "enroll")
    if flow is None or "webauthn" not in flow.choices:
        return _json_error("Your sign-in took too long. Start again.", 400)
    user = _user(flow.user_id)
    if user is None or not user.active:
        return _json_error("This account is disabled.", 403)
    return registration_options(user, "enroll:" + flow.id)


# ---- the security page -------------------------------------------------------------------------------------
def _confirmed(sess) -> bool:
    level = hub().stores.one_time.get(_reauth_key(sess))
    return level == "mfa" or (level == "pwd" and not hub().mfa.enrolled(sess.user_id).any)


@bp.route("/w/<ws_slug>/settings/security/passkeys/options", methods=["POST"])
@login_required
def add_options(ws, sess):
    check_csrf()
    if not _confirmed(sess):
        return _json_error("Confirm it's you first: reload the page.", 403)
    user = _user(sess.user_id)
    return registration_options(user, "add:" + sess.id)


@bp.route("/w/<ws_slug>/settings/security/passkeys/confirm-options", methods=["POST"])
@login_required
def confirm_options(ws, sess):
    """A current passkey to confirm it's you (``for=reauth``) or to turn 2FA off (``for=disable``)."""
    check_csrf()
    purpose = request.args.get("for", "")
    if purpose not in CONFIRM_PURPOSES:
        return _json_error("Unknown request.", 400)
    return jsonify_raw(hub().mfa.passkeys.authentication_options(purpose=SECOND_FACTOR,
                                                                 binding=f"{purpose}:{sess.id}",
                                                                 user_id=sess.user_id))


@bp.route("/w/<ws_slug>/settings/security/passkeys/new", methods=["GET", "POST"])
@login_required
def add(ws, sess):
    if "webauthn" not in _allowed(ws):
        return render_template("error.html", status=404, title="Not available",
                               message="Your organisation does not allow passkeys.", error_id=g.request_id), 404
    if (r := _require_reauth(ws, sess)) is not None:
        return r
    action = url_for("passkeys.add", ws_slug=ws.slug)
    options_url = url_for("passkeys.add_options", ws_slug=ws.slug)
    if request.method == "POST":
        check_csrf()
        user = _user(sess.user_id)
        error = hub().add_passkey(ws, user, "add:" + sess.id, credential_field(), request.form.get("name", "")[:200],
                                  current_client(), sess)
        if error is None:
            if hub().mfa.backup_remaining(user.id) == 0:  # the recovery path when the passkey is lost
                codes = hub().mfa.backup_generate(user.id)
                return render_template("backup_codes.html", **_ctx(ws=ws, codes=codes, signing_in=False))
            flash("Your passkey was added. You can now sign in with it.", "status")
            return redirect(url_for("security.page", ws_slug=ws.slug) + "#passkeys")
        return render_template("passkey_setup.html", ws=ws, action=action, options_url=options_url, error=error,
                               name=request.form.get("name", "")[:64], signing_in=False), 400
    return render_template("passkey_setup.html", ws=ws, action=action, options_url=options_url, signing_in=False)


@bp.route("/w/<ws_slug>/settings/security/passkeys/<passkey_id>", methods=["GET", "POST"])
@login_required
def manage(ws, sess, passkey_id):
    if (r := _require_reauth(ws, sess)) is not None:
        return r
    passkey = hub().mfa.passkeys.get(sess.user_id, passkey_id[:36])
    if passkey is None:
        flash("That passkey was already removed.", "status")
        return redirect(url_for("security.page", ws_slug=ws.slug) + "#passkeys")
    error = None
    if request.method == "POST":
        check_csrf()
        client = current_client()
        if request.form.get("action") == "rename":
            name = clean_name(request.form.get("name", "")[:200])
            if name is None:
                error = "Give the passkey a name (at most 64 characters), for example “Work laptop”."
            else:
                hub().rename_passkey(ws, sess.user_id, passkey, name, client)
                flash("The passkey was renamed.", "status")
                return redirect(url_for("security.page", ws_slug=ws.slug) + "#passkeys")
        elif request.form.get("action") == "remove":
            error = hub().remove_passkey(ws, sess.user_id, passkey, client, sess)
            if error is None:
                flash("The passkey was removed. Your other sessions have been signed out.", "status")
                return redirect(url_for("security.page", ws_slug=ws.slug) + "#passkeys")
    return render_template("passkey_manage.html", ws=ws, passkey=passkey, error=error), 400 if error else 200
