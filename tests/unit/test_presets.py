"""Vendor shapes: the same person as Okta and Azure AD describe them, over SAML and OIDC."""

import pytest

from federation import presets
from federation.base import UpstreamError
from federation.presets import AUTHN_CONTEXT, NAMEID, map_claims

AZ = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MS = "http://schemas.microsoft.com/identity/claims/"
TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "00000000-0000-0000-66f3-3332eca7ea81"


def test_okta_saml_attributes():
    m = map_claims("okta", {NAMEID: ["00u1abcd"], "email": ["ada@acme.test"], "firstName": ["Ada"],
                            "lastName": ["Lovelace"], "groups": ["Engineering", "Admins"]})
    assert m["subject"] == "00u1abcd"
    assert (m["email"], m["given_name"], m["family_name"], m["name"]) == (
        "ada@acme.test", "Ada", "Lovelace", "Ada Lovelace")
    assert m["groups"] == ["Engineering", "Admins"]
    assert m["tenant"] == "" and m["overage"] is False and m["mfa"] is False


def test_okta_oidc_claims_and_mfa():
    m = map_claims("okta", {"sub": "00u1abcd", "email": "ada@acme.test", "name": "Ada L.", "groups": ["Eng"],
                            "amr": ["pwd", "mfa", "otp"]})
    assert m["subject"] == "00u1abcd" and m["name"] == "Ada L." and m["groups"] == ["Eng"]
    assert m["mfa"] is True and m["amr"] == ["pwd", "mfa", "otp"]


def test_okta_ignores_email_as_subject():
    with pytest.raises(UpstreamError) as e:
        map_claims("okta", {"email": "ada@acme.test"})
    assert e.value.check == "subject"


def test_azure_saml_claim_uris():
    m = map_claims("azure_ad", {
        NAMEID: ["transient-looking-value"],
        AZ + "emailaddress": ["ada@contoso.com"], AZ + "givenname": ["Ada"], AZ + "surname": ["Lovelace"],
        AZ + "name": ["ada@contoso.com"], MS + "objectidentifier": [OID], MS + "tenantid": [TID],
        "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": ["g-1", "g-2"],
        "http://schemas.microsoft.com/claims/authnmethodsreferences": [
            "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/password",
            "http://schemas.microsoft.com/claims/multipleauthn"],
    })
    assert m["subject"] == f"{TID}:{OID}"  # never the NameID, never the email
    assert m["tenant"] == TID and m["email"] == "ada@contoso.com" and m["groups"] == ["g-1", "g-2"]
    assert m["mfa"] is True and m["overage"] is False


def test_azure_oidc_claims_and_overage():
    m = map_claims("azure_ad", {"sub": "pairwise", "oid": OID, "tid": TID, "preferred_username": "ada@contoso.com",
                                "name": "Ada", "_claim_names": {"groups": "src1"},
                                "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/..."}}})
    assert m["subject"] == f"{TID}:{OID}" and m["email"] == "ada@contoso.com"
    assert m["overage"] is True and m["groups"] == []


def test_azure_saml_groups_link_is_overage():
    m = map_claims("azure_ad", {MS + "objectidentifier": [OID], MS + "tenantid": [TID],
                                "http://schemas.microsoft.com/claims/groups.link": ["https://graph.windows.net/x"]})
    assert m["overage"] is True


def test_azure_without_oid_or_tid_fails_closed():
    for claims in ({"sub": "x", "tid": TID}, {"oid": OID}, {NAMEID: ["x"], "email": "a@b.c"}):
        with pytest.raises(UpstreamError) as e:
            map_claims("azure_ad", claims)
        assert e.value.check == "subject"


def test_overrides_win_and_unknown_field_refused():
    m = map_claims("generic", {NAMEID: ["u1"], "mail": ["x@y.z"], "urn:custom:mail": ["ada@acme.test"],
                               "dept": ["R&D", "Ops"]},
                   {"urn:custom:mail": "email", "dept": "groups"})
    assert m["email"] == "ada@acme.test" and m["groups"] == ["R&D", "Ops"]
    m = map_claims("generic", {NAMEID: ["u1"], "employeeNumber": ["E42"]}, {"employeeNumber": "subject"})
    assert m["subject"] == "E42"
    with pytest.raises(UpstreamError) as e:
        map_claims("generic", {NAMEID: ["u1"]}, {"x": "is_admin"})
    assert e.value.check == "attribute_map"


