"""The SAML IdP against pysaml2 as the service provider (its own code builds requests and validates responses)."""

from __future__ import annotations

import base64
import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.response import StatusRequestDenied
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NAMEID_FORMAT_PERSISTENT
from saml2.sigver import SignatureError
from sqlalchemy import update

from idp.accounts import workspace_by_slug
from idp.models import Workspace
from saml.config import apply_saml_apps
from saml.models import SamlKey
from saml.xml import deflate
from tests.conftest import ALICE, ALICE_PW, CSRF_RE, FLOW_RE, Browser, make_app, make_settings

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SP_ENTITY = "https://sp.example.test/saml/metadata"
ACS = "https://sp.example.test/saml/acs"
SP_SLO = "https://sp.example.test/saml/slo"
IDP_ENTITY = "http://localhost/w/acme/saml"
SSO = "/w/acme/saml/sso"
ERROR_ID_RE = re.compile(r"Error id: <code>([0-9a-f]{8,})</code>")
FORM_RE = re.compile(r'<form id="saml-post" method="post" action="([^"]+)"')
RESPONSE_RE = re.compile(r'name="SAMLResponse" value="([^"]+)"')
RELAY_RE = re.compile(r'name="RelayState" value="([^"]*)"')


def _keypair(tmp_path, cn: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    kf, cf = tmp_path / f"{cn}.key", tmp_path / f"{cn}.crt"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(kf), str(cf)


def sp_client(tmp_path, idp_metadata: str | None, *, signed: bool = False, cn: str = "sp",
              nameid=NAMEID_FORMAT_EMAILADDRESS, want_response_signed: bool = False, entity: str = SP_ENTITY,
              acs: str = ACS, slo: str = SP_SLO, slo_binding: str = BINDING_HTTP_REDIRECT, encrypt: bool = False,
              allow_unsolicited: bool = False, want_assertions_signed: bool = True,
              slo_extra: tuple = ()) -> Saml2Client:
    keyfile, certfile = _keypair(tmp_path, cn)
    conf = {
        "entityid": entity,
        "key_file": keyfile,
        "cert_file": certfile,
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "allow_unknown_attributes": True,
        "service": {"sp": {
            "signing_algorithm": RSA_SHA256,
            "digest_algorithm": SHA256,
            "endpoints": {"assertion_consumer_service": [(acs, BINDING_HTTP_POST)],
                          "single_logout_service": [(slo, slo_binding), *slo_extra]},
            "authn_requests_signed": signed,
            "want_assertions_signed": want_assertions_signed,
            "want_response_signed": want_response_signed,
            "allow_unsolicited": allow_unsolicited,
            "name_id_format": nameid,
        }},
    }
    if idp_metadata is not None:
        conf["metadata"] = {"inline": [idp_metadata]}
    if encrypt:
        ekey, ecert = _keypair(tmp_path, cn + "-enc")
        conf["encryption_keypairs"] = [{"key_file": ekey, "cert_file": ecert}]
    cfg = SPConfig()
    cfg.load(conf)
    return Saml2Client(config=cfg)


def sp_metadata(client: Saml2Client) -> str:
    return str(entity_descriptor(client.config))


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path)
    app = make_app(settings)
    return app, tmp_path


def register(app, apps: list[dict]):
    hub = app.extensions["idhub"]
    with hub.db() as db:
        ws = workspace_by_slug(db, "acme")
        apply_saml_apps(db, ws, apps)
        db.commit()


def idp_metadata(app) -> str:
    r = app.test_client().get("/w/acme/saml/metadata")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/samlmetadata+xml")
    return r.get_data(as_text=True)


def make_sp(app, tmp_path, *, signed=False, require_signed=None, **kw) -> Saml2Client:
    """pysaml2's own SP metadata registered with idhub; idhub's metadata loaded by pysaml2."""
    client = sp_client(tmp_path, idp_metadata(app), signed=signed, **kw)
    entry = {"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client),
             "nameid_format": kw.get("nameid", NAMEID_FORMAT_EMAILADDRESS),
             "attributes": {"email": "email", "name": "name", "groups": "groups"}}
    if require_signed is not None:
        entry["require_signed_requests"] = require_signed
    if kw.get("want_response_signed"):
        entry["sign_response"] = True
    register(app, [entry])
    return client


