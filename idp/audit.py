"""Append-only, hash-chained audit log. Plain Python: takes a sessionmaker and a clock, knows no Flask.

Every workspace has its own chain (the hub's own events go to the ``"_hub"`` chain). Each event carries
its chain's sequence number and the hash of the previous event; its own hash is SHA-256 over a canonical
JSON of all its fields (sorted keys, ISO-8601 UTC times), the previous hash included. ``verify`` walks a
chain from its anchor (the genesis hash, or the last pruned event's hash) and reports the first event
that does not fit: an edited field, a deleted, reordered or inserted event, a forged hash.

Appends serialise per chain through an atomic ``UPDATE audit_chain_heads SET seq = seq + 1 ... RETURNING``:
in PostgreSQL the row lock it takes is held until commit; SQLite serialises writers anyway.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Index,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from idp.db import Base
from idp.models import UTCDateTime

HUB_CHAIN = "_hub"
GENESIS_HASH = "0" * 64
REDACTED = "[redacted]"
RETENTION_DAYS = {"free": 30, "pro": 180, "enterprise": 730}

# Substrings of ``data`` keys whose values are never stored.
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "code", "otp", "authorization", "cookie")
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
EXPORT_FIELDS = (
    "seq", "occurred_at", "type", "workspace_id", "actor_id", "actor_email", "subject_id",
    "ip", "user_agent", "request_id", "data", "prev_hash", "hash",
)  # fmt: skip
_LIMITS = {
    "actor_id": 64, "actor_email": 320, "subject_id": 64, "ip": 64, "user_agent": 512, "request_id": 128,
}  # fmt: skip
_BATCH = 500


class AuditEvent(Base):
    """One audit event. Never updated or deleted, except by ``AuditLog.prune``."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),
        Index("ix_audit_events_workspace_time", "workspace_id", "occurred_at"),
        Index("ix_audit_events_workspace_type", "workspace_id", "type"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    workspace_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    type: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    subject_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


_COLUMNS = ("chain", "seq", "workspace_id", "occurred_at", "type", "actor_id", "actor_email", "subject_id", "ip",
            "user_agent", "request_id", "data", "prev_hash", "hash")


class AuditChainHead(Base):
    """The tip of one chain, and the anchor left behind by pruning."""

    __tablename__ = "audit_chain_heads"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    pruned_through_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    anchor_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)


# the append's three statements, prebuilt (one append runs at every sign-in and every SSO response)
_H = AuditChainHead.__table__.c
_RESERVE_SEQ = (update(AuditChainHead.__table__).where(_H.chain == bindparam("c"))
                .values(seq=_H.seq + bindparam("n")).returning(_H.seq, _H.hash))
_INSERT_EVENTS = insert(AuditEvent.__table__)
_SET_HEAD_HASH = update(AuditChainHead.__table__).where(_H.chain == bindparam("c")).values(hash=bindparam("h"))


@dataclass(slots=True)
class RecordedEvent:
    """An event as ``AuditLog.record`` appends it (the columns of ``AuditEvent``, but not an ORM instance: two
    of these are written at every sign-in and every SSO response, and an ORM instance costs more to make than
    its row costs to hash). ``seq``, ``prev_hash`` and ``hash`` are set when it is chained."""

    chain: str
    workspace_id: str | None
    occurred_at: datetime
    type: str
    data: dict
    actor_id: str | None = None
    actor_email: str | None = None
    subject_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    chain: str | None = None  # the chain that failed, when one did


# ---- pure helpers ---------------------------------------------------------------------------------------
def chain_for(workspace_id: str | None) -> str:
    """The chain a workspace's events go to (``"_hub"`` for hub-wide events)."""
    return workspace_id if workspace_id else HUB_CHAIN


def retention_days(plan: str) -> int:
    """Days a plan keeps its audit log (unknown plans get the shortest retention)."""
    return RETENTION_DAYS.get(plan, min(RETENTION_DAYS.values()))


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(part in k for part in SECRET_KEY_PARTS)


