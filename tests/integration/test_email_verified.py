"""``email_verified`` in ID tokens and userinfo is a fact idhub knows, never a constant.

The attack: an admin (admin API) or a SCIM client creates ``ceo@another-company.example``; an app downstream that
links accounts by a verified e-mail (many do) would hand that person the real CEO's account there. idhub vouches
for an address only when its domain is one the workspace claims (``domains``, the hub operator's config file), when
its owner completed a mail round trip (a reset or invitation link mailed to it), or when a trusted upstream
connection asserted it for one of the connection's own domains.
"""

from __future__ import annotations

import copy
import time

import pytest
import requests
from authlib.jose import JsonWebKey, JsonWebToken
from sqlalchemy import select

from admin.api import admin_service
from idp.models import User, Workspace
from tests.conftest import ALICE, ALICE_PW, Browser
from tests.integration.test_federation_callback import A, HostileIdP, begin, callback, conn
from tests.interop.oidc_support import (
    OTHER_SECRET,
    WIKI_CB,
    WIKI_SECRET,
    authorize_path,
    browser_authorize,
    oidc_config,
    pkce,
    query,
)
from tests.interop.oidc_upstream.peer import make_fed_app

CEO = "ceo@another-company.example"  # nobody at acme owns this address
CEO_PW = "Quartz-Lantern-Ferry-82"
NEW_PW = "Saffron-Harbour-Kite-57"
SCIM_TOKEN = "acme-scim-token-0123456789abcdefghijklmnop"
SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
EVE = "eve@a-corp.test"  # connection a speaks for a-corp.test; the workspace does not claim it


def config() -> dict:
    cfg = copy.deepcopy(oidc_config())
    acme = cfg["workspaces"][0]
    acme["scim_tokens"] = [{"name": "okta", "token": SCIM_TOKEN}]
    acme["connections"] = [conn("a", A, "client-a", domains=["a-corp.test"])]
    return cfg


@pytest.fixture
def idp_a():
    return HostileIdP(A, "client-a")


@pytest.fixture
def app(settings, idp_a):
    http = requests.Session()
    http.mount(A, idp_a)
    return make_fed_app(settings, config(), http=http)


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


@pytest.fixture
def admin_api(app, hub):
    with hub.db() as db:
        ws_id = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
    with app.app_context():
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws_id)
    client = app.test_client()

    def call(method: str, path: str, body=None):
        return client.open("/api/v1/workspaces/acme" + path, method=method, json=body,
                           headers={"Authorization": f"Bearer {token}"}, environ_base={"REMOTE_ADDR": "192.0.2.10"})

    return call