def sign_in(b: Browser, login_location: str, email=ALICE, password=ALICE_PW) -> str:
    """Sign in through the real pages, starting at the login URL the IdP redirected to; returns where it lands."""
    assert urlsplit(login_location).path == "/w/acme/login"
    b.get(login_location)
    r = b.post(login_location, {"email": email, "csrf_token": b.csrf()})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    b.get(r.headers["Location"])
    page = b.last.get_data(as_text=True)
    r = b.post("/w/acme/login/password", {"flow": FLOW_RE.search(page).group(1), "password": password,
                                          "csrf_token": CSRF_RE.search(page).group(1)})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    return r.headers["Location"]


def post_form(resp):
    """The auto-submitting form: (action, SAMLResponse, RelayState); checks the no-JS fallback and the CSP."""
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    page = resp.get_data(as_text=True)
    action = html.unescape(FORM_RE.search(page).group(1))
    assert ">Continue</button>" in page and "/static/saml-post.js" in page
    csp = resp.headers["Content-Security-Policy"]
    assert f"form-action 'self' {action}" in csp and "script-src 'self'" in csp
    relay = RELAY_RE.search(page)
    return action, html.unescape(RESPONSE_RE.search(page).group(1)), html.unescape(relay.group(1)) if relay else None


def redirect_request(client: Saml2Client, relay_state="rs-1", **kw):
    reqid, info = client.prepare_for_authenticate(entityid=IDP_ENTITY, relay_state=relay_state,
                                                  binding=BINDING_HTTP_REDIRECT, **kw)
    location = dict(info["headers"])["Location"]
    parts = urlsplit(location)
    assert parts.path == "/w/acme/saml/sso"
    return reqid, f"{parts.path}?{parts.query}"


def post_request(client: Saml2Client, relay_state="rs-post"):
    reqid, info = client.prepare_for_authenticate(entityid=IDP_ENTITY, relay_state=relay_state,
                                                  binding=BINDING_HTTP_POST)
    data = info["data"]
    saml_request = re.search(r'name="SAMLRequest" value="([^"]+)"', data).group(1)
    return reqid, {"SAMLRequest": html.unescape(saml_request), "RelayState": relay_state}


def full_flow(app, b: Browser, first) -> tuple:
    """Send the first request, sign in, follow the resume page: the post form."""
    r = first()
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    landing = sign_in(b, r.headers["Location"])
    assert landing.startswith("/w/acme/saml/resume?")
    return post_form(b.get(landing))


# ---- the pysaml2 SP, end to end ----------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_redirect_binding_sso_validated_by_pysaml2(env, signed):
    app, tmp = env
    client = make_sp(app, tmp, signed=signed, require_signed=signed)
    reqid, url = redirect_request(client)
    if signed:
        assert "Signature=" in url and "SigAlg=" in url
    b = Browser(app)
    action, saml_response, relay = full_flow(app, b, lambda: b.get(url))
    assert action == ACS and relay == "rs-1"
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp is not None
    assert resp.name_id.text == ALICE
    assert resp.ava["email"] == [ALICE]
    assert resp.ava["name"] == ["Alice Example"]
    assert resp.ava["groups"] == ["engineering"]
    assert resp.in_response_to == reqid
    assert resp.assertion.authn_statement[0].authn_context.authn_context_class_ref.text.endswith(
        "PasswordProtectedTransport")
    # Already signed in: the next request goes straight to the post form.
    reqid2, url2 = redirect_request(client, relay_state="again")
    _action, saml_response2, relay2 = post_form(b.get(url2))
    assert relay2 == "again"
    resp2 = client.parse_authn_request_response(saml_response2, BINDING_HTTP_POST, outstanding={reqid2: "/"})
    assert resp2.name_id.text == ALICE


