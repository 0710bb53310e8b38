"""Federation over OpenID Connect against a real upstream IdP: node ``oidc-provider`` shaped like Okta (custom
authorization server issuer, group names) and like Azure AD (multi-tenant ``{tenantid}`` issuer template,
``tid``/``oid``, groups overage). idhub runs in-process; the upstream is a real server it talks to over HTTP; the
browser is a Flask test client for idhub and a ``requests`` session for the upstream's pages."""

from __future__ import annotations

import copy
import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from federation.models import FederationLink
from idp.models import Group, GroupMember, User
from tests.conftest import BASE_CONFIG, BOB, Browser
from tests.interop.oidc_upstream.peer import (
    CLIENT_SECRET,
    OTHER_TENANT,
    TENANT,
    Upstream,
    admin_browser,
    audit_events,
    azure_shape,
    free,
    make_fed_app,
    navigate_target,
    okta_shape,
    upstream_login,
)

BASE = "http://localhost"


def okta_connection(issuer: str, **extra) -> dict:
    return {"slug": "okta", "name": "Okta", "protocol": "oidc", "preset": "okta", "issuer": issuer,
            "client_id": "okta-idhub", "client_secret": CLIENT_SECRET, "domains": ["acme.test"], **extra}


def azure_connection(issuer: str, **extra) -> dict:
    return {"slug": "azure", "name": "Azure AD", "protocol": "oidc", "preset": "azure_ad", "issuer": issuer,
            "client_id": "azure-idhub", "client_secret": CLIENT_SECRET, "domains": ["acme.test"], **extra}


def config_with(*connections, policies: dict | None = None) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = list(connections)
    if policies:
        cfg["workspaces"][0]["policies"].update(policies)
    return cfg


@pytest.fixture(scope="module")
def okta():
    port = free()
    with Upstream(okta_shape(port, [f"{BASE}/w/acme/sso/okta/callback", f"{BASE}/w/acme/sso/okta2/callback"])) as up:
        yield up


@pytest.fixture(scope="module")
def azure():
    port = free()
    with Upstream(azure_shape(port, [f"{BASE}/w/acme/sso/azure/callback"])) as up:
        yield up


def sso_signin(app, email: str, username: str, *, mfa: bool = False, browser: Browser | None = None,
               upstream: requests.Session | None = None):
    """Email at idhub -> the upstream's sign-in page -> back to idhub's callback; returns idhub's answer.
    ``upstream``: the browser's cookies at the upstream (its session there), a fresh one by default."""
    b = browser or Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": email})
    assert r.status_code == 302 and "/sso/" in r.headers["Location"], r.get_data(as_text=True)[:500]
    r = b.get(r.headers["Location"])
    assert r.status_code == 200, r.get_data(as_text=True)[:800]
    authorize = navigate_target(r.get_data(as_text=True))
    q = parse_qs(urlsplit(authorize).query)
    assert q["code_challenge_method"] == ["S256"] and q["state"] and q["nonce"] and q["login_hint"] == [email]
    callback = upstream_login(upstream if upstream is not None else requests.Session(), authorize, username, mfa=mfa)
    return b, b.get(callback.removeprefix(BASE))


def user(hub, email):
    with hub.db() as db:
        return db.scalar(select(User).where(User.email_normalized == email))


def groups_of(hub, user_id):
    with hub.db() as db:
        return sorted(db.scalars(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                                 .where(GroupMember.user_id == user_id)))


# ---- Okta ------------------------------------------------------------------------------------------------------
def test_okta_just_in_time_user_groups_session_and_audit(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    b, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/apps"), \
        r.get_data(as_text=True)[:800]
    page = b.security()
    assert page.status_code == 200 and "ada@acme.test" in page.get_data(as_text=True)
    ada = user(hub, "ada@acme.test")
    assert ada.name == "Ada Lovelace" and ada.password_hash is None and ada.active
    assert groups_of(hub, ada.id) == ["Everyone", "eng"]
    with hub.db() as db:
        link = db.scalar(select(FederationLink).where(FederationLink.user_id == ada.id))
    assert link.subject == "ada"  # keyed on the IdP's sub, never the email
    ok = audit_events(hub, "federation.signin.success")
    assert ok and ok[-1].actor_id == ada.id and ok[-1].data["connection"] == "okta"
    assert ok[-1].data["amr"] == ["fed", "pwd"]
    assert audit_events(hub, "federation.user.created")
    assert ada.external_id == "ada"  # managed by the IdP: no local password can be set through a reset link
    Browser(app).form_post("/w/acme/password/forgot", "/w/acme/password/forgot", {"email": "ada@acme.test"})
    reset = audit_events(hub, "password.reset.requested")[-1].data
    assert reset["sent"] is False and reset["reason"] == "externally_managed"
    # a second sign-in finds the link; no second account
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 302
    with hub.db() as db:
        assert len(db.scalars(select(User).where(User.email_normalized == "ada@acme.test")).all()) == 1


def test_untrusted_upstream_mfa_still_runs_idhubs_second_factor(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer), policies={"require_mfa": True}))
    _, r = sso_signin(app, "ada@acme.test", "ada", mfa=True)  # the IdP did MFA, but trust_mfa is off
    assert r.status_code == 302 and "/login/2fa/enroll" in r.headers["Location"] or \
        "/enroll" in r.headers["Location"], r.headers.get("Location")


