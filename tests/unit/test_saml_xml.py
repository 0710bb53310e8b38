"""saml.xml, saml.config and saml.idp helpers: hardened parsing, our signatures and their verification."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("xmlsec")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from lxml import etree  # noqa: E402

from saml.config import SamlConfigError, check_url, parse_sp_metadata  # noqa: E402
from saml.idp import AC_MFA, AC_PASSWORD, AC_SMS, AC_TOTP, authn_context  # noqa: E402
from saml.xml import NS, XmlError, deflate, inflate, parse, sign, text_of, verify  # noqa: E402


def keypair(cn="t"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM).decode())


KEY, CERT = keypair()
OTHER_KEY, OTHER_CERT = keypair("other")


def signed_doc(key=KEY, cert=CERT):
    root = etree.fromstring(b'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
                            b'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r1" Version="2.0">'
                            b'<saml:Issuer>sp</saml:Issuer></samlp:AuthnRequest>')
    sign(root, key, cert, after=root[0])
    return root


# ---- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", [
    b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
    b'<?xml version="1.0"?>\n<!doctype a><a/>',
    b'<!DOCTYPE a SYSTEM "http://evil.test/x.dtd"><a/>',
])
def test_doctypes_are_refused(doc):
    with pytest.raises(XmlError, match="DTD"):
        parse(doc)


def test_doctype_hidden_in_utf16_is_refused():
    with pytest.raises(XmlError):
        parse('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'.encode("utf-16"))


def test_size_and_depth_bounds():
    with pytest.raises(XmlError, match="too large"):
        parse(b"<a>" + b"x" * 70000 + b"</a>")
    with pytest.raises(XmlError, match="too deep"):
        parse(b"<a>" * 65 + b"</a>" * 65)
    assert parse(b"<a>" * 60 + b"</a>" * 60).tag == "a"


def test_inflate_is_bounded():
    assert inflate(deflate(b"<a/>")) == b"<a/>"
    with pytest.raises(XmlError, match="too large"):
        inflate(deflate(b" " * 1_000_000))
    with pytest.raises(XmlError):
        inflate(b"\xff\x00garbage")


def test_text_of_refuses_comments_inside():
    el = parse(b"<a>admin@acme.test<!---->.evil.test</a>")
    with pytest.raises(XmlError):
        text_of(el)
    assert text_of(parse(b"<a> x </a>")) == "x"


# ---- signatures ------------------------------------------------------------------------------------
def test_our_signature_verifies_and_uses_strong_algorithms():
    root = signed_doc()
    sig = root.find("ds:Signature", NS)
    assert root.index(sig) == 1  # right after the Issuer
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith("rsa-sha256")
    assert sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm").endswith("xml-exc-c14n#")
    assert sig.find("ds:SignedInfo/ds:Reference/ds:DigestMethod", NS).get("Algorithm").endswith("#sha256")
    assert verify(parse(etree.tostring(root)), CERT)


def test_verify_uses_the_registered_certificate_not_keyinfo():
    root = parse(etree.tostring(signed_doc(OTHER_KEY, OTHER_CERT)))  # KeyInfo carries OTHER_CERT
    assert not verify(root, CERT)


def test_verify_refuses_tampering_and_missing_signatures():
    root = signed_doc()
    root.find("saml:Issuer", NS).text = "evil"
    assert not verify(parse(etree.tostring(root)), CERT)
    bare = signed_doc()
    bare.remove(bare.find("ds:Signature", NS))
    assert not verify(parse(etree.tostring(bare)), CERT)


def test_parsed_keys_are_kept_per_key_and_shared_safely_by_threads():
    """The per-process key caches (saml.xml, saml.keys) never mix two keys up, and one parsed key signs
    correctly from many threads at once (xmlsec gives each SignatureContext its own reference)."""
    import threading

    from cryptography.hazmat.primitives.asymmetric import padding

    from saml.keys import private_key, verify_redirect_signature
    from saml.xml import RSA_SHA256

    def received(key=KEY, cert=CERT):  # as a peer gets it: serialised and parsed again
        return parse(etree.tostring(signed_doc(key, cert)))

    for _ in range(2):  # the second round comes from the caches
        assert verify(received(), CERT) and not verify(received(), OTHER_CERT)
        assert verify(received(OTHER_KEY, OTHER_CERT), OTHER_CERT)
        assert not verify(received(OTHER_KEY, OTHER_CERT), CERT)
        sig = private_key(KEY).sign(b"SAMLRequest=x", padding.PKCS1v15(), hashes.SHA256())
        assert verify_redirect_signature(CERT, b"SAMLRequest=x", RSA_SHA256, sig)
        assert not verify_redirect_signature(OTHER_CERT, b"SAMLRequest=x", RSA_SHA256, sig)
        assert not verify_redirect_signature(CERT, b"SAMLRequest=y", RSA_SHA256, sig)
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append(verify(received(), CERT))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and all(results)


def test_verify_refuses_a_wrapped_signature():
    """XSW: the signature still references a (copied) original element elsewhere in the document."""
    original = signed_doc()
    evil = copy.deepcopy(original)
    evil.set("ID", "_evil")
    evil.find("saml:Issuer", NS).text = "evil"
    evil.remove(evil.find("ds:Signature", NS))
    ext = etree.SubElement(evil, "{urn:oasis:names:tc:SAML:2.0:protocol}Extensions")
    ext.append(original)
    assert not verify(parse(etree.tostring(evil)), CERT)
    # the same ID twice
    dup = signed_doc()
    etree.SubElement(dup, "{urn:x}x").set("ID", "_r1")
    assert not verify(parse(etree.tostring(dup)), CERT)


def test_verify_refuses_sha1():
    root = signed_doc()
    sm = root.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS)
    sm.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    assert not verify(parse(etree.tostring(root)), CERT)


# ---- metadata and config -------------------------------------------------------------------------------
SP_META = """<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://sp.test/m">
<md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol" AuthnRequestsSigned="false"
 WantAssertionsSigned="true">