@pytest.mark.parametrize("signed", [False, True])
def test_post_binding_sso_validated_by_pysaml2(env, signed):
    app, tmp = env
    client = make_sp(app, tmp, signed=signed, require_signed=signed)
    reqid, form = post_request(client)
    if signed:
        assert b"Signature" in base64.b64decode(form["SAMLRequest"])
    b = Browser(app)
    action, saml_response, relay = full_flow(app, b, lambda: b.post(SSO, form))
    assert action == ACS and relay == "rs-post"
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.ava["email"] == [ALICE] and resp.in_response_to == reqid


def test_signed_response_and_persistent_pairwise_nameid(env):
    app, tmp = env
    client = make_sp(app, tmp, nameid=NAMEID_FORMAT_PERSISTENT, want_response_signed=True)
    reqid, url = redirect_request(client)
    b = Browser(app)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.format == NAMEID_FORMAT_PERSISTENT
    first = resp.name_id.text
    assert ALICE not in first and first
    reqid2, url2 = redirect_request(client)
    _a, saml_response2, _r = post_form(b.get(url2))
    resp2 = client.parse_authn_request_response(saml_response2, BINDING_HTTP_POST, outstanding={reqid2: "/"})
    assert resp2.name_id.text == first  # stable
    svc = app.extensions["idhub"].saml

    class U:
        id = "u1"

    class S1:
        entity_id = "https://a.test"

    class S2:
        entity_id = "https://b.test"

    with app.extensions["idhub"].db() as db:
        ws = workspace_by_slug(db, "acme")
    assert svc.name_id(ws, U, S1, NAMEID_FORMAT_PERSISTENT) != svc.name_id(ws, U, S2, NAMEID_FORMAT_PERSISTENT)


def test_tampered_response_is_rejected_by_pysaml2(env):
    """A control: pysaml2 really checks our signature (so the tests above mean something)."""
    app, tmp = env
    client = make_sp(app, tmp)
    reqid, url = redirect_request(client)
    b = Browser(app)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    xml = base64.b64decode(saml_response).replace(ALICE.encode(), b"mallory@acme.test")
    with pytest.raises(SignatureError):
        client.parse_authn_request_response(base64.b64encode(xml).decode(), BINDING_HTTP_POST,
                                            outstanding={reqid: "/"})


def test_policy_deny_is_request_denied(env):
    app, tmp = env
    client = make_sp(app, tmp)
    b = Browser(app)
    reqid, url = redirect_request(client)
    full_flow(app, b, lambda: b.get(url))
    hub = app.extensions["idhub"]
    with hub.db() as db:  # now the workspace only admits another network
        db.execute(update(Workspace).where(Workspace.slug == "acme").values(policies={"ip_allowlist": ["10.0.0.0/8"]}))
        db.commit()
    reqid2, url2 = redirect_request(client)
    action, saml_response, relay = post_form(b.get(url2))
    assert action == ACS and relay == "rs-1"
    xml = base64.b64decode(saml_response)
    assert b"urn:oasis:names:tc:SAML:2.0:status:RequestDenied" in xml and b"Assertion" not in xml
    with pytest.raises(StatusRequestDenied):
        client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid2: "/"})


# ---- metadata ------------------------------------------------------------------------------------
def test_metadata_is_signed_with_the_published_certificate(env):
    app, _ = env
    text = idp_metadata(app)
    root = etree.fromstring(text.encode())
    ns = {"md": "urn:oasis:names:tc:SAML:2.0:metadata", "ds": "http://www.w3.org/2000/09/xmldsig#"}
    assert root.get("entityID") == IDP_ENTITY
    idp = root.find("md:IDPSSODescriptor", ns)
    bindings = {e.get("Binding"): e.get("Location") for e in idp.findall("md:SingleSignOnService", ns)}
    assert bindings == {BINDING_HTTP_REDIRECT: "http://localhost/w/acme/saml/sso",
                        BINDING_HTTP_POST: "http://localhost/w/acme/saml/sso"}
    assert idp.find("md:SingleLogoutService", ns) is not None
    assert NAMEID_FORMAT_PERSISTENT in [e.text for e in idp.findall("md:NameIDFormat", ns)]
    cert_b64 = idp.find("md:KeyDescriptor/ds:KeyInfo/ds:X509Data/ds:X509Certificate", ns).text
    cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    sig = root.find("ds:Signature", ns)
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", ns).get("Algorithm").endswith("rsa-sha256")
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(pem, xmlsec.KeyFormat.CERT_PEM)
    ctx.register_id(root, "ID")
    ctx.verify(sig)  # raises if not valid
    # tampering breaks it
    root.set("entityID", "https://evil.test")
    with pytest.raises(xmlsec.Error):
        ctx.verify(sig)
    # the same certificate on the next fetch; the private key is sealed at rest
    assert cert_b64 in idp_metadata(app)
    hub = app.extensions["idhub"]
    with hub.db() as db:
        row = db.query(SamlKey).one()
        assert "PRIVATE KEY" not in row.private_enc and row.private_enc.startswith("v1:")