def test_unknown_preset_refused():
    with pytest.raises(UpstreamError) as e:
        map_claims("ping", {"sub": "x"})
    assert e.value.check == "preset"


def test_hostile_values_are_dropped_or_bounded():
    m = map_claims("generic", {"sub": "u1", "email": {"$ne": 1}, "name": "x" * 5000, "groups": [1, None, {"a": 1},
                                                                                             True, "ok"]})
    assert m["email"] == "" and len(m["name"]) == presets.MAX_VALUE and m["groups"] == ["1", "ok"]
    assert map_claims("generic", {"sub": "u1", "email": "not-an-address"})["email"] == ""


@pytest.mark.parametrize("amr,ctx,mfa", [
    (["pwd"], [], False),
    (["pwd", "otp"], [], True),
    (["hwk"], [], False),
    (["mfa"], [], True),
    ([], ["urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"], False),
    ([], ["http://schemas.microsoft.com/claims/multipleauthn"], True),
    ([], ["urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract"], True),
])
def test_mfa_values(amr, ctx, mfa):
    assert presets.mfa_from(amr, ctx) is mfa
    assert map_claims("okta", {"sub": "s", "amr": amr, AUTHN_CONTEXT: ctx})["mfa"] is mfa


# ---- which emails count as verified (account linking, nOAuth) ------------------------------------------------------
def _ident(address, /, **claims):
    from federation.base import UpstreamIdentity

    return UpstreamIdentity(subject="s", email=address, claims=claims)


@pytest.mark.parametrize("conn,ident,verified", [
    ({"protocol": "oidc", "preset": "okta"}, _ident("ada@acme.test", email="ada@acme.test", email_verified=True), True),
    ({"protocol": "oidc", "preset": "generic"}, _ident("Ada@Acme.test", email="ada@acme.test", email_verified=True),
     True),
    ({"protocol": "oidc", "preset": "okta"}, _ident("ada@acme.test", email="ada@acme.test"), False),
    ({"protocol": "oidc", "preset": "okta"}, _ident("ada@acme.test", email="ada@acme.test", email_verified=False),
     False),
    ({"protocol": "oidc", "preset": "okta"}, _ident("ada@acme.test", email="ada@acme.test", email_verified="true"),
     False),
    ({"protocol": "oidc", "preset": "okta"}, _ident("ada@acme.test", email="ada@acme.test", email_verified=1), False),
    # the verification is about the email claim; the address came from another one (attribute_map)
    ({"protocol": "oidc", "preset": "okta"}, _ident("boss@acme.test", email="ada@acme.test", email_verified=True),
     False),
    ({"protocol": "oidc", "preset": "azure_ad"}, _ident("ada@acme.test", email="ada@acme.test", email_verified=True),
     False),
    ({"protocol": "saml", "preset": "okta"}, _ident("ada@acme.test", email=["ada@acme.test"],
                                                    email_verified=["true"]), False),
    ({"protocol": "ldap", "preset": "generic"}, _ident("ada@acme.test", mail=["ada@acme.test"]), False),
    ({"protocol": "saml", "preset": "azure_ad", "email_verified_by_idp": True}, _ident("ada@acme.test"), True),
    ({"protocol": "oidc", "preset": "azure_ad", "email_verified_by_idp": True}, _ident("ada@acme.test"), True),
    ({"protocol": "oidc", "preset": "okta", "email_verified_by_idp": True}, _ident(""), False),
])
def test_which_emails_count_as_verified(conn, ident, verified):
    from federation.service import email_verified

    assert email_verified(conn, ident) is verified


def test_email_domains_are_exact():
    from federation.service import email_in_domains

    conn = {"domains": ["acme.test"]}
    assert email_in_domains(conn, "ada@acme.test")
    for email in ("ada@sub.acme.test", "ada@acme.test.evil", "ada@evilacme.test", "ada@", ""):
        assert not email_in_domains(conn, email)
    assert not email_in_domains({"domains": []}, "ada@acme.test")


def test_unused_vendor_prefixes_are_gone():
    assert not hasattr(presets, "OKTA_ENTITY_PREFIX") and not hasattr(presets, "AZ_ISSUER_PREFIX")
