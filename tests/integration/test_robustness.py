"""Bad input gets a clear error and changes nothing; a store that cannot be reached gives 503, never 500."""

from __future__ import annotations

import base64
import re

import pytest
from sqlalchemy import func, select

from idp.models import SessionRow, User
from tests.conftest import ALICE, ALICE_PW, Browser, make_app, make_settings

HOSTILE = [
    "",
    " ",
    "\x00",
    "a" * 5000,
    "<script>alert(1)</script>@acme.test",
    "' OR '1'='1",
    "alice@acme.test\r\nBcc: everyone@acme.test",
    "ａｌｉｃｅ@ａｃｍｅ.ｔｅｓｔ\u202e",
    "{{7*7}}",
    "../../etc/passwd",
]


def state(hub):
    with hub.db() as db:
        return (tuple(db.scalars(select(User.password_hash).order_by(User.id))),
                db.scalar(select(func.count()).select_from(SessionRow)))


def assert_clear_error(r):
    body = r.get_data(as_text=True)
    assert r.status_code < 500, (r.status_code, body[:300])
    assert "Traceback" not in body
    assert "<script>alert(1)</script>" not in body  # reflected values are escaped


@pytest.mark.parametrize("value", HOSTILE)
def test_every_form_field_rejects_hostile_values(browser_factory, hub, value):
    before = state(hub)
    b = browser_factory()
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": value})
    assert_clear_error(r)
    r = b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": value})
    assert_clear_error(r)
    loc = b.start_login("acme", ALICE)
    b.get(loc)
    html = b.last.get_data(as_text=True)
    flow = re.search(r'name="flow" value="([^"]+)"', html)[1]
    r = b.post("/w/acme/login/password", {"flow": flow, "password": value, "csrf_token": b.csrf(html)})
    assert_clear_error(r)
    assert r.status_code in (400, 401)
    r = b.post("/w/acme/login/password", {"flow": value, "password": "x", "csrf_token": b.csrf(html)})
    assert_clear_error(r)
    for path in (f"/w/acme/password/reset/{value}", f"/w/acme/security/not-me/{value}",
                 f"/w/{value}/login", f"/?workspace={value}"):
        assert_clear_error(b.get(path))
    assert state(hub) == before


def test_security_forms_reject_hostile_values(browser_factory, hub):
    b = browser_factory()
    b.login("acme", ALICE, ALICE_PW)
    before = state(hub)
    for value in HOSTILE:
        html = b.security().get_data(as_text=True)
        r = b.post("/w/acme/settings/security/password", {
            "current_password": value, "new_password": value, "confirm_password": value, "csrf_token": b.csrf(html)})
        assert_clear_error(r)
        assert r.status_code == 400
        r = b.post(f"/w/acme/settings/security/sessions/{value or 'x'}/end", {"csrf_token": b.csrf(html)})
        assert_clear_error(r)
    assert state(hub) == before
    assert b.security().status_code == 200


def test_invalid_utf8_is_answered_cleanly(browser_factory, hub):
    before = state(hub)
    b = browser_factory()
    b.get("/w/acme/login")
    body = b"email=%ff%fe%80alice@acme.test&csrf_token=" + b.csrf().encode()
    r = b.post("/w/acme/login", data=body, content_type="application/x-www-form-urlencoded")
    assert_clear_error(r)
    assert state(hub) == before


def test_oversized_bodies_are_refused_with_413(browser_factory, hub):
    before = state(hub)
    b = browser_factory()
    b.get("/w/acme/login")
    r = b.post("/w/acme/login", {"email": "a" * (1024 * 1024), "csrf_token": b.csrf()})
    assert r.status_code == 413 and "too large" in r.get_data(as_text=True)
    assert state(hub) == before


