"""Two-factor authentication and workspace policies through the real app (Flask test client)."""

from __future__ import annotations

import copy
import html as htmllib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyotp
import pytest
from sqlalchemy import select

from idp.audit import AuditEvent
from tests.conftest import ALICE, ALICE_PW, BASE_CONFIG, Browser, make_app, make_settings

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
SECRET_RE = re.compile(r"data-secret>([A-Z2-7 ]+)<")
CODE_RE = re.compile(r"<li><code>([^<]+)</code></li>")


def text(r) -> str:
    return htmllib.unescape(r.get_data(as_text=True))


def signed_in(app, **kw) -> Browser:
    b = Browser(app, **kw)
    r = b.login("acme", ALICE, ALICE_PW)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), r.headers.get("Location")
    return b


def reauth(b: Browser, target: str):
    r = b.get(target)
    if r.status_code == 302 and "/reauth" in r.headers["Location"]:
        page = b.get(r.headers["Location"])
        nxt = re.search(r'name="next" value="([^"]+)"', text(page))[1]
        r = b.post("/w/acme/settings/security/reauth", {"password": ALICE_PW, "next": nxt, "csrf_token": b.csrf()})
        assert r.status_code == 302
        r = b.get(r.headers["Location"])
    return r


def enable_totp(b: Browser, hub) -> tuple[pyotp.TOTP, list[str]]:
    r = reauth(b, "/w/acme/settings/security/2fa/totp")
    assert r.status_code == 200
    page = text(r)
    assert "<svg" in page and "Verification code" in page
    secret = SECRET_RE.search(page)[1].replace(" ", "")
    totp = pyotp.TOTP(secret)
    r = b.post("/w/acme/settings/security/2fa/totp", {"action": "verify", "code": totp.at(hub.clock()),
                                                      "csrf_token": b.csrf(page)})
    assert r.status_code == 200, text(r)[:500]
    codes = CODE_RE.findall(text(r))
    assert len(codes) == 10 and len(set(codes)) == 10
    return totp, codes


def password_step(app, ua=None) -> tuple[Browser, str]:
    b = Browser(app, **({"user_agent": ua} if ua else {}))
    r = b.login("acme", ALICE, ALICE_PW)
    assert r.status_code == 302
    return b, r.headers["Location"]


def submit_code(b: Browser, loc: str, code: str, method: str | None = None):
    if method:
        loc = loc + f"&method={method}"
    page = b.get(loc)
    return b.post(loc, {"action": "verify", "code": code, "csrf_token": b.csrf(text(page))})


@pytest.fixture
def clock_hub(hub):
    """Advance the hub's clock by whole TOTP steps: ``tick()``."""
    from datetime import timedelta

    real = hub.clock
    offset = [timedelta(0)]
    hub.clock = lambda: real() + offset[0]

    def tick(steps=1):
        offset[0] += timedelta(seconds=30 * steps)

    yield tick
    hub.clock = real


def test_enable_totp_then_sign_in_with_a_code_once(app, hub, outbox, clock_hub):
    other = signed_in(app, user_agent=FIREFOX)
    b = signed_in(app)
    totp, codes = enable_totp(b, hub)
    page = text(b.security())
    assert "Two-factor authentication is" in page and ">on<" in page and "<strong>10</strong> left" in page
    assert other.security().status_code == 302  # other sessions end on a 2FA change
    assert b.security().status_code == 200
    assert outbox.find(to=ALICE, subject="Two-factor authentication settings changed")
    with hub.db() as db:
        assert db.scalar(select(AuditEvent).where(AuditEvent.type == "mfa.totp.enabled"))

    clock_hub()
    c, loc = password_step(app)
    assert "/login/mfa" in loc
    code = totp.at(hub.clock())
    r = submit_code(c, loc, code)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert c.security().status_code == 200
    # the same code, from another browser in the same time step: refused (replay)
    d, loc2 = password_step(app)
    r = submit_code(d, loc2, code)
    assert r.status_code == 401 and "not valid" in text(r)


def test_backup_code_works_once(app, hub, clock_hub):
    b = signed_in(app)
    _, codes = enable_totp(b, hub)
    clock_hub()
    c, loc = password_step(app)
    r = submit_code(c, loc, codes[0].upper().replace("-", " "), method="backup_codes")
    assert r.status_code == 302
    assert "<strong>9</strong> left" in text(c.security())
    d, loc = password_step(app)
    r = submit_code(d, loc, codes[0], method="backup_codes")
    assert r.status_code == 401


