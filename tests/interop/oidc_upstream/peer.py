"""The upstream OpenID provider (node ``oidc-provider``) as a test peer: installed from the lock file into this
folder when missing, started on a free port, stopped by pid. Shapes: :func:`okta_shape`, :func:`azure_shape`.

The tests FAIL (never skip) when node or npm are missing."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.helpers.smtp import free_port

HERE = Path(__file__).resolve().parent
CLIENT_SECRET = "upstream-client-secret-" + "u" * 24
PASSWORD = "upstream-Pa55"
TENANT = "6f1b3a52-0d3c-4a55-9d5e-1c2b3a4d5e6f"
OTHER_TENANT = "0a0b0c0d-1111-2222-3333-444455556666"


def node_bin() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the federation interoperability tests (Node 20+)", pytrace=False)
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            pytest.fail(f"`npm ci` in {HERE} failed:\n{res.stdout}\n{res.stderr}", pytrace=False)
    return node


def okta_shape(port: int, redirect_uris: list[str], *, path: str = "/oauth2/default") -> dict:
    """Okta: a custom authorization server issuer (``https://<org>.okta.com/oauth2/default``), or with ``path=""``
    the org authorization server (issuer ``https://<org>.okta.com``, no path); names for groups."""
    return {
        "port": port, "issuer": f"http://127.0.0.1:{port}{path}", "title": "Okta",
        "clients": [{"client_id": "okta-idhub", "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris,
                     "token_endpoint_auth_method": "client_secret_basic"}],
        "accounts": {
            "ada": {"password": PASSWORD, "claims": {"email": "ada@acme.test", "email_verified": True,
                                                     "name": "Ada Lovelace", "given_name": "Ada",
                                                     "family_name": "Lovelace", "groups": ["Everyone", "eng"]}},
            "carol": {"password": PASSWORD, "claims": {"email": "carol@acme.test", "email_verified": True,
                                                       "name": "Carol", "groups": ["Everyone"]}},
            "bob": {"password": PASSWORD, "claims": {"email": "bob@acme.test", "email_verified": True,
                                                     "name": "Bob from Okta", "groups": []}},
            # someone who set bob's address on their own Okta profile, which Okta did not verify
            "mallory": {"password": PASSWORD, "claims": {"email": "bob@acme.test", "email_verified": False,
                                                         "name": "Not Bob", "groups": []}},
            # more groups than Okta puts into a token (it sends at most 100)
            "crowd": {"password": PASSWORD, "claims": {
                "email": "crowd@acme.test", "email_verified": True, "name": "Crowd",
                "groups": [f"team-{i:03d}" for i in range(100)]}},
        },
        "scope_claims": {"openid": ["sub", "amr", "acr", "auth_time"], "email": ["email", "email_verified"],
                         "profile": ["name", "given_name", "family_name"], "groups": ["groups"]},
    }


def azure_shape(port: int, redirect_uris: list[str], *, multi_tenant: bool = True) -> dict:
    """Azure AD v2.0: issuer ``/{tenant}/v2.0``; multi-tenant discovery at ``/organizations/v2.0`` with the
    ``{tenantid}`` template; ``tid``/``oid``; groups as object ids; one user over the groups limit (overage)."""
    base = f"http://127.0.0.1:{port}"
    cfg = {
        "port": port, "issuer": f"{base}/{TENANT}/v2.0", "title": "Microsoft",
        "clients": [{"client_id": "azure-idhub", "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris,
                     "token_endpoint_auth_method": "client_secret_post"}],
        "accounts": {
            "ada": {"password": PASSWORD, "claims": {
                "email": "ada@acme.test", "name": "Ada Lovelace", "preferred_username": "ada@acme.test",
                "tid": TENANT, "oid": "00000000-0000-0000-0000-00000000a0a0",
                "groups": ["11111111-1111-1111-1111-111111111111"]}},
            "many": {"password": PASSWORD, "claims": {
                "email": "many@acme.test", "name": "Many Groups", "preferred_username": "many@acme.test",
                "tid": TENANT, "oid": "00000000-0000-0000-0000-0000000000bb",
                "_claim_names": {"groups": "src1"},
                "_claim_sources": {"src1": {"endpoint": f"{base}/v1.0/me/memberOf"}}}},
            "guest": {"password": PASSWORD, "claims": {  # a token whose tid is not the issuer's tenant
                "email": "guest@acme.test", "name": "Guest", "tid": OTHER_TENANT,
                "oid": "00000000-0000-0000-0000-0000000000cc"}},
        },
        "scope_claims": {"openid": ["sub", "amr", "tid", "oid"], "email": ["email"],
                         "profile": ["name", "preferred_username", "groups"]},
        "graph": {"path": "/v1.0/me/memberOf", "groups": {
            "many": [f"{i:08d}-2222-2222-2222-222222222222" for i in range(230)]}},
    }
    if multi_tenant:
        cfg["template"] = {"alias_path": "/organizations/v2.0", "issuer": base + "/{tenantid}/v2.0"}
    return cfg


class Upstream:
    def __init__(self, config: dict):
        self.config = config
        self.port = config["port"]
        self.proc: subprocess.Popen | None = None
        self.log = Path(f"/tmp/idhub-upstream-{uuid.uuid4().hex[:8]}.log")

    @property
    def issuer(self) -> str:
        return self.config["issuer"]

    def __enter__(self) -> Upstream:
        node = node_bin()
        self._fh = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([node, "upstream.mjs", json.dumps(self.config)], cwd=HERE, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(200):
            if f"ready {self.port}" in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        pytest.fail(f"the upstream OIDC provider did not start:\n{self.log.read_text(errors='replace')}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None
        self._fh.close()


FORM_ACTION_RE = re.compile(r'<form method="post" action="([^"]+)"')


def upstream_login(session, url: str, username: str, password: str = PASSWORD, mfa: bool = False) -> str:
    """Follow the upstream's redirects with a ``requests.Session``, sign in on its page; return the URL it finally
    redirects the browser to (the connection's callback), without following it."""
    r = session.get(url, allow_redirects=False, timeout=10)
    for _ in range(10):
        if r.status_code in (302, 303):
            loc = urljoin(r.url, r.headers["Location"])
            if "/sso/" in loc and "/callback" in loc:
                return loc
            r = session.get(loc, allow_redirects=False, timeout=10)
            continue
        m = FORM_ACTION_RE.search(r.text)
        assert r.status_code == 200 and m, (r.status_code, r.text[:500])
        data = {"username": username, "password": password, **({"mfa": "1"} if mfa else {})}
        r = session.post(urljoin(r.url, html.unescape(m.group(1))), data=data, allow_redirects=False, timeout=10)
    raise AssertionError("too many redirects at the upstream")


META_RE = re.compile(r'<meta http-equiv="refresh" content="0;url=([^"]+)">')


def navigate_target(page: str) -> str:
    """Where idhub's "Signing in with …" page sends the browser (meta refresh)."""
    m = META_RE.search(page)
    assert m, page[:500]
    return html.unescape(m.group(1))


def free() -> int:
    return free_port()


def make_fed_app(settings, config: dict, http=None):
    """The app of tests/conftest.py's ``make_app``, with connections applied under the hub's own key (and an
    optional HTTP session for the federation service)."""
    from federation.service import FederationService
    from idp import schema
    from idp.app import build_hub, create_app
    from idp.configfile import apply, validate
    from tests.conftest import fast_hasher

    schema.upgrade(settings.database_url)
    hub = build_hub(settings, hasher=fast_hasher())
    with hub.db() as db:
        apply(db, validate(config), hub.hasher, secret_key=settings.secret_key)
        db.commit()
    app = create_app(settings, hub=hub)
    app.testing = True
    if http is not None:
        app.extensions["idhub.federation"] = FederationService(hub, http=http)
    return app


def audit_events(hub, type_: str) -> list:
    from sqlalchemy import select

    from idp.audit import AuditEvent

    with hub.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.seq)))


def admin_browser(app, email: str | None = None, ws_slug: str = "acme", amr=("pwd", "totp")):
    """A browser holding a session of ``email`` (default: alice, acme's admin) made by the hub's own
    ``complete_signin``, as if they had signed in with ``amr`` — admins need a second factor for the admin console
    and the Test connection page unless the workspace sets ``require_mfa_for_admins: false``."""
    from sqlalchemy import select

    from idp.flow import AuthnResult, Client
    from idp.models import User, Workspace
    from tests.conftest import ALICE, Browser

    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws = db.scalar(select(Workspace).where(Workspace.slug == ws_slug))
        uid = db.scalar(select(User.id).where(User.workspace_id == ws.id,
                                              User.email_normalized == (email or ALICE)))
    b = Browser(app)
    b.get(f"/w/{ws_slug}/login")  # the CSRF cookie, as a browser would have it
    token, _ = hub.complete_signin(ws, AuthnResult(ws.id, uid, tuple(amr), hub.clock()),
                                   Client("127.0.0.1", b.ua, "test"))
    b.client.set_cookie(f"idhub_session_{ws_slug}", token)
    return b