def test_trusted_upstream_mfa_satisfies_require_mfa(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, trust_mfa=True),
                                             policies={"require_mfa": True}))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "ada@acme.test", "ada", mfa=False)  # trusted, but the IdP says it did not do MFA
    assert "/enroll" in r.headers["Location"]
    _, r = sso_signin(app, "ada@acme.test", "ada", mfa=True)
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), r.headers["Location"]
    assert audit_events(hub, "federation.signin.success")[-1].data["amr"] == ["fed", "pwd", "upstream_mfa"]


def test_existing_local_account_is_not_taken_over_by_email(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, BOB, "bob")
    assert r.status_code == 400 and "Error id" in r.get_data(as_text=True)
    fail = audit_events(hub, "federation.signin.failure")[-1]
    assert fail.data["check"] == "email_conflict"
    # only when the connection says so, and the IdP verified the address
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, link_by_email=True)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, BOB, "bob")
    assert r.status_code == 302
    assert audit_events(hub, "federation.user.linked")[-1].data["linked_by"] == "email"


def test_scim_provisioned_user_is_linked_by_external_id(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, jit=False)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "carol@acme.test", "carol")  # no account and no JIT
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "not_provisioned"
    with hub.db() as db:
        ws_id = db.scalar(select(User.workspace_id).where(User.email_normalized == BOB))
        db.add(User(workspace_id=ws_id, email="c.other@acme.test", email_normalized="c.other@acme.test",
                    external_id="carol", name="Carol (HR)"))
        db.commit()
    _, r = sso_signin(app, "carol@acme.test", "carol")
    assert r.status_code == 302
    assert audit_events(hub, "federation.user.linked")[-1].data["linked_by"] == "external_id"


def test_deactivated_user_is_refused(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 302
    with hub.db() as db:
        db.scalar(select(User).where(User.email_normalized == "ada@acme.test")).active = False
        db.commit()
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 403 and "deactivated" in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "deactivated"


def test_sso_required_refuses_local_passwords(settings, okta):
    import hashlib

    from idp.accounts import workspace_by_slug
    from idp.flow import FlowManager
    from tests.conftest import BOB_PW

    optional = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    r = Browser(optional).form_post("/w/acme/login", "/w/acme/login", {"email": BOB, "local": "1"})
    assert "/login/password" in r.headers["Location"]  # break-glass local password while SSO is optional
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, sso_required=True)))
    hub = app.extensions["idhub"]
    b = Browser(app)
    r = b.form_post("/w/acme/login", "/w/acme/login", {"email": BOB, "local": "1"})
    assert "/sso/okta/start" in r.headers["Location"]  # no escape from home-realm discovery
    # a password step for such an address (e.g. a flow made before SSO became required) is refused
    binding = hashlib.sha256(("flow|" + b.client.get_cookie("idhub_csrf").value).encode()).hexdigest()
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
    flow = FlowManager(hub.stores.flows).start(ws.id, binding, "", email=BOB, state="password")
    page = b.get(f"/w/acme/login/password?flow={flow.id}")
    r = b.post("/w/acme/login/password", {"flow": flow.id, "password": BOB_PW, "csrf_token": b.csrf()})
    assert r.status_code == 401 and "requires single sign-on with Okta" in r.get_data(as_text=True)
    assert page.status_code == 200
    assert audit_events(hub, "auth.signin.failure")[-1].data["reason"] == "sso_required"
    assert b.security().status_code == 302  # not signed in


