"""Issue 2, scenario 4: forgot password → mail over real SMTP → reset link (single use)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import RESET_DONE, RESET_INVALID, RESET_SENT

pytestmark = pytest.mark.browser

NEW_PASSWORD = "Reset-Lantern-77-Orbit!"
SUBJECT = "Reset your password"


def request_reset(ui, page, email: str) -> str:
    """From the sign-in page: Forgot password? → Email → Send reset link; returns the notice's text."""
    ui.open_login(page)
    page.get_by_role("link", name="Forgot password?").click()
    expect(page).to_have_url(re.compile(re.escape(ui.url("/password/forgot")) + r"(\?.*)?$"))
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send reset link", exact=True).click()
    notice = ui.notice(page, RESET_SENT)
    expect(notice).to_be_visible()
    return " ".join(notice.inner_text().split())


def reset_link(ui, smtp, to: str, since: int) -> str:
    msg = smtp.wait_for(to=to, subject_contains=SUBJECT, since=since, timeout=10)
    pattern = re.escape(ui.url("/password/reset/")) + r"[^\s\"'<>]+"
    return smtp.extract_link(msg, pattern)


def test_forgot_password_full_flow(ui, smtp, new_page):
    # a session from before the reset ("Choosing a new password signs you out everywhere.")
    earlier = new_page()
    ui.sign_in(earlier, ui.alice)

    since = smtp.mark()
    request_reset(ui, new_page(), ui.alice.email)
    link = reset_link(ui, smtp, ui.alice.email, since)
    assert link.startswith(ui.hub.base_url + "/"), link  # built from IDHUB_BASE_URL

    # open the link in another browser, as from a mail client
    page = new_page()
    page.goto(link)
    expect(page.get_by_label("New password", exact=True)).to_be_visible()

    # the password rules apply here too, and a refused attempt does not use up the link
    page.get_by_label("New password", exact=True).fill("password")
    page.get_by_label("Confirm new password", exact=True).fill("password")
    page.get_by_role("button", name="Reset password", exact=True).click()
    expect(ui.alert(page, re.compile(r"common", re.I))).to_be_visible()

    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Confirm new password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Reset password", exact=True).click()
    expect(page).to_have_url(ui.login_url_re)
    expect(ui.message(page, RESET_DONE)).to_be_visible()

    earlier.reload()
    ui.expect_session_ended(earlier)

    ui.sign_in(page, ui.alice, NEW_PASSWORD)
    ui.expect_sign_in_refused(new_page(), ui.alice, ui.alice.password)

    # the link is single-use
    again = new_page()
    again.goto(link)
    expect(ui.message(again, RESET_INVALID)).to_be_visible()
    expect(again.get_by_label("New password", exact=True)).to_have_count(0)
    expect(again.locator("a[href*='/password/forgot']").first).to_be_visible()


def test_forgot_password_unknown_address_looks_the_same_and_sends_nothing(ui, smtp, new_page):
    since = smtp.mark()
    known = request_reset(ui, new_page(), ui.alice.email)
    smtp.wait_for(to=ui.alice.email, subject_contains=SUBJECT, since=since)  # the SMTP path works

    for unknown in ("nobody@acme.test", "someone@elsewhere.example"):
        mark = smtp.mark()
        text = request_reset(ui, new_page(), unknown)
        assert text == known
        smtp.assert_nothing_for(to=unknown, since=mark, wait=3)
