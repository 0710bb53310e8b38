"""The SAML POST pages in real headless Chromium against a real ``idhub serve``: the auto-submitting form
(``templates/saml_post.html`` + ``saml-post.js``) carries the SAMLResponse to the SP's ACS under our CSP, and with
JavaScript off the Continue button is there and does the same. pysaml2 (the SP) validates what arrives."""

from __future__ import annotations

import copy
import urllib.request
from urllib.parse import parse_qs

import pytest
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG
from tests.helpers.live import LiveHub
from tests.integration.test_saml_idp import sp_client, sp_metadata

pytestmark = pytest.mark.browser

SP = "http://127.0.0.1:8082"  # never listened on: Chromium's requests to it are intercepted by the test
ACS = SP + "/saml/acs"


@pytest.fixture
def live_saml(tmp_path):
    """A real hub with pysaml2's SP registered from its metadata (its ACS on the intercepted address)."""
    hub = LiveHub(copy.deepcopy(BASE_CONFIG))
    try:
        hub.start()
        with urllib.request.urlopen(hub.url("/w/acme/saml/metadata"), timeout=10) as resp:  # noqa: S310
            metadata = resp.read().decode()
        client = sp_client(tmp_path, metadata, entity=SP + "/saml/metadata", acs=ACS, slo=SP + "/saml/slo",
                           slo_binding=BINDING_HTTP_REDIRECT)
        config = copy.deepcopy(BASE_CONFIG)
        config["workspaces"][0]["apps"] = [{"slug": "chrome-sp", "name": "Chrome SP", "protocol": "saml",
                                            "metadata_xml": sp_metadata(client)}]
        hub.apply(config)
        yield hub, client
    except BaseException:
        print(hub.log_tail())
        raise
    finally:
        hub.cleanup()


def start(hub, client, relay: str) -> tuple[str, str]:
    reqid, info = client.prepare_for_authenticate(entityid=hub.url("/w/acme/saml"), relay_state=relay,
                                                  binding=BINDING_HTTP_REDIRECT)
    return reqid, dict(info["headers"])["Location"]


def sign_in(page):
    page.get_by_label("Email").fill(ALICE)
    page.get_by_label("Password").fill(ALICE_PW)
    page.get_by_role("button", name="Sign in", exact=True).click()


def wait_for(page, hits: list):
    for _ in range(100):
        if hits:
            return
        page.wait_for_timeout(100)


@pytest.mark.parametrize("javascript", [True, False])
def test_post_page_delivers_the_response_to_the_acs(browser, live_saml, tmp_path, javascript):
    hub, client = live_saml
    context = browser.new_context(java_script_enabled=javascript)
    try:
        page = context.new_page()
        hits, console = [], []

        def acs(route):
            hits.append((route.request.method, route.request.url, route.request.post_data))
            route.fulfill(status=200, body="the app", content_type="text/plain")

        page.route(SP + "/**", acs)
        page.on("console", lambda m: console.append(m.text))
        reqid, url = start(hub, client, "chrome-rs")
        page.goto(url)
        sign_in(page)
        if not javascript:
            # the form stays: a visible, labelled button posts it
            button = page.get_by_role("button", name="Continue")
            assert button.is_visible()
            assert page.locator("h1").inner_text() == "Signed in"
            page.screenshot(path=str(tmp_path / "saml_post_nojs.png"), full_page=True)
            assert not hits
            button.click()
        wait_for(page, hits)
        assert len(hits) == 1, (hits, console)
        method, target, body = hits[0]
        assert method == "POST" and target == ACS
        form = {k: v[0] for k, v in parse_qs(body).items()}
        assert form["RelayState"] == "chrome-rs"
        resp = client.parse_authn_request_response(form["SAMLResponse"], BINDING_HTTP_POST,
                                                   outstanding={reqid: "/"})
        assert resp.name_id.text == ALICE and resp.in_response_to == reqid
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        context.close()


def test_sign_out_posts_the_logout_request_and_comes_back(browser, tmp_path):
    """Front-channel logout in Chromium: "Sign out" → idhub's page posts the signed LogoutRequest to the SP
    (saml-post.js, under the CSP); pysaml2 checks it and posts its LogoutResponse back; the browser lands on
    the sign-in page."""
    hub = LiveHub(copy.deepcopy(BASE_CONFIG))
    context = None
    try:
        hub.start()
        with urllib.request.urlopen(hub.url("/w/acme/saml/metadata"), timeout=10) as resp:  # noqa: S310
            metadata = resp.read().decode()
        client = sp_client(tmp_path, metadata, entity=SP + "/saml/metadata", acs=ACS, slo=SP + "/saml/slo",
                           slo_binding=BINDING_HTTP_POST)
        config = copy.deepcopy(BASE_CONFIG)
        config["workspaces"][0]["apps"] = [{"slug": "chrome-sp", "name": "Chrome SP", "protocol": "saml",
                                            "metadata_xml": sp_metadata(client)}]
        hub.apply(config)
        context = browser.new_context()
        page = context.new_page()
        seen, console, state = [], [], {}

        def sp_site(route):
            req = route.request
            form = {k: v[0] for k, v in parse_qs(req.post_data or "").items()}
            seen.append((req.method, req.url, sorted(form)))
            if req.url == ACS:
                resp = client.parse_authn_request_response(form["SAMLResponse"], BINDING_HTTP_POST,
                                                           outstanding={state["reqid"]: "/"})
                state["name_id"] = resp.name_id
                route.fulfill(status=200, body="signed in to the app", content_type="text/plain")
            else:  # the SingleLogoutService: pysaml2 answers with its own auto-posting form
                info = client.handle_logout_request(form["SAMLRequest"], state["name_id"], BINDING_HTTP_POST,
                                                    sign=True, relay_state=form.get("RelayState"))
                route.fulfill(status=200, body=info["data"], content_type="text/html")

        page.route(SP + "/**", sp_site)
        page.on("console", lambda m: console.append(m.text))
        state["reqid"], url = start(hub, client, "rs")
        page.goto(url)
        sign_in(page)
        page.wait_for_url(ACS)  # the app's page has loaded
        assert seen[0][1] == ACS and "name_id" in state, seen
        page.goto(hub.url("/w/acme/settings/security"))
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(hub.url("/w/acme/login"))
        assert page.get_by_text("You have signed out").is_visible()
        assert seen[1] == ("POST", SP + "/saml/slo", ["RelayState", "SAMLRequest"]), seen
        assert not client.is_logged_in(state["name_id"])  # pysaml2 accepted our signed LogoutRequest
        assert not [m for m in console if "Content Security Policy" in m], console
        page.goto(hub.url("/w/acme/settings/security"))
        assert "/w/acme/login" in page.url  # the idhub session is over too
    except BaseException:
        print(hub.log_tail())
        raise
    finally:
        if context is not None:
            context.close()
        hub.cleanup()
