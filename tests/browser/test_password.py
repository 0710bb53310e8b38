"""Issue 2, scenario 3: changing the password ends the other sessions; the password rules are enforced."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import CHROME_LINUX, FIREFOX_WINDOWS

pytestmark = pytest.mark.browser

NEW_PASSWORD = "Fresh-Horse-42-Battery!"


def test_change_password_signs_out_other_sessions(ui, new_page):
    a = new_page(user_agent=CHROME_LINUX)
    ui.sign_in(a, ui.alice)
    b = new_page(user_agent=FIREFOX_WINDOWS)
    ui.sign_in(b, ui.alice)

    a.reload()
    expect(a.get_by_role("heading", name="Password", exact=True)).to_be_visible()
    ui.change_password(a, ui.alice.password, NEW_PASSWORD)
    ui.expect_security_page(a)
    expect(ui.notice(a, re.compile(r"password", re.I))).to_be_visible()
    expect(a.get_by_role("alert")).to_have_count(0)

    # B is signed out on its next request; A is not
    b.reload()
    ui.expect_session_ended(b)
    a.reload()
    ui.expect_security_page(a)
    expect(ui.session_rows(a)).to_have_count(1)

    # the old password no longer works, the new one does
    ui.expect_sign_in_refused(new_page(), ui.alice, ui.alice.password)
    ui.sign_in(new_page(), ui.alice, NEW_PASSWORD)


# (new password, what the refusal must name)
WEAK = [
    pytest.param("password", r"common", id="common"),
    pytest.param("Password1!", r"common", id="common-with-classes"),
    pytest.param("Sh0rt!x", r"8 characters|at least 8|too short", id="short"),
    pytest.param("alllowercase1!", r"upper", id="no-uppercase"),
    pytest.param("ALLUPPERCASE1!", r"lower", id="no-lowercase"),
    pytest.param("No-Digits-Here!", r"number|digit", id="no-number"),
    pytest.param("NoSpecials12345", r"special|symbol", id="no-special"),
]


@pytest.mark.parametrize(("weak", "rule"), WEAK)
def test_password_rules_are_enforced_and_nothing_changes(ui, new_page, weak, rule):
    # Without JavaScript the server's own checks answer (no live checklist can stop the form).
    a = new_page(user_agent=CHROME_LINUX, java_script_enabled=False)
    ui.sign_in(a, ui.alice)
    b = new_page(user_agent=FIREFOX_WINDOWS)
    ui.sign_in(b, ui.alice)

    a.reload()
    ui.change_password(a, ui.alice.password, weak)
    expect(ui.alert(a, re.compile(rule, re.I))).to_be_visible()
    ui.expect_security_page(a)

    # nothing changed: B is still signed in, the old password still works, the weak one does not
    b.reload()
    ui.expect_security_page(b)
    ui.expect_sign_in_refused(new_page(), ui.alice, weak)
    ui.sign_in(new_page(), ui.alice)


def test_wrong_current_password_or_mismatch_is_refused(ui, new_page):
    a = new_page(java_script_enabled=False)
    ui.sign_in(a, ui.alice)

    ui.change_password(a, "not-my-Password-1!", NEW_PASSWORD)
    expect(ui.alert(a, re.compile(r"current password|incorrect|wrong", re.I))).to_be_visible()
    ui.expect_security_page(a)

    ui.change_password(a, ui.alice.password, NEW_PASSWORD, confirm=NEW_PASSWORD + "x")
    expect(ui.alert(a, re.compile(r"match", re.I))).to_be_visible()
    ui.expect_security_page(a)

    ui.expect_sign_in_refused(new_page(), ui.alice, NEW_PASSWORD)
    ui.sign_in(new_page(), ui.alice)
