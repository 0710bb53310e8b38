"""Upstream SAML (idhub as SP): each attack starts from a valid response, changes one thing, and is re-signed
with the test IdP's key, so each test proves one check of federation.saml_sp.consume."""

import base64
import copy
import zlib
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from federation import saml_sp
from federation.base import UpstreamError
from tests.helpers import saml_builder as sb

BASE = "https://hub.test"
WS = "acme"
IDP = "http://www.okta.com/exk1acme"
SSO = "https://acme.okta.test/app/sso/saml"
ACS = f"{BASE}/w/{WS}/sso/okta/acs"
AUD = f"{BASE}/w/{WS}/sso/okta/metadata"
REQ = "ONELOGIN_0123456789abcdef0123456789abcdef01234567"
AZ = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MS = "http://schemas.microsoft.com/identity/claims/"
TID, OID = "72f988bf-86f1-41af-91ab-2d7cd011db47", "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def idp():
    return sb.keypair("okta-idp")


@pytest.fixture(scope="module")
def other():
    return sb.keypair("globex-idp")  # another workspace's IdP


@pytest.fixture(scope="module")
def attacker():
    return sb.keypair("attacker")


@pytest.fixture
def conn(idp):
    return {"slug": "okta", "name": "Okta", "protocol": "saml", "preset": "okta",
            "metadata_xml": sb.metadata(IDP, [idp[1]], SSO)}


class Replay:
    def __init__(self):
        self.seen = {}

    def __call__(self, key, ttl):
        assert 0 < ttl <= 3600
        if key in self.seen:
            return True
        self.seen[key] = ttl
        return False


OKTA_ATTRS = {"email": "ada@acme.test", "firstName": "Ada", "lastName": "Lovelace", "groups": ["Eng", "Admins"]}


def build(**kw):
    args = dict(issuer=IDP, acs=ACS, audience=AUD, in_response_to=REQ, attributes=OKTA_ATTRS)
    args.update(kw)
    return sb.response(**args)


def signed(key, resp=None, where="assertion", alg="sha256", **kw):
    resp = resp if resp is not None else build()
    if where in ("assertion", "both"):
        sb.sign(sb.assertion_of(resp), key[0], key[1], alg=alg, **kw)
    if where in ("response", "both"):
        sb.sign(resp, key[0], key[1], alg=alg, **kw)
    return resp


def consume(conn, resp, request_id=REQ, replay=None, now=None):
    data = resp if isinstance(resp, (str, bytes)) else sb.encode(resp)
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    return saml_sp.consume(conn, BASE, WS, data, expected_request_id=request_id, replay_seen=replay or Replay(),
                           now=now)


def refused(conn, resp, check, **kw):
    with pytest.raises(UpstreamError) as e:
        consume(conn, resp, **kw)
    assert e.value.check == check, (e.value.check, e.value.message)
    assert e.value.hint
    return e.value


# ---- the happy paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["assertion", "response", "both"])
def test_okta_signed_response_is_accepted(conn, idp, where):
    ident = consume(conn, signed(idp, where=where))
    assert ident.subject == "00u1ada" and ident.email == "ada@acme.test" and ident.name == "Ada Lovelace"
    assert ident.groups == ("Eng", "Admins") and ident.session_index == "_sess1" and ident.mfa is False
    assert ident.claims["email"] == ["ada@acme.test"]


def test_azure_claim_uris_and_assertion_signature_required(conn, idp):
    conn["preset"] = "azure_ad"
    attrs = {AZ + "emailaddress": "ada@contoso.test", AZ + "givenname": "Ada", AZ + "surname": "Lovelace",
             MS + "objectidentifier": OID, MS + "tenantid": TID,
             "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": ["g-1", "g-2"],
             "http://schemas.microsoft.com/claims/authnmethodsreferences": [
                 "http://schemas.microsoft.com/claims/multipleauthn"]}
    ident = consume(conn, signed(idp, build(attributes=attrs, nameid="opaque-pairwise")))
    assert ident.subject == f"{TID}:{OID}" and ident.email == "ada@contoso.test" and ident.groups == ("g-1", "g-2")
    assert ident.mfa is True
    # Azure AD signs the assertion; a response signed only at the envelope is refused for this preset
    refused(conn, signed(idp, build(attributes=attrs), where="response"), "unsigned")
    conn["allowed_tenants"] = ["00000000-0000-0000-0000-000000000000"]
    refused(conn, signed(idp, build(attributes=attrs)), "tenant")


