"""Fixtures for the browser suite.

- ``smtp``: a real SMTP server for the whole session (``tests.helpers.smtp.SmtpSink``).
- ``hub``: a fresh idhub process per test (own database), with workspace ``acme`` and users alice and bob.
  ``hub_factory(config)`` starts one with another config. $IDHUB_TEST_DATABASE_URL (a PostgreSQL server URL)
  gives each hub a throwaway database there instead of SQLite; $IDHUB_TEST_REDIS_URL sets IDHUB_REDIS_URL.
- ``browser``: headless Chromium, shared with every suite (tests/conftest.py). Missing Chromium FAILS.
- ``new_context(**options)`` / ``new_page(**options)``: a fresh browser context each time, i.e. a separate
  cookie jar = a separate device. On failure every open page is saved to tests/browser/artifacts/.
- ``ui``: page actions and expectations written against docs/pages.md (labels, buttons, messages).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

try:  # tests/ is on sys.path when tests/ is not a package (pytest's rootdir-less "prepend" import mode)
    from helpers.live import LiveHub, fresh_postgres_database
    from helpers.smtp import SmtpSink
except ImportError:  # tests/ is a package
    from tests.helpers.live import LiveHub, fresh_postgres_database
    from tests.helpers.smtp import SmtpSink

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"

TIMEOUT_MS = int(os.environ.get("IDHUB_TEST_TIMEOUT_MS", "15000"))

# User agents: each context can look like a different device in the Sessions table.
CHROME_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    name: str


ALICE = Account("alice@acme.test", "S3cure-Example!", "Alice Example")
BOB = Account("bob@acme.test", "B0b-Example-Pass?", "Bob Example")


def acme_config() -> dict:
    return {
        "workspaces": [
            {
                "slug": "acme",
                "name": "Acme Corp",
                "plan": "enterprise",
                "domains": ["acme.test"],
                "policies": {"require_mfa": False},
                "users": [
                    {"email": ALICE.email, "name": ALICE.name, "password": ALICE.password, "role": "member"},
                    {"email": BOB.email, "name": BOB.name, "password": BOB.password, "role": "member"},
                ],
            }
        ]
    }


# ----------------------------------------------------------------------------------------------------------
# reports: keep each phase's report on the item; attach the hub's log to a failing test's report
_reports = pytest.StashKey[dict]()
_hubs = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    item.stash.setdefault(_reports, {})[rep.when] = rep
    if rep.failed and rep.when == "call":  # a hub that fails to start says why in its own error
        for i, hub in enumerate(item.stash.get(_hubs, [])):
            rep.sections.append((f"idhub #{i} ({hub.base_url}) log", hub.log_tail()))
    return rep


def _failed(node) -> bool:
    reps = node.stash.get(_reports, {})
    return any(r.failed for r in reps.values())


# ----------------------------------------------------------------------------------------------------------
# servers
@pytest.fixture(scope="session")
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def hub_factory(request, smtp):
    started: list[LiveHub] = []
    request.node.stash[_hubs] = started
    cleanups = []

    def make(config: dict | None = None, **kwargs) -> LiveHub:
        if config is None:
            config = acme_config()
        kwargs.setdefault("smtp_url", smtp.url)
        kwargs.setdefault("redis_url", os.environ.get("IDHUB_TEST_REDIS_URL") or None)
        pg = os.environ.get("IDHUB_TEST_DATABASE_URL")
        if pg and "database_url" not in kwargs:
            cm = fresh_postgres_database(pg)
            kwargs["database_url"] = cm.__enter__()
            cleanups.append(cm)
        hub = LiveHub(config, **kwargs)
        started.append(hub)
        hub.start()
        return hub

    yield make
    for hub in started:
        hub.cleanup()
    for cm in reversed(cleanups):
        cm.__exit__(None, None, None)


@pytest.fixture
def hub(hub_factory) -> LiveHub:
    return hub_factory()


# ----------------------------------------------------------------------------------------------------------
# browser
@pytest.fixture
def new_context(request, browser: Browser):
    contexts: list[BrowserContext] = []

    def make(**options) -> BrowserContext:
        options.setdefault("user_agent", CHROME_LINUX)
        options.setdefault("locale", "en-US")
        options.setdefault("timezone_id", "UTC")
        ctx = browser.new_context(**options)
        ctx.set_default_timeout(TIMEOUT_MS)
        ctx.set_default_navigation_timeout(TIMEOUT_MS)
        # A confirm() before a destructive action is accepted, as a user would (Playwright dismisses it).
        ctx.on("page", lambda p: p.on("dialog", lambda d: d.accept()))
        contexts.append(ctx)
        return ctx

    yield make
    if _failed(request.node):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        for i, ctx in enumerate(contexts):
            for j, page in enumerate(ctx.pages):
                base = ARTIFACTS / f"{stem}-ctx{i}-page{j}"
                try:
                    page.screenshot(path=f"{base}.png", full_page=True)
                    base.with_suffix(".html").write_text(f"<!-- {page.url} -->\n{page.content()}")
                    print(f"saved {base}.png ({page.url})")
                except Exception as exc:  # a crashed page must not hide the real failure
                    print(f"could not save {base}.png: {exc}")
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def new_page(new_context):
    def make(**options) -> Page:
        return new_context(**options).new_page()

    return make


# ----------------------------------------------------------------------------------------------------------
# page actions, written against docs/pages.md
SESSION_ENDED = "Your session has ended. Please sign in again."
SIGNED_OUT = "You have signed out."
INCORRECT = "Incorrect email or password."
RESET_SENT = (
    "If an account exists for that address, we have sent a link to reset its password. The link expires in 24 hours."
)
RESET_DONE = "Your password has been reset. Sign in with your new password."
RESET_INVALID = "This reset link is invalid or has expired."


class Ui:
    alice = ALICE
    bob = BOB

    def __init__(self, hub: LiveHub, ws: str = "acme", ws_name: str = "Acme Corp") -> None:
        self.hub = hub
        self.ws = ws
        self.ws_name = ws_name

    # urls
    def url(self, path: str) -> str:
        return self.hub.url(f"/w/{self.ws}{path}")

    @property
    def login_url_re(self) -> re.Pattern:
        return re.compile(re.escape(self.url("/login")) + r"(\?.*)?$")

    @property
    def security_url_re(self) -> re.Pattern:
        # a form re-rendered with errors may stay at its action URL (/settings/security/password)
        return re.compile(re.escape(self.url("/settings/security")) + r"(/[\w-]+)*(\?.*)?(#.*)?$")

    # messages (role=alert for errors, role=status for notices)
    @staticmethod
    def alert(page: Page, text: str | re.Pattern) -> Locator:
        return page.get_by_role("alert").filter(has_text=text).first

    @staticmethod
    def notice(page: Page, text: str | re.Pattern) -> Locator:
        return page.get_by_role("status").filter(has_text=text).first

    @staticmethod
    def message(page: Page, text: str | re.Pattern) -> Locator:
        return page.get_by_role("alert").or_(page.get_by_role("status")).filter(has_text=text).first

    # sign-in
    def open_login(self, page: Page) -> None:
        page.goto(self.url("/login"))
        expect(page.get_by_role("heading", name=f"Sign in to {self.ws_name}")).to_be_visible()

    def submit_credentials(self, page: Page, account: Account | str, password: str | None = None) -> None:
        email = account if isinstance(account, str) else account.email
        password = password if password is not None else account.password
        self.open_login(page)
        page.get_by_label("Email").fill(email)  # one page: no connection claims an email domain here
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in", exact=True).click()

    def sign_in(self, page: Page, account: Account | str, password: str | None = None, *,
                security: bool = True) -> None:
        """Sign in: employees land on the app launcher (the contract); then, unless ``security=False``, open the
        security page, where most walks go on."""
        self.submit_credentials(page, account, password)
        self.expect_signed_in(page, security=security)

    def expect_signed_in(self, page: Page, *, security: bool = True) -> None:
        """A sign-in without a ``next`` target finished: the launcher; then (``security``) the security page."""
        self.expect_launcher_page(page)
        if security:
            self.open_security(page)

    @property
    def launcher_url_re(self) -> re.Pattern:
        return re.compile(re.escape(self.url("/apps")) + r"(\?.*)?$")

    def expect_launcher_page(self, page: Page) -> None:
        expect(page).to_have_url(self.launcher_url_re)
        expect(page.get_by_role("heading", name="Apps", exact=True)).to_be_visible()

    def expect_sign_in_refused(self, page: Page, account: Account | str, password: str) -> None:
        self.submit_credentials(page, account, password)
        expect(self.alert(page, INCORRECT)).to_be_visible()
        expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)

    # security page
    def expect_security_page(self, page: Page) -> None:
        expect(page).to_have_url(self.security_url_re)
        expect(page.get_by_role("heading", name="Security", exact=True)).to_be_visible()

    def open_security(self, page: Page) -> None:
        page.goto(self.url("/settings/security"))
        self.expect_security_page(page)

    def expect_session_ended(self, page: Page) -> None:
        expect(page).to_have_url(self.login_url_re)
        expect(self.message(page, SESSION_ENDED)).to_be_visible()
        expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)

    @staticmethod
    def sessions_table(page: Page) -> Locator:
        return page.get_by_role("table").filter(has_text="This session")

    def session_rows(self, page: Page) -> Locator:
        """The Sessions table's data rows (rows with cells, not the header row)."""
        return self.sessions_table(page).get_by_role("row").filter(has=page.get_by_role("cell"))

    def change_password(self, page: Page, current: str, new: str, confirm: str | None = None) -> None:
        page.get_by_label("Current password", exact=True).fill(current)
        page.get_by_label("New password", exact=True).fill(new)
        page.get_by_label("Confirm new password", exact=True).fill(new if confirm is None else confirm)
        page.get_by_role("button", name="Change password", exact=True).click()


@pytest.fixture
def ui(hub) -> Ui:
    return Ui(hub)
