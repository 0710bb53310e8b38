"""One account lifecycle (idp.lifecycle): each channel that changes an account, attacked with the credential it
takes, changes nothing it may not; deprovisioning ends sessions first, alerts the other admins, and names the
channel in the audit log."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from idp.audit import AuditEvent
from idp.models import PasswordResetToken, User, Workspace
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, make_app
from tests.integration.scim_helpers import USER_SCHEMA, Scim, install_tokens, scim_config
from tests.integration.scim_helpers import assert_error as scim_error
from tests.integration.test_admin_api import Api
from tests.integration.test_admin_api import assert_error as api_error

DANA, DANA_PW = "dana@acme.test", "Kq9@wZ3m-Tr7x"
OLGA, OLGA_PW = "olga@acme.test", "Zr4#kL-Np9s-Vb"
NEW_PW = "Br4nd-New-Secret!"


@pytest.fixture
def app(settings):
    cfg = scim_config(BASE_CONFIG)
    cfg["workspaces"][0]["users"] += [{"email": DANA, "name": "Dana", "password": DANA_PW, "role": "admin"},
                                      {"email": OLGA, "name": "Olga", "password": OLGA_PW, "role": "operator"}]
    app = make_app(settings, cfg)
    install_tokens(app.extensions["idhub"])
    return app


@pytest.fixture
def scim(app):
    return Scim(app)


@pytest.fixture
def tokens(app):
    from admin.api import admin_service

    hub = app.extensions["idhub"]
    with app.app_context():
        svc = admin_service()
        acme, _ = svc.tokens.create("acme-ci", workspace_id=_ws(hub).id)
        operator, _ = svc.tokens.create("operator", workspace_id=None, operator=True)
    return {"acme": acme, "operator": operator}


def _ws(hub) -> Workspace:
    with hub.db() as db:
        return db.scalar(select(Workspace).where(Workspace.slug == "acme"))


def user(hub, email: str) -> User:
    with hub.db() as db:
        return db.scalar(select(User).where(User.workspace_id == _ws(hub).id, User.email_normalized == email))


def events(hub, type_: str) -> list[AuditEvent]:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id)))


def signs_in(browser_factory, email: str, password: str) -> bool:
    return browser_factory().login("acme", email, password).status_code == 302


# ---- SCIM: a workspace's provisioning token ----------------------------------------------------------------------
@pytest.mark.parametrize("who,pw", [(ALICE, ALICE_PW), (OLGA, OLGA_PW)])
def test_scim_cannot_set_an_admins_or_operators_password(app, hub, scim, browser_factory, who, pw):
    uid = user(hub, who).id
    r = scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "password", "value": NEW_PW}])
    scim_error(r, 400, "mutability")
    body = scim.get(f"/Users/{uid}").get_json()
    body["password"] = NEW_PW
    scim_error(scim.put(f"/Users/{uid}", body), 400, "mutability")
    assert signs_in(browser_factory, who, pw) and not signs_in(browser_factory, who, NEW_PW)


@pytest.mark.parametrize("who", [ALICE, OLGA])
def test_scim_cannot_move_an_admins_or_operators_address(app, hub, scim, who):
    uid = user(hub, who).id
    r = scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "userName", "value": "attacker@evil.example"}])
    err = scim_error(r, 400, "mutability")
    assert "userName" in err["detail"]
    assert user(hub, who).email == who and user(hub, "attacker@evil.example") is None


def test_scim_cannot_change_an_operator_at_all(app, hub, scim, browser_factory):
    olga = user(hub, OLGA)
    b = browser_factory()
    r = b.login("acme", OLGA, OLGA_PW)
    assert r.status_code == 302 and "/login/enroll" in r.headers["Location"]  # an operator always needs 2FA
    from idp.flow import AuthnResult, Client

    token, _ = hub.complete_signin(_ws(hub), AuthnResult(_ws(hub).id, olga.id, ("pwd", "totp"), hub.clock()),
                                   Client("127.0.0.1", b.ua, "test"))
    b.client.set_cookie("idhub_session_acme", token)
    scim_error(scim.patch(f"/Users/{olga.id}", [{"op": "replace", "path": "displayName", "value": "x"}]), 403)
    scim_error(scim.patch(f"/Users/{olga.id}", [{"op": "replace", "path": "active", "value": False}]), 403)
    scim_error(scim.delete(f"/Users/{olga.id}"), 403)
    after = user(hub, OLGA)
    assert after.active and after.display_name == olga.display_name
    assert b.security().status_code == 200  # the refused deprovisioning ended no session
    assert not events(hub, "scim.user.deactivated") and not events(hub, "scim.user.deleted")


def test_scim_still_sets_a_members_password_and_address(app, hub, scim, browser_factory):
    bob = user(hub, BOB)
    r = scim.patch(f"/Users/{bob.id}", [{"op": "replace", "path": "password", "value": NEW_PW}])
    assert r.status_code == 200, r.get_data(as_text=True)
    assert signs_in(browser_factory, BOB, NEW_PW) and not signs_in(browser_factory, BOB, BOB_PW)
    r = scim.patch(f"/Users/{bob.id}", [{"op": "replace", "path": "userName", "value": "robert@acme.test"}])
    assert r.status_code == 200 and user(hub, "robert@acme.test").id == bob.id
    [ev] = [e for e in events(hub, "scim.user.updated") if "userName" in e.data["changed"]]
    assert ev.data["channel"] == "scim:okta" and ev.actor_email == "scim:okta"


def test_scim_deactivating_an_admin_works_ends_sessions_first_and_alerts_the_other_admins(
        app, hub, scim, browser_factory, outbox):
    alice = user(hub, ALICE)
    b = browser_factory()
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302
    r = scim.patch(f"/Users/{alice.id}", [{"op": "replace", "path": "active", "value": False}])
    assert r.status_code == 200, r.get_data(as_text=True)
    assert b.security().status_code == 302 and not user(hub, ALICE).active
    [ev] = events(hub, "scim.user.deactivated")
    assert ev.data["sessions_ended"] == 1 and ev.data["channel"] == "scim:okta"
    # offboarding works, and the other admins hear of it; the deactivated admin and members do not
    assert outbox.find(to=DANA, subject="An administrator account was deactivated")
    assert outbox.find(to=OLGA, subject="An administrator account was deactivated")
    assert not outbox.find(to=BOB, subject="An administrator account") and \
        not outbox.find(to=ALICE, subject="An administrator account")
    mail = outbox.find(to=DANA, subject="An administrator account was deactivated")[0]
    assert ALICE in mail.get_body(("plain",)).get_content() and "scim:okta" in mail.get_body(("plain",)).get_content()


def test_scim_delete_ends_the_sessions_before_the_user_goes(app, hub, scim, browser_factory, outbox):
    bob = user(hub, BOB)
    b = browser_factory()
    assert b.login("acme", BOB, BOB_PW).status_code == 302
    ended = []
    hub.sessions.end_listeners.append(lambda ids, reason: ended.append((list(ids), reason)))
    assert scim.delete(f"/Users/{bob.id}").status_code == 204
    assert user(hub, BOB) is None and b.security().status_code == 302
    assert len(ended) == 1 and ended[0][1] == "deprovisioned"  # the apps were told (the listeners ran)
    [ev] = events(hub, "scim.user.deleted")
    assert ev.data == {"channel": "scim:okta", "sessions_ended": 1}
    assert not outbox.find(subject="An administrator account")  # a member: no admin alert


def test_scim_delete_of_an_admin_alerts_the_other_admins(app, hub, scim, outbox):
    assert scim.delete(f"/Users/{user(hub, DANA).id}").status_code == 204
    assert outbox.find(to=ALICE, subject="An administrator account was deleted")


def test_scim_create_cannot_take_an_admins_address(app, hub, scim):
    r = scim.post("/Users", {"schemas": [USER_SCHEMA], "userName": ALICE.upper(), "password": NEW_PW})
    scim_error(r, 409, "uniqueness")
    assert user(hub, ALICE).role == "admin"


def test_a_refused_scim_deactivation_half_done_is_finished_by_a_retry(app, hub, scim, browser_factory,
                                                                     monkeypatch):
    """Sessions end before the write: when the write fails, the account stays active with no session, and the
    provisioning client's retry finishes the job."""
    bob = user(hub, BOB)
    b = browser_factory()
    b.login("acme", BOB, BOB_PW)
    real = hub.accounts.deprovision

    def crash(targets, reason, write_fn):
        def boom():
            raise RuntimeError("the process died")
        return real(targets, reason, boom)

    monkeypatch.setattr(hub.accounts, "deprovision", crash)
    app.testing = False  # the crash is answered as any unexpected error is, not raised into the test
    r = scim.patch(f"/Users/{bob.id}", [{"op": "replace", "path": "active", "value": False}])
    assert r.status_code == 500 and "the process died" not in r.get_data(as_text=True)
    assert b.security().status_code == 302  # the sessions ended first
    assert user(hub, BOB).active  # nothing was written
    monkeypatch.setattr(hub.accounts, "deprovision", real)
    r = scim.patch(f"/Users/{bob.id}", [{"op": "replace", "path": "active", "value": False}])
    assert r.status_code == 200 and not user(hub, BOB).active


