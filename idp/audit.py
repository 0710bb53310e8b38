"""Append-only, keyed hash-chained audit log. Plain Python: takes a sessionmaker, a clock and the master secrets,
knows no Flask.

Every workspace has its own chain (the hub's own events go to the ``"_hub"`` chain). Writing and chaining are two
steps (the CloudTrail model):

* **append**: a request INSERTs its event, durable at its commit, without any lock. The row carries a ``mac``:
  HMAC-SHA256 under the chain key over a canonical JSON of its contents, so an edit is detected even before it
  is sealed. Its ``seq``, ``prev_hash`` and ``hash`` are still NULL.
* **seal**: a sealer (a background thread in every process that appends, ``idhub audit seal``, ``idhub
  maintenance``, a checkpoint or a prune) takes the chain head's row lock for one short transaction, gives the
  chain's unsealed rows the next sequence numbers in the order it sees them, and chains them:
  ``hash = HMAC(key, chain|seq|prev_hash|mac)``. Sealed rows are a gap-free prefix, so a reader that follows
  ``seq`` (``read_sealed``) never skips a row; a row that commits late gets a later number. A process that dies
  between append and seal loses nothing: its rows are sealed by the next sealer, on any node.

The chain key is derived from the master secret (``IDHUB_SECRET_KEY``), so rewriting an event and recomputing
every later hash does not pass ``verify`` without it. Each row names the key it was made with (``key_id``);
verification tries the current and the previous secrets. A **checkpoint** (chain, last seq, its hash, time, key
id) signed with an Ed25519 key derived from the same secret, kept outside the database (``idhub audit
checkpoint``, the log stream), catches what no in-database check can: the newest events deleted and the head
rolled back. A **prune** leaves a sealed ``audit.pruned`` record, so that a prefix deleted behind the log's back
is not taken for one.

On SQLite (one writer at a time anyway) appends are sealed in their own transaction (``seal="inline"``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from idp.db import Base, InsertPart, read_engine
from idp.models import UTCDateTime

log = logging.getLogger("idhub.audit")

HUB_CHAIN = "_hub"
GENESIS_HASH = "0" * 64
REDACTED = "[redacted]"
RETENTION_DAYS = {"free": 30, "pro": 180, "enterprise": 730}
ANCHOR_TYPES = ("audit.pruned", "audit.chain.keyed")  # sealed records that vouch for a chain's anchor

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
_SEAL_BATCH = 5000
FULL_SCAN_INTERVAL = 5.0  # seconds: a busy sealer still looks for every chain's unsealed events this often


class AuditEvent(Base):
    """One audit event. Never updated (but sealed once) or deleted, except by ``AuditLog.prune``."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),
        Index("ix_audit_events_workspace_time", "workspace_id", "occurred_at"),
        Index("ix_audit_events_workspace_type", "workspace_id", "type"),
        Index("ix_audit_events_unsealed", "chain", "id", postgresql_where=text("seq IS NULL"),
              sqlite_where=text("seq IS NULL")),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


_CONTENT = ("chain", "workspace_id", "occurred_at", "type", "actor_id", "actor_email", "subject_id", "ip",
            "user_agent", "request_id", "data", "key_id")
_COLUMNS = _CONTENT + ("mac", "seq", "prev_hash", "hash")


class AuditChainHead(Base):
    """The tip of one chain (last sealed seq and hash), and the anchor left behind by pruning."""

    __tablename__ = "audit_chain_heads"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    pruned_through_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    anchor_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    keyed: Mapped[bool] = mapped_column(Boolean, default=True)  # false: written unkeyed, before keyed chains


_E = AuditEvent.__table__.c
_H = AuditChainHead.__table__.c
_INSERT_EVENTS = insert(AuditEvent.__table__)
# PostgreSQL: up to ONE_STATEMENT_MAX events as one multi-row INSERT, prebuilt per number of rows, on an autocommit
# connection (atomic and durable when it returns: no BEGIN and COMMIT round trips). The rows take their ids in the
# VALUES order, so the sealer chains them in the order they were recorded. Measured in-process (two runs each), CPU
# per append against an executemany transaction: 244-250 against 250-260 µs for one event, 285 against 407-414 for
# two, 320-333 against 439-451 for three, 483-487 against 476-480 for four; beyond, executemany is cheaper.
ONE_STATEMENT_MAX = 3
_INSERT_ROWS: dict[int, Any] = {}


def _insert_rows(n: int):
    stmt = _INSERT_ROWS.get(n)
    if stmt is None:
        table = AuditEvent.__table__
        rows = ", ".join("(" + ", ".join(f":r{i}_{c}" for c in _COLUMNS) + ")" for i in range(n))
        stmt = text(f"INSERT INTO {table.name} ({', '.join(_COLUMNS)}) VALUES {rows}").bindparams(  # noqa: S608
            *[bindparam(f"r{i}_{c}", type_=table.c[c].type) for i in range(n) for c in _COLUMNS])
        _INSERT_ROWS[n] = stmt
    return stmt


_LOCK_HEAD = select(_H.seq, _H.hash, _H.keyed, _H.pruned_through_seq, _H.anchor_hash).where(
    _H.chain == bindparam("c")).with_for_update()
