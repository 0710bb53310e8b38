"""Look-alike accounts through every channel that takes an address: an e-mail address (a SCIM userName) with an
invisible, control, bidi or space character, or a stray dot, next to the real one is refused and nothing changes;
a password padded with invisible characters is refused and the old one still works."""

from __future__ import annotations

import copy
import re

import pytest
from sqlalchemy import func, select

from admin.api import admin_service
from idp.configfile import ConfigError, validate
from idp.models import User, Workspace
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, Browser, make_app
from tests.integration.scim_helpers import USER_SCHEMA, Scim, assert_error, install_tokens, scim_config, user_ids

LOOK_ALIKES = [
    "al\u200bice@acme.test",  # zero-width space
    "alice\u00ad@acme.test",  # soft hyphen
    "\u202ealice@acme.test",  # right-to-left override
    "alice@acme.test\u2069",  # pop directional isolate
    "alice\ufeff@acme.test",  # byte order mark
    "alice@ac\u2060me.test",  # word joiner
    "alice\U000e0041@acme.test",  # a tag character
    "alice\ufe0f@acme.test",  # variation selector
    "ali\u3164ce@acme.test",  # Hangul filler
    "al\u00a0ice@acme.test",  # no-break space
    "alice@acme.test.",  # trailing dot
    ".alice@acme.test",
    "alice.@acme.test",
    "alice@acme..test",
]
PADDED = "\u200b" * 4 + "Aa1!"  # "8 characters", 4 of them invisible


@pytest.fixture
def app(settings):
    app = make_app(settings, scim_config(BASE_CONFIG))
    install_tokens(app.extensions["idhub"])
    return app


@pytest.fixture
def scim(app):
    return Scim(app)


@pytest.fixture
def api(app):
    hub = app.extensions["idhub"]
    with hub.db() as db:
        acme = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    with app.app_context():
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=acme)
    client = app.test_client()

    def call(method: str, path: str, body=None):
        return client.open("/api/v1" + path, method=method, json=body, headers={"Authorization": f"Bearer {token}"},
                           environ_base={"REMOTE_ADDR": "192.0.2.10"})

    return call


def users(hub) -> list[tuple[str, str]]:
    with hub.db() as db:
        return sorted(tuple(row) for row in db.execute(select(User.email, User.email_normalized)))


def api_error(r, status: int, field: str) -> dict:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:400])
    err = r.get_json()["error"]
    assert err["field"] == field, err
    assert "Traceback" not in r.get_data(as_text=True)
    return err


# ---- SCIM ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("user_name", LOOK_ALIKES, ids=lambda s: s.encode("unicode_escape").decode())
def test_scim_create_of_a_look_alike_is_refused(app, scim, user_name):
    hub = app.extensions["idhub"]
    before = users(hub)
    r = scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": user_name, "externalId": "hr-eve",
                             "password": "L00k-Alike-Pass!"})
    body = assert_error(r, 400)
    assert body.get("scimType") in ("invalidValue", "uniqueness"), body
    assert users(hub) == before
    assert user_ids(scim, 'externalId eq "hr-eve"') == []


def test_scim_replace_and_patch_to_a_look_alike_are_refused(app, scim):
    hub = app.extensions["idhub"]
    bob = scim.create_user("robert@acme.test", externalId="hr-bob")
    before = users(hub)
    for user_name in ("al\u200bice@acme.test", "robert@acme.test.", "rob\u202eert@acme.test"):
        r = scim.put(f"/Users/{bob['id']}", {"schemas": [USER_SCHEMA], "userName": user_name, "externalId": "hr-bob"})
        assert assert_error(r, 400).get("scimType") in ("invalidValue", "uniqueness")
        r = scim.patch(f"/Users/{bob['id']}", [{"op": "replace", "path": "userName", "value": user_name}])
        assert assert_error(r, 400).get("scimType") in ("invalidValue", "uniqueness")
    assert users(hub) == before
    assert scim.get(f"/Users/{bob['id']}").get_json()["userName"] == "robert@acme.test"


