"""Workspaces, users and groups: look-ups and the rules for e-mail addresses. Plain Python."""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import bindparam, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, make_transient_to_detached

from idp.models import Group, GroupMember, User, Workspace

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Deliberately simple: one @, a dot in the domain, no spaces or control characters.
EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
MAX_EMAIL = 254
INVALID_EMAIL = "Enter a valid email address."
PLANS = ("free", "pro", "enterprise")
ROLES = ("member", "admin", "operator")  # operator: the hub operator (every workspace's console)
ADMIN_ROLES = ("admin", "operator")  # an operator is also an admin of their own workspace

# Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties.txt): shown as nothing.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
BLANKS = frozenset({0x2800})  # Braille pattern blank: a symbol (So) that shows nothing
# control, format, private use, surrogate, unassigned (and noncharacters), line and paragraph separators
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})
_TRIM = " \t\r\n"  # what typing or pasting leaves at the ends of an address; nothing else is trimmed


class InvalidEmail(ValueError):
    pass


def is_invisible(ch: str) -> bool:
    """True for a character that shows nothing or steers how text is shown: default-ignorable, control, format,
    private-use, surrogate or unassigned code points, line/paragraph separators and bidi controls. Spaces (Zs)
    are not in this set: callers decide about them."""
    cp = ord(ch)
    if unicodedata.category(ch) in _CONTROL_CATEGORIES or cp in BLANKS:
        return True
    if unicodedata.bidirectional(ch) in _BIDI_CONTROLS:
        return True
    return any(lo <= cp <= hi for lo, hi in DEFAULT_IGNORABLE)


def invisible_characters(value: str) -> bool:
    """True when ``value``, or its NFKC form, holds an invisible or control character (see ``is_invisible``)."""
    if value.isascii() and value.isprintable():  # U+0020–U+007E: none is invisible, and NFKC leaves them as they are
        return False
    return any(map(is_invisible, value)) or any(map(is_invisible, unicodedata.normalize("NFKC", value)))


def identifier_problem(value: str, what: str = "Identifiers") -> str | None:
    """Why ``value`` cannot identify an account (an e-mail address, a userName, …): invisible, control or bidi
    characters, or spaces, in the text as given or in its NFKC form. None when it has none."""
    if invisible_characters(value):
        return f"{what} cannot contain invisible or control characters."
    if value.isascii():  # NFKC leaves ASCII as it is; its only separator (Z*) is the space
        if " " in value:
            return f"{what} cannot contain spaces."
    elif any(unicodedata.category(c).startswith("Z") for c in value + unicodedata.normalize("NFKC", value)):
        return f"{what} cannot contain spaces."
    return None


def _dot_problem(value: str) -> str | None:
    local, _, domain = value.partition("@")
    if value.startswith("."):
        return "Email addresses cannot start with a dot."
    if value.endswith("."):
        return "Email addresses cannot end with a dot."
    if local.endswith("."):
        return "The part before the @ cannot end with a dot."
    if domain.startswith("."):
        return "The part after the @ cannot start with a dot."
    if ".." in value:
        return "Email addresses cannot contain two dots in a row."
    return None


def parse_email(email: str) -> tuple[str, str]:
    """(the address for display and mail, its unique key): trimmed of ordinary whitespace, NFKC; the key also
    case-folded. Raises InvalidEmail with a specific message (invisible or control characters, spaces, stray
    dots), the raw text and its NFKC form both checked."""
    if not isinstance(email, str):
        raise InvalidEmail(INVALID_EMAIL)
    raw = email.strip(_TRIM)
    if len(raw) > 4 * MAX_EMAIL:  # bounds the normalisation work; NFKC never makes a valid address of it
        raise InvalidEmail(INVALID_EMAIL)
    problem = identifier_problem(raw, "Email addresses")
    if problem:
        raise InvalidEmail(problem)
    value = unicodedata.normalize("NFKC", raw)
    problem = _dot_problem(value) if value.count("@") == 1 else None
    if problem:
        raise InvalidEmail(problem)
    key = value.casefold()
    if len(value) > MAX_EMAIL or len(key) > MAX_EMAIL or not EMAIL_RE.match(value):
        raise InvalidEmail(INVALID_EMAIL)
    return value, key


def normalise_email(email: str) -> str:
    """NFKC, trimmed, case-folded: the key that makes an address unique in a workspace."""
    return parse_email(email)[1]


def clean_email(email: str) -> str:
    """The address as typed, NFKC-normalised and trimmed (for display and for sending mail)."""
    return parse_email(email)[0]


INVALID_IDENTIFIER = "Enter your email address or username."
MAX_USERNAME = 254


def parse_username(value: str) -> tuple[str, str]:
    """(the userName as shown, its unique key) for an identifier that need not be an e-mail address (a SCIM
    ``userName``: RFC 7643 allows any string). The rules of ``parse_email``'s family: trimmed of ordinary
    whitespace, NFKC, the key case-folded; refused (InvalidEmail, with a specific message) when empty, over
    ``MAX_USERNAME`` characters, or holding invisible, control or bidi characters or spaces — as given or in its
    NFKC form — so that no two identifiers look alike but differ. A userName with an @ is held to the rules of an
    address (``parse_email``: no stray dots either), so that ``alice@acme.test.`` cannot pose as Alice's address."""
    if not isinstance(value, str):
        raise InvalidEmail(INVALID_IDENTIFIER)
    if "@" in unicodedata.normalize("NFKC", value[:4 * MAX_USERNAME]):  # also a fullwidth or small @
        return parse_email(value)
    raw = value.strip(_TRIM)
    if not raw or len(raw) > 4 * MAX_USERNAME:
        raise InvalidEmail(INVALID_IDENTIFIER)
    problem = identifier_problem(raw, "Usernames")
    if problem:
        raise InvalidEmail(problem)
    shown = unicodedata.normalize("NFKC", raw)
    key = shown.casefold()
    if len(shown) > MAX_USERNAME or len(key) > MAX_USERNAME:
        raise InvalidEmail(f"Usernames have at most {MAX_USERNAME} characters.")
    return shown, key


def identifier_key(value: str) -> str | None:
    """The key a sign-in identifier is looked up by — an e-mail address's (``normalise_email``) or a username's
    (``parse_username``) — or None when it can be neither."""
    try:
        return normalise_email(value)
    except InvalidEmail:
        pass
    try:
        return parse_username(value)[1]
    except InvalidEmail:
        return None


def identifier_matches(columns, key):
    """The one lookup rule, for every way in (sign-in, reset, re-authentication): a user is found by their primary
    e-mail address or their username. ``columns``: ``User`` or ``User.__table__.c``; ``key``: an
    ``identifier_key`` or a bound parameter. Writes keep the two apart (``idp.lifecycle``: no username equals
    another user's address), so at most one user of a workspace matches."""
    return or_(columns.email_normalized == key, columns.username_normalized == key)


def user_by_identifier(db: Session, workspace_id: str, identifier: str) -> User | None:
    """The user an identifier typed at sign-in (or "Forgot password?") names: their e-mail address or username."""
    key = identifier_key(identifier)
    if key is None:
        return None
    return db.scalar(select(User).where(User.workspace_id == workspace_id, identifier_matches(User, key)))


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
