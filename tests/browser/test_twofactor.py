"""Issue 3: two-factor authentication in real Chromium (authenticator app, backup codes, disable, SMS) and
screenshots of the 2FA pages for docs/screenshots/."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Page, expect

from .conftest import CHROME_ANDROID, CHROME_LINUX, SIGNED_OUT, Ui, acme_config

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
STEP = 30  # seconds per TOTP time step
PHONE = "+1 202 555 0143"
PHONE_E164 = "+12025550143"


# ---- time steps: a TOTP code is accepted once per 30-second step --------------------------------------------
def current_step() -> int:
    return int(time.time()) // STEP


def wait_for_step_after(step: int, limit: float = STEP + 5) -> int:
    """Block until the TOTP time step is later than ``step`` (at most one step's wait); the new step."""
    deadline = time.monotonic() + limit
    while current_step() <= step:
        assert time.monotonic() < deadline, f"the time step did not move past {step} within {limit}s"
        time.sleep(0.1)
    return current_step()


def code_now(totp: pyotp.TOTP) -> tuple[str, int]:
    """The current code and the step it belongs to (read from one clock sample)."""
    t = time.time()
    return totp.at(t), int(t) // STEP


# ---- page actions ---------------------------------------------------------------------------------------------
def two_factor_section(page: Page):
    return page.get_by_role("region", name="Two-factor authentication")


def confirm_password_if_asked(ui: Ui, page: Page, landing_heading: str) -> None:
    """Security changes ask for the password again unless it was confirmed in the last 10 minutes."""
    reauth = page.get_by_role("heading", name="Confirm it's you")
    landing = page.get_by_role("heading", name=landing_heading, exact=True)
    expect(reauth.or_(landing)).to_be_visible()
    if reauth.is_visible():
        expect(page.get_by_text("Enter your password to change your security settings.")).to_be_visible()
        page.get_by_label("Password").fill(ui.alice.password)
        page.get_by_role("button", name="Confirm", exact=True).click()
    expect(landing).to_be_visible()


def open_enable_2fa(ui: Ui, page: Page) -> None:
    ui.open_security(page)
    section = two_factor_section(page)
    expect(section).to_contain_text("Two-factor authentication is off")
    section.get_by_role("link", name="Enable 2FA").click()
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()  # a fresh session: always asked
    confirm_password_if_asked(ui, page, "Enable 2FA")


def read_backup_codes(page: Page) -> list[str]:
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    items = page.get_by_role("list", name="Backup codes").get_by_role("listitem")
    expect(items).to_have_count(10)
    codes = [c.strip() for c in items.all_inner_texts()]
    assert len(set(codes)) == 10 and all(codes), codes
    return codes


def enable_totp(ui: Ui, page: Page, shoot=None) -> tuple[pyotp.TOTP, list[str], int]:
    """Enable 2FA with an authenticator app from the security page: (totp, backup codes, step of the code used)."""
    open_enable_2fa(ui, page)
    page.get_by_role("link", name="Authenticator App").click()
    expect(page.get_by_role("heading", name="Set up an authenticator app")).to_be_visible()
    expect(page.get_by_role("figure", name="QR code for your authenticator app").locator("svg")).to_be_visible()
    secret_el = page.locator("code.secret[data-secret]")
    expect(secret_el).to_be_visible()
    secret = secret_el.inner_text().strip().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    totp = pyotp.TOTP(secret)
    if shoot:
        shoot("totp-setup")
    code, step = code_now(totp)
    page.get_by_label("Verification code").fill(code)
    page.get_by_role("button", name="Verify", exact=True).click()
    codes = read_backup_codes(page)
    if shoot:
        shoot("backup-codes")
    page.get_by_role("link", name="Done").click()
    ui.expect_security_page(page)
    expect_2fa_on(page)
    return totp, codes, step


def expect_2fa_on(page: Page) -> None:
    section = two_factor_section(page)
    expect(section).to_contain_text("Two-factor authentication is on")
    expect(section.get_by_role("link", name="Disable 2FA")).to_be_visible()
    expect(section.get_by_role("link", name="Generate new codes")).to_be_visible()


def sign_out(ui: Ui, page: Page) -> None:
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(ui.login_url_re)
    expect(ui.message(page, SIGNED_OUT)).to_be_visible()


def password_step_to_second_factor(ui: Ui, page: Page) -> None:
    ui.submit_credentials(page, ui.alice)
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/mfa")) + r"\?"))
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)