# ---- admin API: one workspace's admin token, and the operator's -----------------------------------------------------
def test_a_workspace_admin_cannot_change_another_admins_address(app, hub, tokens):
    api = Api(app, tokens["acme"])
    dana = user(hub, DANA)
    api_error(api.call("PATCH", f"/workspaces/acme/users/{dana.id}", {"email": "attacker@evil.example"}), 403,
              "forbidden", "email")
    api_error(api.call("PATCH", f"/workspaces/acme/users/{user(hub, OLGA).id}", {"email": "x@evil.example"}), 403,
              "forbidden")
    assert user(hub, DANA).email == DANA and user(hub, OLGA).email == OLGA


def test_an_admin_changes_a_members_address_and_old_reset_links_die(app, hub, tokens, browser_factory):
    api = Api(app, tokens["acme"])
    bob = user(hub, BOB)
    with hub.db() as db:
        db.execute(User.__table__.update().where(User.id == bob.id).values(email_verified_via="mail"))
        db.commit()
    hub.request_reset(_ws(hub), BOB, _client())
    r = api.call("PATCH", f"/workspaces/acme/users/{bob.id}", {"email": "Robert@Acme.test"})
    assert r.status_code == 200, r.get_data(as_text=True)
    moved = user(hub, "robert@acme.test")
    assert moved.id == bob.id and moved.email == "Robert@Acme.test"
    assert moved.email_verified_via is None  # what vouched for the old address does not vouch for this one
    with hub.db() as db:
        assert db.scalar(select(PasswordResetToken).where(PasswordResetToken.user_id == bob.id)) is None
    [ev] = [e for e in events(hub, "admin.user.updated") if "email" in e.data["changed"]]
    assert ev.data["old_email"] == BOB and ev.data["channel"] == "admin:token:acme-ci"
    assert signs_in(browser_factory, "robert@acme.test", BOB_PW)
    # a look-alike or a taken address is refused by field
    api_error(api.call("PATCH", f"/workspaces/acme/users/{bob.id}", {"email": DANA.upper()}), 409, field="email")
    api_error(api.call("PATCH", f"/workspaces/acme/users/{bob.id}", {"email": "robert@acme.test."}), 422,
              field="email")


