"""The event catalog (idp/eventcatalog.py) names every audit event type the source records, and docs/events.md is
generated from it. The source is scanned (its syntax tree): a new ``audit.record("x.y", …)`` anywhere without a
catalog entry fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from idp import eventcatalog
from idp.eventcatalog import CATALOG, FAILURE, describe, failed_factor_types, outcome_of, readable_details
from idp.lifecycle import EVENT_PREFIX

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("idp", "saml", "oidc", "scim", "policies", "federation", "admin")
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
# the functions that record an event, given its type: AuditLog.record, Hub._event, the services' audit helpers,
# Hub.mfa_changed (the type is its 4th argument), AuditLog._append_sealed (the chain's own records: prune, keying),
# and (type, data) pairs collected for a later record
RECORDERS = {"record", "audit", "_event", "mfa_changed", "_append_sealed"}


def _strings(node, assigned: dict[str, set[str]]) -> set[str]:
    """Every string an expression can evaluate to: constants, both branches of ``a if c else b``,
    ``"x." + ...``, and a local variable's assigned constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body, assigned) | _strings(node.orelse, assigned)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return {a + b for a in _strings(node.left, assigned) for b in _strings(node.right, assigned)}
    if isinstance(node, ast.Name):
        return assigned.get(node.id, set())
    return set()


def _assignments(func) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out.setdefault(target.id, set()).update(_strings(node.value, {}))
    return out


def scan(source: str, where: str = "") -> tuple[dict[str, str], dict[str, str]]:
    """(event types recorded, account-change verbs given to ``accounts.record``) in ``source``, each with where."""
    types: dict[str, str] = {}
    verbs: dict[str, str] = {}
    tree = ast.parse(source)
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] or [tree]
    for scope in scopes:
        assigned = _assignments(scope)
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            at = f"{where}:{node.lineno}"
            if name in RECORDERS:
                for arg in node.args:
                    for s in _strings(arg, assigned):
                        if TYPE_RE.match(s):
                            types.setdefault(s, at)
            if name == "append":
                for arg in node.args:
                    if isinstance(arg, ast.Tuple) and arg.elts:
                        for s in _strings(arg.elts[0], assigned):
                            if TYPE_RE.match(s):
                                types.setdefault(s, at)
            # hub.accounts.record(actor, ws_id, VERB, user_id, ...): the type is <channel prefix>.<verb>
            if (name == "record" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
                    and func.value.attr == "accounts" and len(node.args) >= 3):
                for s in _strings(node.args[2], assigned):
                    verbs.setdefault(s, at)
    return types, verbs


def scan_source() -> tuple[dict[str, str], dict[str, str]]:
    types: dict[str, str] = {}
    verbs: dict[str, str] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "migrations" in path.parts or path.name == "eventcatalog.py":
                continue
            t, v = scan(path.read_text(), str(path.relative_to(ROOT)))
            for k, at in t.items():
                types.setdefault(k, at)
            for k, at in v.items():
                verbs.setdefault(k, at)
    return types, verbs


def test_every_recorded_event_type_is_in_the_catalog():
    types, verbs = scan_source()
    # the scan sees the ways events are recorded (a scan that finds nothing would pass vacuously)
    for known in ("auth.signin.failure", "auth.mfa.failure", "policy.decision", "oidc.token.issued",
                  "saml.sso", "admin.scim_token.revoked", "federation.user.created", "mfa.totp.enabled",
                  "saml.metadata.refresh_failed", "admin.group.member_removed"):
        assert known in types, known
    assert {"created", "deactivated", "mfa_reset", "invited"} <= set(verbs)
    missing = {t: at for t, at in types.items() if t not in CATALOG}
    assert not missing, f"event types recorded but not in idp/eventcatalog.py: {missing}"
    missing_verbs = {v: at for v, at in verbs.items() if v not in eventcatalog.ACCOUNT_VERBS}
    assert not missing_verbs, f"account-change verbs not in ACCOUNT_VERBS: {missing_verbs}"
    assert set(EVENT_PREFIX.values()) == set(eventcatalog.ACCOUNT_CHANNELS)


def test_the_catalog_names_no_type_that_is_never_recorded():
    types, verbs = scan_source()
    account = {f"{p}.{v}" for p in eventcatalog.ACCOUNT_CHANNELS for v in eventcatalog.ACCOUNT_VERBS}
    stale = sorted(t for t in CATALOG if t not in types and t not in account)
    assert not stale, f"in the catalog but recorded nowhere: {stale}"


def test_the_scan_catches_a_new_event_type():
    src = '''
def f(self, hub, ok):
    hub.audit.record("widget.frobbed", workspace_id=None)
    self.audit(p, ws.id, "admin.widget.added" if ok else "admin.widget.removed")
    verb = "archived"
    hub.accounts.record(actor, ws_id, verb, user_id)
    events.append(("saml.widget.failed", {}))
'''
    types, verbs = scan(src)
    assert set(types) == {"widget.frobbed", "admin.widget.added", "admin.widget.removed", "saml.widget.failed"}
    assert set(verbs) == {"archived"}
    assert "widget.frobbed" not in CATALOG


def test_docs_events_md_is_generated_from_the_catalog():
    doc = (ROOT / "docs" / "events.md").read_text()
    assert doc == eventcatalog.render_markdown(), "run: python -m idp.eventcatalog > docs/events.md"
    for t, ev in CATALOG.items():
        if not any(t == f"{p}.{v}" for p in eventcatalog.ACCOUNT_CHANNELS for v in eventcatalog.ACCOUNT_VERBS):
            assert f"`{t}`" in doc and ev.description in doc, t
    for column in eventcatalog.EXPORT_COLUMNS:
        assert f"| `{column}` |" in doc


def test_outcomes_descriptions_and_failed_factors():
    assert describe("auth.signin.success") == "Signed in"
    assert describe("admin.scim_token.revoked") == "SCIM token revoked"
    assert describe("scim.user.deactivated") == "Account deactivated by SCIM provisioning"
    assert outcome_of("auth.mfa.failure", {"method": "totp"}) == FAILURE
    assert outcome_of("policy.decision", {"effect": "deny"}) == "denied"
    assert outcome_of("policy.decision", {"effect": "allow"}) == "success"
    assert outcome_of("saml.slo.backchannel", {"success": False}) == FAILURE
    assert outcome_of("something.unknown.failed", {}) == FAILURE and describe("x.y") == "x.y"
    failed = failed_factor_types()
    assert {"auth.signin.failure", "auth.mfa.failure", "auth.reauth.failure"} <= set(failed)
    assert "auth.signin.success" not in failed and "password.change.failed" not in failed


def test_readable_details_hide_secrets_and_flatten():
    pairs = readable_details({"method": "totp", "code": "[redacted]", "via": "console", "changed": ["a", "b"],
                              "test": False, "none": None})
    assert pairs == [("method", "totp"), ("changed", "a, b"), ("test", "no")]
