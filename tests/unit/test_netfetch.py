"""idp.netfetch, the SSRF-safe fetcher for URLs a workspace admin chose: the attacks first (internal addresses in
every spelling, host names that resolve inward, redirects, floods, stalls, DNS rebinding), then what is allowed
(the deployment's allow-list, https pinned to the checked address with SNI and the certificate checked against the
host name). A local HTTP(S) server plays the other side and counts what reached it."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from idp import netfetch
from idp.netfetch import FetchError, fetch, parse_allow

LOOPBACK = parse_allow("127.0.0.0/8,::1/128")
HITS: list[tuple[str, str]] = []  # (path, Host header)
ROUTES: dict[str, tuple[int, dict, bytes]] = {}
STOP = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        HITS.append((self.path, self.headers.get("Host", "")))
        if self.path == "/hang":
            STOP.wait(20)
            return
        if self.path == "/drip":  # headers at once, then a byte every 0.2 s: never idle long enough to time out
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                if STOP.wait(0.2):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
            return
        status, headers, body = ROUTES.get(self.path, (200, {}, b"<ok/>"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the fetcher stopped reading: the byte limit at work

    do_POST = do_GET  # noqa: N815 (http.server's name)

    def log_message(self, *args):
        pass


def _serve(server) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    _serve(server)
    try:
        yield server.server_address[1]
    finally:
        STOP.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(netfetch.ALLOW_ENV, raising=False)
    HITS.clear()


def resolver_to(*addresses: str):
    calls: list[str] = []

    def resolve(host, port, family=0, type_=0, *rest):
        calls.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]

    resolve.calls = calls
    return resolve


# ---- refused before anything is sent ---------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "reason"), [
    ("https://10.0.0.5/md.xml", "points to a private address (10.0.0.5)"),
    ("https://172.16.3.4/md.xml", "private address (172.16.3.4)"),
    ("https://192.168.1.1/md.xml", "private address (192.168.1.1)"),
    ("https://169.254.169.254/latest/meta-data/", "link-local address (169.254.169.254)"),
    ("https://127.0.0.1/md.xml", "loopback address (127.0.0.1)"),
    ("https://127.1.2.3/md.xml", "loopback address (127.1.2.3)"),
    ("https://[::1]/md.xml", "loopback address (::1)"),
    ("https://[::ffff:127.0.0.1]/md.xml", "loopback address (::ffff:7f00:1)"),
    ("https://[::ffff:169.254.169.254]/", "link-local address"),
    ("https://[::ffff:10.0.0.5]/", "private address"),
    ("https://[64:ff9b::a9fe:a9fe]/", "link-local address"),  # NAT64 of 169.254.169.254
    ("https://[2002:a00:5::1]/", "private address"),  # 6to4 of 10.0.0.5
    ("https://[::7f00:1]/", "loopback address"),  # IPv4-compatible 127.0.0.1
    ("https://[fd00::1]/", "private address (fd00::1)"),
    ("https://[fe80::1]/", "link-local address (fe80::1)"),
    ("https://0.0.0.0/", "unspecified address (0.0.0.0)"),
    ("https://[::]/", "unspecified address (::)"),
    ("https://100.64.1.1/", "shared (carrier-grade NAT) address (100.64.1.1)"),
    ("https://224.0.0.1/", "multicast address (224.0.0.1)"),
    ("https://[ff02::1]/", "multicast address (ff02::1)"),
    ("https://240.0.0.1/", "reserved address (240.0.0.1)"),
    ("https://255.255.255.255/", "address (255.255.255.255)"),
])
def test_internal_addresses_are_refused(url, reason):
    with pytest.raises(FetchError) as exc:
        fetch(url, field="metadata_url", resolver=resolver_to("93.184.216.34"))
    assert str(exc.value).startswith("metadata_url: ") and reason in str(exc.value), str(exc.value)
    assert exc.value.field == "metadata_url"


def test_the_loopback_peer_is_never_reached_without_the_allow_list(port):
    for url in (f"http://127.0.0.1:{port}/md", f"http://[::ffff:127.0.0.1]:{port}/md", f"http://localhost:{port}/md"):
        with pytest.raises(FetchError, match="loopback address|https"):
            fetch(url, field="metadata_url")
    assert HITS == []


def test_a_host_name_that_resolves_to_a_private_address_is_refused():
    resolve = resolver_to("10.0.0.5")
    with pytest.raises(FetchError, match=r"^metadata_url: resolves to a private address \(10\.0\.0\.5\)$"):
        fetch("https://metadata.example.com/md.xml", field="metadata_url", resolver=resolve)
    assert resolve.calls == ["metadata.example.com"]


def test_one_internal_address_among_public_ones_is_enough_to_refuse():
    with pytest.raises(FetchError, match=r"link-local address \(169\.254\.169\.254\)"):
        fetch("https://metadata.example.com/", resolver=resolver_to("93.184.216.34", "169.254.169.254"))
    with pytest.raises(FetchError, match="loopback"):
        fetch("https://metadata.example.com/", resolver=resolver_to("2606:2800:220:1::1", "::ffff:127.0.0.1"))


def test_real_localhost_resolution_is_refused(port):
    with pytest.raises(FetchError, match="loopback address"):
        fetch(f"http://localhost:{port}/md", field="metadata_url")
    assert HITS == []


@pytest.mark.parametrize("url", ["http://sp.example.com/md.xml", "ftp://127.0.0.1/md", "file:///etc/passwd",
                                 "https://user:pw@sp.example.com/md", "https:///nohost", "not a url", "",
                                 "https://sp.example.com:99999/", "https://sp.example.com/a b", None, 5])
def test_only_plain_https_urls(url):
    with pytest.raises(FetchError):
        fetch(url, resolver=resolver_to("93.184.216.34"))


def test_a_name_that_does_not_resolve():
    def fail(*_a):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(FetchError, match=r"^issuer: idp\.invalid does not resolve$"):
        fetch("https://idp.invalid/.well-known/openid-configuration", field="issuer", resolver=fail)


def test_a_resolver_that_hangs_is_bounded_by_the_timeout():
    def hang(*_a):
        time.sleep(5)
        return []

    started = time.monotonic()
    with pytest.raises(FetchError, match="took too long"):
        fetch("https://slow-dns.example.com/", resolver=hang, timeout=0.5)
    assert time.monotonic() - started < 2


def test_a_malformed_allow_list_fails_closed(monkeypatch, port):
    monkeypatch.setenv(netfetch.ALLOW_ENV, "127.0.0.0/8, not-a-network")
    with pytest.raises(FetchError, match="IDHUB_OUTBOUND_ALLOW_CIDRS: 'not-a-network'"):
        fetch(f"http://127.0.0.1:{port}/md")
    assert HITS == []


# ---- what the peer answers -------------------------------------------------------------------------------------
def test_redirects_are_refused_and_not_followed(port):
    ROUTES["/moved"] = (302, {"Location": f"http://127.0.0.1:{port}/internal"}, b"")
    with pytest.raises(FetchError, match=r"^metadata_url: redirected \(HTTP 302\); give the final URL$"):
        fetch(f"http://127.0.0.1:{port}/moved", field="metadata_url", allow=LOOPBACK)
    assert [p for p, _ in HITS] == ["/moved"]


def test_error_statuses_are_named(port):
    ROUTES["/gone"] = (404, {}, b"no")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"http://127.0.0.1:{port}/gone", allow=LOOPBACK)


@pytest.mark.parametrize(("path", "route"), [
    ("/big", (200, {}, b"x" * 5000)),
    ("/big-declared", (200, {"Content-Length": str(10**9)}, b"")),
    ("/big-undeclared", (200, {"Content-Length": "", "Connection": "close"}, b"x" * 5000)),
])
def test_oversized_bodies_are_refused(port, path, route):
    ROUTES[path] = route
    with pytest.raises(FetchError, match="too large"):
        fetch(f"http://127.0.0.1:{port}{path}", allow=LOOPBACK, limit=4096)


def test_a_stalled_peer_is_bounded_by_the_timeout(port):
    started = time.monotonic()
    with pytest.raises(FetchError, match="took too long"):
        fetch(f"http://127.0.0.1:{port}/hang", allow=LOOPBACK, timeout=0.5)
    assert time.monotonic() - started < 2


def test_a_dripping_peer_is_bounded_by_one_deadline_for_the_whole_fetch(port):
    started = time.monotonic()
    with pytest.raises(FetchError, match="took too long"):
        fetch(f"http://127.0.0.1:{port}/drip", allow=LOOPBACK, timeout=1.0)
    assert time.monotonic() - started < 2.5


# ---- allowed -----------------------------------------------------------------------------------------------------
def test_the_allow_list_lets_a_loopback_peer_through(monkeypatch, port):
    ROUTES["/md"] = ROUTES["/md?x=1"] = (200, {}, b"<EntityDescriptor/>")
    monkeypatch.setenv(netfetch.ALLOW_ENV, "127.0.0.0/8,::1/128")
    assert fetch(f"http://127.0.0.1:{port}/md", field="metadata_url") == b"<EntityDescriptor/>"
    assert fetch(f"http://localhost:{port}/md?x=1") == b"<EntityDescriptor/>"
    assert HITS[-1] == ("/md?x=1", f"localhost:{port}")
    # the allow-list covers its networks only
    monkeypatch.setenv(netfetch.ALLOW_ENV, "127.0.0.2/32")
    with pytest.raises(FetchError, match=r"loopback address \(127\.0\.0\.1\)"):
        fetch(f"http://127.0.0.1:{port}/md")


def test_the_connection_goes_to_the_checked_address_even_if_dns_would_now_say_otherwise(port):
    """DNS rebinding: the resolver answers a harmless address first and an internal one afterwards. It is asked
    once; the fetch connects to the address that was checked and sends the host name as Host."""
    ROUTES["/md"] = (200, {}, b"pinned")
    answers = iter(["127.0.0.1", "10.0.0.5", "10.0.0.5"])
    calls: list[str] = []

    def rebinding(host, port_, *_a):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port_))]

    assert fetch(f"http://localhost:{port}/md", resolver=rebinding, allow=LOOPBACK) == b"pinned"
    assert calls == ["localhost"]
    assert HITS == [("/md", f"localhost:{port}")]
    # and a public-looking answer first, an internal one later: refused at the one look-up that counts
    answers = iter(["10.0.0.5", "127.0.0.1"])
    with pytest.raises(FetchError, match="private address"):
        fetch(f"http://localhost:{port}/md", resolver=rebinding, allow=LOOPBACK)


def _cert(tmp_path, name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_site(tmp_path):
    """An https server on 127.0.0.1 with a certificate for metadata.test; records the SNI it was asked for."""
    cert, key = _cert(tmp_path, "metadata.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _serve(server)
    try:
        yield server.server_address[1], cert, sni, tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_https_is_pinned_with_sni_and_the_certificate_checked_against_the_host_name(tls_site):
    port_, cert, sni, tmp_path = tls_site
    ROUTES["/tls"] = (200, {}, b"over tls")
    resolve = resolver_to("127.0.0.1")
    url = f"https://metadata.test:{port_}/tls"
    assert fetch(url, resolver=resolve, allow=LOOPBACK, ca_certs=cert) == b"over tls"
    assert resolve.calls == ["metadata.test"] and sni == ["metadata.test"]
    assert HITS == [("/tls", f"metadata.test:{port_}")]
    # a certificate for another name, or one nobody trusts, is refused
    other, _ = _cert(tmp_path, "other.test")
    with pytest.raises(FetchError, match="TLS connection to metadata.test failed"):
        fetch(url, resolver=resolver_to("127.0.0.1"), allow=LOOPBACK, ca_certs=other)
    with pytest.raises(FetchError, match="TLS connection to evil.test failed"):
        fetch(f"https://evil.test:{port_}/tls", resolver=resolver_to("127.0.0.1"), allow=LOOPBACK, ca_certs=cert)
    with pytest.raises(FetchError, match="TLS connection"):
        fetch(url, resolver=resolver_to("127.0.0.1"), allow=LOOPBACK)  # the default CAs do not know it


def test_the_requests_adapter_checks_pins_and_refuses_redirects(port):
    import requests

    ROUTES["/token"] = (200, {"Content-Type": "application/json"}, b'{"ok": true}')
    ROUTES["/bounce"] = (307, {"Location": f"http://127.0.0.1:{port}/token"}, b"")
    with pytest.raises(FetchError, match="token_endpoint: points to a loopback address"):
        netfetch.guarded_session("token_endpoint").get(f"http://127.0.0.1:{port}/token")
    assert HITS == []
    resolve = resolver_to("127.0.0.1")
    s = netfetch.guarded_session("token_endpoint", resolver=resolve, allow=LOOPBACK)
    assert s.get(f"http://localhost:{port}/token", timeout=5).json() == {"ok": True}
    assert resolve.calls == ["localhost"] and HITS == [("/token", f"localhost:{port}")]
    with pytest.raises(FetchError, match=r"redirected \(HTTP 307\)"):
        s.post(f"http://localhost:{port}/bounce", data={"a": "b"}, timeout=5)
    with pytest.raises(FetchError, match="private address"):
        netfetch.guarded_session("jwks_uri", resolver=resolver_to("10.1.2.3")).get("https://keys.example.com/")
    assert not isinstance(FetchError("f", "r"), requests.RequestException)


def test_check_literal_needs_no_dns():
    netfetch.check_literal("https://idp.example.com/", "issuer")  # host names: checked when fetched
    for url, reason in (("https://10.0.0.5/", "points to a private address (10.0.0.5)"),
                        ("http://localhost:8080/", "resolves to a loopback address (127.0.0.1)"),
                        ("https://[::ffff:169.254.169.254]/", "link-local")):
        with pytest.raises(FetchError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            netfetch.check_literal(url, "issuer")
    netfetch.check_literal("http://127.0.0.1:8080/", "issuer", allow=LOOPBACK)
