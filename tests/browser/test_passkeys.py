"""Passkeys in real Chromium with its virtual authenticator (DevTools WebAuthn domain: CTAP2, a resident key, user
verification): add one on the security page, sign in with password + passkey, sign in without a password, remove
it; an assertion made for another origin, a replayed assertion and a counter going backwards are refused.

WebAuthn needs a secure context and a domain as RP ID, so the hub is served as http://localhost:<port>."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from idp.mfa import passkeys as pk

from .conftest import ALICE, Ui, acme_config

try:
    from helpers.live import LiveHub, fresh_postgres_database
except ImportError:
    from tests.helpers.live import LiveHub, fresh_postgres_database

pytestmark = pytest.mark.browser

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"



def click_passkey_button(page: Page) -> None:
    """Click "Sign in with a passkey" — unless the page's passkey autofill (conditional mediation, which Chromium's
    virtual authenticator answers by itself once it holds a credential) has already sent the same answer to the
    same endpoint, and the page is on its way to the result."""
    try:
        page.get_by_role("button", name="Sign in with a passkey").click(timeout=5000)
    except PlaywrightTimeoutError:
        pass

def serve_at_localhost(smtp, config):
    cleanups = []
    kwargs = {"smtp_url": smtp.url, "redis_url": os.environ.get("IDHUB_TEST_REDIS_URL") or None}
    if os.environ.get("IDHUB_TEST_DATABASE_URL"):
        cm = fresh_postgres_database(os.environ["IDHUB_TEST_DATABASE_URL"])
        kwargs["database_url"] = cm.__enter__()
        cleanups.append(cm)
    hub = LiveHub(config, **kwargs)
    hub.base_url = f"http://localhost:{hub.port}"
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()
        for cm in cleanups:
            cm.__exit__(None, None, None)


@pytest.fixture
def localhost_hub(smtp):
    """The acme hub at http://localhost:<port> (an admin, carol, receives the clone alerts)."""
    config = acme_config()
    config["workspaces"][0]["users"].append({"email": "carol@acme.test", "name": "Carol Admin",
                                             "password": "C4rol-Admin-Pass!", "role": "admin"})
    config["workspaces"][0]["policies"]["require_mfa_for_admins"] = False
    yield from serve_at_localhost(smtp, config)


@pytest.fixture
def phishing_resistant_hub(smtp):
    """acme requires phishing-resistant MFA (a passkey) of everyone."""
    config = acme_config()
    config["workspaces"][0]["policies"]["require_phishing_resistant_mfa"] = True
    yield from serve_at_localhost(smtp, config)


@pytest.fixture
def lui(localhost_hub) -> Ui:
    return Ui(localhost_hub)


def virtual_authenticator(page: Page):
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    return cdp, auth


def credentials(cdp, auth) -> list[dict]:
    return cdp.send("WebAuthn.getCredentials", {"authenticatorId": auth})["credentials"]


def passkeys_region(page: Page):
    return page.get_by_role("region", name="Passkeys")


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name=re.compile("Sign in to"))).to_be_visible()


def confirm_it_is_me(ui: Ui, page: Page, landing: str) -> None:
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    page.get_by_label("Password").fill(ui.alice.password)
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.get_by_role("heading", name=landing)).to_be_visible()


def submit_passkey_answer(page: Page, answer: str) -> None:
    """Hand ``answer`` to the sign-in page's passkey form, as a relaying attacker's script would."""
    page.evaluate("""(answer) => {
        const form = document.querySelector('form[data-passkey="get"]');
        form.querySelector('input[name=credential]').value = answer;
        form.setAttribute('data-passkey-done', '1');
        form.submit();
    }""", answer)