def redact(value: Any) -> Any:
    """``value`` with every dict entry whose key names a secret replaced by ``"[redacted]"`` (recursive)."""
    if isinstance(value, dict):
        return {str(k): (REDACTED if _is_secret_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def iso_utc(dt: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` (naive datetimes are taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fields(ev: AuditEvent | RecordedEvent) -> dict[str, Any]:
    return {
        "chain": ev.chain,
        "seq": ev.seq,
        "workspace_id": ev.workspace_id,
        "occurred_at": iso_utc(ev.occurred_at),
        "type": ev.type,
        "actor_id": ev.actor_id,
        "actor_email": ev.actor_email,
        "subject_id": ev.subject_id,
        "ip": ev.ip,
        "user_agent": ev.user_agent,
        "request_id": ev.request_id,
        "data": ev.data if ev.data is not None else {},
        "prev_hash": ev.prev_hash,
    }


def compute_hash(ev: AuditEvent | RecordedEvent) -> str:
    """SHA-256 (hex) of the canonical JSON of the event's fields, ``prev_hash`` included."""
    canonical = json.dumps(_fields(ev), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _clip(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return str(value)[: _LIMITS[name]]


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


# ---- the log --------------------------------------------------------------------------------------------
class AuditLog:
    """Records, verifies, exports and prunes audit events."""

    def __init__(self, sessionmaker: sessionmaker, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._sm = sessionmaker
        self._engine = sessionmaker.kw["bind"]
        self._clock = clock
        self._local = threading.local()

    # ---- writing ----------------------------------------------------------------------------------------
    def record(
        self,
        type: str,
        *,
        workspace_id: str | None = None,
        actor_id: str | None = None,
        actor_email: str | None = None,
        subject_id: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        data: dict | None = None,
        connection: Any = None,
    ) -> RecordedEvent:
        """Append one event to its workspace's chain (secrets in ``data`` redacted) and return it.

        Inside ``deferred()`` the event is kept and written with the others when the block ends (one
        transaction for all of them); the returned object then has no ``seq``/``hash`` yet.
        ``connection``: append in the caller's open transaction (a SQLAlchemy ``Connection``, e.g. a session's
        ``db.connection()``), so that the change and its event commit together, with one commit; the chain's
        head stays locked until that commit, so call it last, just before committing.
        """
        if not isinstance(type, str) or len(type) > 64 or not TYPE_RE.match(type):
            raise ValueError(f"invalid audit event type {type!r}")
        # Round-trip through JSON so that what is hashed is exactly what the database gives back.
        clean = json.loads(json.dumps(redact(data or {}), default=str))
        ev = RecordedEvent(
            chain=chain_for(workspace_id),
            workspace_id=workspace_id,
            occurred_at=_utc(self._clock()),
            type=type,
            data=clean,
            actor_id=_clip("actor_id", actor_id),
            actor_email=_clip("actor_email", actor_email),
            subject_id=_clip("subject_id", subject_id),
            ip=_clip("ip", ip),
            user_agent=_clip("user_agent", user_agent),
            request_id=_clip("request_id", request_id),
        )
        if connection is not None:
            if not self._append_chain(connection, ev.chain, [ev]):
                self._create_head_in(connection, ev.chain)
                if not self._append_chain(connection, ev.chain, [ev]):  # pragma: no cover
                    raise RuntimeError(f"could not create the audit chain head for {ev.chain!r}")
            return ev
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(ev)
            return ev
        self._append([ev])
        return ev

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Collect the events recorded in this thread inside the block and append them in one transaction
        when it ends — also when it ends with an exception, so that no security event is lost. Nested
        blocks join the outermost one."""
        if getattr(self._local, "pending", None) is not None:
            yield
            return
        self._local.pending = []
        try:
            yield
        finally:
            events, self._local.pending = self._local.pending, None
            if events:
                self._append(events)

    def _append(self, events: list[RecordedEvent]) -> None:
        """Chain ``events`` (in order) onto their chains: per chain, one UPDATE that reserves the sequence
        numbers and reads the previous hash, one INSERT of the rows, one UPDATE of the head's hash — all in
        one transaction, so the head's row lock orders concurrent writers."""
        by_chain: dict[str, list[RecordedEvent]] = {}
        for ev in events:
            by_chain.setdefault(ev.chain, []).append(ev)
        for chain, evs in by_chain.items():
            for _attempt in range(3):
                with self._engine.begin() as conn:
                    done = self._append_chain(conn, chain, evs)
                if done:
                    break
                self._create_head(chain)  # a new chain (nothing was written above): create its head, retry
            else:  # pragma: no cover
                raise RuntimeError(f"could not create the audit chain head for {chain!r}")

    @staticmethod
    def _append_chain(conn, chain: str, evs: list[RecordedEvent]) -> bool:
        """Chain ``evs`` onto ``chain`` in ``conn``'s transaction; False (nothing written) if it has no head."""
        row = conn.execute(_RESERVE_SEQ, {"c": chain, "n": len(evs)}).first()
        if row is None:
            return False
        last_seq, prev_hash = row
        rows = []
        for i, ev in enumerate(evs):
            ev.seq = last_seq - len(evs) + 1 + i
            ev.prev_hash = prev_hash
            ev.hash = prev_hash = compute_hash(ev)
            rows.append({c: getattr(ev, c) for c in _COLUMNS})
        conn.execute(_INSERT_EVENTS, rows)
        conn.execute(_SET_HEAD_HASH, {"c": chain, "h": prev_hash})
        return True

    @staticmethod
    def _create_head_in(conn, chain: str) -> None:
        """A new chain's head inside the caller's transaction (a savepoint, so that losing the race to another
        writer leaves the transaction usable; SQLite serialises writers, so it needs none)."""
        values = dict(chain=chain, seq=0, hash=GENESIS_HASH, pruned_through_seq=0, anchor_hash=GENESIS_HASH)
        if conn.dialect.name == "sqlite":
            conn.execute(insert(AuditChainHead).values(**values))
            return
        try:
            with conn.begin_nested():
                conn.execute(insert(AuditChainHead).values(**values))
        except IntegrityError:
            pass

    def _create_head(self, chain: str) -> None:
        """Insert the chain's head row; losing the race to another writer is fine."""
        with self._sm() as db:
            try:
                db.execute(insert(AuditChainHead).values(chain=chain, seq=0, hash=GENESIS_HASH,
                                                         pruned_through_seq=0, anchor_hash=GENESIS_HASH))
                db.commit()
            except IntegrityError:
                db.rollback()

    # ---- verifying --------------------------------------------------------------------------------------
    def verify(self, workspace_id: str | None = None) -> VerifyResult:
        """Recompute every chain (or only ``workspace_id``'s) from its anchor; the first problem wins."""
        with self._sm() as db:
            if workspace_id is not None:
                chains = [workspace_id]
            else:
                heads = set(db.scalars(select(AuditChainHead.chain)))
                chains = sorted(heads | set(db.scalars(select(AuditEvent.chain).distinct())))
            checked = 0
            for chain in chains:
                result = self._verify_chain(db, chain)
                checked += result.checked
                if not result.ok:
                    return VerifyResult(False, checked, result.first_bad_seq, result.reason, chain)
        return VerifyResult(True, checked)

    def _verify_chain(self, db: Session, chain: str) -> VerifyResult:
        head = db.get(AuditChainHead, chain)
        if head is None:
            first = db.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.chain == chain))
            if first is None:
                return VerifyResult(True, 0)
            return VerifyResult(False, 0, first, "chain head missing")
        expected_seq = head.pruned_through_seq + 1
        expected_prev = head.anchor_hash
        checked = 0
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain).order_by(AuditEvent.seq)
            .execution_options(yield_per=_BATCH)
        )  # fmt: skip
        for ev in events:
            if ev.seq < expected_seq:
                return VerifyResult(False, checked, ev.seq, "event before the pruning anchor")
            if ev.seq != expected_seq:
                return VerifyResult(False, checked, expected_seq, f"event {expected_seq} is missing")
            if ev.chain != chain_for(ev.workspace_id):
                return VerifyResult(False, checked, ev.seq, "event is in the wrong chain")
            if ev.prev_hash != expected_prev:
                return VerifyResult(False, checked, ev.seq, "previous hash does not match")
            if compute_hash(ev) != ev.hash:
                return VerifyResult(False, checked, ev.seq, "hash does not match the event's contents")
            checked += 1
            expected_prev = ev.hash
            expected_seq += 1
        if head.seq != expected_seq - 1:
            missing = f"events {expected_seq}..{head.seq} are missing"
            return VerifyResult(False, checked, expected_seq, missing)
        if head.hash != expected_prev:
            return VerifyResult(False, checked, head.seq, "chain head hash does not match the last event")
        return VerifyResult(True, checked)

    # ---- reading ----------------------------------------------------------------------------------------
    def export(
        self,
        workspace_id: str | None,
        fmt: str = "json",
        since: datetime | None = None,
        until: datetime | None = None,
        types: Iterable[str] | None = None,
    ) -> Iterator[str]:
        """Stream a workspace's events (``since`` <= occurred_at < ``until``) as a JSON array or CSV."""
        if fmt not in ("json", "csv"):
            raise ValueError(f"unknown export format {fmt!r}")
        stmt = select(AuditEvent).where(AuditEvent.chain == chain_for(workspace_id))
        if since is not None:
            stmt = stmt.where(AuditEvent.occurred_at >= _utc(since))
        if until is not None:
            stmt = stmt.where(AuditEvent.occurred_at < _utc(until))
        if types is not None:
            stmt = stmt.where(AuditEvent.type.in_(list(types)))
        stmt = stmt.order_by(AuditEvent.seq).execution_options(yield_per=_BATCH)
        rows = self._stream(stmt)
        return _json_chunks(rows) if fmt == "json" else _csv_chunks(rows)

    def _stream(self, stmt) -> Iterator[list[dict[str, Any]]]:
        with self._sm() as db:
            for part in db.scalars(stmt).partitions(_BATCH):
                yield [_export_row(ev) for ev in part]

    # ---- retention --------------------------------------------------------------------------------------
    def prune(self, workspace_id: str | None, retention_days: int, now: datetime) -> int:
        """Delete the chain's oldest events older than ``retention_days``; returns how many were deleted.

        Only a contiguous prefix of the chain is removed; the last removed event's hash becomes the head's
        anchor so that ``verify`` still checks everything that is left.
        """
        if retention_days < 0:
            raise ValueError("retention_days must not be negative")
        chain = chain_for(workspace_id)
        cutoff = _utc(now) - timedelta(days=retention_days)
        with self._sm() as db:
            # Take the head's row lock first (a no-op update): appends and other prunes wait for us.
            locked = db.execute(
                update(AuditChainHead).where(AuditChainHead.chain == chain)
                .values(seq=AuditChainHead.seq)
                .returning(AuditChainHead.seq, AuditChainHead.pruned_through_seq)
            ).first()  # fmt: skip
            if locked is None:
                db.rollback()
                return 0
            head_seq, pruned_through = locked
            first_kept = db.scalar(
                select(func.min(AuditEvent.seq))
                .where(AuditEvent.chain == chain, AuditEvent.occurred_at >= cutoff)
            )
            through = (first_kept - 1) if first_kept is not None else head_seq
            if through <= pruned_through:
                db.rollback()
                return 0
            last = db.scalar(select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq == through))
            if last is None:
                db.rollback()
                raise RuntimeError(f"audit chain {chain!r} has no event {through}; run verify()")
            deleted = db.execute(
                delete(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq <= through)
            ).rowcount
            db.execute(
                update(AuditChainHead).where(AuditChainHead.chain == chain)
                .values(pruned_through_seq=through, anchor_hash=last.hash)
            )  # fmt: skip
            db.commit()
        return deleted


def _export_row(ev: AuditEvent) -> dict[str, Any]:
    row = {name: getattr(ev, name) for name in EXPORT_FIELDS}
    row["occurred_at"] = iso_utc(ev.occurred_at)
    row["data"] = ev.data if ev.data is not None else {}
    return row


def _json_chunks(batches: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    yield "["
    first = True
    for batch in batches:
        parts = []
        for row in batch:
            parts.append(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False, sort_keys=True))
            first = False
        yield "".join(parts)
    yield "\n]\n"


def csv_safe(value: Any) -> Any:
    """A cell value that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_chunks(batches: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(EXPORT_FIELDS)
    yield buf.getvalue()
    for batch in batches:
        buf.seek(0)
        buf.truncate()
        for row in batch:
            cells = dict(row, data=json.dumps(row["data"], ensure_ascii=False, sort_keys=True))
            writer.writerow([csv_safe("" if cells[name] is None else cells[name]) for name in EXPORT_FIELDS])
        yield buf.getvalue()
