"""Shared helpers of the OIDC tests: a hub with OIDC apps, PKCE, and a browser that signs in through the real pages."""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import re
import secrets
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from idp.accounts import workspace_by_slug
from idp.configfile import validate
from idp.db import Base
from oidc.config import apply_oidc_apps
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, make_app

WIKI_SECRET = "wiki-" + "s" * 40
POST_SECRET = "post-" + "p" * 40
OTHER_SECRET = "other-" + "o" * 40
WIKI_CB = "http://127.0.0.1:8081/callback"
WIKI_HOME = "http://127.0.0.1:8081/"
SPA_CB = "http://127.0.0.1:8082/cb"

APPS = [
    {"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki", "client_secret": WIKI_SECRET,
     "redirect_uris": [WIKI_CB], "post_logout_redirect_uris": [WIKI_HOME],
     "backchannel_logout_uri": "http://127.0.0.1:8081/backchannel-logout",
     "grant_types": ["authorization_code", "refresh_token", "client_credentials"]},
    {"slug": "spa", "name": "SPA", "protocol": "oidc", "client_id": "spa", "redirect_uris": [SPA_CB],
     "grant_types": ["authorization_code", "refresh_token"]},
    {"slug": "poster", "name": "Poster", "protocol": "oidc", "client_id": "poster", "client_secret": POST_SECRET,
     "token_endpoint_auth_method": "client_secret_post", "redirect_uris": ["https://poster.example/cb"],
     "grant_types": ["authorization_code", "client_credentials"]},
    {"slug": "strict", "name": "Strict", "protocol": "oidc", "client_id": "strict", "client_secret": "x" * 40,
     "redirect_uris": ["https://strict.example/cb"], "require_mfa": True},
    {"slug": "payroll", "name": "Payroll", "protocol": "saml", "entity_id": "https://payroll.example",
     "acs_url": "https://payroll.example/acs"},
]


def sign_in_page(page, email: str = ALICE, password: str = ALICE_PW) -> None:
    """Fill idhub's sign-in page (one page: email and password) in a Playwright ``page`` that is on it."""
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def oidc_config(extra_policies: dict | None = None) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["apps"] = copy.deepcopy(APPS)
    if extra_policies:
        cfg["workspaces"][0]["policies"].update(extra_policies)
    cfg["workspaces"][1]["apps"] = [
        {"slug": "wiki", "name": "Other wiki", "protocol": "oidc", "client_id": "wiki",
         "client_secret": OTHER_SECRET, "redirect_uris": [WIKI_CB],
         "grant_types": ["authorization_code", "refresh_token", "client_credentials"]}]
    return cfg


def ensure_oidc_tables(engine) -> None:
    """Until the lead's Alembic revision includes them (create_all is a no-op for existing tables)."""
    import oidc.models  # noqa: F401

    tables = [t for name, t in Base.metadata.tables.items() if name.startswith("oidc_")]
    Base.metadata.create_all(engine, tables=tables)


def apply_apps(db, config: dict) -> None:
    """What ``idp.configfile.apply`` will do once the lead wires ``apply_oidc_apps`` in."""
    for w in validate(config):
        ws = workspace_by_slug(db, w["slug"])
        apply_oidc_apps(db, ws, w["apps"])
    db.commit()


def make_oidc_app(settings, config: dict | None = None):
    config = config or oidc_config()
    app = make_app(settings, config)
    hub = app.extensions["idhub"]
    ensure_oidc_tables(hub.engine)
    with hub.db() as db:
        apply_apps(db, config)
    return app


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_path(ws="acme", client_id="wiki", redirect_uri=WIKI_CB, scope="openid profile email groups",
                   challenge=None, method="S256", **extra) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
              "state": extra.pop("state", "st-" + secrets.token_hex(4)),
              "nonce": extra.pop("nonce", "n-" + secrets.token_hex(8))}
    if challenge is not None:
        params["code_challenge"] = challenge
    if method is not None and challenge is not None:
        params["code_challenge_method"] = method
    params.update(extra)
    params = {k: v for k, v in params.items() if v is not None}
    return f"/w/{ws}/oauth2/authorize?" + urlencode(params)


