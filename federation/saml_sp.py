"""idhub as a SAML 2.0 service provider of an upstream IdP (Okta, Azure AD, any SAML IdP).

python3-saml (onelogin) validates every response in strict mode, but only after idhub's own checks, which do
not trust the library alone (see docs/security.md, "Known pitfalls"):

* the XML is parsed by the hardened parser of :mod:`saml.xml` first (no DTD, no entities, bounded size/depth);
* exactly one ``Assertion``, a direct child of the ``Response``; no ``EncryptedAssertion``; signatures only as
  the direct child of the Response or of the Assertion, each referencing its parent's unique ID (this refuses
  every signature-wrapping shape);
* signatures verified against the pinned certificates only (IdP metadata plus the connection's ``certs``,
  several for rollover); a certificate in KeyInfo that is not pinned is refused; RSA-SHA256/384/512 only;
* a signature covering the assertion is required (Azure AD preset: on the assertion itself);
* exact Destination, Recipient and Audience (every AudienceRestriction), the Issuer from the metadata,
  InResponseTo bound to the sign-in's AuthnRequest (unsolicited only when ``allow_unsolicited``), the time
  window with a small skew, and an assertion-ID replay cache via ``replay_seen``;
* NameID and attribute values are the text of the whole element (comments do not truncate them);
* a re-authentication asks for ``ForceAuthn="true"`` and requires one AuthnStatement whose ``AuthnInstant`` is
  fresh (after the request, at most ``federation.base.REAUTH_MAX_AGE`` seconds old): check ``authn_instant``.

Every refusal is an :class:`UpstreamError` naming the check, with a hint for admins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import urlencode, urlsplit

import xmlsec
from cryptography import x509
from lxml import etree
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from federation import presets
from federation.base import UpstreamError, UpstreamIdentity, check_fresh
from saml import xml as sx

NS = sx.NS
MAX_RESPONSE = 256 * 1024  # decoded XML of a SAMLResponse (many groups make big assertions)
DEFAULT_SKEW = 120  # seconds of clock skew allowed either way
MAX_SKEW = 300
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
DEPRECATED_ALGS = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#dsa-sha1",
    "http://www.w3.org/2000/09/xmldsig#sha1", "http://www.w3.org/2001/04/xmldsig-more#rsa-md5",
    "http://www.w3.org/2001/04/xmldsig-more#md5", "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256", "http://www.w3.org/2009/xmldsig11#dsa-sha256",
}

HINTS = {
    "xml": "The message is not a well-formed SAML response; it may have been altered on the way.",
    "status": "The identity provider refused the sign-in; see its sign-in logs.",
    "structure": "The response does not have the shape of a SAML 2.0 response with one assertion.",
    "encrypted": "Turn off assertion encryption for this application at the identity provider.",
    "wrapping": "The response carries signatures in unexpected places (a signature-wrapping attempt).",
    "algorithm": "The identity provider signs with a deprecated algorithm (SHA-1); set it to RSA-SHA256.",
    "certificate": "The response was signed with a certificate this connection does not trust: refresh the IdP "
                   "metadata or add the new signing certificate to the connection (certificate rollover).",
    "signature": "The signature does not verify with the pinned certificates: refresh the IdP metadata or check "
                 "that the connection points at the right identity provider application.",
    "unsigned": "Configure the identity provider to sign the assertion (Azure AD: 'Sign SAML assertion').",
    "issuer": "The response comes from another identity provider than the connection's metadata names.",
    "destination": "Set the identity provider's reply / ACS URL to exactly this connection's ACS URL.",
    "recipient": "Set the identity provider's reply / ACS URL to exactly this connection's ACS URL.",
    "audience": "Set the identity provider's Audience / Identifier (Entity ID) to exactly this connection's SP "
                "entity id (its metadata URL).",
    "clock_skew": "The assertion is outside its validity window: check the clocks of idhub and the identity "
                  "provider (NTP), then retry.",
    "in_response_to": "The response does not answer this sign-in (expired or from another browser): start the "
                      "sign-in from idhub again, or enable allow_unsolicited for IdP-initiated sign-ins.",
    "replay": "This assertion was already used; start the sign-in again.",
    "subject": "Configure the identity provider to send a persistent NameID.",
    "tenant": "The Azure AD tenant of this user is not in the connection's allowed_tenants.",
    "metadata": "Provide the IdP metadata XML (EntityDescriptor with an IDPSSODescriptor and a signing "
                "certificate).",
    "binding": "The identity provider offers no HTTP-Redirect or HTTP-POST single sign-on endpoint.",
    "library": "python3-saml refused the response; see the message for the reason.",
    "authn_instant": "The identity provider must honour ForceAuthn (make the person sign in again) and send the "
                     "AuthnInstant of that sign-in.",
}


def _fail(check: str, message: str) -> UpstreamError:
    return UpstreamError(check, message, HINTS.get(check, ""))


# ---- URLs ----------------------------------------------------------------------------------------------
def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def sp_entity_id(conn: dict, base_url: str, ws: str) -> str:
    return f"{_base(base_url)}/w/{ws}/sso/{conn['slug']}/metadata"


def acs_url(conn: dict, base_url: str, ws: str) -> str:
    return f"{_base(base_url)}/w/{ws}/sso/{conn['slug']}/acs"


# ---- certificates and metadata ---------------------------------------------------------------------------
def _der(pem_or_b64: str) -> bytes:
    body = "".join(sx.pem_body(pem_or_b64).split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _fail("certificate", "a pinned certificate is not valid PEM") from None


def _load_cert(pem_or_b64: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_der(pem_or_b64))
    except ValueError:
        raise _fail("certificate", "a pinned certificate is not a valid X.509 certificate") from None


def cert_not_after(pem_or_b64: str) -> datetime:
    """When a pinned certificate expires (UTC)."""
    return _load_cert(pem_or_b64).not_valid_after_utc


def parse_idp_metadata(xml: str) -> dict:
    """The IdP's entity id, SSO/SLO endpoints and signing certificates (with their expiry) from its metadata."""
    if not isinstance(xml, (str, bytes)):
        raise _fail("metadata", "no IdP metadata")
    meta = _parse_idp_metadata(xml)
    return {**meta, "certs": list(meta["certs"]), "cert_not_after": list(meta["cert_not_after"])}


