"""idp.lifecycle without Flask: who may change which attribute of which account, and what ``write`` sets."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from idp.db import Base
from idp.lifecycle import KEEP, AccountError, AccountService, Actor, check_allowed, write
from idp.models import PasswordResetToken, User, Workspace
from tests.conftest import fast_hasher

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


class Row:
    def __init__(self, role="member", id_="u1"):
        self.role, self.id = role, id_


SCIM, UPSTREAM, CONFIG = Actor.scim("okta"), Actor.upstream("okta"), Actor.config()
ADMIN = Actor("admin", "alice@acme.test", "a1", via="console")
OPERATOR = Actor("operator", "olga@acme.test", "o1")


@pytest.mark.parametrize("actor,role,fields,kind", [
    (SCIM, "admin", {"password"}, "mutability"),
    (SCIM, "admin", {"email"}, "mutability"),
    (SCIM, "member", {"role"}, "mutability"),
    (SCIM, "operator", {"password"}, "mutability"),
    (SCIM, "operator", {"active"}, "forbidden"),
    (SCIM, "operator", {"deleted"}, "forbidden"),
    (SCIM, "operator", {"profile"}, "forbidden"),
    (UPSTREAM, "member", {"role"}, "mutability"),
    (UPSTREAM, "member", {"email"}, "mutability"),
    (ADMIN, "admin", {"email"}, "forbidden"),
    (ADMIN, "admin", {"password"}, "forbidden"),
    (ADMIN, "operator", {"active"}, "forbidden"),
    (ADMIN, "operator", {"name"}, "forbidden"),
])
def test_refused(actor, role, fields, kind):
    with pytest.raises(AccountError) as exc:
        check_allowed(actor, Row(role), fields)
    assert exc.value.kind == kind


@pytest.mark.parametrize("actor,role,fields", [
    (SCIM, "admin", {"active"}),  # offboarding works
    (SCIM, "admin", {"deleted"}),
    (SCIM, "admin", {"name", "profile"}),
    (SCIM, "member", {"email", "password", "active", "deleted"}),
    (ADMIN, "member", {"email", "role", "active"}),
    (ADMIN, "admin", {"role", "active", "name"}),
    (Actor("admin", "alice@acme.test", "u1"), "admin", {"email"}),  # one's own address
    (OPERATOR, "operator", {"email", "password", "role", "active"}),
    (CONFIG, "operator", {"email", "password", "role", "active", "deleted"}),
    (Actor("self", "olga@acme.test", "u1"), "operator", {"password"}),
    (UPSTREAM, "member", {"name", "profile"}),
])
def test_allowed(actor, role, fields):
    check_allowed(actor, Row(role), fields)


def test_an_actor_names_its_channel():
    assert SCIM.label == "scim:okta" and SCIM.audit_name == "scim:okta"
    assert UPSTREAM.label == "upstream:okta" and CONFIG.label == "config"
    assert ADMIN.label == "admin:alice@acme.test" and ADMIN.audit_name == "alice@acme.test"
    with pytest.raises(ValueError):
        Actor("ldap-sync")


@pytest.fixture
def db():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with sessionmaker(engine)() as s:
        ws = Workspace(slug="acme", name="Acme")
        s.add(ws)
        s.flush()
        s.add_all([User(id="u1", workspace_id=ws.id, email="bob@acme.test", email_normalized="bob@acme.test",
                        email_verified_via="mail"),
                   User(id="u2", workspace_id=ws.id, email="Dana@acme.test", email_normalized="dana@acme.test",
                        role="admin")])
        s.add(PasswordResetToken(token_hash="h" * 64, user_id="u1", expires_at=NOW))
        s.commit()
        yield s


def _write(db, actor, user, **kw):
    return write(db, actor, user, hasher=fast_hasher(), clock=lambda: NOW, **kw)


def test_a_new_address_is_normalised_unverified_and_kills_reset_links(db):
    bob = db.get(User, "u1")
    change = _write(db, ADMIN, bob, email="  Robert@ACME.test ")
    assert (bob.email, bob.email_normalized, bob.email_verified_via) == ("Robert@ACME.test", "robert@acme.test", None)
    assert change.fields == ["email"] and change.old_email == "bob@acme.test"
    assert db.scalar(select(PasswordResetToken)) is None


def test_a_change_of_case_only_keeps_the_verification(db):
    bob = db.get(User, "u1")
    _write(db, ADMIN, bob, email="Bob@acme.test")
    assert bob.email == "Bob@acme.test" and bob.email_verified_via == "mail"


@pytest.mark.parametrize("email,kind", [("DANA@acme.test", "uniqueness"), ("bob@acme.test.", "invalid"),
                                        ("b\u200bob@acme.test", "invalid"), ("", "invalid")])
def test_bad_or_taken_addresses_change_nothing(db, email, kind):
    bob = db.get(User, "u1")
    with pytest.raises(AccountError) as exc:
        _write(db, ADMIN, bob, email=email, name="Robert")
    assert (exc.value.kind, exc.value.field) == (kind, "email")
    assert bob.email == "bob@acme.test" and bob.name == ""  # nothing set when one rule fails


def test_passwords_follow_the_rules_and_end_reset_links(db):
    bob = db.get(User, "u1")
    with pytest.raises(AccountError) as exc:
        _write(db, SCIM, bob, password="\u200b" * 4 + "Aa1!")
    assert (exc.value.kind, exc.value.field) == ("invalid", "password") and bob.password_hash is None
    change = _write(db, SCIM, bob, password="Br4nd-New-Secret!")
    assert change.password_set and fast_hasher().verify(bob.password_hash, "Br4nd-New-Secret!")
    assert bob.password_changed_at == NOW and db.scalar(select(PasswordResetToken)) is None


def test_nothing_asked_nothing_changed(db):
    dana = db.get(User, "u2")
    before = dana.updated_at
    change = _write(db, SCIM, dana, email="dana@acme.test".replace("d", "D", 1), name=KEEP, active=True)
    assert change.fields == [] and dana.updated_at == before


def test_deprovision_ends_sessions_then_writes_then_ends_stragglers():
    calls = []

    class Sessions:
        def end_all(self, user_id, reason):
            calls.append(("end", user_id, reason))
            return ["s1"] if len(calls) == 1 else []

    class Hub:
        sessions = Sessions()

    svc = AccountService(Hub())
    svc.deprovision_listeners.append(lambda ws, uid: calls.append(("grants", ws, uid)))
    done = svc.deprovision([("w1", "u1")], "deprovisioned", lambda: calls.append(("write",)) or "ok")
    assert calls == [("end", "u1", "deprovisioned"), ("grants", "w1", "u1"), ("write",),
                     ("end", "u1", "deprovisioned")]
    assert (done.sessions_ended, done.result, done.per_user) == (1, "ok", {"u1": 1})


# The columns of an account that only idp.lifecycle writes (the sign-in's rehash of the same password aside).
ACCOUNT_COLUMNS = {"password_hash", "email", "email_normalized", "role", "active", "password_changed_at",
                   "password_reset_required", "email_verified_via", "external_id", "given_name", "family_name",
                   "display_name"}
PACKAGES = ("idp", "admin", "scim", "federation", "oidc", "saml", "policies")


def test_account_state_is_written_in_one_place():
    """Deprovisioning, password setting and address changes exist once: no other module assigns an account
    column of a ``User`` (the names below are checked on every object whose name says it is a user)."""
    offenders = []
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            if path.name == "lifecycle.py" or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
                for t in targets:
                    for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                        if isinstance(el, ast.Attribute) and el.attr in ACCOUNT_COLUMNS and \
                                isinstance(el.value, ast.Name) and el.value.id in ("user", "u", "row", "existing"):
                            offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {el.value.id}.{el.attr}")
    assert offenders == []


def test_deprovisioning_ends_sessions_only_through_the_account_service():
    """``end_all`` with a deprovisioning reason is called by idp.lifecycle alone."""
    found = []
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            if path.name == "lifecycle.py":
                continue
            text = path.read_text()
            for reason in ('"deprovisioned"', '"deactivated"'):
                for line_no, line in enumerate(text.splitlines(), 1):
                    if "end_all(" in line and reason in line:
                        found.append(f"{path.relative_to(REPO)}:{line_no}")
    assert found == []


def test_insert_new_stores_what_write_set_and_the_column_defaults(db):
    """``insert_new`` (SCIM's create: one Core INSERT instead of a flush) stores the row a flush would have: what
    ``write`` set, the column defaults for the rest (also set on the object); a taken address is refused by the
    unique constraint."""
    from sqlalchemy.exc import IntegrityError

    from idp.lifecycle import insert_new

    ws_id = db.scalar(select(Workspace.id))
    user = User(workspace_id=ws_id, email="", email_normalized="")
    _write(db, SCIM, user, new=True, email="Erin@acme.test", username="erin", name="Erin",
           profile={"external_id": "x-1", "display_name": "Erin", "given_name": None, "family_name": None,
                    "scim": {"title": "CTO"}})
    insert_new(db, user)
    assert user.id and user.role == "member" and user.password_reset_required is False
    assert user not in db  # not added to the session: nothing flushes it again
    db.commit()
    stored = db.get(User, user.id)
    assert (stored.email, stored.email_normalized, stored.username, stored.username_normalized, stored.name,
            stored.role, stored.active, stored.password_reset_required, stored.external_id, stored.scim) == (
        "Erin@acme.test", "erin@acme.test", "erin", "erin", "Erin", "member", True, False, "x-1", {"title": "CTO"})
    assert stored.created_at is not None and stored.updated_at == NOW
    again = User(workspace_id=ws_id, email="", email_normalized="")
    _write(db, SCIM, again, new=True, email="erin@ACME.test")
    with pytest.raises(IntegrityError):
        insert_new(db, again)
    db.rollback()