def test_wrong_methods_and_unknown_pages(browser_factory):
    b = browser_factory()
    for method, path, code in (("get", "/w/acme/logout", 405), ("get", "/nope", 404),
                               ("get", "/w/unknown-ws/login", 404), ("post", "/healthz", 405)):
        r = getattr(b, method)(path)
        assert r.status_code == code
        assert "Error id" in r.get_data(as_text=True)


def test_operations_endpoints(browser_factory):
    b = browser_factory()
    assert b.get("/healthz").json == {"status": "ok"}
    assert b.get("/readyz").json == {"status": "ok", "database": "ok"}
    b.login("acme", ALICE, ALICE_PW)
    metrics = b.get("/metrics").get_data(as_text=True)
    assert 'idhub_signins_total{outcome="success"}' in metrics
    assert "idhub_http_request_duration_seconds_bucket" in metrics


def test_request_id_is_echoed_and_bounded(browser_factory):
    b = browser_factory()
    assert b.get("/healthz", headers={"X-Request-Id": "abc12345-req"}).headers["X-Request-Id"] == "abc12345-req"
    rid = b.get("/healthz", headers={"X-Request-Id": "evil;<script>" + "z" * 200}).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_database_down_answers_503_with_an_error_id(tmp_path, settings):
    app = make_app(settings)
    hub = app.extensions["idhub"]
    from idp.app import build_hub, create_app

    down = make_settings(tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    app_down = create_app(down, hub=build_hub(down))
    b = Browser(app_down)
    r = b.get("/w/acme/login")
    assert r.status_code == 503
    assert "Error id" in r.get_data(as_text=True) and r.headers["Retry-After"]
    ready = b.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert ready.json["status"] == "unavailable" and ready.json["database"] == "unavailable"
    assert b.get("/healthz").status_code == 200
    # the programs' endpoints answer in their protocols' error formats, still with the error id
    token = b.post("/w/acme/oauth2/token", data={"grant_type": "client_credentials"},
                   headers={"Authorization": "Basic " + base64.b64encode(b"wiki:secret").decode()})
    assert token.status_code == 503 and token.headers["Retry-After"] and token.headers["Cache-Control"] == "no-store"
    assert token.json["error"] == "temporarily_unavailable" and re.fullmatch(r"[0-9a-f]{8,}", token.json["error_id"])
    scim = b.get("/w/acme/scim/v2/Users", headers={"Authorization": "Bearer idhub_scim_" + "A" * 43})
    assert scim.status_code == 503 and scim.headers["Retry-After"]
    assert scim.json["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] and scim.json["status"] == "503"
    assert "temporarily unavailable" in scim.json["detail"]
    jwks = b.get("/w/acme/oauth2/jwks")
    assert jwks.status_code == 503 and jwks.json["error"] == "temporarily_unavailable"
    assert hub  # the healthy app is unaffected


def test_redis_down_signs_in_from_the_database(tmp_path):
    """Redis away: sign-in (its flow, throttles and one-time values) runs on the database, and the node stays
    ready for the load balancer, saying Redis is degraded."""
    app = make_app(make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0"))
    b = Browser(app)
    b.login("acme", ALICE, ALICE_PW)
    assert b.get("/w/acme/settings/security").status_code == 200
    ready = b.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "degraded", "database": "ok", "redis": "degraded"}
    metrics = b.get("/metrics").get_data(as_text=True)
    assert 'idhub_backend_up{backend="redis"} 0.0' in metrics


def test_a_bug_is_a_500_not_an_outage(tmp_path):
    """A missing table is a defect to fix, not 'the database is down': 500, logged with its traceback."""
    from sqlalchemy.exc import OperationalError

    from idp.app import _is_unavailable

    bug = OperationalError("SELECT 1", {}, Exception("no such table: mfa_totp"))
    down = OperationalError("SELECT 1", {}, Exception('connection to server at "127.0.0.1", port 1 failed: '
                                                     "Connection refused"))
    assert not _is_unavailable(bug)
    assert _is_unavailable(down)
