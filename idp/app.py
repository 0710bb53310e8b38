"""``create_app()``: the one place that builds stores, services and blueprints."""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path

from flask import Flask, g, get_flashed_messages, jsonify, request, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from config.settings import Settings, load_settings
from idp import logs
from idp.crypto import derive_key  # noqa: F401  (re-exported: the helpers moved out of the app factory)
from idp.hub import Hub
from idp.metrics import LATENCY, REQUESTS
from idp.mfa.crypto import UnreadableSecret
from idp.outage import first_line as _first_line
from idp.outage import is_unavailable as _is_unavailable
from idp.web.headers import CSP
from idp.wiring import build_hub  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parent.parent
# probes that must answer without the database: no cache of theirs to check
UNCACHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
log = logging.getLogger("idhub")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# the URLs apps and provisioning clients call: their errors keep the protocol's format, never an HTML page
PROTOCOL_PATH = re.compile(r"^/w/[^/]+/(?:scim(?:/|$)|oauth2/|\.well-known/)")
# the endpoints only programs call (no browser): an outage is answered in their protocol's error format
MACHINE_PATH = re.compile(r"^/w/[^/]+/(?:scim(?:/|$)|oauth2/(?:token|revoke|introspect|userinfo|jwks)$|"
                          r"\.well-known/)")


class FlashCookieSession(SecureCookieSessionInterface):
    """Flask's signed-cookie session, which idhub uses for flash messages only: most requests carry no such
    cookie and write none, so they skip building the signer (Flask builds it at every request) and the cookie
    settings. The cookie itself, its signature and its attributes are Flask's own."""

    def open_session(self, app: Flask, request):
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        if not session and not session.modified:
            if session.accessed:
                response.vary.add("Cookie")
            return
        super().save_session(app, session, response)