<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
 Location="https://sp.test/art" index="0"/>
<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{acs}" index="1"
 isDefault="true"/>
</md:SPSSODescriptor></md:EntityDescriptor>"""


def test_sp_metadata_keeps_only_post_acs():
    out = parse_sp_metadata(SP_META.format(acs="https://sp.test/acs"))
    assert out["entity_id"] == "https://sp.test/m"
    assert out["acs"] == [{"url": "https://sp.test/acs", "index": 1, "default": True}]
    assert out["want_assertions_signed"] and not out["authn_requests_signed"] and out["certificate"] is None


@pytest.mark.parametrize("acs", ["javascript:alert(1)", "https://sp.test/acs; script-src *",
                                 "https://user:pw@sp.test/acs", "https://sp.test/a'b", "/relative"])
def test_unusable_acs_urls_are_refused(acs):
    with pytest.raises(SamlConfigError):
        parse_sp_metadata(SP_META.format(acs=acs))
    with pytest.raises(SamlConfigError):
        check_url(acs, "acs_url")


def test_metadata_with_doctype_is_refused():
    with pytest.raises(SamlConfigError, match="DTD"):
        parse_sp_metadata('<!DOCTYPE x [<!ENTITY e "e">]>' + SP_META.format(acs="https://sp.test/acs"))


def test_authn_context_reflects_methods():
    assert authn_context(["pwd"]) == AC_PASSWORD
    assert authn_context(["pwd", "totp"]) == AC_TOTP
    assert authn_context(["pwd", "sms"]) == AC_SMS
    assert authn_context(["pwd", "backup_codes"]) == AC_MFA


def test_saml_app_errors_for_the_config_validator():
    from saml.config import saml_app_errors

    good = {"slug": "p", "protocol": "saml", "metadata_xml": SP_META.format(acs="https://sp.test/acs")}
    assert saml_app_errors(good) == []
    assert saml_app_errors({**good, "nameid_format": "urn:x"})
    assert saml_app_errors({**good, "attributes": {"email": "password_hash"}})
    assert saml_app_errors({"slug": "p", "protocol": "saml", "entity_id": "https://sp.test"})  # no acs_url
    assert saml_app_errors({**good, "metadata_xml": "<x"})
    # plain http off the loopback is refused before any fetch (tests/integration/test_saml_metadata_url.py)
    assert "must be https" in saml_app_errors({"slug": "p", "protocol": "saml", "metadata_url": "http://sp.test/md"})[0]
    assert saml_app_errors({"slug": "o", "protocol": "oidc"}) == []
