"""SQLAlchemy 2.0 stores, shared by every worker process. Atomic on SQLite (>= 3.35) and PostgreSQL.

Every read-modify-write is a single statement: ``DELETE … RETURNING`` for ``consume``, an upsert with a
conditional ``DO UPDATE`` for ``add``, failure counters and fixed windows. Connection failures become
``StoreUnavailable``; their messages never carry statement parameters (which may be secrets).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta

from sqlalchemy import JSON, BigInteger, Integer, String, Text, bindparam, case, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from idp.db import Base, read_engine
from idp.models import SessionRow, UTCDateTime
from idp.storage.base import Backoff, SessionData, StoreUnavailable, ThrottleState
from idp.storage.memory import TOUCH_WRITE_INTERVAL, as_utc, check_ttl, window_start

log = logging.getLogger(__name__)

KEY_LEN = 255
NOSYNC = {"synchronize_session": False}  # bulk statements; no ORM objects to keep in step


class OneTimeValue(Base):
    __tablename__ = "one_time_values"
    key: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Throttle(Base):
    """Failure counters. ``expires_at`` = last failure + the backoff window: after it the row counts as 0."""

    __tablename__ = "throttles"
    key: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class RateCounter(Base):
    """Fixed-window event counters (``ThrottleStore.hit``)."""

    __tablename__ = "rate_counters"
    key: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer)  # epoch seconds
    hits: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LoginFlow(Base):
    __tablename__ = "login_flows"
    id: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    data: Mapped[dict] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SessionChange(Base):
    """A session ended or renewed (step-up), in the transaction that did it: every node reads these at most
    ``SESSION_RECHECK`` seconds apart and stops trusting its cached copy, even when the node that made the change
    could not reach the cache. Rows older than a day are purged."""

    __tablename__ = "session_changes"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


SESSION_CHANGES_KEPT = timedelta(days=1)


def _key(key: str) -> str:
    """Keys longer than the column (long e-mail addresses in throttle keys) are stored hashed."""
    if len(key) <= KEY_LEN:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _store_errors() -> Iterator[None]:
    """The database cannot be reached (or its connection died) → StoreUnavailable; any other error is a defect
    and passes through as it is."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise _unavailable(exc) from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise _unavailable(exc) from None
        raise


class _SqlStore:
    """Shared plumbing: a session per call, one transaction, connection errors → StoreUnavailable."""

    def __init__(self, sessionmaker: sessionmaker) -> None:
        self._sm = sessionmaker
        self._engine = sessionmaker.kw["bind"]
        self._reader = read_engine(self._engine)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with _store_errors(), self._sm() as s, s.begin():
            yield s

    @contextmanager
    def _core(self) -> Iterator[Connection]:
        """Like ``_tx`` on a bare Core connection: the stores that only run SQL statements skip the ORM
        session's bookkeeping (a measurable share of a sign-in, which makes ~10 of these calls)."""
        with _store_errors(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """Like ``_core`` for one read (``idp.db.read_engine``: no BEGIN/ROLLBACK round trips on PostgreSQL)."""
        with _store_errors(), self._reader.connect() as conn:
            yield conn

    def _insert(self, s: Session | Connection, table):
        name = s.dialect.name if isinstance(s, Connection) else s.get_bind().dialect.name
        if name == "postgresql":
            return postgresql.insert(table)
        if name == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"no upsert for dialect {name}")


def _unavailable(exc: DBAPIError) -> StoreUnavailable:
    # The driver's first line only: SQLAlchemy's own message carries the statement and its parameters.
    detail = str(exc.orig).strip().splitlines()[0][:200] if exc.orig is not None else ""
    log.warning("database unavailable: %s: %s", type(exc.orig).__name__, detail)
    return StoreUnavailable(f"database unavailable ({type(exc.orig).__name__}: {detail})")


_SESSION_FIELDS = [f.name for f in fields(SessionData)]
_SESSION_BY_ID = select(*(SessionRow.__table__.c[name] for name in _SESSION_FIELDS)).where(
    SessionRow.__table__.c.id == bindparam("id"))
_SESSION_BY_TOKEN = select(*(SessionRow.__table__.c[name] for name in _SESSION_FIELDS)).where(
    SessionRow.__table__.c.token_hash == bindparam("t"))


_S = SessionRow.__table__.c
_SESSION_INSERT = SessionRow.__table__.insert()
_SESSION_TOUCH = update(SessionRow.__table__).where(
    _S.id == bindparam("id_"), _S.revoked_at.is_(None), _S.expires_at > bindparam("now_"),
    _S.last_active_at <= bindparam("stale"),
).values(last_active_at=bindparam("now"))


_CHANGES_SINCE = select(SessionChange.__table__.c.session_id).where(
    SessionChange.__table__.c.at >= bindparam("since"))