def submit_code(page: Page, label: str, code: str) -> None:
    page.get_by_label(label, exact=True).fill(code)
    page.get_by_role("button", name="Verify", exact=True).click()


def choose_other_way(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Other ways to verify").get_by_role("link", name=name, exact=True).click()


def expect_code_refused(ui: Ui, page: Page) -> None:
    expect(ui.alert(page, "not valid")).to_be_visible()
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)


# ---- 1. authenticator app ------------------------------------------------------------------------------------
def test_enable_authenticator_app_and_sign_in_with_a_code_once(ui, new_page):
    page = new_page()
    ui.sign_in(page, ui.alice)
    totp, codes, enrol_step = enable_totp(ui, page)
    sign_out(ui, page)

    # the code used at enrolment is spent: sign in with the next step's code
    wait_for_step_after(enrol_step)
    password_step_to_second_factor(ui, page)
    expect(page.get_by_text("Open your authenticator app and enter the 6-digit code")).to_be_visible()
    code, _ = code_now(totp)
    submit_code(page, "Code from your authenticator app", code)
    ui.expect_signed_in(page)
    expect_2fa_on(page)

    # the same code from another browser: refused
    other = new_page()
    password_step_to_second_factor(ui, other)
    submit_code(other, "Code from your authenticator app", code)
    expect_code_refused(ui, other)
    other.goto(ui.url("/settings/security"))
    expect(other).to_have_url(ui.login_url_re)

    # the first browser is still signed in
    page.reload()
    ui.expect_security_page(page)


# ---- 2. backup codes -----------------------------------------------------------------------------------------
def test_backup_code_signs_in_once(ui, new_page):
    page = new_page()
    ui.sign_in(page, ui.alice)
    _, codes, _ = enable_totp(ui, page)
    expect(two_factor_section(page)).to_contain_text("Backup codes: 10 left")
    sign_out(ui, page)

    password_step_to_second_factor(ui, page)
    choose_other_way(page, "Backup code")
    expect(page.get_by_text("Enter one of the backup codes you saved")).to_be_visible()
    submit_code(page, "Backup code", codes[0])
    ui.expect_signed_in(page)
    expect(two_factor_section(page)).to_contain_text("Backup codes: 9 left")

    other = new_page()
    password_step_to_second_factor(ui, other)
    choose_other_way(other, "Backup code")
    submit_code(other, "Backup code", codes[0])
    expect_code_refused(ui, other)

    # another, unused code still works there
    submit_code(other, "Backup code", codes[1])
    ui.expect_signed_in(other)
    expect(two_factor_section(other)).to_contain_text("Backup codes: 8 left")


# ---- 3. disable ------------------------------------------------------------------------------------------------
def test_disable_2fa_with_a_current_code(ui, new_page):
    page = new_page()
    ui.sign_in(page, ui.alice)
    totp, _, enrol_step = enable_totp(ui, page)

    two_factor_section(page).get_by_role("link", name="Disable 2FA").click()
    confirm_password_if_asked(ui, page, "Disable two-factor authentication")
    # a wrong code first: refused, 2FA stays on
    submit_label = "Code from your authenticator app"
    page.get_by_label(submit_label, exact=True).fill("000000" if totp.now() != "000000" else "111111")
    page.get_by_role("button", name="Disable 2FA", exact=True).click()
    expect(ui.alert(page, "not valid")).to_be_visible()
    expect(page.get_by_role("heading", name="Disable two-factor authentication")).to_be_visible()

    wait_for_step_after(enrol_step)
    code, _ = code_now(totp)
    page.get_by_label(submit_label, exact=True).fill(code)
    page.get_by_role("button", name="Disable 2FA", exact=True).click()
    ui.expect_security_page(page)
    expect(ui.notice(page, "Two-factor authentication is off.")).to_be_visible()
    section = two_factor_section(page)
    expect(section).to_contain_text("Two-factor authentication is off")
    expect(section.get_by_role("link", name="Enable 2FA")).to_be_visible()
    expect(section.get_by_role("link", name="Disable 2FA")).to_have_count(0)

    # sign-in no longer asks for a code
    sign_out(ui, page)
    ui.sign_in(page, ui.alice)
    expect(page.get_by_role("heading", name="Two-step verification")).to_have_count(0)
    other = new_page()
    ui.sign_in(other, ui.alice)