_UNSEALED = (select(_E.id, *[_E[c] for c in _CONTENT], _E.mac)
             .where(_E.chain == bindparam("c"), _E.seq.is_(None)).order_by(_E.id).limit(bindparam("n")))
_SEAL_ROW = (update(AuditEvent.__table__).where(_E.id == bindparam("_id"), _E.seq.is_(None))
             .values(seq=bindparam("_seq"), prev_hash=bindparam("_prev"), hash=bindparam("_hash")))
# PostgreSQL: the batch's rows and the head in one statement (one round trip; the rows' UPDATE as a CTE, which
# PostgreSQL runs exactly once, to completion, whether or not the head's UPDATE reads it)
_SEAL_ROWS_PG = text(
    "WITH sealed AS (UPDATE audit_events AS e SET seq = v.seq, prev_hash = v.prev, hash = v.hash "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[]), CAST(:prevs AS varchar[]), "
    "CAST(:hashes AS varchar[])) AS v(id, seq, prev, hash) WHERE e.id = v.id AND e.seq IS NULL) "
    "UPDATE audit_chain_heads SET seq = :s, hash = :h WHERE chain = :c")
# the head locked (a no-op write: SQLite takes its writer lock, PostgreSQL the row lock) and read, with whether the
# chain has unsealed rows: the inline append's first statement (AuditLog._insert_sealed)
_LOCK_HEAD_UNSEALED = (
    update(AuditChainHead.__table__).where(_H.chain == bindparam("c")).values(seq=_H.seq)
    .returning(_H.seq, _H.hash, _H.keyed,
               select(_E.id).where(_E.chain == bindparam("c"), _E.seq.is_(None)).exists().label("unsealed"))
)
_SET_HEAD = update(AuditChainHead.__table__).where(_H.chain == bindparam("c")).values(
    seq=bindparam("s"), hash=bindparam("h"))


# ---- keys ---------------------------------------------------------------------------------------------------
class AuditKey:
    """The audit keys derived from one master secret: the chain's HMAC key and the checkpoints' Ed25519 key,
    named by one key id (the first 16 hex digits of SHA-256 of the Ed25519 public key)."""

    def __init__(self, secret: str):
        master = secret.encode()
        self._set(hmac.new(master, b"idhub|audit-chain", hashlib.sha256).digest(),
                  hmac.new(master, b"idhub|audit-checkpoint-ed25519", hashlib.sha256).digest())

    @classmethod
    def from_derived(cls, mac_key: bytes, seed: bytes) -> AuditKey:
        """The keys of an earlier master that ``idhub secrets rotate`` retained (``idp.crypto``: the purposes
        ``audit-chain`` and ``audit-checkpoint-ed25519``), once the master itself is gone."""
        key = cls.__new__(cls)
        key._set(mac_key, seed)
        return key

    def _set(self, mac_key: bytes, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.mac_key = mac_key
        self.signer = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self.signer.public_key()
        self.public_raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.public_raw).hexdigest()[:16]


class AuditKeys:
    """The current key (new events, checkpoints) and every key verification accepts, by key id: the listed master
    secrets', then the keys retained from earlier masters (``retained``: loaded when an unknown key id is met)."""

    RELOAD_AFTER = 60.0  # seconds before an unknown key id makes the retained keys be read again

    def __init__(self, secrets: Iterable[str], retained: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None):
        keys = [AuditKey(s) for s in secrets if s]
        if not keys:
            raise ValueError("the audit log needs a master secret (IDHUB_SECRET_KEY)")
        self.current = keys[0]
        self.by_id: dict[str, AuditKey] = {}
        for k in keys:
            self.by_id.setdefault(k.key_id, k)
        self._retained = retained
        self._loaded_at: float | None = None

    def get(self, key_id: str | None) -> AuditKey | None:
        key = self.by_id.get(key_id or "")
        if key is None and key_id and self._retained is not None:
            now = time.monotonic()
            if self._loaded_at is None or now - self._loaded_at > self.RELOAD_AFTER:
                self._loaded_at = now
                for mac_key, seed in self._retained():
                    k = AuditKey.from_derived(mac_key, seed)
                    self.by_id.setdefault(k.key_id, k)
                key = self.by_id.get(key_id)
        return key


# ---- results ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class RecordedEvent:
    """An event as ``AuditLog.record`` appends it (the columns of ``AuditEvent``, but not an ORM instance).
    ``seq``, ``prev_hash`` and ``hash`` are set when it is sealed (at once with ``seal="inline"``)."""

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
    key_id: str | None = None
    mac: str | None = None
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
    unsealed: int = 0  # appended events not sealed yet (their MACs were checked)


class CheckpointError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


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


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _legacy_fields(ev: Any) -> dict[str, Any]:
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


def compute_hash(ev: Any) -> str:
    """The unkeyed SHA-256 chain hash of events written before keyed chains (read only when adopting them)."""
    return hashlib.sha256(_canonical(_legacy_fields(ev))).hexdigest()


