"""Interoperability: mcguinness ``saml-idp`` (npm, Node) as the *upstream* SAML IdP of an idhub connection.

saml-idp (samlp + xml-crypto underneath, an implementation nobody here wrote) is started on a free port with an
Okta-shaped profile (``email``/``firstName``/``lastName``/``groups``, persistent NameID) and an Azure-AD-shaped one
(claim URIs, ``objectidentifier``/``tenantid``, groups as GUIDs). The flow: ``saml_sp.start()`` builds the
AuthnRequest, the IdP's sign-in form is followed (by an HTTP client, and once by real Chromium), the IdP posts
its signed SAMLResponse to a tiny test ACS that calls ``saml_sp.consume()`` with the AuthnRequest ID and a
replay cache in real Redis (idhub's ``RedisOneTimeStore``), and answers the ``UpstreamIdentity`` as JSON.

The peer lives in tests/interop/saml_idp_node (package.json + package-lock.json, ``"overrides": {"samlp":
"7.1.1"}``); the test runs ``npm ci`` there when node_modules is missing and FAILS (never skips) when node or npm
are missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin

import pytest
import redis
import requests
from lxml import html as lhtml

from federation import saml_sp
from federation.base import UpstreamError
from idp.storage.redis_store import RedisOneTimeStore
from tests.helpers import saml_builder as sb
from tests.services import clean_redis, free_port, redis_url

NODE_DIR = Path(__file__).resolve().parent / "saml_idp_node"
WS = "acme"
TID, OID = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0f0e0d0c-1111-2222-3333-444455556666"
AZ = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MS = "http://schemas.microsoft.com/identity/claims/"
AZ_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
GROUP_IDS = ["6f1b0c2e-0000-4000-8000-000000000001", "6f1b0c2e-0000-4000-8000-000000000002"]

PROFILES = {
    "okta": {
        "issuer": "http://www.okta.com/exk1saml0idp",
        "user": {"userName": "00u1ada0persist", "nameIdFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                 "email": "ada@acme.test", "firstName": "Ada", "lastName": "Lovelace", "groups": "Engineering,Admins"},
        "metadata": [("email", False), ("firstName", False), ("lastName", False), ("groups", True)],
    },
    "azure_ad": {
        "issuer": f"https://sts.windows.net/{TID}/",
        "user": {"userName": "Zx9-pairwise-transient", "nameIdFormat":
                 "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
                 AZ + "emailaddress": "ada@contoso.test", AZ + "givenname": "Ada", AZ + "surname": "Lovelace",
                 AZ + "name": "ada@contoso.test", MS + "objectidentifier": OID, MS + "tenantid": TID,
                 AZ_GROUPS: ",".join(GROUP_IDS)},
        "metadata": [(AZ + "emailaddress", False), (AZ + "givenname", False), (AZ + "surname", False),
                     (AZ + "name", False), (MS + "objectidentifier", False), (MS + "tenantid", False),
                     (AZ_GROUPS, True)],
    },
}


def node_peer() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the upstream SAML interoperability test (Node 20+)")
    if not (NODE_DIR / "node_modules" / "saml-idp" / "bin" / "run.js").is_file():
        cmd = [npm, "ci", "--no-audit", "--no-fund"]
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed:\n{res.stdout}\n{res.stderr}")
    return node


class TinyAcs:
    """A minimal SP web endpoint standing in for idhub's ACS route: it calls saml_sp.consume()."""

    def __init__(self, replay_seen):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.conn: dict = {}
        self.request_id: str | None = None
        self.replay_seen = replay_seen
        acs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(min(n, 1 << 20)).decode())
                expected = f"/w/{WS}/sso/{acs.conn.get('slug')}/acs"
                try:
                    if self.path != expected:
                        raise UpstreamError("destination", "not our ACS")
                    ident = saml_sp.consume(acs.conn, acs.base, WS, (form.get("SAMLResponse") or [""])[0],
                                            expected_request_id=acs.request_id, replay_seen=acs.replay_seen)
                    body = {"ok": True, "identity": dataclasses.asdict(ident),
                            "relay_state": (form.get("RelayState") or [""])[0]}
                    status = 200
                except UpstreamError as e:
                    body, status = {"ok": False, "check": e.check, "message": e.message}, 400
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acs(self, slug):
        return f"{self.base}/w/{WS}/sso/{slug}/acs"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SamlIdp:
    def __init__(self, node: str, tmp: Path, shape: str, acs_url: str, audience: str):
        prof = PROFILES[shape]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key_pem, cert_pem = sb.keypair(f"saml-idp-{shape}")
        self.cert_pem = cert_pem
        (tmp / "key.pem").write_bytes(key_pem)
        (tmp / "cert.pem").write_text(cert_pem)
        meta = [{"id": mid, "optional": False, "displayName": mid, "description": mid, "multiValue": multi}
                for mid, multi in prof["metadata"]]
        (tmp / "profile.js").write_text("module.exports = " + json.dumps({"user": prof["user"], "metadata": meta}))
        self.log = open(tmp / "saml-idp.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / "node_modules/saml-idp/bin/run.js"), "--host", "127.0.0.1", "--port",
             str(self.port), "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem"),
             "--issuer", prof["issuer"], "--acs", acs_url, "--aud", audience,
             "--conf", str(tmp / "profile.js")],
            cwd=tmp, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail("saml-idp exited:\n" + (tmp / "saml-idp.log").read_text()[-3000:])
            try:
                r = requests.get(self.url + "/metadata", timeout=2)
                if r.status_code == 200:
                    self.metadata = r.text
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("saml-idp did not answer")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def node():
    return node_peer()


