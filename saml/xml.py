"""Hardened parsing of untrusted XML, the SAML namespaces, and XML signatures with python-xmlsec."""

from __future__ import annotations

import base64
import binascii
import functools
import re
import zlib

import xmlsec
from lxml import etree

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xs": "http://www.w3.org/2001/XMLSchema",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"

MAX_MESSAGE = 64 * 1024  # decoded XML of an AuthnRequest or LogoutRequest
MAX_METADATA = 512 * 1024
MAX_DEPTH = 64

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SIGNATURE_ALGS = (RSA_SHA256, RSA_SHA384, RSA_SHA512)  # no SHA-1, no DSA
DIGEST_ALGS = ("http://www.w3.org/2001/04/xmlenc#sha256", "http://www.w3.org/2001/04/xmldsig-more#sha384",
               "http://www.w3.org/2001/04/xmlenc#sha512")

_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,255}$")  # an xs:ID (NCName), bounded


class XmlError(ValueError):
    """Untrusted XML that is malformed, too large, or uses a feature we refuse (DTDs, entities)."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_pis=False, collect_ids=False)


def parse(data: bytes, limit: int = MAX_MESSAGE) -> etree._Element:
    """Parse untrusted XML: bounded size and depth, no DOCTYPE at all (so no entities, no XXE, no billion laughs)."""
    if not isinstance(data, bytes) or not data:
        raise XmlError("empty message")
    if len(data) > limit:
        raise XmlError("message too large")
    # A DOCTYPE could hide in another encoding: only UTF-8 (or ASCII) documents are accepted.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise XmlError("not UTF-8") from None
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise XmlError("DTDs are not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError:
        raise XmlError("malformed XML") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlError("DTDs are not allowed")
    for el in root.iter():
        if not isinstance(el.tag, str):  # entity references left unresolved
            if isinstance(el, etree._Entity):
                raise XmlError("entities are not allowed")
    if _depth(root) > MAX_DEPTH:
        raise XmlError("document too deep")
    return root


def _depth(root) -> int:
    best = 0
    stack = [(root, 1)]
    while stack:
        el, d = stack.pop()
        best = max(best, d)
        stack.extend((c, d + 1) for c in el)
    return best


def b64decode(value: str, limit: int = MAX_MESSAGE) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 8:
        raise XmlError("message too large")
    try:
        return base64.b64decode("".join(value.split()).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise XmlError("not base64") from None


def inflate(data: bytes, limit: int = MAX_MESSAGE) -> bytes:
    """Raw DEFLATE (HTTP-Redirect binding), never more than ``limit`` bytes out (no zip bombs)."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        raise XmlError("not DEFLATE data") from None
    if len(out) > limit or d.unconsumed_tail:
        raise XmlError("message too large")
    return out


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def valid_id(value) -> bool:
    return isinstance(value, str) and bool(_ID_RE.match(value))


def text_of(el) -> str:
    """Text of an element, refusing comments or processing instructions inside it (NameID/Issuer truncation)."""
    if el is None:
        return ""
    if len(el):
        raise XmlError("unexpected content in a text element")
    return (el.text or "").strip()


def pem_body(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def cert_pem(b64: str) -> str:
    body = "".join(b64.split())
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# ---- signatures -------------------------------------------------------------------------------------
# Parsed keys are kept per process: parsing is cheap, but a freshly loaded RSA key also recomputes its Montgomery
# and blinding values at its first use (about 1.8 ms of a 2.4 ms RSA-3072 signature). A SignatureContext takes its
# own reference to the key (xmlSecKeyDuplicate), so one parsed key serves every thread.
_SIG_XPATH = etree.XPath(".//ds:Signature", namespaces=NS)
_BY_ID_XPATH = etree.XPath("//*[@ID=$i]")


@functools.lru_cache(maxsize=64)
def _signing_key(key_pem: bytes) -> xmlsec.Key:
    return xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)


