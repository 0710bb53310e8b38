"""Browser sessions: creation, look-up from the cookie, ending. Plain Python over a SessionStore.

The cookie carries a 256-bit random token; the store keys sessions by its SHA-256, so a leaked
database or cache does not leak usable session ids.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from idp.storage.base import SessionData, SessionStore
from idp.storage.memory import TOUCH_WRITE_INTERVAL

log = logging.getLogger("idhub.sessions")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Lifetimes:
    idle: int
    absolute: int


def effective_lifetimes(hub_idle: int, hub_max: int, policy: dict | None) -> Lifetimes:
    """A workspace's policy can only make the hub's limits stricter, never looser."""
    policy = policy or {}
    idle = min(hub_idle, int(policy.get("session_idle_timeout") or hub_idle))
    absolute = min(hub_max, int(policy.get("session_max_lifetime") or hub_max))
    return Lifetimes(idle=max(60, idle), absolute=max(60, absolute))


def active_under(data: SessionData, now: datetime, lifetimes: Lifetimes | None) -> bool:
    """Whether a session is active now: not ended, within the lifetimes it started with and within
    ``lifetimes``, the workspace's *current* ones — a stricter policy ends older sessions too, on their next
    request."""
    if not data.is_active(now):
        return False
    if lifetimes is None:
        return True
    if now >= data.created_at + timedelta(seconds=lifetimes.absolute):
        return False
    return now < data.last_active_at + timedelta(seconds=lifetimes.idle)


class SessionManager:
    def __init__(self, store: SessionStore, clock=lambda: datetime.now(UTC), lifetimes_of=None):
        self.store = store
        self.clock = clock
        # workspace id -> its current Lifetimes (read from the database), for callers that have no workspace at
        # hand (the OIDC token endpoints); None: only the lifetimes a session started with apply
        self.lifetimes_of = lifetimes_of
        # Called with (ended session ids, reason) after sessions end: downstream protocols log the apps out
        # (OIDC back-channel logout, SAML single logout). A failing listener never un-ends a session.
        self.end_listeners: list = []

    def _notify(self, ids: list[str], reason: str) -> None:
        for listener in self.end_listeners:
            try:
                listener(ids, reason)
            except Exception:  # logged; the session is ended regardless
                log.exception("session-end listener failed", extra={"reason": reason})

    def start(
        self,
        *,
        workspace_id: str,
        user_id: str,
        lifetimes: Lifetimes,
        ip: str,
        user_agent: str,
        browser: str = "",
        os: str = "",
        device: str = "",
        country: str = "",
        city: str = "",
        amr: list[str] | None = None,
    ) -> tuple[str, SessionData]:
        """A new session; returns (cookie token, data). A fresh id at every sign-in (no fixation)."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        data = SessionData(
            id=token_hash(token),
            public_id=secrets.token_urlsafe(12),
            workspace_id=workspace_id,
            user_id=user_id,
            created_at=now,
            last_active_at=now,
            expires_at=now + timedelta(seconds=lifetimes.absolute),
            idle_timeout=lifetimes.idle,
            ip=ip,
            user_agent=user_agent[:512],
            browser=browser[:100],
            os=os[:100],
            device=device[:100],
            country=country[:100],
            city=city[:100],
            amr=list(amr or []),
            auth_time=now,
        )
        self.store.create(data)
        return token, data

    def is_active(self, data: SessionData, lifetimes: Lifetimes | None = None) -> bool:
        """``active_under`` the workspace's current lifetimes (``lifetimes``, else looked up)."""
        if lifetimes is None and self.lifetimes_of is not None and data.is_active(self.clock()):
            lifetimes = self.lifetimes_of(data.workspace_id)
        return active_under(data, self.clock(), lifetimes)

    def load(self, token: str | None, workspace_id: str, lifetimes: Lifetimes | None = None) -> SessionData | None:
        """The active session behind a cookie, or None (unknown, ended, expired, other workspace). ``lifetimes``:
        the workspace's current ones (``Hub.lifetimes``), checked on every request, else looked up."""
        if not token or len(token) > 128:
            return None
        cookie = token_hash(token)
        data = self.store.get(cookie)
        if data is not None and not data.matches(cookie):
            return None  # the cookie this session had before a step-up renewed it
        if data is None:
            data = self.store.get_by_token(cookie)  # a renewed cookie
        now = self.clock()
        if data is None or data.workspace_id != workspace_id:
            return None
        if not self.is_active(data, lifetimes):
            if data.revoked_at is None:  # timed out (idle or absolute): end it, so the apps hear of it too
                self.end(data.id, "expired")
            return None
        if (now - data.last_active_at).total_seconds() >= TOUCH_WRITE_INTERVAL:  # else the write would be a no-op
            self.store.touch(data.id, now)
        return data

    def end(self, session_id: str, reason: str) -> bool:
        ended = self.store.revoke(session_id, reason)
        if ended:
            self._notify([session_id], reason)
        return ended

    def end_all(self, user_id: str, reason: str, except_id: str | None = None) -> list[str]:
        ids = self.store.revoke_user(user_id, reason, except_id=except_id)
        if ids:
            self._notify(ids, reason)
        return ids

    def upgrade(self, session_id: str, amr) -> tuple[str, SessionData] | None:
        """A step-up of a still-active session (a second factor, or the first factor again): a new cookie (the
        old one stops working: no fixation across a privilege change) for the same record — its id, its
        ``sid``, the apps that took part in it — which now carries the methods used so far and this
        authentication's time. (new cookie value, data); None when the session ended meanwhile."""
        current = self.store.get(session_id)
        if current is None or not self.is_active(current):
            return None
        methods = list(dict.fromkeys([*current.amr, *amr]))
        token = secrets.token_urlsafe(32)
        data = self.store.upgrade(session_id, methods, self.clock(), token_hash(token))
        return (token, data) if data is not None else None

    def list(self, user_id: str, lifetimes: Lifetimes | None = None) -> list[SessionData]:
        """The user's active sessions; ``lifetimes``: the workspace's current ones (else only each session's)."""
        now = self.clock()
        return [s for s in self.store.list_user(user_id, now) if active_under(s, now, lifetimes)]

    def by_public_id(self, user_id: str, public_id: str) -> SessionData | None:
        if not public_id or len(public_id) > 64:
            return None
        data = self.store.get_public(user_id, public_id)
        return data if data and self.is_active(data) else None


def new_secret_token() -> tuple[str, str]:
    """(token for the user, hash to store) for links such as password resets: 256 bits."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)
