"""IDHUB_SECRET_KEY_PREVIOUS: parsing, and the key helpers every keyed value goes through (idp.crypto)."""

from __future__ import annotations

import pytest
from itsdangerous import URLSafeTimedSerializer

from config.settings import SettingsError, load_settings
from idp.crypto import KeyRing, derive_key, key_id, secret_keys, signer_keys
from idp.mfa.crypto import SecretBox

OLD, NEW, OLDER = "o" * 40, "n" * 40, "p" * 40


def settings(previous: str | None = None):
    env = {"IDHUB_SECRET_KEY": NEW}
    if previous is not None:
        env["IDHUB_SECRET_KEY_PREVIOUS"] = previous
    return load_settings(env)


def test_previous_keys_are_a_comma_separated_list_current_first():
    s = settings(f" {OLD} , {OLDER},")
    assert s.previous_secret_keys == (OLD, OLDER)
    assert secret_keys(s) == [NEW, OLD, OLDER]
    assert signer_keys(s) == [OLDER, OLD, NEW]  # itsdangerous signs with the last
    assert secret_keys(settings(f"{NEW},{OLD}")) == [NEW, OLD]  # the current key listed again is ignored
    assert secret_keys(settings()) == [NEW]


def test_a_short_previous_key_is_a_configuration_error():
    with pytest.raises(SettingsError, match="IDHUB_SECRET_KEY_PREVIOUS"):
        settings("short")


def test_a_box_reads_under_any_listed_key_and_writes_under_the_current_one():
    old_token = SecretBox(OLD, "mfa-totp").encrypt("seed")
    box = SecretBox([NEW, OLD], "mfa-totp")
    assert box.decrypt_with_index(old_token) == ("seed", 1)
    fresh = box.reseal(old_token)
    assert SecretBox(NEW, "mfa-totp").decrypt(fresh) == "seed"
    assert box.reseal(fresh) is None  # already under the current key
    with pytest.raises(ValueError):
        SecretBox(NEW, "mfa-totp").decrypt(old_token)  # the old key removed: refused
    with pytest.raises(ValueError):
        box.decrypt(SecretBox(OLDER, "mfa-totp").encrypt("seed"))  # a key nobody listed


def test_signed_values_verify_under_a_previous_key():
    old = URLSafeTimedSerializer(OLD, salt="idhub.not-me").dumps({"u": 1})
    both = URLSafeTimedSerializer(signer_keys(settings(OLD)), salt="idhub.not-me")
    assert both.loads(old) == {"u": 1}
    assert URLSafeTimedSerializer(NEW, salt="idhub.not-me").loads(both.dumps({"u": 2})) == {"u": 2}


def test_hmac_keys_list_current_previous_then_retained_and_the_pin_is_the_oldest():
    ring = KeyRing(settings(OLD))
    ring.retained = lambda: {"oidc-sid": [derive_key(OLDER, "oidc-sid")]}
    assert ring.hmac_keys("oidc-sid") == [derive_key(m, "oidc-sid") for m in (NEW, OLD, OLDER)]
    assert ring.pinned_key("oidc-sid") == derive_key(OLDER, "oidc-sid")
    assert KeyRing(settings()).pinned_key("oidc-sid") == derive_key(NEW, "oidc-sid")
    assert key_id(NEW) != key_id(OLD) and len(key_id(NEW)) == 12 and NEW[:6] not in key_id(NEW)