def test_certificate_rollover(conn, idp, other):
    conn["metadata_xml"] = sb.metadata(IDP, [idp[1], other[1]], SSO)
    assert consume(conn, signed(other)).subject == "00u1ada"
    conn["metadata_xml"] = sb.metadata(IDP, [idp[1]], SSO)
    refused(conn, signed(other), "certificate")
    conn["certs"] = [other[1]]  # pinned by the connection, ahead of the IdP's metadata refresh
    assert consume(conn, signed(other)).subject == "00u1ada"


def test_unsolicited_only_when_allowed(conn, idp):
    resp = signed(idp, build(in_response_to=None))
    refused(conn, resp, "in_response_to", request_id=None)
    conn["allow_unsolicited"] = True
    assert consume(conn, resp, request_id=None).subject == "00u1ada"
    # a solicited response is not accepted as unsolicited, nor an unsolicited one where a request was made
    refused(conn, signed(idp), "in_response_to", request_id=None)
    refused(conn, resp, "in_response_to", request_id=REQ)


def test_in_response_to_must_be_this_sign_ins_request(conn, idp):
    refused(conn, signed(idp), "in_response_to", request_id="ONELOGIN_another_request")


# ---- signatures ---------------------------------------------------------------------------------------
def test_unsigned_response_refused(conn):
    refused(conn, build(), "unsigned")


def test_signature_removed_refused(conn, idp):
    resp = signed(idp, where="both")
    for sig in resp.xpath("//ds:Signature", namespaces=sb.NS):
        sig.getparent().remove(sig)
    refused(conn, resp, "unsigned")


def test_altered_after_signing_refused(conn, idp):
    resp = signed(idp)
    resp.find(".//saml:NameID", sb.NS).text = "00u1admin"
    refused(conn, resp, "signature")


def test_altered_assertion_inside_signed_response_refused(conn, idp):
    resp = signed(idp, where="response")
    resp.find(".//saml:Attribute[@Name='groups']/saml:AttributeValue", sb.NS).text = "Admins-of-everything"
    refused(conn, resp, "signature")


@pytest.mark.parametrize("alg", ["sha1", "sha256-sha1digest"])
def test_sha1_refused(conn, idp, alg):
    refused(conn, signed(idp, alg=alg), "algorithm")


def test_keyinfo_certificate_not_pinned_refused(conn, attacker):
    # signed by the attacker, who puts their own certificate in KeyInfo
    refused(conn, signed(attacker), "certificate")


def test_attacker_key_with_pinned_certificate_in_keyinfo_refused(conn, idp, attacker):
    # KeyInfo claims the pinned certificate, but the signature was made with another key
    refused(conn, signed(attacker, keyinfo_cert=idp[1]), "signature")


def test_response_from_another_workspaces_idp_refused(conn, other):
    # globex's IdP (pinned on another workspace's connection) forges an assertion for acme's connection
    refused(conn, signed(other), "certificate")
    refused(conn, signed(other, keyinfo=False), "signature")


def test_response_for_another_workspace_refused(conn, idp):
    # a valid response of the same IdP addressed to another workspace's connection
    acs = f"{BASE}/w/globex/sso/okta/acs"
    refused(conn, signed(idp, build(acs=acs, audience=f"{BASE}/w/globex/sso/okta/metadata")), "destination")


def test_wrong_issuer_refused(conn, idp):
    refused(conn, signed(idp, build(issuer="http://www.okta.com/exk1other")), "issuer")


# ---- XML signature wrapping ------------------------------------------------------------------------------
def evil_assertion(resp, nameid="00u1admin"):
    evil = copy.deepcopy(sb.assertion_of(resp))
    for sig in evil.findall("ds:Signature", sb.NS):
        evil.remove(sig)
    evil.find("saml:Subject/saml:NameID", sb.NS).text = nameid
    evil.set("ID", "_evil")
    return evil