# ---- Azure AD --------------------------------------------------------------------------------------------------
def azure_multi(azure, **extra) -> dict:
    base = azure.issuer.rsplit("/", 2)[0]
    return azure_connection(f"{base}/organizations/v2.0", allowed_tenants=[TENANT], **extra)


def test_azure_multi_tenant_template_tid_oid_subject(settings, azure):
    app = make_fed_app(settings, config_with(azure_multi(azure)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    ada = user(hub, "ada@acme.test")
    with hub.db() as db:
        link = db.scalar(select(FederationLink).where(FederationLink.user_id == ada.id))
    assert link.subject == f"{TENANT}:00000000-0000-0000-0000-00000000a0a0"
    assert groups_of(hub, ada.id) == ["11111111-1111-1111-1111-111111111111"]


def test_azure_tenant_not_allowed_is_refused(settings, azure):
    base = azure.issuer.rsplit("/", 2)[0]
    app = make_fed_app(settings, config_with(azure_connection(f"{base}/organizations/v2.0",
                                                              allowed_tenants=[OTHER_TENANT])))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] in ("tenant", "issuer")
    assert user(hub, "ada@acme.test") is None


def test_azure_token_whose_tid_is_not_the_issuers_tenant_is_refused(settings, azure):
    base = azure.issuer.rsplit("/", 2)[0]
    app = make_fed_app(settings, config_with(azure_connection(f"{base}/organizations/v2.0",
                                                              allowed_tenants=[TENANT, OTHER_TENANT])))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "guest@acme.test", "guest")  # tid OTHER_TENANT, but iss names TENANT
    assert r.status_code == 400
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "issuer"


def test_azure_groups_overage_reported_then_resolved(settings, azure):
    app = make_fed_app(settings, config_with(azure_multi(azure)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "many@acme.test", "many")
    assert r.status_code == 302
    warning = audit_events(hub, "federation.signin.warning")[-1]
    assert "groups overage" in warning.data["warning"] and "not updated" in warning.data["warning"]
    assert groups_of(hub, user(hub, "many@acme.test").id) == []
    base = azure.issuer.rsplit("/", 2)[0]
    app = make_fed_app(settings, config_with(azure_multi(azure, groups_endpoint=f"{base}/v1.0/me/memberOf")))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "many@acme.test", "many")
    assert r.status_code == 302
    assert len(groups_of(hub, user(hub, "many@acme.test").id)) == 230


# ---- Test connection (OIDC) ---------------------------------------------------------------------------------------
def test_test_connection_runs_a_sign_in_and_changes_nothing(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    b = admin_browser(app)  # alice, acme's admin, signed in with a second factor
    page = b.get("/w/acme/sso/okta/test").get_data(as_text=True)
    assert f"{BASE}/w/acme/sso/okta/callback" in page  # the redirect URI to register
    r = b.form_post("/w/acme/sso/okta/test", "/w/acme/sso/okta/test", {})
    callback = upstream_login(requests.Session(), navigate_target(r.get_data(as_text=True)), "ada", mfa=True)
    r = b.get(callback.removeprefix(BASE))
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "The identity provider signed you in" in body
    assert "ada@acme.test" in body and "Everyone" in body and "upstream_mfa" not in body  # trust_mfa is off
    assert user(hub, "ada@acme.test") is None  # nobody created, nobody signed in as ada
    assert audit_events(hub, "federation.test.succeeded")
    # a callback replayed into the test page fails, naming the check
    r = b.get(callback.removeprefix(BASE))
    assert r.status_code == 400 and audit_events(hub, "federation.signin.failure")[-1].data["check"] == "state"


# ---- Okta shapes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trailing_slash", [False, True])
def test_okta_org_authorization_server_issuer(settings, trailing_slash):
    """Okta's org authorization server: issuer ``https://<org>.okta.com`` with no ``/oauth2/...`` path."""
    port = free()
    with Upstream(okta_shape(port, [f"{BASE}/w/acme/sso/okta/callback"], path="")) as org:
        assert urlsplit(org.issuer).path == ""
        issuer = org.issuer + ("/" if trailing_slash else "")
        app = make_fed_app(settings, config_with(okta_connection(issuer)))
        hub = app.extensions["idhub"]
        b, r = sso_signin(app, "ada@acme.test", "ada")
        assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), \
            r.get_data(as_text=True)[:500]
        assert b.security().status_code == 200
        assert groups_of(hub, user(hub, "ada@acme.test").id) == ["Everyone", "eng"]


