"""NameID formats against pysaml2 as the SP: transient (new at every SSO, and still good for Single Logout),
unspecified (the idhub user id), and persistent NameIDs keyed by the workspace's stored random salt, so that they
survive a new IDHUB_SECRET_KEY, and keep the values issued before the salt was stored (the migration path)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest
from alembic import command
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.saml import (
    NAMEID_FORMAT_EMAILADDRESS,
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_TRANSIENT,
    NAMEID_FORMAT_UNSPECIFIED,
)
from sqlalchemy import select

from idp import schema
from idp.accounts import workspace_by_slug
from idp.app import build_hub, derive_key
from idp.audit import AuditEvent
from idp.models import User
from saml.models import SamlKey, SamlServiceProvider, SamlSessionParticipant
from saml.xml import inflate
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    IDP_ENTITY,
    RSA_SHA256,
    SP_ENTITY,
    full_flow,
    make_sp,
    post_form,
    redirect_request,
)

IDP_SLO = "http://localhost/w/acme/saml/slo"


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path)
    return make_app(settings), tmp_path, settings


def sso(app, b, client, first: bool, **kw):
    reqid, url = redirect_request(client, **kw)
    if first:
        _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    else:
        _a, saml_response, _r = post_form(b.get(url))
    return client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})


def alice_id(app) -> str:
    with app.extensions["idhub"].db() as db:
        return db.scalar(select(User.id).join(User.workspace).where(User.email == ALICE)
                         .where(User.workspace.has(slug="acme")))


def test_transient_nameid_is_new_at_every_sso_and_ends_the_session(env):
    app, tmp, _settings = env
    client = make_sp(app, tmp, signed=True, nameid=NAMEID_FORMAT_TRANSIENT)
    b = Browser(app)
    first = sso(app, b, client, first=True).name_id
    second = sso(app, b, client, first=False).name_id
    for n in (first, second):
        assert n.format == NAMEID_FORMAT_TRANSIENT
        assert n.name_qualifier == IDP_ENTITY and n.sp_name_qualifier == SP_ENTITY
        assert ALICE not in n.text and alice_id(app) not in n.text
    assert first.text != second.text
    with app.extensions["idhub"].db() as db:  # Single Logout names the session by the latest one
        row = db.scalars(select(SamlSessionParticipant)).one()
    assert row.name_id == second.text and row.nameid_format == NAMEID_FORMAT_TRANSIENT
    _rid, req = client.create_logout_request(IDP_SLO, IDP_ENTITY, name_id=second, sign=False)
    info = client.apply_binding(BINDING_HTTP_REDIRECT, str(req), IDP_SLO, relay_state="bye", sign=True,
                                sigalg=RSA_SHA256)
    loc = urlsplit(dict(info["headers"])["Location"])
    r = b.get(f"{loc.path}?{loc.query}")
    assert r.status_code == 302
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    assert client.parse_logout_request_response(q["SAMLResponse"], BINDING_HTTP_REDIRECT).status_ok()
    assert b.security().status_code == 302  # the idhub session ended


def test_unspecified_nameid_is_the_user_id(env):
    app, tmp, _settings = env
    client = make_sp(app, tmp, nameid=NAMEID_FORMAT_UNSPECIFIED)
    with app.extensions["idhub"].db() as db:
        assert db.scalar(select(SamlServiceProvider.nameid_format)) == NAMEID_FORMAT_UNSPECIFIED
    b = Browser(app)
    resp = sso(app, b, client, first=True)
    assert resp.name_id.format == NAMEID_FORMAT_UNSPECIFIED and resp.name_id.text == alice_id(app)
    assert resp.name_id.name_qualifier is None
    assert sso(app, b, client, first=False).name_id.text == alice_id(app)  # stable


def test_nameid_policy_unspecified_leaves_the_format_to_the_app_and_transient_is_honoured(env):
    """NameIDPolicy Format=unspecified leaves the choice to the IdP: the app's configured format (email here); an
    SP that asks for transient gets a transient NameID although the app is registered with email."""
    app, tmp, _settings = env
    client = make_sp(app, tmp)  # registered with the emailAddress format
    _reqid, url = redirect_request(client, nameid_format=NAMEID_FORMAT_UNSPECIFIED)
    sent = inflate(base64.b64decode(parse_qs(urlsplit(url).query)["SAMLRequest"][0]))
    assert f'Format="{NAMEID_FORMAT_UNSPECIFIED}"'.encode() in sent  # what pysaml2 asks for
    b = Browser(app)
    resp = sso(app, b, client, first=True, nameid_format=NAMEID_FORMAT_UNSPECIFIED)
    assert resp.name_id.text == ALICE and resp.name_id.format == NAMEID_FORMAT_EMAILADDRESS
    resp = sso(app, b, client, first=False, nameid_format=NAMEID_FORMAT_TRANSIENT)
    assert resp.name_id.format == NAMEID_FORMAT_TRANSIENT and resp.name_id.text.startswith("_")
    again = sso(app, b, client, first=False, nameid_format=NAMEID_FORMAT_TRANSIENT)
    assert again.name_id.text != resp.name_id.text


def _legacy(secret: str, user_id: str, entity: str) -> str:
    """What idhub 0.4.0 issued: keyed by the master secret."""
    key = derive_key(secret, "saml-persistent-nameid").encode()
    return "p" + hmac.new(key, f"{user_id}|{entity}".encode(), hashlib.sha256).hexdigest()[:40]


def _name_id_with_secret(tmp, settings, secret: str, sp_entity: str) -> str:
    """The persistent NameID another hub on the same database computes, with another master secret."""
    from saml import install

    hub = build_hub(make_settings(tmp, database_url=settings.database_url, secret_key=secret))
    svc = install(hub)
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
        user = db.scalar(select(User).where(User.workspace_id == ws.id, User.email == ALICE))
        sp = db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.entity_id == sp_entity))
        db.expunge_all()
    return svc.name_id(ws, user, sp, NAMEID_FORMAT_PERSISTENT)


def test_persistent_nameid_does_not_depend_on_the_secret_key(env):
    app, tmp, settings = env
    client = make_sp(app, tmp, nameid=NAMEID_FORMAT_PERSISTENT)
    b = Browser(app)
    issued = sso(app, b, client, first=True).name_id.text
    assert issued.startswith("p") and len(issued) == 41
    assert issued != _legacy(settings.secret_key, alice_id(app), SP_ENTITY)  # a new workspace: a random salt
    with app.extensions["idhub"].db() as db:
        salt = db.scalar(select(SamlKey.nameid_salt))
    assert len(salt) == 64 and int(salt, 16) >= 0 and salt != derive_key(settings.secret_key, "saml-persistent-nameid")
    # IDHUB_SECRET_KEY rotated: the same NameID (the salt is in the database, not derived from the key)
    assert _name_id_with_secret(tmp, settings, "r" * 48, SP_ENTITY) == issued
    assert sso(app, b, client, first=False).name_id.text == issued


def test_nameids_issued_before_the_stored_salt_keep_their_value(env):
    """An existing deployment: its saml_keys row predates the salt column. The migration leaves it NULL; the first
    use stores the salt the old code derived from the secret key, so the NameIDs SPs already hold stay the same,
    and from then on they no longer depend on that key."""
    app, tmp, settings = env
    hub = app.extensions["idhub"]
    client = make_sp(app, tmp, nameid=NAMEID_FORMAT_PERSISTENT)  # fetching our metadata made the key row
    cfg = schema.alembic_config(settings.database_url)
    command.downgrade(cfg, "c7d1e0a0b001")  # as before this release: no salt column
    command.upgrade(cfg, "head")
    with hub.db() as db:
        assert db.scalar(select(SamlKey.nameid_salt)) is None and db.scalar(select(SamlKey.certificate))
    hub.saml.keys._salts.clear()  # a process started after the upgrade
    before = _legacy(settings.secret_key, alice_id(app), SP_ENTITY)
    b = Browser(app)
    assert sso(app, b, client, first=True).name_id.text == before  # pysaml2 gets the NameID it already knows
    with hub.db() as db:
        assert db.scalar(select(SamlKey.nameid_salt)) == derive_key(settings.secret_key, "saml-persistent-nameid")
        events = db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.nameid.salt_stored")).all()
    assert len(events) == 1
    hub.saml.keys._salts.clear()
    assert sso(app, b, client, first=False).name_id.text == before
    assert _name_id_with_secret(tmp, settings, "n" * 48, SP_ENTITY) == before  # now independent of the key
    with hub.db() as db:
        assert len(db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.nameid.salt_stored")).all()) == 1


def test_workspaces_get_unrelated_salts(env):
    app, _tmp, _settings = env
    hub = app.extensions["idhub"]
    with hub.db() as db:
        acme, other = workspace_by_slug(db, "acme"), workspace_by_slug(db, "other")
    assert hub.saml.keys.nameid_salt(acme) != hub.saml.keys.nameid_salt(other)


def test_an_account_without_an_email_address_gets_invalid_nameid_policy_not_an_empty_nameid(env):
    """A username-only account (SCIM or the console may create one) signing in to an app that identifies people
    by their email address: the app gets a signed InvalidNameIDPolicy status, never an assertion whose NameID is
    empty (which some SPs would map to one shared, empty identity)."""
    from saml2.response import StatusInvalidNameidPolicy
    from sqlalchemy import update

    app, tmp, _settings = env
    client = make_sp(app, tmp, nameid=NAMEID_FORMAT_EMAILADDRESS)
    b = Browser(app)
    assert sso(app, b, client, first=True).name_id.text == ALICE
    hub = app.extensions["idhub"]
    with hub.db() as db:
        db.execute(update(User).where(User.id == alice_id(app)).values(email="", email_normalized=None,
                                                                         username="alice", username_normalized="alice"))
        db.commit()
    with pytest.raises(StatusInvalidNameidPolicy):
        sso(app, b, client, first=False)
    with hub.db() as db:
        errors = [e.data for e in db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.sso.error"))]
    assert errors and errors[-1]["status"][-1].endswith(":InvalidNameIDPolicy")