@lru_cache(maxsize=256)
def _parse_idp_metadata(xml: str | bytes) -> dict:
    try:
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
        root = sx.parse(data, sx.MAX_METADATA)
    except (sx.XmlError, UnicodeEncodeError) as e:
        raise _fail("metadata", f"the IdP metadata is not acceptable XML: {e}") from None
    md = NS["md"]
    if root.tag == f"{{{md}}}EntitiesDescriptor":
        entities = [e for e in root.iter(f"{{{md}}}EntityDescriptor") if e.find("md:IDPSSODescriptor", NS) is not None]
        if len(entities) != 1:
            raise _fail("metadata", "the metadata must describe exactly one identity provider")
        root = entities[0]
    if root.tag != f"{{{md}}}EntityDescriptor":
        raise _fail("metadata", "the metadata has no EntityDescriptor")
    entity_id = (root.get("entityID") or "").strip()
    idp = root.find("md:IDPSSODescriptor", NS)
    if not entity_id or idp is None:
        raise _fail("metadata", "the metadata has no entityID or IDPSSODescriptor")
    sso = {s.get("Binding"): (s.get("Location") or "").strip() for s in idp.findall("md:SingleSignOnService", NS)}
    if sso.get(sx.BINDING_REDIRECT):
        sso_binding, sso_url = sx.BINDING_REDIRECT, sso[sx.BINDING_REDIRECT]
    elif sso.get(sx.BINDING_POST):
        sso_binding, sso_url = sx.BINDING_POST, sso[sx.BINDING_POST]
    else:
        raise _fail("binding", "the metadata has no SingleSignOnService with the Redirect or POST binding")
    if urlsplit(sso_url).scheme not in ("https", "http"):
        raise _fail("metadata", "the SingleSignOnService location is not an http(s) URL")
    slo_url = ""
    for s in idp.findall("md:SingleLogoutService", NS):
        if s.get("Binding") in (sx.BINDING_REDIRECT, sx.BINDING_POST) and s.get("Location"):
            slo_url = s.get("Location").strip()
            break
    certs: list[str] = []
    not_after: list[datetime] = []
    for kd in idp.findall("md:KeyDescriptor", NS):
        if kd.get("use") not in (None, "", "signing"):
            continue
        for c in kd.findall(".//ds:X509Certificate", NS):
            pem = sx.cert_pem(c.text or "")
            cert = _load_cert(pem)
            if pem not in certs:
                certs.append(pem)
                not_after.append(cert.not_valid_after_utc)
    return {"entity_id": entity_id, "sso_url": sso_url, "sso_binding": sso_binding, "slo_url": slo_url,
            "certs": tuple(certs), "cert_not_after": tuple(not_after)}