def test_okta_groups_truncation_is_warned_about(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "crowd@acme.test", "crowd")
    assert r.status_code == 302
    warning = audit_events(hub, "federation.signin.warning")[-1].data["warning"]
    assert "at most 100 groups" in warning and warning.startswith("Okta")
    assert len(groups_of(hub, user(hub, "crowd@acme.test").id)) == 100  # what was sent is applied
    _, r = sso_signin(app, "ada@acme.test", "ada")  # fewer groups: no warning
    assert len(audit_events(hub, "federation.signin.warning")) == 1


# ---- nOAuth against real peers ------------------------------------------------------------------------------------
def test_okta_unverified_email_does_not_link_to_an_existing_account(settings, okta):
    """mallory's Okta profile says bob@acme.test with email_verified false: not bob, even with link_by_email."""
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, link_by_email=True)))
    hub = app.extensions["idhub"]
    b, r = sso_signin(app, BOB, "mallory")
    assert r.status_code == 403 and "did not confirm that your email address is verified" in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "email_unverified"
    assert b.security().status_code == 302
    with hub.db() as db:
        assert db.scalar(select(FederationLink).where(FederationLink.subject == "mallory")) is None
    _, r = sso_signin(app, BOB, "bob")  # the real bob, verified by Okta
    assert r.status_code == 302
    with hub.db() as db:
        assert db.scalar(select(FederationLink.user_id).where(FederationLink.subject == "bob")) == \
            user(hub, BOB).id


def test_azure_email_does_not_link_unless_the_connection_vouches_for_it(settings, azure):
    """Azure AD sends no email_verified, and its email is editable: link_by_email alone does not link."""
    app = make_fed_app(settings, config_with(azure_multi(azure, link_by_email=True)))
    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws_id = db.scalar(select(User.workspace_id).where(User.email_normalized == BOB))
        db.add(User(workspace_id=ws_id, email="ada@acme.test", email_normalized="ada@acme.test", name="Local Ada"))
        db.commit()
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 403
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "email_unverified"
    app = make_fed_app(settings, config_with(azure_multi(azure, link_by_email=True, email_verified_by_idp=True)))
    hub = app.extensions["idhub"]
    _, r = sso_signin(app, "ada@acme.test", "ada")
    assert r.status_code == 302
    assert audit_events(hub, "federation.user.linked")[-1].data["linked_by"] == "email"


def test_jit_refuses_addresses_outside_the_connections_domains(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, domains=["other.test"])))
    hub = app.extensions["idhub"]
    b = Browser(app)
    r = b.get("/w/acme/sso/okta/start")  # "Sign in with Okta" without an email first
    callback = upstream_login(requests.Session(), navigate_target(r.get_data(as_text=True)), "ada")
    r = b.get(callback.removeprefix(BASE))
    assert r.status_code == 403 and "other.test" in r.get_data(as_text=True)
    assert audit_events(hub, "federation.signin.failure")[-1].data["check"] == "email_domain"
    assert user(hub, "ada@acme.test") is None


# ---- groups overage paging -----------------------------------------------------------------------------------------
class Recorder:
    """Another origin (same machine, other port): records every request and its Authorization header."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append((self.path, self.headers.get("Authorization")))
                body = b'{"value": [{"id": "planted-by-evil"}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def paged_azure(next_origin: str | None = None):
    port = free()
    cfg = azure_shape(port, [f"{BASE}/w/acme/sso/azure/callback"])
    cfg["graph"]["page_size"] = 100
    if next_origin:
        cfg["graph"]["next_origin"] = next_origin
    return Upstream(cfg)


def test_groups_overage_follows_next_links_on_the_same_origin(settings):
    with paged_azure() as up:
        base = up.issuer.rsplit("/", 2)[0]
        app = make_fed_app(settings, config_with(azure_multi(up, groups_endpoint=f"{base}/v1.0/me/memberOf")))
        hub = app.extensions["idhub"]
        _, r = sso_signin(app, "many@acme.test", "many")
        assert r.status_code == 302
        assert len(groups_of(hub, user(hub, "many@acme.test").id)) == 230  # three pages


def test_groups_overage_next_link_to_another_host_is_not_followed(settings):
    evil = Recorder()
    try:
        with paged_azure(next_origin=evil.origin) as up:
            base = up.issuer.rsplit("/", 2)[0]
            app = make_fed_app(settings, config_with(azure_multi(up, groups_endpoint=f"{base}/v1.0/me/memberOf")))
            hub = app.extensions["idhub"]
            _, r = sso_signin(app, "many@acme.test", "many")
            assert r.status_code == 302
            assert evil.seen == []  # the access token never left for the other origin
            warning = audit_events(hub, "federation.signin.warning")[-1].data["warning"]
            assert "another host" in warning and "not updated" in warning
            assert groups_of(hub, user(hub, "many@acme.test").id) == []  # a partial list is not applied
    finally:
        evil.close()


# ---- re-authentication at the upstream IdP ("Confirm it's you") ------------------------------------------------------
NEXT_RE = re.compile(r'name="next" value="([^"]+)"')
SECRET_RE = re.compile(r"data-secret>([A-Z2-7 ]+)<")


def shift_clock(hub, seconds: int) -> None:
    """idhub's clock runs ``seconds`` ahead from now on (the upstream keeps real time)."""
    from datetime import UTC, datetime, timedelta

    hub.clock = lambda: datetime.now(UTC) + timedelta(seconds=seconds)


