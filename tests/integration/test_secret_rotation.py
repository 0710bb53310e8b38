"""Rotating IDHUB_SECRET_KEY on a live node (PostgreSQL + Redis): with the old key in IDHUB_SECRET_KEY_PREVIOUS
everything made under it keeps working, `idhub secrets rotate` moves what is stored to the new key while the node
serves, and once the old key is removed cookies, admin API tokens, authenticator apps and backup codes still work.
A value sealed under a key nobody listed is refused (a wrong-code page, a 401), never a 500."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pyotp
import pytest
import requests
from sqlalchemy import select

from config.settings import load_settings
from idp.accounts import user_by_email, workspace_by_slug
from idp.mfa.crypto import SecretBox
from idp.mfa.models import MfaTotp
from idp.wiring import build_hub
from saml.models import SamlKey
from tests.helpers.live import LiveHub, random_secret
from tests.services import drop_postgres, postgres_url, start_private_redis

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
ACTION = re.compile(r'<form method="post" action="([^"]+)">\s*<input type="hidden" name="csrf_token" value="[^"]+">'
                    r'<input type="hidden" name="action" value="verify">')
ALICE, BOB, PW = "alice@acme.test", "bob@acme.test", "S3cure-Example!"
CONFIG = {"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise",
                          "users": [{"email": ALICE, "password": PW}, {"email": BOB, "password": PW}]}]}


def code_at(secret: str, offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset)


class Browser:
    def __init__(self):
        self.s = requests.Session()
        self.s.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"

    def password(self, node: LiveHub, email: str) -> requests.Response:
        r = self.s.get(node.url("/w/acme/login"))
        r = self.s.post(node.url("/w/acme/login"), data={"email": email, "csrf_token": CSRF.search(r.text)[1]})
        return self.s.post(node.url("/w/acme/login/password"), data={
            "flow": FLOW.search(r.text)[1], "password": PW, "csrf_token": CSRF.search(r.text)[1]})

    def second_factor(self, node: LiveHub, page: requests.Response, code: str, method: str | None = None):
        if method:  # switch to the backup-code form
            page = self.s.get(page.url, params={"method": method})
        action = ACTION.search(page.text)[1].replace("&amp;", "&")
        return self.s.post(node.url(action), data={"csrf_token": CSRF.search(page.text)[1], "action": "verify",
                                                   "code": code}, allow_redirects=False)

    def signed_in(self, node: LiveHub) -> bool:
        r = self.s.get(node.url("/w/acme/settings/security"), allow_redirects=False)
        assert r.status_code in (200, 302), r.status_code
        return r.status_code == 200


def hub_for(db: str, redis: str, tmp, key: str, previous: str | None = None):
    env = {"IDHUB_DATABASE_URL": db, "IDHUB_REDIS_URL": redis, "IDHUB_SECRET_KEY": key,
           "IDHUB_OUTBOX_DIR": str(tmp / "outbox")}
    if previous:
        env["IDHUB_SECRET_KEY_PREVIOUS"] = previous
    return build_hub(load_settings(env))


def restart(node: LiveHub, key: str, previous: str | None) -> None:
    node.stop()
    node.extra_env["IDHUB_SECRET_KEY"] = key
    node.extra_env.pop("IDHUB_SECRET_KEY_PREVIOUS", None)
    if previous:
        node.extra_env["IDHUB_SECRET_KEY_PREVIOUS"] = previous
    node._serve()


@pytest.fixture
def cluster():
    db = postgres_url()
    with start_private_redis() as redis_server:
        node = LiveHub(CONFIG, database_url=db, redis_url=redis_server.url, workers=1,
                       extra_env={"IDHUB_SECRET_KEY": random_secret(48), "IDHUB_MAINTENANCE_INTERVAL": "0"})
        try:
            node.start()
            yield node, db, redis_server.url
        finally:
            node.cleanup()
    drop_postgres(db)


def test_rotating_the_secret_key_while_a_node_serves(cluster, tmp_path):
    node, db, redis = cluster
    k1, k2 = node.extra_env["IDHUB_SECRET_KEY"], random_secret(48)

    # --- under the first key: an authenticator app, backup codes, an admin token, OIDC and SAML keys ----------
    hub1 = hub_for(db, redis, tmp_path, k1)
    with hub1.db() as s:
        ws = workspace_by_slug(s, "acme")
        alice = user_by_email(s, ws.id, ALICE)
    setup = hub1.mfa.totp_begin(alice.id, ALICE)
    assert hub1.mfa.totp_confirm(alice.id, code_at(setup.secret, -30))
    codes = hub1.mfa.backup_generate(alice.id)
    token = node.run("admin", "token", "create", "--workspace", "acme").stdout.strip()
    node.run("oidc", "rotate-keys", "--workspace", "acme")
    assert requests.get(node.url("/w/acme/saml/metadata")).status_code == 200  # makes the SAML signing key
    api = {"Authorization": f"Bearer {token}"}
    assert requests.get(node.url("/api/v1/workspaces/acme"), headers=api).status_code == 200

    one = Browser()
    assert one.second_factor(node, one.password(node, ALICE), codes[0], "backup_codes").status_code == 302
    assert one.signed_in(node)
    checkpoint = tmp_path / "checkpoint-k1.json"  # the audit chain so far, keyed and signed under the first key
    checkpoint.write_text(node.run("audit", "checkpoint", "--workspace", "acme").stdout)
    form = Browser()
    login_page = form.s.get(node.url("/w/acme/login")).text  # a form rendered under the old key, posted later

    # --- the new key, the old one listed as previous: everything still works ---------------------------------
    restart(node, k2, k1)
    assert one.signed_in(node)
    r = form.s.post(node.url("/w/acme/login"), data={"email": ALICE, "csrf_token": CSRF.search(login_page)[1]})
    assert r.status_code == 200 and FLOW.search(r.text), r.status_code  # not "your form expired" (400)
    assert requests.get(node.url("/api/v1/workspaces/acme"), headers=api).status_code == 200
    two = Browser()
    assert two.second_factor(node, two.password(node, ALICE), codes[1], "backup_codes").status_code == 302
    hub2 = hub_for(db, redis, tmp_path, k2, k1)
    assert hub2.mfa.totp_verify(alice.id, code_at(setup.secret))

    check = node.run("secrets", "rotate", "--check", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "authenticator apps: 0 under the current key, 1 under a previous key" in check.stdout
    assert "OIDC signing keys: 0 under the current key, 1 under a previous key" in check.stdout
    assert "SAML signing keys: 0 under the current key, 1 under a previous key" in check.stdout

    done = node.run("secrets", "rotate", "--batch", "1")  # one row per transaction, while the node serves
    assert "authenticator apps: 0 under the current key, 1 re-encrypted, 0 unreadable" in done.stdout
    assert "retained keys stored: 5" in done.stdout  # tokens, backup codes, OIDC sid and the audit chain's two
    again = node.run("secrets", "rotate")  # idempotent
    assert "authenticator apps: 1 under the current key, 0 re-encrypted" in again.stdout
    assert "retained keys stored: 0" in again.stdout
    assert node.run("secrets", "rotate", "--check").returncode == 0
    with hub2.db() as s:
        row = s.get(MfaTotp, alice.id)
        assert SecretBox(k2, "mfa-totp").decrypt(row.secret_enc) == setup.secret  # under the new key alone
    with hub2.db() as s:
        from idp.audit import AuditEvent

        rotated = s.scalars(select(AuditEvent).where(AuditEvent.type == "admin.secrets.rotated")).all()
        assert len(rotated) == 2 and rotated[0].data["sealed"]["authenticator apps"]["reencrypted"] == 1

    # --- the old key removed: the session, the token, the app and the codes still work ------------------------
    restart(node, k2, None)
    assert one.signed_in(node) and two.signed_in(node)
    assert requests.get(node.url("/api/v1/workspaces/acme"), headers=api).status_code == 200
    three = Browser()
    page = three.password(node, ALICE)
    assert three.second_factor(node, page, code_at(setup.secret, 30)).status_code == 302
    assert three.signed_in(node)
    hub3 = hub_for(db, redis, tmp_path, k2)
    assert hub3.mfa.backup_verify(alice.id, codes[2])
    assert not hub3.mfa.backup_verify(alice.id, codes[0])  # used before the rotation: still used
    saml = requests.get(node.url("/w/acme/saml/metadata"))
    assert saml.status_code == 200 and "X509Certificate" in saml.text
    assert node.run("secrets", "rotate", "--check").returncode == 0
    # the audit events keyed under the first key, and its checkpoint, still verify without it
    verified = node.run("audit", "verify", "--workspace", "acme", "--checkpoint", str(checkpoint), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_value_sealed_under_an_unknown_key_is_refused_not_a_500(cluster, tmp_path):
    node, db, redis = cluster
    hub = hub_for(db, redis, tmp_path, node.extra_env["IDHUB_SECRET_KEY"])
    stranger = random_secret(48)
    secret = pyotp.random_base32()
    with hub.db() as s:
        ws = workspace_by_slug(s, "acme")
        bob = user_by_email(s, ws.id, BOB)
        s.add(MfaTotp(user_id=bob.id, secret_enc=SecretBox(stranger, "mfa-totp").encrypt(secret),
                      confirmed_at=datetime.now(UTC)))
        s.commit()
    b = Browser()
    page = b.password(node, BOB)
    assert page.status_code == 200 and "Two-step verification" in page.text
    r = b.second_factor(node, page, code_at(secret))
    assert r.status_code == 401 and "Two-step verification" in r.text  # a wrong code, not a server error
    assert not b.signed_in(node)
    with hub.db() as s:  # a signing key sealed under a key nobody listed: the page says so, with an error id
        assert requests.get(node.url("/w/acme/saml/metadata")).status_code == 200
        row = s.get(SamlKey, ws.id)
        row.private_enc = SecretBox(stranger, "saml-keys").encrypt("-----BEGIN PRIVATE KEY-----")
        s.commit()
    restart(node, node.extra_env["IDHUB_SECRET_KEY"], None)  # a fresh process: no key cached
    meta = requests.get(node.url("/w/acme/saml/metadata"))
    assert meta.status_code == 503 and "error id" in meta.text.lower(), meta.status_code
    assert "Traceback" not in meta.text and "BEGIN" not in meta.text
    forged = requests.get(node.url("/api/v1/workspaces/acme"),
                          headers={"Authorization": "Bearer idhub_adm_" + "A" * 43})
    assert forged.status_code == 401
    check = node.run("secrets", "rotate", "--check", check=False)
    assert check.returncode == 1 and "authenticator apps: 0 under the current key, 0 under a previous key, " \
                                      "1 unreadable" in check.stdout
    assert "SAML signing keys: 0 under the current key, 0 under a previous key, 1 unreadable" in check.stdout
    done = node.run("secrets", "rotate", check=False)
    assert done.returncode == 1 and "left as they are" in done.stderr
    with hub.db() as s:  # left as it was: nothing destroyed
        assert SecretBox(stranger, "mfa-totp").decrypt(s.get(MfaTotp, bob.id).secret_enc) == secret
