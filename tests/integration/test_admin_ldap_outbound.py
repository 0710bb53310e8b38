"""LDAP servers of connections a workspace admin registered over the admin API or console (attack first): users'
passwords are sent to them (a bind), so they go through idp.netfetch's outbound checks like every URL an admin
chooses. An IP literal or ``localhost`` the checks refuse is a 422 naming ``url`` at registration, nothing stored;
a host name that resolves inward is refused at every connection (sign-in, Test connection) before any packet is
sent (a TCP listener shows it), the refusal audited; ``IDHUB_OUTBOUND_ALLOW_CIDRS`` lets an operator allow internal
networks, and then the connection goes to exactly the address that was checked, with TLS verified against the
configured host name. Config-file LDAP connections still reach internal servers (also tests/integration/test_ldap.py
and test_federation_ldap_web.py)."""

from __future__ import annotations

import copy
import ipaddress
import socket
import threading

import pytest
from sqlalchemy import select

from admin.api import admin_service
from federation import ldap
from federation.base import UpstreamError
from federation.models import FederationConnection, FederationLink
from idp import netfetch
from idp.models import User, Workspace
from tests.conftest import BASE_CONFIG
from tests.helpers.slapd import PASSWORDS, SERVICE_DN, SERVICE_PW, SUFFIX, Slapd
from tests.integration.test_admin_api import Api, assert_error
from tests.integration.test_federation_ldap_web import ldap_login
from tests.interop.oidc_upstream.peer import admin_browser, audit_events, make_fed_app

ALLOW = netfetch.ALLOW_ENV
INTERNAL = ".internal.test"  # host names under it resolve to 127.0.0.1 (the resolve fixture)


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch):
    monkeypatch.delenv(ALLOW, raising=False)


@pytest.fixture(scope="module")
def slapd():
    server = Slapd(tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def resolve(monkeypatch):
    """``*.internal.test`` (and ``localhost``, IPv4 only) resolve to 127.0.0.1, as an internal DNS name or a
    rebinding answer would; every look-up of those names is recorded."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host, port, *args, **kw):
        if isinstance(host, str) and (host.endswith(INTERNAL) or host == "localhost"):
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 389))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


class Listener:
    """A plain TCP server on 127.0.0.1 that records every connection made to it (and closes it)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            c.close()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def app(settings):
    return make_fed_app(settings, copy.deepcopy(BASE_CONFIG))


@pytest.fixture
def hub(app):
    return app.extensions["idhub"]


@pytest.fixture
def api(app, hub):
    with app.app_context():
        with hub.db() as db:
            ws = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws)
    return Api(app, token)


def directory(url: str, **kw) -> dict:
    """An LDAP connection entry for the admin API (the default user filter: people type their email)."""
    return {"slug": "dir", "name": "Corp directory", "protocol": "ldap", "url": url, "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PW, "user_search_base": f"ou=people,{SUFFIX}", "domains": ["acme.test"],
            "timeout": 3, **kw}


def stored(hub, slug: str = "dir") -> FederationConnection | None:
    with hub.db() as db:
        return db.scalar(select(FederationConnection).where(FederationConnection.slug == slug))


def guarded(conn: dict) -> dict:
    return {**conn, "registered_via": "api"}


# ---- at registration ------------------------------------------------------------------------------------------
REFUSED = [("ldap://127.0.0.1:389", "points to a loopback address (127.0.0.1)"),
           ("ldap://169.254.169.254", "points to a link-local address (169.254.169.254)"),
           ("ldap://10.0.0.5", "points to a private address (10.0.0.5)"),
           ("ldaps://[::1]", "points to a loopback address (::1)"),
           ("ldaps://[::ffff:169.254.169.254]:636", "link-local address"),
           ("ldap://localhost", "resolves to a loopback address"),
           ("ldap://LOCALHOST.:3389", "resolves to a loopback address"),
           ("ldap://0.0.0.0", "an unspecified address"),
           ("ldap://100.64.0.1", "a shared (carrier-grade NAT) address")]


@pytest.mark.parametrize("url, reason", REFUSED)
def test_api_ldap_url_on_an_internal_address_is_refused_at_registration(api, hub, url, reason):
    err = assert_error(api.post("/workspaces/acme/connections", directory(url)), 422, "invalid", field="url")
    assert reason in err["message"], err
    assert SERVICE_PW not in err["message"]
    assert stored(hub) is None and not audit_events(hub, "admin.connection.created")