HIDDEN_RE = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def hidden_fields(page: str) -> dict:
    return {k: html.unescape(v) for k, v in HIDDEN_RE.findall(page)}


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def browser_authorize(browser, path: str, email=ALICE, password=ALICE_PW, ws="acme") -> str:
    """GET the authorize URL; sign in through the pages if asked; return the final redirect to the app."""
    r = browser.get(path)
    for _ in range(6):
        if r.status_code == 403 and BACK_RE.search(r.get_data(as_text=True)):  # "You don't have access to …"
            return html.unescape(BACK_RE.search(r.get_data(as_text=True)).group(1))
        assert r.status_code == 302, r.get_data(as_text=True)[:800]
        loc = r.headers["Location"]
        if not loc.startswith("/") and not loc.startswith("http://localhost/"):
            return loc
        loc = loc.removeprefix("http://localhost")
        if urlsplit(loc).path == f"/w/{ws}/login":
            page = browser.get(loc).get_data(as_text=True)
            fields = hidden_fields(page)
            r = browser.post(f"/w/{ws}/login", {**fields, "email": email})
            assert r.status_code == 302, r.get_data(as_text=True)[:800]
            page = browser.get(r.headers["Location"]).get_data(as_text=True)
            r = browser.post(f"/w/{ws}/login/password", {**hidden_fields(page), "password": password})
            continue
        r = browser.get(loc)
        if r.status_code == 200 and urlsplit(loc).path.endswith("/oauth2/resume"):
            r = browser.get(resume_target(r.get_data(as_text=True)))
    raise AssertionError("too many redirects")


META_RE = re.compile(r'<meta http-equiv="refresh" content="0;url=([^"]+)">')
BACK_RE = re.compile(r'<a class="button-link primary" id="back-to-app" href="([^"]+)">')  # the no-access page


def resume_target(page: str) -> str:
    """The authorization URL the resume page (after a sign-in) navigates to."""
    m = META_RE.search(page)
    assert m, page[:500]
    return html.unescape(m.group(1))


@contextmanager
def live_oidc_hub(config: dict | None = None, extra_env: dict[str, str] | None = None, host: str | None = None):
    """A real ``idhub serve`` with the OIDC tables and apps (the set-up the lead's migration and
    ``idhub apply`` will do by themselves). ``host``: the name in its public URL (``localhost`` for WebAuthn,
    whose relying party ID cannot be an IP address)."""
    from sqlalchemy.orm import sessionmaker

    from idp.db import make_engine
    from tests.helpers.live import LiveHub

    hub = LiveHub(config or oidc_config(), extra_env=extra_env)
    if host:
        hub.base_url = f"http://{host}:{hub.port}"
    try:
        hub.run("db", "upgrade")
        engine = make_engine(hub.database_url)
        ensure_oidc_tables(engine)
        hub.apply(hub.config)
        with sessionmaker(bind=engine)() as db:
            apply_apps(db, hub.config)
        engine.dispose()
        hub._serve()
        yield hub
    except BaseException:
        print(hub.log_tail())
        raise
    finally:
        hub.cleanup()


class Receiver:
    """An app's back-channel logout endpoint: records every POSTed ``logout_token``. It also stands in for the
    app's pages (``page_url``): every GET is recorded in ``pages`` (a redirect_uri a real browser lands on)."""

    def __init__(self):
        self.tokens: list[str] = []
        self.requests: list[dict] = []
        self.pages: list[str] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path == "/favicon.ico":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.pages.append(outer.base + self.path)
                body = b'<!doctype html><title>app</title><link rel="icon" href="data:,"><p>app'
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                outer.requests.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": body})
                outer.tokens += parse_qs(body).get("logout_token", [])
                self.send_response(200)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.got.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + "/backchannel-logout"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def page_url(self, path: str) -> str:
        return self.base + path

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