def pinned_certs(conn: dict, meta: dict | None = None) -> list[str]:
    meta = meta if meta is not None else parse_idp_metadata(conn["metadata_xml"])
    out = list(meta["certs"])
    for pem in conn.get("certs") or []:
        _load_cert(pem)
        pem = sx.cert_pem(sx.pem_body(pem))
        if pem not in out:
            out.append(pem)
    if not out:
        raise _fail("certificate", "no signing certificate is pinned for this connection (none in the metadata, "
                                   "none under certs)")
    return out


# ---- python3-saml settings ---------------------------------------------------------------------------------
def _preset(conn: dict) -> str:
    preset = conn.get("preset") or "generic"
    presets.shape(preset)
    return preset


def _settings(conn: dict, base_url: str, ws: str, meta: dict, certs: list[str], want_assertions_signed: bool,
              want_messages_signed: bool = False) -> OneLogin_Saml2_Settings:
    settings = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": sp_entity_id(conn, base_url, ws),
            "assertionConsumerService": {"url": acs_url(conn, base_url, ws), "binding": sx.BINDING_POST},
            "NameIDFormat": NAMEID_UNSPECIFIED,
        },
        "idp": {
            "entityId": meta["entity_id"],
            "singleSignOnService": {"url": meta["sso_url"], "binding": sx.BINDING_REDIRECT},
            "x509certMulti": {"signing": [sx.pem_body(c) for c in certs]},
        },
        "security": {
            "authnRequestsSigned": False,
            "wantAssertionsSigned": want_assertions_signed,
            "wantMessagesSigned": want_messages_signed,
            "wantNameId": True,
            "wantAttributeStatement": False,
            "wantXMLValidation": True,
            "rejectDeprecatedAlgorithm": True,
            "requestedAuthnContext": False,
            "allowRepeatAttributeName": True,
            "signatureAlgorithm": sx.RSA_SHA256,
            "digestAlgorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
        },
    }
    if meta.get("slo_url"):
        settings["idp"]["singleLogoutService"] = {"url": meta["slo_url"], "binding": sx.BINDING_REDIRECT}
    try:
        return OneLogin_Saml2_Settings(settings, sp_validation_only=True)
    except OneLogin_Saml2_Error as e:
        raise _fail("metadata", f"python3-saml refused the connection settings: {e}") from None