def xsw_response_wraps(idp):
    """XSW1: a new Response with the evil assertion; the original signed Response in the Signature's Object."""
    resp = signed(idp, where="response")
    evil_resp = copy.deepcopy(resp)
    evil_resp.set("ID", "_evilresp")
    sig = evil_resp.find("ds:Signature", sb.NS)
    evil_resp.replace(sb.assertion_of(evil_resp), evil_assertion(resp))
    obj = etree.SubElement(sig, f"{{{sb.DS}}}Object")
    obj.append(resp)
    return evil_resp


def xsw_response_sibling(idp):
    """XSW2: the original signed Response placed as a sibling before the signature of an evil Response."""
    resp = signed(idp, where="response")
    evil_resp = copy.deepcopy(resp)
    evil_resp.set("ID", "_evilresp")
    evil_resp.replace(sb.assertion_of(evil_resp), evil_assertion(resp))
    evil_resp.find("ds:Signature", sb.NS).addprevious(resp)
    return evil_resp


def xsw_evil_assertion_first(idp):
    """XSW3: an evil assertion inserted before the signed one."""
    resp = signed(idp)
    sb.assertion_of(resp).addprevious(evil_assertion(resp))
    return resp


def xsw_signed_inside_evil(idp):
    """XSW4: the signed assertion becomes a child of the evil assertion."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    evil = evil_assertion(resp)
    resp.replace(orig, evil)
    evil.append(orig)
    return resp


def xsw_signature_copied_to_evil(idp):
    """XSW5: the evil assertion carries a copy of the signature; the signed assertion moved to the end."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    evil = evil_assertion(resp)
    evil.find("saml:Issuer", sb.NS).addnext(copy.deepcopy(orig.find("ds:Signature", sb.NS)))
    resp.replace(orig, evil)
    resp.append(orig)
    return resp


def xsw_signed_in_object_of_evil(idp):
    """XSW6: the signed assertion inside an Object of the signature copied into the evil assertion."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    evil = evil_assertion(resp)
    sig = copy.deepcopy(orig.find("ds:Signature", sb.NS))
    evil.find("saml:Issuer", sb.NS).addnext(sig)
    resp.replace(orig, evil)
    etree.SubElement(sig, f"{{{sb.DS}}}Object").append(orig)
    return resp


def xsw_extensions(idp):
    """XSW7: the signed assertion hidden in an Extensions element, the evil one where the SP reads."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    ext = etree.Element(f"{{{sb.SAMLP}}}Extensions")
    resp.replace(orig, evil_assertion(resp))
    resp.find("saml:Issuer", sb.NS).addnext(ext)
    ext.append(orig)
    return resp


def xsw_same_id(idp):
    """XSW8: the evil assertion takes the signed one's ID; the signed one hides in a signature Object."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    evil = evil_assertion(resp)
    evil.set("ID", orig.get("ID"))
    sig = copy.deepcopy(orig.find("ds:Signature", sb.NS))
    evil.find("saml:Issuer", sb.NS).addnext(sig)
    orig.remove(orig.find("ds:Signature", sb.NS))
    resp.replace(orig, evil)
    etree.SubElement(sig, f"{{{sb.DS}}}Object").append(orig)
    return resp


def xsw_signature_moved(idp):
    """The assertion's signature moved up to the Response (still referencing the assertion), assertion swapped."""
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    sig = orig.find("ds:Signature", sb.NS)
    orig.remove(sig)
    resp.find("saml:Issuer", sb.NS).addnext(sig)
    return resp


def xsw_unsigned_beside_signed(idp):
    """An unsigned assertion beside a signed one."""
    resp = signed(idp)
    resp.append(evil_assertion(resp))
    return resp


@pytest.mark.parametrize("shape", [xsw_response_wraps, xsw_response_sibling, xsw_evil_assertion_first,
                                   xsw_signed_inside_evil, xsw_signature_copied_to_evil, xsw_signed_in_object_of_evil,
                                   xsw_extensions, xsw_same_id, xsw_signature_moved, xsw_unsigned_beside_signed])
