"""Emergency revocation of a compromised signing key over the admin API (OIDC by kid, SAML by certificate
SHA-256): out of the JWKS / metadata at once, never signing again, a signing key replaced, audited with the
admin as actor. (Every node at once: tests/integration/test_fleet_invalidation.py.)"""

from __future__ import annotations

from datetime import timedelta

from tests.integration.test_admin_api import Api, app, ws_id  # noqa: F401 (the fixture)
from tests.integration.test_admin_api import tokens as tokens  # noqa: F401, PLC0414 (the fixture)


def jwks_kids(flask_app) -> set[str]:
    return {k["kid"] for k in flask_app.test_client().get("/w/acme/oauth2/jwks").get_json()["keys"]}


def metadata(flask_app) -> str:
    return flask_app.test_client().get("/w/acme/saml/metadata").get_data(as_text=True)


def cert_b64(pem: str) -> str:
    return "".join(pem.strip().splitlines()[1:-1])


def audit(hub, type_: str) -> list:
    from sqlalchemy import select

    from idp.audit import AuditEvent

    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.seq)))


def test_an_oidc_key_is_revoked_replaced_and_audited(app, tokens):  # noqa: F811
    hub = app.extensions["idhub"]
    api = Api(app, tokens["acme"])
    before = jwks_kids(app)
    keys = api.get("/workspaces/acme/signing-keys").get_json()["items"]
    signing = next(k for k in keys if k["protocol"] == "oidc" and k["alg"] == "RS256" and k["state"] == "signing")
    assert signing["id"] in before

    r = api.post(f"/workspaces/acme/signing-keys/{signing['id']}/revoke", {})
    assert r.status_code == 200, r.get_data(as_text=True)
    out = r.get_json()
    assert out["protocol"] == "oidc" and out["revoked"] == signing["id"] and out["signing"] not in (None, signing["id"])
    assert signing["id"] not in jwks_kids(app) and out["signing"] in jwks_kids(app)
    svc = hub.oidc
    ws = svc.workspace("acme")
    assert svc.keys.signing_key(ws.id, "RS256")[0] == out["signing"]
    (event,) = audit(hub, "oidc.key.revoked")
    assert event.data["kid"] == signing["id"] and event.data["via"] == "api" and event.actor_email
    # revoked once: a second time it is not a published key any more
    assert api.post(f"/workspaces/acme/signing-keys/{signing['id']}/revoke", {}).status_code == 404
    assert api.post("/workspaces/acme/signing-keys/no-such-key/revoke", {}).status_code == 404
    assert api.post("/workspaces/acme/signing-keys/bad%20id!/revoke", {}).status_code in (404, 422)


def test_a_saml_key_is_revoked_and_a_staged_key_takes_over(app, tokens):  # noqa: F811
    hub = app.extensions["idhub"]
    api = Api(app, tokens["acme"])
    from idp.accounts import workspace_by_slug
    from saml import install
    from saml.keys import MIN_PUBLISH, fingerprint

    svc = install(hub)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    current = svc.keys.signing(ws)[1]
    staged = svc.keys.stage_next(ws, hub.clock() + MIN_PUBLISH + timedelta(minutes=1))
    assert cert_b64(current) in metadata(app) and cert_b64(staged) in metadata(app)
    keys = {k["id"]: k["state"] for k in api.get("/workspaces/acme/signing-keys").get_json()["items"]
            if k["protocol"] == "saml"}
    assert keys == {fingerprint(current): "signing", fingerprint(staged): "next"}

    r = api.post(f"/workspaces/acme/signing-keys/{fingerprint(current)}/revoke", {})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"revoked": fingerprint(current), "protocol": "saml", "signing": fingerprint(staged)}
    page = metadata(app)
    assert cert_b64(current) not in page and cert_b64(staged) in page
    assert svc.keys.signing(ws)[1] == staged
    (event,) = audit(hub, "saml.key.revoked")
    assert event.data["revoked"] == fingerprint(current) and event.data["via"] == "api"

    # without a staged key, a new one is made
    r = api.post(f"/workspaces/acme/signing-keys/{fingerprint(staged)}/revoke", {})
    assert r.status_code == 200
    fresh = svc.keys.signing(ws)[1]
    assert fresh not in (current, staged) and r.get_json()["signing"] == fingerprint(fresh)
    assert cert_b64(fresh) in metadata(app) and cert_b64(staged) not in metadata(app)


def test_another_workspace_cannot_revoke_keys(app, tokens):  # noqa: F811
    api = Api(app, tokens["other"])
    kid = sorted(jwks_kids(app))[0]
    assert api.post(f"/workspaces/acme/signing-keys/{kid}/revoke", {}).status_code == 403
    assert kid in jwks_kids(app)


def test_the_console_lists_and_revokes_keys(app, tokens):  # noqa: F811
    from tests.conftest import ALICE
    from tests.integration.test_admin_console import signed_in

    hub = app.extensions["idhub"]
    kids = jwks_kids(app)
    browser = signed_in(app, ALICE)
    page = browser.get("/w/acme/admin/keys").get_data(as_text=True)
    assert "Signing keys" in page and all(f'data-key="{kid}"' in page for kid in kids)
    kid = sorted(kids)[0]
    r = browser.post(f"/w/acme/admin/keys/{kid}/revoke", {"csrf_token": browser.csrf()})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    assert kid not in jwks_kids(app)
    page = browser.get("/w/acme/admin/keys").get_data(as_text=True)
    assert "was revoked on every server" in page and f'data-key="{kid}"' not in page
    (event,) = audit(hub, "oidc.key.revoked")
    assert event.data["via"] == "console" and event.actor_email == ALICE
    r = browser.post(f"/w/acme/admin/keys/{kid}/revoke", {"csrf_token": browser.csrf()})
    assert r.status_code == 404
