"""``require_mfa_for_admins`` (default true) in the policy engine: the admin's sign-in needs a second factor, and the
console (stage ``admin``) is denied to a session without one. Validated like every other policy key."""

from __future__ import annotations

import pytest

from idp.configfile import ConfigError, validate
from policies.engine import ALLOW, DENY, ENROLL, MFA, PolicyContext, PolicyEngine


def ctx(**kw) -> PolicyContext:
    base = dict(workspace_id="w", plan="enterprise", policies={}, client_ip="10.1.2.3", user_id="u",
                user_role="admin")
    base.update(kw)
    return PolicyContext(**base)


@pytest.mark.parametrize("kw, effect", [
    ({}, ENROLL),                                                        # admin, no 2FA yet: set it up first
    ({"enrolled": ("totp",)}, MFA),                                      # admin with an app: asked for a code
    ({"methods": ("pwd", "totp"), "enrolled": ("totp",)}, ALLOW),
    ({"policies": {"require_mfa_for_admins": False}}, ALLOW),            # the workspace turned it off
    ({"user_role": "member"}, ALLOW),                                    # members follow require_mfa only
    ({"upstream_mfa_trusted": True}, ALLOW),                             # the upstream IdP did MFA
    ({"stage": "admin", "methods": ("pwd",)}, DENY),                     # console without a second factor
    ({"stage": "admin", "methods": ("pwd", "sms")}, ALLOW),
    ({"stage": "admin", "methods": ("pwd",), "policies": {"require_mfa_for_admins": False}}, ALLOW),
    ({"stage": "session", "methods": ("pwd",)}, ALLOW),                  # not re-checked on every request
])
def test_admins_are_held_to_two_factor_authentication(kw, effect):
    assert PolicyEngine().evaluate(ctx(**kw)).effect == effect


def test_the_policy_key_is_validated_like_the_others():
    doc = {"workspaces": [{"slug": "a", "name": "A", "policies": {"require_mfa_for_admins": False}}]}
    assert validate(doc)[0]["policies"] == {"require_mfa_for_admins": False}
    doc["workspaces"][0]["policies"]["require_mfa_for_admins"] = "no"
    with pytest.raises(ConfigError) as e:
        validate(doc)
    assert e.value.errors == ["workspaces[0].policies.require_mfa_for_admins: must be true or false"]
