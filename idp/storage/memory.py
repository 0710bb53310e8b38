"""Embedded stores: dicts behind a lock, expiry checked on read. For tests and single-process demos."""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from idp.storage.base import Backoff, SessionData, ThrottleState

TOUCH_WRITE_INTERVAL = 60  # seconds; how stale last_active_at may get before a database write


def check_ttl(ttl: int) -> int:
    """TTLs are whole seconds, at least one."""
    if int(ttl) != ttl or ttl < 1:
        raise ValueError("ttl must be a whole number of seconds >= 1")
    return int(ttl)


def as_utc(dt: datetime) -> datetime:
    """A timezone-aware UTC datetime (naive values are taken to be UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def window_start(now: datetime, window: int) -> int:
    """Epoch second at which the fixed window holding ``now`` started."""
    epoch = int(as_utc(now).timestamp())
    return epoch - epoch % window


def _json_copy(data: dict) -> dict:
    """A JSON round trip, so the embedded store accepts and returns exactly what the others do."""
    return json.loads(json.dumps(data))


class MemorySessionStore:
    """Sessions in a dict; returns copies so callers cannot mutate the stored state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, SessionData] = {}

    def create(self, data: SessionData) -> None:
        stored = copy.deepcopy(data)
        if stored.auth_time is None:
            stored = replace(stored, auth_time=stored.created_at)
        with self._lock:
            self._data[data.id] = stored

    def get(self, session_id: str) -> SessionData | None:
        with self._lock:
            found = self._data.get(session_id)
            return copy.deepcopy(found) if found else None

    def touch(self, session_id: str, now: datetime) -> None:
        now = as_utc(now)
        with self._lock:
            found = self._data.get(session_id)
            if found is not None and found.is_active(now) and now > found.last_active_at:
                found.last_active_at = now

    def revoke(self, session_id: str, reason: str) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            found = self._data.get(session_id)
            if found is None or found.revoked_at is not None:
                return False
            was_active = found.is_active(now)
            found.revoked_at, found.revoked_reason = now, reason
            return was_active

    def revoke_user(self, user_id: str, reason: str, except_id: str | None = None) -> list[str]:
        now = datetime.now(UTC)
        ended = []
        with self._lock:
            for s in self._data.values():
                if s.user_id != user_id or s.id == except_id or s.revoked_at is not None:
                    continue
                if s.is_active(now):
                    ended.append(s.id)
                s.revoked_at, s.revoked_reason = now, reason
        return ended

    def list_user(self, user_id: str, now: datetime | None = None) -> list[SessionData]:
        now = as_utc(now or datetime.now(UTC))
        with self._lock:
            found = [copy.deepcopy(s) for s in self._data.values() if s.user_id == user_id and s.is_active(now)]
        return sorted(found, key=lambda s: (s.last_active_at, s.created_at, s.id), reverse=True)

    def get_public(self, user_id: str, public_id: str) -> SessionData | None:
        with self._lock:
            for s in self._data.values():
                if s.public_id == public_id and s.user_id == user_id:
                    return copy.deepcopy(s)
        return None

    def get_by_token(self, token_hash: str) -> SessionData | None:
        with self._lock:
            for s in self._data.values():
                if s.token_hash == token_hash:
                    return copy.deepcopy(s)
        return None

    def upgrade(self, session_id: str, amr: list[str], auth_time: datetime, token_hash: str) -> SessionData | None:
        with self._lock:
            found = self._data.get(session_id)
            if found is None or not found.is_active(datetime.now(UTC)):
                return None
            found.amr, found.auth_time, found.token_hash = list(amr), as_utc(auth_time), token_hash
            return copy.deepcopy(found)


class MemoryOneTimeStore:
    """One-time values with monotonic-clock expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[str, float]] = {}

    def _live(self, key: str, now: float) -> str | None:
        found = self._data.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._data[key]
            return None
        return found[0]

    def put(self, key: str, value: str, ttl: int) -> None:
        ttl = check_ttl(ttl)
        with self._lock:
            self._data[key] = (value, time.monotonic() + ttl)

    def add(self, key: str, value: str, ttl: int) -> bool:
        ttl = check_ttl(ttl)
        now = time.monotonic()
        with self._lock:
            if self._live(key, now) is not None:
                return False
            self._data[key] = (value, now + ttl)
            return True

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key, time.monotonic())

    def consume(self, key: str) -> str | None:
        with self._lock:
            value = self._live(key, time.monotonic())
            self._data.pop(key, None)
            return value

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


class MemoryThrottleStore:
    """Failure counters with growing delays, and fixed-window hit counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> (failures, blocked_until, forget_at = last failure + backoff.window)
        self._fail: dict[str, tuple[int, datetime | None, datetime]] = {}
        # key -> (window_start, hits)
        self._hits: dict[str, tuple[int, int]] = {}

    def state(self, key: str, now: datetime) -> ThrottleState:
        now = as_utc(now)
        with self._lock:
            found = self._fail.get(key)
        if found is None:
            return ThrottleState(0, None)
        failures, blocked_until, forget_at = found
        if now >= forget_at:
            return ThrottleState(0, None)
        return ThrottleState(failures, blocked_until)

    def states(self, keys: list[str], now: datetime) -> list[ThrottleState]:
        return [self.state(k, now) for k in keys]

    def record_failure(self, key: str, now: datetime, backoff: Backoff) -> ThrottleState:
        now = as_utc(now)
        with self._lock:
            found = self._fail.get(key)
            failures = found[0] + 1 if found is not None and now < found[2] else 1
            delay = backoff.delay(failures)
            blocked_until = now + timedelta(seconds=delay) if delay else None
            self._fail[key] = (failures, blocked_until, now + timedelta(seconds=backoff.window))
        return ThrottleState(failures, blocked_until)

    def reset(self, key: str) -> None:
        with self._lock:
            self._fail.pop(key, None)

    def hit(self, key: str, limit: int, window: int, now: datetime) -> bool:
        start = window_start(now, window)
        with self._lock:
            found = self._hits.get(key)
            hits = found[1] + 1 if found is not None and found[0] == start else 1
            self._hits[key] = (start, hits)
        return hits <= limit


class MemoryFlowStore:
    """Login flows as deep-copied dicts with monotonic-clock expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[dict, float]] = {}

    def _live(self, flow_id: str) -> dict | None:
        found = self._data.get(flow_id)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._data[flow_id]
            return None
        return found[0]

    def create(self, flow_id: str, data: dict, ttl: int) -> None:
        ttl = check_ttl(ttl)
        with self._lock:
            self._data[flow_id] = (_json_copy(data), time.monotonic() + ttl)

    def get(self, flow_id: str) -> dict | None:
        with self._lock:
            found = self._live(flow_id)
            return _json_copy(found) if found is not None else None

    def update(self, flow_id: str, data: dict, ttl: int) -> bool:
        ttl = check_ttl(ttl)
        with self._lock:
            if self._live(flow_id) is None:
                return False
            self._data[flow_id] = (_json_copy(data), time.monotonic() + ttl)
            return True

    def delete(self, flow_id: str) -> None:
        with self._lock:
            self._data.pop(flow_id, None)