# ---- bad requests ------------------------------------------------------------------------------------
def _redirect_url(xml: bytes, relay: str | None = None, **extra) -> str:
    params = {"SAMLRequest": base64.b64encode(deflate(xml)).decode()}
    if relay is not None:
        params["RelayState"] = relay
    params.update(extra)
    return SSO + "?" + urlencode(params)


def _authn(issuer=SP_ENTITY, acs=None, rid="_abc123", extra=""):
    acs_attr = f' AssertionConsumerServiceURL="{acs}"' if acs else ""
    return (f'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
            f'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{rid}" Version="2.0" '
            f'IssueInstant="2026-01-01T00:00:00Z"{acs_attr}><saml:Issuer>{issuer}</saml:Issuer>{extra}'
            f'</samlp:AuthnRequest>').encode()


def assert_refused(resp, reason: str | None = None):
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    page = html.unescape(resp.get_data(as_text=True))
    assert ERROR_ID_RE.search(page), page[:500]
    assert "SAMLResponse" not in page
    if reason is not None:
        assert reason in page, page[:1500]


def test_hand_made_request_is_accepted(env):
    """The control for the refusals below: the same hand-made request, well-formed, goes to sign-in."""
    app, tmp = env
    make_sp(app, tmp)
    r = Browser(app).get(_redirect_url(_authn(), "ok"))
    assert r.status_code == 302 and urlsplit(r.headers["Location"]).path == "/w/acme/login"
    assert parse_qs(urlsplit(r.headers["Location"]).query)["app"] == ["payroll"]


XXE = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       + _authn(issuer="&x;"))
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
          b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
          + _authn(extra="<x>&d;&d;&d;&d;</x>"))


@pytest.mark.parametrize(("xml", "reason"), [
    pytest.param(XXE, "DTDs are not allowed", id="xxe"),
    pytest.param(LAUGHS, "DTDs are not allowed", id="billion-laughs"),
    pytest.param(b"<samlp:AuthnRequest", "malformed XML", id="malformed"),
    pytest.param(_authn(extra="<x>" + "A" * 70000 + "</x>"), "too large", id="oversized"),
    pytest.param(_authn(extra="<a>" * 100 + "</a>" * 100), "too deep", id="deep"),
    pytest.param(_authn(issuer="https://evil.test/sp"), "not registered in this workspace", id="wrong-issuer"),
    pytest.param(_authn(issuer=SP_ENTITY + "<!--x-->"), "not registered in this workspace", id="issuer-comment"),
    pytest.param(_authn(acs="https://evil.test/acs"), "response address that is not registered", id="unknown-acs"),
    pytest.param(_authn(rid="1-not-an-ncname"), "no valid ID", id="bad-id"),
    pytest.param(_authn().replace(b"AuthnRequest", b"LogoutRequest"), "not a SAML 2.0 AuthnRequest",
                 id="not-authnrequest"),
    pytest.param(_authn().replace(b'Version="2.0"', b'Version="1.1"'), "not a SAML 2.0 AuthnRequest",
                 id="wrong-version"),
    pytest.param(_authn().replace(b"<samlp:AuthnRequest ", b'<samlp:AuthnRequest Destination="https://x.test/sso" '),
                 "meant for another identity provider", id="wrong-destination"),
])
def test_bad_requests_are_refused_with_an_error_page(env, xml, reason):
    app, tmp = env
    make_sp(app, tmp)
    b = Browser(app)
    assert_refused(b.get(_redirect_url(xml, "rs")), reason)
    assert_refused(b.post(SSO, {"SAMLRequest": base64.b64encode(xml).decode()}), reason)


