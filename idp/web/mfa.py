"""Two-factor authentication pages: the second step of sign-in, forced enrolment, and the self-service
settings (enable with an authenticator app or SMS, backup codes, disable)."""

from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from idp.mfa.passkeys import MAX_RESPONSE
from idp.models import User
from idp.signin import Failed
from idp.web.auth import load_flow, respond
from idp.web.common import check_csrf, current_client, hub, login_required

bp = Blueprint("mfa", __name__)

REAUTH_TTL = 600
METHOD_NAMES = {"totp": "Authenticator app", "sms": "Text message (SMS)", "backup_codes": "Backup code",
                "webauthn": "Passkey or security key"}
CODE_LABELS = {"totp": "Code from your authenticator app", "sms": "Code from the text message",
               "backup_codes": "Backup code"}


def _field(name: str, limit: int = 64) -> str:
    return request.form.get(name, "")[:limit]


def credential_field() -> str:
    """A passkey's answer (JSON), cut one character past the limit (an oversized one is refused, not truncated)."""
    return request.form.get("credential", "")[: MAX_RESPONSE + 1]


def _factor(method: str) -> str:
    """What the person sent for ``method``: a code, or a passkey's answer for ``webauthn``."""
    return credential_field() if method == "webauthn" else _field("code")


def _user(user_id: str) -> User:
    with hub().db() as db:
        return db.get(User, user_id)


def _ctx(**kw):
    return {"method_names": METHOD_NAMES, "code_labels": CODE_LABELS, **kw}


# ---- sign-in: the second step --------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/login/mfa", methods=["GET", "POST"])
def second_factor(ws_slug):
    from idp.web.common import load_workspace

    ws = load_workspace(ws_slug)
    flows, flow = load_flow(ws, "mfa")
    if flow is None:
        return redirect(url_for("auth.login", ws_slug=ws.slug))
    choice = request.values.get("method", flow.method)
    if choice in flow.choices and choice != flow.method:
        flow.method, flow.sms_sent = choice, False
        flows.save(flow)
    client = current_client()
    error = notice = None
    status = 200
    if request.method == "POST":
        check_csrf()
        if request.form.get("action") == "send" and flow.method == "sms":
            res = hub().mfa.sms_send_signin_code(flow.user_id, flow.id, client_ip=client.ip)
            if res.ok:
                flow.sms_sent = True
                flows.save(flow)
                notice = f"We sent a code to {hub().mfa.enrolled(flow.user_id).phone_masked}."
            else:
                error, status = res.error, 429 if res.retry_after else 503
        else:
            with hub().audit.deferred():
                out = hub().signin.second_factor(ws, flow, _factor(flow.method), client)
                if not isinstance(out, Failed):
                    return respond(ws, out)
            error, status = out.error, 429 if out.retry_after else 401
    enrolled = hub().mfa.enrolled(flow.user_id)
    return render_template("mfa.html", **_ctx(ws=ws, flow=flow, error=error, notice=notice, enrolled=enrolled)), status


# ---- sign-in: enrolment required by policy ----------------------------------------------------------------
@bp.route("/w/<ws_slug>/login/enroll", methods=["GET", "POST"])
def enroll(ws_slug):
    from idp.web.common import load_workspace

    ws = load_workspace(ws_slug)
    flows, flow = load_flow(ws, "enroll", "backup_codes")
    if flow is None:
        return redirect(url_for("auth.login", ws_slug=ws.slug))
    client = current_client()
    if flow.state == "backup_codes":
        if request.method == "POST":
            check_csrf()
            with hub().audit.deferred():
                return respond(ws, hub().signin.proceed(ws, flow, client))
        # a reload: the codes were shown once and are stored only as hashes; offer to continue
        return render_template("backup_codes.html", **_ctx(ws=ws, codes=None, flow=flow, signing_in=True,
                                                           action=url_for("mfa.enroll", ws_slug=ws.slug,
                                                                          flow=flow.id)))
    choice = request.values.get("method", flow.method)
    if choice in flow.choices and choice != flow.method:
        flow.method = choice
        flows.save(flow)
    user = _user(flow.user_id)
    action = url_for("mfa.enroll", ws_slug=ws.slug, flow=flow.id)
    # a step-up keeps the session it upgrades: setting up the method ends the user's *other* sessions only
    upgrading = hub().sessions.store.get(flow.upgrades) if flow.upgrades else None
    outcome = _enrolment_step(ws, user, flow.method, action, client, current=upgrading)
    if outcome == "done":
        hub().signin.enrolled(ws, flow)
        if flow.method == "webauthn" and hub().mfa.backup_remaining(user.id) > 0:
            with hub().audit.deferred():  # the backup codes the user has stay the recovery path: nothing to show
                return respond(ws, hub().signin.proceed(ws, flow, client))
        codes = hub().mfa.backup_generate(user.id)
        return render_template("backup_codes.html", **_ctx(ws=ws, codes=codes, flow=flow, signing_in=True,
                                                           action=action))
    template, ctx, status = outcome
    return render_template(template, **_ctx(ws=ws, flow=flow, choices=flow.choices, action=action,
                                            signing_in=True, **ctx)), status