def content_mac(key: AuditKey, ev: Any) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of the event's contents (every column but id/seq/hashes)."""
    fields = {
        "chain": ev.chain,
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
        "key_id": ev.key_id,
    }
    return hmac.new(key.mac_key, _canonical(fields), hashlib.sha256).hexdigest()


def chain_hash(key: AuditKey, chain: str, seq: int, prev_hash: str, mac: str) -> str:
    """The sealed event's link: HMAC-SHA256 (hex) of ``chain|seq|prev_hash|mac``."""
    return hmac.new(key.mac_key, f"{chain}|{seq}|{prev_hash}|{mac}".encode(), hashlib.sha256).hexdigest()


def _clip(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return str(value)[: _LIMITS[name]]


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def read_sealed(session: Session, workspace_id: str | None, after_seq: int, limit: int = 500) -> list[AuditEvent]:
    """The workspace's sealed events with ``seq > after_seq``, in ``seq`` order, at most ``limit``.

    Sealed events form a gap-free run of sequence numbers and an event is only ever sealed after every event
    already visible here, so a reader that keeps the last ``seq`` it delivered never skips an event, even when
    the writers' transactions commit out of id order. (Unsealed events are not returned; they are sealed within
    about a second, or at once by ``AuditLog.seal``.)"""
    stmt = (select(AuditEvent).where(AuditEvent.chain == chain_for(workspace_id), AuditEvent.seq > after_seq)
            .order_by(AuditEvent.seq).limit(limit))
    return list(session.scalars(stmt))


def sign_checkpoint(key: AuditKey, body: dict) -> dict:
    """``body`` with ``key_id``, ``alg`` and its Ed25519 ``sig`` over the canonical JSON of everything else."""
    body = {k: v for k, v in body.items() if k != "sig"}
    body.update(key_id=key.key_id, alg="Ed25519")
    return {**body, "sig": _b64(key.signer.sign(_canonical(body)))}


def verify_checkpoint(keys: AuditKeys, cp: Any) -> dict:
    """The checkpoint if its signature verifies under one of ``keys`` (by its key id); ``CheckpointError`` if not."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(cp, dict) or cp.get("v") != 1 or cp.get("alg") != "Ed25519":
        raise CheckpointError("not an idhub audit checkpoint (v 1, Ed25519)")
    for name, kind in (("chain", str), ("seq", int), ("hash", str), ("key_id", str), ("sig", str),
                       ("pruned_through_seq", int)):
        if not isinstance(cp.get(name), kind) or isinstance(cp.get(name), bool):
            raise CheckpointError(f"checkpoint field {name!r} is missing or malformed")
    key = keys.get(cp["key_id"])
    if key is None:
        raise CheckpointError(f"checkpoint signed with an unknown key {cp['key_id']!r}")
    try:
        key.public_key.verify(_unb64(cp["sig"]), _canonical({k: v for k, v in cp.items() if k != "sig"}))
    except (InvalidSignature, ValueError) as exc:
        raise CheckpointError("checkpoint signature does not verify") from exc
    return cp


# ---- the log --------------------------------------------------------------------------------------------
class AuditLog:
    """Records, seals, verifies, checkpoints, exports and prunes audit events.

    ``secrets``: the master secrets, current first (``idp.crypto.secret_keys``). ``seal``: ``"inline"`` (chain each
    event in its own transaction, holding the head's lock to its commit: SQLite's default) or ``"background"``
    (append only; a sealer thread chains, ``seal_delay`` after an append wakes it and every ``seal_interval``:
    PostgreSQL's default)."""

    def __init__(self, sessionmaker: sessionmaker, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *,
                 secrets: Iterable[str], retained: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None,
                 seal: str | None = None, seal_interval: float = 1.0, seal_delay: float = 0.05):
        self._sm = sessionmaker
        self._engine = sessionmaker.kw["bind"]
        self._reader = read_engine(self._engine)
        self._clock = clock
        self._local = threading.local()
        self.keys = AuditKeys(secrets, retained)
        if seal is None:
            seal = "inline" if self._engine.dialect.name == "sqlite" else "background"
        if seal not in ("inline", "background"):
            raise ValueError(f"unknown seal mode {seal!r}")
        self.inline = seal == "inline"
        self.seal_interval = seal_interval
        self.seal_delay = seal_delay  # after a wake, before sealing (batches appends; not on any request's path)
        self._wake = threading.Event()
        self._woken: set[str] = set()  # chains appended to since the sealer last looked
        self._woken_lock = threading.Lock()
        self._sealer_pid: int | None = None
        self._sealer_lock = threading.Lock()
        self._stop = threading.Event()

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
        """Append one event to its workspace's chain (secrets in ``data`` redacted) and return it; it is durable
        when this returns (or, with ``connection``, when that transaction commits).

        Inside ``deferred()`` the event is kept and written with the others when the block ends (one
        transaction for all of them). ``connection``: append in the caller's open transaction (a SQLAlchemy
        ``Connection``, e.g. a session's ``db.connection()``), so that the change and its event commit together.
        No lock is taken (with ``seal="inline"``, the chain's head stays locked to that commit: call it last).
        """
        ev = self.prepare(type, workspace_id=workspace_id, actor_id=actor_id, actor_email=actor_email,
                          subject_id=subject_id, ip=ip, user_agent=user_agent, request_id=request_id, data=data)
        if connection is not None:
            self._insert(connection, [ev])
            if self.inline:
                self._seal_chain_in(connection, ev.chain, [ev])
            else:
                self.wake((ev.chain,))
            return ev
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(ev)
            return ev
        self._append([ev])
        return ev

    def prepare(self, type: str, *, workspace_id: str | None = None, actor_id: str | None = None,
                actor_email: str | None = None, subject_id: str | None = None, ip: str | None = None,
                user_agent: str | None = None, request_id: str | None = None, data: dict | None = None
                ) -> RecordedEvent:
        """The event ``record`` appends (checked, secrets redacted, MACed), not written yet: for a caller that
        writes it in a statement of its own (``insert_part``/``insert_params``, then ``appended``)."""
        if not isinstance(type, str) or len(type) > 64 or not TYPE_RE.match(type):
            raise ValueError(f"invalid audit event type {type!r}")
        # Round-trip through JSON so that what is MACed is exactly what the database gives back.
        clean = json.loads(json.dumps(redact(data or {}), default=str))
        return self._event(type, workspace_id, clean, actor_id=_clip("actor_id", actor_id),
                           actor_email=_clip("actor_email", actor_email), subject_id=_clip("subject_id", subject_id),
                           ip=_clip("ip", ip), user_agent=_clip("user_agent", user_agent),
                           request_id=_clip("request_id", request_id))

    # The INSERT of one prepared event, as a part of a caller's statement (``idp.db.insert_together``); only for
    # ``seal="background"`` (inline sealing appends through ``record(..., connection=)``).
    insert_part = InsertPart.values(AuditEvent.__table__, _COLUMNS, "a_")

    @staticmethod
    def insert_params(ev: RecordedEvent) -> dict:
        return {"a_" + c: getattr(ev, c) for c in _COLUMNS}

    def appended(self, ev: RecordedEvent) -> None:
        """A prepared event was written by its caller's statement (durable at that statement's commit): the
        sealer chains it, as after ``record``."""
        if self.inline:
            raise RuntimeError("inline sealing appends through record(..., connection=)")
        self.wake((ev.chain,))

    def _event(self, type: str, workspace_id: str | None, data: dict, **kw) -> RecordedEvent:
        key = self.keys.current
        ev = RecordedEvent(chain=chain_for(workspace_id), workspace_id=workspace_id,
                           occurred_at=_utc(self._clock()), type=type, data=data, key_id=key.key_id, **kw)
        ev.mac = content_mac(key, ev)
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
        """Insert ``events`` in one transaction (durable when this returns); sealed in it when inline."""
        if len(events) <= ONE_STATEMENT_MAX and not self.inline and self._engine.dialect.name == "postgresql":
            # A few events (the token endpoint's group commit forms batches of one to three; a SAML SSO records two):
            # one statement on an autocommit connection, atomic and durable when it returns. A larger batch stays
            # one executemany transaction (cheaper per row from four rows on: ``ONE_STATEMENT_MAX``).
            with self._reader.connect() as conn:
                conn.execute(_insert_rows(len(events)),
                             {f"r{i}_{c}": getattr(ev, c) for i, ev in enumerate(events) for c in _COLUMNS})
            self.wake({ev.chain for ev in events})
            return
        with self._engine.begin() as conn:
            if not self.inline:
                self._insert(conn, events)
            else:
                for chain in dict.fromkeys(ev.chain for ev in events):
                    mine = [ev for ev in events if ev.chain == chain]
                    if not self._insert_sealed(conn, chain, mine):
                        self._insert(conn, mine)
                        self._seal_chain_in(conn, chain, mine)
        if not self.inline:
            self.wake({ev.chain for ev in events})

    def _insert_sealed(self, conn, chain: str, events: list[RecordedEvent]) -> bool:
        """Inline sealing's common case in two statements after the lock: the chain's head locked and read
        (a write, so SQLite's writer lock is taken by it) together with whether the chain has unsealed rows;
        if it has none, ``events`` are chained onto the head and INSERTed already sealed, and the head moves.
        The MAC of each row is the one ``record`` computed over exactly these values (JSON round trip
        included), so the sealer's re-check of it would compare a value with itself. False (nothing
        written): no head yet, an unkeyed chain, or rows left unsealed — the general path seals those first,
        in id order, re-checking their MACs."""
        head = conn.execute(_LOCK_HEAD_UNSEALED, {"c": chain}).first()
        if head is None or not head.keyed or head.unsealed:
            return False
        key, seq, prev = self.keys.current, head.seq, head.hash
        for ev in events:
            if ev.key_id != key.key_id:  # made under another key (a rotation in between): the general path
                return False
        for ev in events:
            seq += 1
            ev.seq, ev.prev_hash, ev.hash = seq, prev, chain_hash(key, chain, seq, prev, ev.mac)
            prev = ev.hash
        self._insert(conn, events)
        conn.execute(_SET_HEAD, {"c": chain, "s": seq, "h": prev})
        return True

    @staticmethod
    def _insert(conn, events: list[RecordedEvent]) -> None:
        conn.execute(_INSERT_EVENTS, [{c: getattr(ev, c) for c in _COLUMNS} for ev in events])

    # ---- sealing ----------------------------------------------------------------------------------------
    def wake(self, chains: Iterable[str] = ()) -> None:
        """Have this process's sealer thread seal ``chains`` (those this process appended to) soon (started on
        demand, and again after a fork; it ends after a minute without appends)."""
        if chains:
            with self._woken_lock:
                self._woken.update(chains)
        self._wake.set()
        if self._sealer_pid != os.getpid():
            with self._sealer_lock:
                if self._sealer_pid != os.getpid() and not self._stop.is_set():
                    self._sealer_pid = os.getpid()
                    threading.Thread(target=self._sealer_loop, name="idhub-audit-sealer", daemon=True).start()

    def _sealer_loop(self) -> None:
        idle, failing, next_scan = 0, False, 0.0
        while not self._stop.is_set():
            woke = self._wake.wait(self.seal_interval)
            if woke and self.seal_delay:  # let a batch gather: one seal transaction for many appends
                self._stop.wait(self.seal_delay)
            if self._stop.is_set():
                break
            self._wake.clear()
            with self._woken_lock:
                chains, self._woken = self._woken, set()
            # The chains this process appended to, when woken; every chain (a scan of the unsealed rows: appends
            # of a process that died before sealing them) when idle, and at least every FULL_SCAN_INTERVAL.
            scan = not chains or time.monotonic() >= next_scan
            if scan:
                next_scan = time.monotonic() + FULL_SCAN_INTERVAL
            try:
                n = self.seal() if scan else sum(self.seal(chain=c) for c in sorted(chains))
                failing = False
            except Exception as exc:  # the next round retries; nothing is lost (the rows are durable, unsealed)
                next_scan = 0.0  # the chains of this round included
                if not failing:
                    log.warning("audit.seal_failed", extra={"error": type(exc).__name__})
                failing, n = True, 1
                self._stop.wait(self.seal_interval)
            idle = 0 if (woke or n) else idle + 1
            if idle >= 60:
                with self._sealer_lock:  # an append that wakes us from here on starts a new thread
                    if not self._wake.is_set():
                        self._sealer_pid = None
                        return
        with self._sealer_lock:
            self._sealer_pid = None

    def stop(self) -> None:
        """Stop the sealer thread (tests)."""
        self._stop.set()
        self._wake.set()

    def unsealed_chains(self) -> list[str]:
        with self._reader.connect() as conn:  # no transaction around one read
            return list(conn.scalars(select(_E.chain).where(_E.seq.is_(None)).distinct()))

    def seal(self, workspace_id: str | None = None, *, chain: str | None = None) -> int:
        """Seal every unsealed event committed before this call (of one chain, or of all); returns how many.
        Each batch is one short transaction holding the chain head's row lock."""
        chains = [chain] if chain else ([chain_for(workspace_id)] if workspace_id else self.unsealed_chains())
        total = 0
        for c in chains:
            while True:
                with self._engine.begin() as conn:
                    n = self._seal_chain_in(conn, c)
                total += n
                if n < _SEAL_BATCH:  # the batch read every row committed before it: no empty round to confirm
                    break
        return total

    def _lock_head(self, conn, chain: str):
        row = conn.execute(_LOCK_HEAD, {"c": chain}).first()
        if row is None:
            values = dict(chain=chain, seq=0, hash=GENESIS_HASH, pruned_through_seq=0, anchor_hash=GENESIS_HASH,
                          keyed=True)
            if conn.dialect.name == "sqlite":
                conn.execute(insert(AuditChainHead).values(**values))
            else:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(AuditChainHead).values(**values))
                except IntegrityError:
                    pass
            row = conn.execute(_LOCK_HEAD, {"c": chain}).first()
        if not row.keyed:
            self._adopt(conn, chain, row)
            row = conn.execute(_LOCK_HEAD, {"c": chain}).first()
        return row

    def _seal_chain_in(self, conn, chain: str, mine: list[RecordedEvent] | None = None) -> int:
        """In ``conn``'s transaction: lock the head, seal up to ``_SEAL_BATCH`` unsealed rows in id order.
        A row whose MAC does not verify is left unsealed (``verify`` reports it). Returns how many were sealed.
        ``mine``: RecordedEvents of this transaction, given their seq/hash when sealed."""
        head = self._lock_head(conn, chain)
        seq, prev = head.seq, head.hash
        rows = conn.execute(_UNSEALED, {"c": chain, "n": _SEAL_BATCH}).all()
        params = []
        by_mac: dict[str, list[RecordedEvent]] = {}
        for ev in mine or ():
            by_mac.setdefault(ev.mac, []).append(ev)
        for r in rows:
            key = self.keys.get(r.key_id)
            if key is None or r.mac is None or not hmac.compare_digest(content_mac(key, r), r.mac):
                log.error("audit.unsealable_event", extra={"chain": chain, "event_id": r.id})
                continue
            seq += 1
            h = chain_hash(key, chain, seq, prev, r.mac)
            params.append({"_id": r.id, "_seq": seq, "_prev": prev, "_hash": h})
            ev = by_mac[r.mac].pop(0) if by_mac.get(r.mac) else None
            if ev is not None:
                ev.seq, ev.prev_hash, ev.hash = seq, prev, h
            prev = h
        if params:
            if conn.dialect.name == "postgresql":  # one statement for the batch and the head
                conn.execute(_SEAL_ROWS_PG, {"ids": [p["_id"] for p in params], "seqs": [p["_seq"] for p in params],
                                             "prevs": [p["_prev"] for p in params],
                                             "hashes": [p["_hash"] for p in params], "c": chain, "s": seq, "h": prev})
            else:
                conn.execute(_SEAL_ROW, params)
                conn.execute(_SET_HEAD, {"c": chain, "s": seq, "h": prev})
        return len(params)

    def _append_sealed(self, conn, chain: str, type: str, workspace_id: str | None, data: dict) -> RecordedEvent:
        """Append and seal one record in ``conn``'s transaction (the head is locked by the caller)."""
        ev = self._event(type, workspace_id, json.loads(json.dumps(data)))
        self._insert(conn, [ev])
        self._seal_chain_in(conn, chain, [ev])
        return ev

    def _adopt(self, conn, chain: str, head) -> None:
        """Key a chain written before keyed chains: check its unkeyed hashes, MAC and re-link every event
        under the current key, and seal an ``audit.chain.keyed`` record vouching for its anchor."""
        legacy = conn.execute(select(AuditEvent.__table__).where(_E.chain == chain, _E.seq.is_not(None))
                              .order_by(_E.seq)).all()
        key = self.keys.current
        prev_legacy, prev, expected = head.anchor_hash, head.anchor_hash, head.pruned_through_seq + 1
        params = []
        for r in legacy:
            if r.key_id is not None:  # already keyed (a head flag reset behind our back): nothing to adopt
                return conn.execute(update(AuditChainHead).where(_H.chain == chain).values(keyed=True))
            if r.seq != expected or r.prev_hash != prev_legacy or compute_hash(r) != r.hash:
                raise RuntimeError(f"audit chain {chain!r} fails its unkeyed check at seq {r.seq}; run verify")
            view = _Row(r, key_id=key.key_id)
            mac = content_mac(key, view)
            h = chain_hash(key, chain, r.seq, prev, mac)
            params.append({"_id": r.id, "_k": key.key_id, "_mac": mac, "_prev": prev, "_hash": h})
            prev_legacy, prev, expected = r.hash, h, expected + 1
        if params:
            conn.execute(update(AuditEvent.__table__).where(_E.id == bindparam("_id")).values(
                key_id=bindparam("_k"), mac=bindparam("_mac"), prev_hash=bindparam("_prev"),
                hash=bindparam("_hash")), params)
        conn.execute(update(AuditChainHead).where(_H.chain == chain).values(keyed=True, hash=prev))
        wsid = None if chain == HUB_CHAIN else chain
        self._append_sealed(conn, chain, "audit.chain.keyed", wsid, {
            "through_seq": head.pruned_through_seq, "anchor_hash": head.anchor_hash,
            "legacy_through_seq": expected - 1})

    # ---- verifying --------------------------------------------------------------------------------------
    def verify(self, workspace_id: str | None = None, checkpoint: dict | None = None) -> VerifyResult:
        """Check every chain (or only ``workspace_id``'s): the sealed events from their anchor (keyed hashes,
        MACs, sequence), the anchor against its prune record, the unsealed events' MACs, and — given a signed
        ``checkpoint`` — that everything it covers is still there, unchanged. The first problem wins."""
        if checkpoint is not None:
            try:
                verify_checkpoint(self.keys, checkpoint)
            except CheckpointError as exc:
                return VerifyResult(False, 0, None, str(exc), chain_for(workspace_id))
            if checkpoint["chain"] != chain_for(workspace_id):
                return VerifyResult(False, 0, None, "the checkpoint is of another workspace", chain_for(workspace_id))
        with self._sm() as db:
            if self._engine.dialect.name == "postgresql":  # one snapshot: heads and events as one sealer left them
                db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if workspace_id is not None:
                chains = [chain_for(workspace_id)]
            else:
                heads = set(db.scalars(select(AuditChainHead.chain)))
                chains = sorted(heads | set(db.scalars(select(AuditEvent.chain).distinct())))
            checked = unsealed = 0
            for chain in chains:
                result = self._verify_chain(db, chain, checkpoint)
                checked += result.checked
                unsealed += result.unsealed
                if not result.ok:
                    return VerifyResult(False, checked, result.first_bad_seq, result.reason, chain, unsealed)
        return VerifyResult(True, checked, unsealed=unsealed)

    def _verify_chain(self, db: Session, chain: str, checkpoint: dict | None) -> VerifyResult:
        head = db.get(AuditChainHead, chain)
        if head is None:
            first = db.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.chain == chain))
            if first is None and checkpoint is None:
                return self._verify_unsealed(db, chain, 0)
            if first is None:
                return VerifyResult(False, 0, checkpoint["seq"], "chain head missing; the checkpoint's events are gone")
            return VerifyResult(False, 0, first, "chain head missing")
        expected_seq = head.pruned_through_seq + 1
        expected_prev = head.anchor_hash
        checked = 0
        anchor_record = None
        cp_seq = checkpoint["seq"] if checkpoint else None
        cp_hash_at = None
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq.is_not(None))
            .order_by(AuditEvent.seq).execution_options(yield_per=_BATCH)
        )  # fmt: skip
        for ev in events:
            if ev.seq < expected_seq:
                return VerifyResult(False, checked, ev.seq, "event before the pruning anchor")
            if ev.seq != expected_seq:
                return VerifyResult(False, checked, expected_seq, f"event {expected_seq} is missing")
            if ev.chain != chain_for(ev.workspace_id):
                return VerifyResult(False, checked, ev.seq, "event is in the wrong chain")
            if ev.key_id is None:
                return VerifyResult(False, checked, ev.seq,
                                    "event is not keyed yet (written before keyed chains): run `idhub audit seal`")
            key = self.keys.get(ev.key_id)
            if key is None:
                return VerifyResult(False, checked, ev.seq, f"event is keyed with an unknown key {ev.key_id!r}")
            if ev.prev_hash != expected_prev:
                return VerifyResult(False, checked, ev.seq, "previous hash does not match")
            if ev.mac is None or not hmac.compare_digest(content_mac(key, ev), ev.mac):
                return VerifyResult(False, checked, ev.seq, "event's contents do not match its MAC")
            if not hmac.compare_digest(chain_hash(key, chain, ev.seq, ev.prev_hash, ev.mac), ev.hash or ""):
                return VerifyResult(False, checked, ev.seq, "hash does not match (rewritten without the key?)")
            if ev.type in ANCHOR_TYPES:
                anchor_record = ev
            if ev.seq == cp_seq:
                cp_hash_at = ev.hash
            checked += 1
            expected_prev = ev.hash
            expected_seq += 1
        if head.seq != expected_seq - 1:
            if head.seq < expected_seq - 1:
                return VerifyResult(False, checked, head.seq + 1, f"events after the head ({head.seq}) are present")
            missing = f"events {expected_seq}..{head.seq} are missing"
            return VerifyResult(False, checked, expected_seq, missing)
        if head.hash != expected_prev:
            return VerifyResult(False, checked, head.seq, "chain head hash does not match the last event")
        if head.pruned_through_seq > 0 or head.anchor_hash != GENESIS_HASH:
            if anchor_record is None or anchor_record.data.get("through_seq") != head.pruned_through_seq \
                    or anchor_record.data.get("anchor_hash") != head.anchor_hash:
                return VerifyResult(False, checked, head.pruned_through_seq,
                                    f"events 1..{head.pruned_through_seq} were removed without a prune record")
        if checkpoint is not None:
            last = expected_seq - 1
            if cp_seq > last:
                return VerifyResult(False, checked, last + 1,
                                    f"truncated: the checkpoint covers seq {cp_seq}, the chain ends at {last}")
            if cp_seq == head.pruned_through_seq:
                cp_hash_at = head.anchor_hash
            if cp_seq >= head.pruned_through_seq and not hmac.compare_digest(cp_hash_at or "", checkpoint["hash"]):
                return VerifyResult(False, checked, cp_seq,
                                    "the chain up to the checkpoint was rewritten (hash differs from the checkpoint's)")
        return self._verify_unsealed(db, chain, checked)

    def _verify_unsealed(self, db: Session, chain: str, checked: int) -> VerifyResult:
        n = 0
        rows = db.scalars(select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.seq.is_(None))
                          .order_by(AuditEvent.id).execution_options(yield_per=_BATCH))
        for ev in rows:
            key = self.keys.get(ev.key_id)
            if key is None or ev.mac is None or not hmac.compare_digest(content_mac(key, ev), ev.mac):
                return VerifyResult(False, checked, None, f"unsealed event (id {ev.id}) does not match its MAC",
                                    unsealed=n)
            if ev.prev_hash is not None or ev.hash is not None:
                return VerifyResult(False, checked, None, f"unsealed event (id {ev.id}) carries a chain hash",
                                    unsealed=n)
            n += 1
        return VerifyResult(True, checked, unsealed=n)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def checkpoint(self, workspace_id: str | None, workspace_slug: str | None = None) -> dict:
        """Seal the chain, then a signed checkpoint of its head (see ``sign_checkpoint``)."""
        chain = chain_for(workspace_id)
        self.seal(chain=chain)
        with self._engine.begin() as conn:
            head = self._lock_head(conn, chain)
        body = {"v": 1, "workspace": workspace_slug, "workspace_id": workspace_id, "chain": chain,
                "seq": head.seq, "hash": head.hash, "pruned_through_seq": head.pruned_through_seq,
                "time": iso_utc(self._clock())}
        return sign_checkpoint(self.keys.current, body)

    def public_keys(self) -> dict[str, str]:
        """{key id: the Ed25519 public key (raw, base64url)} that checkpoints verify with."""
        return {kid: _b64(k.public_raw) for kid, k in self.keys.by_id.items()}

    # ---- reading ----------------------------------------------------------------------------------------
    def read_sealed(self, workspace_id: str | None, after_seq: int, limit: int = 500) -> list[AuditEvent]:
        """``read_sealed`` with a session of its own."""
        with self._sm() as db:
            return read_sealed(db, workspace_id, after_seq, limit)

    def export(
        self,
        workspace_id: str | None,
        fmt: str = "json",
        since: datetime | None = None,
        until: datetime | None = None,
        types: Iterable[str] | None = None,
    ) -> Iterator[str]:
        """Stream a workspace's events (``since`` <= occurred_at < ``until``) as a JSON array or CSV: sealed
        events by ``seq``, then those not sealed yet (``seq`` empty)."""
        if fmt not in ("json", "csv"):
            raise ValueError(f"unknown export format {fmt!r}")
        stmt = select(AuditEvent).where(AuditEvent.chain == chain_for(workspace_id))
        if since is not None:
            stmt = stmt.where(AuditEvent.occurred_at >= _utc(since))
        if until is not None:
            stmt = stmt.where(AuditEvent.occurred_at < _utc(until))
        if types is not None:
            stmt = stmt.where(AuditEvent.type.in_(list(types)))
        stmt = (stmt.order_by(AuditEvent.seq.is_(None), AuditEvent.seq, AuditEvent.id)
                .execution_options(yield_per=_BATCH))
        rows = self._stream(stmt)
        return json_chunks(rows) if fmt == "json" else csv_chunks(rows, EXPORT_FIELDS)

    def _stream(self, stmt) -> Iterator[list[dict[str, Any]]]:
        with self._sm() as db:
            for part in db.scalars(stmt).partitions(_BATCH):
                yield [_export_row(ev) for ev in part]

    # ---- retention --------------------------------------------------------------------------------------
    def prune(self, workspace_id: str | None, retention_days: int, now: datetime) -> int:
        """Delete the chain's oldest events older than ``retention_days``; returns how many were deleted.

        Under the head's lock: seal what is pending, remove a contiguous prefix, make the last removed event's
        hash the head's anchor and seal an ``audit.pruned`` record of it, so that ``verify`` still checks
        everything that is left and tells this prune from rows deleted behind the log's back.
        """
        if retention_days < 0:
            raise ValueError("retention_days must not be negative")
        chain = chain_for(workspace_id)
        cutoff = _utc(now) - timedelta(days=retention_days)
        self.seal(chain=chain)
        with self._engine.begin() as conn:
            if conn.execute(select(_H.chain).where(_H.chain == chain)).first() is None:
                return 0
            head = self._lock_head(conn, chain)
            while self._seal_chain_in(conn, chain):
                pass
            head = self._lock_head(conn, chain)
            first_kept = conn.scalar(
                select(func.min(_E.seq)).where(_E.chain == chain, _E.seq.is_not(None), _E.occurred_at >= cutoff))
            through = (first_kept - 1) if first_kept is not None else head.seq
            if through <= head.pruned_through_seq:
                return 0
            last = conn.execute(select(_E.hash).where(_E.chain == chain, _E.seq == through)).first()
            if last is None:
                raise RuntimeError(f"audit chain {chain!r} has no event {through}; run verify()")
            deleted = conn.execute(delete(AuditEvent).where(_E.chain == chain, _E.seq <= through)).rowcount
            conn.execute(update(AuditChainHead).where(_H.chain == chain)
                         .values(pruned_through_seq=through, anchor_hash=last.hash))
            self._append_sealed(conn, chain, "audit.pruned", workspace_id, {
                "through_seq": through, "anchor_hash": last.hash, "retention_days": retention_days,
                "deleted": deleted})
        return deleted