def continue_upstream(b: Browser, target: str, conn_name: str = "Okta") -> tuple[str, str]:
    """``target`` asks to confirm it's you; the page offers "Continue with <IdP>" (a plain POST form), which sends
    the browser to the IdP. Returns (the re-authentication page, the authorization URL)."""
    r = b.get(target)
    assert r.status_code == 302 and "/settings/security/reauth" in r.headers["Location"], r.headers.get("Location")
    page = html.unescape(b.get(r.headers["Location"]).get_data(as_text=True))
    assert f"Continue with {conn_name}" in page and 'action="/w/acme/sso/okta/reauth"' in page
    r = b.post("/w/acme/sso/okta/reauth", {"next": NEXT_RE.search(page)[1], "csrf_token": b.csrf(page)})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    assert "Confirming it" in r.get_data(as_text=True)
    return page, navigate_target(r.get_data(as_text=True))


def totp_setup(b: Browser, hub, page_url: str = "/w/acme/settings/security/2fa/totp"):
    import pyotp

    r = b.get(page_url)
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"))
    page = r.get_data(as_text=True)
    totp = pyotp.TOTP(SECRET_RE.search(page)[1].replace(" ", ""))
    r = b.post(page_url, {"action": "verify", "code": totp.at(hub.clock()), "csrf_token": b.csrf(page)})
    assert r.status_code == 200 and "Backup codes" in r.get_data(as_text=True), r.get_data(as_text=True)[:500]
    return totp