def _enrolment_step(ws, user: User, method: str, action: str, client, current):
    """One step of setting up TOTP or SMS (shared by sign-in enrolment and the settings page).

    Returns "done" once the method is confirmed, else (template, context, status)."""
    mfa = hub().mfa
    if method == "totp":
        if request.method == "POST" and request.form.get("action") == "verify":
            check_csrf()
            if mfa.totp_confirm(user.id, _field("code")):
                hub().mfa_changed(ws, user.id, "An authenticator app was added.", "mfa.totp.enabled", client, current)
                return "done"
            return "totp_setup.html", {"setup": _pending_setup(user), "method": method,
                                       "error": "That code is not valid. Check the time on your phone and try "
                                                "again with the newest code."}, 400
        return "totp_setup.html", {"setup": _pending_setup(user), "method": method}, 200
    if method == "sms":
        if request.method == "POST" and request.form.get("action") == "send":
            check_csrf()
            try:
                phone = mfa.normalise_phone(_field("phone", 40))
            except ValueError as exc:
                return "sms_setup.html", {"method": method, "error": str(exc), "phone": _field("phone", 40)}, 400
            res = mfa.sms_begin(user.id, phone, client_ip=client.ip)
            if not res.ok:
                return "sms_setup.html", {"method": method, "error": res.error, "phone": phone}, \
                    429 if res.retry_after else 503
            return "sms_setup.html", {"method": method, "sent": True, "phone": phone}, 200
        if request.method == "POST" and request.form.get("action") == "verify":
            check_csrf()
            if mfa.sms_confirm(user.id, _field("code")):
                hub().mfa_changed(ws, user.id, "A phone number was added for text-message codes.", "mfa.sms.enabled",
                                  client, current)
                return "done"
            return "sms_setup.html", {"method": method, "sent": True, "phone": _field("phone", 40),
                                      "error": "That code is not valid or has expired."}, 400
        return "sms_setup.html", {"method": method}, 200
    if method == "webauthn":
        options_url = url_for("passkeys.enrol_options", ws_slug=ws.slug, flow=request.values.get("flow", ""))
        ctx = {"method": method, "options_url": options_url}
        if request.method == "POST" and request.form.get("action") == "register":
            check_csrf()
            error = hub().add_passkey(ws, user, "enroll:" + request.values.get("flow", "")[:64], credential_field(),
                                      request.form.get("name", "")[:200], client, current)
            if error is None:
                return "done"
            return "passkey_setup.html", {**ctx, "error": error, "name": request.form.get("name", "")[:64]}, 400
        return "passkey_setup.html", ctx, 200
    return "error.html", {"status": 400, "title": "Unknown method", "message": "Choose a listed method.",
                          "error_id": g.get("request_id", "")}, 400


def _pending_setup(user: User):
    """The secret being set up (the same one on every reload, so a scanned QR code stays valid)."""
    mfa = hub().mfa
    return mfa.totp_pending(user.id, user.email) or mfa.totp_begin(user.id, user.email)


# ---- settings ----------------------------------------------------------------------------------------------
def _reauth_key(sess) -> str:
    return f"reauth:{sess.id}"