def scim_create(app, user_name: str, **attrs) -> dict:
    r = app.test_client().post("/w/acme/scim/v2/Users", json={"schemas": [USER_SCHEMA], "userName": user_name,
                                                              **attrs},
                               headers={"Authorization": f"Bearer {SCIM_TOKEN}", "Accept": SCIM_JSON,
                                        "Content-Type": SCIM_JSON})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def told(app, browser=None, email=ALICE, password=ALICE_PW, ws="acme") -> tuple[dict, dict]:
    """Run the authorization code flow of app ``wiki`` (signing in when ``browser`` has no session); return the
    checked ID token's claims and the userinfo answer."""
    browser = browser or Browser(app)
    api = app.test_client()
    verifier, challenge = pkce()
    cb = browser_authorize(browser, authorize_path(ws=ws, challenge=challenge, scope="openid email profile",
                                                   nonce="n-1", state="s-1"), email=email, password=password, ws=ws)
    assert cb.startswith(WIKI_CB + "?"), cb
    secret = WIKI_SECRET if ws == "acme" else OTHER_SECRET
    r = api.post(f"/w/{ws}/oauth2/token", data={"grant_type": "authorization_code", "code": query(cb)["code"],
                                                "redirect_uri": WIKI_CB, "code_verifier": verifier},
                 auth=("wiki", secret))
    assert r.status_code == 200, r.get_data(as_text=True)
    tok = r.get_json()
    keys = JsonWebKey.import_key_set(api.get(f"/w/{ws}/oauth2/jwks").get_json())
    iss = f"http://localhost/w/{ws}"
    claims = JsonWebToken(["RS256"]).decode(tok["id_token"], keys, claims_options={
        "iss": {"essential": True, "value": iss}, "aud": {"essential": True, "value": "wiki"},
        "nonce": {"essential": True, "value": "n-1"}})
    claims.validate(now=int(time.time()), leeway=5)
    info = api.get(f"/w/{ws}/oauth2/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
    assert info.status_code == 200, info.get_data(as_text=True)
    return dict(claims), info.get_json()


def verified(app, **kw) -> tuple[bool, bool]:
    claims, info = told(app, **kw)
    assert claims["email"] == info["email"]
    return claims["email_verified"], info["email_verified"]


def stored(hub, email: str) -> str | None:
    with hub.db() as db:
        return db.scalar(select(User.email_verified_via).where(User.email_normalized == email.casefold()))


def test_an_address_in_a_domain_the_workspace_claims_is_verified(app, hub):
    claims, info = told(app)
    assert claims["email"] == ALICE and claims["email_verified"] is True
    assert info["email"] == ALICE and info["email_verified"] is True
    assert stored(hub, ALICE) is None  # computed from the workspace's domains, not stored


def test_the_same_address_in_a_workspace_that_does_not_claim_its_domain_is_not(app):
    """Workspace ``other`` declares no domains: its alice@acme.test (from the config file) is only a claim."""
    assert verified(app, ws="other", password="0ther-Workspace-Pass!") == (False, False)


def test_a_workspace_that_stops_claiming_a_domain_stops_vouching(app, hub):
    assert verified(app) == (True, True)
    with hub.db() as db:
        db.scalar(select(Workspace).where(Workspace.slug == "acme")).domains = ["acme.example"]
        db.commit()
    assert verified(app) == (False, False)


def test_an_address_a_scim_client_typed_is_not_verified(app, hub):
    scim_create(app, CEO, password=CEO_PW, externalId="00u-ceo", active=True)
    claims, info = told(app, email=CEO, password=CEO_PW)
    assert claims["email"] == CEO and claims["email_verified"] is False
    assert info["email"] == CEO and info["email_verified"] is False
    assert stored(hub, CEO) is None


def test_an_address_an_admin_typed_is_verified_only_after_its_owner_used_a_mailed_link(app, hub, admin_api,
                                                                                       outbox):
    r = admin_api("POST", "/users", {"email": CEO, "name": "Chief", "password": CEO_PW})
    assert r.status_code == 201, r.get_data(as_text=True)
    user_id = r.get_json()["id"]
    assert verified(app, email=CEO, password=CEO_PW) == (False, False)
    # the owner of the mailbox asks for a reset and uses the link from the mail
    b = Browser(app)
    r = b.form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": CEO})
    assert r.status_code == 200
    [mail] = outbox.find(to=CEO, subject="Reset your password")
    path = outbox.link(mail, r"http://localhost/w/acme/password/reset/[A-Za-z0-9_-]+").removeprefix("http://localhost")
    r = b.form_post(path, path, {"new_password": NEW_PW, "confirm_password": NEW_PW})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    assert stored(hub, CEO) == "mail"
    assert verified(app, email=CEO, password=NEW_PW) == (True, True)
    # another address: what vouched for the old one does not vouch for the new one
    other = "chief@yet-another.example"
    r = admin_api("PATCH", f"/users/{user_id}", {"email": other})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert stored(hub, other) is None
    assert verified(app, email=other, password=NEW_PW) == (False, False)


def test_an_invitation_link_verifies_the_address(app, hub, admin_api, outbox):
    r = admin_api("POST", "/users", {"email": CEO, "name": "Chief"})
    assert r.status_code == 201 and r.get_json()["status"] == "invited"
    assert stored(hub, CEO) is None
    [mail] = outbox.find(to=CEO)
    path = outbox.link(mail, r"http://localhost/w/acme/invite/[A-Za-z0-9_-]+").removeprefix("http://localhost")
    b = Browser(app)
    assert b.form_post(path, path, {"new_password": NEW_PW, "confirm_password": NEW_PW}).status_code == 302
    assert verified(app, email=CEO, password=NEW_PW) == (True, True)


def upstream_sign_in(app, idp, **claims) -> Browser:
    b, state, nonce = begin(app, "a")
    r = callback(b, "a", code=idp.issue_code(idp.sign(idp.claims(nonce, **claims))), state=state, iss=A)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), \
        r.get_data(as_text=True)[:500]
    return b