def test_the_operator_may_change_an_admins_address(app, hub, tokens):
    api = Api(app, tokens["operator"])
    dana = user(hub, DANA)
    r = api.call("PATCH", f"/workspaces/acme/users/{dana.id}", {"email": "dana.new@acme.test"})
    assert r.status_code == 200 and user(hub, "dana.new@acme.test").id == dana.id


def test_admin_disable_of_an_admin_ends_sessions_first_and_alerts(app, hub, tokens, browser_factory, outbox):
    api = Api(app, tokens["acme"])
    b = browser_factory()
    assert b.login("acme", DANA, DANA_PW).status_code == 302
    r = api.post(f"/workspaces/acme/users/{user(hub, DANA).id}/disable")
    assert r.status_code == 200 and b.security().status_code == 302
    [ev] = events(hub, "admin.user.disabled")
    assert ev.data["sessions_ended"] == 1 and ev.data["channel"] == "admin:token:acme-ci"
    assert outbox.find(to=ALICE, subject="An administrator account was deactivated")


def test_admin_api_cannot_disable_reset_or_demote_an_operator(app, hub, tokens):
    api = Api(app, tokens["acme"])
    olga = user(hub, OLGA).id
    api_error(api.post(f"/workspaces/acme/users/{olga}/disable"), 403)
    api_error(api.call("PATCH", f"/workspaces/acme/users/{olga}", {"role": "member"}), 403)
    assert user(hub, OLGA).active and user(hub, OLGA).role == "operator"


# ---- the config file and upstream sign-in ----------------------------------------------------------------------
def test_the_config_file_may_change_anything_and_deprovisions_first(app, hub, browser_factory):
    from idp.configfile import apply_config, validate

    b = browser_factory()
    assert b.login("acme", DANA, DANA_PW).status_code == 302
    cfg = json.loads(json.dumps(scim_config(BASE_CONFIG)))
    cfg["workspaces"][0]["users"] += [{"email": DANA, "role": "member", "active": False},
                                      {"email": OLGA, "password": OLGA_PW, "role": "operator"}]
    report = apply_config(hub, validate(cfg))
    assert [uid for _ws, uid in report.deactivated] == [user(hub, DANA).id]
    assert b.security().status_code == 302
    dana = user(hub, DANA)
    assert not dana.active and dana.role == "member"
    [ev] = events(hub, "config.user.deactivated")
    assert ev.data == {"channel": "config", "sessions_ended": 1}


def test_an_upstream_identity_provider_cannot_change_protected_attributes(app, hub):
    from idp.lifecycle import AccountError, Actor

    with hub.db() as db:
        alice = db.scalar(select(User).where(User.email_normalized == ALICE, User.workspace_id == _ws(hub).id))
        for change in ({"role": "member"}, {"email": "x@acme.test"}, {"password": NEW_PW}):
            with pytest.raises(AccountError) as exc:
                hub.accounts.write(db, Actor.upstream("okta"), alice, **change)
            assert exc.value.kind == "mutability"
        db.rollback()
    assert user(hub, ALICE).role == "admin"


def _client():
    from idp.flow import Client

    return Client(ip="127.0.0.1", user_agent="pytest", request_id="t")