def test_api_ldap_url_changed_to_an_internal_address_is_refused(api, hub):
    assert api.post("/workspaces/acme/connections", directory("ldaps://dc.acme.example")).status_code == 201
    for url, reason in REFUSED[:5]:
        err = assert_error(api.call("PATCH", "/workspaces/acme/connections/dir", {"url": url}), 422, "invalid",
                           field="url")
        assert reason in err["message"], err
    assert stored(hub).settings["url"] == "ldaps://dc.acme.example"
    assert not audit_events(hub, "admin.connection.updated")


def test_the_allow_list_admits_internal_ldap_literals(api, hub, monkeypatch):
    monkeypatch.setenv(ALLOW, "10.0.0.0/8,127.0.0.0/8")
    assert api.post("/workspaces/acme/connections", directory("ldap://10.0.0.5")).status_code == 201
    assert stored(hub).settings["registered_via"] == "api"
    err = assert_error(api.call("PATCH", "/workspaces/acme/connections/dir", {"url": "ldap://169.254.169.254"}),
                       422, "invalid", field="url")
    assert "link-local" in err["message"]


def test_a_config_file_ldap_connection_becomes_guarded_when_its_url_is_changed_over_the_api(settings, slapd):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [slapd.conn(slug="dir", domains=["acme.test"])]
    app = make_fed_app(settings, cfg)
    hub = app.extensions["idhub"]
    with app.app_context():
        with hub.db() as db:
            ws = db.scalar(select(Workspace.id).where(Workspace.slug == "acme"))
        token, _ = admin_service().tokens.create("acme-ci", workspace_id=ws)
    api = Api(app, token)
    assert "registered_via" not in stored(hub).settings  # the operator's: 127.0.0.1 is fine
    r = api.call("PATCH", "/workspaces/acme/connections/dir", {"timeout": 4})  # the URL unchanged: still fine
    assert r.status_code == 200 and "registered_via" not in stored(hub).settings
    assert_error(api.call("PATCH", "/workspaces/acme/connections/dir", {"url": f"ldap://127.0.0.1:{slapd.port + 1}"}),
                 422, "invalid", field="url")
    r = api.call("PATCH", "/workspaces/acme/connections/dir", {"url": "ldap://dc.acme.example"})
    assert r.status_code == 200 and stored(hub).settings["registered_via"] == "api"


def test_console_form_refuses_an_internal_ldap_url(app, hub, slapd):
    admin = admin_browser(app)
    form = {"protocol": "ldap", "name": "Corp directory", "slug": "dir", "url": slapd.url, "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PW, "user_search_base": f"ou=people,{SUFFIX}", "domains": "acme.test"}
    r = admin.form_post("/w/acme/admin/connections", "/w/acme/admin/connections", form)
    page = r.get_data(as_text=True)
    assert r.status_code == 422 and "Server URL points to a loopback address (127.0.0.1)" in page, page[:1500]
    assert SERVICE_PW not in page and stored(hub) is None


# ---- at every connection ----------------------------------------------------------------------------------------
def test_api_ldap_host_resolving_to_loopback_gets_no_bind(app, hub, api, resolve, listener):
    """The attack: a name the admin registered resolves to an internal server; ada's sign-in is refused and the
    server sees no connection at all (her password never leaves)."""
    r = api.post("/workspaces/acme/connections", directory(f"ldap://dir{INTERNAL}:{listener.port}"))
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json()["settings"]["registered_via"] == "api"
    b, r = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])
    body = r.get_data(as_text=True)
    assert r.status_code == 401 and "directory cannot be reached" in body and "Traceback" not in body
    assert b.security().status_code == 302 and listener.accepted == 0 and resolve
    failure = audit_events(hub, "federation.signin.failure")[-1].data
    assert failure["check"] == "unavailable" and failure["protocol"] == "ldap"
    assert "url: resolves to a loopback address (127.0.0.1)" in failure["reason"]
    assert PASSWORDS["ada"] not in str(failure) and SERVICE_PW not in str(failure)

    test = admin_browser(app).form_post("/w/acme/sso/dir/test", "/w/acme/sso/dir/test", {})
    page = test.get_data(as_text=True)
    assert test.status_code == 200 and "✘" in page and "loopback address" in page and ALLOW in page
    assert listener.accepted == 0
    assert audit_events(hub, "federation.test.failed")[-1].data["failed_checks"] == ["config"]