def _require_reauth(ws, sess, *, second_factor: bool = True):
    """A redirect to confirm it's the user, unless they did so in the last 10 minutes.

    Confirming means a first factor — the password (idhub's, or the directory's for LDAP users) or a fresh sign-in
    at the organisation's identity provider — and, when 2FA is on and ``second_factor``, a current code too:
    otherwise a stolen session plus the password could replace the user's authenticator or phone, which amounts
    to disabling 2FA. (The disable page asks for its own code.)
    """
    level = hub().stores.one_time.get(_reauth_key(sess))
    if level == "mfa" or (level == "pwd" and not (second_factor and hub().mfa.enrolled(sess.user_id).any)):
        return None
    return redirect(url_for("mfa.reauth", ws_slug=ws.slug, next=request.path))


def mark_reauthenticated(ws, sess, level: str, client, **data) -> None:
    """Record that the session's user confirmed it's them, for ``REAUTH_TTL`` seconds: ``pwd`` a first factor,
    ``mfa`` a first and a second factor (a recorded ``mfa`` is never lowered); audited as ``auth.reauth.success``
    with how (``method``, ``connection``). The password step here and the upstream IdP's answer
    (``federation.web``) both record it this way."""
    store = hub().stores.one_time
    if level == "pwd" and store.get(_reauth_key(sess)) == "mfa":
        level = "mfa"
    store.put(_reauth_key(sess), level, REAUTH_TTL)
    hub()._event("auth.reauth.success", ws.id, client, actor_id=sess.user_id,
                 data={"level": level, "connection": None, **data})


@bp.route("/w/<ws_slug>/settings/security/reauth", methods=["GET", "POST"])
@login_required
def reauth(ws, sess):
    from idp.web.common import safe_next

    nxt = safe_next(request.values.get("next"), ws.slug)
    enrolled = hub().mfa.enrolled(sess.user_id)
    # a current code too when 2FA is on — except on the way to the disable page, which asks for one itself
    need_code = enrolled.any and not nxt.endswith("/settings/security/2fa/disable")
    methods = enrolled.methods() if need_code else []
    method = request.values.get("method", methods[0] if methods else "")
    method = method if method in methods else (methods[0] if methods else "")
    user = _user(sess.user_id)
    # the first factor was confirmed a moment ago (at the organisation's identity provider, or with the password
    # on the way to a page that needed no code): only a current code is left
    code_only = bool(methods) and hub().stores.one_time.get(_reauth_key(sess)) == "pwd"
    options = hub().signin.reauth_options(ws, user)
    error = notice = None
    client = current_client()
    if request.method == "POST":
        check_csrf()
        if request.form.get("action") == "send" and method == "sms":
            res = hub().mfa.sms_send_signin_code(sess.user_id, f"reauth:{sess.id}", client_ip=client.ip)
            notice = f"We sent a code to {enrolled.phone_masked}." if res.ok else None
            error = None if res.ok else res.error
        elif code_only:
            error = hub().verify_second_factor(ws, sess.user_id, method, _factor(method), client,
                                               binding=f"reauth:{sess.id}")
            if error is None:
                mark_reauthenticated(ws, sess, "mfa", client, method=method)
                return redirect(nxt)
        else:
            password = request.form.get("password", "")[:1025]
            # LDAP users: a bind against the directory; sso_required or no idhub password: refused
            outcome = hub().signin.reauth_password(ws, user, password, client, options)
            error = outcome.error
            if outcome.ok and methods:
                error = hub().verify_second_factor(ws, sess.user_id, method, _factor(method), client,
                                                   binding=f"reauth:{sess.id}")
            if error is None:
                ldap = options["ldap"]
                mark_reauthenticated(ws, sess, "mfa" if methods else "pwd", client,
                                     method="ldap" if ldap else "pwd", connection=ldap["slug"] if ldap else None,
                                     **({"second_factor": method} if methods else {}))
                return redirect(nxt)
    status = 401 if error else 200
    return render_template("reauth.html", **_ctx(ws=ws, next=nxt, error=error, notice=notice, methods=methods,
                                                  method=method, enrolled=enrolled, options=options,
                                                  code_only=code_only)), status


@bp.route("/w/<ws_slug>/settings/security/2fa")
@login_required
def choose(ws, sess):
    if (r := _require_reauth(ws, sess)) is not None:
        return r
    enrolled = hub().mfa.enrolled(sess.user_id)
    return render_template("twofactor_choose.html", **_ctx(ws=ws, enrolled=enrolled, allowed=_allowed(ws)))


