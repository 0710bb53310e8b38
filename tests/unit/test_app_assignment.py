"""``apps[].assigned_groups`` in plain Python: the policy rule and the "who lost which app" computation."""

from __future__ import annotations

from idp.assignments import App, lost_access, usable
from policies.engine import DENY, NOT_ASSIGNED, PolicyContext, PolicyEngine, may_use


def ctx(**kw) -> PolicyContext:
    return PolicyContext(workspace_id="w", plan="enterprise", policies={}, client_ip="192.0.2.1", user_id="u",
                         app="wiki", **kw)


def test_may_use():
    assert may_use(None, set()) and may_use(None, {"x"})  # not assigned: everyone
    assert may_use(("eng", "ops"), {"ops"}) and not may_use(("eng",), {"sales"})
    assert not may_use((), {"eng"})  # []: nobody


def test_rule_denies_with_the_one_reason_and_fails_closed_without_the_users_groups():
    engine = PolicyEngine()
    assert engine.evaluate(ctx()).allowed  # no assignment: as before
    assert engine.evaluate(ctx(assigned_groups=("eng",), user_groups=frozenset({"eng"}))).allowed
    d = engine.evaluate(ctx(assigned_groups=("eng",), user_groups=frozenset({"sales"})))
    assert (d.effect, d.rule, d.reason) == (DENY, "app_assignment", NOT_ASSIGNED)
    d = engine.evaluate(ctx(assigned_groups=("eng",), user_groups=None))  # groups not read: denied
    assert d.effect == DENY and d.rule == "app_assignment"


def test_lost_access_names_only_what_was_lost_by_users_still_there():
    wiki, crm = App("oidc", "wiki", "wiki", ("eng",)), App("saml", "https://crm", "crm", None)
    before = usable([wiki, crm], {"a": {"eng"}, "b": set(), "gone": {"eng"}})
    after = usable([wiki, crm], {"a": set(), "b": {"eng"}})
    assert lost_access(before, after) == [("a", ("oidc", "wiki"))]
    # an app going from everyone to a group: those outside it lose it
    crm_eng = App("saml", "https://crm", "crm", ("eng",))
    assert lost_access(usable([crm], {"b": set()}), usable([crm_eng], {"b": set()})) == [("b", ("saml", "https://crm"))]
