"""Deprovisioning over SCIM in real Chromium: an HR system / Azure AD sets ``active: "False"`` (or deletes the user)
while the employee has the security page open; their next request lands on the sign-in page, signing in is refused,
and reactivation restores sign-in but never the old session (README, "Provisioning over SCIM 2.0")."""

from __future__ import annotations

import copy

import pytest
import requests
from playwright.sync_api import expect

from .conftest import INCORRECT, Ui, acme_config

pytestmark = pytest.mark.browser

TOKEN = "browser-scim-token-0123456789abcdefghijkl"
SCIM_JSON = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def scim_config() -> dict:
    cfg = copy.deepcopy(acme_config())
    cfg["workspaces"][0]["scim_tokens"] = [{"name": "azure", "token": TOKEN}]
    return cfg


class Scim:
    """SCIM over real HTTP against the live hub, with the workspace's bearer token."""

    def __init__(self, ui: Ui) -> None:
        self.base = ui.url("/scim/v2")
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept": SCIM_JSON})

    def request(self, method: str, path: str, body: dict | None = None, **params) -> requests.Response:
        headers = {"Content-Type": SCIM_JSON} if body is not None else {}
        return self.http.request(method, self.base + path, json=body, headers=headers, params=params or None,
                                 timeout=15)

    def user_id(self, user_name: str) -> str:
        r = self.request("GET", "/Users", filter=f'userName eq "{user_name}"')
        assert r.status_code == 200, r.text
        found = r.json()["Resources"]
        assert [u["userName"] for u in found] == [user_name]
        return found[0]["id"]

    def set_active(self, uid: str, value) -> dict:
        r = self.request("PATCH", f"/Users/{uid}", {"schemas": [PATCH_OP], "Operations": [
            {"op": "Replace", "path": "active", "value": value}]})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith(SCIM_JSON)
        return r.json()


@pytest.fixture
def ui(hub_factory) -> Ui:
    return Ui(hub_factory(scim_config()))


def test_deactivation_logs_out_the_open_session_and_reactivation_does_not_restore_it(ui, new_page, new_context):
    page = new_page()
    ui.sign_in(page, ui.alice)
    other = new_page()  # a second device of the same person
    ui.sign_in(other, ui.alice)
    bystander = new_page()  # someone else's session is untouched
    ui.sign_in(bystander, ui.bob)
    old_cookies = page.context.cookies()

    scim = Scim(ui)
    uid = scim.user_id(ui.alice.email)
    body = scim.set_active(uid, "False")  # Azure AD sends booleans as strings
    assert body["active"] is False

    for device in (page, other):
        device.reload()
        ui.expect_session_ended(device)
        device.goto(ui.url("/settings/security"))  # still not signed in
        expect(device).to_have_url(ui.login_url_re)
        expect(device.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
    bystander.reload()
    ui.expect_security_page(bystander)

    # while inactive, the right password is refused like a wrong one
    ui.expect_sign_in_refused(page, ui.alice, ui.alice.password)

    # reactivation restores sign-in, not the old sessions
    assert scim.set_active(uid, "True")["active"] is True
    replay = new_context()
    replay.add_cookies(old_cookies)
    old = replay.new_page()
    old.goto(ui.url("/settings/security"))
    expect(old).to_have_url(ui.login_url_re)
    expect(old.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
    other.goto(ui.url("/settings/security"))
    expect(other).to_have_url(ui.login_url_re)

    ui.sign_in(page, ui.alice)
    expect(ui.session_rows(page)).to_have_count(1)  # only the new session: the old ones stay ended


def test_delete_logs_out_the_open_session_and_sign_in_is_refused(ui, new_page):
    page = new_page()
    ui.sign_in(page, ui.bob)
    bystander = new_page()
    ui.sign_in(bystander, ui.alice)

    scim = Scim(ui)
    uid = scim.user_id(ui.bob.email)
    r = scim.request("DELETE", f"/Users/{uid}")
    assert r.status_code == 204, r.text
    assert scim.request("GET", f"/Users/{uid}").status_code == 404

    page.reload()
    ui.expect_session_ended(page)
    page.goto(ui.url("/settings/security"))
    expect(page).to_have_url(ui.login_url_re)
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
    bystander.reload()
    ui.expect_security_page(bystander)

    ui.submit_credentials(page, ui.bob)
    expect(ui.alert(page, INCORRECT)).to_be_visible()
    expect(page.get_by_role("heading", name="Security", exact=True)).to_have_count(0)
