"""A small upstream SAML IdP for tests: keys, metadata, and responses built with lxml and signed with xmlsec,
so an attack test can start from a valid response, change one thing and re-sign it."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"samlp": SAMLP, "saml": SAML, "ds": DS, "md": MD}
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"

ALGS = {
    "sha256": (xmlsec.Transform.RSA_SHA256, xmlsec.Transform.SHA256),
    "sha1": (xmlsec.Transform.RSA_SHA1, xmlsec.Transform.SHA1),
    "sha256-sha1digest": (xmlsec.Transform.RSA_SHA256, xmlsec.Transform.SHA1),
}


@lru_cache(maxsize=16)
def keypair(cn: str, days: int = 365) -> tuple[bytes, str]:
    """(private key PEM, self-signed certificate PEM) for a test IdP, cached per name."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_b64(cert_pem: str) -> str:
    return "".join(line for line in cert_pem.strip().splitlines() if not line.startswith("-----"))


def metadata(entity_id: str, cert_pems: list[str], sso_url: str, slo_url: str = "") -> str:
    root = etree.Element(f"{{{MD}}}EntityDescriptor", nsmap={"md": MD, "ds": DS}, entityID=entity_id)
    idp = etree.SubElement(root, f"{{{MD}}}IDPSSODescriptor",
                           protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol")
    for pem in cert_pems:
        kd = etree.SubElement(idp, f"{{{MD}}}KeyDescriptor", use="signing")
        ki = etree.SubElement(kd, f"{{{DS}}}KeyInfo")
        etree.SubElement(etree.SubElement(ki, f"{{{DS}}}X509Data"), f"{{{DS}}}X509Certificate").text = cert_b64(pem)
    if slo_url:
        etree.SubElement(idp, f"{{{MD}}}SingleLogoutService",
                         Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect", Location=slo_url)
    etree.SubElement(idp, f"{{{MD}}}NameIDFormat").text = PERSISTENT
    etree.SubElement(idp, f"{{{MD}}}SingleSignOnService",
                     Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect", Location=sso_url)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


def _t(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def response(*, issuer: str, acs: str, audience: str, in_response_to: str | None, nameid: str = "00u1ada",
             attributes: dict | None = None, now: datetime | None = None, lifetime: int = 300,
             destination: str | None = None, recipient: str | None = None, audiences: list | None = None,
             authn_context: str = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
             session_index: str = "_sess1") -> etree._Element:
    """A valid, unsigned Response with one Assertion (ID attributes set, Issuer first, as the schema wants)."""
    now = now or datetime.now(UTC)
    rid, aid = "_r" + uuid.uuid4().hex, "_a" + uuid.uuid4().hex
    resp = etree.Element(f"{{{SAMLP}}}Response", nsmap={"samlp": SAMLP, "saml": SAML}, ID=rid, Version="2.0",
                         IssueInstant=_t(now), Destination=destination if destination is not None else acs)
    if in_response_to:
        resp.set("InResponseTo", in_response_to)
    etree.SubElement(resp, f"{{{SAML}}}Issuer").text = issuer
    st = etree.SubElement(resp, f"{{{SAMLP}}}Status")
    etree.SubElement(st, f"{{{SAMLP}}}StatusCode", Value="urn:oasis:names:tc:SAML:2.0:status:Success")
    a = etree.SubElement(resp, f"{{{SAML}}}Assertion", ID=aid, Version="2.0", IssueInstant=_t(now))
    etree.SubElement(a, f"{{{SAML}}}Issuer").text = issuer
    subj = etree.SubElement(a, f"{{{SAML}}}Subject")
    etree.SubElement(subj, f"{{{SAML}}}NameID", Format=PERSISTENT).text = nameid
    sc = etree.SubElement(subj, f"{{{SAML}}}SubjectConfirmation", Method="urn:oasis:names:tc:SAML:2.0:cm:bearer")
    scd = etree.SubElement(sc, f"{{{SAML}}}SubjectConfirmationData", NotOnOrAfter=_t(now + timedelta(seconds=lifetime)),
                           Recipient=recipient if recipient is not None else acs)
    if in_response_to:
        scd.set("InResponseTo", in_response_to)
    cond = etree.SubElement(a, f"{{{SAML}}}Conditions", NotBefore=_t(now - timedelta(seconds=5)),
                            NotOnOrAfter=_t(now + timedelta(seconds=lifetime)))
    for group in (audiences if audiences is not None else [[audience]]):
        ar = etree.SubElement(cond, f"{{{SAML}}}AudienceRestriction")
        for aud in group:
            etree.SubElement(ar, f"{{{SAML}}}Audience").text = aud
    st = etree.SubElement(a, f"{{{SAML}}}AuthnStatement", AuthnInstant=_t(now), SessionIndex=session_index)
    ctx = etree.SubElement(st, f"{{{SAML}}}AuthnContext")
    etree.SubElement(ctx, f"{{{SAML}}}AuthnContextClassRef").text = authn_context
    if attributes:
        ast = etree.SubElement(a, f"{{{SAML}}}AttributeStatement")
        for name, values in attributes.items():
            at = etree.SubElement(ast, f"{{{SAML}}}Attribute", Name=name)
            for v in values if isinstance(values, list) else [values]:
                etree.SubElement(at, f"{{{SAML}}}AttributeValue").text = v
    return resp


def assertion_of(resp) -> etree._Element:
    return resp.find("saml:Assertion", NS)


def sign(el, key_pem: bytes, cert_pem: str, alg: str = "sha256", keyinfo_cert: str | None = None,
         keyinfo: bool = True) -> etree._Element:
    """Enveloped signature of ``el`` placed after its Issuer (replacing an existing one)."""
    for old in el.findall("ds:Signature", NS):
        el.remove(old)
    sig_alg, digest_alg = ALGS[alg]
    sig = xmlsec.template.create(el, xmlsec.Transform.EXCL_C14N, sig_alg, ns="ds")
    issuer = el.find("saml:Issuer", NS)
    if issuer is not None:
        issuer.addnext(sig)
    else:
        el.insert(0, sig)
    ref = xmlsec.template.add_reference(sig, digest_alg, uri="#" + el.get("ID"))
    xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    if keyinfo:
        ki = xmlsec.template.ensure_key_info(sig)
        xmlsec.template.x509_data_add_certificate(xmlsec.template.add_x509_data(ki))
    ctx = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    key.load_cert_from_memory((keyinfo_cert or cert_pem).encode(), xmlsec.KeyFormat.CERT_PEM)
    ctx.key = key
    ctx.register_id(el, "ID")
    ctx.sign(sig)
    return sig


def encode(el_or_bytes) -> str:
    data = el_or_bytes if isinstance(el_or_bytes, bytes) else etree.tostring(el_or_bytes)
    return base64.b64encode(data).decode()