class _Phishing(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"<!doctype html><title>Sign in</title><h1>Totally idhub</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


SERIALISE = """async (o) => {
  const b = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));
  const u = buf => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\\+/g, '-').replace(/\\//g, '_')
                   .replace(/=+$/, '');
  const cred = await navigator.credentials.get({publicKey: {challenge: b(o.challenge), rpId: o.rpId,
                                                userVerification: 'required', allowCredentials: []}});
  const r = cred.response;
  return JSON.stringify({id: cred.id, rawId: u(cred.rawId), type: cred.type, clientExtensionResults: {},
    response: {clientDataJSON: u(r.clientDataJSON), authenticatorData: u(r.authenticatorData),
               signature: u(r.signature), userHandle: u(r.userHandle)}});
}"""


class Authenticator:
    """Chromium's virtual authenticator for ``page``. The sign-in page starts the browser's passkey autofill as it
    loads, and the virtual authenticator answers such a request at once when it holds a passkey (a person would
    pick it from the autofill list first), so ``hidden()`` takes the passkey out while a page loads."""

    def __init__(self, page: Page):
        self.cdp, self.id = virtual_authenticator(page)
        self.kept: dict | None = None

    def credentials(self) -> list[dict]:
        return credentials(self.cdp, self.id)

    def hide(self) -> None:
        [self.kept] = self.credentials()
        self.cdp.send("WebAuthn.removeCredential", {"authenticatorId": self.id,
                                                    "credentialId": self.kept["credentialId"]})

    def restore(self, **changes) -> None:
        self.cdp.send("WebAuthn.addCredential", {"authenticatorId": self.id, "credential": {**self.kept, **changes}})


def test_passkey_register_sign_in_and_remove(lui, localhost_hub, new_context, smtp):
    ui = lui
    OUT.mkdir(parents=True, exist_ok=True)
    page = new_context(viewport={"width": 1280, "height": 900}).new_page()
    authn = Authenticator(page)

    # add a passkey on the security page (confirming with the password first)
    ui.sign_in(page, ui.alice)
    expect(passkeys_region(page)).to_contain_text("You have no passkeys yet.")
    passkeys_region(page).get_by_role("button", name="Add a passkey").click()
    confirm_it_is_me(ui, page, "Add a passkey")
    mark = smtp.mark()
    page.get_by_label("Passkey name").fill("Work laptop")
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()  # the recovery path
    smtp.wait_for(to=ALICE.email, subject_contains="Two-factor authentication settings changed", since=mark)
    [cred] = authn.credentials()
    assert cred["isResidentCredential"] and cred["rpId"] == "localhost"
    ui.open_security(page)
    region = passkeys_region(page)
    expect(region.get_by_role("cell", name="Work laptop", exact=True)).to_be_visible()
    expect(region.get_by_role("cell", name="Never", exact=True)).to_be_visible()
    page.screenshot(path=str(OUT / "security-passkeys-desktop.png"), full_page=True)

    # password, then the passkey as the second factor
    authn.hide()
    sign_out(page)
    page.screenshot(path=str(OUT / "sign-in-passkey-desktop.png"), full_page=True)
    ui.submit_credentials(page, ui.alice)
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    authn.restore()
    page.get_by_role("button", name="Use a passkey").click()
    ui.expect_launcher_page(page)
    ui.open_security(page)
    expect(passkeys_region(page).get_by_role("cell", name="Never", exact=True)).to_have_count(0)  # used just now

    # passwordless: "Sign in with a passkey" (capturing the browser's answer for the replay below)
    authn.hide()
    sign_out(page)
    authn.restore()
    with page.expect_request(lambda r: r.url.endswith("/login/passkey") and r.method == "POST") as req:
        click_passkey_button(page)
    ui.expect_launcher_page(page)
    answer = parse_qs(req.value.post_data)["credential"][0]
    assert json.loads(answer)["response"]["userHandle"]

    # the browser's passkey autofill: the sign-in page offers the passkey as it loads
    page.context.clear_cookies()
    page.goto(ui.url("/login"))
    ui.expect_launcher_page(page)

    # a replayed assertion is refused (its challenge was used)
    authn.hide()
    sign_out(page)
    submit_passkey_answer(page, answer)
    expect(ui.alert(page, re.compile(f"{re.escape(pk.MSG_INVALID)}|{re.escape(pk.MSG_EXPIRED)}"))).to_be_visible()

    # an assertion made on another origin (a phishing page on localhost:<other port>, same RP ID) is refused
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Phishing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ui.open_login(page)
        options = page.evaluate("""async () => {
            const body = new FormData();
            body.append('csrf_token', document.querySelector('input[name=csrf_token]').value);
            const r = await fetch(document.querySelector('form[data-passkey]').dataset.optionsUrl,
                                  {method: 'POST', body});
            return await r.json();
        }""")
        page.goto(f"http://localhost:{server.server_address[1]}/")
        authn.restore()
        phished = page.evaluate(SERIALISE, options)
        authn.hide()
        client_data = json.loads(base64.urlsafe_b64decode(json.loads(phished)["response"]["clientDataJSON"] + "=="))
        assert client_data["origin"] == f"http://localhost:{server.server_address[1]}"
        ui.open_login(page)
        submit_passkey_answer(page, phished)
        expect(ui.alert(page, pk.MSG_ORIGIN)).to_be_visible()
    finally:
        server.shutdown()

    # a counter going backwards (a cloned authenticator) is refused and alerts alice and the admin. From here on
    # the pages offer no passkey autofill: the virtual authenticator would answer it by itself on every page that
    # follows a refusal, one more signature (counter + 1) each time, until its counter passed the server's and
    # the "clone" signed in (a person would have to pick the passkey from the list each time). The button alone
    # gives exactly one signature per click.
    page.add_init_script("PublicKeyCredential.isConditionalMediationAvailable = () => Promise.resolve(false);")
    assert authn.kept["signCount"] >= 3
    mark = smtp.mark()
    ui.open_login(page)
    authn.restore(signCount=0)
    click_passkey_button(page)
    expect(ui.alert(page, pk.MSG_CLONE)).to_be_visible()
    smtp.wait_for(to=ALICE.email, subject_contains="may have been copied", since=mark)
    smtp.wait_for(to="carol@acme.test", subject_contains="A passkey may have been copied", since=mark)

    # the genuine authenticator (its counter ahead) signs in; then the passkey is removed
    authn.hide()
    ui.open_login(page)
    authn.restore(signCount=100)
    click_passkey_button(page)
    ui.expect_launcher_page(page)
    ui.open_security(page)
    passkeys_region(page).get_by_role("link", name="Manage Work laptop").click()
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    page.get_by_label("Password").fill(ui.alice.password)
    page.get_by_role("button", name="Confirm", exact=True).click()  # the password, then the passkey
    expect(page.get_by_role("heading", name="Passkey “Work laptop”")).to_be_visible()
    page.get_by_role("button", name="Remove passkey").click()
    expect(ui.notice(page, "The passkey was removed.")).to_be_visible()
    expect(passkeys_region(page)).to_contain_text("You have no passkeys yet.")


def test_a_workspace_requiring_passkeys_leads_the_user_to_add_one_inside_the_sign_in(phishing_resistant_hub,
                                                                                    new_context):
    ui = Ui(phishing_resistant_hub)
    page = new_context(viewport={"width": 1280, "height": 900}).new_page()
    authn = Authenticator(page)
    ui.submit_credentials(page, ui.alice)
    expect(page.get_by_role("heading", name="Add a passkey")).to_be_visible()
    expect(ui.notice(page, "Your organisation requires a passkey or security key.")).to_be_visible()
    page.screenshot(path=str(OUT / "passkey-enrolment-desktop.png"), full_page=True)
    page.get_by_label("Passkey name").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_role("heading", name="Save your backup codes")).to_be_visible()
    page.get_by_role("button", name="Continue").click()
    ui.expect_launcher_page(page)
    assert len(authn.credentials()) == 1
    # next time the password alone is not enough: the passkey is asked for
    authn.hide()
    sign_out(page)
    ui.submit_credentials(page, ui.alice)
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    expect(page.get_by_role("link", name="Authenticator app")).to_have_count(0)
    authn.restore()
    page.get_by_role("button", name="Use a passkey").click()
    ui.expect_launcher_page(page)
