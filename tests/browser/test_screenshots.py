"""Issue 2, scenario 6: screenshots of the sign-in, password and security pages for docs/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import CHROME_ANDROID, CHROME_LINUX

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

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


def _walk(ui, page, shoot):
    ui.open_login(page)
    shoot("sign-in")
    # the email alone (the password left empty) goes on to the password page, as identifier-first would
    page.get_by_label("Email").fill(ui.alice.email)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(ui.url("/login/password")) + r"\?"))
    expect(page.get_by_text(ui.alice.email).first).to_be_visible()
    shoot("password")
    page.get_by_label("Password").fill(ui.alice.password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    ui.expect_signed_in(page)
    shoot("security")
    page.goto(ui.url("/password/forgot"))
    expect(page.get_by_label("Email")).to_be_visible()
    shoot("forgot-password")


@pytest.mark.parametrize("kind", list(VIEWPORTS))
def test_screenshots(ui, new_page, kind):
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_page(**VIEWPORTS[kind])

    def shoot(name: str) -> None:
        path = OUT / f"{name}-{kind}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000

    _walk(ui, page, shoot)


@pytest.mark.parametrize("path", ["/login", "/settings/security", "/password/forgot"])
def test_phone_layout_has_no_horizontal_scroll(ui, new_page, path):
    page = new_page(**VIEWPORTS["phone"])
    if path == "/settings/security":
        ui.sign_in(page, ui.alice)
    page.goto(ui.url(path))
    expect(page.locator("body")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{path} is {overflow}px wider than a 390px phone screen"
    viewport = page.locator("meta[name=viewport]")
    expect(viewport).to_have_count(1)
    assert re.search(r"width=device-width", viewport.get_attribute("content") or "")
