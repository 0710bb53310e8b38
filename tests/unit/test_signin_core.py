"""The sign-in core (idp.signin) without Flask: each strategy, each transition, each refusal."""

from __future__ import annotations

import copy
from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select

from idp import schema
from idp.configfile import apply, validate
from idp.flow import Client
from idp.models import User, Workspace
from idp.signin import Denied, Done, Failed, Invalid, Route, Step
from idp.wiring import build_hub
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, BOB, BOB_PW, fast_hasher, make_settings

CLIENT = Client("192.0.2.10", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36", "req-1")
BINDING = "browser-1"


def make_hub(tmp_path, **policies):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["policies"] = policies  # alice is an admin; require_mfa_for_admins: the default
    settings = make_settings(tmp_path)
    schema.upgrade(settings.database_url)
    hub = build_hub(settings, hasher=fast_hasher())
    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher)
        db.commit()
    return hub


@pytest.fixture
def hub(tmp_path):
    return make_hub(tmp_path)


def ws(hub) -> Workspace:
    with hub.db() as db:
        return db.scalar(select(Workspace).where(Workspace.slug == "acme"))


def uid(hub, email) -> str:
    with hub.db() as db:
        return db.scalar(select(User.id).where(User.email_normalized == email))


def begin(hub, email, password, **kw):
    return hub.signin.begin(ws(hub), CLIENT, email=email, password=password, binding=BINDING, next_url="", **kw)


def enrol_totp(hub, user_id) -> pyotp.TOTP:
    setup = hub.mfa.totp_begin(user_id, "x")
    totp = pyotp.TOTP(setup.secret)
    assert hub.mfa.totp_confirm(user_id, totp.at(hub.clock() - timedelta(seconds=30)))
    return totp


def test_a_member_signs_in_with_the_one_page_form(hub):
    out = begin(hub, BOB, BOB_PW)
    assert isinstance(out, Done) and out.token and not out.upgraded
    assert out.session.user_id == uid(hub, BOB) and out.device_email == BOB
    assert hub.sessions.load(out.token, ws(hub).id) is not None


def test_an_email_alone_goes_on_to_the_password_step(hub):
    out = begin(hub, BOB, "")
    assert isinstance(out, Step) and out.state == "password"
    flow = hub.signin.flows.load(out.flow.id, ws(hub).id, BINDING)
    assert isinstance(hub.signin.password(ws(hub), flow, BOB_PW, CLIENT), Done)


def test_a_wrong_password_fails_and_stores_no_flow(hub):
    out = begin(hub, BOB, "wrong-Password-1!")
    assert isinstance(out, Failed) and out.error == "Incorrect email or password."


def test_a_malformed_address_is_refused_before_anything_is_checked(hub):
    out = begin(hub, "bob\u200b@acme.test", BOB_PW)
    assert isinstance(out, Invalid) and "invisible" in out.error


def test_an_admin_is_led_through_enrolment_a_member_is_not(hub):
    out = begin(hub, ALICE, ALICE_PW)
    assert isinstance(out, Step) and out.state == "enroll" and out.flow.choices[0] == "totp"
    flow = hub.signin.flows.load(out.flow.id, ws(hub).id, BINDING)
    setup = hub.mfa.totp_begin(flow.user_id, ALICE)
    assert hub.mfa.totp_confirm(flow.user_id, pyotp.TOTP(setup.secret).now())
    hub.signin.enrolled(ws(hub), flow)
    assert flow.state == "backup_codes" and flow.amr == ["pwd", "totp"]
    done = hub.signin.proceed(ws(hub), flow, CLIENT)
    assert isinstance(done, Done) and done.session.amr == ["pwd", "totp"]
    assert isinstance(begin(hub, BOB, BOB_PW), Done)


def test_an_operator_is_held_to_a_second_factor_whatever_the_workspace_says(tmp_path):
    hub = make_hub(tmp_path, require_mfa_for_admins=False)
    assert isinstance(begin(hub, ALICE, ALICE_PW), Done)  # the workspace relaxed it for its admins
    with hub.db() as db:
        db.execute(User.__table__.update().where(User.email_normalized == ALICE).values(role="operator"))
        db.commit()
    out = begin(hub, ALICE, ALICE_PW)
    assert isinstance(out, Step) and out.state == "enroll"


def test_the_allowlist_denies_before_any_password_is_looked_at(tmp_path):
    hub = make_hub(tmp_path, ip_allowlist=["10.0.0.0/8"])
    looked = []

    class Spy:
        name = "spy"

        def identifier_first(self, ws):
            return False

        def route(self, ws, email, *, local):
            return None

        def check_password(self, ws, flow, password, client, device):
            looked.append(password)

    hub.signin.add_strategy(Spy())
    out = begin(hub, BOB, BOB_PW)
    assert isinstance(out, Denied) and out.rule == "ip_allowlist" and looked == []