@functools.lru_cache(maxsize=64)
def _certificate_text(cert: str) -> str:
    """The ``ds:X509Certificate`` content as xmlsec writes it (base64 of the DER, 64 columns, a newline on each
    side), made once per certificate: the key carries no certificate, so xmlsec does not encode it again at
    every signature (~0.2 ms of an RSA-3072 signature's 1.5 ms)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert.encode()).public_bytes(Encoding.DER)
    body = base64.b64encode(der).decode()
    return "\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + "\n"


@functools.lru_cache(maxsize=1024)
def _verifying_key(cert: str) -> xmlsec.Key:
    return xmlsec.Key.from_memory(cert.encode(), xmlsec.KeyFormat.CERT_PEM)


def sign(el: etree._Element, key_pem: bytes, cert: str, after=None, ds_prefix: str = "ds") -> None:
    """An enveloped signature of ``el`` (which has an ``ID``): exclusive c14n, RSA-SHA256, SHA-256 digest,
    inserted after ``after`` (the Issuer) as the schema requires."""
    sig = xmlsec.template.create(el, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256, ns=ds_prefix)
    if after is not None:
        after.addnext(sig)
    else:
        el.insert(0, sig)
    ref = xmlsec.template.add_reference(sig, xmlsec.Transform.SHA256, uri="#" + el.get("ID"))
    xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    ki = xmlsec.template.ensure_key_info(sig)
    x509 = xmlsec.template.add_x509_data(ki)
    xmlsec.template.x509_data_add_certificate(x509).text = _certificate_text(cert)  # filled: xmlsec leaves it
    ctx = xmlsec.SignatureContext()
    ctx.key = _signing_key(key_pem)
    ctx.register_id(el, "ID")
    ctx.sign(sig)


def verify(el: etree._Element, cert: str) -> bool:
    """Whether ``el`` carries exactly one enveloped signature, as a direct child, over ``el`` itself (by its ID),
    with allowed algorithms and transforms, made by the key of ``cert`` (KeyInfo in the message is ignored)."""
    sigs = el.findall("ds:Signature", NS)
    if len(sigs) != 1 or len(_SIG_XPATH(el)) != 1:
        return False
    sig = sigs[0]
    el_id = el.get("ID")
    refs = sig.findall("ds:SignedInfo/ds:Reference", NS)
    if not valid_id(el_id) or len(refs) != 1 or refs[0].get("URI") != "#" + el_id:
        return False
    method = sig.find("ds:SignedInfo/ds:SignatureMethod", NS)
    c14n = sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS)
    digest = refs[0].find("ds:DigestMethod", NS)
    if method is None or method.get("Algorithm") not in SIGNATURE_ALGS:
        return False
    if c14n is None or c14n.get("Algorithm") != EXC_C14N:
        return False
    if digest is None or digest.get("Algorithm") not in DIGEST_ALGS:
        return False
    transforms = [t.get("Algorithm") for t in refs[0].findall("ds:Transforms/ds:Transform", NS)]
    if not transforms or any(t not in (ENVELOPED, EXC_C14N) for t in transforms):
        return False
    if len(_BY_ID_XPATH(el.getroottree().getroot(), i=el_id)) != 1:
        return False  # duplicate IDs: a wrapping attempt
    ctx = xmlsec.SignatureContext()
    try:
        ctx.key = _verifying_key(cert)
        ctx.register_id(el, "ID")
        ctx.verify(sig)
    except xmlsec.Error:
        return False
    return True


# ---- encryption -------------------------------------------------------------------------------------
XENC = "http://www.w3.org/2001/04/xmlenc#"
AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
RSA_OAEP = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"


def encrypt_assertion(assertion: etree._Element, cert_pem_text: str) -> etree._Element:
    """Replace a (signed) ``saml:Assertion`` in its tree by an ``saml:EncryptedAssertion``: the content encrypted
    with a fresh AES-256-GCM key, that key transported with RSA-OAEP to the SP's encryption certificate."""
    saml_ns = "{urn:oasis:names:tc:SAML:2.0:assertion}"
    # Serialised on its own, the assertion carries the namespace declarations it inherits (saml:, ds:), so the
    # SP can parse it once decrypted; the exclusive-c14n signature inside is unaffected.
    plain = etree.tostring(assertion)
    wrapper = etree.Element(saml_ns + "EncryptedAssertion")
    assertion.addprevious(wrapper)
    assertion.getparent().remove(assertion)
    enc_data = xmlsec.template.encrypted_data_create(wrapper, xmlsec.Transform.AES256_GCM,
                                                     type=xmlsec.EncryptionType.ELEMENT, ns="xenc")
    xmlsec.template.encrypted_data_ensure_cipher_value(enc_data)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(enc_data, ns="ds")
    enc_key = xmlsec.template.add_encrypted_key(key_info, xmlsec.Transform.RSA_OAEP)
    xmlsec.template.encrypted_data_ensure_cipher_value(enc_key)
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_memory(cert_pem_text.encode(), xmlsec.KeyFormat.CERT_PEM))
    ctx = xmlsec.EncryptionContext(manager)
    ctx.key = xmlsec.Key.generate(xmlsec.KeyData.AES, 256, xmlsec.KeyDataType.SESSION)
    wrapper.append(enc_data)
    return ctx.encrypt_binary(enc_data, plain)