def test_wrong_codes_hit_the_account_throttle(app, hub, clock_hub):
    b = signed_in(app)
    totp, _ = enable_totp(b, hub)
    clock_hub()
    c, loc = password_step(app)
    statuses = [submit_code(c, loc, "000000").status_code for _ in range(7)]
    assert statuses[-1] == 429
    # even the right code is refused while throttled, from another browser and address too
    d, loc2 = password_step(app)
    r = submit_code(d, loc2, totp.at(hub.clock()))
    assert r.status_code == 429 and "Too many attempts" in text(r)


def test_disable_2fa_needs_a_current_code(app, hub, outbox, clock_hub):
    b = signed_in(app)
    totp, _ = enable_totp(b, hub)
    clock_hub()
    r = reauth(b, "/w/acme/settings/security/2fa/disable")
    page = text(r)
    assert "Disable 2FA" in page
    r = b.post("/w/acme/settings/security/2fa/disable", {"action": "verify", "code": "123456",
                                                        "csrf_token": b.csrf(page)})
    assert r.status_code == 400
    r = b.post("/w/acme/settings/security/2fa/disable", {"action": "verify", "code": totp.at(hub.clock()),
                                                        "csrf_token": b.csrf(page)})
    assert r.status_code == 302
    assert "is <strong>off</strong>" in text(b.security())
    c, loc = password_step(app)
    assert loc.endswith("/apps")  # no second step any more


def test_security_changes_need_recent_reauthentication(app):
    b = signed_in(app)
    r = b.get("/w/acme/settings/security/2fa/totp")
    assert r.status_code == 302 and "/settings/security/reauth" in r.headers["Location"]
    page = b.get(r.headers["Location"])
    r = b.post("/w/acme/settings/security/reauth", {"password": "Wrong-Pass-1!", "next": "/w/acme/settings/security",
                                                   "csrf_token": b.csrf(text(page))})
    assert r.status_code == 401
    assert b.get("/w/acme/settings/security/2fa/totp").status_code == 302


class SmsGateway:
    """A real HTTP endpoint standing in for the SMS provider."""

    def __init__(self):
        self.messages: list[dict] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gateway.messages.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"

    def last_code(self, to: str) -> str:
        deadline = time.time() + 5
        while time.time() < deadline:
            for m in reversed(self.messages):
                if m["to"] == to:
                    return re.search(r"\b(\d{6})\b", m["message"])[1]
            time.sleep(0.05)
        raise AssertionError(f"no SMS to {to}: {self.messages}")


@pytest.fixture
def gateway():
    g = SmsGateway()
    yield g
    g.server.shutdown()


def test_enrol_sms_and_sign_in_with_a_text_message(tmp_path, gateway):
    app = make_app(make_settings(tmp_path, sms_webhook_url=gateway.url))
    b = signed_in(app)
    r = reauth(b, "/w/acme/settings/security/2fa/sms")
    page = text(r)
    assert "Less secure" in page and "SIM swapping" in page and ">Phone number</label>" in page
    r = b.post("/w/acme/settings/security/2fa/sms", {"action": "send", "phone": "+1 202 555 0143",
                                                    "csrf_token": b.csrf(page)})
    assert r.status_code == 200
    code = gateway.last_code("+12025550143")
    r = b.post("/w/acme/settings/security/2fa/sms", {"action": "verify", "phone": "+12025550143", "code": code,
                                                    "csrf_token": b.csrf(text(r))})
    assert r.status_code == 200 and len(CODE_RE.findall(text(r))) == 10
    c, loc = password_step(app)
    page = c.get(loc)
    r = c.post(loc, {"action": "send", "csrf_token": c.csrf(text(page))})
    assert r.status_code == 200 and "We sent a code" in text(r)
    code = gateway.last_code("+12025550143")
    r = c.post(loc, {"action": "verify", "code": code, "csrf_token": c.csrf(text(r))})
    assert r.status_code == 302 and c.security().status_code == 200


def workspace_app(tmp_path, policies, **settings_kw):
    cfg = copy.deepcopy(BASE_CONFIG)
    # alice is an admin: these tests are about the workspace's policies, not about require_mfa_for_admins
    cfg["workspaces"][0]["policies"] = {"require_mfa_for_admins": False, **policies}
    return make_app(make_settings(tmp_path, **settings_kw), cfg)


