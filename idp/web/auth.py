"""Sign-in, sign-out, forgotten passwords and "This wasn't me": turns login-flow steps into responses."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, g, make_response, redirect, render_template, request, url_for

from idp.accounts import SLUG_RE, workspace_snapshot
from idp.flow import FlowError, FlowManager, identify
from idp.hub import DEVICE_MAX_AGE
from idp.metrics import SIGNINS
from idp.signin import Denied, Done, Failed, Invalid, Step
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
    return hub().signin.flows


@bp.route("/")
def home():
    """The start page: the workspace's name, then its sign-in page; a name no workspace has is said under the
    field, keeping what was typed."""
    typed = request.args.get("workspace", "")[:100]
    slug = typed.strip().lower()
    if not slug:
        return render_template("home.html", typed="", error=None)
    with hub().connect() as conn:
        ws = workspace_snapshot(conn, slug)
    if ws is None:
        shown = slug if slug.isprintable() else "that name"
        error = (f"No workspace called '{shown}' — check the name your IT team gave you."
                 if SLUG_RE.match(slug) else
                 "A workspace name has only lowercase letters, digits and dashes — check the name your IT team "
                 "gave you.")
        return render_template("home.html", typed=typed, error=error), 404
    return redirect(url_for("auth.login", ws_slug=ws.slug))


@bp.route("/w/<ws_slug>/")
def workspace_home(ws_slug):
    return redirect(url_for("apps.page", ws_slug=ws_slug))


@bp.route("/w/<ws_slug>/login", methods=["GET", "POST"])
def login(ws_slug):
    """The sign-in page. Email and password on one page (one POST signs in), unless a connection claims email
    domains: then identifier-first (the email decides between the upstream IdP, LDAP and idhub's password).
    An email without a password always goes on to the password page, whichever the page showed. The steps are
    the sign-in core's (``idp.signin``); this view only translates."""
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
    current = load_session(ws)  # the form's CSRF token is bound to the session a signed-in browser has
    check_csrf()
    client = current_client()
    with hub().audit.deferred():  # this step's audit events (outcome, policy decision, sign-in) in one transaction
        out = hub().signin.begin(ws, client, email=_field("email"), password=request.form.get("password", "") and
                                 _field("password"), binding=browser_binding(), next_url=nxt, app=app,
                                 local=request.form.get("local") == "1",
                                 device=request.cookies.get(device_cookie(ws.slug)), current=current)
        if isinstance(out, Invalid):
            return _login_page(ws, nxt, app, out.email, error=out.error), 400
        if isinstance(out, Failed):  # the one-page form's password: the sign-in page again
            return _failed(out, _login_page(ws, nxt, app, _field("email")[:254], error=out.error))
        return respond(ws, out)


def _login_page(ws, nxt: str, app: str, email: str, *, error: str | None = None, notice: str | None = None):
    return render_template("login.html", ws=ws, next=nxt, email=email, error=error, notice=notice, app=app,
                           one_page=not hub().signin.identifier_first(ws))


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
        out = hub().signin.password(ws, flow, _field("password"), client,
                                    device=request.cookies.get(device_cookie(ws.slug)))
        if isinstance(out, Failed):
            return _failed(out, render_template("password.html", ws=ws, flow=flow, error=out.error))
        return respond(ws, out)


def _failed(out: Failed, page):
    SIGNINS.labels(outcome="throttled" if out.retry_after else "failure").inc()
    headers = {"Retry-After": str(out.retry_after)} if out.retry_after else {}
    return page, 429 if out.retry_after else 401, headers


STEP_ENDPOINTS = {"password": "auth.password", "mfa": "mfa.second_factor", "enroll": "mfa.enroll"}


def respond(ws, out):
    """The HTTP answer to what the sign-in core says comes next: a denial, the next step's page, or the session
    (its cookie set, or the browser's session upgraded in place)."""
    if isinstance(out, Denied):
        SIGNINS.labels(outcome="denied").inc()
        return render_template("denied.html", ws=ws, reason=out.reason), 403
    if isinstance(out, Step):
        if out.state == "upstream":
            return redirect(url_for("federation.start", ws_slug=ws.slug, conn_slug=out.flow.connection,
                                    flow=out.flow.id))
        return redirect(url_for(STEP_ENDPOINTS[out.state], ws_slug=ws.slug, flow=out.flow.id))
    assert isinstance(out, Done), out
    SIGNINS.labels(outcome="stepped_up" if out.upgraded else "success").inc()
    rotate_csrf()
    resp = redirect(out.next or url_for("apps.page", ws_slug=ws.slug))
    data = out.session
    if out.token is not None:
        set_cookie(resp, session_cookie(ws.slug), out.token,
                   max_age=int((data.expires_at - data.created_at).total_seconds()))
    if out.device_email:  # this browser now knows the password: its own throttle from here on
        set_cookie(resp, device_cookie(ws.slug), hub().device_token(ws, out.device_email), max_age=DEVICE_MAX_AGE)
    return resp


@bp.route("/w/<ws_slug>/login/step-up")
def step_up(ws_slug):
    """Raise the browser's session to a second factor (OIDC acr_values, an app's or the console's demand), in
    place: the sign-in's second-factor (or set-up) pages, then back to ``next`` with the same session."""
    ws = load_workspace(ws_slug)
    nxt = safe_next(request.args.get("next"), ws.slug)
    sess = load_session(ws)
    if sess is None:
        return redirect(url_for("auth.login", ws_slug=ws.slug, next=nxt))
    with hub().audit.deferred():
        return respond(ws, hub().signin.step_up(ws, sess, current_client(), binding=browser_binding(),
                                                next_url=nxt, app=_app_param()))


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