def test_scim_case_and_width_variants_are_the_same_account(scim):
    for user_name in ("ALICE@ACME.TEST", "\uff41lice@acme.test"):
        assert_error(scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": user_name}), 409, "uniqueness")


def test_scim_password_padded_with_invisible_characters_is_refused(app, scim):
    hub = app.extensions["idhub"]
    before = users(hub)
    r = scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": "dora@acme.test", "password": PADDED})
    assert "invisible" in assert_error(r, 400, "invalidValue")["detail"].lower()
    assert users(hub) == before
    u = scim.create_user("erin@acme.test", password="Hr-Provided-Pass-1!")
    for r in (scim.patch(f"/Users/{u['id']}", [{"op": "replace", "path": "password", "value": PADDED}]),
              scim.put(f"/Users/{u['id']}", {"schemas": [USER_SCHEMA], "userName": "erin@acme.test",
                                             "password": "Long-En\u200dough-Pass-9"})):
        assert_error(r, 400, "invalidValue")
    assert Browser(app).sign_in("acme", "erin@acme.test", "Hr-Provided-Pass-1!").status_code == 302
    assert Browser(app).sign_in("acme", "erin@acme.test", PADDED).status_code == 401


# ---- the admin API (and the console, which calls the same service) ------------------------------------------------
@pytest.mark.parametrize("email", LOOK_ALIKES, ids=lambda s: s.encode("unicode_escape").decode())
def test_admin_api_create_of_a_look_alike_is_refused(app, api, email):
    hub = app.extensions["idhub"]
    before = users(hub)
    err = api_error(api("POST", "/workspaces/acme/users", {"email": email, "name": "Eve"}), 422, "email")
    assert re.search(r"invisible|control|dot|spaces", err["message"]), err
    assert users(hub) == before


def test_admin_api_password_padded_with_invisible_characters_is_refused(app, api):
    hub = app.extensions["idhub"]
    before = users(hub)
    err = api_error(api("POST", "/workspaces/acme/users", {"email": "dora@acme.test", "password": PADDED}), 422,
                    "password")
    assert "invisible" in err["message"].lower()
    assert users(hub) == before
    r = api("POST", "/workspaces/acme/users", {"email": "dora@acme.test", "password": "Aa1! éé  x"})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert Browser(app).sign_in("acme", "dora@acme.test", "Aa1! éé  x").status_code == 302


# ---- the config file (idhub apply) ----------------------------------------------------------------------------
def test_config_file_names_each_look_alike_by_path():
    doc = copy.deepcopy(BASE_CONFIG)
    doc["workspaces"][0]["users"] += [{"email": "al\u200bice@acme.test"}, {"email": "bob@acme.test."},
                                      {"email": "carol@acme.test", "password": PADDED}]
    with pytest.raises(ConfigError) as err:
        validate(doc)
    errors = err.value.errors
    assert ("workspaces[0].users[2].email: not a valid email address: Email addresses cannot contain invisible or "
            "control characters.") in errors
    assert "workspaces[0].users[3].email: not a valid email address: Email addresses cannot end with a dot." in errors
    assert "workspaces[0].users[4].password: breaks a password rule: No invisible or control characters" in errors


def test_idhub_apply_refuses_a_look_alike_and_applies_nothing(tmp_path):
    from tests.integration.test_cli import run, write

    assert run(["db", "upgrade"], tmp_path).returncode == 0
    doc = copy.deepcopy(BASE_CONFIG)
    doc["workspaces"][0]["users"].append({"email": "al\u200bice@acme.test", "name": "Eve"})
    r = run(["apply", write(tmp_path, "bad.yaml", doc)], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "workspaces[0].users[2].email: not a valid email address: Email addresses cannot contain invisible" \
        in r.stderr
    assert "nothing was applied" in r.stderr and "Traceback" not in r.stderr


# ---- sign-in, forgotten password, the security page --------------------------------------------------------------
@pytest.mark.parametrize("email", ["al\u200bice@acme.test", "alice@acme.test.", "\u202ealice@acme.test",
                                   "alice@acme.test\x00"], ids=lambda s: s.encode("unicode_escape").decode())
def test_sign_in_with_a_look_alike_gets_the_form_error(app, email):
    b = Browser(app)
    for fields in ({"email": email, "password": ALICE_PW}, {"email": email}):  # one page; identifier first
        r = b.form_post("/w/acme/login", "/w/acme/login", fields)
        page = r.get_data(as_text=True)
        assert r.status_code == 400, (r.status_code, page[:300])
        assert "Email addresses cannot" in page and "Traceback" not in page
        assert "Set-Cookie" not in r.headers or "idhub_session" not in r.headers.get("Set-Cookie", "")
    assert b.security().status_code == 302  # not signed in
    assert Browser(app).sign_in("acme", ALICE, ALICE_PW).status_code == 302


def test_forgot_password_with_a_look_alike_sends_nothing(app, outbox):
    b = Browser(app)
    r = b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": "al\u200bice@acme.test"})
    assert r.status_code == 400 and "invisible" in r.get_data(as_text=True)
    assert outbox.find(subject="password") == [] and outbox.messages() == []


def test_security_page_refuses_a_padded_password_and_keeps_the_old_one(app):
    b = Browser(app)
    assert b.sign_in("acme", BOB, BOB_PW).status_code == 302
    html = b.security().get_data(as_text=True)
    r = b.post("/w/acme/settings/security/password", {"current_password": BOB_PW, "new_password": PADDED,
                                                      "confirm_password": PADDED, "csrf_token": b.csrf(html)})
    assert r.status_code in (200, 400), r.status_code
    assert "No invisible or control characters" in r.get_data(as_text=True)
    assert Browser(app).sign_in("acme", BOB, BOB_PW).status_code == 302
    assert Browser(app).sign_in("acme", BOB, PADDED).status_code == 401


def test_the_rule_is_not_an_always_shown_checklist_item(app):
    b = Browser(app)
    assert b.sign_in("acme", BOB, BOB_PW).status_code == 302
    page = b.security().get_data(as_text=True)
    assert 'data-rule="length"' in page and 'data-rule="invisible"' not in page


# ---- federation: just-in-time creation -------------------------------------------------------------------------
def test_federation_does_not_create_a_look_alike_account(settings):
    from tests.integration.test_federation_callback import A, HostileIdP, _http, begin, callback, conn
    from tests.interop.oidc_upstream.peer import audit_events, make_fed_app

    idps = {k: HostileIdP(origin, "client-" + k) for k, origin in (("a", A), ("b", "https://idp-b.test"),
                                                                    ("l", "https://idp-l.test"))}
    idps["az"] = HostileIdP("https://login.microsoftonline.test/x/v2.0", "client-az")
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [conn("a", A, "client-a", domains=["acme.test"], link_by_email=True,
                                                email_verified_by_idp=True)]
    app = make_fed_app(settings, cfg, http=_http(idps))
    hub = app.extensions["idhub"]
    before = users(hub)
    for email in ("al\u200bice@acme.test", "alice@acme.test.", "b\u00adob@acme.test"):
        b, state, nonce = begin(app, "a")
        token = idps["a"].sign(idps["a"].claims(nonce, sub="eve-" + email, email=email))
        r = callback(b, "a", code=idps["a"].issue_code(token), state=state, iss=A)
        assert r.status_code in (400, 403), (r.status_code, r.get_data(as_text=True)[:300])
        assert "Traceback" not in r.get_data(as_text=True)
        assert audit_events(hub, "federation.signin.failure")
    assert users(hub) == before
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(User).where(User.external_id.like("eve-%"))) == 0