@pytest.fixture
def replay_store():
    url, prefix = redis_url()
    client = redis.Redis.from_url(url)
    store = RedisOneTimeStore(client, prefix=prefix)
    yield store
    clean_redis(url, prefix)
    client.close()


@pytest.fixture
def acs(replay_store):
    server = TinyAcs(lambda key, ttl: not replay_store.add(key, "1", ttl))
    yield server
    server.close()


@pytest.fixture
def peer(node, tmp_path, acs, request):
    shape = request.param
    conn = {"slug": shape.replace("_", ""), "name": shape, "protocol": "saml", "preset": shape}
    idp = SamlIdp(node, tmp_path, shape, acs.acs(conn["slug"]), saml_sp.sp_entity_id(conn, acs.base, WS))
    acs.conn = {**conn, "metadata_xml": idp.metadata}
    yield shape, idp
    idp.stop()


def form_fields(form) -> dict:
    fields = {}
    for el in form.xpath(".//input[@name] | .//select[@name] | .//textarea[@name]"):
        if el.tag == "select":
            opts = el.xpath("./option[@selected]") or el.xpath("./option")
            fields[el.get("name")] = (opts[0].get("value") or opts[0].text or "") if opts else ""
        elif el.get("type") not in ("submit", "button"):
            fields[el.get("name")] = el.get("value") or ""
    return fields


def sign_in_with_http_client(start_url: str, user: dict) -> tuple[str, dict, requests.Response]:
    """Follow saml-idp's sign-in form, then its auto-posting SAMLResponse form, like a browser without JS."""
    s = requests.Session()
    page = s.get(start_url, timeout=10)
    assert page.status_code == 200, page.text[:500]
    doc = lhtml.fromstring(page.text)
    form = doc.xpath("//form[contains(@action, 'signin')]")[0]
    fields = form_fields(form)
    assert "_authnRequest" in fields
    fields.update({"userName": user["userName"], "nameIdFormat": user["nameIdFormat"]})
    posted = s.post(urljoin(page.url, form.get("action")), data=fields, timeout=10)
    assert posted.status_code == 200, posted.text[:500]
    form = lhtml.fromstring(posted.text).xpath("//form[@name='hiddenform']")[0]
    fields = form_fields(form)
    return form.get("action"), fields, s.post(form.get("action"), data=fields, timeout=10)


@pytest.mark.parametrize("peer", ["okta", "azure_ad"], indirect=True)
def test_upstream_saml_idp_sign_in(peer, acs):
    shape, idp = peer
    prof = PROFILES[shape]
    meta = saml_sp.parse_idp_metadata(idp.metadata)
    assert meta["entity_id"] == prof["issuer"] and meta["certs"] == [idp.cert_pem]
    url, acs.request_id = saml_sp.start(acs.conn, acs.base, WS, "rs-" + shape)
    assert url.startswith(idp.url + "/saml/sso?SAMLRequest=")

    action, fields, answer = sign_in_with_http_client(url, prof["user"])
    assert action == acs.acs(acs.conn["slug"])
    body = answer.json()
    assert answer.status_code == 200, body
    ident = body["identity"]
    assert body["relay_state"] == "rs-" + shape
    if shape == "okta":
        assert ident["subject"] == "00u1ada0persist" and ident["email"] == "ada@acme.test"
        assert ident["name"] == "Ada Lovelace" and ident["groups"] == ["Engineering", "Admins"]
    else:
        assert ident["subject"] == f"{TID}:{OID}"  # tid:oid, never the NameID or the email
        assert ident["email"] == "ada@contoso.test" and ident["groups"] == GROUP_IDS
    assert ident["session_index"]

    # the same SAMLResponse posted again: refused by the replay cache (Redis SET NX)
    again = requests.post(action, data=fields, timeout=10)
    assert again.status_code == 400 and again.json()["check"] == "replay"


@pytest.mark.parametrize("peer", ["okta"], indirect=True)
def test_upstream_response_bound_to_the_request(peer, acs):
    shape, idp = peer
    url, _ = saml_sp.start(acs.conn, acs.base, WS, "")
    _, acs.request_id = saml_sp.start(acs.conn, acs.base, WS, "")  # this browser's sign-in started another
    _, _, answer = sign_in_with_http_client(url, PROFILES[shape]["user"])
    assert answer.status_code == 400 and answer.json()["check"] == "in_response_to"


@pytest.mark.parametrize("peer", ["okta"], indirect=True)
def test_upstream_idp_with_unpinned_certificate(peer, acs):
    shape, idp = peer
    other = sb.keypair("not-the-saml-idp")[1]
    acs.conn["metadata_xml"] = sb.metadata(PROFILES[shape]["issuer"], [other], idp.url + "/saml/sso")
    url, acs.request_id = saml_sp.start(acs.conn, acs.base, WS, "")
    _, _, answer = sign_in_with_http_client(url, PROFILES[shape]["user"])
    assert answer.status_code == 400 and answer.json()["check"] == "certificate"


@pytest.mark.browser
@pytest.mark.parametrize("peer", ["azure_ad"], indirect=True)
def test_upstream_saml_idp_in_chromium(peer, acs, browser):
    shape, idp = peer
    url, acs.request_id = saml_sp.start(acs.conn, acs.base, WS, "rs-chromium")
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(url)
        page.fill("#userName", PROFILES[shape]["user"]["userName"])
        with page.expect_navigation(url=acs.acs(acs.conn["slug"])):
            page.locator("form.form-profile button[type=submit]").first.click()
        body = json.loads(page.locator("body").inner_text())
    finally:
        ctx.close()
    assert body["ok"], body
    assert body["identity"]["subject"] == f"{TID}:{OID}" and body["relay_state"] == "rs-chromium"
