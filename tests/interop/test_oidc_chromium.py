"""The authorization code flow in real headless Chromium: the sign-in form's POST must not be followed by a
redirect chain to the app, which Chrome blocks under CSP ``form-action 'self'`` (the resume page breaks it)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ALICE, ALICE_PW
from tests.interop.oidc_support import authorize_path, live_oidc_hub, pkce, sign_in_page

pytestmark = pytest.mark.browser


def test_code_reaches_the_app_in_chromium(browser):
    with live_oidc_hub() as hub:
        context = browser.new_context()
        try:
            page = context.new_page()
            hits, console = [], []
            page.route("http://127.0.0.1:8081/**",
                       lambda route: (hits.append(route.request.url), route.fulfill(status=200, body="app")))
            page.on("console", lambda m: console.append(m.text))
            _, challenge = pkce()
            page.goto(hub.url(authorize_path(challenge=challenge, state="chrome")))
            sign_in_page(page, ALICE, ALICE_PW)
            for _ in range(100):
                if hits:
                    break
                page.wait_for_timeout(100)
            assert len(hits) == 1, (hits, console)
            q = parse_qs(urlsplit(hits[0]).query)
            assert q["state"] == ["chrome"] and q["code"] and q["iss"] == [hub.url("/w/acme")]
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            context.close()


def test_end_session_without_hint_confirms_in_chromium(browser, tmp_path):
    """RP-initiated logout with only client_id: Chromium shows "Sign out of idhub?", pressing the button signs
    out and lands on the app's registered post-logout address with the state."""
    from urllib.parse import urlencode

    with live_oidc_hub() as hub:
        context = browser.new_context()
        try:
            page = context.new_page()
            hits = []
            page.route("http://127.0.0.1:8081/**",
                       lambda route: (hits.append(route.request.url), route.fulfill(status=200, body="app")))
            _, challenge = pkce()
            page.goto(hub.url(authorize_path(challenge=challenge, state="chrome")))
            sign_in_page(page, ALICE, ALICE_PW)
            for _ in range(100):
                if hits:
                    break
                page.wait_for_timeout(100)
            assert hits and "code=" in hits[0], hits
            page.wait_for_url("http://127.0.0.1:8081/callback?**")  # the app's page has loaded
            hits.clear()
            logout = hub.url("/w/acme/oauth2/logout?" + urlencode(
                {"client_id": "wiki", "post_logout_redirect_uri": "http://127.0.0.1:8081/", "state": "bye"}))
            page.goto(logout)
            assert page.get_by_role("heading", name="Sign out of idhub?").is_visible()
            page.screenshot(path=str(tmp_path / "oidc_logout.png"), full_page=True)
            assert not hits  # nothing happened yet
            # still signed in: the security page opens
            check = context.new_page()
            check.goto(hub.url("/w/acme/settings/security"))
            assert "/settings/security" in check.url
            check.close()
            page.get_by_role("button", name="Sign out", exact=True).last.click()
            for _ in range(100):
                if hits:
                    break
                page.wait_for_timeout(100)
            assert hits == ["http://127.0.0.1:8081/?state=bye"], hits
            check = context.new_page()
            check.goto(hub.url("/w/acme/settings/security"))
            assert "/login" in check.url
            # signed out already: the end-session endpoint just says so
            check.goto(hub.url("/w/acme/oauth2/logout"))
            assert check.get_by_role("heading", name="Signed out").is_visible()
            check.screenshot(path=str(tmp_path / "oidc_signed_out.png"), full_page=True)
        finally:
            context.close()
