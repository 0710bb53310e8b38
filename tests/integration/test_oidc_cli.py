"""``idhub oidc rotate-keys``: the installed console script, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.interop.oidc_support import oidc_config


@pytest.fixture
def cli(tmp_path):
    env = {**os.environ, "IDHUB_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "IDHUB_SECRET_KEY": "k" * 48,
           "IDHUB_OUTBOX_DIR": str(tmp_path / "outbox"), "IDHUB_LOG_LEVEL": "WARNING",
           "IDHUB_BASE_URL": "http://localhost"}
    idhub = str(Path(sys.executable).parent / "idhub")

    def run(*args):
        return subprocess.run([idhub, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(oidc_config()))
    for args in (["db", "upgrade"], ["apply", str(tmp_path / "c.yaml")]):
        r = run(*args)
        assert r.returncode == 0, r.stderr
    run.url = env["IDHUB_DATABASE_URL"]
    run.secret = env["IDHUB_SECRET_KEY"]
    return run


def _hub(cli):
    from config.settings import Settings
    from idp.app import build_hub
    from oidc import install

    hub = build_hub(Settings(database_url=cli.url, secret_key=cli.secret, base_url="http://localhost",
                             log_level="WARNING"))
    install(hub)
    return hub


def test_rotate_keys(cli):
    from idp.accounts import workspace_by_slug
    from idp.audit import AuditEvent
    from oidc.models import OidcKey

    hub = _hub(cli)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    old_kid, _ = hub.oidc.keys.signing_key(ws.id, "RS256")
    r = cli("oidc", "rotate-keys", "--workspace", "acme")
    assert r.returncode == 0, r.stderr
    new_kid = r.stdout.strip()
    assert new_kid and new_kid != old_kid
    hub.oidc.invalidate()
    kid, _ = hub.oidc.keys.signing_key(ws.id, "RS256")
    assert kid == new_kid  # the new key signs from now on
    published = {k["kid"] for k in hub.oidc.keys.jwks(ws.id)["keys"]}
    assert {old_kid, new_kid} <= published  # the old one stays in the JWKS for the overlap
    with hub.db() as db:
        old = db.get(OidcKey, old_kid)
        assert old.retired_at is not None and old.expires_at > old.retired_at
        events = list(db.scalars(select(AuditEvent).where(AuditEvent.type == "oidc.keys.rotated")))
    assert len(events) == 1 and events[0].workspace_id == ws.id
    assert events[0].data["kid"] == new_kid and events[0].data["alg"] == "RS256"
    assert events[0].data["retired"] == [old_kid]

    # ES256, and the RS256 key is left alone
    r = cli("oidc", "rotate-keys", "--workspace", "acme", "--alg", "ES256")
    assert r.returncode == 0, r.stderr
    es_kid = r.stdout.strip()
    hub.oidc.invalidate()
    assert hub.oidc.keys.signing_key(ws.id, "ES256")[0] == es_kid
    assert hub.oidc.keys.signing_key(ws.id, "RS256")[0] == new_kid
    with hub.db() as db:
        assert db.get(OidcKey, es_kid).alg == "ES256"
    # another workspace's keys are not touched
    with hub.db() as db:
        other = workspace_by_slug(db, "other")
        assert not list(db.scalars(select(OidcKey).where(OidcKey.workspace_id == other.id,
                                                         OidcKey.retired_at.is_not(None))))


def test_rotate_keys_refuses_bad_input(cli):
    r = cli("oidc", "rotate-keys", "--workspace", "nope")
    assert r.returncode == 2 and "no workspace" in r.stderr
    r = cli("oidc", "rotate-keys", "--workspace", "acme", "--alg", "HS256")
    assert r.returncode == 2 and "HS256" in r.stderr
    r = cli("oidc", "rotate-keys")
    assert r.returncode == 2 and "--workspace" in r.stderr


def test_revoke_key(cli):
    """``idhub oidc revoke-key``: the key leaves the JWKS, a new one signs; the serving processes learn it from the
    version row the command bumps (no restart, no manual invalidation)."""
    from idp.accounts import workspace_by_slug
    from idp.audit import AuditEvent
    from idp.invalidation import OIDC_KEYS

    hub = _hub(cli)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    compromised, _ = hub.oidc.keys.signing_key(ws.id, "RS256")
    hub.invalidation.poll()  # this process's baseline

    r = cli("oidc", "revoke-key", "--workspace", "acme", "--kid", compromised)  # no --yes, no answer: nothing
    assert r.returncode == 1 and "Aborted" in r.stderr
    assert hub.oidc.keys.signing_key(ws.id, "RS256")[0] == compromised
    r = cli("oidc", "revoke-key", "--workspace", "acme", "--kid", "no-such-kid", "--yes")
    assert r.returncode == 2 and "no signing key" in r.stderr

    r = cli("oidc", "revoke-key", "--workspace", "acme", "--kid", compromised, "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"revoked {compromised}; signing with ")
    replacement = r.stdout.strip().rsplit(" ", 1)[1]
    assert hub.invalidation.poll() == [OIDC_KEYS]  # what a serving process reads at its next request
    assert hub.oidc.keys.signing_key(ws.id, "RS256")[0] == replacement
    assert compromised not in {k["kid"] for k in hub.oidc.keys.jwks(ws.id)["keys"]}
    with hub.db() as db:
        (event,) = db.scalars(select(AuditEvent).where(AuditEvent.type == "oidc.key.revoked"))
    assert event.data == {"kid": compromised, "alg": "RS256", "replacement": replacement}
    r = cli("oidc", "revoke-key", "--workspace", "acme", "--kid", compromised, "--yes")
    assert r.returncode == 2  # gone