def sp_metadata_xml(conn: dict, base_url: str, ws: str) -> str:
    """Our SP metadata, served at ``{base}/w/{ws}/sso/{slug}/metadata`` (its URL is our entity id)."""
    md = NS["md"]
    root = etree.Element(f"{{{md}}}EntityDescriptor", nsmap={"md": md},
                         entityID=sp_entity_id(conn, base_url, ws))
    sp = etree.SubElement(root, f"{{{md}}}SPSSODescriptor", AuthnRequestsSigned="false",
                          WantAssertionsSigned="true",
                          protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol")
    etree.SubElement(sp, f"{{{md}}}NameIDFormat").text = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    etree.SubElement(sp, f"{{{md}}}AssertionConsumerService", Binding=sx.BINDING_POST,
                     Location=acs_url(conn, base_url, ws), index="0", isDefault="true")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


def start(conn: dict, base_url: str, ws: str, relay_state: str, *, force_authn: bool = False) -> tuple[str, str]:
    """An AuthnRequest for the HTTP-Redirect binding: (URL to send the browser to, the request's ID).
    ``force_authn``: ``ForceAuthn="true"`` (a re-authentication: the IdP must not answer from its session)."""
    meta = parse_idp_metadata(conn["metadata_xml"])
    if meta["sso_binding"] != sx.BINDING_REDIRECT:
        raise _fail("binding", "the identity provider offers no HTTP-Redirect single sign-on endpoint")
    settings = _settings(conn, base_url, ws, meta, pinned_certs(conn, meta), True)
    req = OneLogin_Saml2_Authn_Request(settings, force_authn=force_authn, set_nameid_policy=True)
    params = {"SAMLRequest": req.get_request(deflate=True)}
    if relay_state:
        params["RelayState"] = relay_state
    sep = "&" if "?" in meta["sso_url"] else "?"
    return meta["sso_url"] + sep + urlencode(params), req.get_id()


# ---- idhub's own checks -------------------------------------------------------------------------------------
def _text(el) -> str:
    """The text of the whole element: every text node, comments and processing instructions skipped (a comment
    must not truncate a NameID the signature covers in full); child elements refused."""
    if el is None:
        return ""
    parts = [el.text or ""]
    for child in el:
        if isinstance(child.tag, str):
            raise _fail("structure", "unexpected element inside a text value")
        parts.append(child.tail or "")
    return "".join(parts).strip()


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _fail("structure", f"{what} is not a valid time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t


def _cert_in_keyinfo(sig) -> list[bytes]:
    out = []
    for c in sig.findall("ds:KeyInfo//ds:X509Certificate", NS):
        try:
            out.append(base64.b64decode("".join((c.text or "").split()), validate=True))
        except (binascii.Error, ValueError):
            raise _fail("certificate", "the certificate in the signature's KeyInfo is not valid") from None
    return out


def _check_signature_shape(el, sig) -> None:
    el_id = el.get("ID")
    refs = sig.findall("ds:SignedInfo/ds:Reference", NS)
    if not sx.valid_id(el_id) or len(refs) != 1 or refs[0].get("URI") != "#" + el_id:
        raise _fail("wrapping", "a signature does not reference the element that carries it")
    method = sig.find("ds:SignedInfo/ds:SignatureMethod", NS)
    digest = refs[0].find("ds:DigestMethod", NS)
    algs = [x.get("Algorithm") if x is not None else None for x in (method, digest)]
    if any(a in DEPRECATED_ALGS for a in algs):
        raise _fail("algorithm", "the response is signed with a deprecated algorithm (SHA-1)")
    if algs[0] not in sx.SIGNATURE_ALGS or algs[1] not in sx.DIGEST_ALGS:
        raise _fail("algorithm", "the response is signed with an algorithm idhub does not accept")
    c14n = sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS)
    if c14n is None or c14n.get("Algorithm") not in (sx.EXC_C14N, "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"):
        raise _fail("algorithm", "the signature uses a canonicalisation idhub does not accept")
    transforms = [t.get("Algorithm") for t in refs[0].findall("ds:Transforms/ds:Transform", NS)]
    if not transforms or any(t not in (sx.ENVELOPED, sx.EXC_C14N) for t in transforms):
        raise _fail("algorithm", "the signature uses a transform idhub does not accept")
    if sig.find("ds:Object", NS) is not None:
        raise _fail("wrapping", "the signature carries an Object element")


def _verify(el, sig, certs: list[str]) -> None:
    """Raise unless ``sig`` (enveloped in ``el``) verifies with one of the pinned certificates."""
    _check_signature_shape(el, sig)
    pinned = [_der(c) for c in certs]
    for der in _cert_in_keyinfo(sig):
        if not any(hmac.compare_digest(der, p) for p in pinned):
            raise _fail("certificate", "the signature carries a certificate that is not pinned for this connection")
    for pem in certs:
        ctx = xmlsec.SignatureContext()
        try:
            ctx.key = xmlsec.Key.from_memory(pem.encode(), xmlsec.KeyFormat.CERT_PEM)
            ctx.register_id(el, "ID")
            ctx.verify(sig)
            return
        except xmlsec.Error:
            continue
    raise _fail("signature", "the signature does not verify with any pinned certificate")


def _skew(conn: dict) -> timedelta:
    s = conn.get("clock_skew", DEFAULT_SKEW)
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SKEW:
        s = DEFAULT_SKEW
    return timedelta(seconds=s)


def _decode(saml_response_b64: str):
    if not isinstance(saml_response_b64, str) or not saml_response_b64.strip():
        raise _fail("xml", "no SAMLResponse")
    try:
        raw = sx.b64decode(saml_response_b64, MAX_RESPONSE)
        return raw, sx.parse(raw, MAX_RESPONSE)
    except sx.XmlError as e:
        raise _fail("xml", f"the SAMLResponse is not acceptable XML: {e}") from None


def consume(conn: dict, base_url: str, ws: str, saml_response_b64: str, *, expected_request_id: str | None,
            replay_seen, now=None, authn_after: datetime | None = None) -> UpstreamIdentity:
    """Validate a SAMLResponse posted to our ACS and return who the IdP vouched for, or raise UpstreamError.
    ``authn_after``: this answers a re-authentication (ForceAuthn) asked for at that time; the assertion's
    AuthnInstant must be fresh."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    preset = _preset(conn)
    meta = parse_idp_metadata(conn["metadata_xml"])
    certs = pinned_certs(conn, meta)
    acs = acs_url(conn, base_url, ws)
    audience = sp_entity_id(conn, base_url, ws)
    skew = _skew(conn)
    raw, root = _decode(saml_response_b64)

    # -- shape: one Response, one Assertion as its direct child, signatures only where they belong
    if root.tag != f"{{{NS['samlp']}}}Response" or root.get("Version") != "2.0":
        raise _fail("structure", "the message is not a SAML 2.0 Response")
    if root.xpath("//saml:EncryptedAssertion | //saml:EncryptedID | //saml:EncryptedAttribute", namespaces=NS):
        raise _fail("encrypted", "encrypted assertions are not supported")
    assertions = root.xpath("//saml:Assertion", namespaces=NS)
    status = root.find("samlp:Status/samlp:StatusCode", NS)
    if status is None or status.get("Value") != STATUS_SUCCESS:
        code = status.get("Value", "") if status is not None else "none"
        raise _fail("status", f"the identity provider answered with status {code}")
    if len(assertions) != 1 or assertions[0].getparent() is not root:
        raise _fail("wrapping" if len(assertions) > 1 else "structure",
                    "the response must carry exactly one assertion, directly inside the Response")
    assertion = assertions[0]
    resp_sigs = root.findall("ds:Signature", NS)
    asrt_sigs = assertion.findall("ds:Signature", NS)
    all_sigs = root.xpath("//ds:Signature", namespaces=NS)
    if len(resp_sigs) > 1 or len(asrt_sigs) > 1 or len(all_sigs) != len(resp_sigs) + len(asrt_sigs):
        raise _fail("wrapping", "signatures in unexpected places")
    for el in (root, assertion):
        el_id = el.get("ID")
        if not sx.valid_id(el_id) or len(root.xpath("//*[@ID=$i]", i=el_id)) != 1:
            raise _fail("wrapping", "missing or duplicate ID")

    # -- signatures: pinned certificates, modern algorithms, covering the assertion
    if not resp_sigs and not asrt_sigs:
        raise _fail("unsigned", "neither the response nor the assertion is signed")
    if resp_sigs:
        _verify(root, resp_sigs[0], certs)
    if asrt_sigs:
        _verify(assertion, asrt_sigs[0], certs)
    require_asrt = conn.get("require_signed_assertion")
    if require_asrt is None:
        require_asrt = presets.SAML_REQUIRE_SIGNED_ASSERTION[preset]
    if require_asrt and not asrt_sigs:
        raise _fail("unsigned", "the assertion is not signed (only the response is)")

    # -- issuer
    issuer = assertion.find("saml:Issuer", NS)
    if _text(issuer) != meta["entity_id"]:
        raise _fail("issuer", "the assertion's Issuer is not the connection's identity provider")
    r_issuer = root.find("saml:Issuer", NS)
    if r_issuer is not None and _text(r_issuer) != meta["entity_id"]:
        raise _fail("issuer", "the response's Issuer is not the connection's identity provider")

    # -- destination (exact)
    if root.get("Destination") != acs:
        raise _fail("destination", "the response's Destination is not this connection's ACS URL")

    # -- InResponseTo bound to this sign-in
    irt = root.get("InResponseTo")
    if expected_request_id is not None:
        if not irt or not hmac.compare_digest(irt.encode(), expected_request_id.encode()):
            raise _fail("in_response_to", "the response does not answer this sign-in's request")
    elif irt:
        raise _fail("in_response_to", "a response to a request this sign-in did not make")
    elif conn.get("allow_unsolicited", False) is not True:
        raise _fail("in_response_to", "an unsolicited (IdP-initiated) response, and the connection does not allow them")

    # -- subject and its bearer confirmation (exact Recipient)
    subject = assertion.find("saml:Subject", NS)
    nameid_el = subject.find("saml:NameID", NS) if subject is not None else None
    if subject is None or nameid_el is None:
        raise _fail("subject", "the assertion has no Subject/NameID")
    confirmations = subject.findall("saml:SubjectConfirmation", NS)
    confirmed = False
    problems: list[str] = []
    for sc in confirmations:
        data = sc.find("saml:SubjectConfirmationData", NS)
        if sc.get("Method") != BEARER or data is None:
            continue
        if data.get("Recipient") != acs:
            problems.append("recipient")
            continue
        sc_irt = data.get("InResponseTo")
        if sc_irt is None and expected_request_id is not None and not resp_sigs:
            # only the assertion is signed: the request binding must be inside what the IdP signed
            problems.append("in_response_to")
            continue
        if (expected_request_id is None and sc_irt) or (expected_request_id is not None and sc_irt is not None
                                                          and sc_irt != expected_request_id):
            problems.append("in_response_to")
            continue
        nooa = _parse_time(data.get("NotOnOrAfter"), "SubjectConfirmationData NotOnOrAfter")
        nb = _parse_time(data.get("NotBefore"), "SubjectConfirmationData NotBefore")
        if nooa is None or now >= nooa + skew or (nb is not None and now + skew < nb):
            problems.append("clock_skew")
            continue
        confirmed = True
        break
    if not confirmed:
        check = problems[0] if problems else "recipient"
        raise _fail(check, {"recipient": "the assertion's Recipient is not this connection's ACS URL",
                            "in_response_to": "the subject confirmation answers another request",
                            "clock_skew": "the subject confirmation has expired or is not yet valid"}[check])

    # -- conditions: time window and every AudienceRestriction
    conditions = assertion.find("saml:Conditions", NS)
    if conditions is None:
        raise _fail("audience", "the assertion has no Conditions (no audience restriction)")
    nb = _parse_time(conditions.get("NotBefore"), "NotBefore")
    nooa = _parse_time(conditions.get("NotOnOrAfter"), "NotOnOrAfter")
    if nooa is None:
        raise _fail("clock_skew", "the assertion has no NotOnOrAfter")
    if nb is not None and now + skew < nb:
        raise _fail("clock_skew", "the assertion is not valid yet (NotBefore is in the future)")
    if now >= nooa + skew:
        raise _fail("clock_skew", "the assertion has expired (NotOnOrAfter is in the past)")
    restrictions = conditions.findall("saml:AudienceRestriction", NS)
    if not restrictions:
        raise _fail("audience", "the assertion has no AudienceRestriction")
    for r in restrictions:
        if audience not in [_text(a) for a in r.findall("saml:Audience", NS)]:
            raise _fail("audience", "the assertion's Audience is not this connection's SP entity id")

    # -- authn statement
    authn = assertion.find("saml:AuthnStatement", NS)
    session_index = authn.get("SessionIndex", "") if authn is not None else ""
    if authn is not None:
        sn = _parse_time(authn.get("SessionNotOnOrAfter"), "SessionNotOnOrAfter")
        if sn is not None and now >= sn + skew:
            raise _fail("clock_skew", "the IdP session has expired (SessionNotOnOrAfter)")
    if authn_after is not None:
        statements = assertion.findall("saml:AuthnStatement", NS)
        instant = _parse_time(statements[0].get("AuthnInstant"), "AuthnInstant") if len(statements) == 1 else None
        check_fresh(instant.timestamp() if instant else None, authn_after.timestamp(), now.timestamp(),
                    skew.total_seconds(), "authn_instant", "assertion's AuthnInstant", HINTS["authn_instant"])
    contexts = [_text(c) for c in assertion.findall("saml:AuthnStatement/saml:AuthnContext/saml:AuthnContextClassRef",
                                                   NS)]

    # -- python3-saml strict validation on top (never instead)
    _library_check(conn, base_url, ws, meta, certs, raw, expected_request_id, bool(asrt_sigs), bool(resp_sigs))

    # -- claims and mapping
    claims: dict = {}
    for attr in assertion.findall("saml:AttributeStatement/saml:Attribute", NS):
        name = attr.get("Name")
        if not name:
            continue
        claims.setdefault(name, []).extend(_text(v) for v in attr.findall("saml:AttributeValue", NS))
    nameid = _text(nameid_el)
    if not nameid:
        raise _fail("subject", "the assertion's NameID is empty")
    claims[presets.NAMEID] = [nameid]
    claims[presets.NAMEID_FORMAT] = [nameid_el.get("Format") or NAMEID_UNSPECIFIED]
    claims[presets.AUTHN_CONTEXT] = contexts
    mapped = presets.map_claims(preset, claims, conn.get("attribute_map") or None)
    allowed_tenants = conn.get("allowed_tenants") or []
    if allowed_tenants and mapped["tenant"] not in allowed_tenants:
        raise _fail("tenant", "the user's tenant is not allowed for this connection")
    warnings = []
    if mapped["overage"]:
        warnings.append("groups overage: the identity provider did not send every group")

    # -- replay: last, so a refused message never fills the cache; kept until the assertion expires
    key = "saml-assertion:" + hashlib.sha256(f"{meta['entity_id']}\n{assertion.get('ID')}".encode()).hexdigest()
    ttl = max(60, int((nooa + skew - now).total_seconds()) + 1)
    if replay_seen(key, ttl):
        raise _fail("replay", "this assertion was already used")

    return UpstreamIdentity(
        subject=mapped["subject"], email=mapped["email"], name=mapped["name"], given_name=mapped["given_name"],
        family_name=mapped["family_name"], groups=tuple(mapped["groups"]), amr=tuple(mapped["amr"] or contexts),
        mfa=bool(mapped["mfa"]), session_index=session_index, claims=claims, warnings=tuple(warnings))


_LIB_CHECKS = {
    OneLogin_Saml2_ValidationError.WRONG_AUDIENCE: "audience",
    OneLogin_Saml2_ValidationError.WRONG_DESTINATION: "destination",
    OneLogin_Saml2_ValidationError.WRONG_ISSUER: "issuer",
    OneLogin_Saml2_ValidationError.WRONG_INRESPONSETO: "in_response_to",
    OneLogin_Saml2_ValidationError.ASSERTION_EXPIRED: "clock_skew",
    OneLogin_Saml2_ValidationError.ASSERTION_TOO_EARLY: "clock_skew",
    OneLogin_Saml2_ValidationError.SESSION_EXPIRED: "clock_skew",
    OneLogin_Saml2_ValidationError.INVALID_SIGNATURE: "signature",
    OneLogin_Saml2_ValidationError.NO_SIGNED_ASSERTION: "unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNATURE_FOUND: "unsigned",
    OneLogin_Saml2_ValidationError.DEPRECATED_SIGNATURE_METHOD: "algorithm",
    OneLogin_Saml2_ValidationError.DEPRECATED_DIGEST_METHOD: "algorithm",
    OneLogin_Saml2_ValidationError.WRONG_SUBJECTCONFIRMATION: "recipient",
    OneLogin_Saml2_ValidationError.STATUS_CODE_IS_NOT_SUCCESS: "status",
}


def _library_check(conn, base_url, ws, meta, certs, raw: bytes, expected_request_id, asrt_signed: bool,
                   resp_signed: bool) -> None:
    settings = _settings(conn, base_url, ws, meta, certs, want_assertions_signed=asrt_signed,
                         want_messages_signed=resp_signed and not asrt_signed)
    parts = urlsplit(acs_url(conn, base_url, ws))
    request_data = {"https": "on" if parts.scheme == "https" else "off", "http_host": parts.netloc,
                    "script_name": parts.path, "get_data": {}, "post_data": {}}
    try:
        resp = OneLogin_Saml2_Response(settings, base64.b64encode(raw).decode())
        resp.is_valid(request_data, request_id=expected_request_id, raise_exceptions=True)
    except OneLogin_Saml2_ValidationError as e:
        raise _fail(_LIB_CHECKS.get(e.code, "library"), f"python3-saml: {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever else the library raises, fail closed with our error
        raise _fail("library", f"python3-saml: {type(e).__name__}") from None
