"""The authorization code flow in real headless Chromium: the sign-in form's POST must not be followed by a
redirect chain to the app, which Chrome blocks under CSP ``form-action 'self'`` (the resume page breaks it)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ALICE, ALICE_PW
from tests.interop.oidc_support import authorize_path, live_oidc_hub, pkce

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
            page.get_by_label("Email").fill(ALICE)
            page.get_by_role("button", name="Continue").click()
            page.get_by_label("Password").fill(ALICE_PW)
            page.get_by_role("button", name="Sign in").click()
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
