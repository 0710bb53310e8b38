"""Sign-in, sign-out, forgotten passwords and "This wasn't me": turns login-flow steps into responses."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, g, make_response, redirect, render_template, request, url_for

from idp.flow import AuthnResult, FlowError, FlowManager, LoginFlow, identify
from idp.hub import DEVICE_MAX_AGE
from idp.metrics import SIGNINS
from idp.web.common import (
    browser_binding,
    check_csrf,
    current_client,
    delete_cookie,
    device_cookie,
    hub,
    load_session,
    load_workspace,
    rotate_csrf,
    safe_next,
    session_cookie,
    set_cookie,
)

bp = Blueprint("auth", __name__)

MAX_FIELD = 1024


def _field(name: str) -> str:
    value = request.form.get(name, "")
    return value if len(value) <= MAX_FIELD else value[: MAX_FIELD + 1]


def _flows() -> FlowManager:
    return FlowManager(hub().stores.flows, hub().clock)


@bp.route("/")
def home():
    slug = request.args.get("workspace", "").strip().lower()
    if slug:
        return redirect(url_for("auth.login", ws_slug=slug))
    return render_template("home.html")


@bp.route("/w/<ws_slug>/")
def workspace_home(ws_slug):
    return redirect(url_for("security.page", ws_slug=ws_slug))


@bp.route("/w/<ws_slug>/login", methods=["GET", "POST"])
def login(ws_slug):
    """The sign-in page. Email and password on one page (one POST signs in), unless a connection claims email
    domains: then identifier-first (the email decides between the upstream IdP, LDAP and idhub's password).
    An email without a password always goes on to the password page, whichever the page showed."""
    ws = load_workspace(ws_slug)
    nxt = safe_next(request.values.get("next"), ws.slug)
    app = _app_param()
    if request.method == "GET":
        # prompt=login (OIDC) or ForceAuthn (SAML): sign in again even with a session
        force = request.args.get("prompt") == "login"
        if load_session(ws) is not None and not request.args.get("ended") and not force:
            return redirect(nxt)
        notice = None
        if request.args.get("ended"):
            notice = "Your session has ended. Please sign in again."
        return _login_page(ws, nxt, app, request.args.get("email", "")[:254], notice=notice)
    load_session(ws)  # the form's CSRF token is bound to the session a signed-in browser (prompt=login) has
    check_csrf()
    email = _field("email")
    error, cleaned = identify(email)
    if error:
        return _login_page(ws, nxt, app, cleaned, error=error), 400
    # e.g. the IP allowlist, before any password is tried
    client = current_client()
    early = hub().decide(ws, client, app=app or None, app_policies=hub().app_policies(ws, app))
    if early.effect == "deny":
        return render_template("denied.html", ws=ws, reason=early.reason), 403
    from federation.web import route_login  # home-realm discovery: the address's domain may belong to an IdP

    routed = route_login(ws, cleaned, nxt, app)
    if routed is not None:
        return routed  # a password sent along is never looked at: the address's connection checks it
    flows = _flows()
    if not request.form.get("password"):
        flow = flows.start(ws.id, browser_binding(), nxt, email=cleaned, state="password", app=app)
        return redirect(url_for("auth.password", ws_slug=ws.slug, flow=flow.id))
    # the one-page form: the same password step as the password page, on a flow stored only if it goes on
    flow = flows.new(ws.id, browser_binding(), nxt, email=cleaned, state="password", app=app)
    with hub().audit.deferred():
        return _password_step(ws, flows, flow, client, stored=False)


def _login_page(ws, nxt: str, app: str, email: str, *, error: str | None = None, notice: str | None = None):
    from federation.web import identifier_first

    return render_template("login.html", ws=ws, next=nxt, email=email, error=error, notice=notice, app=app,
                           one_page=not identifier_first(ws))


def _app_param() -> str:
    """The downstream app a sign-in is for (its policies apply); a client id or slug, or empty."""
    value = request.values.get("app", "")
    return value if len(value) <= 128 and value.replace("-", "").replace("_", "").replace(".", "").isalnum() else ""


def load_flow(ws, *states):
    """(flows, flow) for the flow named in the request, in one of ``states``; (flows, None) otherwise."""
    flows = _flows()
    try:
        flow = flows.load(request.values.get("flow", ""), ws.id, browser_binding())
        if flow.state not in states:
            raise FlowError("wrong step")
    except FlowError:
        flash("Your sign-in took too long or was started in another browser. Please start again.", "error")
        return flows, None
    return flows, flow


@bp.route("/w/<ws_slug>/login/password", methods=["GET", "POST"])
def password(ws_slug):
    ws = load_workspace(ws_slug)
    flows, flow = load_flow(ws, "password")
    if flow is None:
        return redirect(url_for("auth.login", ws_slug=ws.slug))
    if request.method == "GET":
        return render_template("password.html", ws=ws, flow=flow)
    check_csrf()
    client = current_client()
    with hub().audit.deferred():  # this step's audit events (outcome, policy decision, sign-in) in one transaction
        return _password_step(ws, flows, flow, client)


def _password_step(ws, flows: FlowManager, flow: LoginFlow, client, stored: bool = True):
    """Check the password of ``flow``'s email; ``stored=False``: the flow of a one-page sign-in, not stored yet
    (a wrong password shows the sign-in page again)."""
    from federation.web import password_step  # LDAP connections; no local password where SSO is required

    outcome = password_step(ws, flow, _field("password"), client)
    if outcome is None:
        outcome = hub().check_password(ws, flow.email, _field("password"), client, flow.next,
                                       device=request.cookies.get(device_cookie(ws.slug)))
    if not outcome.ok:
        SIGNINS.labels(outcome="throttled" if outcome.retry_after else "failure").inc()
        status = 429 if outcome.retry_after else 401
        if stored:
            resp = render_template("password.html", ws=ws, flow=flow, error=outcome.error)
        else:
            resp = _login_page(ws, flow.next, flow.app, flow.email, error=outcome.error)
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else {}
        return resp, status, headers
    flow.user_id = outcome.result.user_id
    flow.amr = list(outcome.result.amr)
    return continue_signin(ws, flows, flow, client, stored=stored, account=outcome.account,
                           known_devices=outcome.known_devices)


def continue_signin(ws, flows: FlowManager, flow: LoginFlow, client, stored: bool = True, account=None,
                    known_devices: frozenset = frozenset()):
    """Ask the policy engine what the flow needs next: a second factor, enrolment, a denial, or the session.
    ``stored=False``: a flow made with ``FlowManager.new``, stored here only if it goes on to another step.
    ``account``/``known_devices``: what the password check read of the user (``PasswordOutcome``), if it did."""
    read = {"account": account} if account is not None else {}
    decision = hub().decide(ws, client, user_id=flow.user_id, methods=flow.amr, app=flow.app or None,
                            app_policies=hub().app_policies(ws, flow.app), **read)
    if decision.effect == "deny":
        if stored:
            flows.finish(flow)
        SIGNINS.labels(outcome="denied").inc()
        return render_template("denied.html", ws=ws, reason=decision.reason), 403
    if decision.effect in ("mfa", "enroll"):
        flow.move(decision.effect)
        flow.choices = list(decision.methods)
        flow.method = flow.method if flow.method in flow.choices else flow.choices[0]
        if stored:
            flows.save(flow)
        else:
            flows.keep(flow)
        endpoint = "mfa.second_factor" if decision.effect == "mfa" else "mfa.enroll"
        return redirect(url_for(endpoint, ws_slug=ws.slug, flow=flow.id))
    flow.move("done")
    if stored:
        flows.finish(flow)
    result = AuthnResult(ws.id, flow.user_id, tuple(flow.amr), hub().clock(), flow.next)
    token, data = hub().complete_signin(ws, result, client, account, known_devices)
    SIGNINS.labels(outcome="success").inc()
    rotate_csrf()
    resp = redirect(flow.next or url_for("security.page", ws_slug=ws.slug))
    set_cookie(resp, session_cookie(ws.slug), token, max_age=int((data.expires_at - data.created_at).total_seconds()))
    if "pwd" in flow.amr:  # this browser now knows the password: its own throttle from here on
        set_cookie(resp, device_cookie(ws.slug), hub().device_token(ws, flow.email), max_age=DEVICE_MAX_AGE)
    return resp


@bp.route("/w/<ws_slug>/login/restart")
def restart(ws_slug):
    ws = load_workspace(ws_slug)
    return redirect(url_for("auth.login", ws_slug=ws.slug))


@bp.route("/w/<ws_slug>/logout", methods=["POST"])
def logout(ws_slug):
    ws = load_workspace(ws_slug)
    sess = load_session(ws)
    check_csrf()
    dest = url_for("auth.login", ws_slug=ws.slug)
    if sess is not None:
        # Protocols that sign the browser out of apps (SAML front-channel logout) may send it there first.
        for hook in current_app.extensions.get("idhub.signout_hooks", ()):
            dest = hook(ws, sess) or dest
        hub().sign_out(ws, sess, current_client())
    rotate_csrf()
    flash("You have signed out.", "status")
    resp = redirect(dest)
    delete_cookie(resp, session_cookie(ws.slug))
    return resp


@bp.route("/w/<ws_slug>/password/forgot", methods=["GET", "POST"])
def forgot(ws_slug):
    ws = load_workspace(ws_slug)
    if request.method == "GET":
        return render_template("forgot.html", ws=ws, email=request.args.get("email", "")[:254])
    check_csrf()
    email = _field("email")
    error, cleaned = identify(email)
    if error:
        return render_template("forgot.html", ws=ws, email=cleaned, error=error), 400
    later = []
    hub().request_reset(ws, cleaned, current_client(), later=later.append)
    resp = make_response(render_template("forgot.html", ws=ws, sent=True))
    for fn in later:  # the mail goes out once the answer has been sent (same timing for unknown addresses)
        resp.call_on_close(fn)
    return resp


@bp.route("/w/<ws_slug>/password/reset/<token>", methods=["GET", "POST"])
def reset(ws_slug, token):
    ws = load_workspace(ws_slug)
    user = hub().reset_user(ws, token)
    if user is None:
        return render_template("reset.html", ws=ws, invalid=True), 400
    if request.method == "GET":
        return render_template("reset.html", ws=ws, token=token, email=user.email)
    check_csrf()
    errors = hub().complete_reset(ws, token, _field("new_password"), _field("confirm_password"), current_client())
    if errors:
        invalid = errors == ["This reset link is invalid or has expired."]
        return render_template("reset.html", ws=ws, token=token, email=user.email, form_errors=errors,
                               invalid=invalid), 400
    flash("Your password has been reset. Sign in with your new password.", "status")
    return redirect(url_for("auth.login", ws_slug=ws.slug, email=user.email))


@bp.route("/w/<ws_slug>/security/not-me/<token>", methods=["GET", "POST"])
def not_me(ws_slug, token):
    ws = load_workspace(ws_slug)
    user = hub().not_me_user(ws, token)
    if user is None:
        return render_template("not_me.html", ws=ws, invalid=True, used=hub().not_me_used(token)), 400
    if request.method == "GET":
        return render_template("not_me.html", ws=ws, token=token, email=user.email)
    check_csrf()
    if not hub().secure_account(ws, token, current_client()):
        return render_template("not_me.html", ws=ws, invalid=True, used=True), 400
    g.session = None
    return render_template("not_me.html", ws=ws, done=True, email=user.email)