def test_garbage_encodings_are_refused(env):
    app, tmp = env
    make_sp(app, tmp)
    b = Browser(app)
    assert_refused(b.get(SSO + "?SAMLRequest=%%%not-base64"), "not base64")
    assert_refused(b.get(SSO + "?" + urlencode({"SAMLRequest": base64.b64encode(b"not deflate").decode()})),
                   "not DEFLATE")
    assert_refused(b.get(SSO), "no SAMLRequest")
    bomb = base64.b64encode(deflate(b"<a>" + b" " * 5_000_000 + b"</a>")).decode()  # 5 MB from ~5 kB
    assert_refused(b.get(SSO + "?" + urlencode({"SAMLRequest": bomb})), "too large")
    assert_refused(b.get(_redirect_url(_authn(), "a", SAMLRequest2="x") + "&RelayState=b"), "repeated")


def test_unsigned_request_refused_when_signatures_are_required(env):
    app, tmp = env
    client = make_sp(app, tmp, signed=False, require_signed=True)
    b = Browser(app)
    _reqid, url = redirect_request(client)
    assert_refused(b.get(url), "must sign its requests")
    _reqid, form = post_request(client)
    assert_refused(b.post(SSO, form), "must sign its requests")


def test_signature_by_another_key_is_refused(env):
    app, tmp = env
    make_sp(app, tmp, signed=True, require_signed=True)
    impostor = sp_client(tmp, idp_metadata(app), signed=True, cn="impostor")
    b = Browser(app)
    _reqid, url = redirect_request(impostor)
    assert_refused(b.get(url), "signature is not valid")
    _reqid, form = post_request(impostor)
    assert_refused(b.post(SSO, form), "signature is not valid")
    # a valid redirect signature, but a changed RelayState
    genuine = sp_client(tmp, idp_metadata(app), signed=True, cn="sp")  # a fresh key: also not registered
    _reqid, url = redirect_request(genuine)
    assert_refused(b.get(url.replace("RelayState=rs-1", "RelayState=rs-2")), "signature is not valid")


