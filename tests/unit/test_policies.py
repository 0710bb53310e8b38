import pytest

from policies.engine import (
    ALLOW,
    DENY,
    ENROLL,
    MFA,
    AccountActive,
    IpAllowlist,
    PolicyContext,
    PolicyEngine,
    SecondFactor,
)


def ctx(**kw):
    base = dict(workspace_id="w", plan="enterprise", policies={}, client_ip="198.51.100.7", user_id="u",
                methods=("pwd",))
    base.update(kw)
    return PolicyContext(**base)


def test_no_policy_allows_a_password_sign_in():
    assert PolicyEngine().evaluate(ctx()).effect == ALLOW


def test_engine_without_rules_denies():
    assert PolicyEngine(rules=[]).evaluate(ctx()).effect == DENY


def test_a_failing_rule_denies():
    class Broken:
        name = "broken"

        def evaluate(self, c):
            raise RuntimeError("bug")

    d = PolicyEngine(rules=[Broken(), AccountActive()]).evaluate(ctx())
    assert d.effect == DENY and d.rule == "broken"


def test_disabled_account_is_denied():
    d = PolicyEngine().evaluate(ctx(user_active=False))
    assert d.effect == DENY and d.rule == "account_active"


@pytest.mark.parametrize("ip,effect", [
    ("192.0.2.10", ALLOW), ("198.51.100.7", DENY), ("2001:db8::1", ALLOW), ("2001:db9::1", DENY),
    ("::ffff:192.0.2.10", ALLOW), ("garbage", DENY), ("", DENY),
])
def test_ip_allowlist(ip, effect):
    policies = {"ip_allowlist": ["192.0.2.0/24", "2001:db8::/32"]}
    assert PolicyEngine().evaluate(ctx(policies=policies, client_ip=ip)).effect == effect


def test_app_allowlist_can_only_narrow():
    policies = {"ip_allowlist": ["192.0.2.0/24"]}
    app = {"ip_allowlist": ["198.51.100.0/24"]}  # disjoint: nobody gets in, never both networks
    for ip in ("192.0.2.10", "198.51.100.7"):
        assert PolicyEngine().evaluate(ctx(policies=policies, app_policies=app, client_ip=ip)).effect == DENY


def test_enrolled_user_needs_a_second_factor_even_without_a_policy():
    d = PolicyEngine().evaluate(ctx(enrolled=("totp", "backup_codes")))
    assert d.effect == MFA and d.methods == ("totp", "backup_codes")
    assert PolicyEngine().evaluate(ctx(enrolled=("totp",), methods=("pwd", "totp"))).effect == ALLOW


def test_require_mfa_leads_to_enrolment():
    d = PolicyEngine().evaluate(ctx(policies={"require_mfa": True}))
    assert d.effect == ENROLL and d.methods == ("totp", "sms", "webauthn")
    d = PolicyEngine().evaluate(ctx(policies={"require_mfa": True, "mfa_methods": ["totp", "backup_codes"]}))
    assert d.methods == ("totp",)


def test_backup_codes_alone_are_not_an_enrolment():
    d = PolicyEngine().evaluate(ctx(policies={"require_mfa": True}, enrolled=("backup_codes",)))
    assert d.effect == ENROLL


def test_forbidden_method_does_not_count():
    policies = {"mfa_methods": ["totp", "backup_codes"]}
    # a password alone never reaches enrolment: the user first proves the factor they have, even a forbidden one
    d = PolicyEngine().evaluate(ctx(policies=policies, enrolled=("sms", "backup_codes")))
    assert d.effect == MFA and d.methods == ("sms", "backup_codes")
    # then they must replace it with an allowed one
    d = PolicyEngine().evaluate(ctx(policies=policies, enrolled=("sms",), methods=("pwd", "sms")))
    assert d.effect == ENROLL and d.methods == ("totp",)
    # a backup code (allowed) proves the user and satisfies the policy
    d = PolicyEngine().evaluate(ctx(policies=policies, enrolled=("sms", "backup_codes"),
                                    methods=("pwd", "backup_codes")))
    assert d.effect == ALLOW
    # and a code from a forbidden method does not satisfy the policy either: only allowed methods are offered
    d = PolicyEngine().evaluate(ctx(policies={"mfa_methods": ["totp"]}, enrolled=("sms", "totp")))
    assert d.effect == MFA and d.methods == ("totp",)


def test_trusted_upstream_mfa_satisfies_the_requirement():
    assert PolicyEngine().evaluate(ctx(policies={"require_mfa": True}, upstream_mfa_trusted=True)).effect == ALLOW


def test_deny_wins_over_step_up_and_is_recorded_with_its_rule():
    seen = []
    engine = PolicyEngine(record=lambda d, c: seen.append((d.effect, d.rule, c.stage)))
    d = engine.evaluate(ctx(policies={"require_mfa": True, "ip_allowlist": ["192.0.2.0/24"]}))
    assert d.effect == DENY and d.rule == "ip_allowlist"
    assert seen == [("deny", "ip_allowlist", "signin")]


