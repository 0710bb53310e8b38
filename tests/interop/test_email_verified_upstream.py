"""``email_verified`` recorded from a real upstream IdP (node ``oidc-provider`` shaped like Okta) and told to a
downstream app. The workspace here claims no domain, so only the recorded fact can make an address verified:
Okta's ``email_verified: true`` for an address of the connection's own domain is recorded (``upstream:okta``) and
the app's ID token and userinfo say ``true``; Okta's ``email_verified: false`` creates the account (jit) but the
app is told ``false``."""

from __future__ import annotations

import copy
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from idp.models import User
from tests.conftest import Browser
from tests.integration.test_email_verified import told
from tests.interop.oidc_support import oidc_config
from tests.interop.oidc_upstream.peer import Upstream, free, make_fed_app, navigate_target, okta_shape, upstream_login
from tests.interop.test_federation_oidc import BASE, okta_connection


@pytest.fixture(scope="module")
def okta():
    port = free()
    with Upstream(okta_shape(port, [f"{BASE}/w/acme/sso/okta/callback"])) as up:
        yield up


@pytest.fixture
def app(settings, okta):
    cfg = copy.deepcopy(oidc_config())
    acme = cfg["workspaces"][0]
    acme["domains"] = []  # nothing is verified by the workspace's own domains
    acme["users"] = [u for u in acme["users"] if not u["email"].startswith("bob@")]
    acme["connections"] = [okta_connection(okta.issuer)]  # speaks for acme.test
    return make_fed_app(settings, cfg)


def okta_sign_in(app, email: str, username: str) -> Browser:
    b = Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": email})
    assert r.status_code == 302 and "/sso/okta/" in r.headers["Location"], r.get_data(as_text=True)[:500]
    authorize = navigate_target(b.get(r.headers["Location"]).get_data(as_text=True))
    assert parse_qs(urlsplit(authorize).query)["login_hint"] == [email]
    r = b.get(upstream_login(requests.Session(), authorize, username).removeprefix(BASE))
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), \
        r.get_data(as_text=True)[:800]
    return b


def stored(app, email: str) -> str | None:
    with app.extensions["idhub"].db() as db:
        return db.scalar(select(User.email_verified_via).where(User.email_normalized == email))


def test_okta_vouching_for_an_address_of_its_domain_is_recorded_and_told(app):
    b = okta_sign_in(app, "ada@acme.test", "ada")  # Okta: email_verified true
    assert stored(app, "ada@acme.test") == "upstream:okta"
    claims, info = told(app, browser=b)
    assert claims["email"] == "ada@acme.test" and claims["email_verified"] is True
    assert info["email_verified"] is True


def test_okta_not_vouching_creates_the_account_but_not_the_verification(app):
    b = okta_sign_in(app, "bob@acme.test", "mallory")  # Okta: bob@acme.test, email_verified false
    assert stored(app, "bob@acme.test") is None
    claims, info = told(app, browser=b)
    assert claims["email"] == "bob@acme.test" and claims["email_verified"] is False
    assert info["email_verified"] is False