def test_sha1_signatures_are_refused(env):
    app, tmp = env
    client = make_sp(app, tmp, signed=True, require_signed=True)
    _reqid, url = redirect_request(client, sigalg="http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    assert "xmldsig%23rsa-sha1" in url
    assert_refused(Browser(app).get(url), "signature is not valid")


def test_relay_state_bound_and_round_trip(env):
    app, tmp = env
    client = make_sp(app, tmp)
    b = Browser(app)
    _reqid, url = redirect_request(client, relay_state="x" * 81)
    assert_refused(b.get(url), "longer than 80 bytes")
    _reqid, url = redirect_request(client, relay_state="é" * 41)  # 41 characters, 82 bytes
    assert_refused(b.get(url), "longer than 80 bytes")
    odd = 'a&b<"c>' + "é" * 20  # 7 + 40 bytes, returned untouched
    reqid, url = redirect_request(client, relay_state=odd)
    _a, saml_response, relay = full_flow(app, b, lambda: b.get(url))
    assert relay == odd


def test_resume_token_is_required_and_bound(env):
    app, tmp = env
    make_sp(app, tmp)
    b = Browser(app)
    assert_refused(b.get("/w/acme/saml/resume?r=forged"), "invalid or has expired")
    r = b.get(_redirect_url(_authn(), "ok"))
    nxt = parse_qs(urlsplit(r.headers["Location"]).query)["next"][0]
    token = parse_qs(urlsplit(nxt).query)["r"][0]
    assert_refused(b.get("/w/other/saml/resume?r=" + token), "invalid or has expired")  # another workspace


def test_app_requiring_mfa_gets_a_second_factor_and_the_mfa_context(env):
    from tests.integration.test_twofactor import enable_totp, submit_code

    app, tmp = env
    hub = app.extensions["idhub"]
    client = sp_client(tmp, idp_metadata(app))
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client),
                    "require_mfa": True}])
    b = Browser(app)
    assert b.login("acme", ALICE, ALICE_PW).status_code == 302  # a password-only session
    totp, _codes = enable_totp(b, hub)
    real = hub.clock
    hub.clock = lambda: real() + timedelta(seconds=60)  # the next TOTP step (codes are single use)
    cookie = b.client.get_cookie("idhub_session_acme").value
    try:
        reqid, url = redirect_request(client)
        r = b.get(url)  # the session lacks the app's second factor: it steps up, in place, for this app
        assert r.status_code == 302
        step = urlsplit(r.headers["Location"])
        assert step.path == "/w/acme/login/step-up" and parse_qs(step.query)["app"] == ["payroll"]
        r = b.get(r.headers["Location"])
        mfa_page = r.headers["Location"]
        assert mfa_page.startswith("/w/acme/login/mfa?flow=")  # the code only: not the password again
        r = submit_code(b, mfa_page, totp.at(hub.clock()))
        assert r.status_code == 302 and r.headers["Location"].startswith("/w/acme/saml/resume?")
    finally:
        hub.clock = real
    assert b.client.get_cookie("idhub_session_acme").value != cookie  # the same session, upgraded, a new cookie
    from sqlalchemy import select

    from idp.models import User

    with hub.db() as db:
        uid = db.scalar(select(User.id).where(User.email_normalized == ALICE))
    assert len(hub.sessions.list(uid)) == 1 and "totp" in hub.sessions.list(uid)[0].amr
    _a, saml_response, _r = post_form(b.get(r.headers["Location"]))
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.assertion.authn_statement[0].authn_context.authn_context_class_ref.text == (
        "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken")


# ---- single logout --------------------------------------------------------------------------------
def _logout_url(client: Saml2Client, sign: bool = True, relay_state: str = "bye") -> str:
    from saml2.saml import NameID

    dest = "http://localhost/w/acme/saml/slo"
    _rid, req = client.create_logout_request(dest, IDP_ENTITY, name_id=NameID(text=ALICE,
                                             format=NAMEID_FORMAT_EMAILADDRESS), sign=False)
    info = client.apply_binding(BINDING_HTTP_REDIRECT, str(req), dest, relay_state=relay_state, sign=sign,
                                sigalg=RSA_SHA256)
    parts = urlsplit(dict(info["headers"])["Location"])
    return f"{parts.path}?{parts.query}"


def test_single_logout_redirect(env):
    from saml2.sigver import verify_redirect_signature

    app, tmp = env
    client = make_sp(app, tmp, signed=True)
    b = Browser(app)
    reqid, url = redirect_request(client)
    full_flow(app, b, lambda: b.get(url))
    assert b.security().status_code == 200
    # unsigned, or signed by someone else: refused, and the session lives on
    assert_refused(b.get(_logout_url(client, sign=False)), "must be signed")
    impostor = sp_client(tmp, idp_metadata(app), signed=True, cn="impostor")
    assert_refused(b.get(_logout_url(impostor)), "signature is not valid")
    assert b.security().status_code == 200
    r = b.get(_logout_url(client))
    assert r.status_code == 302
    loc = urlsplit(r.headers["Location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == SP_SLO
    q = {k: v[0] for k, v in parse_qs(loc.query).items()}
    assert q["RelayState"] == "bye" and q["SigAlg"] == RSA_SHA256
    assert verify_redirect_signature(q, client.sec.sec_backend, cert=_idp_cert(app))
    out = client.parse_logout_request_response(q["SAMLResponse"], BINDING_HTTP_REDIRECT)
    assert out.status_ok()
    assert b.security().status_code == 302  # signed out


def _idp_cert(app) -> str:
    root = etree.fromstring(idp_metadata(app).encode())
    el = root.find("{urn:oasis:names:tc:SAML:2.0:metadata}IDPSSODescriptor/{urn:oasis:names:tc:SAML:2.0:metadata}"
                   "KeyDescriptor//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
    return "".join(el.text.split())