def test_session_stage_records_only_denials():
    seen = []
    engine = PolicyEngine(record=lambda d, c: seen.append(d.effect))
    engine.evaluate(ctx(stage="session"))
    engine.evaluate(ctx(stage="session", policies={"ip_allowlist": ["192.0.2.0/24"]}))
    assert seen == ["deny"]


def test_rules_are_independent_objects():
    assert IpAllowlist().evaluate(ctx()) is None
    assert SecondFactor().evaluate(ctx(stage="session", policies={"require_mfa": True})) is None


def test_address_check_before_the_user_is_known_records_only_denials():
    seen = []
    engine = PolicyEngine(record=lambda d, c: seen.append(d.effect))
    engine.evaluate(ctx(user_id=None))
    engine.evaluate(ctx(user_id=None, policies={"ip_allowlist": ["192.0.2.0/24"]}))
    engine.evaluate(ctx())
    assert seen == ["deny", "allow"]


def test_allowlist_parsing_is_cached_but_lists_stay_independent():
    from policies.engine import parse_allowlist

    assert parse_allowlist(["192.0.2.0/24"]) is parse_allowlist(["192.0.2.0/24"])
    assert parse_allowlist(["198.51.100.0/24"]) != parse_allowlist(["192.0.2.0/24"])


# ---- phishing-resistant MFA (passkeys) -------------------------------------------------------------------------
def _pr(**kw):
    from policies.engine import PolicyContext

    base = dict(workspace_id="w", plan="enterprise", policies={"require_phishing_resistant_mfa": True},
                client_ip="203.0.113.5", user_id="u", methods=("pwd",))
    base.update(kw)
    return PolicyContext(**base)


def test_phishing_resistant_refuses_totp_and_leads_to_a_passkey():
    from policies.engine import MFA, PolicyEngine

    engine = PolicyEngine()
    d = engine.evaluate(_pr(enrolled=("totp", "backup_codes")))  # prove the app first: a password never enrols
    assert d.effect == MFA and d.rule == "phishing_resistant_mfa" and "totp" in d.methods
    d = engine.evaluate(_pr(methods=("pwd", "totp"), enrolled=("totp", "backup_codes")))
    assert d.effect == ENROLL and d.methods == ("webauthn",)
    d = engine.evaluate(_pr(enrolled=()))
    assert d.effect == ENROLL and d.methods == ("webauthn",)
    d = engine.evaluate(_pr(enrolled=("webauthn", "totp", "backup_codes")))
    assert d.effect == MFA and d.methods == ("webauthn", "backup_codes")
    assert engine.evaluate(_pr(methods=("pwd", "webauthn"), enrolled=("webauthn",))).allowed
    assert engine.evaluate(_pr(methods=("webauthn",), enrolled=("webauthn",))).allowed  # passwordless
    # an upstream IdP's MFA is not a passkey
    assert not engine.evaluate(_pr(methods=("upstream_mfa",), upstream_mfa_trusted=True)).allowed


def test_phishing_resistant_for_admins_and_apps():
    from policies.engine import PolicyEngine

    engine = PolicyEngine()
    admins = {"require_phishing_resistant_mfa_for_admins": True, "require_mfa_for_admins": False}
    assert engine.evaluate(_pr(policies=admins, methods=("pwd",), user_role="member")).allowed
    d = engine.evaluate(_pr(policies=admins, methods=("pwd",), user_role="admin"))
    assert d.effect == ENROLL and d.rule == "phishing_resistant_mfa"
    d = engine.evaluate(_pr(policies={}, app="crm", app_policies={"require_phishing_resistant_mfa": True}))
    assert d.effect == ENROLL and d.methods == ("webauthn",)
    assert engine.evaluate(_pr(policies={}, app="crm", app_policies={})).allowed


def test_removing_the_last_passkey_or_factor_is_refused_where_required():
    from policies.engine import removal_refused

    assert removal_refused(_pr(enrolled=("totp",))).rule == "phishing_resistant_mfa"
    assert removal_refused(_pr(enrolled=("webauthn",))) is None  # another passkey is left
    assert removal_refused(_pr(policies={"require_mfa": True}, enrolled=("backup_codes",))).rule == "second_factor"
    assert removal_refused(_pr(policies={}, enrolled=())) is None


def test_phishing_resistant_a_code_does_not_stand_in_for_an_enrolled_passkey():
    from policies.engine import MFA, PolicyEngine

    engine = PolicyEngine()
    d = engine.evaluate(_pr(methods=("pwd", "totp"), enrolled=("webauthn", "totp", "backup_codes")))
    assert d.effect == MFA and d.methods == ("webauthn", "backup_codes")
    # a backup code (the passkey is lost): add a new passkey
    d = engine.evaluate(_pr(methods=("pwd", "backup_codes"), enrolled=("webauthn", "backup_codes")))
    assert d.effect == ENROLL and d.methods == ("webauthn",)
