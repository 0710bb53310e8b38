"""Admin API tokens and the principal an admin request acts as. Plain Python.

A token is ``idhub_adm_`` + 256 random bits. Only ``HMAC-SHA256(key, token)`` is stored (the key is derived from
the hub's master secret, so a database dump alone cannot even confirm a guessed token); the look-up is by that
hash and the match is re-checked with a constant-time comparison. A token belongs to one workspace, or to the hub
operator (every workspace); it expires and can be revoked. The console's principal is the admin's own session.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from admin.models import AdminToken

PREFIX = "idhub_adm_"
TOKEN_RE = re.compile(r"^idhub_adm_[A-Za-z0-9_-]{43}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")
MAX_TTL = timedelta(days=400)
DEFAULT_TTL = timedelta(days=30)


@dataclass(frozen=True)
class Principal:
    """Who is acting: an API token, or a signed-in admin (``kind == "user"``) in the console."""

    kind: str  # "token" | "user"
    name: str  # token name or user e-mail: the actor in the audit log
    operator: bool
    workspace_id: str | None
    actor_id: str | None = None  # token id or user id
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    def can_access(self, workspace_id: str) -> bool:
        if self.operator:
            return True
        return self.workspace_id is not None and hmac.compare_digest(self.workspace_id, workspace_id)

    @property
    def actor_email(self) -> str:
        return self.name if self.kind == "user" else f"token:{self.name}"


@dataclass(frozen=True)
class AuthResult:
    principal: Principal | None
    reason: str  # "ok" | "missing" | "malformed" | "unknown" | "expired" | "revoked"


class TokenError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def parse_ttl(value: str | None) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` (default 30 days); at most 400 days."""
    if value in (None, ""):
        return DEFAULT_TTL
    m = re.fullmatch(r"(\d{1,6})([mhdw])", value.strip())
    if not m:
        raise TokenError("expires", "must be a duration such as 30d, 12h, 90m or 2w")
    ttl = timedelta(seconds=int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)])
    if ttl < timedelta(minutes=5) or ttl > MAX_TTL:
        raise TokenError("expires", "must be between 5 minutes and 400 days")
    return ttl


class TokenService:
    def __init__(self, sm: sessionmaker, key: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 keys: Callable[[], list[str]] | None = None):
        self.sm = sm
        self._key = key.encode()
        self.clock = clock
        # every key a stored token may have been hashed under, current first (idp.crypto.KeyRing)
        self._keys = keys or (lambda: [key])

    def hash(self, token: str) -> str:
        return hmac.new(self._key, token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def create(self, name: str, *, workspace_id: str | None, operator: bool = False,
               ttl: timedelta = DEFAULT_TTL) -> tuple[str, AdminToken]:
        """(the token, shown once; its row). An operator token has no workspace; any other needs one."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise TokenError("name", "1-100 letters, digits, spaces, '.', '_', '@' or '-'")
        if operator == (workspace_id is not None):
            raise TokenError("workspace", "a token is either for one workspace or for the hub operator")
        if ttl > MAX_TTL or ttl <= timedelta(0):
            raise TokenError("expires", "must be between 5 minutes and 400 days")
        token = PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        row = AdminToken(name=name, workspace_id=workspace_id, operator=operator, token_hash=self.hash(token),
                         created_at=now, expires_at=now + ttl)
        with self.sm() as db:
            db.add(row)
            db.commit()
        return token, row

    def authenticate(self, token: str | None) -> AuthResult:
        if not token:
            return AuthResult(None, "missing")
        if len(token) > 128 or not TOKEN_RE.match(token):
            return AuthResult(None, "malformed")
        raw = token.encode("utf-8", "surrogatepass")
        hashes = [hmac.new(k.encode(), raw, hashlib.sha256).hexdigest() for k in self._keys()]
        now = self.clock()
        with self.sm() as db:
            row = db.scalar(select(AdminToken).where(AdminToken.token_hash.in_(hashes)))
            if row is None or not any(hmac.compare_digest(row.token_hash.encode(), h.encode()) for h in hashes):
                return AuthResult(None, "unknown")
            if row.revoked_at is not None:
                return AuthResult(None, "revoked")
            if row.expires_at <= now:
                return AuthResult(None, "expired")
            if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
                db.execute(update(AdminToken).where(AdminToken.id == row.id).values(last_used_at=now))
                db.commit()
            return AuthResult(Principal("token", row.name, bool(row.operator), row.workspace_id, actor_id=row.id),
                              "ok")

    def revoke(self, token_id: str) -> bool:
        with self.sm() as db:
            res = db.execute(update(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked_at.is_(None))
                             .values(revoked_at=self.clock()))
            db.commit()
            return res.rowcount == 1

    def list(self, workspace_id: str | None = None) -> list[AdminToken]:
        with self.sm() as db:
            stmt = select(AdminToken).order_by(AdminToken.created_at)
            if workspace_id is not None:
                stmt = stmt.where(AdminToken.workspace_id == workspace_id)
            return list(db.scalars(stmt))
