"""Small storage interfaces. Every implementation (embedded, SQL, Redis) passes tests/contract.

Rules every implementation keeps:
- a store that cannot reach its backend raises ``StoreUnavailable`` (never answers "absent");
- ``consume`` is atomic: of two concurrent consumers of one key exactly one gets the value;
- times are timezone-aware UTC datetimes; TTLs are whole seconds.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class StoreUnavailable(RuntimeError):
    """The backing database or cache cannot be reached; callers fail closed (HTTP 503)."""


@dataclass
class SessionData:
    id: str  # SHA-256 hex of the cookie value
    public_id: str  # shown in pages and forms ("End" buttons); never the cookie value
    workspace_id: str
    user_id: str
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime  # absolute lifetime
    idle_timeout: int  # seconds
    revoked_at: datetime | None = None
    revoked_reason: str | None = None
    ip: str = ""
    user_agent: str = ""
    browser: str = ""
    os: str = ""
    device: str = ""
    country: str = ""
    city: str = ""
    amr: list[str] = field(default_factory=list)
    auth_time: datetime | None = None
    # SHA-256 hex of the cookie value once the session was renewed (a step-up gives the browser a new cookie for
    # the same session record); None: the cookie's hash is ``id``
    token_hash: str | None = None

    def matches(self, cookie_hash: str) -> bool:
        """Whether this is the session of a cookie with this hash (a renewed session's old cookie is not)."""
        return hmac.compare_digest(self.token_hash or self.id, cookie_hash)

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return False
        if now >= self.expires_at:
            return False
        return now < self.last_active_at + timedelta(seconds=self.idle_timeout)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SessionData:
        d = dict(d)
        for k in ("created_at", "last_active_at", "expires_at", "revoked_at", "auth_time"):
            if d.get(k):
                d[k] = datetime.fromisoformat(d[k])
        return cls(**d)


class SessionStore(Protocol):
    def create(self, data: SessionData) -> None: ...

    def get(self, session_id: str) -> SessionData | None:
        """The session, revoked or expired ones included (callers check ``is_active``); None if unknown."""

    def touch(self, session_id: str, now: datetime) -> None:
        """Record activity. Implementations may write through to the database at most once a minute."""

    def revoke(self, session_id: str, reason: str) -> bool:
        """End one session; True if it was active. Takes effect on the session's very next request."""

    def revoke_user(self, user_id: str, reason: str, except_id: str | None = None) -> list[str]:
        """End every active session of a user but ``except_id``; returns the ids ended."""

    def list_user(self, user_id: str, now: datetime | None = None) -> list[SessionData]:
        """Active sessions of a user, most recently active first."""

    def get_public(self, user_id: str, public_id: str) -> SessionData | None:
        """A user's session by its public id (None if it belongs to someone else)."""

    def get_by_token(self, token_hash: str) -> SessionData | None:
        """The session a renewed cookie belongs to (``SessionData.token_hash``), or None."""

    def upgrade(self, session_id: str, amr: list[str], auth_time: datetime, token_hash: str) -> SessionData | None:
        """A step-up: the still-active session now carries these methods, authenticated at ``auth_time``, and its
        cookie is the one whose hash is ``token_hash`` (the old cookie no longer works); its new state (None when
        it is no longer active). Every node sees it at the session's next request."""


class OneTimeStore(Protocol):
    """One-time values: state, nonces, codes, used TOTP steps, assertion ids."""

    def put(self, key: str, value: str, ttl: int) -> None:
        """Store (or overwrite) a value that lives ``ttl`` seconds."""

    def add(self, key: str, value: str, ttl: int) -> bool:
        """Store only if absent (or expired); False if the key is taken. For replay caches."""

    def get(self, key: str) -> str | None: ...

    def consume(self, key: str) -> str | None:
        """Atomically read and delete; None if absent or expired."""

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Growing delays: ``free`` failures cost nothing, then ``base * 2**(n - free - 1)`` s, at most ``cap``.

    Failures are forgotten ``window`` seconds after the last one, so an attacker cannot lock a victim
    out for longer than ``cap``.
    """

    free: int = 5
    base: int = 1
    cap: int = 900
    window: int = 3600

    def delay(self, failures: int) -> int:
        if failures <= self.free:
            return 0
        return min(self.cap, self.base * 2 ** min(failures - self.free - 1, 30))


@dataclass(frozen=True)
class ThrottleState:
    failures: int
    blocked_until: datetime | None

    def retry_after(self, now: datetime) -> int:
        if self.blocked_until is None or self.blocked_until <= now:
            return 0
        return max(1, int((self.blocked_until - now).total_seconds() + 0.999))


class ThrottleStore(Protocol):
    def state(self, key: str, now: datetime) -> ThrottleState: ...

    def states(self, keys: list[str], now: datetime) -> list[ThrottleState]:
        """``state`` of each key, in order, in one round trip (a sign-in checks its account and its address)."""

    def record_failure(self, key: str, now: datetime, backoff: Backoff) -> ThrottleState:
        """Atomically count one failure and set ``blocked_until = now + backoff.delay(count)``."""

    def reset(self, key: str) -> None: ...

    def hit(self, key: str, limit: int, window: int, now: datetime) -> bool:
        """Count one event in a fixed window; False once more than ``limit`` happened in it."""


class FlowStore(Protocol):
    """Login flows: JSON-serialisable dicts kept server-side for a short time; the browser holds the id."""

    def create(self, flow_id: str, data: dict, ttl: int) -> None: ...

    def get(self, flow_id: str) -> dict | None: ...

    def update(self, flow_id: str, data: dict, ttl: int) -> bool:
        """Replace the data; False if the flow is gone (expired or deleted)."""

    def delete(self, flow_id: str) -> None: ...


@dataclass
class Stores:
    sessions: SessionStore
    one_time: OneTimeStore
    throttle: ThrottleStore
    flows: FlowStore
    ping: object = None  # callable() raising StoreUnavailable when a backend is down
    health: object = None  # callable() -> {"database": "ok"|"unavailable", "redis": "ok"|"degraded"}; for /readyz
