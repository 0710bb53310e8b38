"""Issue 2, scenarios 1, 2 and 5: the Sessions section (End, End all sessions) and Sign out."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import CHROME_ANDROID, CHROME_LINUX, EDGE_WINDOWS, FIREFOX_WINDOWS, SAFARI_MAC, SIGNED_OUT

pytestmark = pytest.mark.browser


def test_end_one_other_session(ui, new_page):
    a = new_page(user_agent=CHROME_LINUX)
    ui.sign_in(a, ui.alice)
    b = new_page(user_agent=FIREFOX_WINDOWS)
    ui.sign_in(b, ui.alice)

    a.reload()
    ui.expect_security_page(a)
    expect(a.get_by_role("heading", name="Sessions")).to_be_visible()
    rows = ui.session_rows(a)
    expect(rows).to_have_count(2)
    current = rows.filter(has_text="This session")
    other = rows.filter(has_not_text="This session")
    expect(current).to_have_count(1)
    expect(other).to_have_count(1)
    # device/browser, as in "Chrome 126 on Linux"
    expect(current).to_contain_text("Chrome")
    expect(current).to_contain_text("Linux")
    expect(other).to_contain_text("Firefox")
    expect(other).to_contain_text("Windows")
    expect(other).to_contain_text("127.0.0.1")
    # the current session cannot be ended from its own row
    expect(current.get_by_role("button", name="End", exact=True)).to_have_count(0)

    other.get_by_role("button", name="End", exact=True).click()
    ui.expect_security_page(a)
    expect(ui.session_rows(a)).to_have_count(1)
    expect(ui.session_rows(a).filter(has_text="This session")).to_have_count(1)

    # B's next request finds its session gone
    b.reload()
    ui.expect_session_ended(b)
    b.goto(ui.url("/settings/security"))  # still not signed in: the security page is not shown
    expect(b).to_have_url(ui.login_url_re)
    expect(b.get_by_role("heading", name="Security", exact=True)).to_have_count(0)

    # A still works
    a.reload()
    ui.expect_security_page(a)
    expect(ui.session_rows(a)).to_have_count(1)


def test_end_all_sessions_keeps_only_the_current_one(ui, new_page):
    a = new_page(user_agent=CHROME_LINUX)
    ui.sign_in(a, ui.alice)
    c = new_page(user_agent=SAFARI_MAC)
    ui.sign_in(c, ui.alice)
    d = new_page(user_agent=EDGE_WINDOWS)
    ui.sign_in(d, ui.alice)
    # Bob's session is someone else's: Alice's "End all sessions" must not touch it
    bob = new_page(user_agent=CHROME_ANDROID)
    ui.sign_in(bob, ui.bob)

    a.reload()
    expect(ui.session_rows(a)).to_have_count(3)
    expect(ui.session_rows(a).filter(has_text="This session")).to_have_count(1)
    expect(ui.session_rows(bob)).to_have_count(1)

    a.get_by_role("button", name="End all sessions", exact=True).click()
    ui.expect_security_page(a)
    expect(ui.session_rows(a)).to_have_count(1)
    expect(ui.session_rows(a).filter(has_text="This session")).to_have_count(1)

    for signed_out in (c, d):
        signed_out.reload()
        ui.expect_session_ended(signed_out)

    a.reload()
    ui.expect_security_page(a)
    bob.reload()
    ui.expect_security_page(bob)


def test_sign_out_and_back_button(ui, new_page, new_context):
    page = new_page()
    ui.sign_in(page, ui.alice)
    cookies = page.context.cookies()

    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(ui.login_url_re)
    expect(ui.message(page, SIGNED_OUT)).to_be_visible()

    # Back must not show the security page from the cache
    page.go_back()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
    page.reload()
    expect(page).to_have_url(ui.login_url_re)
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)

    # the old session cookie is dead on the server, not only deleted in this browser
    replay = new_context()
    replay.add_cookies(cookies)
    other = replay.new_page()
    other.goto(ui.url("/settings/security"))
    expect(other).to_have_url(ui.login_url_re)
    expect(other.get_by_role("heading", name="Security", exact=True)).to_have_count(0)

    # signing in again works
    ui.sign_in(page, ui.alice)
    expect(ui.session_rows(page)).to_have_count(1)


def test_security_page_is_not_cached(ui, new_page):
    page = new_page()
    ui.sign_in(page, ui.alice)
    response = page.goto(ui.url("/settings/security"))
    assert response is not None and response.status == 200
    cache_control = response.headers.get("cache-control", "")
    assert re.search(r"no-store", cache_control), f"security page Cache-Control: {cache_control!r}"