def test_a_strategy_that_owns_an_address_routes_it(hub):
    class Upstream:
        name = "upstream-test"

        def identifier_first(self, ws):
            return True

        def route(self, ws, email, *, local):
            return None if local else Route("upstream", "okta") if email.endswith("@acme.test") else None

        def check_password(self, ws, flow, password, client, device):
            return None

    hub.signin.add_strategy(Upstream())
    assert hub.signin.identifier_first(ws(hub))
    out = begin(hub, BOB, BOB_PW)  # the password sent along is never looked at
    assert isinstance(out, Step) and out.state == "upstream" and out.flow.connection == "okta"
    assert isinstance(begin(hub, BOB, BOB_PW, local=True), Done)  # "use my idhub password"
    assert hub.signin.strategies[-1].name == "password"  # idhub's own password stays the last resort


def test_a_second_factor_is_asked_of_whoever_turned_2fa_on(hub):
    totp = enrol_totp(hub, uid(hub, BOB))
    out = begin(hub, BOB, BOB_PW)
    assert isinstance(out, Step) and out.state == "mfa"
    flow = hub.signin.flows.load(out.flow.id, ws(hub).id, BINDING)
    bad = hub.signin.second_factor(ws(hub), flow, "000000", CLIENT)
    assert isinstance(bad, Failed) and flow.state == "mfa"
    done = hub.signin.second_factor(ws(hub), flow, totp.now(), CLIENT)
    assert isinstance(done, Done) and done.session.amr == ["pwd", "totp"]


def test_a_step_up_upgrades_the_session_in_place(hub):
    bob = uid(hub, BOB)
    first = begin(hub, BOB, BOB_PW)
    totp = enrol_totp(hub, bob)
    out = hub.signin.step_up(ws(hub), first.session, CLIENT, binding=BINDING, next_url="/w/acme/admin/")
    assert isinstance(out, Step) and out.state == "mfa"
    flow = hub.signin.flows.load(out.flow.id, ws(hub).id, BINDING)
    done = hub.signin.second_factor(ws(hub), flow, totp.now(), CLIENT)
    assert isinstance(done, Done) and done.upgraded and done.token and done.next == "/w/acme/admin/"
    assert done.session.id == first.session.id and done.session.public_id == first.session.public_id
    assert done.session.amr == ["pwd", "totp"] and done.session.auth_time >= first.session.auth_time
    assert [s.id for s in hub.sessions.list(bob)] == [first.session.id]  # nothing stale listed
    assert hub.sessions.load(done.token, ws(hub).id).amr == ["pwd", "totp"]  # a new cookie for the same record
    assert hub.sessions.load(first.token, ws(hub).id) is None  # the cookie from before the step-up: refused


def test_signing_in_again_as_the_same_person_upgrades_a_different_person_gets_their_own(hub):
    first = begin(hub, BOB, BOB_PW)
    again = begin(hub, BOB, BOB_PW, current=first.session)
    assert isinstance(again, Done) and again.upgraded and again.session.id == first.session.id
    assert again.token != first.token
    with hub.db() as db:
        db.execute(User.__table__.update().where(User.email_normalized == ALICE).values(role="member"))
        db.commit()
    other = begin(hub, ALICE, ALICE_PW, current=first.session)
    assert isinstance(other, Done) and not other.upgraded and other.session.id != first.session.id


def test_a_step_up_of_an_ended_session_is_a_sign_in_of_its_own(hub):
    first = begin(hub, BOB, BOB_PW)
    hub.sessions.end(first.session.id, "signed_out")
    again = begin(hub, BOB, BOB_PW, current=first.session)
    assert isinstance(again, Done) and not again.upgraded and again.token


def test_a_step_up_for_a_disabled_account_is_denied(hub):
    first = begin(hub, BOB, BOB_PW)
    with hub.db() as db:
        db.execute(User.__table__.update().where(User.email_normalized == BOB).values(active=False))
        db.commit()
    out = hub.signin.step_up(ws(hub), first.session, CLIENT, binding=BINDING, next_url="")
    assert isinstance(out, Denied)


def test_a_step_up_of_a_session_that_has_its_second_factor_changes_nothing(hub):
    totp = enrol_totp(hub, uid(hub, BOB))
    out = begin(hub, BOB, BOB_PW)
    flow = hub.signin.flows.load(out.flow.id, ws(hub).id, BINDING)
    done = hub.signin.second_factor(ws(hub), flow, totp.now(), CLIENT)
    again = hub.signin.step_up(ws(hub), done.session, CLIENT, binding=BINDING, next_url="/w/acme/admin/")
    assert isinstance(again, Done) and not again.upgraded and again.token is None
    assert hub.sessions.store.get(done.session.id).auth_time == done.session.auth_time  # no authentication: as it was