def test_an_upstream_that_vouches_for_an_address_of_its_domain_verifies_it(app, hub, idp_a):
    b = upstream_sign_in(app, idp_a, sub="eve-1", email=EVE, email_verified=True)  # just-in-time creation
    assert stored(hub, EVE) == "upstream:a"
    claims, info = told(app, browser=b)
    assert claims["email"] == EVE and claims["email_verified"] is True and info["email_verified"] is True


def test_an_upstream_that_does_not_vouch_verifies_nothing_until_it_does(app, hub, idp_a):
    b = upstream_sign_in(app, idp_a, sub="frank-1", email="frank@a-corp.test", email_verified=None)
    assert stored(hub, "frank@a-corp.test") is None
    assert told(app, browser=b)[0]["email_verified"] is False
    b = upstream_sign_in(app, idp_a, sub="frank-1", email="frank@a-corp.test", email_verified=True)
    assert stored(hub, "frank@a-corp.test") == "upstream:a"
    assert told(app, browser=b)[0]["email_verified"] is True


def test_an_upstream_does_not_verify_an_address_outside_its_domains(app, hub, idp_a):
    """A SCIM-provisioned ceo@another-company.example linked to connection a on its externalId: a's
    ``email_verified: true`` for that address is not a's to give (a speaks for a-corp.test)."""
    scim_create(app, CEO, externalId="ceo-at-a", active=True)
    b = upstream_sign_in(app, idp_a, sub="ceo-at-a", email=CEO, email_verified=True)
    assert stored(hub, CEO) is None
    claims, info = told(app, browser=b)
    assert claims["email"] == CEO and claims["email_verified"] is False and info["email_verified"] is False


def test_an_upstream_verifies_only_the_accounts_current_address(app, hub, idp_a):
    """The link is the identity: a later token naming another address of a's domain signs eve in, but says
    nothing about eve's address."""
    upstream_sign_in(app, idp_a, sub="eve-1", email=EVE, email_verified=None)
    b = upstream_sign_in(app, idp_a, sub="eve-1", email="someone-else@a-corp.test", email_verified=True)
    assert stored(hub, EVE) is None
    assert told(app, browser=b)[0]["email_verified"] is False


def test_a_connection_a_workspace_admin_registered_verifies_nothing(app, hub):
    """An admin who registers a connection (admin API or console: ``registered_via: api``) chooses the IdP and its
    domains: an IdP of theirs that says ``email_verified: true`` for ceo@another-company.example must not make
    idhub vouch for it. Only connections whose IdP the operator chose (the config file) are trusted."""
    from federation.base import UpstreamIdentity
    from idp.accounts import workspace_by_slug

    svc = app.extensions["idhub.federation"]
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    conn = svc.connection(ws, "a")

    def ident(sub, email):
        return UpstreamIdentity(subject=sub, email=email, claims={"email": email, "email_verified": True})

    svc.sign_in(ws, {**conn, "registered_via": "api"}, ident("m-1", "mallory@a-corp.test"))
    assert stored(hub, "mallory@a-corp.test") is None
    svc.sign_in(ws, conn, ident("e-1", EVE))  # the same IdP, as the operator declared it
    assert stored(hub, EVE) == "upstream:a"


def test_a_config_connection_whose_domains_an_admin_changed_verifies_nothing_new(app, hub, idp_a, admin_api):
    """The operator declared connection a for a-corp.test; a workspace admin adds b-corp.test to it. The connection
    goes on signing people in, but what it says about addresses is now an admin's choice: not passed on."""
    r = admin_api("PATCH", "/connections/a", {"domains": ["a-corp.test", "b-corp.test"]})
    assert r.status_code == 200, r.get_data(as_text=True)
    b = upstream_sign_in(app, idp_a, sub="bea-1", email="bea@b-corp.test", email_verified=True)
    assert stored(hub, "bea@b-corp.test") is None
    assert told(app, browser=b)[0]["email_verified"] is False
    upstream_sign_in(app, idp_a, sub="eve-1", email=EVE, email_verified=True)
    assert stored(hub, EVE) is None  # its original domain too: the admin's edit is the connection's now
