"""The thin Flask layer of the OIDC provider: turns requests into ``HttpRequest`` and ``Answer`` into responses."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, make_response, redirect, render_template, request, url_for
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from idp.web.common import (
    browser_binding,
    check_csrf,
    current_client,
    delete_cookie,
    error_page,
    hub,
    load_session,
    load_workspace,
    new_error_id,
    rotate_csrf,
    session_cookie,
)
from oidc.provider import Answer, HttpRequest, StepUp

bp = Blueprint("oidc", __name__)
HTML_ENDPOINTS = ("oidc.authorize", "oidc.end_session")


@bp.record_once
def _install(state):
    from oidc import install

    install(state.app.extensions["idhub"])


def service():
    return hub().oidc


def _http() -> HttpRequest:
    return HttpRequest(method=request.method, path=request.full_path.rstrip("?"), args=request.args,
                       form=request.form if request.method == "POST" else {}, headers=request.headers)


def _json_workspace(slug: str):
    ws = service().workspace(slug)
    if ws is None:
        resp = jsonify({"error": "invalid_request", "error_description": "Unknown workspace."})
        resp.status_code = 404
        return None, resp
    g.workspace = ws
    return ws, None


def _step_up(ws, step: StepUp):
    """The signed-in user adds a second factor (or sets one up) to the session they have — the sign-in core's
    step-up, the same one the admin console and SAML apps use — and comes back to the authorization request."""
    from idp.web.auth import respond  # the sign-in's own answers (pages, cookies)

    sess = load_session(ws)
    if sess is None or sess.user_id != step.user_id:
        return redirect(url_for("auth.login", ws_slug=ws.slug, next=step.next), code=302)
    with hub().audit.deferred():
        return respond(ws, hub().signin.step_up(ws, sess, current_client(), binding=browser_binding(),
                                                next_url=step.next, app=step.app, wants=step.wants))


def _respond(ans: Answer, ws=None):
    if ans.step_up is not None and ws is not None:
        return _step_up(ws, ans.step_up)
    if ans.template is not None:
        name, context = ans.template
        resp = make_response(render_template(name, ws=ws, **context), ans.status)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if ans.page is not None:
        title, message = ans.page
        return error_page(ans.status, title, message, new_error_id())
    if ans.location is not None:
        return redirect(ans.location, code=302)
    resp = jsonify(ans.body or {})
    resp.status_code = ans.status
    for k, v in ans.headers:
        resp.headers[k] = v
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if request.endpoint in HTML_ENDPOINTS:
        return error_page(exc.code or 400, exc.name, exc.description or "The request could not be processed.")
    resp = jsonify({"error": "invalid_request", "error_description": (exc.name or "Bad request")[:100]})
    resp.status_code = exc.code or 400
    return resp


@bp.route("/w/<ws_slug>/.well-known/openid-configuration")
def discovery(ws_slug):
    ws, err = _json_workspace(ws_slug)
    if err:
        return err
    resp = jsonify(service().discovery(ws))
    resp.headers["Cache-Control"] = "public, max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.route("/w/<ws_slug>/oauth2/jwks")
def jwks(ws_slug):
    ws, err = _json_workspace(ws_slug)
    if err:
        return err
    resp = jsonify(service().keys.jwks(ws.id))
    resp.headers["Cache-Control"] = "public, max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.route("/w/<ws_slug>/oauth2/authorize")
def authorize(ws_slug):
    ws = load_workspace(ws_slug)
    sess = load_session(ws)
    return _respond(service().authorize(ws, _http(), sess, current_client()), ws)


RESUME_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Continuing…</title>
<meta http-equiv="refresh" content="0;url={url}"><link rel="stylesheet" href="{css}"></head>
<body><main><section class="card"><h1>Signed in</h1>
<p><a href="{url}">Continue to the app</a></p></section></main></body></html>"""


@bp.route("/w/<ws_slug>/oauth2/resume")
def resume(ws_slug):
    """Where the sign-in returns to: a fresh navigation (meta refresh) to the authorization endpoint, so that
    the redirect to the app is not part of the sign-in form's submission (CSP ``form-action 'self'``)."""
    ws = load_workspace(ws_slug)
    query = request.query_string.decode("latin-1")
    if len(query) > 8192:
        return error_page(400, "Bad request", "The sign-in request is too large.")
    target = f"/w/{ws.slug}/oauth2/authorize" + ("?" + query if query else "")
    page = RESUME_PAGE.format(url=escape(target), css=escape(url_for("static", filename="idhub.css")))
    resp = make_response(page)
    resp.headers["Content-Type"] = "text/html; charset=utf-8"
    return resp


@bp.route("/w/<ws_slug>/oauth2/token", methods=["GET", "POST"])
def token(ws_slug):
    ws, err = _json_workspace(ws_slug)
    return err or _respond(service().token(ws, _http(), current_client()))


@bp.route("/w/<ws_slug>/oauth2/revoke", methods=["GET", "POST"])
def revoke(ws_slug):
    ws, err = _json_workspace(ws_slug)
    return err or _respond(service().revoke(ws, _http(), current_client()))


@bp.route("/w/<ws_slug>/oauth2/introspect", methods=["GET", "POST"])
def introspect(ws_slug):
    ws, err = _json_workspace(ws_slug)
    return err or _respond(service().introspect(ws, _http(), current_client()))


@bp.route("/w/<ws_slug>/oauth2/userinfo", methods=["GET", "POST"])
def userinfo(ws_slug):
    ws, err = _json_workspace(ws_slug)
    return err or _respond(service().userinfo(ws, _http()))


@bp.route("/w/<ws_slug>/oauth2/logout", methods=["GET", "POST"])
def end_session(ws_slug):
    ws = load_workspace(ws_slug)
    sess = load_session(ws)
    # The confirmation page's form: its CSRF token proves the user pressed "Sign out" on our page.
    confirmed = request.method == "POST" and request.form.get("confirm") is not None
    if confirmed:
        check_csrf()
    ans, end = service().end_session(ws, _http(), sess, confirmed=confirmed)
    if end and sess is not None:
        hub().sign_out(ws, sess, current_client())
        g.session = None
        rotate_csrf()
    resp = make_response(_respond(ans, ws))
    if end and sess is not None:
        delete_cookie(resp, session_cookie(ws.slug))
    return resp
