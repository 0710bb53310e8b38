"""SPs registered by ``metadata_url``: fetched at apply time and refreshed; https or loopback http only, no
redirects, bounded size and time, parsed by the hardened parser. A local HTTP server plays the SP's site."""

from __future__ import annotations

import http.server
import threading

import pytest
from saml2 import BINDING_HTTP_POST
from sqlalchemy import select

from idp.accounts import workspace_by_slug
from idp.audit import AuditEvent
from saml.config import SamlConfigError, apply_saml_apps, fetch_metadata, refresh_metadata, saml_app_errors
from saml.models import SamlServiceProvider
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import ACS, full_flow, idp_metadata, redirect_request, sp_client, sp_metadata

ROUTES: dict[str, tuple[int, dict, bytes]] = {}
HANG = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/hang":
            HANG.wait(30)
            return
        status, headers, body = ROUTES.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # idhub stopped reading: the size bound at work

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        HANG.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def ws_of(db):
    return workspace_by_slug(db, "acme")


def test_apply_fetches_the_metadata_and_sso_works(env, site):
    app, tmp = env
    hub = app.extensions["idhub"]
    client = sp_client(tmp, idp_metadata(app))
    ROUTES["/sp.xml"] = (200, {"Content-Type": "application/samlmetadata+xml"}, sp_metadata(client).encode())
    entry = {"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_url": site + "/sp.xml"}
    assert saml_app_errors(entry) == []
    with hub.db() as db:
        apply_saml_apps(db, ws_of(db), [entry])
        db.commit()
        row = db.scalar(select(SamlServiceProvider))
        assert row.metadata_url == site + "/sp.xml" and row.metadata_fetched_at is not None
        assert row.acs[0]["url"] == ACS
    reqid, url = redirect_request(client)
    b = Browser(app)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE


def test_refresh_applies_new_metadata_and_keeps_the_old_on_failure(env, site):
    app, tmp = env
    hub = app.extensions["idhub"]
    client = sp_client(tmp, idp_metadata(app))
    meta = sp_metadata(client)
    ROUTES["/r.xml"] = (200, {}, meta.encode())
    with hub.db() as db:
        apply_saml_apps(db, ws_of(db), [{"slug": "payroll", "protocol": "saml", "metadata_url": site + "/r.xml",
                                         "require_mfa": True}])
        db.commit()
        assert refresh_metadata(db, ws_of(db)) == []  # fresh: nothing to do
        ROUTES["/r.xml"] = (200, {}, meta.replace(ACS, "https://sp.example.test/saml/acs2").encode())
        assert refresh_metadata(db, ws_of(db), max_age=0, audit=hub.audit) == [client.config.entityid]
        db.commit()
        row = db.scalar(select(SamlServiceProvider))
        assert row.acs[0]["url"] == "https://sp.example.test/saml/acs2" and row.require_mfa  # options kept
        ROUTES["/r.xml"] = (200, {}, b"<not-metadata/>")
        assert refresh_metadata(db, ws_of(db), max_age=0, audit=hub.audit) == []
        db.commit()
        db.refresh(row)
        assert row.acs[0]["url"] == "https://sp.example.test/saml/acs2"
        failed = db.scalars(select(AuditEvent).where(AuditEvent.type == "saml.metadata.refresh_failed")).all()
        assert len(failed) == 1 and failed[0].data["sp"] == client.config.entityid


XXE = (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&x;"/>')


@pytest.mark.parametrize(("path", "route", "reason"), [
    ("/big", (200, {}, b"<a>" + b" " * (600 * 1024) + b"</a>"), "too large"),
    ("/big-declared", (200, {"Content-Length": str(10**9)}, b""), "too large"),
    ("/chunked-big", (200, {"Content-Length": ""}, b"x" * (600 * 1024)), "too large"),
    ("/redirect", (302, {"Location": "http://169.254.169.254/latest"}, b""), "redirected"),
    ("/error", (500, {}, b"boom"), "HTTP 500"),
    ("/missing", None, "HTTP 404"),
    ("/xxe", (200, {}, XXE), "DTDs are not allowed"),
    ("/html", (200, {}, b"<html><body>login</body></html>"), "not an EntityDescriptor"),
])
def test_bad_metadata_urls_are_refused(site, path, route, reason):
    if route is not None:
        ROUTES[path] = route
    problems = saml_app_errors({"slug": "x", "protocol": "saml", "metadata_url": site + path})
    assert len(problems) == 1 and reason in problems[0], problems


@pytest.mark.parametrize("url", [
    "http://sp.example.test/md.xml",  # plain http off the loopback
    "ftp://127.0.0.1/md.xml",
    "file:///etc/passwd",
    "https://user:pw@sp.example.test/md.xml",
])
def test_only_https_or_loopback_http(url):
    with pytest.raises(SamlConfigError):
        fetch_metadata(url)


def test_fetch_time_is_bounded(site):
    with pytest.raises(SamlConfigError, match="could not be fetched|took too long"):
        fetch_metadata(site + "/hang", timeout=0.5, reuse_for=0)


def test_a_copy_fetched_for_the_config_file_is_not_handed_to_a_guarded_fetch(site, monkeypatch):
    """The config file's fetch (trusted, loopback allowed) and the admin API's (idp.netfetch's checks) do not
    share the short-lived copy: an API caller naming the same internal URL a moment later is still refused."""
    monkeypatch.delenv("IDHUB_OUTBOUND_ALLOW_CIDRS", raising=False)
    ROUTES["/shared.xml"] = (200, {}, b"<md/>")
    assert fetch_metadata(site + "/shared.xml") == b"<md/>"
    with pytest.raises(SamlConfigError, match=r"^metadata_url: points to a loopback address \(127\.0\.0\.1\)$"):
        fetch_metadata(site + "/shared.xml", guarded=True)
    monkeypatch.setenv("IDHUB_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
    assert fetch_metadata(site + "/shared.xml", guarded=True, reuse_for=0) == b"<md/>"
