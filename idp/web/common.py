"""What every page shares: the current workspace and session, CSRF, client address, cookies, errors."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from functools import wraps

from flask import abort, current_app, g, redirect, render_template, request, url_for

from idp.accounts import workspace_snapshot
from idp.clientip import UntrustedAddress, client_ip
from idp.crypto import secret_keys
from idp.flow import Client

log = logging.getLogger("idhub.web")

CSRF_FIELD = "csrf_token"


def hub():
    return current_app.extensions["idhub"]


def _secure() -> bool:
    return hub().settings.cookie_secure


def cookie_name(base: str) -> str:
    return ("__Host-" if _secure() else "") + base


def session_cookie(slug: str) -> str:
    return cookie_name(f"idhub_session_{slug}")


def device_cookie(slug: str) -> str:
    """Marks a browser that completed a password sign-in (see ``Hub.device_token``)."""
    return cookie_name(f"idhub_device_{slug}")


def set_cookie(resp, name: str, value: str, max_age: int | None = None) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/", secure=_secure(), httponly=True, samesite="Lax")


def delete_cookie(resp, name: str) -> None:
    resp.delete_cookie(name, path="/", secure=_secure(), httponly=True, samesite="Lax")


# ---- client ------------------------------------------------------------------------------------
def current_client() -> Client:
    if "client" not in g:
        try:
            ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"),
                           hub().settings.trusted_proxies)
        except UntrustedAddress:
            log.warning("unparsable forwarding header from a trusted proxy")
            abort(400, description="Your request came through a proxy whose forwarding header could not be read.")
        ua = request.headers.get("User-Agent", "")[:512]
        g.client = Client(ip=ip, user_agent=ua, request_id=g.get("request_id", ""))
    return g.client


# ---- CSRF (a random cookie; the form token is an HMAC of it and of the session) ---------------------
def csrf_cookie_value() -> str:
    if "csrf_cookie" not in g:
        value = request.cookies.get(cookie_name("idhub_csrf"), "")
        if len(value) != 43:
            value = secrets.token_urlsafe(32)
            g.csrf_new = True
        g.csrf_cookie = value
    return g.csrf_cookie


def browser_binding() -> str:
    """A stable secret of this browser, for binding login flows to it."""
    return hashlib.sha256(("flow|" + csrf_cookie_value()).encode()).hexdigest()


def csrf_token(master: str | None = None) -> str:
    sess = g.get("session")
    msg = f"csrf|{csrf_cookie_value()}|{sess.id if sess else ''}".encode()
    return hmac.new((master or hub().settings.secret_key).encode(), msg, hashlib.sha256).hexdigest()


def check_csrf() -> None:
    sent = request.form.get(CSRF_FIELD, "").encode()
    # a form rendered before IDHUB_SECRET_KEY changed still posts (IDHUB_SECRET_KEY_PREVIOUS); every key is compared
    ok = [hmac.compare_digest(sent, csrf_token(k).encode()) for k in secret_keys(hub().settings)]
    if not sent or not any(ok):
        abort(400, description="Your form expired or came from another site. Go back, reload the page and try again.")


def rotate_csrf() -> None:
    """A new CSRF secret at sign-in and sign-out."""
    g.csrf_cookie = secrets.token_urlsafe(32)
    g.csrf_new = True


# ---- workspace and session -------------------------------------------------------------------------
def load_workspace(slug: str):
    with hub().read() as conn:  # no transaction around one read (PostgreSQL: one round trip, not three)
        ws = workspace_snapshot(conn, slug)
    if ws is None:
        shown = slug if len(slug) <= 63 and slug.isprintable() else slug[:63] + "…"
        abort(404, description=f"There is no workspace called '{shown}'. Check the address, or the workspace "
                               "name your IT team gave you.")
    g.workspace = ws
    current_client()  # an unreadable forwarding header from a trusted proxy denies every workspace page
    return ws


def load_session(ws):
    token = request.cookies.get(session_cookie(ws.slug))
    sess = hub().sessions.load(token, ws.id, hub().lifetimes(ws)) if token else None  # the policy as it is now
    g.session = sess
    g.session_cookie_stale = bool(token) and sess is None
    return sess


def login_required(view):
    @wraps(view)
    def wrapper(ws_slug, *a, **kw):
        ws = load_workspace(ws_slug)
        sess = load_session(ws)
        if sess is None:
            target = url_for("auth.login", ws_slug=ws.slug, next=request.full_path.rstrip("?"))
            if g.session_cookie_stale:
                target = url_for("auth.login", ws_slug=ws.slug, ended=1, next=request.full_path.rstrip("?"))
            return redirect(target)
        # Policies hold on every request of a session, not only at sign-in (e.g. the IP allowlist).
        decision = hub().session_allowed(ws, sess, current_client())
        if decision.effect == "deny":
            g.session = None
            return render_template("denied.html", ws=ws, reason=decision.reason), 403
        return view(ws, sess, *a, **kw)

    return wrapper


def safe_next(value: str | None, ws_slug: str) -> str:
    """Only same-origin paths inside the workspace; anything else falls back to the app launcher (the contract:
    after sign-in without a ``next`` target, employees land there)."""
    default = f"/w/{ws_slug}/apps"
    if not value or len(value) > 2048:
        return default
    if not value.startswith(f"/w/{ws_slug}/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 for c in value):
        return default
    return value


def new_error_id() -> str:
    return uuid.uuid4().hex[:12]


_WS_PATH = re.compile(r"^/w/([a-z0-9-]{1,63})(?:/|$)")


def _workspace_of_request():
    """The workspace the URL names (``/w/<slug>/…``), if it exists: an error page keeps it and the ways back.
    Never raises (an error page must render even when the store is down)."""
    ws = g.get("workspace")
    if ws is not None:
        return ws
    m = _WS_PATH.match(request.path)
    if m is None:
        return None
    try:
        with hub().connect() as conn:
            return workspace_snapshot(conn, m.group(1))
    except Exception:  # noqa: BLE001 - the page shows the error it was asked to show, whatever else is wrong
        return None


def _ways_back(ws, status: int) -> list[tuple[str, str]]:
    """(label, URL) of the pages to go back to from an error in ``ws``: its console when the error was in it,
    the user's apps, the workspace's sign-in page; the start page when the URL names no workspace."""
    if ws is None:
        return [("Go to the start page", "/")]
    links = []
    if request.path.startswith(f"/w/{ws.slug}/admin") and status != 403:  # not for one refused the console
        links.append(("Admin console", url_for("admin_console.dashboard", ws_slug=ws.slug)))
    links.append(("Your apps", url_for("apps.page", ws_slug=ws.slug)))
    if not request.cookies.get(session_cookie(ws.slug)):  # signed in: the apps page is the way back
        links.append((f"Sign in to {ws.name}", url_for("auth.login", ws_slug=ws.slug)))
    return links


def error_page(status: int, title: str, message: str, error_id: str | None = None):
    """The styled error page (templates/error.html): the workspace the URL names, if any, with the ways back
    to it, and an error id (the request's) to give the IT team."""
    ws = _workspace_of_request() if status != 503 else g.get("workspace")
    return render_template("error.html", status=status, title=title, message=message, ws=ws,
                           links=_ways_back(ws, status),
                           error_id=error_id or g.get("request_id") or new_error_id()), status
