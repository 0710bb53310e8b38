"""idp.emailverify: when idhub vouches for an address (the ``email_verified`` claim)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from idp.emailverify import MAIL, domain_claimed, is_verified, same_address, upstream


def ws(*domains):
    return SimpleNamespace(domains=list(domains))


ACME = ws("acme.test")


def test_values():
    assert MAIL == "mail"
    assert upstream("okta") == "upstream:okta"


@pytest.mark.parametrize("email, claimed", [
    ("alice@acme.test", True),
    ("Alice@ACME.test", True),           # case-folded like the account key
    ("  alice@acme.test ", True),        # trimmed
    ("alice@ａｃｍｅ.test", True),        # NFKC: fullwidth letters are the same domain
    ("ceo@another-company.example", False),
    ("alice@evil.acme.test", False),     # no subdomains
    ("alice@acme.test.evil.example", False),
    ("alice@notacme.test", False),
    ("acme.test@evil.example", False),   # the domain is what follows the last @
    ("alice", False),
    ("", False),
    (None, False),
])
def test_domain_claimed(email, claimed):
    assert domain_claimed(ACME, email) is claimed


def test_a_workspace_without_domains_claims_nothing():
    assert domain_claimed(ws(), "alice@acme.test") is False
    assert domain_claimed(SimpleNamespace(domains=None), "alice@acme.test") is False
    assert domain_claimed(None, "alice@acme.test") is False


def test_the_attack_an_admin_typed_address_is_not_verified():
    """An admin or SCIM client creates ceo@another-company.example: nobody verified it, idhub must not vouch."""
    assert is_verified("ceo@another-company.example", None, ACME) is False
    assert is_verified("ceo@another-company.example", "", ACME) is False


def test_verified_by_domain_is_computed_at_read_time():
    assert is_verified("alice@acme.test", None, ACME) is True
    # the workspace stops claiming the domain: it stops vouching for the address
    assert is_verified("alice@acme.test", None, ws("acme.example")) is False


def test_verified_by_a_recorded_fact():
    assert is_verified("ceo@another-company.example", MAIL, ACME) is True
    assert is_verified("eve@a-corp.test", upstream("a"), ACME) is True
    assert is_verified("eve@a-corp.test", upstream("a"), ws()) is True  # the fact outlives the domain claim


def test_never_for_a_missing_or_invalid_address():
    assert is_verified("", MAIL, ACME) is False
    assert is_verified(None, MAIL, ACME) is False
    assert is_verified("not an address", MAIL, ACME) is False


def test_same_address():
    assert same_address("Bob@Acme.test", "bob@acme.test")
    assert same_address(" bob@acme.test", "BOB@ACME.TEST")
    assert not same_address("bob@acme.test", "bob@acme.test.evil.example")
    assert not same_address("bob@acme.test", None)
    assert not same_address("", "")
    assert not same_address("not an address", "not an address")

# Clearing the fact when the address changes is idp.lifecycle's (tests/unit/test_lifecycle.py).