class _Row:
    """A read-only view of a row with some attributes replaced (to MAC a legacy row under its new key id)."""

    def __init__(self, row, **override):
        self._row, self._override = row, override

    def __getattr__(self, name):
        if name in self._override:
            return self._override[name]
        return getattr(self._row, name)


def _export_row(ev: AuditEvent) -> dict[str, Any]:
    row = {name: getattr(ev, name) for name in EXPORT_FIELDS}
    row["occurred_at"] = iso_utc(ev.occurred_at)
    row["data"] = ev.data if ev.data is not None else {}
    return row


def json_chunks(batches: Iterator[list[dict[str, Any]]], sort_keys: bool = True) -> Iterator[str]:
    """A JSON array of the rows, streamed batch by batch (one row a line)."""
    yield "["
    first = True
    for batch in batches:
        parts = []
        for row in batch:
            parts.append(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False, sort_keys=sort_keys))
            first = False
        yield "".join(parts)
    yield "\n]\n"


def csv_safe(value: Any) -> Any:
    """A cell value that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_chunks(batches: Iterator[list[dict[str, Any]]], columns: tuple[str, ...]) -> Iterator[str]:
    """CSV of the rows' ``columns`` (``data`` as JSON, formula-safe cells), streamed batch by batch."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    yield buf.getvalue()
    for batch in batches:
        buf.seek(0)
        buf.truncate()
        for row in batch:
            cells = dict(row, data=json.dumps(row["data"], ensure_ascii=False, sort_keys=True))
            writer.writerow([csv_safe("" if cells[name] is None else cells[name]) for name in columns])
        yield buf.getvalue()
