"""Workspaces, users and groups: look-ups and the rules for e-mail addresses. Plain Python."""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, make_transient_to_detached

from idp.models import Group, GroupMember, User, Workspace

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Deliberately simple: one @, a dot in the domain, no spaces or control characters.
EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
MAX_EMAIL = 254
PLANS = ("free", "pro", "enterprise")
ROLES = ("member", "admin", "operator")  # operator: the hub operator (every workspace's console)
ADMIN_ROLES = ("admin", "operator")  # an operator is also an admin of their own workspace


class InvalidEmail(ValueError):
    pass


def normalise_email(email: str) -> str:
    """NFKC, trimmed, case-folded: the key that makes an address unique in a workspace."""
    value = unicodedata.normalize("NFKC", email or "").strip()
    if len(value) > MAX_EMAIL or not EMAIL_RE.match(value):
        raise InvalidEmail("Enter a valid email address.")
    return value.casefold()


def clean_email(email: str) -> str:
    """The address as typed, NFKC-normalised and trimmed (for display and for sending mail)."""
    value = unicodedata.normalize("NFKC", email or "").strip()
    normalise_email(value)
    return value


def workspace_by_slug(db: Session, slug: str) -> Workspace | None:
    if not slug or not SLUG_RE.match(slug):
        return None
    return db.scalar(select(Workspace).where(Workspace.slug == slug))


_WORKSPACE_BY_SLUG = select(*Workspace.__table__.c).where(Workspace.__table__.c.slug == bindparam("slug"))


def workspace_snapshot(db: Session | Connection, slug: str) -> Workspace | None:
    """``workspace_by_slug`` for handling a request, which only reads the workspace: one prebuilt Core statement
    (no expression building or ORM loading per request: this runs at every page), the row as a *detached*
    ``Workspace`` (``make_transient_to_detached``: were it ever added to a session, it would be an UPDATE of the
    stored row, never an INSERT)."""
    if not slug or not SLUG_RE.match(slug):
        return None
    conn = db if isinstance(db, Connection) else db.connection()
    row = conn.execute(_WORKSPACE_BY_SLUG, {"slug": slug}).first()
    if row is None:
        return None
    ws = Workspace(**row._mapping)
    make_transient_to_detached(ws)
    return ws


def user_by_email(db: Session, workspace_id: str, email: str) -> User | None:
    try:
        key = normalise_email(email)
    except InvalidEmail:
        return None
    return db.scalar(select(User).where(User.workspace_id == workspace_id, User.email_normalized == key))


def user_groups(db: Session, user_id: str) -> list[str]:
    rows = db.scalars(
        select(Group.name).join(GroupMember, GroupMember.group_id == Group.id).where(GroupMember.user_id == user_id)
    )
    return sorted(rows)