def _log_changes(s: Session, ids: list[str], now: datetime) -> None:
    if ids:
        s.execute(insert(SessionChange.__table__), [{"session_id": i, "at": now} for i in ids])


def _to_data(row) -> SessionData:
    """A ``SessionData`` from a ``SessionRow`` or a Core row with its columns."""
    d = {name: getattr(row, name) for name in _SESSION_FIELDS}
    d["amr"] = list(d["amr"] or [])
    return SessionData(**d)


def _is_active(last_active_at: datetime, idle_timeout: int, expires_at: datetime, now: datetime) -> bool:
    return now < expires_at and now < last_active_at + timedelta(seconds=idle_timeout)


class SqlSessionStore(_SqlStore):
    """Sessions in ``idp.models.SessionRow``: the source of truth."""

    def create(self, data: SessionData) -> None:
        values = {name: getattr(data, name) for name in _SESSION_FIELDS}
        for k, v in values.items():
            if isinstance(v, datetime):
                values[k] = as_utc(v)
        values["amr"] = list(data.amr)
        if values["auth_time"] is None:
            values["auth_time"] = values["created_at"]
        with self._core() as c:
            c.execute(_SESSION_INSERT, values)

    def get(self, session_id: str) -> SessionData | None:
        """One prebuilt Core statement: this runs at every request that carries a session cookie."""
        with self._read() as c:
            row = c.execute(_SESSION_BY_ID, {"id": session_id}).first()
        return _to_data(row) if row is not None else None

    def touch(self, session_id: str, now: datetime) -> None:
        """Write ``last_active_at`` only when the stored value is at least a minute old (one UPDATE)."""
        now = as_utc(now)
        stale = now - timedelta(seconds=TOUCH_WRITE_INTERVAL)
        with self._core() as c:
            c.execute(_SESSION_TOUCH, {"id_": session_id, "now_": now, "stale": stale, "now": now})

    def revoke(self, session_id: str, reason: str) -> bool:
        now = _now()
        with self._tx() as s:
            row = s.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason)
                .returning(SessionRow.last_active_at, SessionRow.idle_timeout, SessionRow.expires_at)
                .execution_options(**NOSYNC)
            ).first()
            if row is not None:
                _log_changes(s, [session_id], now)
        return row is not None and _is_active(row[0], row[1], row[2], now)

    def revoke_user_all(self, user_id: str, reason: str, except_id: str | None = None) -> tuple[list[str], list[str]]:
        """Revoke every unrevoked session of a user; returns (ids that were active, every id revoked)."""
        now = _now()
        cond = [SessionRow.user_id == user_id, SessionRow.revoked_at.is_(None)]
        if except_id is not None:
            cond.append(SessionRow.id != except_id)
        with self._tx() as s:
            rows = s.execute(
                update(SessionRow)
                .where(*cond)
                .values(revoked_at=now, revoked_reason=reason)
                .returning(SessionRow.id, SessionRow.last_active_at, SessionRow.idle_timeout, SessionRow.expires_at)
                .execution_options(**NOSYNC)
            ).all()
            _log_changes(s, [r[0] for r in rows], now)
        active = [r[0] for r in rows if _is_active(r[1], r[2], r[3], now)]
        return active, [r[0] for r in rows]

    def revoke_user(self, user_id: str, reason: str, except_id: str | None = None) -> list[str]:
        return self.revoke_user_all(user_id, reason, except_id)[0]

    def list_user(self, user_id: str, now: datetime | None = None) -> list[SessionData]:
        now = as_utc(now or _now())
        with self._tx() as s:
            rows = s.scalars(
                select(SessionRow)
                .where(
                    SessionRow.user_id == user_id,
                    SessionRow.revoked_at.is_(None),
                    SessionRow.expires_at > now,
                )
                .order_by(SessionRow.last_active_at.desc(), SessionRow.created_at.desc(), SessionRow.id.desc())
            ).all()
            found = [_to_data(r) for r in rows]
        return [d for d in found if d.is_active(now)]

    def get_public(self, user_id: str, public_id: str) -> SessionData | None:
        with self._tx() as s:
            row = s.scalars(
                select(SessionRow).where(SessionRow.public_id == public_id, SessionRow.user_id == user_id)
            ).first()
            return _to_data(row) if row is not None else None

    def get_by_token(self, token_hash: str) -> SessionData | None:
        with self._read() as c:
            row = c.execute(_SESSION_BY_TOKEN, {"t": token_hash}).first()
        return _to_data(row) if row is not None else None

    def upgrade(self, session_id: str, amr: list[str], auth_time: datetime, token_hash: str) -> SessionData | None:
        now = _now()
        with self._tx() as s:
            row = s.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.revoked_at.is_(None), SessionRow.expires_at > now)
                .values(amr=list(amr), auth_time=as_utc(auth_time), token_hash=token_hash)
                .returning(SessionRow.last_active_at, SessionRow.idle_timeout, SessionRow.expires_at)
                .execution_options(**NOSYNC)
            ).first()
            if row is not None:
                _log_changes(s, [session_id], now)
        if row is None or not _is_active(row[0], row[1], row[2], now):
            return None
        return self.get(session_id)

    def changes_since(self, since: datetime) -> list[str]:
        """Ids of the sessions ended or renewed at or after ``since`` (one indexed range query)."""
        with self._read() as c:
            return list(c.execute(_CHANGES_SINCE, {"since": as_utc(since)}).scalars())

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete sessions past their absolute lifetime (and day-old change records); returns how many."""
        now = as_utc(now or _now())
        with self._tx() as s:
            n = s.execute(
                delete(SessionRow).where(SessionRow.expires_at <= now).execution_options(**NOSYNC)
            ).rowcount
            s.execute(delete(SessionChange).where(SessionChange.at < now - SESSION_CHANGES_KEPT)
                      .execution_options(**NOSYNC))
            return n


class SqlOneTimeStore(_SqlStore):
    def put(self, key: str, value: str, ttl: int) -> None:
        expires_at = _now() + timedelta(seconds=check_ttl(ttl))
        with self._core() as s:
            stmt = self._insert(s, OneTimeValue).values(key=_key(key), value=value, expires_at=expires_at)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[OneTimeValue.key],
                    set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at},
                )
            )

    def add(self, key: str, value: str, ttl: int) -> bool:
        """One upsert that only overwrites an expired row; RETURNING tells whether we wrote."""
        now = _now()
        expires_at = now + timedelta(seconds=check_ttl(ttl))
        with self._core() as s:
            stmt = self._insert(s, OneTimeValue).values(key=_key(key), value=value, expires_at=expires_at)
            row = s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[OneTimeValue.key],
                    set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at},
                    where=OneTimeValue.expires_at <= now,
                ).returning(OneTimeValue.key)
            ).first()
        return row is not None

    def get(self, key: str) -> str | None:
        with self._read() as s:
            return s.scalar(
                select(OneTimeValue.value).where(OneTimeValue.key == _key(key), OneTimeValue.expires_at > _now())
            )

    def consume(self, key: str) -> str | None:
        with self._core() as s:
            row = s.execute(
                delete(OneTimeValue)
                .where(OneTimeValue.key == _key(key))
                .returning(OneTimeValue.value, OneTimeValue.expires_at)
                .execution_options(**NOSYNC)
            ).first()
        if row is None or row[1] <= _now():
            return None
        return row[0]

    def delete(self, key: str) -> None:
        with self._core() as s:
            s.execute(delete(OneTimeValue).where(OneTimeValue.key == _key(key)).execution_options(**NOSYNC))

    def purge_expired(self, now: datetime | None = None) -> int:
        now = as_utc(now or _now())
        with self._core() as s:
            return s.execute(
                delete(OneTimeValue).where(OneTimeValue.expires_at <= now).execution_options(**NOSYNC)
            ).rowcount


_T = Throttle.__table__.c
_THROTTLE_STATE = select(_T.failures, _T.blocked_until).where(_T.key == bindparam("k"),
                                                             _T.expires_at > bindparam("now"))
_THROTTLE_STATES = select(_T.key, _T.failures, _T.blocked_until).where(
    _T.key.in_(bindparam("ks", expanding=True)), _T.expires_at > bindparam("now"))
_THROTTLE_BLOCK = update(Throttle.__table__).where(_T.key == bindparam("k_")).values(blocked_until=bindparam("until"))
_THROTTLE_RESET = delete(Throttle.__table__).where(_T.key == bindparam("k"))


def _throttle_count(dialect_insert):
    """The counting upsert, prebuilt for a dialect: a new row at 1, or +1 (1 again once the window passed), the
    block cleared (``record_failure`` sets it again when the new count earns one)."""
    return dialect_insert(Throttle.__table__).values(
        key=bindparam("k"), failures=1, blocked_until=None, last_failure_at=bindparam("now"),
        expires_at=bindparam("forget"),
    ).on_conflict_do_update(
        index_elements=[_T.key],
        set_={
            "failures": case((_T.expires_at > bindparam("now_"), _T.failures + 1), else_=1),
            "blocked_until": None,
            "last_failure_at": bindparam("now_"),
            "expires_at": bindparam("forget_"),
        },
    ).returning(_T.failures)


_THROTTLE_COUNT = {"postgresql": _throttle_count(postgresql.insert), "sqlite": _throttle_count(sqlite.insert)}


class SqlThrottleStore(_SqlStore):
    """Prebuilt Core statements: two to four of these run at every password sign-in."""

    def state(self, key: str, now: datetime) -> ThrottleState:
        with self._read() as s:
            row = s.execute(_THROTTLE_STATE, {"k": _key(key), "now": as_utc(now)}).first()
        return ThrottleState(row[0], row[1]) if row is not None else ThrottleState(0, None)

    def states(self, keys: list[str], now: datetime) -> list[ThrottleState]:
        wanted = [_key(k) for k in keys]
        with self._read() as s:
            found = {row[0]: ThrottleState(row[1], row[2])
                     for row in s.execute(_THROTTLE_STATES, {"ks": wanted, "now": as_utc(now)})}
        return [found.get(k, ThrottleState(0, None)) for k in wanted]

    def record_failure(self, key: str, now: datetime, backoff: Backoff) -> ThrottleState:
        """Count with one upsert (restarting at 1 once the window passed), then set ``blocked_until`` if the
        new count earns a delay.

        Both statements run in one transaction that holds the row's write lock, so concurrent failures
        serialise: no count is lost and the block always matches the count.
        """
        now = as_utc(now)
        forget_at = now + timedelta(seconds=backoff.window)
        k = _key(key)
        with self._core() as s:
            stmt = _THROTTLE_COUNT.get(s.dialect.name)
            if stmt is None:
                raise NotImplementedError(f"no upsert for dialect {s.dialect.name}")
            failures = s.execute(stmt, {"k": k, "now": now, "now_": now, "forget": forget_at,
                                        "forget_": forget_at}).scalar_one()
            delay = backoff.delay(failures)
            blocked_until = now + timedelta(seconds=delay) if delay else None
            if blocked_until is not None:
                s.execute(_THROTTLE_BLOCK, {"k_": k, "until": blocked_until})
        return ThrottleState(failures, blocked_until)

    def reset(self, key: str) -> None:
        with self._core() as s:
            s.execute(_THROTTLE_RESET, {"k": _key(key)})

    def hit(self, key: str, limit: int, window: int, now: datetime) -> bool:
        start = window_start(now, window)
        ends = datetime.fromtimestamp(start + window, UTC)
        with self._core() as s:
            stmt = self._insert(s, RateCounter).values(key=_key(key), window_start=start, hits=1, expires_at=ends)
            hits = s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[RateCounter.key],
                    set_={
                        "hits": case((RateCounter.window_start == start, RateCounter.hits + 1), else_=1),
                        "window_start": start,
                        "expires_at": ends,
                    },
                ).returning(RateCounter.hits)
            ).scalar_one()
        return hits <= limit

    def purge_expired(self, now: datetime | None = None) -> int:
        now = as_utc(now or _now())
        with self._core() as s:
            n = s.execute(delete(Throttle).where(Throttle.expires_at <= now).execution_options(**NOSYNC)).rowcount
            n += s.execute(
                delete(RateCounter).where(RateCounter.expires_at <= now).execution_options(**NOSYNC)
            ).rowcount
        return n


class SqlFlowStore(_SqlStore):
    def create(self, flow_id: str, data: dict, ttl: int) -> None:
        expires_at = _now() + timedelta(seconds=check_ttl(ttl))
        with self._core() as s:
            stmt = self._insert(s, LoginFlow).values(id=flow_id, data=data, expires_at=expires_at)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[LoginFlow.id],
                    set_={"data": stmt.excluded.data, "expires_at": stmt.excluded.expires_at},
                )
            )

    def get(self, flow_id: str) -> dict | None:
        with self._core() as s:
            return s.scalar(select(LoginFlow.data).where(LoginFlow.id == flow_id, LoginFlow.expires_at > _now()))

    def update(self, flow_id: str, data: dict, ttl: int) -> bool:
        now = _now()
        expires_at = now + timedelta(seconds=check_ttl(ttl))
        with self._core() as s:
            result = s.execute(
                update(LoginFlow)
                .where(LoginFlow.id == flow_id, LoginFlow.expires_at > now)
                .values(data=data, expires_at=expires_at)
                .execution_options(**NOSYNC)
            )
            return result.rowcount == 1

    def delete(self, flow_id: str) -> None:
        with self._core() as s:
            s.execute(delete(LoginFlow).where(LoginFlow.id == flow_id).execution_options(**NOSYNC))

    def purge_expired(self, now: datetime | None = None) -> int:
        now = as_utc(now or _now())
        with self._core() as s:
            return s.execute(delete(LoginFlow).where(LoginFlow.expires_at <= now).execution_options(**NOSYNC)).rowcount


def db_ping(sm: sessionmaker) -> None:
    """``SELECT 1``; raises StoreUnavailable when the database cannot be reached."""
    with _SqlStore(sm)._tx() as s:
        s.execute(text("SELECT 1"))
