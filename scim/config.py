"""``scim_tokens`` of the config file → hashed, revocable bearer tokens. Plain Python.

``idp.configfile.apply`` calls ``apply_scim_tokens(db, ws, tokens)`` inside its transaction (tokens missing from the
file are revoked); ``validate_scim_tokens`` lists problems by path for ``idhub apply``'s validation pass."""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.models import Workspace, utcnow
from scim.models import ScimToken

MIN_TOKEN_LENGTH = 32
MAX_TOKEN_LENGTH = 512
TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, as an HTTP header allows
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _token_value(t: dict) -> str | None:
    if t.get("token"):
        return t["token"]
    env = t.get("token_env")
    return os.environ.get(env) if isinstance(env, str) and env else None


def validate_scim_tokens(tokens, path: str) -> list[str]:
    """Errors as ``path[i].key: message`` (empty when fine). Reads ``token_env`` variables."""
    errors: list[str] = []
    names: set[str] = set()
    for i, t in enumerate(tokens or []):
        p = f"{path}[{i}]"
        if not isinstance(t, dict):
            errors.append(f"{p}: must be a mapping")
            continue
        name = t.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append(f"{p}.name: 1-100 letters, digits, spaces, '.', '_' or '-'")
        elif name in names:
            errors.append(f"{p}.name: duplicate")
        names.add(name)
        if "read_only" in t and not isinstance(t["read_only"], bool):
            errors.append(f"{p}.read_only: must be true or false")
        if t.get("token") and t.get("token_env"):
            errors.append(f"{p}: give token or token_env, not both")
        value = _token_value(t)
        if value is None:
            errors.append(f"{p}.token_env: environment variable {t.get('token_env')!r} is not set"
                          if t.get("token_env") else f"{p}: needs token or token_env")
        elif not isinstance(value, str) or not TOKEN_RE.match(value) or len(value) > MAX_TOKEN_LENGTH:
            errors.append(f"{p}.token: visible ASCII characters only, at most {MAX_TOKEN_LENGTH}")
        elif len(value) < MIN_TOKEN_LENGTH:
            errors.append(f"{p}.token: at least {MIN_TOKEN_LENGTH} characters (use a random secret)")
    return errors


def apply_scim_tokens(db: Session, workspace: Workspace, tokens: list[dict]) -> None:
    """Make the workspace's active tokens exactly ``tokens`` (by name): new ones added, changed secrets replaced,
    missing ones revoked. Raises ``ValueError`` on invalid input (validate first to get every error)."""
    errors = validate_scim_tokens(tokens, "scim_tokens")
    if errors:
        raise ValueError("; ".join(errors))
    now = utcnow()
    existing = {t.name: t for t in db.scalars(select(ScimToken).where(ScimToken.workspace_id == workspace.id))}
    wanted = {t["name"]: t for t in tokens or []}
    for name, row in existing.items():
        if name not in wanted and row.revoked_at is None:
            row.revoked_at = now
    for name, t in wanted.items():
        hashed = hash_token(_token_value(t))
        owner = db.scalar(select(ScimToken).where(ScimToken.token_hash == hashed))
        if owner is not None and (owner.workspace_id != workspace.id or owner.name != name):
            raise ValueError(f"scim_tokens: the token of {name!r} is already used elsewhere; give each its own")
        row = existing.get(name)
        if row is None:
            db.add(ScimToken(workspace_id=workspace.id, name=name, token_hash=hashed,
                             read_only=bool(t.get("read_only", False))))
            continue
        if not same_hash(row.token_hash, hashed) or row.revoked_at is not None:
            row.created_at = now
        row.token_hash = hashed
        row.read_only = bool(t.get("read_only", False))
        row.revoked_at = None
    db.flush()