def test_signature_wrapping_refused(conn, idp, shape):
    refused(conn, shape(idp), "wrapping")


def test_single_evil_assertion_with_signature_of_another_id_refused(conn, idp):
    # one assertion only: the evil one, carrying the original's signature (reference to another ID)
    resp = signed(idp)
    orig = sb.assertion_of(resp)
    evil = evil_assertion(resp)
    evil.find("saml:Issuer", sb.NS).addnext(copy.deepcopy(orig.find("ds:Signature", sb.NS)))
    resp.replace(orig, evil)
    refused(conn, resp, "wrapping")


# ---- comment injection, hostile XML -------------------------------------------------------------------------
def test_comment_in_nameid_does_not_truncate(conn, idp):
    # the attacker registered "admin@acme.test.evil.test" at the IdP and got a valid assertion for it
    resp = signed(idp, build(nameid="admin@acme.test.evil.test"))
    nameid = resp.find(".//saml:NameID", sb.NS)
    nameid.text = "admin@acme.test"
    comment = etree.Comment("")
    comment.tail = ".evil.test"
    nameid.append(comment)
    ident = consume(conn, resp)  # exclusive c14n drops the comment: the signature still verifies
    assert ident.subject == "admin@acme.test.evil.test"


def test_comment_in_attribute_does_not_truncate(conn, idp):
    resp = signed(idp, build(attributes={**OKTA_ATTRS, "email": "ada@acme.test.evil.test"}))
    value = resp.find(".//saml:Attribute[@Name='email']/saml:AttributeValue", sb.NS)
    value.text = "ada@acme.test"
    comment = etree.Comment("x")
    comment.tail = ".evil.test"
    value.append(comment)
    assert consume(conn, resp).email == "ada@acme.test.evil.test"


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_r" Version="2.0">&x;</samlp:Response>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_r" Version="2.0">&lol3;</samlp:Response>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS])
def test_dtd_entities_refused(conn, doc):
    refused(conn, doc, "xml")


def test_xxe_inside_a_signed_response_refused(conn, idp):
    xml = etree.tostring(signed(idp)).decode()
    doc = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + xml.replace("00u1ada", "&x;")
    refused(conn, doc.encode(), "xml")


@pytest.mark.parametrize("value", ["", "not base64 !!!", base64.b64encode(b"<a>").decode(),
                                   base64.b64encode(b"\xff\xfe<x/>").decode(),
                                   base64.b64encode(b"<a>" * 200_000).decode(),
                                   base64.b64encode(b"<a>" * 100 + b"</a>" * 100).decode()])
def test_malformed_refused(conn, value):
    refused(conn, value, "xml")


def test_not_a_response_refused(conn, idp):
    resp = signed(idp)
    refused(conn, sb.assertion_of(resp), "structure")


def test_encrypted_assertion_refused(conn, idp):
    resp = signed(idp)
    a = sb.assertion_of(resp)
    enc = etree.Element(f"{{{sb.SAML}}}EncryptedAssertion")
    resp.replace(a, enc)
    refused(conn, resp, "encrypted")


def test_error_status_refused(conn, idp):
    resp = build()
    resp.find("samlp:Status/samlp:StatusCode", sb.NS).set("Value", "urn:oasis:names:tc:SAML:2.0:status:Responder")
    refused(conn, resp, "status")


# ---- replay, URLs, audience, time window -----------------------------------------------------------------
def test_replay_refused(conn, idp):
    replay = Replay()
    data = sb.encode(signed(idp))
    assert consume(conn, data, replay=replay).subject == "00u1ada"
    refused(conn, data, "replay", replay=replay)
    assert len(replay.seen) == 1


def test_refused_response_does_not_fill_replay_cache(conn, idp):
    replay = Replay()
    refused(conn, signed(idp, build(audience="https://other.test/sp")), "audience", replay=replay)
    assert replay.seen == {}


@pytest.mark.parametrize("aud", ["https://other.test/sp", AUD + "x", AUD.upper(), ""])
def test_wrong_audience_refused(conn, idp, aud):
    refused(conn, signed(idp, build(audience=aud)), "audience")


