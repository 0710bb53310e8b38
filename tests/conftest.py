"""Shared fixtures: an app on a fresh migrated SQLite database (or PostgreSQL/Redis when asked), a browser-like
test client that follows idhub's forms, and the mail outbox."""

from __future__ import annotations

import email
import os
import re
import secrets
from email.message import EmailMessage
from pathlib import Path

import pytest

from config.settings import Settings
from idp import schema
from idp.app import build_hub, create_app
from idp.configfile import apply, validate
from idp.passwords import Hasher

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW_RE = re.compile(r'name="flow" value="([^"]+)"')

ALICE = "alice@acme.test"
ALICE_PW = "S3cure-Example!"
BOB = "bob@acme.test"
BOB_PW = "B0b-Example-Pass!"

BASE_CONFIG = {
    "workspaces": [
        {
            "slug": "acme",
            "name": "Acme Corp",
            "plan": "enterprise",
            "domains": ["acme.test"],
            "policies": {"session_idle_timeout": "30d", "session_max_lifetime": "90d", "require_mfa_for_admins": False},
            "groups": [{"name": "engineering"}],
            "users": [
                {"email": ALICE, "name": "Alice Example", "password": ALICE_PW, "groups": ["engineering"],
                 "role": "admin"},
                {"email": BOB, "name": "Bob Example", "password": BOB_PW},
            ],
        },
        {"slug": "other", "name": "Other Inc", "plan": "free",
         "users": [{"email": ALICE, "name": "Other Alice", "password": "0ther-Workspace-Pass!"}]},
    ]
}


def fast_hasher() -> Hasher:
    """argon2id with small parameters: the suite tests behaviour, bench/ measures cost."""
    return Hasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_settings(tmp_path: Path, **kw) -> Settings:
    base = dict(
        database_url=f"sqlite:///{tmp_path}/idhub.db",
        secret_key=secrets.token_urlsafe(48),
        outbox_dir=str(tmp_path / "outbox"),
        cookie_secure=False,
        base_url="http://localhost",
        log_level="WARNING",
    )
    base.update(kw)
    return Settings(**base)


def make_app(settings: Settings, config: dict | None = None):
    schema.upgrade(settings.database_url)
    hub = build_hub(settings, hasher=fast_hasher())
    with hub.db() as db:
        apply(db, validate(config or BASE_CONFIG), hub.hasher)
        db.commit()
    app = create_app(settings, hub=hub)
    app.testing = True
    return app


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def app(settings):
    return make_app(settings)


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


class Outbox:
    def __init__(self, path: Path):
        self.path = path

    def messages(self) -> list[EmailMessage]:
        if not self.path.exists():
            return []
        out = []
        for f in sorted(self.path.glob("*.eml")):
            out.append(email.message_from_bytes(f.read_bytes(), policy=email.policy.default))
        return out

    def find(self, to: str | None = None, subject: str | None = None) -> list[EmailMessage]:
        return [m for m in self.messages()
                if (to is None or to in str(m["To"])) and (subject is None or subject in str(m["Subject"]))]

    @staticmethod
    def text(msg: EmailMessage) -> str:
        part = msg.get_body(preferencelist=("plain",))
        return part.get_content() if part else ""

    def link(self, msg: EmailMessage, pattern: str) -> str:
        m = re.search(pattern, self.text(msg))
        assert m, f"no link matching {pattern!r} in {self.text(msg)!r}"
        return m.group(0)


@pytest.fixture
def outbox(settings):
    return Outbox(Path(settings.outbox_dir))


class Browser:
    """A Flask test client that behaves like a browser filling in idhub's forms."""

    def __init__(self, app, user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                                              "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                 ip: str = "127.0.0.1"):
        self.client = app.test_client()
        self.ua = user_agent
        self.ip = ip
        self.last = None

    def _env(self, kw):
        headers = dict(kw.pop("headers", {}) or {})
        headers.setdefault("User-Agent", self.ua)
        kw["headers"] = headers
        kw.setdefault("environ_base", {"REMOTE_ADDR": self.ip})
        kw.setdefault("buffered", True)  # read the body and close the response, as a WSGI server does
        return kw

    def get(self, url, **kw):
        self.last = self.client.get(url, **self._env(kw))
        return self.last

    def post(self, url, data=None, **kw):
        self.last = self.client.post(url, data=data or {}, **self._env(kw))
        return self.last

    def csrf(self, html: str | None = None) -> str:
        html = html if html is not None else self.last.get_data(as_text=True)
        m = CSRF_RE.search(html)
        assert m, "no csrf_token on the page"
        return m.group(1)

    def form_post(self, page_url: str, action: str, fields: dict):
        """GET the page (for its CSRF token), then POST the form."""
        self.get(page_url)
        return self.post(action, {**fields, "csrf_token": self.csrf()})

    def start_login(self, ws: str, email: str, next_url: str | None = None):
        page = f"/w/{ws}/login" + (f"?next={next_url}" if next_url else "")
        r = self.form_post(page, f"/w/{ws}/login", {"email": email, **({"next": next_url} if next_url else {})})
        assert r.status_code == 302, r.get_data(as_text=True)[:500]
        return r.headers["Location"]

    def login(self, ws: str, email: str, password: str, next_url: str | None = None):
        loc = self.start_login(ws, email, next_url)
        self.get(loc)
        html = self.last.get_data(as_text=True)
        flow = FLOW_RE.search(html).group(1)
        return self.post(f"/w/{ws}/login/password", {"flow": flow, "password": password,
                                                      "csrf_token": self.csrf(html)})

    def sign_in(self, ws: str, email: str, password: str, next_url: str | None = None):
        """The one-page sign-in: email and password in the sign-in page's one POST."""
        page = f"/w/{ws}/login" + (f"?next={next_url}" if next_url else "")
        return self.form_post(page, f"/w/{ws}/login", {"email": email, "password": password,
                                                        **({"next": next_url} if next_url else {})})

    def security(self, ws: str = "acme"):
        return self.get(f"/w/{ws}/settings/security")


@pytest.fixture
def browser_factory(app):
    def make(**kw):
        return Browser(app, **kw)

    return make


# ---- real Chromium, one Playwright for the whole run ---------------------------------------------------------
# Playwright's sync API cannot be started twice in one process while the first is alive, so every suite (browser,
# interop) shares this session-scoped browser.
CHROMIUM = os.environ.get("IDHUB_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need it (apt install chromium, "
                    "or set IDHUB_TEST_CHROMIUM)", pytrace=False)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:
        pw.stop()
        pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
    yield b
    b.close()
    pw.stop()