# ---- 4. SMS ----------------------------------------------------------------------------------------------------
class SmsGateway:
    """A real HTTP endpoint standing in for the SMS provider: records the JSON ``{"to", "message"}`` bodies."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with gateway.lock:
                    gateway.messages.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def code_after(self, seen: int, to: str, timeout: float = 10) -> str:
        """The 6-digit code of the first message to ``to`` after the first ``seen`` messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                fresh = [m for m in self.messages[seen:] if m.get("to") == to]
            if fresh:
                m = re.search(r"\b(\d{6})\b", fresh[-1]["message"])
                assert m, f"no 6-digit code in the text message: {fresh[-1]!r}"
                return m[1]
            time.sleep(0.05)
        raise AssertionError(f"no text message to {to} within {timeout}s; got {self.messages!r}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    g = SmsGateway()
    yield g
    g.stop()


def test_enrol_sms_and_sign_in_with_a_texted_code(hub_factory, new_page, gateway):
    hub = hub_factory(acme_config(), extra_env={"IDHUB_SMS_WEBHOOK_URL": gateway.url})
    ui = Ui(hub)
    page = new_page()
    ui.sign_in(page, ui.alice)
    open_enable_2fa(ui, page)
    page.get_by_role("link", name=re.compile(r"^SMS\b")).click()
    expect(page.get_by_role("heading", name="Set up text-message codes")).to_be_visible()
    expect(page.get_by_text("SIM swapping").first).to_be_visible()

    seen = gateway.count()
    page.get_by_label("Phone number").fill(PHONE)
    page.get_by_role("button", name="Send code", exact=True).click()
    expect(ui.notice(page, "We sent a 6-digit code to")).to_be_visible()
    code = gateway.code_after(seen, PHONE_E164)
    page.get_by_label("Verification code from the text message").fill(code)
    page.get_by_role("button", name="Verify", exact=True).click()
    read_backup_codes(page)
    page.get_by_role("link", name="Done").click()
    ui.expect_security_page(page)
    expect_2fa_on(page)
    expect(two_factor_section(page)).to_contain_text("Authenticator app: not set up")
    expect(two_factor_section(page)).not_to_contain_text(PHONE_E164)  # the number is shown masked
    sign_out(ui, page)

    password_step_to_second_factor(ui, page)
    # an SMS-only user is asked for a texted code first, to the masked number
    expect(page.get_by_text("We send a 6-digit code to your phone")).to_be_visible()
    expect(page.get_by_text(PHONE_E164)).to_have_count(0)
    expect(page.get_by_label("Code from the text message")).to_have_count(0)  # nothing to enter before sending
    seen = gateway.count()
    page.get_by_role("button", name="Send code", exact=True).click()
    expect(ui.notice(page, "We sent a code to")).to_be_visible()
    code = gateway.code_after(seen, PHONE_E164)
    submit_code(page, "Code from the text message", code)
    ui.expect_signed_in(page)
    expect_2fa_on(page)


# ---- 7. screenshots --------------------------------------------------------------------------------------------
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}, "user_agent": CHROME_LINUX},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
        "user_agent": CHROME_ANDROID,
    },
}


@pytest.mark.parametrize("kind", list(VIEWPORTS))
def test_twofactor_screenshots(ui, new_page, kind):
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_page(**VIEWPORTS[kind])
    overflow: dict[str, int] = {}

    def shoot(name: str) -> None:
        path = OUT / f"{name}-{kind}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        overflow[name] = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    ui.sign_in(page, ui.alice)
    enable_totp(ui, page, shoot=shoot)
    page.locator("#two-factor").scroll_into_view_if_needed()
    shoot("security-2fa-on")
    sign_out(ui, page)
    password_step_to_second_factor(ui, page)
    expect(page.get_by_label("Code from your authenticator app")).to_be_visible()
    shoot("two-step-verification")

    wide = {name: px for name, px in overflow.items() if px > 0}
    assert not wide, f"pages wider than the {kind} screen (px): {wide}"