def test_federated_user_reauthenticates_upstream_then_enables_totp(settings, okta):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer, sso_required=True)))
    hub = app.extensions["idhub"]
    up = requests.Session()  # the browser at the upstream: still signed in there after the sign-in
    b, r = sso_signin(app, "ada@acme.test", "ada", upstream=up)
    assert r.status_code == 302
    ada = user(hub, "ada@acme.test")
    page, authorize = continue_upstream(b, "/w/acme/settings/security/2fa/totp")
    assert 'name="password"' not in page  # JIT-created, SSO required: no idhub password to type
    q = parse_qs(urlsplit(authorize).query)
    assert q["prompt"] == ["login"] and q["max_age"] == ["0"] and q["login_hint"] == ["ada@acme.test"]
    assert q["state"] and q["nonce"] and q["code_challenge_method"] == ["S256"]
    # the upstream has a session for ada, yet asks for the password again (prompt=login)
    login_page = up.get(authorize, timeout=10)
    assert login_page.status_code == 200 and 'name="password"' in login_page.text
    callback = upstream_login(up, authorize, "ada")
    r = b.get(callback.removeprefix(BASE))
    assert r.status_code == 302 and r.headers["Location"].endswith("/w/acme/settings/security/2fa/totp"), \
        r.get_data(as_text=True)[:500]
    ok = audit_events(hub, "auth.reauth.success")[-1]
    assert ok.actor_id == ada.id and ok.data["connection"] == "okta" and ok.data["level"] == "pwd"
    assert ok.data["method"] == "oidc"
    assert not audit_events(hub, "federation.signin.success")[1:]  # a re-authentication is not a sign-in
    totp = totp_setup(b, hub)
    assert audit_events(hub, "mfa.totp.enabled")[-1].actor_id == ada.id
    assert b.security().status_code == 200 and "ada@acme.test" in b.security().get_data(as_text=True)
    # 2FA is on now: new backup codes need a current code as well; the upstream sign-in counts as the first step
    shift_clock(hub, 30)
    r = b.get("/w/acme/settings/security/2fa/backup-codes")
    assert "/reauth" in r.headers["Location"]
    page = html.unescape(b.get(r.headers["Location"]).get_data(as_text=True))
    assert "Now enter a current two-factor code" in page and 'name="password"' not in page
    assert "Continue with Okta" not in page
    r = b.post("/w/acme/settings/security/reauth?method=totp", {"next": NEXT_RE.search(page)[1],
                                                               "code": totp.at(hub.clock()),
                                                               "csrf_token": b.csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/2fa/backup-codes")
    assert b.get("/w/acme/settings/security/2fa/backup-codes").status_code == 200
    assert audit_events(hub, "auth.reauth.success")[-1].data["level"] == "mfa"


@pytest.mark.parametrize("other_exists", [False, True])
def test_reauthentication_as_another_upstream_user_is_refused(settings, okta, other_exists):
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    if other_exists:
        sso_signin(app, "carol@acme.test", "carol")  # carol has an idhub account, linked to her Okta identity
    b, r = sso_signin(app, "ada@acme.test", "ada")
    ada = user(hub, "ada@acme.test")
    _, authorize = continue_upstream(b, "/w/acme/settings/security/2fa/totp")
    callback = upstream_login(requests.Session(), authorize, "carol")  # someone else signs in at Okta
    r = b.get(callback.removeprefix(BASE))
    body = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 403 and "as someone other than ada@acme.test" in body and "Error id" in body
    fail = audit_events(hub, "auth.reauth.failure")[-1]
    assert fail.actor_id == ada.id and fail.data["reason"] == "identity_mismatch"
    assert fail.data["connection"] == "okta" and fail.data["other_account"] is other_exists
    assert not audit_events(hub, "auth.reauth.success")
    # never a switch of users: still ada's session, still unconfirmed; carol was neither created nor signed in
    assert "ada@acme.test" in b.security().get_data(as_text=True)
    assert "/reauth" in b.get("/w/acme/settings/security/2fa/totp").headers["Location"]
    assert (user(hub, "carol@acme.test") is not None) is other_exists
    assert len(audit_events(hub, "auth.signin.success")) == (2 if other_exists else 1)


def test_stale_auth_time_is_refused(settings, okta):
    """An IdP that ignores prompt=login/max_age and answers from its session: auth_time is that old sign-in's."""
    app = make_fed_app(settings, config_with(okta_connection(okta.issuer)))
    hub = app.extensions["idhub"]
    up = requests.Session()
    b, r = sso_signin(app, "ada@acme.test", "ada", upstream=up)
    assert r.status_code == 302
    shift_clock(hub, 400)  # the sign-in at Okta was ~7 minutes ago (the ID token itself is still valid)
    _, authorize = continue_upstream(b, "/w/acme/settings/security/2fa/totp")
    parts = urlsplit(authorize)
    query = {k: v for k, v in parse_qs(parts.query).items() if k not in ("prompt", "max_age")}
    from urllib.parse import urlencode

    ignoring = parts._replace(query=urlencode(query, doseq=True)).geturl()
    callback = upstream_login(up, ignoring, "ada")  # no sign-in page: the upstream reused its session
    r = b.get(callback.removeprefix(BASE))
    body = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 403 and "did not ask you to sign in again" in body, body[:500]
    fail = audit_events(hub, "federation.signin.failure")[-1].data
    assert fail["check"] == "auth_time" and fail["reauth"] is True
    assert audit_events(hub, "auth.reauth.failure")[-1].data["reason"] == "auth_time"
    assert "/reauth" in b.get("/w/acme/settings/security/2fa/totp").headers["Location"]
    # an honest forced sign-in whose answer arrives more than 5 minutes after it happened is refused too
    shift_clock(hub, 0)
    _, authorize = continue_upstream(b, "/w/acme/settings/security/2fa/totp")
    callback = upstream_login(up, authorize, "ada")
    shift_clock(hub, 400)
    r = b.get(callback.removeprefix(BASE))
    assert r.status_code == 403 and audit_events(hub, "federation.signin.failure")[-1].data["check"] == "auth_time"
    # a prompt one passes
    shift_clock(hub, 0)
    _, authorize = continue_upstream(b, "/w/acme/settings/security/2fa/totp")
    r = b.get(upstream_login(up, authorize, "ada").removeprefix(BASE))
    assert r.status_code == 302 and r.headers["Location"].endswith("/2fa/totp")