def create_app(settings: Settings | None = None, hub: Hub | None = None) -> Flask:
    settings = settings or (hub.settings if hub else load_settings())
    logs.configure(settings.log_level)
    app = Flask(
        "idhub",
        template_folder=str(ROOT / "templates"),
        static_folder=str(Path(__file__).resolve().parent / "static"),
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SECRET_KEY_FALLBACKS=list(settings.previous_secret_keys),  # cookies signed before a rotation still open
        SESSION_COOKIE_NAME=("__Host-" if settings.cookie_secure else "") + "idhub_flash",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=256 * 1024,
        MAX_FORM_MEMORY_SIZE=256 * 1024,
        MAX_FORM_PARTS=100,
        TRAP_HTTP_EXCEPTIONS=False,
    )
    app.session_interface = FlashCookieSession()
    app.extensions["idhub"] = hub or build_hub(settings)

    from idp.web import apps, auth, invite, mfa, ops, passkeys, security
    from idp.web.common import csrf_token, error_page, new_error_id

    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(security.bp)
    app.register_blueprint(mfa.bp)
    app.register_blueprint(passkeys.bp)
    app.register_blueprint(apps.bp)
    app.register_blueprint(invite.bp)
    from oidc.web import bp as oidc_bp
    app.register_blueprint(oidc_bp)
    from scim.web import bp as scim_bp
    app.register_blueprint(scim_bp)
    from saml.web import bp as saml_bp
    app.register_blueprint(saml_bp)
    from admin import api as admin_api
    from admin.console import bp as admin_console_bp
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(admin_console_bp)
    from federation.web import bp as federation_bp
    from federation.web import install as install_federation
    app.register_blueprint(federation_bp)
    install_federation(app)

    from idp.passwords import RULES

    static_urls: dict[tuple[str, str], str] = {}

    def static_url(filename: str) -> str:
        """``url_for('static', ...)``, built once per file (and mount point): every page links the same few."""
        key = (request.script_root, filename)
        url = static_urls.get(key)
        if url is None:
            if len(static_urls) > 256:  # bounded, whatever SCRIPT_NAME a server sends
                static_urls.clear()
            url = static_urls[key] = url_for("static", filename=filename)
        return url

    app.jinja_env.globals.update(csrf_token=csrf_token, get_flashed_messages=get_flashed_messages,
                                 PASSWORD_RULES=RULES, static_url=static_url)

    metric_children: dict[tuple, tuple] = {}  # (method, route, status) -> the request counter's and histogram's

    @app.before_request
    def _start():
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = rid if REQUEST_ID_RE.match(rid) else uuid.uuid4().hex
        logs.request_id_var.set(g.request_id)
        g.t0 = time.perf_counter()
        if request.path not in UNCACHED_PATHS:  # changes made by other processes (idp.invalidation)
            app.extensions["idhub"].invalidation.check()

    @app.after_request
    def _finish(resp):
        from idp.web.common import cookie_name, set_cookie

        if g.get("csrf_new"):
            set_cookie(resp, cookie_name("idhub_csrf"), g.csrf_cookie, max_age=30 * 24 * 3600)
        h = resp.headers
        h.setdefault("Content-Security-Policy", CSP)
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        if settings.base_url.startswith("https://"):
            h["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if resp.mimetype == "text/html":
            h["Cache-Control"] = "no-store"
        h["X-Request-Id"] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        key = (request.method, endpoint, resp.status_code)
        children = metric_children.get(key)
        if children is None:  # prometheus_client's labels() takes a lock and builds the key at every call
            if len(metric_children) > 4096:
                metric_children.clear()
            children = metric_children[key] = (REQUESTS.labels(request.method, endpoint, str(resp.status_code)),
                                               LATENCY.labels(endpoint))
        children[0].inc()
        if "t0" in g:
            dt = time.perf_counter() - g.t0
            children[1].observe(dt)
            log.info("request", extra={"method": request.method, "route": endpoint, "status": resp.status_code,
                                       "ms": round(dt * 1000, 1), "ip": request.remote_addr})
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if admin_api.is_api_path(request.path):  # the admin API answers in its own JSON error format
            return admin_api.http_error(exc)
        if PROTOCOL_PATH.match(request.path):  # an app or a provisioning client: its protocol's error format
            return _protocol_error(exc)
        titles = {400: "Bad request", 403: "Forbidden", 404: "Page not found", 405: "Method not allowed",
                  413: "Request too large", 429: "Too many requests"}
        ours = exc.description and exc.description != type(exc).description  # not werkzeug's stock text
        message = exc.description if exc.code in (400, 403, 404) and ours else {
            400: "The request could not be processed.",
            403: "You are not allowed to open this page.",
            404: "There is no page at this address. Check the link, or start again from one of the pages below.",
            405: "That action is not available here.",
            413: "What you sent is too large. Shorten it and try again.",
        }.get(exc.code, "The request could not be processed.")
        return error_page(exc.code or 500, titles.get(exc.code, exc.name), message)

    def _protocol_error(exc: HTTPException):
        """A 404/405/… under a protocol URL no view matched: SCIM's error, or OAuth's JSON error."""
        return _protocol_answer(exc.code or 400, "invalid_request", exc.name)

    def _machine_unavailable(error_id: str, why: str):
        """503 for a program, in its protocol's error format (OAuth's ``temporarily_unavailable``, RFC 6749
        §4.1.2.1), with the error id to quote."""
        resp = _protocol_answer(503, "temporarily_unavailable", why, error_id=error_id)
        resp.headers["Retry-After"] = "30"
        return resp

    def _protocol_answer(status: int, oauth_error: str, description: str, error_id: str | None = None):
        """An error in the format of the protocol of the request's URL: SCIM's error schema, else OAuth's JSON."""
        if "/scim" in request.path:
            from scim.errors import ScimError
            from scim.web import _error as scim_error

            err = ScimError(f"{description} (error id {error_id})" if error_id else description)
            err.status = status
            return scim_error(err)
        body = {"error": oauth_error, "error_description": description}
        if error_id:
            body["error_id"] = error_id
        resp = jsonify(body)
        resp.status_code = status
        if status >= 500:
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        error_id = new_error_id()
        if _is_unavailable(exc):
            log.error("store unavailable", extra={"error_id": error_id, "error": type(exc).__name__,
                                                  "detail": _first_line(exc)})
            if admin_api.is_api_path(request.path):
                return admin_api.unexpected_error(error_id, True)
            if MACHINE_PATH.match(request.path):
                return _machine_unavailable(error_id, "idhub cannot reach its database or cache right now. "
                                                      "Nothing was changed. Try again in a minute.")
            resp = error_page(503, "Temporarily unavailable",
                              "idhub cannot reach its database or cache right now. Nothing was changed. "
                              "Please try again in a minute.", error_id)
            return resp[0], 503, {"Retry-After": "30"}
        if isinstance(exc, UnreadableSecret):  # e.g. a signing key sealed under a key no longer listed
            log.error("sealed value unreadable: is IDHUB_SECRET_KEY (or IDHUB_SECRET_KEY_PREVIOUS) right?",
                      extra={"error_id": error_id})
            if admin_api.is_api_path(request.path):
                return admin_api.unexpected_error(error_id, True)
            if MACHINE_PATH.match(request.path):
                return _machine_unavailable(error_id, "idhub cannot open one of its keys right now. Nothing was "
                                                      "changed. Give this error id to the IT team.")
            return error_page(503, "Temporarily unavailable", "idhub cannot open one of its keys right now. Nothing "
                              "was changed. Give this error id to your IT team.", error_id)
        log.exception("unhandled error", extra={"error_id": error_id})
        if admin_api.is_api_path(request.path):
            return admin_api.unexpected_error(error_id, False)
        return error_page(500, "Something went wrong", "An unexpected error occurred. Nothing was changed. "
                          "If it happens again, give this error id to your IT team.", error_id)

    return app