def test_require_mfa_forces_enrolment_before_anything_else(tmp_path):
    app = workspace_app(tmp_path, {"require_mfa": True})
    hub = app.extensions["idhub"]
    b = Browser(app)
    r = b.login("acme", ALICE, ALICE_PW)
    assert "/login/enroll" in r.headers["Location"]
    assert b.security().status_code == 302  # not signed in yet
    page = text(b.get(r.headers["Location"]))
    secret = SECRET_RE.search(page)[1].replace(" ", "")
    loc = r.headers["Location"]
    r = b.post(loc, {"action": "verify", "code": pyotp.TOTP(secret).at(hub.clock()), "csrf_token": b.csrf(page)})
    assert r.status_code == 200 and len(CODE_RE.findall(text(r))) == 10
    r = b.post(loc, {"csrf_token": b.csrf(text(r))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")
    assert b.security().status_code == 200


def test_ip_allowlist_refuses_and_admits(tmp_path):
    app = workspace_app(tmp_path, {"ip_allowlist": ["192.0.2.0/24"]}, trusted_proxies=_nets("10.0.0.0/8"))
    outside = Browser(app, ip="198.51.100.7")
    outside.get("/w/acme/login")
    r = outside.post("/w/acme/login", {"email": ALICE, "csrf_token": outside.csrf()})
    assert r.status_code == 403 and "not one of them" in text(r)
    # through a trusted proxy, the forwarded address counts
    proxied = Browser(app, ip="10.0.0.5")
    proxied.get("/w/acme/login", headers={"X-Forwarded-For": "192.0.2.44"})
    r = proxied.post("/w/acme/login", {"email": ALICE, "csrf_token": proxied.csrf()},
                     headers={"X-Forwarded-For": "192.0.2.44"})
    assert r.status_code == 302
    # a spoofed header from an untrusted client has no effect
    spoof = Browser(app, ip="198.51.100.7")
    spoof.get("/w/acme/login", headers={"X-Forwarded-For": "192.0.2.44"})
    r = spoof.post("/w/acme/login", {"email": ALICE, "csrf_token": spoof.csrf()},
                   headers={"X-Forwarded-For": "192.0.2.44"})
    assert r.status_code == 403
    # garbage from a trusted proxy denies
    r = proxied.get("/w/acme/login", headers={"X-Forwarded-For": "not-an-ip"})
    assert r.status_code == 400


def test_allowlist_is_checked_on_every_request_of_a_session(tmp_path):
    app = workspace_app(tmp_path, {"ip_allowlist": ["192.0.2.0/24"]})
    b = Browser(app, ip="192.0.2.10")
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302
    assert b.security().status_code == 200
    b.ip = "198.51.100.7"  # the user leaves the office network
    r = b.security()
    assert r.status_code == 403 and "your organisation" in text(r)
    b.ip = "192.0.2.11"
    assert b.security().status_code == 200


def test_policy_decisions_are_audited_with_their_rule(tmp_path):
    app = workspace_app(tmp_path, {"ip_allowlist": ["192.0.2.0/24"]})
    hub = app.extensions["idhub"]
    Browser(app, ip="192.0.2.10").login("acme", ALICE, ALICE_PW)
    b = Browser(app, ip="198.51.100.7")
    b.get("/w/acme/login")
    b.post("/w/acme/login", {"email": ALICE, "csrf_token": b.csrf()})
    with hub.db() as db:
        events = [e.data for e in db.scalars(select(AuditEvent).where(AuditEvent.type == "policy.decision"))]
    assert {"effect": "deny", "rule": "ip_allowlist"}.items() <= events[-1].items()
    assert any(e["effect"] == "allow" for e in events)


def _nets(s):
    from config.settings import parse_cidrs

    return parse_cidrs("test", s)


def test_password_alone_cannot_replace_a_forbidden_factor(tmp_path, gateway):
    """The attack: SMS is retired by policy; someone with only the password must not reach enrolment."""
    cfg = copy.deepcopy(BASE_CONFIG)
    app = make_app(make_settings(tmp_path, sms_webhook_url=gateway.url), cfg)
    b = signed_in(app)
    r = reauth(b, "/w/acme/settings/security/2fa/sms")
    r = b.post("/w/acme/settings/security/2fa/sms", {"action": "send", "phone": "+12025550143",
                                                    "csrf_token": b.csrf(text(r))})
    code = gateway.last_code("+12025550143")
    b.post("/w/acme/settings/security/2fa/sms", {"action": "verify", "phone": "+12025550143", "code": code,
                                                "csrf_token": b.csrf(text(r))})
    hub = app.extensions["idhub"]
    cfg["workspaces"][0]["policies"] = {"mfa_methods": ["totp", "backup_codes"]}
    from idp.configfile import apply, validate

    with hub.db() as db:
        apply(db, validate(cfg), hub.hasher)
        db.commit()
    attacker = Browser(app)
    r = attacker.login("acme", ALICE, ALICE_PW)
    assert "/login/mfa" in r.headers["Location"], r.headers["Location"]  # prove the old factor first
    assert attacker.get(r.headers["Location"].replace("/login/mfa", "/login/enroll")).status_code == 302


def test_replacing_the_authenticator_needs_a_current_code(app, hub, clock_hub):
    b = signed_in(app)
    totp, _ = enable_totp(b, hub)
    clock_hub()
    other = signed_in_with_code(app, hub, totp)
    r = other.get("/w/acme/settings/security/2fa/totp")
    assert "/reauth" in r.headers["Location"]
    page = other.get(r.headers["Location"])
    html = text(page)
    assert "Code from your authenticator app" in html
    nxt = re.search(r'name="next" value="([^"]+)"', html)[1]
    # the password alone is not enough any more
    r = other.post("/w/acme/settings/security/reauth?method=totp", {"password": ALICE_PW, "next": nxt,
                                                                  "code": "000000", "csrf_token": other.csrf(html)})
    assert r.status_code == 401
    assert other.get("/w/acme/settings/security/2fa/totp").status_code == 302
    clock_hub()
    r = other.post("/w/acme/settings/security/reauth?method=totp", {"password": ALICE_PW, "next": nxt,
                                                                  "code": totp.at(hub.clock()),
                                                                  "csrf_token": other.csrf(html)})
    assert r.status_code == 302 and other.get("/w/acme/settings/security/2fa/totp").status_code == 200


def signed_in_with_code(app, hub, totp) -> Browser:
    c, loc = password_step(app)
    r = submit_code(c, loc, totp.at(hub.clock()))
    assert r.status_code == 302
    return c


def test_reloading_the_backup_codes_page_during_enrolment_does_not_loop(tmp_path):
    app = workspace_app(tmp_path, {"require_mfa": True})
    hub = app.extensions["idhub"]
    b = Browser(app)
    loc = b.login("acme", ALICE, ALICE_PW).headers["Location"]
    page = text(b.get(loc))
    secret = SECRET_RE.search(page)[1].replace(" ", "")
    b.post(loc, {"action": "verify", "code": pyotp.TOTP(secret).at(hub.clock()), "csrf_token": b.csrf(page)})
    r = b.get(loc)
    assert r.status_code == 200 and "not shown again" in text(r)
    r = b.post(loc, {"csrf_token": b.csrf(text(r))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps")


def test_a_confirmed_first_factor_leaves_only_the_code_to_enter(app, hub, clock_hub):
    """Within the 10 minutes after confirming the password (here: to turn 2FA on), a page that needs a current code
    asks for the code only; confirming is audited."""
    b = signed_in(app)
    totp, _ = enable_totp(b, hub)
    assert audit_events_of(hub, "auth.reauth.success")[-1].data == {"level": "pwd", "connection": None,
                                                                    "method": "pwd"}
    clock_hub()
    r = b.get("/w/acme/settings/security/2fa/backup-codes")
    assert "/reauth" in r.headers["Location"]
    page = text(b.get(r.headers["Location"]))
    assert "Now enter a current two-factor code" in page and 'name="password"' not in page
    nxt = re.search(r'name="next" value="([^"]+)"', page)[1]
    r = b.post("/w/acme/settings/security/reauth?method=totp", {"next": nxt, "code": "000000",
                                                               "csrf_token": b.csrf(page)})
    assert r.status_code == 401
    r = b.post("/w/acme/settings/security/reauth?method=totp", {"next": nxt, "code": totp.at(hub.clock()),
                                                               "csrf_token": b.csrf(page)})
    assert r.status_code == 302 and b.get("/w/acme/settings/security/2fa/backup-codes").status_code == 200
    assert audit_events_of(hub, "auth.reauth.success")[-1].data["level"] == "mfa"


def audit_events_of(hub, type_: str) -> list:
    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.seq)))