def test_every_audience_restriction_must_name_us(conn, idp):
    # python3-saml merges the restrictions into one list; each restriction must contain our entity id
    refused(conn, signed(idp, build(audiences=[[AUD], ["https://other.test/sp"]])), "audience")
    assert consume(conn, signed(idp, build(audiences=[[AUD, "https://other.test/sp"]]))).subject == "00u1ada"


@pytest.mark.parametrize("recipient", [ACS + "/../evil", "https://evil.test/?" + ACS, ACS + "x",
                                       ACS.replace("https", "http"), ""])
def test_wrong_recipient_refused(conn, idp, recipient):
    refused(conn, signed(idp, build(recipient=recipient)), "recipient")


@pytest.mark.parametrize("destination", [ACS + "/evil", ACS + "?x=1", "https://evil.test/acs", ""])
def test_wrong_destination_refused(conn, idp, destination):
    refused(conn, signed(idp, build(destination=destination)), "destination")


def test_missing_destination_refused(conn, idp):
    resp = build()
    del resp.attrib["Destination"]
    refused(conn, signed(idp, resp), "destination")


def test_time_window(conn, idp):
    now = datetime.now(UTC)
    resp = sb.encode(signed(idp))
    assert consume(conn, resp, now=now + timedelta(seconds=300 + 60)).subject  # within the skew
    refused(conn, resp, "clock_skew", now=now + timedelta(seconds=300 + 200))
    refused(conn, resp, "clock_skew", now=now - timedelta(seconds=300))
    future = sb.encode(signed(idp, build(now=now + timedelta(seconds=600))))
    refused(conn, future, "clock_skew")
    err = refused(conn, sb.encode(signed(idp, build(now=now - timedelta(hours=1)))), "clock_skew")
    assert "clock" in err.hint.lower()


# ---- metadata, AuthnRequest, SP metadata --------------------------------------------------------------------
def test_parse_idp_metadata(idp, other):
    meta = saml_sp.parse_idp_metadata(sb.metadata(IDP, [idp[1], other[1]], SSO, slo_url=SSO + "/slo"))
    assert meta["entity_id"] == IDP and meta["sso_url"] == SSO and meta["slo_url"] == SSO + "/slo"
    assert len(meta["certs"]) == 2 and all(isinstance(t, datetime) for t in meta["cert_not_after"])
    assert meta["cert_not_after"][0] > datetime.now(UTC) + timedelta(days=300)


@pytest.mark.parametrize("xml", ["<x/>", "not xml", '<!DOCTYPE x [<!ENTITY e "e">]><x>&e;</x>',
                                 '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
                                 'entityID="x"><md:IDPSSODescriptor/></md:EntityDescriptor>'])
def test_bad_metadata_refused(xml):
    with pytest.raises(UpstreamError) as e:
        saml_sp.parse_idp_metadata(xml)
    assert e.value.check in ("metadata", "binding")


def test_metadata_without_certificate_needs_pinned_certs(conn, idp):
    conn["metadata_xml"] = sb.metadata(IDP, [], SSO)
    assert saml_sp.parse_idp_metadata(conn["metadata_xml"])["certs"] == []
    refused(conn, signed(idp), "certificate")  # nothing pinned: nothing verifies
    conn["certs"] = [idp[1]]
    assert consume(conn, signed(idp)).subject == "00u1ada"


def test_naive_now_is_utc(conn, idp):
    naive = datetime.now(UTC).replace(tzinfo=None)
    assert consume(conn, signed(idp), now=naive).subject == "00u1ada"


def test_library_schema_validation_runs_too(conn, idp):
    # an element idhub's own checks do not look at, in a place the SAML schema forbids: python3-saml refuses it
    resp = build()
    a = sb.assertion_of(resp)
    etree.SubElement(a.find("saml:Subject", sb.NS), f"{{{sb.SAML}}}Bogus").text = "x"
    refused(conn, signed(idp, resp), "library")


def test_element_inside_nameid_refused(conn, idp):
    resp = build()
    nameid = resp.find(".//saml:NameID", sb.NS)
    etree.SubElement(nameid, f"{{{sb.SAML}}}Evil").text = "x"
    with pytest.raises(UpstreamError) as e:
        consume(conn, signed(idp, resp))
    assert e.value.check in ("structure", "library")