def _allowed(ws) -> list[str]:
    from policies.engine import ALL_METHODS

    return [m for m in ALL_METHODS if m in ((ws.policies or {}).get("mfa_methods") or ALL_METHODS)]


@bp.route("/w/<ws_slug>/settings/security/2fa/<method>", methods=["GET", "POST"])
@login_required
def setup(ws, sess, method):
    if method == "webauthn" and method in _allowed(ws):
        return redirect(url_for("passkeys.add", ws_slug=ws.slug))
    if method not in ("totp", "sms") or method not in _allowed(ws):
        return render_template("error.html", status=404, title="Not available",
                               message="Your organisation does not allow this method.", error_id=g.request_id), 404
    if (r := _require_reauth(ws, sess)) is not None:
        return r
    user = _user(sess.user_id)
    action = url_for("mfa.setup", ws_slug=ws.slug, method=method)
    outcome = _enrolment_step(ws, user, method, action, current_client(), current=sess)
    if outcome == "done":
        if hub().mfa.backup_remaining(user.id) == 0:
            codes = hub().mfa.backup_generate(user.id)
            return render_template("backup_codes.html", **_ctx(ws=ws, codes=codes, signing_in=False))
        flash("Two-factor authentication is on.", "status")
        return redirect(url_for("security.page", ws_slug=ws.slug) + "#two-factor")
    template, ctx, status = outcome
    return render_template(template, **_ctx(ws=ws, action=action, signing_in=False, **ctx)), status


@bp.route("/w/<ws_slug>/settings/security/2fa/backup-codes", methods=["GET", "POST"])
@login_required
def regenerate(ws, sess):
    if (r := _require_reauth(ws, sess)) is not None:
        return r
    enrolled = hub().mfa.enrolled(sess.user_id)
    if not enrolled.any:
        flash("Turn on two-factor authentication first.", "error")
        return redirect(url_for("security.page", ws_slug=ws.slug) + "#two-factor")
    if request.method == "GET":
        return render_template("regenerate_codes.html", ws=ws, enrolled=enrolled)
    check_csrf()
    codes = hub().mfa.backup_generate(sess.user_id)
    hub().mfa_changed(ws, sess.user_id, "New backup codes were generated; the old ones no longer work.",
                      "mfa.backup_codes.regenerated", current_client(), sess)
    return render_template("backup_codes.html", **_ctx(ws=ws, codes=codes, signing_in=False))


@bp.route("/w/<ws_slug>/settings/security/2fa/disable", methods=["GET", "POST"])
@login_required
def disable(ws, sess):
    if (r := _require_reauth(ws, sess, second_factor=False)) is not None:
        return r
    mfa = hub().mfa
    enrolled = mfa.enrolled(sess.user_id)
    if not enrolled.any:
        return redirect(url_for("security.page", ws_slug=ws.slug) + "#two-factor")
    methods = enrolled.methods()
    method = request.values.get("method", methods[0])
    method = method if method in methods else methods[0]
    error = notice = None
    status = 200
    if request.method == "POST":
        check_csrf()
        client = current_client()
        if request.form.get("action") == "send" and method == "sms":
            res = mfa.sms_send_signin_code(sess.user_id, f"disable:{sess.id}", client_ip=client.ip)
            notice = f"We sent a code to {enrolled.phone_masked}." if res.ok else None
            error = None if res.ok else res.error
        else:
            error = hub().verify_second_factor(ws, sess.user_id, method, _factor(method), client,
                                               binding=f"disable:{sess.id}")
            if error is None:
                mfa.disable_all(sess.user_id)
                hub().mfa_changed(ws, sess.user_id, "Two-factor authentication was turned off.", "mfa.disabled",
                                  client, sess)
                flash("Two-factor authentication is off. We recommend turning it back on soon.", "status")
                return redirect(url_for("security.page", ws_slug=ws.slug) + "#two-factor")
            status = 400
    return render_template("disable_2fa.html", **_ctx(ws=ws, enrolled=enrolled, method=method, methods=methods,
                                                      error=error, notice=notice)), status