def test_every_refused_answer_is_refused_at_the_bind(listener, monkeypatch):
    conn = guarded({"slug": "dir", "url": f"ldap://dir.example.com:{listener.port}", "bind_dn": SERVICE_DN,
                    "bind_password": SERVICE_PW, "user_search_base": SUFFIX, "timeout": 2})
    for answer in ("127.0.0.1", "169.254.169.254", "10.0.0.5", "::1", "::ffff:127.0.0.1", "fe80::1"):
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, _f=family, _ip=answer, **k: [
            (_f, socket.SOCK_STREAM, 6, "", (_ip, listener.port))])
        with pytest.raises(UpstreamError) as e:
            ldap.authenticate(conn, "ada", PASSWORDS["ada"])
        shown = ipaddress.ip_address(answer)
        assert e.value.check == "unavailable" and f"({shown})" in e.value.message, e.value.message
        assert ldap.test_connection(conn)[0][:2] == ("config", False)
    # one public answer among internal ones is not enough
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 389)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 389))])
    with pytest.raises(UpstreamError, match="loopback"):
        ldap.authenticate(conn, "ada", PASSWORDS["ada"])
    assert listener.accepted == 0


def test_a_malformed_allow_list_fails_closed(resolve, listener, monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8, not-a-network")
    conn = guarded({"slug": "dir", "url": f"ldap://dir{INTERNAL}:{listener.port}", "bind_dn": SERVICE_DN,
                    "bind_password": SERVICE_PW, "user_search_base": SUFFIX, "timeout": 2})
    with pytest.raises(UpstreamError, match="not a valid CIDR"):
        ldap.authenticate(conn, "ada", PASSWORDS["ada"])
    assert listener.accepted == 0


def test_with_the_allow_list_an_api_registered_directory_signs_people_in(app, hub, api, slapd, resolve,
                                                                         monkeypatch):
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    r = api.post("/workspaces/acme/connections", directory(f"ldap://dir{INTERNAL}:{slapd.port}"))
    assert r.status_code == 201, r.get_data(as_text=True)
    b, r = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])
    assert r.status_code == 302 and r.headers["Location"].endswith("/apps"), r.get_data(as_text=True)
    assert b.security().status_code == 200
    with hub.db() as db:
        ada = db.scalar(select(User).where(User.email_normalized == "ada@acme.test"))
        assert db.scalar(select(FederationLink).where(FederationLink.user_id == ada.id)) is not None
    assert audit_events(hub, "federation.signin.success")[-1].data["protocol"] == "ldap"
    test = admin_browser(app).form_post("/w/acme/sso/dir/test", "/w/acme/sso/dir/test", {})
    page = test.get_data(as_text=True)
    assert test.status_code == 200 and "✘" not in page and "checked address 127.0.0.1" in page, page[:2000]
    monkeypatch.setenv(ALLOW, "10.0.0.0/8")  # read at every connection
    _, r = ldap_login(app, "ada@acme.test", PASSWORDS["ada"])
    assert r.status_code == 401 and audit_events(hub, "federation.signin.failure")[-1].data["check"] == "unavailable"


def test_the_host_is_resolved_once_and_the_checked_address_used(slapd, monkeypatch):
    """DNS rebinding: the first answer passes the checks, later ones point elsewhere. The sign-in (service bind,
    search, the user's bind) is resolved once and goes to the checked address only."""
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    real, asked = socket.getaddrinfo, []

    def rebinding(host, port, *args, **kw):
        if host == f"dir{INTERNAL}":
            asked.append(host)
            ip = "127.0.0.1" if len(asked) == 1 else "169.254.169.254"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    conn = guarded(slapd.conn(url=f"ldap://dir{INTERNAL}:{slapd.port}"))
    assert ldap.authenticate(conn, "ada", PASSWORDS["ada"]).email == "ada@acme.test"
    assert asked == [f"dir{INTERNAL}"]