def test_start_builds_redirect_authn_request(conn):
    url, request_id = saml_sp.start(conn, BASE, WS, "rs-123")
    parts = urlsplit(url)
    assert url.startswith(SSO + "?")
    q = parse_qs(parts.query)
    assert q["RelayState"] == ["rs-123"]
    xml = zlib.decompress(base64.b64decode(q["SAMLRequest"][0]), -15)
    req = etree.fromstring(xml)
    assert req.get("ID") == request_id and req.get("Destination") == SSO
    assert req.get("AssertionConsumerServiceURL") == ACS
    assert req.find("saml:Issuer", sb.NS).text == AUD


def test_sp_metadata(conn):
    root = etree.fromstring(saml_sp.sp_metadata_xml(conn, BASE, WS).encode())
    assert root.get("entityID") == AUD
    acs = root.find("md:SPSSODescriptor/md:AssertionConsumerService", sb.NS)
    assert acs.get("Location") == ACS


def test_processing_instruction_in_nameid_refused(conn, idp):
    # unlike comments, processing instructions are part of the canonical form: the signature breaks
    resp = signed(idp, build(nameid="admin@acme.test.evil.test"))
    nameid = resp.find(".//saml:NameID", sb.NS)
    nameid.text = "admin@acme.test"
    pi = etree.ProcessingInstruction("x", "y")
    pi.tail = ".evil.test"
    nameid.append(pi)
    refused(conn, resp, "signature")


def _paths(root):
    tree = root.getroottree()
    return [tree.getpath(el) for el in root.iter() if el is not root and isinstance(el.tag, str)]


def test_every_element_or_attribute_removed_fails_closed(conn, idp):
    """Remove each element / attribute of a valid response, re-sign what is left: the answer is an identity or
    an UpstreamError naming a check — never another exception (which the web layer would turn into a 500)."""
    base = build()
    outcomes = set()
    mutations = [("el", p, None) for p in _paths(base)]
    for el in base.iter():
        if isinstance(el.tag, str):
            mutations += [("attr", base.getroottree().getpath(el), a) for a in el.attrib]
    for kind, path, attr in mutations:
        resp = copy.deepcopy(base)
        el = resp.getroottree().xpath(path, namespaces=sb.NS)[0]
        if kind == "el":
            el.getparent().remove(el)
        else:
            del el.attrib[attr]
        a = sb.assertion_of(resp)
        try:
            if a is not None and a.get("ID"):
                sb.sign(a, *idp)
            consume(conn, resp)
            outcomes.add("accepted")
        except UpstreamError as e:
            assert e.check and e.hint is not None
            outcomes.add(e.check)
    assert len(mutations) > 40 and "accepted" in outcomes and {"structure", "audience", "status"} <= outcomes


def test_request_binding_must_be_signed(conn, idp):
    # only the assertion is signed and it carries no InResponseTo: the unsigned Response's InResponseTo could have
    # been put around a captured assertion, so it does not bind the assertion to this sign-in
    resp = build()
    del resp.find(".//saml:SubjectConfirmationData", sb.NS).attrib["InResponseTo"]
    refused(conn, signed(idp, copy.deepcopy(resp)), "in_response_to")
    assert consume(conn, signed(idp, resp, where="both")).subject == "00u1ada"


# ---- non-standard transforms -----------------------------------------------------------------------------------
XPATH_T = "http://www.w3.org/TR/1999/REC-xpath-19991116"
XSLT_T = "http://www.w3.org/TR/1999/REC-xslt-19991116"
C14N_INCL = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_COMMENTS = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
EXC_C14N_COMMENTS = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
BASE64_T = "http://www.w3.org/2000/09/xmldsig#base64"


