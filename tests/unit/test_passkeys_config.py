"""The config file's passkey keys: validated by path, like every other key."""

from __future__ import annotations

import pytest

from idp.configfile import ConfigError, validate


def ws(policies: dict, apps: list | None = None) -> dict:
    return {"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise", "policies": policies,
                            "apps": apps or []}]}


def test_phishing_resistant_keys_are_accepted():
    [w] = validate(ws({"require_phishing_resistant_mfa": True, "require_phishing_resistant_mfa_for_admins": True,
                       "mfa_methods": ["webauthn", "backup_codes"]}))
    assert w["policies"]["require_phishing_resistant_mfa"] is True
    assert w["policies"]["mfa_methods"] == ["webauthn", "backup_codes"]


@pytest.mark.parametrize(("policies", "path"), [
    ({"require_phishing_resistant_mfa": "yes"}, "workspaces[0].policies.require_phishing_resistant_mfa"),
    ({"require_phishing_resistant_mfa": True, "mfa_methods": ["totp"]}, "workspaces[0].policies.mfa_methods"),
    ({"mfa_methods": ["passkey"]}, "workspaces[0].policies.mfa_methods[0]"),
])
def test_bad_values_are_named_by_path(policies, path):
    with pytest.raises(ConfigError) as exc:
        validate(ws(policies))
    assert path in str(exc.value)


def test_an_app_may_require_phishing_resistant_mfa():
    app = {"slug": "vault", "name": "Vault", "protocol": "oidc", "client_id": "vault",
           "client_secret": "v" * 40, "redirect_uris": ["https://vault.example/cb"],
           "require_phishing_resistant_mfa": "maybe"}
    with pytest.raises(ConfigError) as exc:
        validate(ws({}, [app]))
    assert "apps[0].require_phishing_resistant_mfa" in str(exc.value)
    app["require_phishing_resistant_mfa"] = True
    [w] = validate(ws({}, [app]))
    assert w["apps"][0]["require_phishing_resistant_mfa"] is True