# ---- TLS on the configured host name ------------------------------------------------------------------------------
def test_tls_is_verified_against_the_host_name_not_the_address(slapd, resolve, monkeypatch):
    """The test certificate is for ``localhost`` and the address 127.0.0.1. Reached at 127.0.0.1 under the name
    ``localhost`` it is accepted (ldaps and StartTLS); under another name that resolves to 127.0.0.1 it is not,
    although the certificate is valid for the address that was connected to."""
    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    for kw in ({"url": f"ldaps://localhost:{slapd.ldaps_port}"}, {"url": f"ldap://localhost:{slapd.port}",
                                                                  "start_tls": True}):
        conn = guarded(slapd.conn(ca_file=slapd.ca_file, **kw))
        assert ldap.authenticate(conn, "ada", PASSWORDS["ada"]).email == "ada@acme.test", kw
        assert ldap.test_connection(conn)[1][:2] == ("connect", True)
        wrong = guarded(slapd.conn(ca_file=slapd.ca_file, **{**kw, "url": kw["url"].replace("localhost",
                                                                                            f"dir{INTERNAL}")}))
        with pytest.raises(UpstreamError) as e:
            ldap.authenticate(wrong, "ada", PASSWORDS["ada"])
        assert e.value.check == "unavailable", (kw, e.value.message)
    untrusted = guarded(slapd.conn(url=f"ldaps://localhost:{slapd.ldaps_port}"))  # the default CAs do not know it
    with pytest.raises(UpstreamError) as e:
        ldap.authenticate(untrusted, "ada", PASSWORDS["ada"])
    assert e.value.check == "unavailable"


def test_tls_sends_the_host_name_as_sni(resolve, listener, monkeypatch):
    """What the pinned connection's TLS handshake asks for: the configured name (SNI and the name checked), not the
    address, on a socket connected to the checked address."""
    import ssl

    monkeypatch.setenv(ALLOW, "127.0.0.0/8")
    seen: list = []

    def spy(self, sock, *args, **kw):
        seen.append((kw.get("server_hostname"), self.check_hostname, self.verify_mode, sock.getpeername()[0]))
        raise ssl.SSLError("stopped before the handshake")

    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", spy)
    conn = guarded({"slug": "dir", "url": f"ldaps://dir{INTERNAL}:{listener.port}", "bind_dn": SERVICE_DN,
                    "bind_password": SERVICE_PW, "user_search_base": SUFFIX, "timeout": 2})
    with pytest.raises(UpstreamError) as e:
        ldap.authenticate(conn, "ada", PASSWORDS["ada"])
    assert e.value.check == "unavailable"
    assert seen == [(f"dir{INTERNAL}", True, ssl.CERT_REQUIRED, "127.0.0.1")]


# ---- the operator's config file stays trusted -------------------------------------------------------------------
def test_config_file_ldap_connections_reach_internal_servers(slapd):
    assert ldap.authenticate(slapd.conn(), "ada", PASSWORDS["ada"]).email == "ada@acme.test"  # 127.0.0.1
    assert ldap.authenticate(slapd.conn(url=f"ldap://localhost:{slapd.port}"), "bob", PASSWORDS["bob"]).email \
        == "bob@acme.test"


def test_netfetch_checks_any_host_and_port():
    def resolver(*addresses):
        return lambda host, port, *a: [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6,
                                        "", (ip, port)) for ip in addresses]

    assert netfetch.address("ldap.example.com", 636, "url", resolver=resolver("93.184.216.34")) == "93.184.216.34"
    assert netfetch.address("93.184.216.34", 389, "url") == "93.184.216.34"
    with pytest.raises(netfetch.FetchError, match=r"^url: resolves to a private address \(10\.1\.2\.3\)$"):
        netfetch.address("ldap.example.com", 389, "url", resolver=resolver("93.184.216.34", "10.1.2.3"))
    assert netfetch.address("ldap.example.com", 389, "url", resolver=resolver("10.1.2.3"),
                            allow=netfetch.parse_allow("10.0.0.0/8")) == "10.1.2.3"
    for host in ("127.0.0.2", "localhost", "localhost.", "::1", "169.254.169.254"):
        with pytest.raises(netfetch.FetchError):
            netfetch.check_host(host, "url")
    netfetch.check_host("ldap.example.com", "url")  # names: checked when connected to
    netfetch.check_host("93.184.216.34", "url")
