"""Back-channel logout must reach every app of an ended session, even after the purge removed its expired access
tokens: the apps of a session are recorded (``oidc_session_clients``) when they redeem a code for it.

The logout tokens are POSTed by the real ``oidc.backchannel._post`` to a real HTTP receiver (inline dispatch only,
so the test does not have to wait for a thread)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from authlib.jose import JsonWebToken
from sqlalchemy import func, select

from tests.conftest import Browser
from tests.integration.test_oidc import ISS, WIKI_AUTH, code_flow, decode_id_token, jwks, redeem
from tests.interop.oidc_support import POST_SECRET, Receiver, make_oidc_app, oidc_config

POSTER_CB = "https://poster.example/cb"
EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def app(settings, receiver):
    cfg = oidc_config()
    apps = {a["slug"]: a for a in cfg["workspaces"][0]["apps"]}
    apps["wiki"]["backchannel_logout_uri"] = receiver.url + "?app=wiki"
    apps["poster"]["backchannel_logout_uri"] = receiver.url + "?app=poster"
    return make_oidc_app(settings, cfg)


@pytest.fixture
def hub(app):
    hub = app.extensions["idhub"]
    hub.oidc.backchannel.dispatch = lambda fn: fn()  # inline; the POST itself is the real one
    return hub


@pytest.fixture
def browser(app):
    return Browser(app)


@pytest.fixture
def api(app):
    return app.test_client()


def participants(hub) -> list[tuple[str, str]]:
    from oidc.models import OidcSessionClient

    with hub.db() as db:
        return sorted((r.client_id, r.session_id) for r in db.scalars(select(OidcSessionClient)))


def count(hub, model) -> int:
    with hub.db() as db:
        return db.scalar(select(func.count()).select_from(model))


def sign_in_to_both(browser, api):
    """wiki with a refresh token (offline_access), poster with an ID token only (no refresh grant)."""
    code, verifier = code_flow(browser)
    wiki = redeem(api, code, verifier).get_json()
    assert wiki.get("refresh_token") and wiki.get("id_token"), wiki
    code, verifier = code_flow(browser, client_id="poster", redirect_uri=POSTER_CB, scope="openid email")
    poster = redeem(api, code, verifier, auth={}, redirect_uri=POSTER_CB, client_id="poster",
                    client_secret=POST_SECRET).get_json()
    assert poster.get("id_token") and "refresh_token" not in poster, poster
    return wiki, poster


def test_backchannel_logout_after_the_purge_removed_the_access_tokens(browser, api, hub, receiver):
    from oidc.models import OidcAccessToken
    from oidc.purge import purge

    wiki, poster = sign_in_to_both(browser, api)
    # an hour later every access token has expired and the purge (the CLI, or the token endpoint's) removes them
    counts = purge(hub.db, hub.clock() + timedelta(hours=1))
    assert counts["access_tokens"] == 2 and count(hub, OidcAccessToken) == 0
    assert counts["session_clients"] == 0  # the session is alive: its apps stay recorded
    assert [c for c, _ in participants(hub)] == ["poster", "wiki"]

    browser.get("/w/acme/settings/security")
    assert browser.post("/w/acme/logout", {"csrf_token": browser.csrf()}).status_code == 302

    assert receiver.got.wait(5)
    assert sorted(r["path"] for r in receiver.requests) == ["/backchannel-logout?app=poster",
                                                             "/backchannel-logout?app=wiki"]
    sid = decode_id_token(api, wiki["id_token"])["sid"]
    auds = []
    for token in receiver.tokens:
        lt = JsonWebToken(["RS256"]).decode(token, jwks(api))
        assert lt.header["typ"] == "logout+jwt" and lt["iss"] == ISS and EVENT in lt["events"]
        assert lt["sid"] == sid
        auds.append(lt["aud"])
    assert sorted(auds) == ["poster", "wiki"]
    assert decode_id_token(api, poster["id_token"], aud="poster")["sid"] == sid
    # the session's participants are gone with it, and the refresh token is dead
    assert participants(hub) == []
    r = api.post("/w/acme/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": wiki["refresh_token"]},
                 headers=WIKI_AUTH)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_grant"
    # and the audit log says who was told
    from idp.audit import AuditEvent

    with hub.db() as db:
        events = list(db.scalars(select(AuditEvent).where(AuditEvent.type == "oidc.backchannel_logout")))
    assert sorted(e.data["client"] for e in events) == ["poster", "wiki"]


def test_one_participant_per_session_and_app(browser, api, hub):
    for _ in range(3):
        code, verifier = code_flow(browser)
        assert redeem(api, code, verifier).status_code == 200
    rows = participants(hub)
    assert len(rows) == 1 and rows[0][0] == "wiki"
    # a code that is never redeemed makes no participant
    code_flow(browser, client_id="poster", redirect_uri=POSTER_CB, scope="openid")
    assert len(participants(hub)) == 1


def test_purge_removes_the_participants_of_sessions_that_are_gone(browser, api, hub):
    from idp.models import SessionRow
    from oidc.models import OidcSessionClient
    from oidc.purge import purge

    code, verifier = code_flow(browser)
    assert redeem(api, code, verifier).status_code == 200
    (client_id, live_sid), = participants(hub)
    with hub.db() as db:
        live = db.get(SessionRow, live_sid)
        ws_id, user_id = live.workspace_id, live.user_id
        # a session deleted by the session purge, one revoked without its listeners (a crash), one expired; and
        # one that has just ended (its back-channel logout may be reading its apps right now: kept an hour)
        db.add(SessionRow(id="r" * 64, public_id="revoked", workspace_id=ws_id, user_id=user_id,
                          expires_at=hub.clock() + timedelta(days=1), idle_timeout=3600,
                          revoked_at=hub.clock() - timedelta(hours=2)))
        db.add(SessionRow(id="j" * 64, public_id="just-ended", workspace_id=ws_id, user_id=user_id,
                          expires_at=hub.clock() + timedelta(days=1), idle_timeout=3600, revoked_at=hub.clock()))
        db.add(SessionRow(id="e" * 64, public_id="expired", workspace_id=ws_id, user_id=user_id,
                          expires_at=hub.clock() - timedelta(seconds=1), idle_timeout=3600))
        for sid in ("g" * 64, "r" * 64, "e" * 64, "j" * 64):
            db.add(OidcSessionClient(workspace_id=ws_id, session_id=sid, client_id="wiki", user_id=user_id))
        db.commit()
    assert len(participants(hub)) == 5
    counts = purge(hub.db, hub.clock())
    assert counts["session_clients"] == 3
    assert sorted(s for _, s in participants(hub)) == sorted([live_sid, "j" * 64])
    counts = purge(hub.db, hub.clock() + timedelta(hours=2))
    assert counts["session_clients"] == 1 and participants(hub) == [("wiki", live_sid)]
    assert count(hub, OidcSessionClient) == 1