def sign_with_transforms(el, key, transforms, xpath: str | None = None):
    """A *valid* enveloped signature of ``el`` whose Reference uses ``transforms`` (xmlsec Transform objects), so a
    refusal proves the transform policy, not a broken signature."""
    import xmlsec

    for old in el.findall("ds:Signature", sb.NS):
        el.remove(old)
    sig = xmlsec.template.create(el, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256, ns="ds")
    el.find("saml:Issuer", sb.NS).addnext(sig)
    ref = xmlsec.template.add_reference(sig, xmlsec.Transform.SHA256, uri="#" + el.get("ID"))
    for t in transforms:
        node = xmlsec.template.add_transform(ref, t)
        if t == xmlsec.Transform.XPATH:
            etree.SubElement(node, f"{{{sb.DS}}}XPath").text = xpath or "not(ancestor-or-self::ds:Signature)"
    xmlsec.template.x509_data_add_certificate(xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(sig)))
    ctx = xmlsec.SignatureContext()
    k = xmlsec.Key.from_memory(key[0], xmlsec.KeyFormat.PEM)
    k.load_cert_from_memory(key[1].encode(), xmlsec.KeyFormat.CERT_PEM)
    ctx.key = k
    ctx.register_id(el, "ID")
    ctx.sign(sig)
    check = xmlsec.SignatureContext()  # the signature itself is sound
    check.key = xmlsec.Key.from_memory(key[1].encode(), xmlsec.KeyFormat.CERT_PEM)
    check.register_id(el, "ID")
    check.verify(sig)
    return sig


def _transforms():
    import xmlsec

    T = xmlsec.Transform
    return {
        "xpath": [T.ENVELOPED, T.XPATH, T.EXCL_C14N],
        "xpath-only": [T.XPATH, T.EXCL_C14N],
        "inclusive-c14n": [T.ENVELOPED, T.C14N],
        "c14n-with-comments": [T.ENVELOPED, T.C14N_COMMENTS],
        "exc-c14n-with-comments": [T.ENVELOPED, T.EXCL_C14N_COMMENTS],
        "no-enveloped": [T.EXCL_C14N],
        "no-transforms": [],
        "twice-enveloped": [T.ENVELOPED, T.ENVELOPED, T.EXCL_C14N, T.EXCL_C14N, T.C14N11],
    }


@pytest.mark.parametrize("name", ["xpath", "xpath-only", "inclusive-c14n", "c14n-with-comments",
                                  "exc-c14n-with-comments", "twice-enveloped"])
@pytest.mark.parametrize("where", ["assertion", "response"])
def test_non_standard_transforms_refused(conn, idp, name, where):
    """Only enveloped-signature + exclusive C14N: an XPath (or other) transform can make the signature cover less
    than the element it sits in, and comments-preserving canonicalisation re-opens the comment-truncation attack."""
    resp = build()
    target = sb.assertion_of(resp) if where == "assertion" else resp
    sign_with_transforms(target, idp, _transforms()[name])
    refused(conn, resp, "algorithm")


def test_an_xpath_transform_that_excludes_the_nameid_is_refused(conn, idp):
    """The classic: the IdP's signature is valid, but its XPath filter leaves the Subject out, so the NameID could
    be anything. It must not be accepted even though xmlsec verifies it."""
    resp = build()
    a = sb.assertion_of(resp)
    sign_with_transforms(a, idp, [_transforms()["xpath"][0], _transforms()["xpath"][1]],
                         xpath="not(ancestor-or-self::saml:Subject) and not(ancestor-or-self::ds:Signature)")
    a.find(".//saml:NameID", sb.NS).text = "00u1admin"  # the signature still verifies: NameID is outside it
    import xmlsec

    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(idp[1].encode(), xmlsec.KeyFormat.CERT_PEM)
    ctx.register_id(a, "ID")
    ctx.verify(a.find("ds:Signature", sb.NS))
    refused(conn, resp, "algorithm")


def test_missing_transforms_are_refused(conn, idp):
    for name in ("no-transforms", "no-enveloped"):
        resp = build()
        try:
            sign_with_transforms(sb.assertion_of(resp), idp, _transforms()[name])
        except Exception:  # noqa: BLE001 - xmlsec cannot even make a signature over itself; nothing to test
            continue
        with pytest.raises(UpstreamError) as e:
            consume(conn, resp)
        assert e.value.check in ("algorithm", "signature")
