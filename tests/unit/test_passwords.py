import time

import pytest

from idp import passwords
from idp.passwords import Hasher, check, is_common


@pytest.mark.parametrize("pw,rule", [
    ("Sh0rt!", "length"), ("alllowercase1!", "upper"), ("ALLUPPERCASE1!", "lower"), ("NoDigits-Here!", "digit"),
    ("N0Special1234", "special"), ("password", "common"), ("Password1!", "common"), ("!!Dragon2024", "common"),
    ("Qwerty123!", "common"),
])
def test_each_rule_is_enforced(pw, rule):
    assert rule in [r.key for r in check(pw)]


@pytest.mark.parametrize("pw", ["S3cure-Example!", "N3w-Harder-Pass!", "Tr0ub4dor&3x", "Ünïcödé-Pass-9"])
def test_good_passwords_pass(pw):
    assert check(pw) == []


def test_the_list_has_at_least_ten_thousand_common_passwords():
    common = passwords.common_passwords()
    assert len(common) >= 10_000
    for pw in ("123456", "iloveyou", "monkey", "letmein"):
        assert is_common(pw)


def test_password_containing_the_email_name_is_refused():
    assert "common" in [r.key for r in check("Alice.Example-99!", email="alice.example@acme.test")]


def test_maximum_length_is_bounded_and_never_truncated():
    assert [r.key for r in check("Aa1!" * 33)] == ["max"]
    h = Hasher(time_cost=1, memory_cost=1024)
    with pytest.raises(ValueError):
        h.hash("Aa1!" * 33)
    stored = h.hash("Aa1!" * 32)  # 128 characters: the limit itself works
    assert h.verify(stored, "Aa1!" * 32)
    assert not h.verify(stored, "Aa1!" * 32 + "x")


def test_hash_is_argon2id_with_owasp_parameters():
    stored = Hasher().hash("S3cure-Example!")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_unicode_is_normalised_before_hashing():
    h = Hasher(time_cost=1, memory_cost=1024)
    stored = h.hash("Caf\u00e9-Pass-123")  # é precomposed
    assert h.verify(stored, "Cafe\u0301-Pass-123")  # e + combining accent


def test_rehash_when_parameters_change():
    old = Hasher(time_cost=1, memory_cost=1024).hash("S3cure-Example!")
    new = Hasher()
    assert new.needs_rehash(old)
    assert not new.needs_rehash(new.hash("S3cure-Example!"))
    assert new.needs_rehash("not-a-hash")


def test_unknown_user_costs_a_real_hash():
    """verify(None, …) runs argon2 against a dummy hash (no early return that would reveal the account)."""
    h = Hasher()
    stored = h.hash("S3cure-Example!")
    t0 = time.perf_counter()
    for _ in range(3):
        h.verify(stored, "wrong")
    known = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        assert h.verify(None, "wrong") is False
    unknown = time.perf_counter() - t0
    assert unknown > known * 0.5  # same order of magnitude, not a shortcut


def test_over_long_password_is_refused_without_error():
    h = Hasher(time_cost=1, memory_cost=1024)
    assert h.verify(h.hash("S3cure-Example!"), "x" * 1_000_000) is False
